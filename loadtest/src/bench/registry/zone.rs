//! The data set both DNS servers serve: names, addresses, Knot's zone file and configuration, dnsperf's query file.
//!
//! Service `i` is `svc{i}.{namespace}.` and its instance `j` gets the address
//! of global index `i * instances + j + 1` inside 127.0.0.0/8, so the zone
//! file and the Cloud Map registrations describe exactly the same records.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

/// The namespace (DNS zone) of the benchmark.
pub const NAMESPACE: &str = "bench.internal";
/// The TTL every record gets.
pub const TTL: u32 = 60;

/// The name of service `index`.
pub fn service_name(index: usize) -> String {
    format!("svc{index}")
}

/// The loopback address of the `global`-th instance (1-based; up to 2^24 - 1).
pub fn instance_ip(global: usize) -> Ipv4Addr {
    let global = u32::try_from(global).unwrap_or(u32::MAX) & 0x00ff_ffff;
    Ipv4Addr::from(0x7f00_0000 | global)
}

/// The address of instance `instance` of service `service` when every service has `per_service`.
pub fn service_instance_ip(service: usize, instance: usize, per_service: usize) -> Ipv4Addr {
    instance_ip(service * per_service + instance + 1)
}

/// The zone file of `NAMESPACE`: SOA, NS, the name server's A, then `per_service` A records for
/// each of `services` services.
pub fn zone_file(services: usize, per_service: usize) -> String {
    let mut out = String::with_capacity(services * per_service * 40 + 256);
    let _ = writeln!(out, "$ORIGIN {NAMESPACE}.");
    let _ = writeln!(out, "$TTL {TTL}");
    let _ = writeln!(
        out,
        "@ IN SOA ns.{NAMESPACE}. hostmaster.{NAMESPACE}. 1 3600 600 86400 {TTL}"
    );
    let _ = writeln!(out, "@ IN NS ns.{NAMESPACE}.");
    let _ = writeln!(out, "ns IN A 127.0.0.1");
    for service in 0..services {
        let name = service_name(service);
        for instance in 0..per_service {
            let ip = service_instance_ip(service, instance, per_service);
            let _ = writeln!(out, "{name} IN A {ip}");
        }
    }
    out
}

/// Knot's configuration: one UDP, one TCP and one background worker, listening on loopback,
/// everything it writes inside `dir`, the zone read from `dir/<NAMESPACE>.zone`.
pub fn knot_conf(dir: &Path, port: u16) -> String {
    let dir = dir.display();
    format!(
        "server:
    rundir: \"{dir}/knot-run\"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

database:
    storage: \"{dir}/knot-db\"

log:
  - target: stderr
    any: warning

zone:
  - domain: {NAMESPACE}
    storage: \"{dir}\"
    file: \"{NAMESPACE}.zone\"
"
    )
}

/// The file name of the zone inside the Knot directory.
pub fn zone_file_name() -> String {
    format!("{NAMESPACE}.zone")
}

/// dnsperf's input: one `svcN.<NAMESPACE> A` line per service, shuffled by `seed`.
pub fn query_file(services: usize, seed: u64) -> String {
    let mut order: Vec<usize> = (0..services).collect();
    shuffle(&mut order, seed);
    let mut out = String::with_capacity(services * 28);
    for service in order {
        let _ = writeln!(out, "{}.{NAMESPACE} A", service_name(service));
    }
    out
}

/// Fisher–Yates with xorshift64*: the same order for the same seed, on every machine.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed | 1;
    for i in (1..items.len()).rev() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let random = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let bound = u64::try_from(i + 1).unwrap_or(u64::MAX);
        let j = usize::try_from(random % bound).unwrap_or(0);
        items.swap(i, j);
    }
}
