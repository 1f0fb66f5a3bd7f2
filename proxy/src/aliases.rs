//! Alias listeners on virtual IPs: each client alias `dnsName:port` of the namespace gets a
//! listener at `VIP:port`, where every dnsName has its own loopback VIP (127.255.x.y by
//! default). Aliases that appear later get listeners at once, without a restart. The DNS
//! listener and the generated hosts file map names to these VIPs.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ProxyConfig;
use crate::discovery::AppProtocol;
use crate::forward::{Forwarder, Route};
use crate::logical::Table;
use crate::metrics::Metrics;
use crate::server::{Handler, HttpListener, Phase, serve_http, wait_for};
use crate::tcp::{TcpListenerCtx, TcpTarget, serve_tcp};

/// dnsName → VIP, shared with the DNS listener.
pub(crate) type VipMap = Arc<RwLock<BTreeMap<String, Ipv4Addr>>>;

pub(crate) struct AliasManager {
    pub(crate) table: watch::Receiver<Arc<Table>>,
    pub(crate) vips: VipMap,
    pub(crate) base: Ipv4Addr,
    pub(crate) prefix_len: u8,
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) config: Arc<ProxyConfig>,
    pub(crate) phase: watch::Receiver<Phase>,
    pub(crate) metrics: Metrics,
    pub(crate) hosts_file: Option<PathBuf>,
    /// Alias listener addresses, for tests and `/config`.
    pub(crate) bound: Arc<RwLock<BTreeMap<String, SocketAddr>>>,
}

// === impl AliasManager ===

impl AliasManager {
    /// Follows the routing table until the sidecar stops; then waits for its listeners.
    pub(crate) async fn run(mut self) {
        let mut listening: HashSet<(String, u16)> = HashSet::new();
        let mut children: Vec<JoinHandle<()>> = Vec::new();
        let mut phase = self.phase.clone();
        loop {
            self.sync(&mut listening, &mut children).await;
            tokio::select! {
                changed = self.table.changed() => if changed.is_err() { break },
                () = wait_for(&mut phase, Phase::Stopping) => break,
            }
        }
        wait_for(&mut phase, Phase::Stopping).await;
        for child in children {
            let _ = child.await;
        }
    }

    async fn sync(
        &mut self,
        listening: &mut HashSet<(String, u16)>,
        children: &mut Vec<JoinHandle<()>>,
    ) {
        let table = self.table.borrow_and_update().clone();
        let mut names_changed = false;
        for concrete in table.services() {
            for alias in &concrete.aliases {
                let key = (alias.dns_name.clone(), alias.port);
                if listening.contains(&key) {
                    continue;
                }
                let Some((vip, fresh)) = self.vip(&alias.dns_name) else {
                    tracing::warn!(alias = %alias, "no VIP left in the block");
                    continue;
                };
                names_changed |= fresh;
                let addr = SocketAddr::from((vip, alias.port));
                let listener = match TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(alias = %alias, %addr, error = %e, "cannot listen for alias");
                        continue;
                    }
                };
                listening.insert(key);
                self.bound
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(alias.to_string(), addr);
                let service: Arc<str> = Arc::from(concrete.name());
                tracing::info!(alias = %alias, %addr, service = %service, "alias listener");
                children.push(self.spawn_listener(listener, concrete.protocol, service));
            }
        }
        if names_changed && let Some(path) = &self.hosts_file {
            let text = hosts_file(
                &self.vips.read().unwrap_or_else(|e| e.into_inner()),
                &table.namespace,
            );
            if let Err(e) = write_in_place(path, &text).await {
                tracing::warn!(path = %path.display(), error = %e, "cannot write hosts file");
            }
        }
    }

    fn spawn_listener(
        &self,
        listener: TcpListener,
        protocol: AppProtocol,
        service: Arc<str>,
    ) -> JoinHandle<()> {
        let policy = self.config.policy(&service);
        if protocol == AppProtocol::Tcp {
            let ctx = Arc::new(TcpListenerCtx {
                name: "alias_tcp",
                target: TcpTarget::Service(self.table.clone(), service),
                config: self.config.clone(),
                phase: self.phase.clone(),
                idle: policy.timeouts.idle,
                metrics: self.metrics.clone(),
            });
            tokio::spawn(serve_tcp(listener, ctx))
        } else {
            let ctx = Arc::new(HttpListener::new(
                "alias",
                Handler::Proxy {
                    forwarder: self.forwarder.clone(),
                    route: Route::Service(self.table.clone(), service),
                    inbound: false,
                },
                self.phase.clone(),
                policy.timeouts.idle,
                self.config.drain_grace,
                &self.config.limits,
                self.metrics.clone(),
            ));
            tokio::spawn(serve_http(listener, ctx))
        }
    }

    /// The VIP of `name`, allocating the next free one; `true` when newly allocated.
    fn vip(&self, name: &str) -> Option<(Ipv4Addr, bool)> {
        let mut vips = self.vips.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = vips.get(name) {
            return Some((*v, false));
        }
        let n = u32::try_from(vips.len()).ok()?.checked_add(1)?;
        if n > max_vips(self.prefix_len) {
            return None;
        }
        let vip = Ipv4Addr::from(u32::from(self.base).checked_add(n)?);
        vips.insert(name.to_owned(), vip);
        Some((vip, true))
    }
}

/// Usable addresses of a block (network and broadcast excluded).
fn max_vips(prefix_len: u8) -> u32 {
    let host_bits = 32u32.saturating_sub(u32::from(prefix_len.min(32)));
    if host_bits >= 32 {
        u32::MAX - 1
    } else {
        (1u32 << host_bits).saturating_sub(2)
    }
}

/// `/etc/hosts` lines for every alias name: `VIP name name.namespace`.
pub(crate) fn hosts_file(vips: &BTreeMap<String, Ipv4Addr>, namespace: &str) -> String {
    let mut out = String::from(
        "# generated by the skiff sidecar: client alias VIPs\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    for (name, vip) in vips {
        if namespace.is_empty() || name.ends_with(namespace) {
            out.push_str(&format!("{vip}\t{name}\n"));
        } else {
            out.push_str(&format!("{vip}\t{name} {name}.{namespace}\n"));
        }
    }
    out
}

/// Rewrites the file in place rather than renaming over it: a task's `/etc/hosts` is a bind
/// mount of this file (`ip netns exec`), which would keep showing a renamed-over inode.
async fn write_in_place(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    tokio::fs::write(path, text).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes() {
        assert_eq!(max_vips(16), 65_534);
        assert_eq!(max_vips(30), 2);
        assert_eq!(max_vips(32), 0);
    }

    #[test]
    fn hosts_file_lists_short_and_qualified_names() {
        let vips = BTreeMap::from([
            ("orders".to_owned(), Ipv4Addr::new(127, 255, 0, 1)),
            (
                "users.prod.internal".to_owned(),
                Ipv4Addr::new(127, 255, 0, 2),
            ),
        ]);
        let text = hosts_file(&vips, "prod.internal");
        assert!(
            text.contains("127.255.0.1\torders orders.prod.internal\n"),
            "{text}"
        );
        assert!(
            text.contains("127.255.0.2\tusers.prod.internal\n"),
            "{text}"
        );
    }
}
