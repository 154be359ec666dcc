//! A local listener on 127.0.0.1: every accepted client connection gets its own TLS
//! connection to the proxy, after the protocol's local handshake ([`Local`]), and a relay.
//! A failure (proxy down, certificate refused, no route) is reported for that connection
//! in one line and the listener keeps accepting; SIGINT/SIGTERM stop it cleanly.

use super::dial::Connector;
use super::{mysql, pg, ClientError};
use crate::io::copy::{copy_both, Until};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// Binds the local listener on 127.0.0.1:`port` (0: any free port) and returns it with
/// the address it got.
pub(crate) async fn bind(port: u16) -> Result<(TcpListener, std::net::SocketAddr), ClientError> {
    let listener = crate::io::listen((std::net::Ipv4Addr::LOCALHOST, port).into()).map_err(
        ClientError::io(format!("cannot listen on 127.0.0.1:{port}")),
    )?;
    let addr = listener
        .local_addr()
        .map_err(ClientError::io("local address"))?;
    Ok((listener, addr))
}

/// What happens on the local side before bytes are carried.
#[derive(Clone)]
pub(crate) enum Local {
    /// Nothing: TCP apps, MongoDB.
    Raw,
    /// Postgres: answer SSLRequest/GSSENCRequest with `N` here, forward the startup packet.
    Postgres,
    /// MySQL: relay the server greeting with the TLS capability cleared.
    Mysql,
    /// Terminate the client's TLS with a local certificate (kubectl).
    Tls(TlsAcceptor),
}

/// How long live connections may finish after a stop before they are closed.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Buffer per direction of a local connection.
const RELAY_BUFFER: usize = 64 * 1024;

/// Bytes carried by one connection: (client → proxy, proxy → client).
pub(crate) type Carried = (u64, u64);

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn interrupted() {
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        },
        _ => std::future::pending().await,
    }
}

/// Accepts until `stop` resolves ([`interrupted`] for a foreground local proxy), then
/// closes live connections.
pub(crate) async fn serve(
    listener: TcpListener,
    connector: Connector,
    local: Local,
    verbose: bool,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    let connector = Arc::new(connector);
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => { warn!("accept failed: {e}"); continue; }
                };
                let (connector, local) = (connector.clone(), local.clone());
                conns.spawn(async move {
                    match handle(stream, &connector, local).await {
                        Ok((up, down)) if verbose => info!(
                            "connection from {peer} via {} (SNI {}, ALPN {:?}) closed: {up} bytes sent, {down} received",
                            connector.proxy, connector.sni, connector.alpn),
                        Ok(_) => {}
                        Err(e) => warn!("connection from {peer}: {e}"),
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = &mut stop => break,
        }
    }
    // Connections that are ending anyway (the client exited) get a moment to finish.
    let finish = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(STOP_GRACE, finish).await;
    match conns.len() {
        0 => info!("local proxy stopped"),
        open => info!("local proxy stopped, closing {open} open connections"),
    }
    conns.shutdown().await;
    Ok(())
}

async fn handle(
    mut stream: TcpStream,
    connector: &Connector,
    local: Local,
) -> Result<Carried, ClientError> {
    let _ = stream.set_nodelay(true);
    match local {
        Local::Raw => relay(stream, connector.dial().await?, connector).await,
        Local::Postgres => {
            let startup = pg::local_startup(&mut stream).await?;
            let mut tls = match connector.dial().await {
                Ok(tls) => tls,
                Err(e) => {
                    pg::refuse(&mut stream, &e).await;
                    return Err(e);
                }
            };
            tls.write_all(&startup)
                .await
                .map_err(|e| connector.classify(e))?;
            let (up, down) = relay(stream, tls, connector).await?;
            Ok((up + startup.len() as u64, down))
        }
        Local::Mysql => {
            let mut tls = connector.dial().await?;
            let greeting =
                mysql::relay_greeting(&mut tls, &mut stream, |e| connector.classify(e)).await?;
            let (up, down) = relay(stream, tls, connector).await?;
            Ok((up, down + greeting))
        }
        Local::Tls(acceptor) => {
            let client = acceptor
                .accept(stream)
                .await
                .map_err(ClientError::io("local TLS handshake with the client"))?;
            relay(client, connector.dial().await?, connector).await
        }
    }
}

/// Copies both ways until both directions end (see [`relay_until`]).
pub(crate) async fn relay<L, R>(
    local: L,
    remote: R,
    connector: &Connector,
) -> Result<Carried, ClientError>
where
    L: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    relay_until(local, remote, connector, Until::BExplains).await
}

/// Copies both ways (`io::copy`): half-close passed on; an error, preferably the proxy's
/// own (an alert such as a refused certificate arrives on the first read under TLS 1.3,
/// behind the broken pipe of a write), is named by [`Connector::classify`]. With
/// [`Until::BEnds`] the proxy's end of stream ends the connection (a ProxyCommand's stdin
/// stays open until OpenSSH is done with it).
pub(crate) async fn relay_until<L, R>(
    local: L,
    remote: R,
    connector: &Connector,
    until: Until,
) -> Result<Carried, ClientError>
where
    L: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    let copied = copy_both(local, remote, RELAY_BUFFER, until).await;
    match copied.error {
        Some(e) => Err(connector.classify(e)),
        None => Ok((copied.a_to_b, copied.b_to_a)),
    }
}
