//! Endpoint choice: power of two choices over peak-EWMA cost, or round robin. Pure functions.
//!
//! Why peak-EWMA: a mean hides a sudden slowdown for many samples, a peak reacts to it at
//! once and forgets it smoothly (tower's and linkerd's balancer). Why two random choices:
//! comparing two endpoints gets nearly all of the benefit of comparing all of them, without
//! every proxy herding onto the same "best" endpoint.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Peak-sensitive exponentially weighted moving average of round-trip time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeakEwma {
    estimate_ns: f64,
    stamp: Instant,
}

// === impl PeakEwma ===

impl PeakEwma {
    pub(crate) fn new(initial: Duration, now: Instant) -> Self {
        PeakEwma {
            estimate_ns: initial.as_nanos() as f64,
            stamp: now,
        }
    }

    /// The estimate at `now`, decayed towards zero since the last sample so that an endpoint
    /// that was slow once gets tried again eventually.
    pub(crate) fn estimate(&self, now: Instant, decay: Duration) -> f64 {
        self.estimate_ns * decay_weight(now.saturating_duration_since(self.stamp), decay)
    }

    /// Adds a sample: a higher one replaces the estimate (the peak), a lower one is mixed in.
    pub(crate) fn observe(&mut self, rtt: Duration, now: Instant, decay: Duration) {
        let rtt = rtt.as_nanos() as f64;
        let elapsed = now.saturating_duration_since(self.stamp);
        let current = self.estimate_ns;
        self.estimate_ns = if rtt > current {
            rtt
        } else {
            let w = decay_weight(elapsed, decay);
            current * w + rtt * (1.0 - w)
        };
        self.stamp = now;
    }
}

/// `exp(-elapsed/decay)`: 1 for no time, towards 0 for long times.
pub(crate) fn decay_weight(elapsed: Duration, decay: Duration) -> f64 {
    let decay = decay.as_secs_f64();
    if decay <= 0.0 {
        return 0.0;
    }
    (-elapsed.as_secs_f64() / decay).exp()
}

/// Power of two choices among the `n` indices for which `eligible` holds: two distinct random
/// eligible indices, the one with the lower `cost` wins. Allocation-free.
pub(crate) fn pick_p2c<R: Rng + ?Sized>(
    n: usize,
    eligible: impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> f64,
    rng: &mut R,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    if n == 1 {
        return eligible(0).then_some(0);
    }
    // Fast path: two distinct random indices that are both eligible.
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    if eligible(a) && eligible(b) {
        return Some(if cost(b) < cost(a) { b } else { a });
    }
    let count = (0..n).filter(|&i| eligible(i)).count();
    match count {
        0 => None,
        1 => (0..n).find(|&i| eligible(i)),
        _ => {
            let ka = rng.random_range(0..count);
            let mut kb = rng.random_range(0..count - 1);
            if kb >= ka {
                kb += 1;
            }
            let nth = |k: usize| (0..n).filter(|&i| eligible(i)).nth(k);
            let (a, b) = (nth(ka)?, nth(kb)?);
            Some(if cost(b) < cost(a) { b } else { a })
        }
    }
}

/// Round robin: the first eligible index at or after `counter % n`.
pub(crate) fn pick_rr(n: usize, eligible: impl Fn(usize) -> bool, counter: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let start = counter % n;
    (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const DECAY: Duration = Duration::from_secs(10);

    proptest! {
        #[test]
        fn p2c_only_picks_eligible(mask in proptest::collection::vec(any::<bool>(), 0..20),
                                   costs in proptest::collection::vec(0.0f64..1e9, 20),
                                   seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let n = mask.len();
            let got = pick_p2c(n, |i| mask[i], |i| costs[i], &mut rng);
            match got {
                Some(i) => prop_assert!(mask[i]),
                None => prop_assert!(mask.iter().all(|m| !m)),
            }
        }

        #[test]
        fn p2c_never_picks_the_single_worst_of_many(seed in any::<u64>(), n in 2usize..10) {
            // The most expensive endpoint can only win if it is compared with itself, which
            // never happens: two distinct indices are compared.
            let mut rng = StdRng::seed_from_u64(seed);
            let got = pick_p2c(n, |_| true, |i| if i == 0 { 1e12 } else { i as f64 }, &mut rng);
            prop_assert_ne!(got, Some(0));
        }

        #[test]
        fn rr_visits_every_eligible(mask in proptest::collection::vec(any::<bool>(), 1..16)) {
            let n = mask.len();
            let mut seen = vec![false; n];
            for c in 0..n {
                if let Some(i) = pick_rr(n, |i| mask[i], c) {
                    prop_assert!(mask[i]);
                    seen[i] = true;
                }
            }
            prop_assert_eq!(seen, mask);
        }

        #[test]
        fn ewma_stays_between_prev_and_sample(initial in 0u64..1_000_000_000, sample in 0u64..1_000_000_000,
                                              gap_ms in 0u64..100_000) {
            let t0 = Instant::now();
            let mut e = PeakEwma::new(Duration::from_nanos(initial), t0);
            let t1 = t0 + Duration::from_millis(gap_ms);
            e.observe(Duration::from_nanos(sample), t1, DECAY);
            let est = e.estimate(t1, DECAY);
            let (lo, hi) = (initial.min(sample) as f64, initial.max(sample) as f64);
            prop_assert!(est >= lo - 1.0 && est <= hi + 1.0, "est {est} not in [{lo}, {hi}]");
            if sample > initial {
                prop_assert!((est - sample as f64).abs() < 1.0, "a peak replaces the estimate");
            }
        }

        #[test]
        fn ewma_decays_monotonically(initial in 1u64..1_000_000_000, a in 0u64..100_000, b in 0u64..100_000) {
            let t0 = Instant::now();
            let e = PeakEwma::new(Duration::from_nanos(initial), t0);
            let (a, b) = (a.min(b), a.max(b));
            prop_assert!(e.estimate(t0 + Duration::from_millis(b), DECAY)
                <= e.estimate(t0 + Duration::from_millis(a), DECAY));
        }
    }
}
