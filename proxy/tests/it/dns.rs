//! dig against the sidecar's DNS listener, over UDP and TCP: alias names answer their VIPs
//! (authoritatively), other names of the namespace get NXDOMAIN, names outside it are relayed
//! to the upstream resolver, and an unreachable upstream gives SERVFAIL rather than silence.

use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::{Message, MessageType, Metadata};
use hickory_proto::rr::{RData, Record, rdata::A};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::process::{command, run, stderr, stdout};

/// What dig printed: the status, the header flags and the answer records' data.
#[derive(Debug)]
struct Dig {
    status: String,
    flags: Vec<String>,
    answers: Vec<String>,
}

async fn dig(server: SocketAddr, name: &str, qtype: &str, tcp: bool) -> Dig {
    let mut cmd = command("dig");
    cmd.args([
        &format!("@{}", server.ip()),
        "-p",
        &server.port().to_string(),
        name,
        qtype,
        "+time=5",
        "+tries=1",
        "+norecurse",
    ]);
    if tcp {
        cmd.arg("+tcp");
    }
    let out = run(cmd, 15).await;
    let text = stdout(&out);
    assert!(out.status.success(), "dig: {}{text}", stderr(&out));
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in:\n{text}"))
        .to_owned();
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .and_then(|s| s.split(';').next())
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let answers = text
        .split(";; ANSWER SECTION:\n")
        .nth(1)
        .map(|s| {
            s.lines()
                .take_while(|l| !l.is_empty())
                .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Dig {
        status,
        flags,
        answers,
    }
}

/// A fake upstream resolver on UDP and TCP (same port) answering every A query with 10.9.9.9.
async fn fake_resolver() -> SocketAddr {
    // A free UDP port whose TCP twin is free too (another test may hold that one).
    let mut tries = 0;
    let (udp, tcp, addr) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, tcp, addr),
            Err(e) if tries < 50 => {
                tries += 1;
                eprintln!("{addr} taken on TCP ({e}); another port");
            }
            Err(e) => panic!("no UDP port with a free TCP twin: {e}"),
        }
    };
    fn reply(packet: &[u8]) -> Vec<u8> {
        let req = Message::from_vec(packet).unwrap();
        let mut resp = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
        resp.metadata = Metadata::response_from_request(&req.metadata);
        let q = req.queries[0].clone();
        resp.add_answer(Record::from_rdata(
            q.name().clone(),
            60,
            RData::A(A(Ipv4Addr::new(10, 9, 9, 9))),
        ));
        resp.add_query(q);
        resp.to_vec().unwrap()
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&reply(&buf[..n]), peer).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                while s.read_exact(&mut len).await.is_ok() {
                    let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut packet).await.is_err() {
                        return;
                    }
                    let r = reply(&packet);
                    let mut out = (r.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&r);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A sidecar with its DNS listener and the alias `orders:18080`; the app is returned too (it
/// stops when dropped).
async fn dns_sidecar(vip_octet: u8, upstream: SocketAddr) -> (Proxy, SocketAddr, Upstream) {
    let orders = Upstream::start("orders").await;
    let proxy = Proxy::start_custom(
        vip_config(vip_octet),
        vec![service(
            "orders",
            "orders:18080",
            vec![endpoint("o", orders.addr)],
        )],
        vec![],
        "client",
        move |o| {
            o.dns_port = Some(0);
            o.dns_upstream = Some(upstream);
        },
    )
    .await;
    wait_alias(&proxy, "orders:18080").await;
    let dns = proxy.sidecar.as_ref().unwrap().dns_addr().unwrap();
    (proxy, dns, orders)
}

#[tokio::test]
async fn dig_alias_names_answer_their_vip_over_udp_and_tcp() {
    let (_proxy, dns, _app) = dns_sidecar(30, fake_resolver().await).await;
    let want = vip(30, 1).to_string();
    for tcp in [false, true] {
        for name in ["orders", "orders.prod.internal", "ORDERS.prod.internal."] {
            let r = dig(dns, name, "A", tcp).await;
            assert_eq!(r.status, "NOERROR", "{name} tcp={tcp}: {r:?}");
            assert_eq!(r.answers, [want.as_str()], "{name} tcp={tcp}: {r:?}");
            assert!(r.flags.iter().any(|f| f == "aa"), "authoritative: {r:?}");
        }
        // The name exists but has no IPv6 address: NOERROR with no answer, not NXDOMAIN.
        let r = dig(dns, "orders", "AAAA", tcp).await;
        assert_eq!(
            (r.status.as_str(), r.answers.len()),
            ("NOERROR", 0),
            "{r:?}"
        );
    }
    // What an app does next: connect to the address the name resolved to.
    let mut cmd = command("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "8",
        "--resolve",
        &format!("orders:18080:{want}"),
        "http://orders:18080/",
    ]);
    let out = run(cmd, 15).await;
    assert_eq!(stdout(&out), "orders", "{}", stderr(&out));
}

#[tokio::test]
async fn dig_unknown_namespace_names_get_nxdomain_and_others_are_relayed() {
    let (_proxy, dns, _app) = dns_sidecar(31, fake_resolver().await).await;
    for tcp in [false, true] {
        // The upstream would answer anything: NXDOMAIN proves the sidecar answered itself.
        let r = dig(dns, "payments.prod.internal", "A", tcp).await;
        assert_eq!(r.status, "NXDOMAIN", "tcp={tcp}: {r:?}");
        assert!(r.answers.is_empty(), "{r:?}");
        let r = dig(dns, "example.com", "A", tcp).await;
        assert_eq!(r.status, "NOERROR", "tcp={tcp}: {r:?}");
        assert_eq!(r.answers, ["10.9.9.9"], "relayed upstream, tcp={tcp}");
    }
}

#[tokio::test]
async fn dig_gets_servfail_when_the_upstream_resolver_is_down() {
    let (_proxy, dns, _app) = dns_sidecar(32, dead_addr().await).await;
    for tcp in [false, true] {
        let r = dig(dns, "example.com", "A", tcp).await;
        assert_eq!(r.status, "SERVFAIL", "tcp={tcp}: {r:?}");
        // Aliases keep answering.
        let r = dig(dns, "orders", "A", tcp).await;
        assert_eq!(r.answers, [vip(32, 1).to_string()], "tcp={tcp}: {r:?}");
    }
}
