//! Forward input connections over TCP and unix sockets: read frames, buffer them, ack `chunk`s once durable.
//!
//! A connection handles one frame at a time and reads the next only when the previous one is in
//! the buffer: when the buffer is full nothing more is read from that client and nothing is
//! acknowledged, so the client's own flow control (TCP windows, ack timeouts) holds it back.
//! Beyond a small window per connection, a frame's bytes are read only under permits of the
//! process-wide [`FrameBudget`]: many clients sending big frames at once wait, not grow memory.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, info, warn};

use super::budget::{FrameBudget, Reservation};
use super::decode::{self, DecodeError, Frame, Limits};
use super::handshake::Handshake;
use crate::input::InputCtx;
use crate::msgpack;

/// Settings of one forward input.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    pub limits: Limits,
    pub shared_key: Option<String>,
    pub self_hostname: String,
    pub tag_override: Option<String>,
    pub tag_prefix: Option<String>,
    /// Process-wide memory budget for frames in flight, shared by every forward input.
    pub budget: FrameBudget,
    /// Clients served at once (`net.max_connections`): each may hold a window outside the
    /// budget, so their number is bounded; the kernel's listen backlog holds the others.
    pub max_connections: usize,
}

/// Slots for the connections of one input, taken before `accept` so waiting clients stay in the
/// kernel's backlog (back-pressure, not loss).
fn connection_slots(settings: &ForwardSettings) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(
        settings.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ))
}

/// Accepts TCP clients until `shutdown` turns true.
pub async fn serve_tcp(
    listener: TcpListener,
    settings: Arc<ForwardSettings>,
    ctx: Arc<InputCtx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let for_conns = shutdown.clone();
    let slots = connection_slots(&settings);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            _ = crate::signalled(&mut shutdown) => return,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    spawn_conn(stream, peer.to_string(), settings.clone(), ctx.clone(), for_conns.clone(), slot);
                }
                Err(e) => {
                    warn!(input = %ctx.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = crate::signalled(&mut shutdown) => return,
        }
    }
}

/// Accepts unix socket clients until `shutdown` turns true; removes the socket file on exit.
pub async fn serve_unix(
    listener: UnixListener,
    path: PathBuf,
    settings: Arc<ForwardSettings>,
    ctx: Arc<InputCtx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let for_conns = shutdown.clone();
    let slots = connection_slots(&settings);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = crate::signalled(&mut shutdown) => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    spawn_conn(stream, path.display().to_string(), settings.clone(), ctx.clone(), for_conns.clone(), slot);
                }
                Err(e) => {
                    warn!(input = %ctx.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = crate::signalled(&mut shutdown) => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

fn spawn_conn<S>(
    stream: S,
    peer: String,
    settings: Arc<ForwardSettings>,
    ctx: Arc<InputCtx>,
    shutdown: watch::Receiver<bool>,
    slot: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        // the input's connection slot, given back when the connection ends
        let _slot = slot;
        let gauge = ctx
            .metrics
            .input_connections
            .with_label_values(&[ctx.name.as_str()]);
        gauge.inc();
        debug!(input = %ctx.name, %peer, "forward client connected");
        if let Err(reason) = connection(stream, &settings, &ctx, shutdown).await {
            ctx.metrics
                .input_rejected
                .with_label_values(&[ctx.name.as_str(), reason.label()])
                .inc();
            warn!(input = %ctx.name, %peer, error = %reason, "forward connection rejected");
        }
        gauge.dec();
    });
}

/// Why a connection was closed by the router.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("handshake failed: {0}")]
    Auth(&'static str),
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    #[error("records could not be buffered")]
    Buffer(#[from] crate::buffer::BufferError),
}

impl ConnError {
    fn label(&self) -> &'static str {
        match self {
            ConnError::Decode(d) => d.reason(),
            ConnError::Truncated => "truncated",
            ConnError::Auth(_) => "auth",
            ConnError::Io(_) => "io",
            ConnError::Buffer(_) => "buffer",
        }
    }
}

/// Bytes a connection may hold without permits: frame headers, small frames, a big frame's tail.
/// Also the size of a read when no big frame is under way.
const FREE_BYTES: usize = 16 * 1024;
/// A frame is held up to three times over for a moment (raw or decoded, enriched, encoded for
/// the buffer): reserve for all of them.
const COPIES: usize = 3;
/// Largest batch made of several chunk-less frames.
const COALESCE_BYTES: usize = 1024 * 1024;

/// Records of chunk-less frames of one tag, buffered as one batch.
struct Pending {
    tag: String,
    first: Bytes,
    /// The records of every frame once a second one joined the first.
    joined: Option<Vec<u8>>,
    count: u32,
}

impl Pending {
    fn len(&self) -> usize {
        self.joined.as_ref().map_or(self.first.len(), Vec::len)
    }

    fn join(&mut self, entries: &[u8], count: u32) {
        let first = &self.first;
        self.joined
            .get_or_insert_with(|| {
                let mut v = Vec::with_capacity(first.len() + entries.len());
                v.extend_from_slice(first);
                v
            })
            .extend_from_slice(entries);
        self.count += count;
    }
}

async fn flush(ctx: &InputCtx, pending: &mut Option<Pending>) -> Result<(), ConnError> {
    if let Some(p) = pending.take() {
        let entries = p.joined.map_or(p.first, Bytes::from);
        ctx.ingest(&p.tag, entries, p.count, &[], false).await?;
    }
    Ok(())
}

/// A fresh read buffer holding `rest`, so the allocation a big frame needed is given back.
fn shrink(rest: &[u8]) -> BytesMut {
    let mut fresh = BytesMut::with_capacity(FREE_BYTES.max(rest.len()));
    fresh.extend_from_slice(rest);
    fresh
}

async fn connection<S>(
    mut s: S,
    settings: &ForwardSettings,
    ctx: &InputCtx,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(FREE_BYTES);
    let mut authenticated = settings.shared_key.is_none();
    // bytes the frame at the head of `buf` needs at least before decoding is worth trying
    let mut need = 0usize;
    // permits for the frame at the head of `buf` (and its decoded copy): `buf` never holds more
    // than FREE_BYTES + reserved
    let mut reservation: Option<Reservation> = None;
    let mut reserved = 0usize;
    // permits `reservation` holds: a compressed frame's decompressed bytes must fit in them
    let mut held = 0usize;
    // the most a frame may need: what a connection reserves when a compressed payload
    // outgrows its permits
    let worst = settings
        .limits
        .max_frame
        .saturating_mul(COPIES)
        .min(settings.budget.total());
    let handshake = settings
        .shared_key
        .as_deref()
        .map(|k| Handshake::new(k, &settings.self_hostname));
    if let Some(h) = &handshake {
        s.write_all(&h.helo()).await?;
    }
    loop {
        // frames without `chunk` that share a tag are buffered as one batch: one append, not one per message
        let mut pending: Option<Pending> = None;
        let mut completed = false;
        loop {
            if buf.len() < need {
                break;
            }
            let decoded = loop {
                // a compressed payload may inflate only into the permits held (or the free window)
                let limit = held.max(FREE_BYTES);
                match decode::decode_frame_shared(
                    &buf,
                    &settings.limits,
                    limit,
                    ctx.buffer.spares(),
                ) {
                    Err(DecodeError::NeedsMoreBudget(_)) if held < worst => {
                        // give the permits back before waiting for the worst case, so no
                        // connection waits while holding permits
                        flush(ctx, &mut pending).await?;
                        drop(reservation.take());
                        tokio::select! {
                            r = settings.budget.reserve(worst) => {
                                let Some(r) = r else {
                                    return Err(DecodeError::TooLarge(worst).into());
                                };
                                reservation = Some(r);
                                held = worst;
                            }
                            _ = crate::signalled(&mut shutdown) => {
                                info!(input = %ctx.name, "closing forward connection for shutdown");
                                return Ok(());
                            }
                        }
                    }
                    Err(DecodeError::NeedsMoreBudget(n)) => break Err(DecodeError::TooLarge(n)),
                    other => break other,
                }
            };
            let decoded = match decoded {
                Ok(Some(d)) => d,
                Ok(None) => {
                    // a big PackedForward frame arrives in many reads: don't rescan it for each
                    need = decode::min_frame_len(&buf).unwrap_or(0).max(buf.len() + 1);
                    break;
                }
                Err(e) => {
                    flush(ctx, &mut pending).await?;
                    return Err(e.into());
                }
            };
            completed = true;
            need = 0;
            let used = decoded.used;
            let frame = if used > FREE_BYTES {
                // a big frame's records go on to the buffer as a part of the bytes read (no
                // copy); the next frame starts in a fresh small buffer
                let raw = buf.split_to(used).freeze();
                buf = shrink(&buf);
                decoded.with_entries(|r| raw.slice(r))
            } else {
                let frame = decoded.with_entries(|r| Bytes::copy_from_slice(&buf[r]));
                buf.advance(used);
                frame
            };
            match frame {
                Frame::Ping(ping) => {
                    let Some(h) = &handshake else {
                        return Err(ConnError::Auth("unexpected PING"));
                    };
                    match h.answer(&ping) {
                        Ok(pong) => {
                            s.write_all(&pong).await?;
                            authenticated = true;
                        }
                        Err(pong) => {
                            s.write_all(&pong).await?;
                            return Err(ConnError::Auth("shared key mismatch"));
                        }
                    }
                }
                Frame::Events(ev) => {
                    if !authenticated {
                        return Err(ConnError::Auth("events before PING"));
                    }
                    if ev.rejected > 0 {
                        ctx.metrics
                            .input_rejected
                            .with_label_values(&[ctx.name.as_str(), "record"])
                            .inc_by(u64::from(ev.rejected));
                        warn!(input = %ctx.name, records = ev.rejected, "records refused (oversized or not [time, map])");
                    }
                    let tag = match (&settings.tag_override, &settings.tag_prefix) {
                        (Some(t), _) => t.clone(),
                        (None, Some(p)) => format!("{p}{}", ev.tag),
                        (None, None) => ev.tag,
                    };
                    let Some(chunk) = ev.chunk else {
                        match pending.as_mut() {
                            Some(p)
                                if p.tag == tag && p.len() + ev.entries.len() <= COALESCE_BYTES =>
                            {
                                p.join(&ev.entries, ev.count);
                            }
                            _ => {
                                flush(ctx, &mut pending).await?;
                                pending = Some(Pending {
                                    tag,
                                    first: ev.entries,
                                    joined: None,
                                    count: ev.count,
                                });
                            }
                        }
                        continue;
                    };
                    flush(ctx, &mut pending).await?;
                    ctx.ingest(&tag, ev.entries, ev.count, &[], true).await?;
                    let mut ack = Vec::with_capacity(chunk.len() + 8);
                    msgpack::write_map_len(&mut ack, 1);
                    msgpack::write_str(&mut ack, "ack");
                    msgpack::write_str(&mut ack, &chunk);
                    s.write_all(&ack).await?;
                }
            }
        }
        flush(ctx, &mut pending).await?;
        if completed {
            // the frame the permits were for is buffered (and acked): give them back; what is
            // left in `buf` is at most FREE_BYTES, the start of the next frame
            reservation = None;
            reserved = 0;
            held = 0;
            if buf.is_empty() && buf.capacity() > 4 * FREE_BYTES {
                buf = shrink(&[]);
            }
        }
        if reservation.is_none() {
            // the frame's size, when its header says it (PackedForward), else the worst case
            // once it outgrows what a connection may hold without permits
            let budget = &settings.budget;
            let wanted = match decode::min_frame_len(&buf) {
                // the header announces more than a frame may hold: refuse now, not after reading it
                Some(n) if n > settings.limits.max_frame => {
                    return Err(DecodeError::TooLarge(settings.limits.max_frame).into());
                }
                Some(n) if n > budget.total() => {
                    return Err(DecodeError::TooLarge(budget.total()).into());
                }
                Some(n) if n > FREE_BYTES => Some(n),
                // an unknown-size frame reserves the worst case, capped by the whole budget
                _ if buf.len() >= FREE_BYTES => Some(settings.limits.max_frame.min(budget.total())),
                _ => None,
            };
            if let Some(n) = wanted {
                // never more than the whole budget, so any frame that fits in it gets read
                let permits = n.saturating_mul(COPIES).min(budget.total());
                tokio::select! {
                    r = budget.reserve(permits) => {
                        let Some(r) = r else {
                            return Err(DecodeError::TooLarge(budget.total()).into());
                        };
                        reservation = Some(r);
                        reserved = n;
                        held = permits;
                    }
                    _ = crate::signalled(&mut shutdown) => {
                        info!(input = %ctx.name, "closing forward connection for shutdown");
                        return Ok(());
                    }
                }
            }
        }
        let room = (FREE_BYTES + reserved).saturating_sub(buf.len());
        if room == 0 {
            // the frame outgrew its reservation (or the whole budget)
            return Err(DecodeError::TooLarge(reserved.min(settings.limits.max_frame)).into());
        }
        let grow = room.min(need.saturating_sub(buf.len()).max(FREE_BYTES));
        if buf.capacity() - buf.len() < grow && buf.len() + grow > 4 * FREE_BYTES {
            // a big frame is read into spare memory, which goes on with its records to the
            // buffer's writer and comes back once they are written
            let want = buf.len() + grow;
            // (`try_into_mut` of a `Bytes` just made from a `Vec` always succeeds: bytes has
            // no `From<Vec<u8>>` for `BytesMut`.)
            let mut big = Bytes::from(ctx.buffer.spares().take(want))
                .try_into_mut()
                .unwrap_or_else(|_| BytesMut::with_capacity(want));
            big.extend_from_slice(&buf);
            buf = big;
        }
        buf.reserve(grow);
        let read = {
            let mut window = (&mut buf).limit(room);
            tokio::select! {
                n = s.read_buf(&mut window) => Some(n),
                _ = crate::signalled(&mut shutdown) => None,
            }
        };
        match read {
            Some(n) => {
                if n? == 0 {
                    return if buf.is_empty() {
                        Ok(())
                    } else {
                        Err(ConnError::Truncated)
                    };
                }
            }
            None => {
                info!(input = %ctx.name, "closing forward connection for shutdown");
                return Ok(());
            }
        }
    }
}
