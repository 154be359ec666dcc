//! One client stream on the agent's side: read the proxy's [`StreamHeader`], find the
//! service among those this agent declared (anything else is refused: the proxy cannot
//! make the agent dial an address of its choosing), dial it, answer the
//! [`StreamReply`], then carry the bytes both ways.

use crate::io::copy::{copy_both, Until};
use crate::io::tunnel::frame;
use crate::io::tunnel::mux::MuxStream;
use crate::io::tunnel::{Service, StreamHeader, StreamReply, MAX_HEADER_BYTES};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{debug, warn};

/// How long the proxy has to send the header, and the agent to reach a service.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BUFFER: usize = 64 * 1024;

/// Serves one stream the proxy opened.
pub(crate) async fn serve(mut stream: MuxStream, services: &BTreeMap<Service, String>) {
    let header = match timeout(HEADER_TIMEOUT, frame::read(&mut stream, MAX_HEADER_BYTES)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return warn!("stream from the proxy refused: bad header: {e}"),
        Err(_) => {
            return warn!("stream from the proxy refused: no header within {HEADER_TIMEOUT:?}")
        }
    };
    let StreamHeader {
        service,
        client,
        identity,
    } = header;
    let who = identity.as_deref().unwrap_or("-");
    let Some(addr) = services.get(&service) else {
        warn!(%service, client, identity = who, "refused a stream for a service this agent does not serve");
        let error = format!("this agent does not serve {service}");
        let _ = frame::write(&mut stream, &StreamReply { error: Some(error) }).await;
        return;
    };
    let upstream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse(stream, &service, format!("{addr}: {e}")).await,
        Err(_) => {
            return refuse(
                stream,
                &service,
                format!("{addr}: no answer within {CONNECT_TIMEOUT:?}"),
            )
            .await
        }
    };
    let _ = upstream.set_nodelay(true);
    if frame::write(&mut stream, &StreamReply { error: None })
        .await
        .is_err()
    {
        return;
    }
    let copied = copy_both(stream, upstream, BUFFER, Until::BothEnd).await;
    debug!(%service, client, identity = who, up = copied.a_to_b, down = copied.b_to_a, "stream closed");
}

async fn refuse(mut stream: MuxStream, service: &Service, error: String) {
    warn!(%service, "cannot reach the service: {error}");
    let reply = StreamReply {
        error: Some(format!("the agent cannot reach {service}: {error}")),
    };
    let _ = frame::write(&mut stream, &reply).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tunnel::mux::{self, Limits, Mode};
    use crate::io::tunnel::Kind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: Limits = Limits {
        max_streams: 8,
        window_bytes: 0,
    };

    /// The proxy side asks for `service`; returns the agent's reply and the stream.
    async fn ask(
        services: BTreeMap<Service, String>,
        service: Service,
    ) -> (StreamReply, MuxStream, mux::Session, mux::Session) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let proxy = mux::start(a, Mode::Server, LIMITS, 4);
        let mut agent = mux::start(b, Mode::Client, LIMITS, 4);
        let mut s = proxy.opener.open().await.unwrap();
        let header = StreamHeader {
            service,
            client: "127.0.0.1:1".into(),
            identity: None,
        };
        frame::write(&mut s, &header).await.unwrap();
        let inbound = agent.inbound.recv().await.unwrap();
        tokio::spawn(async move { serve(inbound, &services).await });
        let reply = frame::read(&mut s, MAX_HEADER_BYTES).await.unwrap();
        (reply, s, proxy, agent)
    }

    fn svc(kind: Kind, name: &str) -> Service {
        Service {
            kind,
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn only_declared_services_are_dialed() {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut c, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).await.unwrap();
            c.write_all(&buf).await.unwrap();
        });
        let declared = BTreeMap::from([(svc(Kind::Tcp, "echo"), addr.to_string())]);
        // Another kind with the same name, and another name: refused, nothing dialed.
        for other in [svc(Kind::Ssh, "echo"), svc(Kind::Tcp, "127-0-0-1")] {
            let (reply, ..) = ask(declared.clone(), other.clone()).await;
            let error = reply.error.expect("refused");
            assert!(
                error.contains(&format!("does not serve {other}")),
                "{error}"
            );
        }
        let (reply, mut s, _p, _a) = ask(declared, svc(Kind::Tcp, "echo")).await;
        assert_eq!(reply.error, None);
        s.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
    }

    #[tokio::test]
    async fn an_unreachable_service_is_a_clear_refusal() {
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = gone.local_addr().unwrap();
        drop(gone);
        let declared = BTreeMap::from([(svc(Kind::Postgres, "orders"), addr.to_string())]);
        let (reply, ..) = ask(declared, svc(Kind::Postgres, "orders")).await;
        let error = reply.error.expect("refused");
        assert!(error.contains("cannot reach postgres:orders"), "{error}");
    }
}
