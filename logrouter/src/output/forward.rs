//! The `forward` output: PackedForward frames with a `chunk` id, waiting for the peer's `ack`; optional shared-key handshake.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::OutputError;
use crate::buffer::Batch;
use crate::forward::handshake::digest;
use crate::msgpack::{self, MpError, Reader};

const ACK_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ForwardOut {
    addr: String,
    tag: Option<String>,
    shared_key: Option<String>,
    self_hostname: String,
    require_ack: bool,
    conn: Option<(TcpStream, BytesMut)>,
}

// === impl ForwardOut ===

impl ForwardOut {
    pub fn new(
        addr: String,
        tag: Option<String>,
        shared_key: Option<String>,
        self_hostname: String,
        require_ack: bool,
    ) -> Self {
        Self {
            addr,
            tag,
            shared_key,
            self_hostname,
            require_ack,
            conn: None,
        }
    }

    pub async fn send(&mut self, batches: &[Batch]) -> Result<(), OutputError> {
        let result = self.try_send(batches).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn try_send(&mut self, batches: &[Batch]) -> Result<(), OutputError> {
        if self.conn.is_none() {
            let s = tokio::time::timeout(ACK_TIMEOUT, TcpStream::connect(&self.addr))
                .await
                .map_err(|_| OutputError::Peer("connect timed out".into()))??;
            let _ = s.set_nodelay(true);
            let mut conn = (s, BytesMut::new());
            if let Some(key) = self.shared_key.clone() {
                handshake(&mut conn, &key, &self.self_hostname).await?;
            }
            self.conn = Some(conn);
        }
        let Some((stream, buf)) = self.conn.as_mut() else {
            return Err(OutputError::Peer("not connected".into()));
        };
        for b in batches {
            let chunk: String = format!("{:032x}", rand::random::<u128>());
            let mut frame = Vec::with_capacity(b.entries.len() + 96);
            msgpack::write_array_len(&mut frame, 3);
            msgpack::write_str(&mut frame, self.tag.as_deref().unwrap_or(&b.tag));
            msgpack::write_bin(&mut frame, &b.entries);
            msgpack::write_map_len(&mut frame, if self.require_ack { 2 } else { 1 });
            msgpack::write_str(&mut frame, "size");
            msgpack::write_uint(&mut frame, u64::from(b.count));
            if self.require_ack {
                msgpack::write_str(&mut frame, "chunk");
                msgpack::write_str(&mut frame, &chunk);
            }
            stream.write_all(&frame).await?;
            if self.require_ack {
                let reply = read_value(stream, buf).await?;
                let mut r = Reader::new(&reply);
                let n = r.map_len()?;
                let mut acked = false;
                for _ in 0..n {
                    let k = r.raw()?;
                    if k == b"ack" && r.next_is_raw() {
                        acked = r.raw()? == chunk.as_bytes();
                    } else {
                        r.skip()?;
                    }
                }
                if !acked {
                    return Err(OutputError::Peer(
                        "ack does not match the chunk sent".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Reads one MessagePack value from the stream.
async fn read_value(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Vec<u8>, OutputError> {
    loop {
        let mut r = Reader::new(buf);
        match r.skip() {
            Ok(()) => {
                let n = r.pos();
                let v = buf[..n].to_vec();
                buf.advance(n);
                return Ok(v);
            }
            Err(MpError::Eof) if buf.len() < 1024 * 1024 => {}
            Err(e) => return Err(e.into()),
        }
        buf.reserve(4096);
        let n = tokio::time::timeout(ACK_TIMEOUT, stream.read_buf(buf))
            .await
            .map_err(|_| OutputError::Peer("no ack before timeout".into()))??;
        if n == 0 {
            return Err(OutputError::Peer("connection closed before ack".into()));
        }
    }
}

/// Client side of the shared-key handshake: HELO → PING → PONG.
async fn handshake(
    conn: &mut (TcpStream, BytesMut),
    key: &str,
    hostname: &str,
) -> Result<(), OutputError> {
    let (stream, buf) = conn;
    let helo = read_value(stream, buf).await?;
    let mut r = Reader::new(&helo);
    if r.array_len()? != 2 || r.str()? != "HELO" {
        return Err(OutputError::Peer("expected HELO".into()));
    }
    let mut nonce = Vec::new();
    for _ in 0..r.map_len()? {
        if r.raw()? == b"nonce" {
            nonce = r.raw()?.to_vec();
        } else {
            r.skip()?;
        }
    }
    let salt = format!("{:032x}", rand::random::<u128>());
    let mut ping = Vec::new();
    msgpack::write_array_len(&mut ping, 6);
    msgpack::write_str(&mut ping, "PING");
    msgpack::write_str(&mut ping, hostname);
    msgpack::write_str(&mut ping, &salt);
    msgpack::write_str(
        &mut ping,
        &digest(salt.as_bytes(), hostname.as_bytes(), &nonce, key),
    );
    msgpack::write_str(&mut ping, "");
    msgpack::write_str(&mut ping, "");
    stream.write_all(&ping).await?;
    let pong = read_value(stream, buf).await?;
    let mut r = Reader::new(&pong);
    if r.array_len()? != 5 || r.str()? != "PONG" {
        return Err(OutputError::Peer("expected PONG".into()));
    }
    let ok = r.peek()? == 0xc3;
    r.skip()?;
    let reason = r.str()?.to_owned();
    let server = r.str()?.to_owned();
    let their = r.str()?.to_owned();
    if !ok {
        return Err(OutputError::Peer(format!(
            "authentication refused: {reason}"
        )));
    }
    if their != digest(salt.as_bytes(), server.as_bytes(), &nonce, key) {
        return Err(OutputError::Peer("server digest mismatch".into()));
    }
    Ok(())
}
