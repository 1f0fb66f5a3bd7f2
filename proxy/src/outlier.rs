//! Outlier detection: consecutive failures eject an endpoint for a growing, capped time.
//!
//! Envoy's consecutive-5xx detector, reduced to what Service Connect exposes: N failures in a
//! row eject for `base × ejections` (at most `max`), a success clears the count, and the
//! service-level guard [`may_eject`] keeps at most a share of endpoints out and always one in.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::OutlierConfig;

#[derive(Clone, Debug, Default)]
pub(crate) struct Outlier {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

// === impl Outlier ===

impl Outlier {
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Time left ejected at `now`.
    pub(crate) fn ejected_for(&self, now: Instant) -> Option<Duration> {
        self.ejected_until.filter(|&u| now < u).map(|u| u - now)
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    pub(crate) fn ejections(&self) -> u32 {
        self.ejections
    }

    /// A success clears the failure count; a long healthy stretch forgets past ejections.
    pub(crate) fn success(&mut self, now: Instant, cfg: &OutlierConfig) {
        self.consecutive = 0;
        if let Some(until) = self.ejected_until
            && now >= until + cfg.max_ejection
        {
            self.ejections = 0;
            self.ejected_until = None;
        }
    }

    /// Counts a failure; returns the ejection time when this failure ejects the endpoint.
    /// `may_eject` is the service-level guard ([`may_eject`]).
    pub(crate) fn failure(
        &mut self,
        now: Instant,
        cfg: &OutlierConfig,
        may_eject: bool,
    ) -> Option<Duration> {
        if self.is_ejected(now) {
            // Traffic reached it because nothing else was left (fail open): no extension.
            return None;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        if self.consecutive < cfg.consecutive_failures.max(1) || !may_eject {
            return None;
        }
        self.ejections = self.ejections.saturating_add(1);
        let time = cfg
            .base_ejection
            .saturating_mul(self.ejections)
            .min(cfg.max_ejection);
        self.ejected_until = Some(now + time);
        self.consecutive = 0;
        Some(time)
    }
}

/// Whether one more endpoint of `total` may be ejected while `ejected` already are: at most
/// `max_percent` of them, and at least one always kept.
pub(crate) fn may_eject(total: usize, ejected: usize, max_percent: u8) -> bool {
    let limit = total.saturating_mul(usize::from(max_percent.min(100))) / 100;
    ejected < limit && total.saturating_sub(ejected + 1) >= 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn five_failures_eject_and_time_grows_to_cap() {
        let cfg = cfg();
        let mut now = Instant::now();
        let mut o = Outlier::default();
        for round in 1..=12u32 {
            for i in 1..=5 {
                let r = o.failure(now, &cfg, true);
                assert_eq!(r.is_some(), i == 5, "round {round} failure {i}");
            }
            assert!(o.is_ejected(now));
            let expect = Duration::from_secs(30 * u64::from(round)).min(Duration::from_secs(300));
            assert_eq!(o.ejected_for(now), Some(expect));
            now += expect;
            assert!(!o.is_ejected(now), "comes back after the time");
        }
    }

    #[test]
    fn a_success_clears_the_count() {
        let cfg = cfg();
        let now = Instant::now();
        let mut o = Outlier::default();
        for _ in 0..4 {
            assert!(o.failure(now, &cfg, true).is_none());
        }
        o.success(now, &cfg);
        for _ in 0..4 {
            assert!(o.failure(now, &cfg, true).is_none());
        }
        assert!(!o.is_ejected(now));
    }

    proptest! {
        #[test]
        fn guard_keeps_one_and_respects_percent(total in 0usize..200, ejected in 0usize..200, pct in 0u8..=100) {
            let ejected = ejected.min(total);
            if may_eject(total, ejected, pct) {
                prop_assert!(total - ejected > 1);
                prop_assert!((ejected + 1) * 100 <= total * usize::from(pct));
            }
        }

        #[test]
        fn ejecting_greedily_never_empties_a_service(total in 1usize..100, pct in 0u8..=100) {
            let mut ejected = 0;
            while may_eject(total, ejected, pct) {
                ejected += 1;
            }
            prop_assert!(ejected < total);
            prop_assert!(ejected * 100 <= total * usize::from(pct));
        }
    }
}
