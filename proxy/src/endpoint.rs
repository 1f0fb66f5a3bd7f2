//! One socket address of a target: its latency estimate, outlier state and load.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;
use serde::Serialize;
use tokio::time::Instant;

use crate::balance::PeakEwma;
use crate::config::OutlierConfig;
use crate::outlier::Outlier;
use crate::pool::Pool;

pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    pub(crate) authority: Authority,
    /// Its attributes in an attempt's span, encoded once (`trace::endpoint_attributes`).
    pub(crate) trace_attributes: Box<[u8]>,
    /// Upstream connections to this address.
    pub(crate) pool: Pool,
    state: Mutex<State>,
    pending: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
}

struct State {
    ewma: PeakEwma,
    outlier: Outlier,
}

/// `/endpoints` view of one endpoint.
#[derive(Serialize)]
pub(crate) struct EndpointView {
    pub(crate) addr: String,
    pub(crate) ewma_ms: f64,
    pub(crate) pending: usize,
    pub(crate) requests: u64,
    pub(crate) failures: u64,
    pub(crate) consecutive_failures: u32,
    pub(crate) ejections: u32,
    pub(crate) ejected: bool,
    pub(crate) ejected_for_ms: Option<u64>,
    /// Upstream connections opened to this endpoint so far.
    pub(crate) connections_opened: u64,
    /// Pooled HTTP/1.1 connections waiting for a request.
    pub(crate) idle_connections: usize,
}

/// Attempts in flight to any endpoint in this process: sent (or being sent) upstream, their
/// response head not in yet.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Whether any attempt is waiting on an upstream: the runtime's thread polls a little before
/// it sleeps only then (`src/park.rs` of the binary), since a fast upstream answers sooner than
/// a sleeping thread wakes.
pub fn responses_awaited() -> bool {
    PENDING.load(Ordering::Relaxed) != 0
}

/// Decrements the endpoint's pending count, and the process's, when dropped (with its
/// attempt's future on a timeout too).
pub(crate) struct PendingGuard<'a>(&'a AtomicUsize);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        PENDING.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Endpoint ===

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr, initial_rtt: Duration, now: Instant) -> Self {
        let authority = match Authority::try_from(addr.to_string().as_str()) {
            Ok(a) => a,
            // A SocketAddr always renders as a valid authority.
            Err(_) => Authority::from_static("invalid"),
        };
        Endpoint {
            addr,
            authority,
            trace_attributes: crate::trace::endpoint_attributes(addr),
            pool: Pool::default(),
            state: Mutex::new(State {
                ewma: PeakEwma::new(initial_rtt, now),
                outlier: Outlier::default(),
            }),
            pending: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Peak-EWMA latency × (in-flight + 1).
    pub(crate) fn cost(&self, now: Instant, decay: Duration) -> f64 {
        let est = self.state().ewma.estimate(now, decay);
        est * (self.pending.load(Ordering::Relaxed) + 1) as f64
    }

    /// Attempts in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.state().outlier.is_ejected(now)
    }

    pub(crate) fn begin(&self) -> PendingGuard<'_> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        PENDING.fetch_add(1, Ordering::Relaxed);
        PendingGuard(&self.pending)
    }

    /// Records an attempt's result: its latency (when it means something) feeds the EWMA; its
    /// outcome (when known: a gRPC status may come later, in trailers) feeds outlier
    /// detection. Returns the ejection time if this ejected the endpoint.
    pub(crate) fn record(
        &self,
        now: Instant,
        rtt: Option<Duration>,
        outcome: Option<bool>,
        decay: Duration,
        outlier: &OutlierConfig,
        may_eject: bool,
    ) -> Option<Duration> {
        let mut st = self.state();
        if let Some(rtt) = rtt {
            st.ewma.observe(rtt, now, decay);
        }
        match outcome {
            Some(true) => {
                st.outlier.success(now, outlier);
                None
            }
            Some(false) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                st.outlier.failure(now, outlier, may_eject)
            }
            None => None,
        }
    }

    pub(crate) fn view(&self, now: Instant, decay: Duration) -> EndpointView {
        let st = self.state();
        EndpointView {
            addr: self.addr.to_string(),
            ewma_ms: st.ewma.estimate(now, decay) / 1e6,
            pending: self.pending.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            consecutive_failures: st.outlier.consecutive_failures(),
            ejections: st.outlier.ejections(),
            ejected: st.outlier.is_ejected(now),
            ejected_for_ms: st.outlier.ejected_for(now).map(|d| d.as_millis() as u64),
            connections_opened: self.pool.opened(),
            idle_connections: self.pool.idle_count(),
        }
    }
}
