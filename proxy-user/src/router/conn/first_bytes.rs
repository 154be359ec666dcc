//! What a connection's first bytes are, known at accept as cheaply as it can be had, so
//! the right budget admits it before the proxy reads a byte.
//!
//! With the eBPF front end loaded, its programs have classified the first segment and
//! stored the class in the socket's `SockStats`, found here by socket cookie
//! (`limits.defer_accept` holds the accept until that segment is there; the kernel
//! classifies it on the listener and hands the class to the new socket). Without it, a
//! non-blocking `MSG_PEEK` of the first bytes is classified by the same function
//! (`proxy_common::classify`). A legacy plaintext protocol (SSH, HTTP, a Postgres
//! pre-startup request) goes straight to the `legacy-plaintext` budget; TLS, a PROXY
//! header, unknown bytes or none yet stay `unclassified` until detection and the
//! ClientHello say more. Either way detection still reads and checks the bytes: this only
//! chooses the first budget.

use std::net::SocketAddr;

use proxy_common::{classify, Counter, SockKey, CLASSIFY_BYTES};
use rustix::net::RecvFlags;
use tokio::net::TcpStream;

use super::error::ConnError;
use super::over_budget;
use super::preface::Deadline;
use crate::ebpf::{self, sockopt::cookie};
use crate::router::admission::{Admitted, LEGACY, UNCLASSIFIED};
use crate::router::metrics::FirstBytesLabel;
use crate::router::state::Proxy;

/// Admits a connection just accepted from `peer` into its first budget: `legacy-plaintext`
/// when its first bytes say so, else `unclassified` until its route is known. When nothing
/// has arrived yet (`limits.defer_accept` ran out, or is off), it waits under `deadline`
/// for the first segment, which the kernel has classified by then, still holding its
/// `unclassified` place. Returns the place and its class.
pub(crate) async fn admit(
    proxy: &Proxy,
    stream: &TcpStream,
    peer: SocketAddr,
    deadline: Deadline,
) -> Result<(Admitted, &'static str), ConnError> {
    let budget = |class| {
        proxy
            .admission
            .admit(class, peer.ip())
            .map_err(|r| over_budget(class, r))
    };
    let mut first = FirstBytes::at_accept(stream);
    let mut class = if first.is_legacy() {
        LEGACY
    } else {
        UNCLASSIFIED
    };
    let mut place = budget(class)?;
    if first.class.is_none() {
        if deadline
            .run("protocol preface", stream.readable())
            .await
            .is_ok()
        {
            first = FirstBytes::at_accept(stream);
        }
        if first.is_legacy() {
            place = budget(LEGACY)?;
            class = LEGACY;
        }
    }
    let (source, label) = first.labels();
    let label = FirstBytesLabel {
        source,
        class: label,
    };
    proxy
        .metrics
        .classes
        .first_bytes
        .get_or_create(&label)
        .inc();
    Ok((place, class))
}

/// Where the class came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The eBPF front end, by socket cookie.
    Kernel,
    /// A non-blocking peek at the socket.
    Peek,
    /// Nothing had arrived yet.
    None,
}

/// The class of the first bytes at accept, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FirstBytes {
    pub(crate) source: Source,
    pub(crate) class: Option<Counter>,
}

impl FirstBytes {
    /// The first bytes of `stream`, just accepted.
    pub(crate) fn at_accept(stream: &TcpStream) -> FirstBytes {
        let kernel = ebpf::frontend().and_then(|f| {
            let key = SockKey {
                cookie: cookie(stream).ok()?,
            };
            f.stats(key)?.first_bytes()
        });
        if let Some(class) = kernel {
            return FirstBytes {
                source: Source::Kernel,
                class: Some(class),
            };
        }
        match peek(stream) {
            Some(class) => FirstBytes {
                source: Source::Peek,
                class: Some(class),
            },
            None => FirstBytes {
                source: Source::None,
                class: None,
            },
        }
    }

    /// A legacy plaintext protocol: admitted by `legacy-plaintext` from the start.
    pub(crate) fn is_legacy(&self) -> bool {
        matches!(
            self.class,
            Some(Counter::ClassSsh | Counter::ClassHttp | Counter::ClassPostgres)
        )
    }

    /// The labels of `switchyard_first_bytes_at_accept_total`.
    pub(crate) fn labels(&self) -> (&'static str, &'static str) {
        let source = match self.source {
            Source::Kernel => "kernel",
            Source::Peek => "peek",
            Source::None => "none",
        };
        (
            source,
            self.class.and_then(Counter::class).unwrap_or("none"),
        )
    }
}

/// The class of what waits in `stream`'s receive queue, without taking it or waiting.
fn peek(stream: &TcpStream) -> Option<Counter> {
    let mut b = [0u8; CLASSIFY_BYTES];
    let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
    match rustix::net::recv(stream, &mut b, flags) {
        Ok((n, _)) if n > 0 => Some(classify(&b, n.min(CLASSIFY_BYTES))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Accepts one connection whose client sent `first` (when not empty), once the bytes
    /// are there.
    async fn accepted_after(first: &[u8]) -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        client.write_all(first).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        if !first.is_empty() {
            server.readable().await.unwrap();
        }
        (server, client)
    }

    #[tokio::test]
    async fn a_peek_classifies_without_taking_the_bytes() {
        // No eBPF front end in unit tests: the peek answers.
        let (server, _client) = accepted_after(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        let first = FirstBytes::at_accept(&server);
        assert_eq!(first.source, Source::Peek);
        assert_eq!(first.class, Some(Counter::ClassSsh));
        assert!(first.is_legacy());
        // Still there for detection.
        let mut b = [0u8; 4];
        assert_eq!(server.try_read(&mut b).unwrap(), 4);
        assert_eq!(&b, b"SSH-");
    }

    #[tokio::test]
    async fn tls_is_not_legacy_and_silence_is_unknown() {
        let (server, _client) = accepted_after(&[0x16, 0x03, 0x01, 0x00, 0x10]).await;
        let first = FirstBytes::at_accept(&server);
        assert_eq!(first.class, Some(Counter::ClassTls));
        assert!(!first.is_legacy());
        assert_eq!(first.labels(), ("peek", "tls"));

        let (silent, _client) = accepted_after(b"").await;
        let first = FirstBytes::at_accept(&silent);
        assert_eq!(first.source, Source::None);
        assert!(!first.is_legacy());
        assert_eq!(first.labels(), ("none", "none"));
    }
}
