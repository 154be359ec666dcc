//! Bring-your-own PKI: a CA, server certificate and client certificates made by the
//! `openssl` command (RSA PKCS#8, RSA PKCS#1 and EC keys) work for mTLS routes exactly
//! like `switchyard ca` ones; and `switchyard ca init/issue` output is accepted by
//! `openssl verify` and serves a route. Identity allow lists match CN and O.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use switchyard_tests::process::{Proc, Stream};
use switchyard_tests::{parse_addr, switchyard_bin, DemoUpstream, SClient, TempDir};

const T: Duration = Duration::from_secs(10);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Signs `name.csr` with the openssl CA, with `ext` as the extensions file body.
fn sign(dir: &Path, name: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// Starts `switchyard serve` with an ssh route restricted to `allow`, using the PEM files
/// in `dir` (`proxy.crt`, `proxy.key`, `ca.crt`).
fn serve(dir: &Path, upstream: &DemoUpstream, allow: &str) -> (Proc, std::net::SocketAddr) {
    let config = format!(
        "proxy_service:\n  web_listen_addr: 127.0.0.1:0\n  \
         https_keypairs: [{{cert_file: proxy.crt, key_file: proxy.key}}]\n  \
         client_ca_file: ca.crt\n\
         routes:\n  - {{alpn: teleport-proxy-ssh, mode: terminate, upstream: \"{}\", allow: {allow}}}\n",
        upstream.addr
    );
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    let mut cmd = Command::new(switchyard_bin().unwrap());
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("config.yaml"));
    let mut proc = Proc::spawn("switchyard", cmd, dir).unwrap();
    let web = proc
        .wait_for_line(Stream::Stdout, T, |l| {
            let rest = l.strip_prefix("switchyard ready web=")?;
            parse_addr(rest.split_once(' ')?.0).ok()
        })
        .unwrap();
    (proc, web)
}

fn reaches(web: std::net::SocketAddr, dir: &Path, cert: &str, key: &str) -> bool {
    let out = SClient::new(web)
        .sni("proxy.example.test")
        .alpn("teleport-proxy-ssh")
        .verify(&dir.join("ca.crt"))
        .cert(&dir.join(cert), &dir.join(key))
        .run(b"interop\n", "interop", T)
        .unwrap();
    out.stdout.contains("upstream=ssh\n")
}

#[test]
fn openssl_made_pki_serves_mtls_routes() {
    let tmp = TempDir::new("openssl-pki").unwrap();
    let d = tmp.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=Openssl Test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    // Server: EC P-256 (SEC1 key after conversion below).
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "proxy.p8",
            "-out",
            "proxy.csr",
            "-subj",
            "/CN=proxy.example.test",
        ],
    );
    openssl(d, &["ec", "-in", "proxy.p8", "-out", "proxy.key"]);
    sign(
        d,
        "proxy",
        "subjectAltName=DNS:proxy.example.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    // Clients: carol (RSA, PKCS#8) in O=ops, dave (RSA, PKCS#1) in O=guests.
    for (name, subject) in [("carol", "/CN=carol/O=ops"), ("dave", "/CN=dave/O=guests")] {
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                subject,
            ],
        );
        sign(d, name, "extendedKeyUsage=clientAuth\n");
    }
    openssl(
        d,
        &[
            "rsa",
            "-in",
            "dave.key",
            "-traditional",
            "-out",
            "dave.pkcs1.key",
        ],
    );
    let pkcs1 = std::fs::read_to_string(d.join("dave.pkcs1.key")).unwrap();
    assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));

    let upstream = DemoUpstream::echo("ssh").unwrap();
    let (proc, web) = serve(d, &upstream, "[ops]");
    assert!(reaches(web, d, "carol.crt", "carol.key"), "{}", proc.logs());
    // dave is well signed but not in O=ops: refused inside the handshake.
    assert!(!reaches(web, d, "dave.crt", "dave.pkcs1.key"));
    assert!(proc.stderr().contains("not_allowed"), "{}", proc.logs());
}

#[test]
fn switchyard_ca_output_verifies_with_openssl_and_serves() {
    let tmp = TempDir::new("switchyard-ca").unwrap();
    let d = tmp.path();
    let ca = |args: &[&str]| {
        let out = Command::new(switchyard_bin().unwrap())
            .arg("ca")
            .args(args)
            .arg("--dir")
            .arg(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ca(&["init"]);
    ca(&[
        "issue",
        "--name",
        "proxy",
        "--dns",
        "proxy.example.test",
        "--ip",
        "127.0.0.1",
    ]);
    ca(&["issue", "--name", "erin", "--org", "sre", "--ttl", "1h"]);
    for name in ["proxy", "erin"] {
        openssl(d, &["verify", "-CAfile", "ca.crt", &format!("{name}.crt")]);
    }
    let text = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "extendedKeyUsage",
            "-in",
        ])
        .arg(d.join("erin.crt"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("CN = erin") && text.contains("O = sre"),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    // Refusing to overwrite an existing CA.
    let again = Command::new(switchyard_bin().unwrap())
        .args(["ca", "init", "--dir"])
        .arg(d)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let upstream = DemoUpstream::echo("ssh").unwrap();
    let (proc, web) = serve(d, &upstream, "[erin]");
    assert!(reaches(web, d, "erin.crt", "erin.key"), "{}", proc.logs());
}
