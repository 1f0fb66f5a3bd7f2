//! A one-question DNS probe over UDP: is a server answering, and with how many records?

use std::net::SocketAddr;
use std::time::Duration;

/// A standard query for `name` type A, class IN, with `id`.
pub fn query_a(id: u16, name: &str) -> Vec<u8> {
    let mut packet = Vec::with_capacity(name.len() + 18);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x00, 0x00]); // a query, no recursion wanted
    packet.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        let length = u8::try_from(label.len()).unwrap_or(63).min(63);
        packet.push(length);
        packet.extend_from_slice(&label.as_bytes()[..usize::from(length)]);
    }
    packet.push(0);
    packet.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    packet
}

/// What a response said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub rcode: u8,
    pub answers: u16,
}

/// The rcode and answer count of a response to the query with `id`; `None` if it is not one.
pub fn parse_response(id: u16, packet: &[u8]) -> Option<Answer> {
    if packet.len() < 12 || packet[..2] != id.to_be_bytes() || packet[2] & 0x80 == 0 {
        return None;
    }
    Some(Answer {
        rcode: packet[3] & 0x0f,
        answers: u16::from_be_bytes([packet[6], packet[7]]),
    })
}

/// Asks `server` for `name` A once; the answer, or `None` on any error or after `timeout`.
pub async fn probe(server: SocketAddr, name: &str, timeout: Duration) -> Option<Answer> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(7);
    socket.send_to(&query_a(id, name), server).await.ok()?;
    let mut buffer = [0u8; 1500];
    let exchange = async {
        loop {
            let (length, from) = socket.recv_from(&mut buffer).await.ok()?;
            if from == server
                && let Some(answer) = parse_response(id, &buffer[..length])
            {
                return Some(answer);
            }
        }
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

/// Whether `server` answers `name` A with NOERROR and at least one record.
pub async fn answers(server: SocketAddr, name: &str) -> bool {
    probe(server, name, Duration::from_millis(200))
        .await
        .is_some_and(|answer| answer.rcode == 0 && answer.answers > 0)
}
