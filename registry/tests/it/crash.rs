//! SIGKILL the registry in the middle of a stream of registrations; every acknowledged one
//! must be there after a restart, and revisions must not go backwards.
//!
//! The registry runs in a child process: this test binary itself, re-run with
//! `SKIFF_CRASH_CHILD=1` on the ignored `crash_child` test.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use skiff_registry::RegistryOptions;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::{TestRegistry, loopback_opts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of registry_survives_sigkill_with_every_acknowledged_registration"]
async fn crash_child() {
    let Ok(dir) = std::env::var("SKIFF_CRASH_DIR") else {
        return;
    };
    let opts = RegistryOptions {
        data_dir: Some(dir.into()),
        ..loopback_opts()
    };
    let registry = skiff_registry::Registry::start(opts, &prometheus::Registry::new())
        .await
        .unwrap();
    println!("READY {}", registry.http_addr());
    registry.run(std::future::pending()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_survives_sigkill_with_every_acknowledged_registration() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash::crash_child", "--ignored", "--nocapture"])
        .env("SKIFF_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(addr) = line.strip_prefix("READY ") {
                return addr.to_string();
            }
        }
        panic!("child exited before it was ready");
    })
    .await
    .expect("child registry did not start");
    let client = skiff_registry_client::Client::new(&format!("http://{addr}")).unwrap();
    let ns_id = client.ensure_http_namespace("prod.internal").await.unwrap();
    let svc_id = client.ensure_service(&ns_id, "orders").await.unwrap();

    // Writers register until the registry dies; acknowledged ids are recorded.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, svc_id, acked) = (client.clone(), svc_id.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..10_000 {
                let id = format!("w{w}-{n}");
                let attrs =
                    BTreeMap::from([("AWS_INSTANCE_IPV4".to_string(), "10.0.0.1".to_string())]);
                if client.register_instance(&svc_id, &id, attrs).await.is_err() {
                    return;
                }
                acked.lock().unwrap().push(id);
            }
        }));
    }
    crate::harness::eventually("some registrations", Duration::from_secs(30), || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 200).then_some(()) }
    })
    .await;
    let last_revision = client
        .watch("prod.internal", 0, Duration::from_secs(1))
        .await
        .unwrap()
        .revision;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let reg = TestRegistry::start_in(
        RegistryOptions {
            data_dir: Some(dir.path().to_path_buf()),
            ..loopback_opts()
        },
        dir,
    )
    .await;
    let client = reg.client();
    let mut present = std::collections::HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = json!({ "ServiceId": svc_id, "MaxResults": 100 });
        if let Some(t) = &token {
            req["NextToken"] = json!(t);
        }
        let out = client.call("ListInstances", req).await.unwrap();
        for i in out["Instances"].as_array().unwrap() {
            present.insert(i["Id"].as_str().unwrap().to_string());
        }
        match out["NextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    let lost: Vec<&String> = acked.iter().filter(|id| !present.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged registrations lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    let snap = client
        .watch("prod.internal", 0, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        snap.revision >= last_revision,
        "revision went backwards: {} < {last_revision}",
        snap.revision
    );
}
