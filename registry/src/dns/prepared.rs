//! Pre-encoded answers: every name with records gets its resource records encoded once,
//! when its service changes, so a query is a hash lookup, a shuffle and a copy.
//!
//! Only positive answers to plain queries take this path; everything else (NXDOMAIN, NODATA,
//! REFUSED, odd packets, answers that do not fit) goes through `Message` in `dns.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use skiff_registry_client::attrs;

use super::{answerable, ipv4, ipv6};
use crate::model::{Instance, Namespace, RecordType, Service};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// EDNS payload size we advertise and honour at most.
pub const EDNS_PAYLOAD: u16 = 1232;

/// Lowercase wire-format name → its answers, plus which names each service owns.
#[derive(Debug, Default)]
pub struct Index {
    names: HashMap<Box<[u8]>, NameAnswers>,
    by_service: HashMap<String, Vec<Box<[u8]>>>,
}

#[derive(Debug, Default)]
struct NameAnswers {
    a: Option<Arc<Prepared>>,
    aaaa: Option<Arc<Prepared>>,
    srv: Option<Arc<Prepared>>,
}

/// The records of one name and type; `max` of them go in an answer.
#[derive(Debug)]
struct Prepared {
    records: Vec<Rr>,
    max: usize,
}

/// One answer record (owner name compressed to the question) and its additional records.
#[derive(Debug)]
struct Rr {
    answer: Box<[u8]>,
    additional: Vec<Box<[u8]>>,
}

// === impl Index ===

impl Index {
    /// Re-encodes every name of `svc` (its own name and its instances').
    pub fn update_service<'i>(
        &mut self,
        ns: &Namespace,
        svc: &Service,
        instances: impl Iterator<Item = &'i Instance>,
        max_answers: usize,
    ) {
        self.remove_service(&svc.id);
        let zone = ns.name.trim_end_matches('.');
        let svc_fqdn = format!("{}.{zone}", svc.name);
        let Some(svc_key) = wire_name(&svc_fqdn, true) else {
            return;
        };
        let max = if svc.weighted() { 1 } else { max_answers };
        let instances: Vec<&Instance> = instances.collect();
        let healthy = answerable(instances.iter().copied());
        let mut keys = Vec::new();
        let mut svc_answers = NameAnswers::default();
        let ttl_a = svc.record_ttl(RecordType::A);
        let ttl_aaaa = svc.record_ttl(RecordType::AAAA);
        if svc.has_record(RecordType::A) {
            let records: Vec<Rr> = healthy
                .iter()
                .filter_map(|i| ipv4(i))
                .map(|ip| Rr {
                    answer: rr(&POINTER, TYPE_A, ttl_a, &ip.octets()),
                    additional: Vec::new(),
                })
                .collect();
            svc_answers.a = prepared(records, max);
        }
        if svc.has_record(RecordType::AAAA) {
            let records: Vec<Rr> = healthy
                .iter()
                .filter_map(|i| ipv6(i))
                .map(|ip| Rr {
                    answer: rr(&POINTER, TYPE_AAAA, ttl_aaaa, &ip.octets()),
                    additional: Vec::new(),
                })
                .collect();
            svc_answers.aaaa = prepared(records, max);
        }
        if svc.has_record(RecordType::SRV) {
            let ttl = svc.record_ttl(RecordType::SRV);
            let mut records = Vec::new();
            for i in &healthy {
                let (v4, v6) = (ipv4(i), ipv6(i));
                if v4.is_none() && v6.is_none() {
                    continue;
                }
                let Some(port) = i
                    .attributes
                    .get(attrs::AWS_INSTANCE_PORT)
                    .and_then(|p| p.parse::<u16>().ok())
                else {
                    continue;
                };
                let Some(target) = wire_name(&format!("{}.{svc_fqdn}", i.id), false) else {
                    continue;
                };
                let mut rdata = Vec::with_capacity(6 + target.len());
                rdata.extend_from_slice(&1u16.to_be_bytes());
                rdata.extend_from_slice(&1u16.to_be_bytes());
                rdata.extend_from_slice(&port.to_be_bytes());
                rdata.extend_from_slice(&target);
                let mut additional = Vec::new();
                additional.extend(v4.map(|ip| rr(&target, TYPE_A, ttl_a, &ip.octets())));
                additional.extend(v6.map(|ip| rr(&target, TYPE_AAAA, ttl_aaaa, &ip.octets())));
                records.push(Rr {
                    answer: rr(&POINTER, TYPE_SRV, ttl, &rdata),
                    additional,
                });
            }
            svc_answers.srv = prepared(records, max);
        }
        self.names.insert(svc_key.clone(), svc_answers);
        keys.push(svc_key);
        for i in &instances {
            let Some(key) = wire_name(&format!("{}.{svc_fqdn}", i.id), true) else {
                continue;
            };
            let answers = NameAnswers {
                a: ipv4(i).and_then(|ip| {
                    prepared(
                        vec![Rr {
                            answer: rr(&POINTER, TYPE_A, ttl_a, &ip.octets()),
                            additional: Vec::new(),
                        }],
                        1,
                    )
                }),
                aaaa: ipv6(i).and_then(|ip| {
                    prepared(
                        vec![Rr {
                            answer: rr(&POINTER, TYPE_AAAA, ttl_aaaa, &ip.octets()),
                            additional: Vec::new(),
                        }],
                        1,
                    )
                }),
                srv: None,
            };
            self.names.insert(key.clone(), answers);
            keys.push(key);
        }
        self.by_service.insert(svc.id.clone(), keys);
    }

    pub fn remove_service(&mut self, svc_id: &str) {
        for key in self.by_service.remove(svc_id).unwrap_or_default() {
            self.names.remove(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Answers a plain query whose name and type have records; `None` sends it to the
    /// general path. `udp` limits the size as the client allows.
    pub fn answer(&self, packet: &[u8], udp: bool) -> Option<(Vec<u8>, u16)> {
        let q = parse_query(packet)?;
        let entry = self.names.get(&q.key[..q.key_len])?;
        let prepared = match q.qtype {
            TYPE_A => entry.a.as_ref(),
            TYPE_AAAA => entry.aaaa.as_ref(),
            TYPE_SRV => entry.srv.as_ref(),
            _ => None,
        }?;
        let limit = match (udp, q.edns_payload) {
            (false, _) => usize::from(u16::MAX),
            (true, Some(p)) => usize::from(p.clamp(512, EDNS_PAYLOAD)),
            (true, None) => 512,
        };
        let n = prepared.records.len();
        let k = prepared.max.min(n);
        let mut order: [usize; 64] = [0; 64];
        let chosen = pick(n, k, &mut order)?;
        let additional: usize = chosen
            .iter()
            .map(|&i| prepared.records[i].additional.len())
            .sum();
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&packet[..2]);
        out.push(0x80 | 0x04 | (packet[2] & 0x01));
        out.push(packet[3] & 0x10);
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&u16::try_from(k).ok()?.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        let opt = usize::from(q.edns_payload.is_some());
        out.extend_from_slice(&u16::try_from(additional + opt).ok()?.to_be_bytes());
        out.extend_from_slice(&packet[12..q.question_end]);
        for &i in chosen {
            out.extend_from_slice(&prepared.records[i].answer);
        }
        for &i in chosen {
            for a in &prepared.records[i].additional {
                out.extend_from_slice(a);
            }
        }
        if opt == 1 {
            out.extend_from_slice(&[0, 0, 41]);
            out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        (out.len() <= limit).then_some((out, q.qtype))
    }
}

/// The question name, at offset 12 of every answer.
const POINTER: [u8; 2] = [0xc0, 0x0c];

fn prepared(records: Vec<Rr>, max: usize) -> Option<Arc<Prepared>> {
    (!records.is_empty()).then(|| Arc::new(Prepared { records, max }))
}

/// Up to `k` of `n` indices in random order (at most 64 records are shuffled; past that a
/// random window of 64 is used).
fn pick(n: usize, k: usize, buf: &mut [usize; 64]) -> Option<&[usize]> {
    if n == 0 {
        return None;
    }
    let mut rng = rand::rng();
    let window = n.min(buf.len());
    let offset = if n > window {
        rng.random_range(0..n)
    } else {
        0
    };
    for (j, slot) in buf.iter_mut().take(window).enumerate() {
        *slot = (offset + j) % n;
    }
    let k = k.min(window);
    for j in 0..k {
        let r = rng.random_range(j..window);
        buf.swap(j, r);
    }
    Some(&buf[..k])
}

fn rr(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Box<[u8]> {
    let mut v = Vec::with_capacity(owner.len() + 10 + rdata.len());
    v.extend_from_slice(owner);
    v.extend_from_slice(&rtype.to_be_bytes());
    v.extend_from_slice(&CLASS_IN.to_be_bytes());
    v.extend_from_slice(&ttl.to_be_bytes());
    v.extend_from_slice(&u16::try_from(rdata.len()).unwrap_or(0).to_be_bytes());
    v.extend_from_slice(rdata);
    v.into_boxed_slice()
}

/// `a.b.c` → `\x01a\x01b\x01c\x00`, lowercased if asked; `None` if not a valid name.
pub fn wire_name(fqdn: &str, lowercase: bool) -> Option<Box<[u8]>> {
    let fqdn = fqdn.trim_end_matches('.');
    let mut out = Vec::with_capacity(fqdn.len() + 2);
    for label in fqdn.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))?;
        out.push(len);
        if lowercase {
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        } else {
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() <= 255).then(|| out.into_boxed_slice())
}

struct Query {
    key: [u8; 255],
    key_len: usize,
    qtype: u16,
    question_end: usize,
    edns_payload: Option<u16>,
}

/// A standard query with one IN question, no answer or authority records and at most an
/// OPT record (version 0); anything else is left to the general path.
fn parse_query(p: &[u8]) -> Option<Query> {
    if p.len() < 17 || p[2] & 0xf8 != 0 || p[3] & 0x0f != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    let mut key = [0u8; 255];
    let mut pos = 12;
    let mut key_len = 0;
    loop {
        let len = usize::from(*p.get(pos)?);
        if len > 63 {
            return None;
        }
        if key_len + len + 1 > key.len() {
            return None;
        }
        key[key_len] = len as u8;
        key_len += 1;
        pos += 1;
        if len == 0 {
            break;
        }
        for b in p.get(pos..pos + len)? {
            key[key_len] = b.to_ascii_lowercase();
            key_len += 1;
        }
        pos += len;
    }
    let qtype = u16::from_be_bytes([*p.get(pos)?, *p.get(pos + 1)?]);
    let qclass = u16::from_be_bytes([*p.get(pos + 2)?, *p.get(pos + 3)?]);
    if qclass != CLASS_IN {
        return None;
    }
    let question_end = pos + 4;
    let mut edns_payload = None;
    if count(10) == 1 {
        // OPT: root name, type 41, class = payload, ext-rcode, version, flags, rdata.
        let o = p.get(question_end..question_end + 11)?;
        if o[0] != 0 || u16::from_be_bytes([o[1], o[2]]) != TYPE_OPT || o[6] != 0 {
            return None;
        }
        let rdlen = usize::from(u16::from_be_bytes([o[9], o[10]]));
        if question_end + 11 + rdlen != p.len() {
            return None;
        }
        edns_payload = Some(u16::from_be_bytes([o[3], o[4]]));
    } else if question_end != p.len() {
        return None;
    }
    Some(Query {
        key,
        key_len,
        qtype,
        question_end,
        edns_payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_length_prefixed_and_lowercased() {
        assert_eq!(&*wire_name("Ab.c.", true).unwrap(), b"\x02ab\x01c\x00");
        assert_eq!(&*wire_name("Ab.c", false).unwrap(), b"\x02Ab\x01c\x00");
        assert!(wire_name("a..b", true).is_none());
        assert!(wire_name(&"x".repeat(64), true).is_none());
    }

    #[test]
    fn pick_returns_distinct_indices() {
        let mut buf = [0; 64];
        for n in [1, 3, 8, 20, 100] {
            let k = n.min(8);
            let chosen = pick(n, k, &mut buf).unwrap().to_vec();
            assert_eq!(chosen.len(), k);
            let mut sorted = chosen.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), k, "{chosen:?}");
            assert!(chosen.iter().all(|&i| i < n));
        }
        assert!(pick(0, 8, &mut buf).is_none());
    }

    #[test]
    fn odd_packets_are_left_to_the_general_path() {
        assert!(parse_query(&[0; 5]).is_none());
        // A response (QR set).
        let mut p = vec![
            0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
        ];
        assert!(parse_query(&p).is_none());
        p[2] = 0;
        let q = parse_query(&p).unwrap();
        assert_eq!((&q.key[..q.key_len], q.qtype), (&b"\x01a\x00"[..], 1));
        // A compression pointer in the question.
        let p = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert!(parse_query(&p).is_none());
    }
}
