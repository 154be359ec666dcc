//! kubectl through `switchyard proxy kube` (local TLS with a fresh certificate, ephemeral
//! kubeconfig) and with the kubeconfig of `switchyard kube config` (straight to the proxy,
//! `tls-server-name`) → proxy (SNI `kube-teleport-proxy-alpn.localhost`, passthrough) →
//! an HTTPS server with its own certificate serving the Kubernetes `/version` document
//! (`openssl s_server -WWW`; no real API server installs here).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use switchyard_tests::local_proxy::{client_args, switchyard_cmd, LocalProxy};
use switchyard_tests::process::{Proc, Stream};
use switchyard_tests::{
    free_port, require_tool, run_with_timeout, ProxyConfig, Switchyard, TempDir, TestPki,
};

const VERSION: &str = r#"{"major":"1","minor":"31","gitVersion":"v1.31.0-switchyard-test"}"#;

/// `openssl s_server -WWW` serving `version` from its directory.
struct KubeApi {
    addr: SocketAddr,
    _proc: Proc,
    _dir: TempDir,
}

fn kube_api(pki: &TestPki) -> KubeApi {
    let tls = pki
        .issue_server("kube", "kube", &["kube-teleport-proxy-alpn.localhost"])
        .unwrap();
    let dir = TempDir::new("kube-api").unwrap();
    std::fs::write(dir.join("version"), VERSION).unwrap();
    let openssl = require_tool("openssl", "openssl", &[]).unwrap();
    for _ in 0..3 {
        let port = free_port();
        let mut cmd = Command::new(&openssl);
        cmd.args(["s_server", "-WWW", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"));
        cmd.arg("-cert")
            .arg(&tls.cert)
            .arg("-key")
            .arg(&tls.key)
            .current_dir(dir.path());
        let mut proc = Proc::spawn("kube-api", cmd, dir.path()).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let up = switchyard_tests::wait_until(Duration::from_secs(5), "s_server listening", || {
            Ok(std::net::TcpStream::connect(addr).is_ok().then_some(()))
        });
        if up.is_ok() && proc.wait_exit(Duration::ZERO).unwrap().is_none() {
            let _ = Stream::Stdout;
            return KubeApi {
                addr,
                _proc: proc,
                _dir: dir,
            };
        }
    }
    panic!("openssl s_server did not start");
}

fn kubectl_version(kubeconfig: &std::path::Path) -> switchyard_tests::SClientOutput {
    let mut cmd = Command::new(require_tool("kubectl", "kubernetes-client", &[]).unwrap());
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "--raw", "/version"]);
    cmd.env("HOME", kubeconfig.parent().unwrap());
    run_with_timeout(cmd, b"", Duration::from_secs(20)).unwrap()
}

#[test]
fn kubectl_through_proxy_kube_and_direct_kubeconfig() {
    let pki = TestPki::new().unwrap();
    let api = kube_api(&pki);
    let proxy =
        Switchyard::start(&pki, &ProxyConfig::default().upstream("kube", api.addr)).unwrap();

    let mut args = vec!["proxy".to_owned(), "kube".into()];
    args.extend(client_args(&pki, &proxy, "client"));
    let mut local = LocalProxy::start(&args).unwrap();
    let kubeconfig = local
        .printed("kubeconfig")
        .expect("kubeconfig path printed");
    let out = kubectl_version(&kubeconfig);
    assert!(out.success(), "{out:?}\n{}\n{}", local.logs(), proxy.log());
    assert!(out.stdout.contains("v1.31.0-switchyard-test"), "{out:?}");
    assert!(
        proxy.log().contains("kube-teleport-proxy-alpn.localhost"),
        "{}",
        proxy.log()
    );
    assert_eq!(local.stop().unwrap().map(|s| s.code()), Some(Some(0)));
    assert!(!kubeconfig.exists(), "ephemeral kubeconfig left behind");

    let dir = TempDir::new("kubeconfig").unwrap();
    let direct = dir.join("config");
    let mut args = vec![
        "kube".to_owned(),
        "config".into(),
        format!("--out={}", direct.display()),
    ];
    args.extend(client_args(&pki, &proxy, "client"));
    let out =
        run_with_timeout(switchyard_cmd(&args).unwrap(), b"", Duration::from_secs(10)).unwrap();
    assert!(out.success(), "{out:?}");
    let text = std::fs::read_to_string(&direct).unwrap();
    assert!(
        text.contains("tls-server-name: kube-teleport-proxy-alpn.localhost"),
        "{text}"
    );
    let out = kubectl_version(&direct);
    assert!(out.success(), "{out:?}\n{}", proxy.log());
    assert!(out.stdout.contains("v1.31.0-switchyard-test"), "{out:?}");
}
