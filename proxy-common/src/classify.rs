//! First-bytes classification run by the kernel (`proxy-ebpf/src/first_bytes.rs`): the same
//! classes as the userspace detector (`proxy-user/src/detect.rs`), decided from at most
//! [`CLASSIFY_BYTES`] bytes of the first payload, with fixed-size arrays and constant indices
//! only, so the BPF verifier accepts it unchanged.

use crate::Counter;

/// How many leading bytes [`classify`] looks at.
pub const CLASSIFY_BYTES: usize = 8;

/// HTTP methods by their first four bytes, as the detector knows them.
const HTTP: [[u8; 4]; 9] = [
    *b"GET ", *b"POST", *b"PUT ", *b"HEAD", *b"DELE", *b"OPTI", *b"PATC", *b"CONN", *b"TRAC",
];

/// Postgres SSLRequest, GSSENCRequest and CancelRequest prefixes.
const POSTGRES: [[u8; 8]; 3] = [
    [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
    [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30],
    [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e],
];

/// Classifies the first `len` bytes of `b` (`len` ≤ 8; bytes beyond `len` are ignored).
/// Too few bytes to tell counts as unknown: the kernel counts, userspace decides.
#[inline(always)]
pub fn classify(b: &[u8; CLASSIFY_BYTES], len: usize) -> Counter {
    if len >= 1 && b[0] == 0x16 {
        return Counter::ClassTls;
    }
    if len >= 4 {
        let head = [b[0], b[1], b[2], b[3]];
        if &head == b"SSH-" {
            return Counter::ClassSsh;
        }
        // `PROXY ` (v1) or the start of the v2 signature `\r\n\r\n\0\r\nQ`.
        if &head == b"PROX" || &head == b"\r\n\r\n" {
            return Counter::ClassProxy;
        }
        let mut i = 0;
        while i < HTTP.len() {
            if head == HTTP[i] {
                return Counter::ClassHttp;
            }
            i += 1;
        }
    }
    if len >= CLASSIFY_BYTES {
        let mut i = 0;
        while i < POSTGRES.len() {
            if *b == POSTGRES[i] {
                return Counter::ClassPostgres;
            }
            i += 1;
        }
    }
    Counter::ClassUnknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(bytes: &[u8]) -> Counter {
        let mut b = [0u8; CLASSIFY_BYTES];
        let n = bytes.len().min(CLASSIFY_BYTES);
        b[..n].copy_from_slice(&bytes[..n]);
        classify(&b, n)
    }

    #[test]
    fn every_class_from_its_first_bytes() {
        assert_eq!(of(&[0x16, 0x03, 0x01, 0x02, 0x00]), Counter::ClassTls);
        assert_eq!(of(b"SSH-2.0-OpenSSH_9.2\r\n"), Counter::ClassSsh);
        assert_eq!(of(b"GET / HTTP/1.1\r\n"), Counter::ClassHttp);
        assert_eq!(of(b"OPTIONS * HTTP/1.1\r\n"), Counter::ClassHttp);
        assert_eq!(of(&POSTGRES[0]), Counter::ClassPostgres);
        assert_eq!(of(&POSTGRES[2]), Counter::ClassPostgres);
        assert_eq!(
            of(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            Counter::ClassProxy
        );
        assert_eq!(
            of(&[0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51]),
            Counter::ClassProxy
        );
        assert_eq!(of(b"hello there"), Counter::ClassUnknown);
    }

    #[test]
    fn short_or_empty_input_is_unknown_unless_one_byte_decides() {
        assert_eq!(of(b""), Counter::ClassUnknown);
        assert_eq!(of(b"SSH"), Counter::ClassUnknown);
        assert_eq!(of(&[0x16]), Counter::ClassTls);
        assert_eq!(of(&POSTGRES[0][..7]), Counter::ClassUnknown);
    }
}
