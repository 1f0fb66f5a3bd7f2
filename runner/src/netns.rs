//! `awsvpc` mode: each task in its own network namespace, on a runner-owned bridge.
//!
//! As ECS gives an awsvpc task its own ENI, the runner gives each task a network namespace
//! with one veth leg on a bridge it owns and an address from a private range used only on this
//! machine (`10.213.0.0/16` unless told otherwise). The task's loopback carries the sidecar's
//! client-alias VIPs, `/etc/netns/<ns>/hosts` maps the aliases to them (`ip netns exec` mounts
//! it over `/etc/hosts`), and the bridge address forwards to the registry. Every namespace, veth
//! and the bridge are removed on exit, and on the next start after a crash (from `netns.json`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// The default private range tasks get addresses from; the bridge takes the first address.
pub const DEFAULT_TASK_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 213, 0, 0), 16);

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot run `ip` (Debian package iproute2)")]
    NoIp(#[source] std::io::Error),
    #[error("awsvpc mode needs root (network namespaces); run as root or use --network-mode host")]
    NotRoot,
}

/// What a crash would leave behind, so the next start can remove it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Leftovers {
    bridge: Option<String>,
    namespaces: BTreeSet<String>,
}

/// The runner's bridge and the task namespaces on it.
#[derive(Debug)]
pub struct Network {
    bridge: String,
    gateway: Ipv4Addr,
    prefix: u8,
    record: PathBuf,
    live: Mutex<Leftovers>,
}

/// One task's namespace.
#[derive(Clone, Debug)]
pub struct TaskNetns {
    pub name: String,
}

async fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(NetnsError::NoIp)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

// === impl Network ===

impl Network {
    /// Removes what a crashed run left in `state_dir`, then creates the bridge.
    pub async fn create(state_dir: &Path, cidr: (Ipv4Addr, u8)) -> Result<Network, NetnsError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(NetnsError::NotRoot);
        }
        let record = state_dir.join("netns.json");
        if let Ok(bytes) = tokio::fs::read(&record).await
            && let Ok(old) = serde_json::from_slice::<Leftovers>(&bytes)
        {
            for ns in &old.namespaces {
                tracing::info!(netns = %ns, "removing a network namespace left by a crashed run");
                let _ = ip(&["netns", "del", ns]).await;
                let _ = tokio::fs::remove_dir_all(Path::new("/etc/netns").join(ns)).await;
            }
            if let Some(br) = &old.bridge {
                let _ = ip(&["link", "del", br]).await;
            }
        }
        // A bridge name unique to this state directory, so two runners do not collide.
        let tag = short_hash(&state_dir.display().to_string());
        let bridge = format!("skbr{tag}");
        let gateway = Ipv4Addr::from(u32::from(cidr.0) | 1);
        let _ = ip(&["link", "del", &bridge]).await;
        ip(&["link", "add", &bridge, "type", "bridge"]).await?;
        let net = Network {
            bridge: bridge.clone(),
            gateway,
            prefix: cidr.1,
            record,
            live: Mutex::new(Leftovers {
                bridge: Some(bridge.clone()),
                namespaces: BTreeSet::new(),
            }),
        };
        net.save().await;
        ip(&[
            "addr",
            "add",
            &format!("{gateway}/{}", cidr.1),
            "dev",
            &bridge,
        ])
        .await?;
        ip(&["link", "set", &bridge, "up"]).await?;
        Ok(net)
    }

    /// The bridge's own address: the registry forwarder listens here.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Creates the namespace of task `id` with address `ip` and the given `/etc/hosts` lines.
    pub async fn add_task(
        &self,
        id: &str,
        ip_addr: Ipv4Addr,
        hosts: &str,
    ) -> Result<TaskNetns, NetnsError> {
        let short = &id[..id.len().min(8)];
        let name = format!("skiff-{short}");
        let veth = format!("skv{short}");
        if let Ok(mut live) = self.live.lock() {
            live.namespaces.insert(name.clone());
        }
        self.save().await;
        ip(&["netns", "add", &name]).await?;
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ])
        .await?;
        ip(&["link", "set", &veth, "master", &self.bridge, "up"]).await?;
        let addr = format!("{ip_addr}/{}", self.prefix);
        ip(&["-n", &name, "addr", "add", &addr, "dev", "eth0"]).await?;
        ip(&["-n", &name, "link", "set", "eth0", "up"]).await?;
        ip(&["-n", &name, "link", "set", "lo", "up"]).await?;
        ip(&[
            "-n",
            &name,
            "route",
            "add",
            "default",
            "via",
            &self.gateway.to_string(),
        ])
        .await?;
        let etc = Path::new("/etc/netns").join(&name);
        let _ = tokio::fs::create_dir_all(&etc).await;
        let hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip_addr}\t{name}\n{hosts}"
        );
        let _ = tokio::fs::write(etc.join("hosts"), hosts).await;
        Ok(TaskNetns { name })
    }

    /// Removes a task's namespace (its veth goes with it).
    pub async fn remove_task(&self, ns: &TaskNetns) {
        let _ = ip(&["netns", "del", &ns.name]).await;
        let _ = tokio::fs::remove_dir_all(Path::new("/etc/netns").join(&ns.name)).await;
        if let Ok(mut live) = self.live.lock() {
            live.namespaces.remove(&ns.name);
        }
        self.save().await;
    }

    /// Removes the bridge and anything left on it.
    pub async fn destroy(&self) {
        let namespaces: Vec<String> = self
            .live
            .lock()
            .map(|l| l.namespaces.iter().cloned().collect())
            .unwrap_or_default();
        for ns in namespaces {
            let _ = ip(&["netns", "del", &ns]).await;
            let _ = tokio::fs::remove_dir_all(Path::new("/etc/netns").join(&ns)).await;
        }
        let _ = ip(&["link", "del", &self.bridge]).await;
        let _ = tokio::fs::remove_file(&self.record).await;
    }

    async fn save(&self) {
        let bytes = match self.live.lock() {
            Ok(live) => serde_json::to_vec(&*live).unwrap_or_default(),
            Err(_) => return,
        };
        let _ = tokio::fs::write(&self.record, bytes).await;
    }
}

/// Argv prefix that runs a program inside a task's namespace.
pub fn exec_prefix(ns: &TaskNetns) -> Vec<String> {
    vec!["ip".into(), "netns".into(), "exec".into(), ns.name.clone()]
}

fn short_hash(s: &str) -> String {
    // FNV-1a: stable across runs, so a crashed run's bridge has the same name next time.
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:08x}", h)[..6].to_owned()
}
