//! Fluent Forward protocol v1 input: frame decoding, the shared-key handshake and the TCP/unix listener.

pub mod decode;
pub mod handshake;
pub mod server;

#[cfg(test)]
mod tests;
