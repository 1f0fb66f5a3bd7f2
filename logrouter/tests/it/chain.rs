//! Router to router over the forward output with a shared-key handshake and chunk acks; unknown keys are refused.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_output_to_a_shared_key_forward_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("downstream.log");
    let downstream = Router::start(
        &format!(
            r#"
[SERVICE]
    Flush     0.05
    HTTP_Port 0
[INPUT]
    Name          forward
    Port          0
    Shared_Key    s3cret
    Self_Hostname downstream
[OUTPUT]
    Name   file
    Match  *
    File   {out}
    Format plain
"#,
            out = out.display()
        ),
        dir.path(),
    )
    .await;
    let down = downstream.forward.unwrap();
    let upstream = Router::start(
        &format!(
            r#"
[SERVICE]
    Flush          0.05
    HTTP_Port      0
    scheduler.base 0.05
    scheduler.cap  0.1
[INPUT]
    Name forward
    Port 0
[OUTPUT]
    Name        forward
    Match       *
    Host        127.0.0.1
    Port        {port}
    Shared_Key  s3cret
    Retry_Limit no_limits
"#,
            port = down.port()
        ),
        dir.path(),
    )
    .await;
    let up = upstream.forward.unwrap();
    tokio::task::spawn_blocking(move || python_send("packed", up, "chained", 0, 500))
        .await
        .unwrap();
    eventually(20, "records through both routers", || {
        file_records(&out).len() >= 500
    })
    .await;
    assert_eq!(ids(&file_records(&out)), (0..500).collect::<Vec<_>>());
    // a client that skips the handshake is refused
    let refused = tokio::task::spawn_blocking(move || {
        let mut c = ForwardClient::connect(down).unwrap();
        c.send("intruder", 0..1).is_err()
    })
    .await
    .unwrap();
    assert!(refused);
    eventually(10, "the refused handshake to be counted", || {
        downstream.counter(
            "skiff_logrouter_input_rejected_total",
            &[("reason", "auth")],
        ) >= 1
    })
    .await;
    upstream.stop().await;
    downstream.stop().await;
}
