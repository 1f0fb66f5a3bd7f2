//! Watch fan-out: many long-polls parked on one namespace, one registration, how long until every watcher has it.
//!
//! Each watcher is a raw TCP connection with one `GET /v1/watch` request
//! (`Connection: close`), so the benchmark knows when every request is on the
//! wire. A watcher whose request the registry reads only after the change
//! gets its answer at once (the revision is already past `since`), so no
//! settling pause is needed: the time from sending `RegisterInstance` to each
//! complete answer is what a sidecar would see.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::cloudmap::CloudMap;
use crate::LoadtestError;

/// How long the registry may hold each watch.
const WAIT_MS: u64 = 30_000;
/// Largest watch answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// One round: when each watcher got the new revision, counted from the registration.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub latencies_us: Vec<u64>,
    /// Watchers that failed or answered without the new revision.
    pub failed: u64,
    pub first_error: Option<String>,
    pub register_us: u64,
}

/// Parks `watchers` long-polls on `namespace` past its current revision, registers `instance_id`
/// in `service_id`, and collects when each watcher saw it.
pub async fn round(
    http_addr: SocketAddr,
    namespace: &str,
    service_id: &str,
    instance_id: &str,
    ip: Ipv4Addr,
    watchers: usize,
) -> Result<Round, LoadtestError> {
    let current = watch_once(http_addr, namespace, 0).await?;
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..watchers {
        let (namespace, sent) = (namespace.to_string(), sent.clone());
        tasks.spawn(async move {
            match watcher(http_addr, &namespace, current, &sent).await {
                Ok((revision, at)) => (Ok(revision), at),
                Err(error) => (Err(error), Instant::now()),
            }
        });
    }
    let started = Instant::now();
    while sent.load(Ordering::Acquire) < watchers {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let cloud_map = CloudMap::new(http_addr);
    let registered_at = Instant::now();
    cloud_map.register(service_id, instance_id, ip).await?;
    let register_us = micros(registered_at.elapsed());
    let mut result = Round {
        register_us,
        ..Round::default()
    };
    let deadline = Duration::from_millis(WAIT_MS + 5_000);
    while let Ok(Some(joined)) = tokio::time::timeout(deadline, tasks.join_next()).await {
        match joined {
            Ok((Ok(revision), at)) if revision > current && at >= registered_at => {
                result.latencies_us.push(micros(at - registered_at));
            }
            Ok((Ok(revision), _)) => {
                result.failed += 1;
                result.first_error.get_or_insert(format!(
                    "a watcher answered revision {revision}, not past {current}"
                ));
            }
            Ok((Err(error), _)) => {
                result.failed += 1;
                result.first_error.get_or_insert(error);
            }
            Err(error) => {
                result.failed += 1;
                result.first_error.get_or_insert(error.to_string());
            }
        }
    }
    result.failed += tasks.len() as u64;
    tasks.abort_all();
    Ok(result)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// One long-poll answered at once (`since` below the current revision); its revision.
pub async fn watch_once(
    http_addr: SocketAddr,
    namespace: &str,
    since: u64,
) -> Result<u64, LoadtestError> {
    let counter = AtomicUsize::new(0);
    let exchange = watcher(http_addr, namespace, since, &counter);
    match tokio::time::timeout(Duration::from_millis(WAIT_MS + 5_000), exchange).await {
        Ok(Ok((revision, _))) => Ok(revision),
        Ok(Err(reason)) => Err(LoadtestError::Process {
            what: "watch".into(),
            reason,
        }),
        Err(_) => Err(LoadtestError::Process {
            what: "watch".into(),
            reason: "no answer".into(),
        }),
    }
}

/// Sends one watch request, counts it in `sent`, reads the answer; its `revision` and when the
/// whole answer had arrived (before the benchmark spends time parsing it).
async fn watcher(
    http_addr: SocketAddr,
    namespace: &str,
    since: u64,
    sent: &AtomicUsize,
) -> Result<(u64, Instant), String> {
    let request = watch_request(http_addr, namespace, since);
    let connected = async {
        let mut stream = TcpStream::connect(http_addr)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let _ = stream.set_nodelay(true);
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| format!("send: {error}"))?;
        Ok::<_, String>(stream)
    }
    .await;
    // Sent, or failed for good: either way no longer one to wait for.
    sent.fetch_add(1, Ordering::Release);
    let mut stream = connected?;
    let mut buffer = Vec::with_capacity(4096);
    loop {
        if let Some(parsed) = parse_response(&buffer) {
            let arrived = Instant::now();
            let (status, body) = parsed?;
            if status != 200 {
                return Err(format!(
                    "watch answered {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ));
            }
            return revision_of(&body).map(|revision| (revision, arrived));
        }
        if buffer.len() > MAX_ANSWER_BYTES {
            return Err("watch answer too large".into());
        }
        let read = stream
            .read_buf(&mut buffer)
            .await
            .map_err(|error| format!("read: {error}"))?;
        if read == 0 {
            return Err("connection closed before a complete answer".into());
        }
    }
}

/// The request line and headers of a watch.
pub fn watch_request(http_addr: SocketAddr, namespace: &str, since: u64) -> String {
    format!(
        "GET /v1/watch?namespace={namespace}&since={since}&wait_ms={WAIT_MS} HTTP/1.1\r\nHost: {http_addr}\r\nConnection: close\r\n\r\n"
    )
}

/// Only the field the benchmark needs of a namespace snapshot.
#[derive(serde::Deserialize)]
struct Revision {
    revision: u64,
}

/// The `revision` of a watch answer's JSON.
pub fn revision_of(body: &[u8]) -> Result<u64, String> {
    serde_json::from_slice::<Revision>(body)
        .map(|snapshot| snapshot.revision)
        .map_err(|error| format!("answer without a revision: {error}"))
}

/// A complete HTTP/1.1 response in `buffer`: `None` while incomplete, else its status and body
/// (with `Content-Length` or chunked transfer encoding).
pub fn parse_response(buffer: &[u8]) -> Option<Result<(u16, Vec<u8>), String>> {
    let head_end = buffer.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buffer[..head_end]);
    let body = &buffer[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = match lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
    {
        Some(status) => status,
        None => return Some(Err("not an HTTP response".into())),
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    if chunked {
        return dechunk(body).map(|body| body.map(|body| (status, body)));
    }
    match length {
        Some(length) if body.len() >= length => Some(Ok((status, body[..length].to_vec()))),
        Some(_) => None,
        None => Some(Err("answer has neither Content-Length nor chunks".into())),
    }
}

/// The body of a complete chunked encoding; `None` while the last chunk has not arrived.
fn dechunk(mut data: &[u8]) -> Option<Result<Vec<u8>, String>> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|window| window == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return Some(Err(format!("bad chunk size {size_text:?}")));
        };
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(Ok(body));
        }
        if data.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
