//! Bulk throughput through a terminated route (`cargo xtask bench --terminated-only`, and
//! part of the full run): the bench's rustls client (TLS 1.3, ALPN `teleport-proxy-ssh`,
//! client certificate `alice`, AES-GCM as rustls/ring negotiates it) writes for the run's
//! length into one or `--streams` connections, each proxy ends TLS (verifying the client
//! certificate against the bench CA) and forwards the plaintext to the same counting sink.
//! Direct is the same client into a TLS sink in the bench process: the TLS work without
//! a proxy. Switchyard's terminated `ssh` route, HAProxy (`mode tcp`, `ssl crt … verify
//! required`) and nginx (`stream`, `ssl_verify_client on`, one worker) are compared in one
//! run, with each proxy's own CPU seconds per GB and the whole machine's; a second
//! Switchyard with `--tls-records rustls` keeps the session in rustls' buffered
//! connection (the record layer before `io::records`) for comparison. Where the host's
//! kernel has TLS, a second Switchyard with `--ktls require` adds the kTLS row (the
//! session handed to the kernel after the handshake, `docs/ebpf.md`); elsewhere the table
//! says why that row is missing.

use std::{
    fmt::Write as _,
    io::Read,
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Command, Stdio},
    sync::{atomic::Ordering, Arc},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use rustls::{server::WebPkiClientVerifier, ServerConfig, ServerConnection, StreamOwned};

use super::{
    load, peers,
    peers::{free_port, Peer},
    scale_peers::{haproxy_cfg, nginx_conf, write_haproxy_pem},
    tunnel::{self, Sink, Target},
};

/// Who ends the client's TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Switchyard,
    /// `--tls-records rustls`: the session stays in rustls' buffered connection.
    SwitchyardRustls,
    SwitchyardKtls,
    Haproxy,
    Nginx,
}

/// Whether this kernel offers kernel TLS (the `tls` module loaded where there is one),
/// or what it offers instead.
fn kernel_tls() -> Result<(), String> {
    let _ = Command::new("modprobe")
        .arg("tls")
        .stderr(Stdio::null())
        .status();
    let ulps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    if ulps.split_whitespace().any(|u| u == "tls") {
        return Ok(());
    }
    Err(format!(
        "this kernel has no TLS (tcp_available_ulp: {})",
        ulps.trim()
    ))
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct (TLS sink)",
            Via::Switchyard => "switchyard terminate",
            Via::SwitchyardRustls => "switchyard terminate, rustls records",
            Via::SwitchyardKtls => "switchyard terminate, kTLS",
            Via::Haproxy => "haproxy (tcp, ssl crt)",
            Via::Nginx => "nginx (stream, ssl)",
        }
    }
}

/// A TLS sink in this process: ends TLS like the proxies do, counts the plaintext.
fn tls_sink(pki: &Path) -> Result<Sink> {
    let (certs, key) = load::cert_and_key(pki, "proxy")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(load::roots(&pki.join("ca.crt"))?),
        load::provider(),
    )
    .build()?;
    let mut config = ServerConfig::builder_with_provider(load::provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"teleport-proxy-ssh".to_vec()];
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let sink = Sink::counting(listener.local_addr()?);
    let total = sink.counter();
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let (config, total) = (config.clone(), total.clone());
            thread::spawn(move || {
                let Ok(conn) = ServerConnection::new(config) else {
                    return;
                };
                let mut tls = StreamOwned::new(conn, tcp);
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n @ 1..) = tls.read(&mut buf) {
                    total.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    Ok(sink)
}

/// Starts `via` in front of `sink` (not for [`Via::Direct`]); configurations in `pki`.
fn start(via: Via, sink: SocketAddr, binary: &Path, pki: &Path, logs: &Path) -> Result<Peer> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut cmd = match via {
        Via::Direct => unreachable!("direct has no proxy"),
        Via::Switchyard | Via::SwitchyardRustls | Via::SwitchyardKtls => {
            let config = pki.join("terminated-switchyard.yaml");
            std::fs::write(
                &config,
                format!(
                    "version: v2\nauth_service: {{cluster_name: bench}}\nproxy_service:\n  \
                     web_listen_addr: \"{addr}\"\n  \
                     https_keypairs: [{{cert_file: proxy.crt, key_file: proxy.key}}]\n  \
                     client_ca_file: ca.crt\nupstreams: {{ssh: \"{sink}\"}}\n\
                     limits: {{max_connections: 1000}}\n"
                ),
            )?;
            let mut c = Command::new(binary);
            c.args(["serve", "--ebpf", "off", "--config"]).arg(&config);
            if via == Via::SwitchyardKtls {
                c.args(["--ktls", "require"]);
            }
            if via == Via::SwitchyardRustls {
                c.args(["--tls-records", "rustls"]);
            }
            c.env("SWITCHYARD_LOG", "warn");
            c
        }
        Via::Haproxy => {
            write_haproxy_pem(pki)?;
            let config = pki.join("terminated-haproxy.cfg");
            // The shared configuration's plain and passthrough frontends go unused here.
            let [a, b] =
                [free_port()?, free_port()?].map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
            std::fs::write(&config, haproxy_cfg([a, b, addr], sink, sink, pki, "")?)?;
            let mut c = Command::new("haproxy");
            c.arg("-db").arg("-f").arg(&config);
            c
        }
        Via::Nginx => {
            let dir = pki.join("terminated-nginx");
            std::fs::create_dir_all(&dir)?;
            let config = pki.join("terminated-nginx.conf");
            let others =
                [free_port()?, free_port()?].map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
            let conf = nginx_conf([others[0], others[1], addr], sink, sink, pki, &dir, "1");
            std::fs::write(&config, conf)?;
            let mut c = Command::new("nginx");
            c.arg("-p").arg(&dir).arg("-e").arg(dir.join("nginx.err"));
            c.arg("-c").arg(&config);
            c
        }
    };
    let stem = match via {
        Via::SwitchyardKtls => "switchyard-ktls",
        Via::SwitchyardRustls => "switchyard-rustls",
        _ => via.name().split(' ').next().unwrap_or("peer"),
    };
    let log = std::fs::File::create(logs.join(format!("terminated-{stem}.log")))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {}", via.name()))?;
    Peer::spawned(addr, child, via.name(), logs)
}

/// One peer's runs under one stream count.
struct Row {
    streams: usize,
    via: Via,
    runs: Vec<tunnel::Run>,
}

/// Measures every peer with 1 and `streams` streams, `runs` times each (interleaved), and
/// returns the Markdown table.
pub fn run(
    binary: &Path,
    out: &Path,
    pki: &Path,
    seconds: f64,
    runs: usize,
    streams: usize,
) -> Result<String> {
    peers::install()?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let plain = Sink::start()?;
    let direct = tls_sink(pki)?;
    let ktls = kernel_tls();
    let mut all = vec![
        Via::Direct,
        Via::Switchyard,
        Via::SwitchyardRustls,
        Via::Haproxy,
        Via::Nginx,
    ];
    if ktls.is_ok() {
        all.insert(3, Via::SwitchyardKtls);
    }
    let proxies = all[1..]
        .iter()
        .copied()
        .map(|via| Ok((via, start(via, plain.addr, binary, pki, &logs)?)))
        .collect::<Result<Vec<_>>>()?;
    let tls = load::client_config(pki, Some("alice"), Some("teleport-proxy-ssh"))?;
    let target = |via: Via| -> Result<(Target, &Sink, Vec<u32>)> {
        Ok(match proxies.iter().find(|(v, _)| *v == via) {
            Some((_, peer)) => (
                Target::new(peer.addr, tunnel::Via::Direct, "sink", tls.clone())?,
                &plain,
                peer.pids(),
            ),
            None => (
                Target::new(direct.addr, tunnel::Via::Direct, "sink", tls.clone())?,
                &direct,
                Vec::new(),
            ),
        })
    };
    let duration = Duration::from_secs_f64(seconds);
    let mut rows = Vec::new();
    for n in [1, streams] {
        let mut row: Vec<Row> = all
            .iter()
            .map(|&via| Row {
                streams: n,
                via,
                runs: Vec::new(),
            })
            .collect();
        for i in 1..=runs {
            for r in &mut row {
                let (target, sink, pids) = target(r.via)?;
                let what = format!("terminated ×{n} {}", r.via.name());
                // This process (the client, and direct's TLS sink) is ours, not foreign.
                let ours: Vec<u32> = std::iter::once(0).chain(pids.iter().copied()).collect();
                let (m, _) = tunnel::quietly(&ours, &what, || {
                    tunnel::throughput(&target, sink, n, duration, &pids, None)
                })?;
                eprintln!(
                    "xtask: {what} run {i}/{runs}: {:.2} Gbit/s, proxy {:.2} CPU s/GB, machine {:.2} CPU s/GB",
                    m.gbit_per_s, m.proxy_cpu_per_gb, m.machine_cpu_per_gb
                );
                r.runs.push(m);
            }
        }
        rows.extend(row);
    }
    drop(proxies);
    let mut t = table(&rows, seconds, runs);
    if let Err(why) = ktls {
        let _ = writeln!(t, "\nNo `switchyard terminate, kTLS` row: {why}.");
    }
    Ok(t)
}

fn table(rows: &[Row], seconds: f64, runs: usize) -> String {
    let med = |r: &Row, f: fn(&tunnel::Run) -> f64| {
        super::report::median_min_max(r.runs.iter().map(f).collect())
    };
    let of = |streams: usize, via: Via| rows.iter().find(|r| r.streams == streams && r.via == via);
    let mut t = format!(
        "\nThroughput through a terminated route (mTLS with a client certificate, plaintext to a \
         counting sink), {runs} runs of {seconds} s per row, median (min–max). Direct: the same \
         client into a TLS sink in the bench process. CPU s/GB: the proxy's own processes / \
         the whole machine.\n\n\
         | streams | via | Gbit/s | × direct | × haproxy | proxy CPU s/GB | × haproxy CPU | machine CPU s/GB |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let (g, lo, hi) = med(r, |x| x.gbit_per_s);
        let direct = of(r.streams, Via::Direct).map_or(f64::NAN, |d| med(d, |x| x.gbit_per_s).0);
        let haproxy = of(r.streams, Via::Haproxy);
        let h_gbit = haproxy.map_or(f64::NAN, |h| med(h, |x| x.gbit_per_s).0);
        let h_cpu = haproxy.map_or(f64::NAN, |h| med(h, |x| x.proxy_cpu_per_gb).0);
        let cpu = med(r, |x| x.proxy_cpu_per_gb).0;
        let (cpu_cell, ratio) = match r.via {
            Via::Direct => ("—".to_owned(), "—".to_owned()),
            _ => (format!("{cpu:.2}"), format!("{:.2}", cpu / h_cpu)),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {g:.2} ({lo:.2}–{hi:.2}) | {:.2} | {:.2} | {cpu_cell} | {ratio} | {:.2} |",
            r.streams,
            r.via.name(),
            g / direct,
            g / h_gbit,
            med(r, |x| x.machine_cpu_per_gb).0,
        );
    }
    t
}
