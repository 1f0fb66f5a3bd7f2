//! Sidecar DNS listener (UDP and TCP): alias names answer with their VIPs, other names of the
//! namespace get NXDOMAIN (the sidecar knows every alias; the system resolver does not know
//! the namespace), names outside it are relayed to the upstream resolver (REFUSED without
//! one, SERVFAIL when it fails). Built on hickory-proto =0.26.3 (message codec only: the
//! server side is a dozen lines here, smaller than hickory-server's zone handler API).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata::A};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::aliases::VipMap;
use crate::server::{Phase, wait_for};

/// TTL of VIP answers: short, VIPs never move but aliases may go.
const TTL: u32 = 5;
/// Time the upstream resolver has to answer a relayed query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) struct DnsCtx {
    pub(crate) vips: VipMap,
    pub(crate) namespace: String,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) phase: watch::Receiver<Phase>,
}

/// Answers queries until the sidecar stops.
pub(crate) async fn serve_dns(socket: UdpSocket, ctx: Arc<DnsCtx>) {
    let socket = Arc::new(socket);
    let mut phase = ctx.phase.clone();
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "dns recv failed");
                    continue;
                }
            },
            () = wait_for(&mut phase, Phase::Stopping) => return,
        };
        let packet = buf[..n].to_vec();
        match answer(&packet, &ctx) {
            Some(reply) => {
                let _ = socket.send_to(&reply, peer).await;
            }
            None => {
                let (socket, upstream) = (socket.clone(), ctx.upstream);
                tokio::spawn(async move {
                    let reply = match upstream {
                        Some(up) => relay(&packet, up)
                            .await
                            .or_else(|| error_reply(&packet, ResponseCode::ServFail)),
                        None => error_reply(&packet, ResponseCode::Refused),
                    };
                    if let Some(reply) = reply {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                });
            }
        }
    }
}

/// DNS over TCP (RFC 7766 framing: a 2-byte length before each message), for clients that
/// retry a truncated UDP answer.
pub(crate) async fn serve_dns_tcp(listener: TcpListener, ctx: Arc<DnsCtx>) {
    let mut phase = ctx.phase.clone();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "dns accept failed");
                    continue;
                }
            },
            () = wait_for(&mut phase, Phase::Stopping) => return,
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let idle = Duration::from_secs(10);
            let _ = tokio::time::timeout(idle * 6, dns_tcp_connection(stream, &ctx, idle)).await;
        });
    }
}

async fn dns_tcp_connection(
    mut stream: TcpStream,
    ctx: &DnsCtx,
    idle: Duration,
) -> std::io::Result<()> {
    loop {
        let Ok(packet) = tokio::time::timeout(idle, read_framed(&mut stream)).await else {
            return Ok(());
        };
        let packet = packet?;
        let reply = match answer(&packet, ctx) {
            Some(reply) => Some(reply),
            None => match ctx.upstream {
                Some(up) => relay_tcp(&packet, up)
                    .await
                    .or_else(|| error_reply(&packet, ResponseCode::ServFail)),
                None => error_reply(&packet, ResponseCode::Refused),
            },
        };
        let Some(reply) = reply else {
            return Ok(());
        };
        write_framed(&mut stream, &reply).await?;
    }
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len =
        u16::try_from(msg.len()).map_err(|_| std::io::Error::other("dns message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

async fn relay_tcp(packet: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let exchange = async {
        let mut s = TcpStream::connect(upstream).await.ok()?;
        write_framed(&mut s, packet).await.ok()?;
        read_framed(&mut s).await.ok()
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .ok()?
}

/// The answer for an alias name or a name of the namespace, or `None` to relay the query.
pub(crate) fn answer(packet: &[u8], ctx: &DnsCtx) -> Option<Vec<u8>> {
    let req = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => return reply_code(packet, ResponseCode::FormErr),
    };
    if req.metadata.message_type != MessageType::Query || req.metadata.op_code != OpCode::Query {
        return None;
    }
    let query = req.queries.first()?;
    let name = query.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    let short = name
        .strip_suffix(ctx.namespace.as_str())
        .and_then(|s| s.strip_suffix('.'))
        .filter(|s| !s.is_empty());
    let vip = {
        let vips = ctx.vips.read().unwrap_or_else(|e| e.into_inner());
        vips.get(name)
            .or_else(|| short.and_then(|s| vips.get(s)))
            .copied()
    };
    let in_namespace = !ctx.namespace.is_empty()
        && (name == ctx.namespace || name.ends_with(&format!(".{}", ctx.namespace)));
    if vip.is_none() && !in_namespace {
        return None;
    }
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_available = true;
    resp.add_query(query.clone());
    let Some(vip) = vip else {
        // The namespace's apex exists (no data); any other name in it is unknown. No SOA is
        // sent, so resolvers do not cache the negative answer and a new alias shows at once.
        if name != ctx.namespace {
            resp.metadata.response_code = ResponseCode::NXDomain;
        }
        return resp.to_vec().ok();
    };
    if matches!(query.query_type(), RecordType::A | RecordType::ANY) {
        resp.add_answer(Record::from_rdata(
            query.name().clone(),
            TTL,
            RData::A(A(vip)),
        ));
    }
    resp.to_vec().ok()
}

fn reply_code(packet: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    if packet.len() < 2 {
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    Message::error_msg(id, OpCode::Query, code).to_vec().ok()
}

/// An answer carrying only `code`, echoing the question.
fn error_reply(packet: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let req = Message::from_vec(packet).ok()?;
    let mut resp = Message::error_msg(req.metadata.id, req.metadata.op_code, code);
    resp.add_queries(req.queries.iter().cloned());
    resp.to_vec().ok()
}

async fn relay(packet: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.connect(upstream).await.ok()?;
    sock.send(packet).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The first `nameserver` of /etc/resolv.conf that is not `ours`.
pub(crate) fn system_resolver(ours: SocketAddr) -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .find(|a| *a != ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;
    use std::sync::RwLock;

    fn ctx() -> DnsCtx {
        let vips = BTreeMap::from([("orders".to_owned(), Ipv4Addr::new(127, 255, 0, 1))]);
        DnsCtx {
            vips: Arc::new(RwLock::new(vips)),
            namespace: "prod.internal".into(),
            upstream: None,
            phase: watch::channel(Phase::Serving).1,
        }
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    #[test]
    fn alias_names_answer_with_their_vip() {
        let ctx = ctx();
        for name in ["orders.", "Orders.prod.internal."] {
            let r = Message::from_vec(&answer(&query(name, RecordType::A), &ctx).unwrap()).unwrap();
            assert_eq!(r.answers.len(), 1, "{name}");
            assert_eq!(
                r.answers[0].data,
                RData::A(A(Ipv4Addr::new(127, 255, 0, 1)))
            );
        }
        let r =
            Message::from_vec(&answer(&query("orders.", RecordType::AAAA), &ctx).unwrap()).unwrap();
        assert!(r.answers.is_empty());
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(
            answer(&query("example.com.", RecordType::A), &ctx).is_none(),
            "others are relayed"
        );
        let r =
            Message::from_vec(&answer(&query("nope.prod.internal.", RecordType::A), &ctx).unwrap())
                .unwrap();
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::NXDomain,
            "unknown names of the namespace"
        );
        assert!(r.answers.is_empty());
        let r = Message::from_vec(&answer(&query("prod.internal.", RecordType::A), &ctx).unwrap())
            .unwrap();
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::NoError,
            "the apex exists"
        );
    }
}
