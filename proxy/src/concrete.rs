//! A target service's endpoint set as discovery gave it, and the choice of one endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::balance::{pick_p2c, pick_rr};
use crate::config::{BalancerKind, ProxyConfig, TargetPolicy};
use crate::discovery::{Alias, AppProtocol};
use crate::endpoint::{Endpoint, EndpointView};
use crate::error::ProxyError;
use crate::metrics::TargetMetrics;
use crate::outlier::may_eject;
use crate::retry::Budget;

/// State of a target service that outlives discovery updates.
pub(crate) struct Target {
    pub(crate) name: String,
    /// The discovery name, without the `inbound/` of inbound targets (telemetry's label).
    pub(crate) discovery_name: Arc<str>,
    pub(crate) policy: TargetPolicy,
    pub(crate) budget: Budget,
    pub(crate) metrics: Arc<TargetMetrics>,
    rr: AtomicUsize,
    pending: AtomicUsize,
}

/// Releases a pending-request slot when dropped.
pub(crate) struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint of a snapshot with what discovery said about it.
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) healthy: bool,
    pub(crate) draining: bool,
    pub(crate) endpoint: Arc<Endpoint>,
}

/// The endpoints of one target at one discovery revision.
pub(crate) struct Concrete {
    pub(crate) target: Arc<Target>,
    pub(crate) protocol: AppProtocol,
    pub(crate) aliases: Vec<Alias>,
    pub(crate) members: Vec<Member>,
    /// The endpoints traffic goes to: healthy, not draining; else (fail open) all of them.
    pub(crate) active: Vec<Arc<Endpoint>>,
}

#[derive(Serialize)]
pub(crate) struct MemberView {
    id: String,
    healthy: bool,
    draining: bool,
    active: bool,
    #[serde(flatten)]
    endpoint: EndpointView,
}

#[derive(Serialize)]
pub(crate) struct ConcreteView {
    name: String,
    protocol: AppProtocol,
    aliases: Vec<String>,
    fail_open: bool,
    endpoints: Vec<MemberView>,
}

// === impl ConcreteView ===

impl ConcreteView {
    pub(crate) fn name_key(&self) -> &str {
        &self.name
    }
}

// === impl Target ===

impl Target {
    pub(crate) fn new(
        name: &str,
        policy: TargetPolicy,
        metrics: Arc<TargetMetrics>,
        now: Instant,
    ) -> Self {
        Target {
            name: name.to_owned(),
            discovery_name: Arc::from(
                name.strip_prefix(crate::metrics::INBOUND_PREFIX)
                    .unwrap_or(name),
            ),
            budget: Budget::new(&policy.retry, now),
            policy,
            metrics,
            rr: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
        }
    }

    /// Takes a pending-request slot, or fails with 503 when `limit` are taken (circuit breaker).
    pub(crate) fn admit(&self, limit: usize) -> Result<Admission<'_>, ProxyError> {
        let before = self.pending.fetch_add(1, Ordering::Relaxed);
        let admission = Admission(&self.pending);
        if before >= limit {
            return Err(ProxyError::TooManyPending {
                service: self.name.clone(),
                limit,
            });
        }
        Ok(admission)
    }
}

// === impl Concrete ===

impl Concrete {
    pub(crate) fn new(
        target: Arc<Target>,
        protocol: AppProtocol,
        aliases: Vec<Alias>,
        members: Vec<Member>,
    ) -> Self {
        let mut active: Vec<Arc<Endpoint>> = members
            .iter()
            .filter(|m| m.healthy && !m.draining)
            .map(|m| m.endpoint.clone())
            .collect();
        if active.is_empty() {
            // HEALTHY_OR_ELSE_ALL: prefer non-draining ones.
            active = members
                .iter()
                .filter(|m| !m.draining)
                .map(|m| m.endpoint.clone())
                .collect();
        }
        if active.is_empty() {
            active = members.iter().map(|m| m.endpoint.clone()).collect();
        }
        Concrete {
            target,
            protocol,
            aliases,
            members,
            active,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.target.name
    }

    /// Picks an endpoint index into `active`, avoiding ejected endpoints while others exist
    /// and endpoints in `tried` when others exist.
    pub(crate) fn pick(&self, tried: &[usize], cfg: &ProxyConfig, now: Instant) -> Option<usize> {
        let n = self.active.len();
        if n == 0 {
            return None;
        }
        let limit = cfg.limits.max_connections_per_endpoint;
        let h1 = !self.protocol.is_h2();
        let ejected = |i: usize| self.active[i].is_ejected(now);
        let room = |i: usize| !h1 || self.active[i].in_flight() < limit;
        let fresh = |i: usize| !tried.contains(&i);
        let choose = |ok: &dyn Fn(usize) -> bool| -> Option<usize> {
            match cfg.balancer {
                BalancerKind::PeakEwma => pick_p2c(
                    n,
                    ok,
                    |i| self.active[i].cost(now, cfg.ewma_decay),
                    &mut rand::rng(),
                ),
                BalancerKind::RoundRobin => {
                    pick_rr(n, ok, self.target.rr.fetch_add(1, Ordering::Relaxed))
                }
            }
        };
        choose(&|i| fresh(i) && !ejected(i) && room(i))
            .or_else(|| choose(&|i| !ejected(i) && room(i)))
            .or_else(|| choose(&|i| fresh(i) && room(i)))
            .or_else(|| choose(&fresh))
            .or_else(|| choose(&|_| true))
    }

    /// Records an attempt on `active[idx]`; counts an ejection in metrics.
    pub(crate) fn record(
        &self,
        idx: usize,
        rtt: Option<Duration>,
        outcome: Option<bool>,
        cfg: &ProxyConfig,
        now: Instant,
    ) {
        let Some(ep) = self.active.get(idx) else {
            return;
        };
        let allowed = outcome == Some(false) && {
            let ejected = self.active.iter().filter(|e| e.is_ejected(now)).count();
            may_eject(self.active.len(), ejected, cfg.outlier.max_ejection_percent)
        };
        let ejected_gauge = &self.target.metrics.ejected;
        if let Some(time) = ep.record(now, rtt, outcome, cfg.ewma_decay, &cfg.outlier, allowed) {
            self.target.metrics.ejections.inc();
            let ejected = self.active.iter().filter(|e| e.is_ejected(now)).count();
            ejected_gauge.set(i64::try_from(ejected).unwrap_or(i64::MAX));
            tracing::info!(target_service = %self.target.name, endpoint = %ep.addr, ?time, "endpoint ejected");
        } else if ejected_gauge.get() > 0 {
            // Ejections expire on their own: recount only while some are in force.
            let ejected = self.active.iter().filter(|e| e.is_ejected(now)).count();
            ejected_gauge.set(i64::try_from(ejected).unwrap_or(i64::MAX));
        }
    }

    pub(crate) fn view(&self, now: Instant, decay: Duration) -> ConcreteView {
        let healthy_any = self.members.iter().any(|m| m.healthy && !m.draining);
        ConcreteView {
            name: self.target.name.clone(),
            protocol: self.protocol,
            aliases: self.aliases.iter().map(|a| a.to_string()).collect(),
            fail_open: !healthy_any && !self.members.is_empty(),
            endpoints: self
                .members
                .iter()
                .map(|m| MemberView {
                    id: m.id.clone(),
                    healthy: m.healthy,
                    draining: m.draining,
                    active: self.active.iter().any(|a| Arc::ptr_eq(a, &m.endpoint)),
                    endpoint: m.endpoint.view(now, decay),
                })
                .collect(),
        }
    }
}
