//! Starts a registry in-process on port 0 with a temporary data dir, and helpers to poll.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use skiff_registry::{Registry, RegistryOptions};
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub struct TestRegistry {
    pub http: SocketAddr,
    pub dns: SocketAddr,
    pub url: String,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

pub fn loopback_opts() -> RegistryOptions {
    RegistryOptions {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        dns_addr: "127.0.0.1:0".parse().unwrap(),
        ..RegistryOptions::default()
    }
}

impl TestRegistry {
    pub async fn start() -> TestRegistry {
        TestRegistry::start_with(loopback_opts()).await
    }

    pub async fn start_with(mut opts: RegistryOptions) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        if opts.data_dir.is_none() {
            opts.data_dir = Some(dir.path().to_path_buf());
        }
        TestRegistry::start_in(opts, dir).await
    }

    pub async fn start_in(opts: RegistryOptions, dir: tempfile::TempDir) -> TestRegistry {
        let prometheus = prometheus::Registry::new();
        let registry = Registry::start(opts, &prometheus).await.unwrap();
        let (http, dns) = (registry.http_addr(), registry.dns_addr());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            registry
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        TestRegistry {
            http,
            dns,
            url: format!("http://{http}"),
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Shuts down gracefully and hands back the data dir.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("registry did not stop")
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn client(&self) -> skiff_registry_client::Client {
        skiff_registry_client::Client::new(&self.url).unwrap()
    }

    /// `aws servicediscovery ARGS --output json` against this registry.
    pub async fn aws(&self, args: &[&str]) -> AwsOutput {
        aws(&self.url, args).await
    }

    /// Runs the AWS CLI, expecting it to fail with `expected` in what it prints.
    pub async fn aws_fails(&self, args: &[&str], expected: &str) {
        let out = self.aws(args).await;
        assert!(!out.ok, "aws {args:?} succeeded");
        assert!(out.stderr.contains(expected), "{}", out.stderr);
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub struct AwsOutput {
    pub ok: bool,
    pub json: Value,
    pub stderr: String,
}

pub async fn aws(url: &str, args: &[&str]) -> AwsOutput {
    let out = Command::new("aws")
        .arg("servicediscovery")
        .args(args)
        .args([
            "--endpoint-url",
            url,
            "--region",
            "us-east-1",
            "--output",
            "json",
        ])
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_DISABLE_HOST_PREFIX_INJECTION", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_PAGER", "")
        .env_remove("AWS_PROFILE")
        .output()
        .await
        .expect("the aws CLI must be on PATH (pip install awscli)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or(Value::String(stdout))
    };
    AwsOutput {
        ok: out.status.success(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// Polls `f` until it returns `Some`, failing after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
