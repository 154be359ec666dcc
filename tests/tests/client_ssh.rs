//! OpenSSH through `switchyard proxy ssh` (ProxyCommand from `switchyard config ssh`) →
//! proxy (ALPN teleport-proxy-ssh, SNI `<node>.ssh.localhost`, `upstreams.ssh_nodes`) →
//! a real sshd: a command, an scp of 10 MB with a checksum, an unknown node, a refused
//! certificate, and an identity that is unusable before any traffic.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use switchyard_tests::local_proxy::{client_args, switchyard_cmd, write_ssh_config};
use switchyard_tests::sshd::{scp_10mb, ScpCopy};
use switchyard_tests::{
    require_tool, run_with_timeout, ProxyConfig, Sshd, Switchyard, TempDir, TestPki,
};

fn proxy_with_node(pki: &TestPki, sshd: &Sshd) -> Switchyard {
    let config = ProxyConfig::default().node("node1", sshd.addr);
    Switchyard::start(pki, &config).unwrap()
}

/// Writes the block `switchyard config ssh --cluster test` prints, plus the test's key.
fn ssh_config(pki: &TestPki, proxy: &Switchyard, sshd: &Sshd, dir: &TempDir) -> std::path::PathBuf {
    let (path, printed) = write_ssh_config(client_args(pki, proxy, "client"), sshd, dir.path());
    assert!(printed.contains("Host *.test\n"), "{}", printed);
    path
}

fn ssh(config: &Path, args: &[&str]) -> switchyard_tests::SClientOutput {
    let mut cmd = Command::new(require_tool("ssh", "openssh-client", &[]).unwrap());
    cmd.arg("-F").arg(config).args(args);
    run_with_timeout(cmd, b"", Duration::from_secs(20)).unwrap()
}

#[test]
fn openssh_with_generated_config_runs_a_command_and_copies_10mb() {
    let pki = TestPki::new().unwrap();
    let sshd = Sshd::start().unwrap();
    let proxy = proxy_with_node(&pki, &sshd);
    let dir = TempDir::new("client-ssh").unwrap();
    let config = ssh_config(&pki, &proxy, &sshd, &dir);

    let out = ssh(&config, &["root@node1.test", "--", "echo", "ok"]);
    assert!(
        out.success(),
        "ssh: {out:?}\n{}\n{}",
        proxy.log(),
        sshd.log()
    );
    assert_eq!(out.stdout.trim(), "ok");
    assert!(proxy.log().contains("ssh:node1"), "{}", proxy.log());

    let ScpCopy {
        out, local, remote, ..
    } = scp_10mb(&config, dir.path(), Duration::from_secs(20)).unwrap();
    assert!(out.success(), "scp: {out:?}\n{}", proxy.log());
    let sum = |p: &Path| {
        let out = Command::new("sha256sum").arg(p).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    let remote_sum = ssh(
        &config,
        &[
            "root@node1.test",
            "--",
            "sha256sum",
            &remote.display().to_string(),
        ],
    );
    assert_eq!(
        remote_sum.stdout.split_whitespace().next(),
        Some(sum(&local).as_str()),
        "{remote_sum:?}"
    );
}

#[test]
fn unknown_node_and_refused_certificate_are_reported_in_one_line() {
    let pki = TestPki::new().unwrap();
    let sshd = Sshd::start().unwrap();
    let proxy = proxy_with_node(&pki, &sshd);
    let run = |stem: &str, target: &str| {
        let mut args = vec!["proxy".to_owned(), "ssh".into(), "--cluster=test".into()];
        args.extend(client_args(&pki, &proxy, stem));
        args.push(target.into());
        run_with_timeout(
            switchyard_cmd(&args).unwrap(),
            b"SSH-2.0-Test\r\n",
            Duration::from_secs(15),
        )
        .unwrap()
    };
    let out = run("client", "root@nope.test:22");
    assert!(!out.success());
    assert!(
        out.stderr
            .contains("has no route for SNI \"nope.ssh.localhost\""),
        "{out:?}"
    );
    assert!(
        proxy
            .log()
            .contains("\\\"nope\\\" is not in upstreams.ssh_nodes")
            || proxy
                .log()
                .contains("\"nope\" is not in upstreams.ssh_nodes"),
        "{}",
        proxy.log()
    );

    let out = run("wrong-client", "root@node1.test:22");
    assert!(!out.success());
    assert!(
        out.stderr
            .contains("refused the client certificate CN=alice,O=admins"),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}

#[test]
fn unusable_identity_fails_before_any_traffic() {
    let pki = TestPki::new().unwrap();
    let dir = pki.dir();
    // Nothing listens on the proxy address: a network attempt would say "unreachable".
    let mut cmd = switchyard_cmd(["proxy", "ssh", "--proxy=localhost:9", "root@node1:22"]).unwrap();
    cmd.arg(format!("--cert={}", dir.join("client.crt").display()));
    cmd.arg(format!("--key={}", dir.join("wrong-client.key").display()));
    cmd.arg(format!("--ca={}", dir.join("ca.crt").display()));
    let out = run_with_timeout(cmd, b"", Duration::from_secs(10)).unwrap();
    assert!(!out.success());
    assert!(
        out.stderr.contains("wrong-client.key: does not match"),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");

    // An expired certificate from the cluster CA (dated in the past: `switchyard ca issue`
    // cannot back-date, and waiting out a short `--ttl` would be a sleep).
    pki.issue_expired_client("old", "old").unwrap();
    let mut cmd = switchyard_cmd(["proxy", "ssh", "--proxy=localhost:9", "root@node1:22"]).unwrap();
    cmd.arg(format!("--identity={}", dir.join("old").display()));
    let out = run_with_timeout(cmd, b"", Duration::from_secs(10)).unwrap();
    assert!(
        out.stderr.contains("old.crt: certificate expired at"),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");

    let mut cmd = switchyard_cmd(["proxy", "ssh", "--proxy=localhost:9", "root@node1:22"]).unwrap();
    cmd.arg(format!("--identity={}", dir.join("missing").display()));
    let out = run_with_timeout(cmd, b"", Duration::from_secs(10)).unwrap();
    assert!(out.stderr.contains("missing.crt: No such file"), "{out:?}");
}
