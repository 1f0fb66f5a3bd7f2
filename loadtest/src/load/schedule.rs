//! The open-loop schedule: when request `i` is due, how many are planned, which connection sends which.
//!
//! Request `i` is due at `start + i / rate` whatever happened to earlier ones,
//! and its latency is measured from that instant, not from when it was sent:
//! a stalled server delays the sends behind it, and that delay is latency the
//! users would have seen (the "coordinated omission" wrk2 corrects).

use std::time::Duration;

/// How many requests a run at `per_second` for `duration` plans, at most `max_requests`.
pub fn planned_requests(duration: Duration, per_second: f64, max_requests: Option<u64>) -> u64 {
    let planned = (duration.as_secs_f64() * per_second).floor();
    // Float to int casts saturate; NaN becomes 0.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let planned = planned as u64;
    match max_requests {
        Some(max) => planned.min(max),
        None => planned,
    }
}

/// When request `index` is due, counted from the start of the run.
pub fn offset(index: u64, per_second: f64) -> Duration {
    #[allow(clippy::cast_precision_loss)]
    let secs = index as f64 / per_second;
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// The requests connection `connection` of `connections` sends, in order: every
/// `connections`-th index, so that the connections interleave evenly.
pub fn connection_indices(
    connection: usize,
    connections: usize,
    total: u64,
) -> std::iter::StepBy<std::ops::Range<u64>> {
    let first = connection as u64;
    (first..total).step_by(connections.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_second_at_ten_per_second_is_ten_requests_a_tenth_apart() {
        let d = Duration::from_secs(1);
        assert_eq!(planned_requests(d, 10.0, None), 10);
        assert_eq!(planned_requests(d, 10.0, Some(3)), 3);
        assert_eq!(offset(0, 10.0), Duration::ZERO);
        assert_eq!(offset(5, 10.0), Duration::from_millis(500));
        let indices: Vec<u64> = connection_indices(1, 4, 10).collect();
        assert_eq!(indices, vec![1, 5, 9]);
    }

    #[test]
    fn degenerate_rates_plan_nothing() {
        let d = Duration::from_secs(3);
        assert_eq!(planned_requests(d, 0.0, None), 0);
        assert_eq!(planned_requests(d, f64::NAN, None), 0);
        assert_eq!(planned_requests(d, -5.0, None), 0);
        assert_eq!(planned_requests(Duration::ZERO, 1000.0, None), 0);
    }

    proptest! {
        #[test]
        fn every_planned_request_is_due_within_the_run(
            millis in 1u64..120_000,
            per_second in 0.1f64..200_000.0,
            max in proptest::option::of(0u64..1_000_000),
        ) {
            let duration = Duration::from_millis(millis);
            let total = planned_requests(duration, per_second, max);
            if let Some(max) = max {
                prop_assert!(total <= max);
            }
            if total > 0 {
                prop_assert!(offset(total - 1, per_second) <= duration);
            }
            // One more interval would have run past the end: `rate × duration` requests.
            if max.is_none_or(|max| total < max) {
                prop_assert!(offset(total + 1, per_second) + Duration::from_nanos(1) >= duration);
            }
        }

        #[test]
        fn offsets_never_go_backwards(per_second in 0.1f64..1_000_000.0, index in 0u64..10_000_000) {
            prop_assert!(offset(index, per_second) <= offset(index + 1, per_second));
        }

        #[test]
        fn connections_partition_the_plan(connections in 1usize..64, total in 0u64..5_000) {
            let mut seen = vec![0u8; usize::try_from(total).unwrap()];
            for connection in 0..connections {
                let mut previous = None;
                for index in connection_indices(connection, connections, total) {
                    seen[usize::try_from(index).unwrap()] += 1;
                    prop_assert!(previous.is_none_or(|p| p < index));
                    previous = Some(index);
                }
            }
            prop_assert!(seen.iter().all(|count| *count == 1));
        }
    }
}
