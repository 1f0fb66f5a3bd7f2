//! Published ports: a `hostPort` on 127.0.0.1, balanced over the service's running tasks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::plan::PublishedPort;
use crate::service::ServiceState;
use crate::task::TaskStatus;

/// Accepts on `listener` and splices each connection to the next running task's ingress
/// (its sidecar's listener for that port, or the app itself when there is no sidecar).
pub async fn run(
    listener: TcpListener,
    port: PublishedPort,
    service: watch::Receiver<ServiceState>,
    shutdown: watch::Receiver<bool>,
) {
    serve(listener, shutdown, move || {
        backends(&service.borrow(), &port)
    })
    .await;
}

/// Accepts on `listener` and splices every connection to the first of `targets` that answers.
pub async fn splice(
    listener: TcpListener,
    targets: Vec<SocketAddr>,
    shutdown: watch::Receiver<bool>,
) {
    serve(listener, shutdown, move || targets.clone()).await;
}

/// The accept loop both share: each connection goes to the backends `pick` gives at accept
/// time, tried round robin from a rotating start until one accepts.
async fn serve(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    pick: impl Fn() -> Vec<SocketAddr>,
) {
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let Ok((mut client, _)) = accepted else {
            continue;
        };
        let backends = pick();
        let next = next.clone();
        tokio::spawn(async move {
            let n = backends.len();
            let start = next.fetch_add(1, Ordering::Relaxed);
            for k in 0..n {
                let addr = backends[(start + k) % n];
                if let Ok(mut upstream) = TcpStream::connect(addr).await {
                    let _ = upstream.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
            }
        });
    }
}

fn backends(state: &ServiceState, port: &PublishedPort) -> Vec<SocketAddr> {
    state
        .tasks
        .iter()
        .filter(|t| matches!(t.status, TaskStatus::Running { .. }))
        .filter_map(|t| match &t.sidecar {
            Some(sc) => sc
                .ingress
                .iter()
                .find(|i| Some(&i.port_name) == port.port_name.as_ref())
                .map(|i| i.addr),
            None => Some(SocketAddr::new(t.ip.into(), port.container_port)),
        })
        .collect()
}
