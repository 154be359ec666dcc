//! `switchyard serve`: starts the router — loads the configuration, applies `--ebpf`
//! before any socket exists, binds the single port and the legacy listeners, serves the
//! diagnostics, then runs until SIGTERM/SIGINT (stop accepting, drain live connections up
//! to `limits.drain_timeout`) and reloads certificates and routes on SIGHUP without
//! touching live connections. With `--upgrade-socket`, `SIGUSR2` (or a `serve
//! --takeover`) hands the listening sockets to a new process, and this one drains
//! (`upgrade`); systemd hears of each step (`notify`).

use super::acme::{self, Acme};
use super::admission::Admission;
use super::certs;
use super::diag;
use super::fdlimit;
use super::listener::{self, Ingress};
use super::metrics::Metrics;
use super::notify;
use super::state::{legacy_route, Proxy, Shared};
use super::tunnel::Registry;
use super::upgrade::{self, Sockets};
use crate::config::{self, Config};
use crate::ebpf;
use crate::io::ktls::KtlsMode;
use crate::io::records::RecordsMode;
use crate::relay::choice::{self, RelayMode};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, warn};

fn bind(sockets: &mut Sockets, key: &str, addr: &str, backlog: u32) -> anyhow::Result<TcpListener> {
    let a = config::listen_addr(key, addr)?;
    sockets
        .tcp(key, a, backlog)
        .with_context(|| format!("cannot listen on {a} ({key})"))
}

/// Serves `path` until a shutdown signal. `ready` is called once every listener is bound,
/// with the single port's and the diagnostics' addresses (dev mode prints its
/// instructions there).
pub(crate) async fn serve(
    path: &Path,
    mode: ebpf::Mode,
    relay: Option<RelayMode>,
    (ktls, records): (Option<KtlsMode>, Option<RecordsMode>),
    upgrade: &upgrade::Options,
    ready: impl FnOnce(SocketAddr, Option<SocketAddr>),
) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    warn_untrusted_headers(&config);
    match fdlimit::raise() {
        Ok((before, after)) if before != after => {
            info!(
                ?before,
                ?after,
                "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
            )
        }
        Ok((_, limit)) => info!(?limit, "open-file limit (RLIMIT_NOFILE)"),
        Err(e) => warn!("cannot raise the open-file limit (RLIMIT_NOFILE): {e}"),
    }
    // The predecessor's sockets (with --takeover), before the eBPF front end: taking
    // them over moves this process out of the predecessor's cgroup.
    let mut sockets = Sockets::open(upgrade).await?;
    // Before any listener: sockets belong to the cgroup of the process that creates them.
    let frontend = ebpf::start(mode).context("--ebpf require")?;
    let asked = relay.unwrap_or(config.relay);
    let why_not = match mode {
        ebpf::Mode::Off => "--ebpf off",
        _ => "it did not load: see the warning above",
    };
    let chosen = choice::resolve(asked, frontend.is_some(), why_not)?;
    choice::choose(chosen);
    info!(relay = ?asked, "plaintext pairs are relayed with {}", chosen.describe());
    let ktls = ktls.unwrap_or(config.ktls);
    let records = records.unwrap_or(config.tls_records);
    crate::io::records::choose(records);
    info!(
        ?records,
        "terminated TLS 1.3 sessions the kernel does not take have their records protected by {}",
        match records {
            RecordsMode::Proxy => "the proxy's relay after the handshake",
            RecordsMode::Rustls => "rustls",
        }
    );
    match crate::io::ktls::choose(ktls)? {
        Ok(offered) => info!(
            ciphers = ?offered.names(),
            "terminated sessions of relayed routes go to the kernel's TLS (kTLS) after the handshake"
        ),
        Err(why) if ktls == KtlsMode::Auto => {
            warn!("ktls: auto, but terminated sessions stay in userspace: {why}")
        }
        Err(_) => {}
    }
    let mut metrics = Metrics::new();
    if let Some(f) = frontend {
        metrics.ebpf_loaded.set(1);
        metrics.register_collector(Box::new(ebpf::metrics::FrontendCollector(f)));
    }
    let metrics = Arc::new(metrics);
    let backlog = config.limits.listen_backlog;
    let web = bind(
        &mut sockets,
        "proxy_service.web_listen_addr",
        &config.proxy_service.web_listen_addr,
        backlog,
    )?;
    // The single port's protocols all speak first; the legacy listeners' may not (MySQL).
    // With the eBPF front end, the first segment that completes a deferred handshake is
    // classified on the listener and handed to the new socket (`proxy-ebpf`'s
    // `first_bytes`), so the class is there at accept either way.
    if let Err(e) = crate::io::set_defer_accept(&web, config.limits.defer_accept) {
        warn!("limits.defer_accept not applied to the single port: {e}");
    }
    let mut legacy = Vec::new();
    for (key, addr) in config.legacy_listeners() {
        let route = legacy_route(&config, key)?;
        let listener = bind(
            &mut sockets,
            &format!("proxy_service.{key}"),
            &addr,
            backlog,
        )?;
        legacy.push((listener, route));
    }
    let diag_listener = match &config.diag_addr {
        Some(a) => Some(bind(&mut sockets, "diag_addr", a, backlog)?),
        None => None,
    };
    let limits = config.limits.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let tunnels = Arc::new(Registry::new(metrics.clone()));
    let admission = Arc::new(Admission::new(&config, metrics.clone()));
    let explicit = certs::keypair_names(&config)?;
    let acme = Acme::new(&config, |n| certs::covered(&explicit, n), metrics.clone())?;
    let shared = Shared {
        tunnels: tunnels.clone(),
        admission: admission.clone(),
        acme: acme.clone(),
    };
    let proxy = Arc::new(Proxy::new(
        config,
        metrics.clone(),
        stop_rx.clone(),
        shared.clone(),
    )?);
    if let Some(f) = frontend {
        let ports = std::iter::once(&web).chain(legacy.iter().map(|(l, _)| l));
        for listener in ports {
            f.watch_port(listener.local_addr()?.port())
                .context("registering a listening port with the eBPF front end")?;
        }
        f.set_syn_limit(syn_limit(&proxy.config))
            .context("setting the per-source SYN rate of the eBPF front end")?;
    }

    let (proxy_tx, proxy_rx) = watch::channel(proxy.clone());
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let web_addr = web.local_addr()?;
    let diag_addr = diag_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let (release_tx, release_rx) = watch::channel(false);
    if let Some(l) = diag_listener {
        tokio::spawn(diag::serve(
            l,
            proxy_rx.clone(),
            stop_rx.clone(),
            release_rx,
        ));
    }
    let renewals = acme.map(|a| tokio::spawn(acme::order::run(a)));
    let mut tasks = tokio::task::JoinSet::new();
    let accept = |listener, ingress| {
        listener::serve(
            listener,
            ingress,
            proxy_rx.clone(),
            permits.clone(),
            stop_rx.clone(),
        )
    };
    tasks.spawn(accept(web, Ingress::Multiplex));
    for (listener, route) in legacy {
        info!(listen = %listener.local_addr()?, route = %route.name, upstream = route.upstream.as_deref().unwrap_or("-"), "legacy listener");
        tasks.spawn(accept(listener, Ingress::Fixed(Arc::new(route))));
    }
    // Before systemd (or a predecessor) hears of this process: a reload or an upgrade
    // signal from then on must find its handler.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?;
    let pid = std::process::id();
    info!(pid, web = %web_addr, diag = ?diag_addr, routes = proxy.table.entries().len(), "switchyard serving");
    println!(
        "switchyard ready web={web_addr} diag={}",
        diag_addr.map_or("-".to_owned(), |a| a.to_string())
    );
    ready(web_addr, diag_addr);
    let successor = sockets.predecessor().is_some();
    notify::ready(successor);
    let mut upgrades = sockets.commit().await?;

    let successor = loop {
        tokio::select! {
            _ = hup.recv() => {
                notify::reloading();
                reload(path, &metrics, &proxy_tx, &stop_rx, &shared);
                notify::reloaded();
            }
            _ = usr2.recv() => upgrades.spawn_successor(),
            pid = upgrades.handed_over() => break Some(pid),
            _ = term.recv() => break None,
            _ = int.recv() => break None,
        }
    };
    upgrades.close();
    // Draining or handed over: no more orders from this process (a successor runs its own,
    // from the same state directory).
    if let Some(task) = &renewals {
        task.abort();
    }
    match successor {
        Some(successor) => {
            // The successor is the service now: its diagnostics answer on the shared port.
            let _ = release_tx.send(true);
            info!(
                pid,
                successor,
                "handed the listening sockets over: no new connections here, draining live ones"
            );
        }
        None => {
            notify::stopping();
            info!("shutdown requested: no new connections, draining live ones");
        }
    }
    tunnels.drain_all();
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    listener::drain(&permits, limits.max_connections, limits.drain_timeout).await;
    ebpf::stop();
    info!("stopped");
    Ok(())
}

/// `serve --check`: everything `serve` checks before binding a socket — every key, every
/// file, certificates against their keys, the legacy routes — and nothing else.
pub(crate) fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    for (key, _) in config.legacy_listeners() {
        legacy_route(&config, key)?;
    }
    let metrics = Arc::new(Metrics::new());
    let (_stop, stopping) = watch::channel(false);
    let tunnels = Arc::new(Registry::new(metrics.clone()));
    let admission = Arc::new(Admission::new(&config, metrics.clone()));
    // The ACME state is not opened: its directory and first order belong to `serve`.
    let shared = Shared {
        tunnels,
        admission,
        acme: None,
    };
    Proxy::new(config, metrics, stopping, shared)?;
    Ok(())
}

/// Once at start: an unset `proxy_protocol` with no trusted proxies takes PROXY headers
/// from anyone, and believes none of them.
fn warn_untrusted_headers(config: &Config) {
    let p = &config.proxy_service;
    if p.proxy_protocol.is_none() && p.trusted_proxies.is_empty() {
        warn!(
            "proxy_service.proxy_protocol is unset and proxy_service.trusted_proxies is empty: \
             PROXY headers are accepted from any peer without verification; their addresses are \
             never used as the client's, only logged as claimed_client (set proxy_protocol: \"off\" \
             if no balancer sends them, or list the balancers in trusted_proxies)"
        );
    }
}

/// The kernel's per-source SYN rate: `limits.classes.unclassified.per_source_rate` (and
/// its burst), off when unset.
fn syn_limit(config: &Config) -> proxy_common::SynLimit {
    let limits = &config.limits;
    let unclassified =
        crate::config::budget(&limits.classes, "unclassified", limits.max_connections);
    match unclassified.per_source_rate {
        Some((rate, burst)) => proxy_common::SynLimit::new(rate, burst),
        None => proxy_common::SynLimit::OFF,
    }
}

/// SIGHUP: reload certificates and routes; live connections keep the old ones. Listener
/// addresses, limits and the ACME section need a restart (the ACME certificate goes on
/// being served and renewed).
fn reload(
    path: &Path,
    metrics: &Arc<Metrics>,
    proxies: &watch::Sender<Arc<Proxy>>,
    stopping: &watch::Receiver<bool>,
    shared: &Shared,
) {
    let build = |c| Proxy::new(c, metrics.clone(), stopping.clone(), shared.clone());
    match Config::load(path).and_then(build) {
        Ok(p) => {
            if p.config.relay != proxies.borrow().config.relay {
                warn!(
                    "relay changed: it takes effect at the next start (the running relay goes on)"
                );
            }
            if p.config.ktls != proxies.borrow().config.ktls {
                warn!("ktls changed: it takes effect at the next start");
            }
            if p.config.tls_records != proxies.borrow().config.tls_records {
                warn!("tls_records changed: it takes effect at the next start");
            }
            let acme = |c: &Config| format!("{:?}", c.proxy_service.acme);
            if acme(&p.config) != acme(&proxies.borrow().config) {
                warn!("proxy_service.acme changed: it takes effect at the next start (the running ACME certificate is still served and renewed)");
            }
            shared.admission.reconfigure(&p.config);
            if let Some(f) = crate::ebpf::frontend() {
                if let Err(e) = f.set_syn_limit(syn_limit(&p.config)) {
                    error!("reload: the eBPF front end kept its per-source SYN rate: {e}");
                }
            }
            info!(routes = p.table.entries().len(), config = %path.display(), "reloaded certificates, routes and class budgets");
            let _ = proxies.send(Arc::new(p));
        }
        Err(e) => {
            error!(config = %path.display(), "reload refused, keeping the running configuration: {e}")
        }
    }
}
