//! The deployment files in `deploy/` (`docs/deploy.md`): the systemd units pass
//! `systemd-analyze verify` (run on a copy whose `ExecStart` names the binary under test,
//! since verify wants the command to exist) with no warning at all, and
//! `systemd-analyze security` scores them within a bound; the Kubernetes manifests pass
//! schema validation offline (`kubernetes-validate`), their probes name paths the proxy
//! serves on the port the ConfigMap's `diag_addr` names, the grace period covers the drain,
//! and the ConfigMaps' configurations are accepted by `switchyard serve --check` and served.
//! Under CI (root): the unit's capability set is enough, as an unprivileged user in a
//! delegated cgroup, for the eBPF front end, a port below 1024 and a binary upgrade.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use switchyard_tests::process::Stream;
use switchyard_tests::{
    http_get, require_tool, switchyard_bin, wait_until, DemoUpstream, Proc, ProxyConfig,
    Switchyard, TempDir, TestPki,
};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The unit at `deploy/systemd/NAME` with `/usr/local/bin/switchyard` replaced by the
/// binary under test (mutated by `edit`), in `dir`.
fn unit_copy(dir: &TempDir, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let bin = switchyard_bin().unwrap();
    let text = read(&format!("systemd/{name}"))
        .replace("/usr/local/bin/switchyard", bin.to_str().unwrap());
    let path = dir.join(name);
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// `systemd-analyze verify`: (success, everything it printed).
fn verify(unit: &Path) -> (bool, String) {
    let analyze = require_tool("systemd-analyze", "systemd", &[]).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn systemd_units_verify_without_a_warning() {
    let dir = TempDir::new("units").unwrap();
    for (name, threshold) in [
        ("switchyard.service", "45"),
        ("switchyard-agent.service", "20"),
    ] {
        let unit = unit_copy(&dir, name, |t| t);
        let (ok, text) = verify(&unit);
        assert!(
            ok && text.trim().is_empty(),
            "{name}: systemd-analyze verify:\n{text}"
        );
        // The same check catches a misspelt key (it only warns, so any output fails).
        let bad = unit_copy(&dir, name, |t| {
            t.replace("NoNewPrivileges=", "NoNewPrivilege=")
        });
        let (_, text) = verify(&bad);
        assert!(
            text.contains("Unknown key"),
            "{name}: verify did not notice a bad key: {text}"
        );
        let out = Command::new("systemd-analyze")
            .args([
                "security",
                "--offline=yes",
                &format!("--threshold={threshold}"),
            ])
            .arg(&unit)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        let level = report
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_default();
        assert!(
            out.status.success(),
            "{name}: exposure above {threshold}/100: {level}\n{report}"
        );
    }
}

#[test]
fn the_proxy_unit_is_notify_reloads_with_sighup_and_offers_upgrades() {
    let unit = read("systemd/switchyard.service");
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RuntimeDirectory=switchyard",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Delegate=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_BPF CAP_PERFMON CAP_NET_ADMIN",
    ] {
        assert!(has(line), "switchyard.service lacks `{line}`");
    }
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(
        exec.contains("--upgrade-socket /run/switchyard/upgrade.sock"),
        "{exec}"
    );
    // The stop timeout covers the default drain (limits.drain_timeout: 30s).
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap();
    assert!(
        stop.trim_end_matches('s').parse::<u32>().unwrap() > 30,
        "TimeoutStopSec={stop}"
    );
    // The unit's ExecStartPre check is a real command line of the binary.
    let pki = TestPki::new().unwrap();
    let config = example_config(&pki);
    let out = Command::new(switchyard_bin().unwrap())
        .args(["serve", "--check", "--config"])
        .arg(&config.1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And refuses a bad configuration as `serve` would: exit 64, the key named.
    let text = std::fs::read_to_string(&config.1)
        .unwrap()
        .replace("drain_timeout: 30s", "drain_timeout: soon");
    std::fs::write(&config.1, text).unwrap();
    let out = Command::new(switchyard_bin().unwrap())
        .args(["serve", "--check", "--config"])
        .arg(&config.1)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("drain_timeout"), "{err}");
}

/// The DaemonSet's ConfigMap configuration, the Secrets' files (test PKI) beside it.
fn example_config(pki: &TestPki) -> (TempDir, PathBuf) {
    let dir = TempDir::new("k8s-config").unwrap();
    let map = &documents("kubernetes/proxy-configmap.yaml")[0];
    let text = map["data"]["switchyard.yaml"].as_str().unwrap();
    let text = text
        .replace("/etc/switchyard/tls/", "")
        .replace("/etc/switchyard/ca/", "");
    std::fs::copy(&pki.server.cert, dir.join("tls.crt")).unwrap();
    std::fs::copy(&pki.server.key, dir.join("tls.key")).unwrap();
    std::fs::copy(pki.ca_cert(), dir.join("ca.crt")).unwrap();
    let path = dir.join("switchyard.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

const MANIFESTS: &[&str] = &[
    "namespace.yaml",
    "proxy-configmap.yaml",
    "proxy-daemonset.yaml",
    "userspace-configmap.yaml",
    "userspace-deployment.yaml",
    "agent-deployment.yaml",
];

/// `kubernetes-validate --strict` for Kubernetes `version`: (success, output).
fn validate(version: &str, files: &[PathBuf]) -> (bool, String) {
    let tool = require_tool(
        "kubernetes-validate",
        "kubernetes-validate (PyPI; `cargo xtask setup` installs it)",
        &[],
    )
    .unwrap();
    let out = Command::new(tool)
        .args(["--strict", "--quiet", "-k", version])
        .args(files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn kubernetes_manifests_pass_strict_schema_validation() {
    let files: Vec<PathBuf> = MANIFESTS
        .iter()
        .map(|m| deploy(&format!("kubernetes/{m}")))
        .collect();
    // The oldest version with the preStop `sleep` action on by default, and the newest.
    for version in ["1.30.0", "1.37.0"] {
        let (ok, text) = validate(version, &files);
        assert!(ok, "Kubernetes {version}:\n{text}");
    }
    // The same validation refuses a misspelt field.
    let dir = TempDir::new("k8s-bad").unwrap();
    let bad = dir.join("bad.yaml");
    let text = read("kubernetes/proxy-daemonset.yaml")
        .replace("terminationGracePeriodSeconds", "terminationGracePeriod");
    std::fs::write(&bad, text).unwrap();
    let (ok, text) = validate("1.30.0", &[bad]);
    assert!(
        !ok && text.contains("terminationGracePeriod"),
        "a bad manifest passed: {text}"
    );
}

/// Every document of a YAML file, as JSON (PyYAML, installed with kubernetes-validate).
fn documents(path: &str) -> Vec<Value> {
    let script = "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(deploy(path))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(docs) => docs,
        other => panic!("{path}: {other}"),
    }
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The value of a top-level `key:` in the configuration text, and of `limits.drain_timeout`.
fn config_value(config: &str, key: &str) -> String {
    config
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in the configuration"))
        .to_owned()
}

#[test]
fn workloads_probe_what_the_proxy_serves_and_outlast_its_drain() {
    let pki = TestPki::new().unwrap();
    for (configmap, workload, kind_name, ebpf) in [
        (
            "proxy-configmap.yaml",
            "proxy-daemonset.yaml",
            "DaemonSet",
            "--ebpf=auto",
        ),
        (
            "userspace-configmap.yaml",
            "userspace-deployment.yaml",
            "Deployment",
            "--ebpf=off",
        ),
    ] {
        let map = &documents(&format!("kubernetes/{configmap}"))[0];
        let config = map["data"]["switchyard.yaml"].as_str().unwrap().to_owned();
        let docs = documents(&format!("kubernetes/{workload}"));
        let spec = &kind(&docs, kind_name)["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.contains(&ebpf), "{workload}: {args:?}");
        let config_arg = args
            .iter()
            .find_map(|a| a.strip_prefix("--config="))
            .unwrap();
        // The configuration file is the ConfigMap's key, mounted where --config reads it.
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "config")
            .unwrap();
        assert_eq!(
            format!("{}/switchyard.yaml", mount["mountPath"].as_str().unwrap()),
            config_arg
        );
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "config")
            .unwrap();
        assert_eq!(
            volume["configMap"]["name"], map["metadata"]["name"],
            "{workload}"
        );

        // Probes: /healthz and /readyz on diag_addr's port (and its host, when loopback).
        let diag: std::net::SocketAddr = config_value(&config, "diag_addr").parse().unwrap();
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{workload} {probe}");
            let port = match &get["port"] {
                Value::Number(n) => n.as_u64().unwrap(),
                Value::String(name) => container["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == name.as_str())
                    .unwrap()["containerPort"]
                    .as_u64()
                    .unwrap(),
                other => panic!("{workload} {probe}: port {other}"),
            };
            assert_eq!(port, u64::from(diag.port()), "{workload} {probe}");
            let host = get["host"].as_str();
            match diag.ip().is_loopback() {
                true => assert_eq!(
                    host,
                    Some(diag.ip().to_string().as_str()),
                    "{workload} {probe}: loopback diag_addr needs host"
                ),
                false => assert_eq!(host, None, "{workload} {probe}"),
            }
        }
        // The grace period covers the preStop pause and the drain.
        let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap();
        let drain: u64 = config_value(&config, "drain_timeout")
            .trim_end_matches('s')
            .parse()
            .unwrap();
        let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace > pause + drain,
            "{workload}: grace {grace} s <= preStop {pause} s + drain {drain} s"
        );

        // The ConfigMap's configuration is accepted, and the probes' paths answer 200.
        let text = config
            .replace("/etc/switchyard/tls/tls.crt", "proxy.crt")
            .replace("/etc/switchyard/tls/tls.key", "proxy.key")
            .replace("/etc/switchyard/ca/ca.crt", "ca.crt")
            .replace(&config_value(&config, "web_listen_addr"), "127.0.0.1:0")
            .replace(&format!("diag_addr: {diag}"), "diag_addr: 127.0.0.1:0");
        let proxy = Switchyard::start_text(&pki, &text, Some("off")).unwrap();
        for path in ["/healthz", "/readyz"] {
            let (code, body) = http_get(proxy.diag, path).unwrap();
            assert_eq!(code, 200, "{configmap} {path}: {body}");
        }
    }
}

/// A cgroup v2 directory under the test's own, handed to uid 65534 as `Delegate=yes`
/// hands a unit's cgroup to its user; removed (with what the proxies left) on drop.
struct DelegatedCgroup(PathBuf);

impl DelegatedCgroup {
    fn new() -> DelegatedCgroup {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = info
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let f: Vec<&str> = left.split(' ').collect();
                (right.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| f[4].to_owned())
            })
            .expect("a cgroup2 mount");
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap()
            .trim_start_matches('/');
        let dir = Path::new(&mount)
            .join(own)
            .join(format!("deploy-caps-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        for file in [
            "",
            "cgroup.procs",
            "cgroup.threads",
            "cgroup.subtree_control",
        ] {
            let path = dir.join(file);
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        }
        DelegatedCgroup(dir)
    }
}

impl Drop for DelegatedCgroup {
    fn drop(&mut self) {
        let _ = wait_until(
            std::time::Duration::from_secs(10),
            "the cgroup to empty",
            || {
                if let Ok(entries) = std::fs::read_dir(&self.0) {
                    for e in entries.flatten().filter(|e| e.path().is_dir()) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
                Ok(std::fs::remove_dir(&self.0).is_ok().then_some(()))
            },
        );
    }
}

/// The capabilities of `switchyard.service` (`CapabilityBoundingSet=`), as setpriv
/// writes them: `+bpf,+perfmon,…`.
fn unit_capabilities() -> String {
    let unit = read("systemd/switchyard.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap();
    line.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A loopback port below 1024 that was free a moment ago.
fn privileged_port() -> u16 {
    (900..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 900..1000")
}

#[test]
#[cfg_attr(
    not(ci),
    ignore = "needs root, cgroup v2 and CAP_BPF (runs under CI=true)"
)]
fn the_units_capabilities_are_enough_for_ebpf_a_low_port_and_an_upgrade() {
    let caps = unit_capabilities();
    let pki = TestPki::new().unwrap();
    let echo = DemoUpstream::echo("echo").unwrap();
    let port = privileged_port();
    let config = ProxyConfig {
        listen: format!("127.0.0.1:{port}"),
        ..ProxyConfig::default()
    }
    .upstream("ssh", echo.addr);
    let dir = TempDir::new("caps").unwrap();
    for (from, to) in [
        (&pki.server.cert, "proxy.crt"),
        (&pki.server.key, "proxy.key"),
    ] {
        std::fs::copy(from, dir.join(to)).unwrap();
    }
    std::fs::copy(pki.ca_cert(), dir.join("ca.crt")).unwrap();
    switchyard_tests::set_mode(&dir.join("proxy.key"), 0o644).unwrap();
    std::fs::write(dir.join("config.yaml"), config.render()).unwrap();
    let run = dir.join("run");
    std::fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(65534), None).unwrap();
    let socket = run.join("upgrade.sock");
    let cgroup = DelegatedCgroup::new();

    // The unit's user (here nobody), only its capabilities, no new privileges, its cgroup.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps="$1" --ambient-caps="$1" --bounding-set="-all,$1" --no-new-privs "$2" serve --config "$3" --ebpf require --relay kernel --upgrade-socket "$4""#)
        .arg(&cgroup.0)
        .arg(&caps)
        .arg(switchyard_bin().unwrap())
        .arg(dir.join("config.yaml"))
        .arg(&socket);
    let mut proc = Proc::spawn("switchyard", cmd, dir.path()).unwrap();
    proc.wait_for_line(Stream::Stdout, std::time::Duration::from_secs(20), |l| {
        l.starts_with("switchyard ready web=").then_some(())
    })
    .unwrap();
    let web: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let legacy = |text: &str| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(web).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        stream.write_all(text.as_bytes()).unwrap();
        let want = format!("upstream=echo\n{text}");
        let mut got = vec![0u8; want.len()];
        stream
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{e}\n{}", proc.logs()));
        assert_eq!(String::from_utf8_lossy(&got), want);
        // A second round trip keeps the connection open until the pair has joined the
        // kernel: the proxy may forward the first echo itself while it switches, and a
        // client that closed by then (CLOSE_WAIT) could no longer be added to the sockmap.
        stream.write_all(b"again\n").unwrap();
        let mut again = [0u8; 6];
        stream
            .read_exact(&mut again)
            .unwrap_or_else(|e| panic!("{e}\n{}", proc.logs()));
        assert_eq!(&again, b"again\n");
    };
    legacy("SSH-2.0-before\r\n");

    let out = Command::new(switchyard_bin().unwrap())
        .args(["upgrade", "--upgrade-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        proc.logs()
    );
    let new: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    legacy("SSH-2.0-after\r\n");

    // The successor runs as the same user with exactly the unit's capabilities.
    let status = std::fs::read_to_string(format!("/proc/{new}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert!(field("Uid:").starts_with("65534"), "{status}");
    let cap_eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    // CAP_NET_BIND_SERVICE 10, CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39.
    assert_eq!(cap_eff, 1 << 10 | 1 << 12 | 1 << 38 | 1 << 39, "{status}");
    // Both processes attached their own front end and spliced their pair in the kernel.
    wait_until(
        std::time::Duration::from_secs(10),
        "two spliced pairs",
        || {
            let log = proc.stderr();
            let attached = log.matches("eBPF front end attached").count();
            let spliced = log.matches("relay=\"kernel_splice\"").count();
            Ok((attached == 2 && spliced == 2).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proc.logs()));
    switchyard_tests::process::signal(new, switchyard_tests::process::Signal::TERM).unwrap();
}
