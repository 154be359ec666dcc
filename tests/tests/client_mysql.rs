//! The `mysql` client (Debian's MariaDB packages) through `switchyard proxy db --protocol
//! mysql` and `db connect` → proxy (ALPN teleport-mysql) → a real MariaDB whose greeting
//! announces TLS. The local proxy clears that capability, so clients with TLS disabled or
//! left at their default both run a query.

use std::time::Duration;

use switchyard_tests::local_proxy::{client_args, switchyard_cmd, LocalProxy};
use switchyard_tests::mariadb::{mysql, MariaDb};
use switchyard_tests::{run_with_timeout, ProxyConfig, Switchyard, TestPki};

const SSL_CIPHER: &str = "show session status like 'Ssl_cipher'";

#[test]
fn mysql_client_through_proxy_db_and_db_connect() {
    let pki = TestPki::new().unwrap();
    let db = MariaDb::start(&pki.server).unwrap();
    // The server itself offers TLS.
    let direct = mysql(db.addr, &["--ssl"], SSL_CIPHER).unwrap();
    assert!(
        direct.len() > "Ssl_cipher".len(),
        "no TLS directly: {direct:?}"
    );
    let proxy =
        Switchyard::start(&pki, &ProxyConfig::default().upstream("mysql", db.addr)).unwrap();

    let mut args = vec!["proxy".to_owned(), "db".into(), "--protocol=mysql".into()];
    args.extend(client_args(&pki, &proxy, "client"));
    let local = LocalProxy::start(&args).unwrap();
    for extra in [&["--skip-ssl"][..], &[]] {
        let answer = mysql(local.addr, extra, "select 6 * 7");
        assert_eq!(
            answer.as_deref().ok(),
            Some("42"),
            "{extra:?}: {answer:?}\n{}\n{}\n{}",
            local.logs(),
            proxy.log(),
            db.log()
        );
    }
    // Plaintext to the local proxy; TLS (teleport-mysql) only toward the proxy.
    assert_eq!(
        mysql(local.addr, &[], SSL_CIPHER).unwrap().trim(),
        "Ssl_cipher"
    );
    assert!(proxy.log().contains("teleport-mysql"), "{}", proxy.log());

    let mut args = vec!["db".to_owned(), "connect".into(), "--protocol=mysql".into()];
    args.extend(client_args(&pki, &proxy, "client"));
    args.extend(
        [
            "--",
            "mysql",
            "--no-defaults",
            "-u",
            "root",
            "-N",
            "-B",
            "-e",
            "select 'via db connect'",
        ]
        .map(String::from),
    );
    let out =
        run_with_timeout(switchyard_cmd(&args).unwrap(), b"", Duration::from_secs(20)).unwrap();
    assert!(out.success(), "{out:?}\n{}", proxy.log());
    assert_eq!(out.stdout.trim(), "via db connect");
}
