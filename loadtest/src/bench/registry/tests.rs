//! Tests of the registry benchmark's parts: the data set, dnsperf's output, the probes' wire formats, the report.

use std::net::Ipv4Addr;
use std::path::Path;

use super::*;

const DNSPERF_UDP: &str = "DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 15353 -d q.txt -l 3 -c 4 -T 1
[Status] Sending queries (to 127.0.0.1:15353)
[Timeout] Query timed out: msg id 747
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         215686
  Queries completed:    215382 (99.86%)
  Queries lost:         304 (0.14%)

  Response codes:       NOERROR 215382 (100.00%)
  Average packet size:  request 38, response 86
  Run time (s):         3.004776
  Queries per second:   71679.885622

  Average Latency (s):  0.002355 (min 0.000015, max 0.032966)
  Latency StdDev (s):   0.003289

";

const DNSPERF_TCP: &str = "[Status] Testing complete (time limit)

Statistics:

  Queries sent:         86911
  Queries completed:    86911 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 86911 (100.00%)
  Average packet size:  request 38, response 86
  Run time (s):         2.050004
  Queries per second:   42395.527033

  Average Latency (s):  0.001922 (min 0.000023, max 0.082141)
  Latency StdDev (s):   0.003757

Connection Statistics:

  Reconnections:        0

  Average Latency (s):  0.003990 (min 0.003187, max 0.004289)
  Latency StdDev (s):   0.000536
";

#[test]
fn dnsperf_udp_statistics_parse_past_timeout_lines() {
    let stats = dnsperf::parse(DNSPERF_UDP).unwrap();
    assert_eq!(stats.sent, 215_686);
    assert_eq!(stats.completed, 215_382);
    assert_eq!(stats.lost, 304);
    assert_eq!(stats.response_codes, "NOERROR 215382 (100.00%)");
    assert!((stats.qps - 71_679.885_622).abs() < 1e-6);
    assert!((stats.run_time_secs - 3.004_776).abs() < 1e-9);
    assert!((stats.avg_latency_ms - 2.355).abs() < 1e-9);
    assert!((stats.min_latency_ms - 0.015).abs() < 1e-9);
    assert!((stats.max_latency_ms - 32.966).abs() < 1e-9);
    assert!((stats.latency_stddev_ms - 3.289).abs() < 1e-9);
}

#[test]
fn dnsperf_tcp_latency_is_the_queries_not_the_connections() {
    let stats = dnsperf::parse(DNSPERF_TCP).unwrap();
    assert_eq!(stats.completed, 86_911);
    assert_eq!(stats.lost, 0);
    assert!((stats.avg_latency_ms - 1.922).abs() < 1e-9);
    assert!((stats.max_latency_ms - 82.141).abs() < 1e-9);
}

#[test]
fn dnsperf_output_without_statistics_is_none() {
    assert_eq!(dnsperf::parse(""), None);
    assert_eq!(dnsperf::parse("Error: could not open q.txt\n"), None);
    let truncated = DNSPERF_UDP.split("Queries per second").next().unwrap();
    assert_eq!(dnsperf::parse(truncated), None);
}

#[test]
fn dnsperf_command_lines() {
    let run = dnsperf::DnsperfRun {
        port: 5353,
        query_file: "/tmp/q.txt".into(),
        seconds: 5,
        max_qps: Some(20_000),
        tcp: false,
    };
    assert_eq!(
        run.args().join(" "),
        "-s 127.0.0.1 -p 5353 -d /tmp/q.txt -l 5 -c 4 -T 1 -Q 20000"
    );
    let tcp = dnsperf::DnsperfRun {
        max_qps: None,
        tcp: true,
        ..run
    };
    assert!(tcp.args().join(" ").ends_with("-T 1 -m tcp"));
}

#[test]
fn zone_holds_soa_ns_and_every_instance() {
    let zone = zone::zone_file(1000, 3);
    let lines: Vec<&str> = zone.lines().collect();
    assert_eq!(lines[0], "$ORIGIN bench.internal.");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("@ IN SOA ns.bench.internal. "))
    );
    assert!(lines.contains(&"@ IN NS ns.bench.internal."));
    let a_records: Vec<&&str> = lines.iter().filter(|l| l.starts_with("svc")).collect();
    assert_eq!(a_records.len(), 3000);
    assert_eq!(*a_records[0], "svc0 IN A 127.0.0.1");
    assert_eq!(*a_records[2999], "svc999 IN A 127.0.11.184");
    let distinct: std::collections::BTreeSet<&str> = a_records
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(distinct.len(), 3000, "every instance has its own address");
}

#[test]
fn addresses_stay_in_loopback_and_match_the_zone() {
    assert_eq!(zone::instance_ip(1), Ipv4Addr::new(127, 0, 0, 1));
    assert_eq!(zone::instance_ip(0x01_02_03), Ipv4Addr::new(127, 1, 2, 3));
    assert_eq!(zone::instance_ip(usize::MAX).octets()[0], 127);
    assert_eq!(zone::service_instance_ip(2, 1, 3), zone::instance_ip(8));
}

#[test]
fn query_file_is_every_name_once_shuffled_and_reproducible() {
    let queries = zone::query_file(1000, 7);
    let lines: Vec<&str> = queries.lines().collect();
    assert_eq!(lines.len(), 1000);
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 1000);
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("svc") && l.ends_with(".bench.internal A"))
    );
    let in_order: Vec<String> = (0..1000)
        .map(|i| format!("svc{i}.bench.internal A"))
        .collect();
    assert_ne!(
        lines,
        in_order.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(queries, zone::query_file(1000, 7));
    assert_ne!(queries, zone::query_file(1000, 8));
}

#[test]
fn knot_conf_has_one_worker_of_each_kind_and_stays_in_its_directory() {
    let conf = zone::knot_conf(Path::new("/tmp/kb"), 5300);
    for line in [
        "listen: 127.0.0.1@5300",
        "udp-workers: 1",
        "tcp-workers: 1",
        "background-workers: 1",
        "rundir: \"/tmp/kb/knot-run\"",
        "storage: \"/tmp/kb/knot-db\"",
        "domain: bench.internal",
        "file: \"bench.internal.zone\"",
    ] {
        assert!(conf.contains(line), "{line} missing from\n{conf}");
    }
}

#[test]
fn dns_query_and_response_wire_format() {
    let query = dns::query_a(0xbeef, "svc1.bench.internal.");
    assert_eq!(&query[..2], &[0xbe, 0xef]);
    assert_eq!(&query[4..6], &[0, 1]);
    assert_eq!(
        &query[12..],
        b"\x04svc1\x05bench\x08internal\x00\x00\x01\x00\x01"
    );
    let mut response = query.clone();
    response[2] |= 0x80;
    response[3] = 0x03; // NXDOMAIN
    response[7] = 2;
    assert_eq!(
        dns::parse_response(0xbeef, &response),
        Some(dns::Answer {
            rcode: 3,
            answers: 2
        })
    );
    assert_eq!(dns::parse_response(0xbeee, &response), None, "other id");
    assert_eq!(dns::parse_response(0xbeef, &query), None, "not a response");
    assert_eq!(dns::parse_response(0xbeef, &response[..5]), None);
}

#[test]
fn cloud_map_bodies_and_headers() {
    let headers = cloudmap::headers("RegisterInstance");
    assert!(headers.contains(&(
        "x-amz-target".to_string(),
        "Route53AutoNaming_v20170314.RegisterInstance".to_string()
    )));
    assert!(headers.contains(&(
        "content-type".to_string(),
        "application/x-amz-json-1.1".to_string()
    )));
    let body = cloudmap::register_body("srv-1", "i0", Ipv4Addr::new(127, 0, 0, 9));
    assert_eq!(body["Attributes"]["AWS_INSTANCE_IPV4"], "127.0.0.9");
    assert_eq!(body["Attributes"]["AWS_INSTANCE_PORT"], "8080");
    let listed = serde_json::json!({"Namespaces": [
        {"Id": "ns-a", "Name": "other.internal"},
        {"Id": "ns-b", "Name": "bench.internal"}
    ]});
    assert_eq!(
        cloudmap::namespace_id(&listed, "bench.internal").as_deref(),
        Some("ns-b")
    );
    assert_eq!(cloudmap::namespace_id(&listed, "nope"), None);
}

#[tokio::test]
async fn fan_out_keeps_index_order_and_reports_each_failure() {
    let results = cloudmap::fan_out(50, 7, |i| async move {
        if i == 13 {
            Err(LoadtestError::InvalidOption("thirteen".into()))
        } else {
            Ok(i * 2)
        }
    })
    .await;
    assert_eq!(results.len(), 50);
    assert!(results[13].is_err());
    assert_eq!(results[49].as_ref().unwrap(), &98);
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 49);
}

#[test]
fn registry_command_line_and_ready_file() {
    let argv = registry_argv(
        Path::new("/bin/skiff"),
        7070,
        8600,
        Path::new("/d"),
        Path::new("/r.json"),
    );
    assert_eq!(
        argv.join(" "),
        "/bin/skiff registry --http-addr 127.0.0.1:7070 --dns-addr 127.0.0.1:8600 --data /d --ready-file /r.json"
    );
    let (http, dns) =
        parse_ready_file(r#"{"http_addr":"127.0.0.1:7070","dns_addr":"127.0.0.1:8600"}"#).unwrap();
    assert_eq!(http.port(), 7070);
    assert_eq!(dns.port(), 8600);
    assert_eq!(parse_ready_file("{}"), None);
    assert_eq!(parse_ready_file("not json"), None);
}

#[test]
fn watch_answers_parse_with_length_or_chunks() {
    let body = br#"{"namespace":"watch.internal","revision":42,"services":[{"revision":7}]}"#;
    let mut plain = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    plain.extend_from_slice(body);
    assert!(
        watch::parse_response(&plain[..plain.len() - 1]).is_none(),
        "incomplete"
    );
    let (status, parsed) = watch::parse_response(&plain).unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(watch::revision_of(&parsed), Ok(42));

    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let (first, second) = body.split_at(20);
    for part in [first, second] {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    assert!(
        watch::parse_response(&chunked).is_none(),
        "no last chunk yet"
    );
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (_, parsed) = watch::parse_response(&chunked).unwrap().unwrap();
    assert_eq!(parsed, body);

    let not_found = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
    assert_eq!(watch::parse_response(not_found).unwrap().unwrap().0, 404);
    assert!(watch::revision_of(b"{}").is_err());
    assert!(watch::parse_response(b"garbage\r\n\r\n").unwrap().is_err());
    let request = watch::watch_request("127.0.0.1:7070".parse().unwrap(), "ns", 5);
    assert!(request.starts_with("GET /v1/watch?namespace=ns&since=5&wait_ms="));
    assert!(request.ends_with("\r\n\r\n"));
}

fn stats(qps: f64, lost: u64, avg_latency_ms: f64) -> DnsperfStats {
    DnsperfStats {
        sent: 1000,
        completed: 1000 - lost,
        lost,
        qps,
        avg_latency_ms,
        ..DnsperfStats::default()
    }
}

fn dns_row(server: DnsServer, phase: DnsPhase, stats: DnsperfStats, cpu: f64) -> DnsRow {
    DnsRow {
        server,
        phase,
        stats: Some(stats),
        cpu_us_per_query: Some(cpu),
        cpu_busy_percent: Some(100.0),
        skipped: None,
    }
}

#[test]
fn markdown_puts_targets_beside_figures_and_ratios_against_knot() {
    let report = RegistryBenchReport {
        services: 1000,
        instances_per_service: 3,
        fixed_qps: 20_000,
        dns: vec![
            dns_row(
                DnsServer::Knot,
                DnsPhase::UdpMax,
                stats(100_000.0, 0, 0.5),
                4.0,
            ),
            dns_row(
                DnsServer::Skiff,
                DnsPhase::UdpMax,
                stats(90_000.0, 0, 0.5),
                6.0,
            ),
            dns_row(
                DnsServer::Skiff,
                DnsPhase::UdpFixed,
                stats(20_000.0, 3, 0.05),
                6.0,
            ),
            DnsRow {
                server: DnsServer::Knot,
                phase: DnsPhase::TcpMax,
                stats: None,
                cpu_us_per_query: None,
                cpu_busy_percent: None,
                skipped: Some("dnsperf not installed".into()),
            },
        ],
        registrations: Some(RegistrationResult {
            concurrency: 64,
            duration_secs: 5.0,
            ok: 15_000,
            failed: 0,
            per_second: 3000.0,
            latency: LatencySummary::default(),
            first_error: None,
        }),
        ..RegistryBenchReport::default()
    };
    let markdown = report.to_markdown();
    assert!(
        markdown.contains("| queries per second | 100000 | 90000 | 0.90× | ≥ 0.8× Knot | met |"),
        "{markdown}"
    );
    assert!(
        markdown.contains(
            "| server CPU µs per query | 4.00 | 6.00 | 1.50× | ≤ 1.25× Knot | **missed** |"
        ),
        "{markdown}"
    );
    assert!(markdown.contains("| average latency (ms) | — | 0.050 | — | ≤ 0.1 ms | met |"));
    assert!(markdown.contains("| lost queries | — | 3 | — | 0 | **missed** |"));
    assert!(markdown.contains("| registrations per second | 3000 | ≥ 2000 | met |"));
    assert!(markdown.contains("- DNS TCP max Knot: dnsperf not installed"));
    let json: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
    assert_eq!(json["dns"][0]["server"], "knot");
    assert_eq!(json["dns"][0]["phase"], "udp_max");
    assert_eq!(json["registrations"]["ok"], 15_000);
}
