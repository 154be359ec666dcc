//! Protocol messages the seeds are built from: a PROXY v2 header, a ClientHello re-cut
//! into two records, a Postgres StartupMessage, a MariaDB greeting, WebSocket frames.

use crate::router::detect::PROXY_V2_SIGNATURE;

/// A PROXY v2 TCP4 header (the one of `detect_tests.rs`).
pub(super) fn proxy_v2() -> Vec<u8> {
    let mut h = PROXY_V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 7, 10, 0, 0, 1]);
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

/// A captured ClientHello record re-cut into two records.
pub(super) fn two_records(hello: &[u8]) -> Vec<u8> {
    let body = &hello[5..];
    let half = body.len() / 2;
    let record = |part: &[u8]| {
        let len = (part.len() as u16).to_be_bytes();
        [&[0x16, 3, 1, len[0], len[1]][..], part].concat()
    };
    [record(&body[..half]), record(&body[half..])].concat()
}

/// A StartupMessage (protocol 3.0) for user `postgres`.
pub(super) fn pg_startup() -> Vec<u8> {
    let body = b"\0\x03\0\0user\0postgres\0\0";
    [&((body.len() + 4) as u32).to_be_bytes()[..], body].concat()
}

/// A MariaDB greeting payload announcing `CLIENT_SSL` (the one of `client/mysql.rs`).
pub(super) fn mysql_greeting() -> Vec<u8> {
    let mut p = vec![10];
    p.extend_from_slice(b"10.11.6-MariaDB\0");
    p.extend_from_slice(&[1, 0, 0, 0]);
    p.extend_from_slice(b"abcdefgh");
    p.push(0);
    p.extend_from_slice(&0xf8ffu16.to_le_bytes());
    p.extend_from_slice(&[0x21, 2, 0]);
    p
}

/// One WebSocket frame: the first byte (FIN and opcode), masked with `mask` when given.
pub(super) fn ws_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![first];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => f.push(bit | n as u8),
        n => {
            f.push(bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            f.extend_from_slice(&m);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}
