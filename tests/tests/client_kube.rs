//! kubectl through `switchyard proxy kube` (local TLS with a fresh certificate, ephemeral
//! kubeconfig) and with the kubeconfig of `switchyard kube config` (straight to the proxy,
//! `tls-server-name`) → proxy (SNI `kube-teleport-proxy-alpn.localhost`, passthrough) →
//! an HTTPS server with its own certificate serving the Kubernetes `/version` document
//! (`openssl s_server -WWW`; no real API server installs here).

use switchyard_tests::kube::{direct_kubeconfig, kubectl_version, KubeApi};
use switchyard_tests::local_proxy::{client_args, LocalProxy};
use switchyard_tests::{ProxyConfig, Switchyard, TestPki};

#[test]
fn kubectl_through_proxy_kube_and_direct_kubeconfig() {
    let pki = TestPki::new().unwrap();
    let api = KubeApi::start(&pki, "kube-teleport-proxy-alpn.localhost", None).unwrap();
    let proxy =
        Switchyard::start(&pki, &ProxyConfig::default().upstream("kube", api.addr)).unwrap();

    let mut args = vec!["proxy".to_owned(), "kube".into()];
    args.extend(client_args(&pki, &proxy, "client"));
    let mut local = LocalProxy::start(&args).unwrap();
    let kubeconfig = local
        .printed("kubeconfig")
        .expect("kubeconfig path printed");
    let out = kubectl_version(&kubeconfig).unwrap();
    assert!(out.success(), "{out:?}\n{}\n{}", local.logs(), proxy.log());
    assert!(out.stdout.contains("v1.31.0-switchyard-test"), "{out:?}");
    assert!(
        proxy.log().contains("kube-teleport-proxy-alpn.localhost"),
        "{}",
        proxy.log()
    );
    assert_eq!(local.stop().unwrap().map(|s| s.code()), Some(Some(0)));
    assert!(!kubeconfig.exists(), "ephemeral kubeconfig left behind");

    let (_dir, direct, text) = direct_kubeconfig(&pki, &proxy, &[]).unwrap();
    assert!(
        text.contains("tls-server-name: kube-teleport-proxy-alpn.localhost"),
        "{text}"
    );
    let out = kubectl_version(&direct).unwrap();
    assert!(out.success(), "{out:?}\n{}", proxy.log());
    assert!(out.stdout.contains("v1.31.0-switchyard-test"), "{out:?}");
}
