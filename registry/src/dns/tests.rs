//! The pre-encoded path and the general path give the same answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use skiff_registry_client::HealthStatus;

use super::{Transport, answer, answer_general};
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::model::{DnsConfig, DnsRecord, NamespaceType, RecordType as Rt, Service};
use crate::store::MemoryStore;

async fn catalog() -> Catalog {
    let c = Catalog::open(Arc::new(MemoryStore::new()), Metrics::unregistered())
        .await
        .unwrap();
    c.create_namespace("prod.internal", NamespaceType::DnsPrivate, None, None, None)
        .await
        .unwrap();
    let ns_id = c
        .read()
        .namespace_by_name("prod.internal")
        .unwrap()
        .id
        .clone();
    let svc = c
        .create_service(Service {
            id: String::new(),
            name: "orders".into(),
            namespace_id: ns_id,
            description: None,
            dns_config: Some(DnsConfig {
                namespace_id: None,
                routing_policy: None,
                dns_records: vec![
                    DnsRecord {
                        kind: Rt::A,
                        ttl: 10,
                    },
                    DnsRecord {
                        kind: Rt::AAAA,
                        ttl: 10,
                    },
                    DnsRecord {
                        kind: Rt::SRV,
                        ttl: 20,
                    },
                ],
            }),
            health_check_config: None,
            health_check_custom_config: Some(Default::default()),
            creator_request_id: None,
            created: 0.0,
            revision: 0,
        })
        .await
        .unwrap();
    for n in 1..=12 {
        let attrs = BTreeMap::from([
            ("AWS_INSTANCE_IPV4".to_string(), format!("10.0.0.{n}")),
            ("AWS_INSTANCE_IPV6".to_string(), format!("fd00::{n}")),
            ("AWS_INSTANCE_PORT".to_string(), "8080".to_string()),
        ]);
        c.register_instance(&svc.id, &format!("t{n}"), None, attrs)
            .await
            .unwrap();
    }
    c.update_custom_health(&svc.id, "t12", HealthStatus::Unhealthy)
        .await
        .unwrap();
    c
}

fn query(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.metadata.recursion_desired = true;
    if edns {
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// (rcode, flags, answers as text, additionals as text); answers are sorted.
fn summary(
    bytes: &[u8],
) -> (
    ResponseCode,
    bool,
    bool,
    usize,
    BTreeSet<String>,
    BTreeSet<String>,
) {
    let m = Message::from_vec(bytes).unwrap();
    (
        m.metadata.response_code,
        m.metadata.authoritative,
        m.metadata.truncation,
        m.answers.len(),
        m.answers.iter().map(|r| r.to_string()).collect(),
        m.additionals.iter().map(|r| r.to_string()).collect(),
    )
}

#[tokio::test]
async fn pre_encoded_answers_match_the_general_path() {
    let c = catalog().await;
    assert!(!c.read().dns.is_empty());
    for (name, t) in [
        ("orders.prod.internal.", RecordType::A),
        ("Orders.PROD.internal.", RecordType::AAAA),
        ("orders.prod.internal.", RecordType::SRV),
        ("t3.orders.prod.internal.", RecordType::A),
        ("t12.orders.prod.internal.", RecordType::AAAA),
    ] {
        for edns in [false, true] {
            for transport in [Transport::Udp, Transport::Tcp] {
                let q = query(name, t, edns);
                let fast = c.read().dns.answer(&q, transport == Transport::Udp);
                let general = answer_general(&c, &q, transport).unwrap();
                let g = summary(&general);
                match fast {
                    Some((bytes, _)) => {
                        let f = summary(&bytes);
                        assert_eq!(
                            (f.0, f.1, f.2, f.3),
                            (g.0, g.1, g.2, g.3),
                            "{name} {t:?} edns={edns}"
                        );
                        // Both pick a random 8 of 11 healthy: compare when all fit.
                        if f.3 < 8 {
                            assert_eq!(f.4, g.4, "{name} {t:?}");
                            assert_eq!(f.5, g.5, "{name} {t:?}");
                        }
                        let m = Message::from_vec(&bytes).unwrap();
                        assert_eq!(
                            m.queries[0].name().to_ascii(),
                            name,
                            "the question is echoed as asked"
                        );
                        assert_eq!(m.edns.is_some(), edns);
                    }
                    // Too big for plain UDP: the general path truncates.
                    None => assert!(g.2 && transport == Transport::Udp && !edns, "{name} {t:?}"),
                }
            }
        }
    }
    // The answer the server sends agrees with the general one on the unhealthy instance.
    let a = summary(
        &answer(
            &c,
            &query("orders.prod.internal.", RecordType::A, true),
            Transport::Udp,
        )
        .unwrap(),
    );
    assert_eq!(a.3, 8);
    assert!(
        !a.4.iter().any(|r| r.contains("10.0.0.12")),
        "unhealthy t12 is not answered: {:?}",
        a.4
    );
}

/// Nothing a client sends makes the server panic; whatever it answers parses as DNS.
#[test]
fn arbitrary_packets_never_panic() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = rt.block_on(catalog());
    let valid = query("orders.prod.internal.", RecordType::SRV, true);
    let mut runner = proptest::test_runner::TestRunner::default();
    let garbage = proptest::collection::vec(any::<u8>(), 0..600);
    runner
        .run(&garbage, |bytes| {
            for t in [Transport::Udp, Transport::Tcp] {
                if let Some(resp) = answer(&c, &bytes, t) {
                    prop_assert!(resp.len() >= 12);
                }
            }
            Ok(())
        })
        .unwrap();
    // Small corruptions of a valid query hit the deeper parsing paths.
    let flips = proptest::collection::vec((0..valid.len(), any::<u8>()), 1..6);
    runner
        .run(&flips, |flips| {
            let mut bytes = valid.clone();
            for (i, b) in flips {
                bytes[i] = b;
            }
            for t in [Transport::Udp, Transport::Tcp] {
                if let Some(resp) = answer(&c, &bytes, t) {
                    prop_assert!(resp.len() >= 12);
                    prop_assert_eq!(&resp[..2], &bytes[..2], "the id is echoed");
                }
            }
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn draining_instances_leave_the_service_answers_while_others_can_serve() {
    let c = catalog().await;
    let svc_id = c.read().services.values().next().unwrap().id.clone();
    for n in 1..=11 {
        let mut attrs = c
            .read()
            .instance(&svc_id, &format!("t{n}"))
            .unwrap()
            .attributes
            .clone();
        if n != 5 {
            attrs.insert("SKIFF_DRAINING".into(), "true".into());
        }
        c.register_instance(&svc_id, &format!("t{n}"), None, attrs)
            .await
            .unwrap();
    }
    let q = query("orders.prod.internal.", RecordType::A, true);
    for transport in [Transport::Udp, Transport::Tcp] {
        let fast = summary(&answer(&c, &q, transport).unwrap());
        let general = summary(&answer_general(&c, &q, transport).unwrap());
        for s in [&fast, &general] {
            assert_eq!(s.3, 1, "only t5 is not draining: {:?}", s.4);
            assert!(
                s.4.iter().next().unwrap().ends_with("10.0.0.5"),
                "{:?}",
                s.4
            );
        }
    }
    // The instance name still resolves while it drains.
    let one = summary(
        &answer(
            &c,
            &query("t1.orders.prod.internal.", RecordType::A, false),
            Transport::Udp,
        )
        .unwrap(),
    );
    assert_eq!(one.3, 1);

    // When every healthy instance drains, they all answer again (fail open).
    let mut attrs = c.read().instance(&svc_id, "t5").unwrap().attributes.clone();
    attrs.insert("SKIFF_DRAINING".into(), "true".into());
    c.register_instance(&svc_id, "t5", None, attrs)
        .await
        .unwrap();
    let all = summary(&answer(&c, &q, Transport::Tcp).unwrap());
    assert_eq!(all.3, 8);
}
