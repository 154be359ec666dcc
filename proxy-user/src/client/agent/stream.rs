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
