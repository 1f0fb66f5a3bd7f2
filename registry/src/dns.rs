//! Authoritative DNS for every namespace whose name is a domain (UDP and TCP), answered from
//! the catalog's memory on every query, so it always reflects the latest committed state.
//!
//! Wire format by hickory-proto =0.26.3 (`Message`); the server loop is ours: a registry
//! answers from one in-memory catalog, so hickory-server's zone handlers would only add a
//! copy of the state to keep in sync.
//!
//! * `svc.ns.` — A/AAAA of up to 8 healthy instances, shuffled (1 for `WEIGHTED`), and SRV
//!   (instances draining are left out while others can answer)
//!   (priority 1, weight 1, the instance port, target `<instance-id>.svc.ns.`);
//! * `<instance-id>.svc.ns.` — the instance's A/AAAA;
//! * `ns.` — SOA; other names in the zone: NXDOMAIN + SOA; existing names without the
//!   type: NODATA + SOA; names outside every zone: REFUSED; garbage: FORMERR.

pub mod prepared;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use skiff_registry_client::{HealthStatus, attrs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::catalog::{Catalog, State};
use crate::model::{Instance, Namespace, RecordType as CmRecordType, Service};

/// Most addresses in one A/AAAA/SRV answer, as Route 53's multivalue answers.
pub const MAX_ANSWERS: usize = 8;
use self::prepared::EDNS_PAYLOAD;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often the UDP thread looks for shutdown while idle.
const UDP_POLL: Duration = Duration::from_millis(100);

/// Answers UDP queries on `socket` until `shutdown`.
///
/// A plain thread with a blocking socket: a DNS query is microseconds of work, so the
/// async runtime's wake-ups would cost more than the answer.
pub async fn run_udp(
    socket: std::net::UdpSocket,
    catalog: Arc<Catalog>,
    shutdown: impl Future<Output = ()>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("skiff-registry-dns-udp".into())
            .spawn(move || serve_udp(&socket, &catalog, &stop))
    };
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the dns udp thread");
            return;
        }
    };
    // Stops the thread even if this task is aborted rather than shut down.
    let _stop_on_drop = StopOnDrop(stop);
    shutdown.await;
    drop(_stop_on_drop);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn serve_udp(socket: &std::net::UdpSocket, catalog: &Catalog, stop: &AtomicBool) {
    if let Err(e) = socket
        .set_nonblocking(false)
        .and_then(|()| socket.set_read_timeout(Some(UDP_POLL)))
    {
        tracing::error!(error = %e, "cannot configure the dns udp socket");
        return;
    }
    let mut buf = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "dns udp receive failed");
                continue;
            }
        };
        if let Some(resp) = answer(catalog, &buf[..n], Transport::Udp)
            && let Err(e) = socket.send_to(&resp, peer)
        {
            tracing::debug!(%peer, error = %e, "dns udp send failed");
        }
    }
}

/// Answers TCP queries on `listener` until `shutdown`.
pub async fn run_tcp(
    listener: TcpListener,
    catalog: Arc<Catalog>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let catalog = catalog.clone();
                conns.spawn(async move { serve_tcp(stream, &catalog).await });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

async fn serve_tcp(mut stream: TcpStream, catalog: &Catalog) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        buf.resize(len, 0);
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(resp) = answer(catalog, &buf, Transport::Tcp) else {
            return;
        };
        let Ok(len) = u16::try_from(resp.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(resp.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&resp);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The encoded response to one query, or `None` when it deserves no answer.
pub fn answer(catalog: &Catalog, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let fast = catalog
        .read()
        .dns
        .answer(packet, transport == Transport::Udp);
    if let Some((bytes, qtype)) = fast {
        catalog.metrics.dns_noerror(qtype).inc();
        return Some(bytes);
    }
    answer_general(catalog, packet, transport)
}

/// Every query the pre-encoded answers do not cover, through hickory's `Message`.
fn answer_general(catalog: &Catalog, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let req = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => {
            // Answer FORMERR if there is a header to answer to.
            let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
            if packet.len() < 12 || packet[2] & 0x80 != 0 {
                return None;
            }
            count(catalog, "invalid", ResponseCode::FormErr);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    resp.add_queries(req.queries.iter().cloned());
    let limit = match (&req.edns, transport) {
        (_, Transport::Tcp) => usize::from(u16::MAX),
        (Some(e), Transport::Udp) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
        (None, Transport::Udp) => 512,
    };
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        resp.set_edns(edns);
    }
    let qtype_label;
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        qtype_label = "other";
    } else if req.queries.len() != 1 {
        resp.metadata.response_code = ResponseCode::FormErr;
        qtype_label = "invalid";
    } else {
        let q = &req.queries[0];
        qtype_label = qtype_name(q.query_type());
        let st = catalog.read();
        resolve(&st, q.name(), q.query_type(), &mut resp);
    }
    count(catalog, qtype_label, resp.metadata.response_code);
    let bytes = resp.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    resp.truncate().to_vec().ok()
}

fn count(catalog: &Catalog, qtype: &str, rcode: ResponseCode) {
    let rcode = match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::ServFail => "SERVFAIL",
        _ => "other",
    };
    catalog
        .metrics
        .dns_queries
        .with_label_values(&[qtype, rcode])
        .inc();
}

fn qtype_name(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SRV => "SRV",
        RecordType::SOA => "SOA",
        RecordType::NS => "NS",
        RecordType::ANY => "ANY",
        _ => "other",
    }
}

/// What a name in a zone is.
enum Node<'s> {
    Apex,
    Service(&'s Service),
    Instance(&'s Service, &'s Instance),
}

fn resolve(st: &State, qname: &Name, qtype: RecordType, resp: &mut Message) {
    let lname = qname.to_ascii().to_ascii_lowercase();
    let lname = lname.trim_end_matches('.');
    let Some((ns, relative)) = find_zone(st, lname) else {
        resp.metadata.response_code = ResponseCode::Refused;
        return;
    };
    resp.metadata.authoritative = true;
    let node = find_node(st, ns, relative);
    let Some(node) = node else {
        resp.metadata.response_code = ResponseCode::NXDomain;
        resp.add_authority(soa(ns));
        return;
    };
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
    match node {
        Node::Apex => {
            if wants(RecordType::SOA) {
                answers.push(soa(ns));
            }
        }
        Node::Service(svc) => {
            let mut healthy = answerable(st.instances_of(&svc.id));
            healthy.shuffle(&mut rand::rng());
            let max = if svc.weighted() { 1 } else { MAX_ANSWERS };
            if wants(RecordType::A) && svc.has_record(CmRecordType::A) {
                let ttl = svc.record_ttl(CmRecordType::A);
                answers.extend(
                    healthy
                        .iter()
                        .filter_map(|i| ipv4(i))
                        .take(max)
                        .map(|ip| a_record(qname, ttl, ip)),
                );
            }
            if wants(RecordType::AAAA) && svc.has_record(CmRecordType::AAAA) {
                let ttl = svc.record_ttl(CmRecordType::AAAA);
                answers.extend(
                    healthy
                        .iter()
                        .filter_map(|i| ipv6(i))
                        .take(max)
                        .map(|ip| aaaa_record(qname, ttl, ip)),
                );
            }
            if wants(RecordType::SRV) && svc.has_record(CmRecordType::SRV) {
                let ttl = svc.record_ttl(CmRecordType::SRV);
                for i in healthy
                    .iter()
                    .filter(|i| ipv4(i).is_some() || ipv6(i).is_some())
                    .take(max)
                {
                    let Some(port) = i
                        .attributes
                        .get(attrs::AWS_INSTANCE_PORT)
                        .and_then(|p| p.parse::<u16>().ok())
                    else {
                        continue;
                    };
                    let Ok(target) = Name::from_ascii(format!(
                        "{}.{}.{}.",
                        i.id,
                        svc.name,
                        ns.name.trim_end_matches('.')
                    )) else {
                        continue;
                    };
                    answers.push(Record::from_rdata(
                        qname.clone(),
                        ttl,
                        RData::SRV(SRV::new(1, 1, port, target.clone())),
                    ));
                    let ttl_a = svc.record_ttl(CmRecordType::A);
                    additionals.extend(ipv4(i).map(|ip| a_record(&target, ttl_a, ip)));
                    additionals.extend(ipv6(i).map(|ip| aaaa_record(&target, ttl_a, ip)));
                }
            }
        }
        Node::Instance(svc, i) => {
            if wants(RecordType::A) {
                answers
                    .extend(ipv4(i).map(|ip| a_record(qname, svc.record_ttl(CmRecordType::A), ip)));
            }
            if wants(RecordType::AAAA) {
                answers.extend(
                    ipv6(i).map(|ip| aaaa_record(qname, svc.record_ttl(CmRecordType::AAAA), ip)),
                );
            }
        }
    }
    if answers.is_empty() {
        resp.add_authority(soa(ns));
    }
    resp.add_answers(answers);
    resp.add_additionals(additionals);
}

/// The namespace whose apex is the longest suffix of `lname`, and the part before it.
fn find_zone<'s, 'n>(st: &'s State, lname: &'n str) -> Option<(&'s Namespace, &'n str)> {
    let mut rest = lname;
    loop {
        if let Some(ns) = st.zones.get(rest).and_then(|id| st.namespaces.get(id)) {
            let relative = if rest.len() == lname.len() {
                ""
            } else {
                &lname[..lname.len() - rest.len() - 1]
            };
            return Some((ns, relative));
        }
        let (_, tail) = rest.split_once('.')?;
        rest = tail;
    }
}

fn find_node<'s>(st: &'s State, ns: &Namespace, relative: &str) -> Option<Node<'s>> {
    if relative.is_empty() {
        return Some(Node::Apex);
    }
    let service = |name: &str| {
        st.svc_by_lname
            .get(&(ns.id.clone(), name.to_string()))
            .and_then(|id| st.services.get(id))
    };
    if let Some(svc) = service(relative) {
        return Some(Node::Service(svc));
    }
    // `<instance-id>.<service>`: either part may contain dots.
    let mut split = 0;
    while let Some(pos) = relative[split..].find('.') {
        let dot = split + pos;
        let (id, svc_name) = (&relative[..dot], &relative[dot + 1..]);
        if let Some(svc) = service(svc_name)
            && let Some(i) = st
                .instances_of(&svc.id)
                .find(|i| i.id.eq_ignore_ascii_case(id))
        {
            return Some(Node::Instance(svc, i));
        }
        split = dot + 1;
    }
    None
}

/// The instances a service name answers with: healthy ones, leaving out those draining
/// (`SKIFF_DRAINING=true`) unless every healthy one is.
pub(crate) fn answerable<'i>(instances: impl Iterator<Item = &'i Instance>) -> Vec<&'i Instance> {
    let healthy: Vec<&Instance> = instances
        .filter(|i| i.health == HealthStatus::Healthy)
        .collect();
    let draining = |i: &Instance| {
        i.attributes
            .get(attrs::SKIFF_DRAINING)
            .is_some_and(|v| v == "true")
    };
    if healthy.iter().all(|i| draining(i)) {
        return healthy;
    }
    healthy.into_iter().filter(|i| !draining(i)).collect()
}

pub(crate) fn ipv4(i: &Instance) -> Option<Ipv4Addr> {
    i.attributes.get(attrs::AWS_INSTANCE_IPV4)?.parse().ok()
}

pub(crate) fn ipv6(i: &Instance) -> Option<Ipv6Addr> {
    i.attributes.get(attrs::AWS_INSTANCE_IPV6)?.parse().ok()
}

fn a_record(name: &Name, ttl: u32, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name.clone(), ttl, RData::A(A(ip)))
}

fn aaaa_record(name: &Name, ttl: u32, ip: Ipv6Addr) -> Record {
    Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(ip)))
}

fn soa(ns: &Namespace) -> Record {
    let apex = ns.name.trim_end_matches('.');
    let name = Name::from_ascii(format!("{apex}.")).unwrap_or_else(|_| Name::root());
    let mname = Name::from_ascii(format!("ns.{apex}.")).unwrap_or_else(|_| Name::root());
    let rname = Name::from_ascii(format!("hostmaster.{apex}.")).unwrap_or_else(|_| Name::root());
    // The serial follows the namespace revision (wrapping, as RFC 1982 serials do).
    let serial = (ns.revision & u64::from(u32::MAX)) as u32;
    let soa = SOA::new(mname, rname, serial, 7200, 900, 1_209_600, ns.soa_ttl);
    Record::from_rdata(name, ns.soa_ttl, RData::SOA(soa))
}
