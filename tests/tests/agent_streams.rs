//! Many streams over one reverse tunnel, with real processes: a TCP echo app in a network
//! namespace whose only way out is a forwarder to the proxy, `switchyard agent` in there
//! with one tunnel, and 1000 concurrent connections through `proxy app echo`: all open at
//! once (the proxy's gauge and `/agents` count them on the one tunnel), every byte echoed,
//! all closed afterwards, and still the one tunnel the agent started with.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use switchyard_tests::agent::{
    agents_json, app_proxy, metric, pattern, proxy_a, streams_opened, tunnel_bytes,
    unreachable_from_host, Agent, Rule, WAIT,
};
use switchyard_tests::{wait_until, DemoUpstream, Netns, TestPki};

/// At most `n` threads inside at once. The 1000 streams do not all connect in one
/// burst: each hop's listener (the local proxy, the proxy, the app) has an accept queue
/// of 128 (tokio's `TcpListener::bind`), and a burst beyond it is dropped by the kernel
/// (ListenOverflows), resets or, with SYN cookies, leaves a client waiting on a
/// connection the server never saw.
struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Inside<'a>(&'a Gate);

impl Gate {
    fn new(n: usize) -> Gate {
        Gate {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn enter(&self) -> Inside<'_> {
        let mut free = self.free.lock().unwrap();
        while *free == 0 {
            free = self.freed.wait(free).unwrap();
        }
        *free -= 1;
        Inside(self)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap() += 1;
        self.0.freed.notify_one();
    }
}

/// The WARN and ERROR lines of a log, at most 20.
fn warnings(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .take(20)
        .collect();
    lines.join("\n")
}

/// The streams of the 1000-streams test, and the bytes each sends (and gets back).
const STREAMS: u32 = 1000;
const LEN: usize = 16 * 1024;

/// One of the 1000 streams: through the gate to the app's banner, then its own
/// [`pattern`] echoed back whole; waits at `echoed` until all streams have got this far
/// (or failed) and at `release` until the test has read the proxy's counts, then checks
/// what came back.
fn echo_and_hold(
    addr: SocketAddr,
    seed: u32,
    gate: &Gate,
    echoed: &Barrier,
    release: &Barrier,
) -> Result<(), String> {
    let exchange = || -> std::io::Result<(TcpStream, Vec<u8>, Vec<u8>)> {
        let setting_up = gate.enter();
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut got = vec![0u8; 14 + LEN];
        stream.read_exact(&mut got[..14])?;
        drop(setting_up);
        let sent = pattern(seed, LEN);
        let writer = {
            let mut w = stream.try_clone()?;
            let sent = sent.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || w.write_all(&sent))?
        };
        stream.read_exact(&mut got[14..])?;
        // No panic before the barriers: a stream that never reached them would hold
        // every other one (and the test) forever.
        writer
            .join()
            .map_err(|_| std::io::Error::other("the writer thread panicked"))??;
        Ok((stream, got, sent))
    };
    let result = exchange();
    echoed.wait();
    release.wait();
    let (stream, got, sent) = result.map_err(|e| format!("stream {seed}: {e}"))?;
    drop(stream);
    if got[..14] != *b"upstream=echo\n" || got[14..] != sent[..] {
        let first = got[14..].iter().zip(&sent).position(|(a, b)| a != b);
        return Err(format!("stream {seed}: echo differs at byte {first:?}"));
    }
    Ok(())
}

#[test]
fn a_thousand_concurrent_streams_over_one_tunnel_echo_every_byte() {
    const SETTING_UP: usize = 64;
    let pki = TestPki::new().unwrap();
    let ns = Netns::new("echo1k").unwrap();
    let echo = DemoUpstream::echo_in(Some(&ns), "echo").unwrap();
    unreachable_from_host(echo.addr);
    let proxy = proxy_a(&pki, &[Rule::serving("edge", &["tcp:echo"])]);
    let agent = Agent::up_in(&pki, &ns, &proxy, "edge", &[("tcp", "echo", echo.addr)], 1);
    let local = app_proxy(&pki, &proxy, "echo", "client");
    assert_eq!(metric(&proxy, "switchyard_tunnel_tunnels", &[]), 1.0);

    // Every stream echoes its own pattern, then holds on until all have, so the 1000
    // are open at once while the proxy's counts are read.
    // At most SETTING_UP streams between connect and the app's banner at a time: every
    // hop's accept queue holds 128 (see Gate), and the proxy's handshake_timeout is 2 s.
    let gate = Arc::new(Gate::new(SETTING_UP));
    let echoed = Arc::new(Barrier::new(STREAMS as usize + 1));
    let release = Arc::new(Barrier::new(STREAMS as usize + 1));
    let started = Instant::now();
    let threads: Vec<_> = (0..STREAMS)
        .map(|seed| {
            let (echoed, release, gate) = (echoed.clone(), release.clone(), gate.clone());
            let addr = local.addr;
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || echo_and_hold(addr, seed, &gate, &echoed, &release))
                .unwrap()
        })
        .collect();
    echoed.wait();
    let elapsed = started.elapsed();
    let open = metric(&proxy, "switchyard_tunnel_streams", &[]);
    let json = agents_json(&proxy);
    release.wait();
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {STREAMS} streams failed, e.g. {:?}\n--- local ---\n{}\n--- proxy ---\n{}\n--- agent ---\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        warnings(&local.log()),
        warnings(&proxy.log()),
        warnings(&agent.log()),
    );
    eprintln!("{STREAMS} streams echoed {LEN} bytes each in {elapsed:?}");
    assert_eq!(open, f64::from(STREAMS), "streams open at once");
    let tunnels = json["agents"][0]["tunnels"].as_array().unwrap();
    assert_eq!(tunnels.len(), 1, "{json}");
    assert_eq!(tunnels[0]["streams"], STREAMS, "{json}");
    assert_eq!(streams_opened(&proxy, "tcp"), f64::from(STREAMS));
    let bytes = (STREAMS as usize * LEN) as f64;
    let to_agent = tunnel_bytes(&proxy, "to_agent");
    assert!(to_agent >= bytes, "{to_agent} < {bytes}");
    wait_until(WAIT, "every stream to close", || {
        Ok((proxy.metric("switchyard_tunnel_streams", &[])? == 0.0).then_some(()))
    })
    .unwrap();
    // Still the one tunnel it started with.
    assert_eq!(
        agent.log().matches("tunnel up").count(),
        1,
        "{}",
        agent.log()
    );
}
