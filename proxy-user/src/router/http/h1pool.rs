//! Kept-alive HTTP/1.1 connections to one plaintext upstream, on hyper's connection API:
//! the proxy's hot path (the web upstream and most apps speak plain HTTP/1.1), so a request
//! costs a scan of a short list instead of hyper-util's general pool (keys, connector
//! futures, checkout waiters). HTTPS and HTTP/2 upstreams use hyper-util's client.
//!
//! A connection goes back on the idle stack when its response body has been read to the
//! end; a request takes the most recently used one (warm), or dials a new one. A request
//! that fails on a reused connection before it was sent (the upstream closed it while
//! idle) is retried once on a fresh one, as hyper-util's client does.

use super::pool::{Body, BoxError};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use std::{fmt, io};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tracing::debug;

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    Connect(io::Error),
    Http(hyper::Error),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "cannot connect: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Http(e) => Some(e),
        }
    }
}

struct Conn {
    sender: SendRequest<Body>,
    used: Instant,
}

/// The idle connections to one `host:port`, the most recently used last.
struct Idle {
    addr: String,
    idle_timeout: Duration,
    max_idle: usize,
    conns: Mutex<Vec<Conn>>,
}

impl Idle {
    /// Takes the most recently used idle connection that is open, fresh and ready now.
    /// One that is not ready yet (still sending the rest of a request body its upstream
    /// answered early, say) goes back to the bottom rather than being waited for, so no
    /// request queues behind another's upload.
    fn pop(&self) -> Option<SendRequest<Body>> {
        let mut conns = self.conns.lock().ok()?;
        for _ in 0..conns.len() {
            let conn = conns.pop()?;
            if conn.used.elapsed() > self.idle_timeout || conn.sender.is_closed() {
                continue; // dropped: hyper closes it
            }
            if conn.sender.is_ready() {
                return Some(conn.sender);
            }
            conns.insert(0, conn);
        }
        None
    }

    /// Returns a connection whose response has been read.
    fn push(&self, sender: SendRequest<Body>) {
        let Ok(mut conns) = self.conns.lock() else {
            return;
        };
        if conns
            .first()
            .is_some_and(|c| c.used.elapsed() > self.idle_timeout)
        {
            conns.remove(0);
        }
        if conns.len() < self.max_idle && !sender.is_closed() {
            conns.push(Conn {
                sender,
                used: Instant::now(),
            });
        }
    }
}

/// The connections to one `host:port`.
pub(crate) struct H1Pool {
    connect_timeout: Duration,
    idle: Arc<Idle>,
}

impl H1Pool {
    pub(crate) fn new(
        addr: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> H1Pool {
        H1Pool {
            connect_timeout,
            idle: Arc::new(Idle {
                addr,
                idle_timeout,
                max_idle,
                conns: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Sends `req` (its URI in origin form) and returns the response; the connection goes
    /// back to the pool when the response body has been read.
    pub(crate) async fn send(&self, mut req: Request<Body>) -> Result<Response<Body>, SendError> {
        if let Some(mut sender) = self.idle.pop() {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.returning(resp, sender)),
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection had closed while idle. Once more, fresh.
                    Some(r) => {
                        debug!(upstream = %self.idle.addr, error = %e.error(), "reused connection closed; retrying on a new one");
                        req = r;
                    }
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let resp = sender.send_request(req).await.map_err(SendError::Http)?;
        Ok(self.returning(resp, sender))
    }

    /// The response with a body that returns `sender` to the pool at its end (not after
    /// an upgrade: that connection is the upgrade's now).
    fn returning(&self, resp: Response<Incoming>, sender: SendRequest<Body>) -> Response<Body> {
        let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| (sender, self.idle.clone()));
        resp.map(|inner| Checkin { inner, back }.boxed())
    }

    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let addr = &self.idle.addr;
        let stream = match timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                let why = format!("no answer within {:?}", self.connect_timeout);
                return Err(SendError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    why,
                )));
            }
            Ok(r) => r.map_err(SendError::Connect)?,
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        let addr = addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(upstream = %addr, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// A response body that gives its connection back to the pool once it has been read
/// to the end (dropped earlier, the connection is dropped and hyper closes it).
struct Checkin {
    inner: Incoming,
    back: Option<(SendRequest<Body>, Arc<Idle>)>,
}

impl Checkin {
    fn give_back(&mut self) {
        if let Some((sender, idle)) = self.back.take() {
            idle.push(sender);
        }
    }
}

impl Drop for Checkin {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

impl HttpBody for Checkin {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.give_back();
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Empty, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// An HTTP/1.1 server on loopback answering `ok`, counting its connections; with
    /// `keep_alive: false` it closes each connection after one response.
    async fn server(keep_alive: bool) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            "ok",
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn get() -> Request<Body> {
        let empty = Empty::<Bytes>::new().map_err(|e| -> BoxError { match e {} });
        Request::get("/")
            .header("host", "x")
            .body(empty.boxed())
            .unwrap()
    }

    async fn body(resp: Response<Body>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_has_been_read() {
        let (addr, accepted) = server(true).await;
        let pool = H1Pool::new(addr, Duration::from_secs(5), Duration::from_secs(60), 8);
        for _ in 0..3 {
            let resp = pool.send(get()).await.unwrap();
            assert_eq!(body(resp).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Two at once: the second cannot wait for the first's body, so it dials.
        let a = pool.send(get()).await.unwrap();
        let b = pool.send(get()).await.unwrap();
        assert_eq!((body(a).await, body(b).await), ("ok".into(), "ok".into()));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_upstream_that_closes_idle_connections_costs_a_new_one_not_an_error() {
        let (addr, accepted) = server(false).await;
        let pool = H1Pool::new(addr, Duration::from_secs(5), Duration::from_secs(60), 8);
        for _ in 0..3 {
            let resp = pool.send(get()).await.unwrap();
            assert_eq!(body(resp).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn nobody_listening_is_a_connect_error() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().to_string()
        };
        let pool = H1Pool::new(addr, Duration::from_secs(5), Duration::from_secs(60), 8);
        let e = pool.send(get()).await.unwrap_err();
        assert!(matches!(e, SendError::Connect(_)), "{e}");
    }
}
