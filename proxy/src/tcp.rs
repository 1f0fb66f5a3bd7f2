//! Opaque TCP: per-connection balancing, connect retries on another endpoint, idle timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::concrete::Concrete;
use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::logical::Table;
use crate::metrics::Metrics;
use crate::server::{
    Activity, ByteCounters, IdleIo, Limits, Phase, accept_until_stopping, sleep_until_opt, wait_for,
};

/// Where a TCP listener sends its connections.
#[derive(Clone)]
pub(crate) enum TcpTarget {
    /// A discovered service, looked up per connection.
    Service(watch::Receiver<Arc<Table>>, Arc<str>),
    /// The local app.
    Fixed(Arc<Concrete>),
}

pub(crate) struct TcpListenerCtx {
    pub(crate) name: &'static str,
    pub(crate) target: TcpTarget,
    pub(crate) config: Arc<ProxyConfig>,
    pub(crate) phase: watch::Receiver<Phase>,
    pub(crate) idle: Option<Duration>,
    pub(crate) metrics: Metrics,
}

/// Accepts until `Stopping`, then lets open connections finish within the drain grace.
pub(crate) async fn serve_tcp(listener: TcpListener, ctx: Arc<TcpListenerCtx>) {
    let limits = Limits {
        name: ctx.name,
        max_connections: ctx.config.limits.max_connections,
        metrics: ctx.metrics.clone(),
    };
    accept_until_stopping(
        listener,
        ctx.phase.clone(),
        limits,
        drop,
        move |stream, _peer, slot| {
            let ctx = ctx.clone();
            async move {
                if let Err(e) = proxy_connection(stream, &ctx).await {
                    ctx.metrics
                        .downstream_errors
                        .with_label_values(&[e.kind()])
                        .inc();
                    tracing::debug!(listener = ctx.name, error = %e, "tcp connection failed");
                }
                drop(slot);
            }
        },
    )
    .await;
}

/// route → pick → connect (retrying another endpoint) → splice until idle or closed.
async fn proxy_connection(down: TcpStream, ctx: &TcpListenerCtx) -> Result<(), ProxyError> {
    let concrete = match &ctx.target {
        TcpTarget::Fixed(c) => c.clone(),
        TcpTarget::Service(table, name) => {
            let table = table.borrow().clone();
            table
                .service(name)
                .cloned()
                .ok_or_else(|| ProxyError::NoEndpoints {
                    service: name.to_string(),
                })?
        }
    };
    let policy = &concrete.target.policy;
    let mut tried = Vec::new();
    let mut up = None;
    let mut last_err = None;
    for _ in 0..=policy.retry.max_retries {
        let now = Instant::now();
        let Some(idx) = concrete.pick(&tried, &ctx.config, now) else {
            break;
        };
        let addr = concrete.active[idx].addr;
        match tokio::time::timeout(policy.timeouts.connect, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                concrete.record(
                    idx,
                    Some(now.elapsed()),
                    Some(true),
                    &ctx.config,
                    Instant::now(),
                );
                up = Some(s);
                break;
            }
            Ok(Err(e)) => {
                last_err = Some(ProxyError::Connect {
                    service: concrete.name().to_owned(),
                    addr: addr.to_string(),
                    source: Box::new(e),
                });
            }
            Err(_) => {
                last_err = Some(ProxyError::ConnectTimeout {
                    service: concrete.name().to_owned(),
                    addr: addr.to_string(),
                });
            }
        }
        concrete.record(idx, None, Some(false), &ctx.config, Instant::now());
        concrete
            .target
            .metrics
            .record_retry(crate::retry::RetryReason::Connect);
        tried.push(idx);
    }
    let Some(mut up) = up else {
        concrete.target.metrics.record_status(None);
        return Err(last_err.unwrap_or_else(|| ProxyError::NoEndpoints {
            service: concrete.name().to_owned(),
        }));
    };
    let _ = up.set_nodelay(true);
    let _ = down.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let mut down = IdleIo::new(
        down,
        activity.clone(),
        ByteCounters::new(&ctx.metrics, ctx.name),
    );
    let mut phase = ctx.phase.clone();
    let mut hard_stop = None;
    let splice = tokio::io::copy_bidirectional(&mut down, &mut up);
    tokio::pin!(splice);
    loop {
        tokio::select! {
            res = &mut splice => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "tcp splice ended");
                }
                return Ok(());
            }
            _ = activity.expired(ctx.idle, None) => {
                tracing::debug!(listener = ctx.name, "tcp connection idle; closing");
                return Ok(());
            }
            () = wait_for(&mut phase, Phase::Stopping), if hard_stop.is_none() => {
                hard_stop = Some(Instant::now() + ctx.config.drain_grace);
            }
            () = sleep_until_opt(hard_stop) => return Ok(()),
        }
    }
}
