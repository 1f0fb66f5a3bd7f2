//! `state.json`: what `skiff up` is running, for `skiff ps` in another terminal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::service::ServiceState;

/// The file `skiff ps` reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StackState {
    /// The `skiff up` process (`skiff deploy` signals it).
    #[serde(default)]
    pub pid: u32,
    pub registry_url: String,
    pub services: Vec<serde_json::Value>,
}

pub(crate) async fn write_loop(
    path: PathBuf,
    registry_url: String,
    services: Vec<watch::Receiver<ServiceState>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = Vec::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let state = StackState {
            pid: std::process::id(),
            registry_url: registry_url.clone(),
            services: services
                .iter()
                .filter_map(|s| serde_json::to_value(&*s.borrow()).ok())
                .collect(),
        };
        let Ok(bytes) = serde_json::to_vec_pretty(&state) else {
            continue;
        };
        if bytes != last {
            let tmp = path.with_extension("json.tmp");
            if tokio::fs::write(&tmp, &bytes).await.is_ok() {
                let _ = tokio::fs::rename(&tmp, &path).await;
            }
            last = bytes;
        }
    }
}

/// The tasks of a running `skiff up` as a table; `Err` when none is running.
pub fn print_ps(state_dir: &Path) -> Result<String, String> {
    let path = state_dir.join("state.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("no running `skiff up` found ({}: {e})", path.display()))?;
    let state: StackState = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: unreadable state: {e}", path.display()))?;
    Ok(format_table(&state))
}

/// One line per task: service, task id, address, status/health, sidecar admin, ingress.
pub fn format_table(state: &StackState) -> String {
    let mut out = format!(
        "{:<16} {:<10} {:<16} {:<22} {:<24} {}\n",
        "SERVICE", "TASK", "ADDRESS", "STATUS", "ADMIN", "INGRESS"
    );
    for s in &state.services {
        let name = s["name"].as_str().unwrap_or("?");
        for t in s["tasks"].as_array().into_iter().flatten() {
            let id = t["id"].as_str().unwrap_or("?");
            let status = match (&t["status"]["status"], &t["status"]["healthy"]) {
                (serde_json::Value::String(st), serde_json::Value::String(h)) => {
                    format!("{st}/{h}")
                }
                (serde_json::Value::String(st), _) => st.clone(),
                _ => "?".into(),
            };
            let admin = t["sidecar"]["admin_addr"].as_str().unwrap_or("-");
            let ingress: Vec<String> = t["sidecar"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    Some(format!(
                        "{}={}",
                        i["discovery_name"].as_str()?,
                        i["addr"].as_str()?
                    ))
                })
                .collect();
            out.push_str(&format!(
                "{:<16} {:<10} {:<16} {:<22} {:<24} {}\n",
                name,
                id.get(..8).unwrap_or(id),
                t["ip"].as_str().unwrap_or("?"),
                status,
                admin,
                ingress.join(",")
            ));
        }
        for e in s["events"].as_array().into_iter().flatten() {
            if let Some(e) = e.as_str() {
                out.push_str(&format!("  event: {e}\n"));
            }
        }
    }
    out
}

/// Asks the running `skiff up` to re-read its stack and roll the services that changed.
pub fn request_deploy(state_dir: &Path) -> Result<u32, String> {
    let path = state_dir.join("state.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("no running `skiff up` found ({}: {e})", path.display()))?;
    let state: StackState = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: unreadable state: {e}", path.display()))?;
    let pid = i32::try_from(state.pid).map_err(|_| "bad pid in state".to_owned())?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|e| format!("cannot signal skiff up (pid {pid}): {e}"))?;
    Ok(state.pid)
}
