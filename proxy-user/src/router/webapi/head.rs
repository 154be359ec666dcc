//! Reading a request head from bytes: [`parse`] answers `Ok(None)` until the head is
//! complete (httparse), a [`HeadError`] for a malformed or oversize one. Header names are
//! lower-cased so the endpoints can look them up.

use thiserror::Error;

/// Most headers accepted in one request head.
const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// Header names lower-cased, values as sent (invalid UTF-8 replaced), in order.
    pub(crate) headers: Vec<(String, String)>,
    /// Bytes of the head, including the final blank line.
    pub(crate) len: usize,
}

impl Request {
    /// The head of a request hyper has read (names are lower-case already).
    pub(crate) fn from_http(method: &str, headers: &http::HeaderMap) -> Request {
        Request {
            method: method.to_owned(),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (n.as_str().to_owned(), v)
                })
                .collect(),
            len: 0,
        }
    }

    /// Every value of header `name` (any case: `protocol`'s canonical names work as is).
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// The comma-separated tokens of every `name` header, lower-cased.
    pub(crate) fn tokens(&self, name: &str) -> Vec<String> {
        self.all(name)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }
}

/// A request head that cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum HeadError {
    #[error("malformed HTTP request head: {0}")]
    Malformed(String),
    #[error("HTTP request head larger than {0} bytes")]
    TooLarge(usize),
}

/// Parses the request head at the start of `buf`: `Ok(None)` while incomplete.
pub(crate) fn parse(buf: &[u8], max: usize) -> Result<Option<Request>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(Request {
            method: req.method.unwrap_or_default().to_owned(),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            len,
        })),
        Ok(httparse::Status::Partial) if buf.len() >= max => Err(HeadError::TooLarge(max)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADS: [&str; 3] = [
        "GET /webapi/connectionupgrade HTTP/1.1\r\nHost: proxy\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: alpn-ping, alpn\r\n\r\n",
        "GET /webapi/connectionupgrade HTTP/1.1\r\nHost: lb\r\nUpgrade: alpn-ping\r\nX-Teleport-Upgrade: alpn-ping\r\nX-Forwarded-For: 203.0.113.7:4242\r\n\r\n",
        "GET /webapi/ping HTTP/1.1\r\n\r\n",
    ];

    /// Every proper prefix of a complete head is "not yet"; the whole head, and the head
    /// followed by what comes after it (the inner TLS, a next request), give the same
    /// request whose length is exactly the head's.
    #[test]
    fn every_prefix_needs_more_and_longer_input_gives_the_same_head() {
        for head in HEADS {
            let bytes = head.as_bytes();
            for n in 0..bytes.len() {
                assert_eq!(
                    parse(&bytes[..n], 16 * 1024),
                    Ok(None),
                    "prefix of {n} bytes"
                );
            }
            let whole = parse(bytes, 16 * 1024).unwrap().unwrap();
            assert_eq!(whole.len, bytes.len());
            let mut longer = bytes.to_vec();
            longer.extend_from_slice(b"\x16\x03\x01\x00\x05hello, and GET / HTTP/1.1\r\n");
            assert_eq!(parse(&longer, 16 * 1024).unwrap().unwrap(), whole);
        }
    }

    #[test]
    fn names_are_lower_cased_and_values_kept_in_order() {
        let r = parse(HEADS[1].as_bytes(), 1024).unwrap().unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.all("x-teleport-upgrade").collect::<Vec<_>>(),
            ["alpn-ping"]
        );
        assert_eq!(r.tokens("upgrade"), ["alpn-ping"]);
        assert_eq!(r.headers[0], ("host".to_owned(), "lb".to_owned()));
    }
}
