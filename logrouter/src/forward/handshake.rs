//! Forward protocol v1 shared-key handshake: the server's `HELO`, the client's `PING` check and the `PONG` answer.
//!
//! Digests are `hex(sha512(salt ++ hostname ++ nonce ++ shared_key))`, the client proving it knows
//! the key with its own hostname, the server answering with its hostname, as the spec's
//! "Handshake Messages" section describes.

use sha2::{Digest, Sha512};

use super::decode::Ping;
use crate::msgpack;

/// Server side of one connection's handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub shared_key: String,
    pub self_hostname: String,
    pub nonce: [u8; 16],
}

// === impl Handshake ===

impl Handshake {
    pub fn new(shared_key: &str, self_hostname: &str) -> Self {
        Self {
            shared_key: shared_key.to_owned(),
            self_hostname: self_hostname.to_owned(),
            nonce: rand::random(),
        }
    }

    /// `["HELO", {"nonce": nonce, "auth": "", "keepalive": true}]`.
    pub fn helo(&self) -> Vec<u8> {
        let mut out = Vec::new();
        msgpack::write_array_len(&mut out, 2);
        msgpack::write_str(&mut out, "HELO");
        msgpack::write_map_len(&mut out, 3);
        msgpack::write_str(&mut out, "nonce");
        msgpack::write_bin(&mut out, &self.nonce);
        msgpack::write_str(&mut out, "auth");
        msgpack::write_str(&mut out, "");
        msgpack::write_str(&mut out, "keepalive");
        out.push(0xc3);
        out
    }

    /// Checks a `PING` and builds the `PONG` to send; `Ok` carries the PONG if authenticated.
    pub fn answer(&self, ping: &Ping) -> Result<Vec<u8>, Vec<u8>> {
        let expected = digest(
            &ping.salt,
            ping.hostname.as_bytes(),
            &self.nonce,
            &self.shared_key,
        );
        let ok = expected.eq_ignore_ascii_case(&ping.digest);
        let mut out = Vec::new();
        msgpack::write_array_len(&mut out, 5);
        msgpack::write_str(&mut out, "PONG");
        out.push(if ok { 0xc3 } else { 0xc2 });
        msgpack::write_str(&mut out, if ok { "" } else { "shared_key mismatch" });
        msgpack::write_str(&mut out, &self.self_hostname);
        let pong = digest(
            &ping.salt,
            self.self_hostname.as_bytes(),
            &self.nonce,
            &self.shared_key,
        );
        msgpack::write_str(&mut out, if ok { &pong } else { "" });
        if ok { Ok(out) } else { Err(out) }
    }
}

/// `hex(sha512(salt ++ hostname ++ nonce ++ key))`.
pub fn digest(salt: &[u8], hostname: &[u8], nonce: &[u8], key: &str) -> String {
    let mut h = Sha512::new();
    h.update(salt);
    h.update(hostname);
    h.update(nonce);
    h.update(key.as_bytes());
    h.finalize()
        .iter()
        .fold(String::with_capacity(128), |mut s, b| {
            use std::fmt::Write;
            let _ = write!(s, "{b:02x}");
            s
        })
}
