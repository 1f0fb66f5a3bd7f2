//! Tests of the latency summary and the report's formats.

use super::*;
use proptest::prelude::*;

fn report() -> Report {
    let mut histogram = new_histogram().unwrap();
    for us in 1..=1000 {
        histogram.record(us).unwrap();
    }
    let latency = LatencySummary::from_histogram(&histogram);
    Report {
        mode: "rate",
        protocol: Protocol::Http1,
        targets: vec!["http://127.0.0.1:8080/".into()],
        proxy: None,
        connections: 16,
        target_rate: Some(2000.0),
        elapsed_secs: 0.5,
        planned: 1000,
        sent: 1000,
        not_sent: 0,
        responses: 1000,
        ok: 998,
        throughput: 2000.0,
        statuses: BTreeMap::from([(200, 998), (503, 2)]),
        errors: ErrorCounts {
            status_5xx: 2,
            ..ErrorCounts::default()
        },
        latency: latency.clone(),
        service_time: latency,
        bytes_received: 2000,
        slow: None,
    }
}

#[test]
fn summary_of_one_to_a_thousand() {
    let summary = report().latency;
    assert_eq!(summary.count, 1000);
    assert_eq!(summary.min_us, 1);
    assert_eq!(summary.p50_us, 500);
    assert_eq!(summary.p90_us, 900);
    assert_eq!(summary.p99_us, 990);
    assert_eq!(summary.p999_us, 999);
    assert_eq!(summary.max_us, 1000);
    assert!((summary.mean_us - 500.5).abs() < 0.5);
}

#[test]
fn empty_histogram_summarises_to_zeroes() {
    assert_eq!(
        LatencySummary::from_histogram(&new_histogram().unwrap()),
        LatencySummary::default()
    );
}

#[test]
fn markdown_has_counts_latencies_errors_and_statuses() {
    let markdown = report().to_markdown();
    assert!(markdown.starts_with(
        "### http://127.0.0.1:8080/ — open loop at 2000 req/s, 16 connections, HTTP/1.1, 0.5 s\n"
    ));
    assert!(
        markdown.contains("| 1000 | 1000 | 0 | 1000 | 998 | 2 | 2000 |"),
        "{markdown}"
    );
    assert!(markdown.contains("| from scheduled send | 500 | 900 | 990 | 999 | 1000 | 500 |"));
    assert!(markdown.contains("| service time | 500 |"));
    assert!(markdown.contains("| status 5xx | 2 |"));
    assert!(!markdown.contains("| connect |"));
    assert!(markdown.contains("Statuses: 200: 998, 503: 2."));
}

#[test]
fn closed_loop_markdown_has_one_latency_row() {
    let mut report = report();
    report.mode = "max";
    report.target_rate = None;
    report.errors = ErrorCounts::default();
    let markdown = report.to_markdown();
    assert!(markdown.contains("closed loop, as fast as possible"));
    assert!(markdown.contains("| from send | 500 |"));
    assert!(!markdown.contains("service time"));
    assert!(!markdown.contains("| error | count |"));
}

#[test]
fn json_has_the_documented_fields() {
    let json: serde_json::Value = serde_json::from_str(&report().to_json().unwrap()).unwrap();
    assert_eq!(json["mode"], "rate");
    assert_eq!(json["protocol"], "http1");
    assert_eq!(json["errors"]["status_5xx"], 2);
    assert_eq!(json["statuses"]["503"], 2);
    assert_eq!(json["latency"]["p999_us"], 999);
    assert_eq!(json["target_rate"], 2000.0);
}

#[test]
fn error_counts_add_up() {
    let mut counts = ErrorCounts::default();
    for kind in [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Status4xx,
        ErrorKind::Status5xx,
        ErrorKind::Reset,
        ErrorKind::Protocol,
        ErrorKind::Reset,
    ] {
        counts.count(kind);
    }
    assert_eq!(counts.total(), 7);
    assert_eq!(counts.reset, 2);
    let mut sum = counts.clone();
    sum.add(&counts);
    assert_eq!(sum.total(), 14);
}

proptest! {
    #[test]
    fn percentiles_are_ordered_and_within_recorded_bounds(
        values in proptest::collection::vec(1u64..HISTOGRAM_MAX_US, 1..500),
    ) {
        let mut histogram = new_histogram().unwrap();
        for value in &values {
            histogram.record(*value).unwrap();
        }
        let s = LatencySummary::from_histogram(&histogram);
        let min = *values.iter().min().unwrap();
        let max = *values.iter().max().unwrap();
        prop_assert_eq!(s.count, values.len() as u64);
        prop_assert!(s.min_us <= s.p50_us && s.p50_us <= s.p90_us && s.p90_us <= s.p99_us);
        prop_assert!(s.p99_us <= s.p999_us && s.p999_us <= s.max_us);
        // Three significant digits: within 0.1% of the true extremes.
        prop_assert!(s.min_us <= min && min - s.min_us <= min / 1000 + 1);
        prop_assert!(s.max_us >= max && s.max_us - max <= max / 1000 + 1);
    }

    #[test]
    fn merged_histograms_summarise_like_one(
        a in proptest::collection::vec(1u64..1_000_000, 0..200),
        b in proptest::collection::vec(1u64..1_000_000, 0..200),
    ) {
        let mut left = new_histogram().unwrap();
        let mut right = new_histogram().unwrap();
        let mut both = new_histogram().unwrap();
        for v in &a { left.record(*v).unwrap(); both.record(*v).unwrap(); }
        for v in &b { right.record(*v).unwrap(); both.record(*v).unwrap(); }
        left.add(&right).unwrap();
        prop_assert_eq!(LatencySummary::from_histogram(&left), LatencySummary::from_histogram(&both));
    }
}

#[test]
fn slow_requests_keep_their_times_and_the_fastest_rest_its_max() {
    let at = tokio::time::Instant::now();
    let span = |from_ms: u64, to_ms: u64| SlowRequest {
        scheduled: at + std::time::Duration::from_millis(from_ms),
        done: at + std::time::Duration::from_millis(to_ms),
    };
    let mut slow = SlowRequests::new(std::time::Duration::from_millis(2));
    assert_eq!(slow.over_us, 2_000);
    slow.record(150, span(0, 0));
    slow.record(2_000, span(1, 3));
    slow.record(7_000, span(5, 12));
    assert_eq!(slow.kept, vec![span(5, 12)]);
    assert_eq!(slow.max_below_us, 2_000);

    let mut other = SlowRequests::new(std::time::Duration::from_millis(2));
    other.record(3_000, span(20, 23));
    other.record(900, span(30, 30));
    slow.merge(&other);
    assert_eq!(slow.kept, vec![span(5, 12), span(20, 23)]);
    assert_eq!((slow.max_below_us, slow.not_kept), (2_000, 0));
}

#[test]
fn slow_requests_past_the_cap_are_counted_not_kept() {
    let at = tokio::time::Instant::now();
    let request = SlowRequest {
        scheduled: at,
        done: at,
    };
    let mut full = SlowRequests::new(std::time::Duration::ZERO);
    full.kept = vec![request; crate::load::MAX_SLOW_REQUESTS - 1];
    full.record(10, request);
    full.record(10, request);
    assert_eq!(
        (full.kept.len(), full.not_kept),
        (crate::load::MAX_SLOW_REQUESTS, 1)
    );
    let mut two = SlowRequests::new(std::time::Duration::ZERO);
    two.record(5, request);
    two.record(5, request);
    full.merge(&two);
    assert_eq!(
        (full.kept.len(), full.not_kept),
        (crate::load::MAX_SLOW_REQUESTS, 3)
    );
}
