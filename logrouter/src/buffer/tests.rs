//! Unit tests for the durable buffer: round trip, cursors across reopen, torn tails, deletion and the disk limit.

use std::time::Duration;

use super::*;

fn metrics() -> Metrics {
    Metrics::register(&prometheus::Registry::new()).unwrap()
}

fn opts(dir: &std::path::Path) -> BufferOptions {
    BufferOptions {
        dir: dir.to_owned(),
        segment_bytes: 1024,
        max_bytes: 0,
        sync_always: false,
        durable: true,
        in_flight_bytes: DEFAULT_IN_FLIGHT_BYTES,
    }
}

async fn drain(r: &mut BufReader) -> Vec<Batch> {
    let mut all = Vec::new();
    loop {
        let got = r.read(1 << 20).await.unwrap();
        if got.is_empty() {
            return all;
        }
        let last = got.last().unwrap().1;
        r.commit(last).unwrap();
        all.extend(got.into_iter().map(|(b, _)| b));
    }
}

#[tokio::test]
async fn round_trip_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (buf, _) = Buffer::open(opts(dir.path()), metrics()).unwrap();
        let mut r = buf.reader("out").unwrap();
        for i in 0..50u32 {
            buf.append("app", i, vec![0x90; 100], i % 2 == 0)
                .await
                .unwrap();
        }
        let first = r.read(300).await.unwrap();
        assert!(!first.is_empty() && first.len() < 50);
        r.commit(first.last().unwrap().1).unwrap();
    }
    let (buf, rec) = Buffer::open(opts(dir.path()), metrics()).unwrap();
    assert_eq!(rec.corrupt_bytes, 0);
    let mut r = buf.reader("out").unwrap();
    // a new output starts from the oldest segment still on disk
    let mut fresh = buf.reader("other").unwrap();
    let rest = drain(&mut r).await;
    assert!(rest.len() < 50 && !rest.is_empty());
    assert_eq!(rest.last().unwrap().count, 49);
    assert!(drain(&mut fresh).await.len() >= rest.len());
}

#[tokio::test]
async fn torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (buf, _) = Buffer::open(opts(dir.path()), metrics()).unwrap();
        for i in 0..3u32 {
            buf.append("t", i, b"\x92\x01\x80".to_vec(), true)
                .await
                .unwrap();
        }
    }
    let seg = segment::list(dir.path()).unwrap()[0];
    let path = segment::path(dir.path(), seg);
    let mut bytes = std::fs::read(&path).unwrap();
    let full = bytes.len();
    bytes.extend_from_slice(&segment::encode("t", 9, b"\x92\x01\x80")[..10]);
    std::fs::write(&path, &bytes).unwrap();
    let (buf, rec) = Buffer::open(opts(dir.path()), metrics()).unwrap();
    assert_eq!(rec.corrupt_bytes, 10);
    assert_eq!(rec.records, 3);
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, full);
    let mut r = buf.reader("o").unwrap();
    let got = drain(&mut r).await;
    assert_eq!(
        got.iter().map(|b| b.count).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

#[tokio::test]
async fn flipped_bit_is_skipped_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let (buf, _) = Buffer::open(opts(dir.path()), metrics()).unwrap();
    buf.append("t", 1, b"\x92\x01\x80".to_vec(), true)
        .await
        .unwrap();
    let seg = segment::list(dir.path()).unwrap()[0];
    let path = segment::path(dir.path(), seg);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let m = metrics();
    let (buf, rec) = Buffer::open(opts(dir.path()), m.clone()).unwrap();
    assert_eq!(rec.records, 0);
    assert_eq!(m.buffer_corrupt.get(), 1);
    buf.append("t", 2, b"\x92\x01\x80".to_vec(), true)
        .await
        .unwrap();
    let mut r = buf.reader("o").unwrap();
    let got = drain(&mut r).await;
    assert_eq!(got.iter().map(|b| b.count).collect::<Vec<_>>(), vec![2]);
}

#[tokio::test]
async fn segments_are_deleted_once_every_output_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let (buf, _) = Buffer::open(opts(dir.path()), metrics()).unwrap();
    let mut a = buf.reader("a").unwrap();
    let mut b = buf.reader("b").unwrap();
    for i in 0..40u32 {
        buf.append("t", i, vec![0x90; 200], false).await.unwrap();
    }
    let many = segment::list(dir.path()).unwrap().len();
    assert!(many > 3);
    drain(&mut a).await;
    assert_eq!(segment::list(dir.path()).unwrap().len(), many);
    drain(&mut b).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while segment::list(dir.path()).unwrap().len() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "segments not deleted"
        );
        b.commit(b.read_pos()).unwrap();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn disk_limit_holds_appends_until_an_output_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.max_bytes = 3000;
    let (buf, _) = Buffer::open(o, metrics()).unwrap();
    let mut r = buf.reader("slow").unwrap();
    let writer = {
        let buf = buf.clone();
        tokio::spawn(async move {
            for i in 0..30u32 {
                buf.append("t", i, vec![0x90; 300], false).await.unwrap();
            }
        })
    };
    // the writer cannot finish while nobody reads
    let mut got = Vec::new();
    while got.len() < 30 {
        r.wait().await.unwrap();
        let batch = r.read(1 << 20).await.unwrap();
        if let Some((_, p)) = batch.last() {
            r.commit(*p).unwrap();
        }
        got.extend(batch.into_iter().map(|(b, _)| b.count));
    }
    writer.await.unwrap();
    assert_eq!(got, (0..30).collect::<Vec<_>>());
    assert!(matches!(
        buf.append("t", 0, vec![0x90; 5000], false).await,
        Err(BufferError::TooLarge(_))
    ));
}
