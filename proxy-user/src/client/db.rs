//! Databases: `proxy db` runs a local listener for psql, mysql or mongosh and prints the
//! client command line; `db connect` runs the client against a temporary local proxy and
//! stops it when the client exits (its exit code becomes ours).

use super::dial::{Dialer, Verify};
use super::local::{self, Local};
use super::ClientError;
use crate::protocol::{DB_LABEL, MONGODB_ALPN, MYSQL_ALPN, POSTGRES_ALPN};
use std::net::SocketAddr;
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};

/// A database protocol and what the local side does for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DbProtocol {
    Postgres,
    Mysql,
    Mongodb,
}

impl DbProtocol {
    pub(crate) fn alpn(self) -> &'static str {
        match self {
            DbProtocol::Postgres => POSTGRES_ALPN,
            DbProtocol::Mysql => MYSQL_ALPN,
            DbProtocol::Mongodb => MONGODB_ALPN,
        }
    }

    fn local(self) -> Local {
        match self {
            DbProtocol::Postgres => Local::Postgres,
            DbProtocol::Mysql => Local::Mysql,
            DbProtocol::Mongodb => Local::Raw,
        }
    }

    /// The client command line that uses a local proxy on `addr`.
    pub(crate) fn command_line(self, addr: SocketAddr) -> String {
        let (ip, port) = (addr.ip(), addr.port());
        match self {
            DbProtocol::Postgres => {
                format!("psql \"host={ip} port={port} sslmode=disable user=USER dbname=DB\"")
            }
            DbProtocol::Mysql => {
                format!("mysql --host={ip} --port={port} --protocol=TCP --skip-ssl --user=USER")
            }
            DbProtocol::Mongodb => format!("mongosh mongodb://{ip}:{port}/"),
        }
    }

    /// Environment that points the client at a local proxy on `addr` (`db connect`).
    fn env(self, addr: SocketAddr) -> Vec<(&'static str, String)> {
        let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
        match self {
            DbProtocol::Postgres => vec![
                ("PGHOST", ip),
                ("PGPORT", port),
                ("PGSSLMODE", "disable".into()),
            ],
            DbProtocol::Mysql => vec![("MYSQL_HOST", ip), ("MYSQL_TCP_PORT", port)],
            DbProtocol::Mongodb => vec![],
        }
    }
}

/// `switchyard proxy db`: serves until SIGINT/SIGTERM.
pub(crate) async fn proxy_db(
    dialer: &Dialer,
    protocol: DbProtocol,
    db: Option<&str>,
    port: u16,
    verbose: bool,
) -> Result<(), ClientError> {
    let sni = db_sni(dialer, db)?;
    let connector = dialer.connector(sni.as_deref(), &[protocol.alpn()], Verify::Proxy)?;
    let (listener, addr) = local::bind(port).await?;
    println!("switchyard ready addr={addr}");
    println!(
        "local proxy for {protocol:?} via {} (ALPN {}); connect with:\n  {}",
        dialer.proxy,
        protocol.alpn(),
        protocol.command_line(addr)
    );
    local::serve(
        listener,
        connector,
        protocol.local(),
        verbose,
        local::interrupted(),
    )
    .await
}

/// The SNI that names database `db` under the proxy's name: `NAME.db.<proxy host>`.
fn db_sni(dialer: &Dialer, db: Option<&str>) -> Result<Option<String>, ClientError> {
    let Some(name) = db else { return Ok(None) };
    if !crate::config::dns_label(name) {
        return Err(ClientError::Usage(format!(
            "--db {name}: a database name is one DNS label (letters, digits, '-')"
        )));
    }
    Ok(Some(format!(
        "{}.{DB_LABEL}.{}",
        name.to_ascii_lowercase(),
        dialer.host
    )))
}

/// `switchyard db connect -- CLIENT ARGS…`.
pub(crate) async fn connect(
    dialer: &Dialer,
    protocol: DbProtocol,
    db: Option<&str>,
    command: &[String],
    verbose: bool,
) -> Result<ExitCode, ClientError> {
    let sni = db_sni(dialer, db)?;
    let connector = dialer.connector(sni.as_deref(), &[protocol.alpn()], Verify::Proxy)?;
    let (listener, addr) = local::bind(0).await?;
    // Ctrl-C belongs to the client (psql cancels a query with it): keep it from killing us.
    let _int = signal(SignalKind::interrupt()).map_err(ClientError::io("SIGINT handler"))?;
    let (program, args) = command.split_first().expect("clap requires a command");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(protocol.env(addr))
        .spawn()
        .map_err(ClientError::io(format!("cannot run {program}")))?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let stop = async {
        let _ = done_rx.await;
    };
    let server = tokio::spawn(local::serve(
        listener,
        connector,
        protocol.local(),
        verbose,
        stop,
    ));
    let status = child
        .wait()
        .await
        .map_err(ClientError::io(format!("waiting for {program}")))?;
    let _ = done_tx.send(());
    let _ = server.await;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
