//! Fluent Forward protocol v1 input: frame decoding, the shared-key handshake, the frame memory budget and the TCP/unix listener.

pub mod budget;
pub mod decode;
pub mod handshake;
pub mod server;

#[cfg(test)]
mod tests;
