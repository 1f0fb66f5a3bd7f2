//! Retry rules: what may be retried, back-off with full jitter, and a budget.
//!
//! Why a budget and not only "max retries": with 3 attempts per request, a sick service
//! sees up to 3× its load exactly when it can least take it. A budget (tower's `TpsBudget`)
//! lets retries add at most a share of the recent request rate (plus a small floor, so that
//! a quiet service can still retry), which turns a retry storm into a bounded bump.

use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use rand::Rng;
use tokio::time::Instant;

use crate::config::RetryConfig;

/// Why an attempt is retried (a bounded metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryReason {
    Connect,
    Reset,
    Timeout,
    Status502,
    Status503,
    Status504,
    GrpcUnavailable,
}

impl RetryReason {
    pub(crate) const ALL: [RetryReason; 7] = [
        RetryReason::Connect,
        RetryReason::Reset,
        RetryReason::Timeout,
        RetryReason::Status502,
        RetryReason::Status503,
        RetryReason::Status504,
        RetryReason::GrpcUnavailable,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "per_try_timeout",
            RetryReason::Status502 => "status_502",
            RetryReason::Status503 => "status_503",
            RetryReason::Status504 => "status_504",
            RetryReason::GrpcUnavailable => "grpc_unavailable",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether the upstream may have acted on the request (only idempotent ones are retried).
    pub(crate) fn upstream_saw_request(self) -> bool {
        !matches!(self, RetryReason::Connect)
    }

    /// The retry reason for a response status, if it is one we retry.
    pub(crate) fn for_status(status: StatusCode) -> Option<RetryReason> {
        match status {
            StatusCode::BAD_GATEWAY => Some(RetryReason::Status502),
            StatusCode::SERVICE_UNAVAILABLE => Some(RetryReason::Status503),
            StatusCode::GATEWAY_TIMEOUT => Some(RetryReason::Status504),
            _ => None,
        }
    }
}

/// GET, HEAD, OPTIONS, PUT, DELETE, TRACE, or any request with an `Idempotency-Key`.
pub(crate) fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key("idempotency-key")
}

/// Full-jitter exponential back-off before retry number `retry` (1 for the first retry):
/// uniform in `[0, min(cap, base × 2^(retry-1))]`.
pub(crate) fn backoff<R: Rng + ?Sized>(
    retry: u32,
    base: Duration,
    cap: Duration,
    rng: &mut R,
) -> Duration {
    let exp = base.saturating_mul(1u32 << retry.saturating_sub(1).min(20));
    let max = exp.min(cap);
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.random_range(0..=max.as_nanos().min(u128::from(u64::MAX)) as u64))
}

const SLOTS: usize = 10;

/// A sliding-window retry budget: withdrawals ≤ floor × window + percent × deposits.
#[derive(Debug)]
pub(crate) struct Budget {
    slot: Duration,
    percent: f64,
    reserve: f64,
    inner: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    base: Instant,
    epoch: u64,
    deposits: [u32; SLOTS],
    withdrawals: [u32; SLOTS],
}

// === impl Budget ===

impl Budget {
    pub(crate) fn new(cfg: &RetryConfig, now: Instant) -> Self {
        let ttl = cfg.budget_ttl.max(Duration::from_millis(SLOTS as u64));
        Budget {
            slot: ttl / SLOTS as u32,
            percent: cfg.budget_retry_percent.clamp(0.0, 1.0),
            reserve: f64::from(cfg.budget_min_per_second) * ttl.as_secs_f64(),
            inner: Mutex::new(Window {
                base: now,
                epoch: 0,
                deposits: [0; SLOTS],
                withdrawals: [0; SLOTS],
            }),
        }
    }

    /// Records a request.
    pub(crate) fn deposit(&self, now: Instant) {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let i = w.advance(now, self.slot);
        w.deposits[i] = w.deposits[i].saturating_add(1);
    }

    /// Takes one retry from the budget, if there is one.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let i = w.advance(now, self.slot);
        let deposits: u64 = w.deposits.iter().map(|&d| u64::from(d)).sum();
        let withdrawals: u64 = w.withdrawals.iter().map(|&d| u64::from(d)).sum();
        let balance = self.reserve + self.percent * deposits as f64 - withdrawals as f64;
        if balance >= 1.0 {
            w.withdrawals[i] = w.withdrawals[i].saturating_add(1);
            true
        } else {
            false
        }
    }
}

impl Window {
    /// Moves the window to `now`, clearing slots that fell out; returns the current slot.
    fn advance(&mut self, now: Instant, slot: Duration) -> usize {
        let slot_ns = slot.as_nanos().max(1);
        let epoch = (now.saturating_duration_since(self.base).as_nanos() / slot_ns) as u64;
        if epoch > self.epoch {
            let steps = (epoch - self.epoch).min(SLOTS as u64);
            for k in 1..=steps {
                let i = ((self.epoch + k) % SLOTS as u64) as usize;
                self.deposits[i] = 0;
                self.withdrawals[i] = 0;
            }
            self.epoch = epoch;
        }
        (self.epoch % SLOTS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn cfg(percent: f64, floor: u32) -> RetryConfig {
        RetryConfig {
            budget_retry_percent: percent,
            budget_min_per_second: floor,
            budget_ttl: Duration::from_secs(10),
            ..RetryConfig::default()
        }
    }

    #[test]
    fn idempotency_rules() {
        let h = HeaderMap::new();
        assert!(is_idempotent(&Method::GET, &h));
        assert!(is_idempotent(&Method::PUT, &h));
        assert!(!is_idempotent(&Method::POST, &h));
        let mut k = HeaderMap::new();
        k.insert("idempotency-key", "abc".parse().unwrap());
        assert!(is_idempotent(&Method::POST, &k));
        assert!(!RetryReason::Connect.upstream_saw_request());
        assert!(RetryReason::Status503.upstream_saw_request());
    }

    proptest! {
        #[test]
        fn backoff_is_within_cap(retry in 1u32..40, seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let base = Duration::from_millis(25);
            let cap = Duration::from_millis(250);
            let d = backoff(retry, base, cap, &mut rng);
            prop_assert!(d <= cap);
            prop_assert!(d <= base * 2u32.pow(retry.min(10) - 1));
        }

        #[test]
        fn budget_bounds_withdrawals(deposits in 0u32..2000, tries in 0u32..3000,
                                     percent in 0.0f64..1.0, floor in 0u32..20) {
            let now = Instant::now();
            let b = Budget::new(&cfg(percent, floor), now);
            for _ in 0..deposits { b.deposit(now); }
            let granted = (0..tries).filter(|_| b.withdraw(now)).count() as f64;
            let bound = f64::from(floor) * 10.0 + percent * f64::from(deposits);
            prop_assert!(granted <= bound + 1e-9, "granted {granted} > bound {bound}");
            prop_assert!(granted >= (bound.floor() - 1.0).min(f64::from(tries)), "granted {granted} well under {bound}");
        }

        #[test]
        fn budget_refills_after_the_window(floor in 1u32..10) {
            let now = Instant::now();
            let b = Budget::new(&cfg(0.0, floor), now);
            while b.withdraw(now) {}
            prop_assert!(!b.withdraw(now));
            prop_assert!(b.withdraw(now + Duration::from_secs(11)));
        }
    }
}
