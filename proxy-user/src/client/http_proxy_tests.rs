//! `HTTPS_PROXY` tests on values (never the process environment): proxy URLs, credentials,
//! `NO_PROXY` lists, refused schemes.

use super::*;

/// The proxy for `addr` with only `HTTPS_PROXY` (and `NO_PROXY`) set.
fn proxy(https: &str, no: &str, addr: &str) -> Result<Option<HttpProxy>, ProxyError> {
    ProxyEnv::new(https, "", no).for_addr(addr)
}

/// The forward proxy's address for `https` (set, no `NO_PROXY`).
fn addr_of(https: &str) -> String {
    proxy(https, "", "proxy.example.com:443")
        .unwrap()
        .expect("a proxy")
        .addr
}

#[test]
fn proxy_urls() {
    assert_eq!(
        proxy("http://squid.internal:3128/", "", "p:443").unwrap(),
        Some(HttpProxy {
            addr: "squid.internal:3128".into(),
            auth: None,
            var: "HTTPS_PROXY",
        })
    );
    assert_eq!(addr_of("10.0.0.1:8080"), "10.0.0.1:8080");
    assert_eq!(addr_of("http://proxy"), "proxy:80");
    assert_eq!(addr_of("proxy"), "proxy:80");
    assert_eq!(addr_of("http://[::1]"), "[::1]:80");
    assert_eq!(addr_of("http://[::1]:3128"), "[::1]:3128");
    assert_eq!(addr_of(" HTTP://Proxy:3128 "), "Proxy:3128");
    let p = proxy("http://alice:s3cret@proxy:3128", "", "p:443")
        .unwrap()
        .unwrap();
    assert_eq!(p.addr, "proxy:3128");
    assert_eq!(p.auth.as_deref(), Some("Basic YWxpY2U6czNjcmV0"));
    // Unset: no proxy.
    assert_eq!(proxy("", "", "p:443").unwrap(), None);
}

#[test]
fn percent_encoded_credentials_are_decoded() {
    let p = proxy("http://alice:p%40ss@proxy:3128", "", "p:443")
        .unwrap()
        .unwrap();
    assert_eq!(p.addr, "proxy:3128");
    // base64("alice:p@ss")
    assert_eq!(p.auth.as_deref(), Some("Basic YWxpY2U6cEBzcw=="));
}

#[test]
fn all_proxy_applies_without_https_proxy() {
    let env = ProxyEnv::new("", "http://all:3128", "");
    let p = env.for_addr("p:443").unwrap().unwrap();
    assert_eq!((p.addr.as_str(), p.var), ("all:3128", "ALL_PROXY"));
    let env = ProxyEnv::new("http://https:3128", "http://all:3128", "");
    assert_eq!(env.for_addr("p:443").unwrap().unwrap().addr, "https:3128");
}

#[test]
fn no_proxy_lists() {
    let exempt = |no: &str, addr: &str| proxy("http://fwd:3128", no, addr).unwrap().is_none();
    assert!(exempt("*", "anything:443"));
    assert!(exempt("localhost,127.0.0.1", "localhost:3080"));
    assert!(exempt("localhost,127.0.0.1", "127.0.0.1:3080"));
    assert!(exempt("proxy.example.com", "proxy.example.com:443"));
    assert!(exempt("example.com", "proxy.example.com:443"));
    assert!(exempt(".example.com", "proxy.example.com:443"));
    assert!(exempt("*.example.com", "Proxy.Example.com:443"));
    assert!(exempt("proxy.example.com:443", "proxy.example.com:443"));
    assert!(exempt("::1", "[::1]:443"));
    assert!(exempt("[::1]", "[::1]:443"));
    assert!(exempt("10.0.0.0/8", "10.1.2.3:443"));
    assert!(exempt(" other.org , 10.1.2.3 ", "10.1.2.3:443"));
    assert!(!exempt("example.com", "notexample.com:443"));
    assert!(!exempt("10.0.0.0/8", "11.1.2.3:443"));
    assert!(!exempt("127.0.0.1", "localhost:443"));
    assert!(!exempt("", "localhost:443"));
}

#[test]
fn other_schemes_and_non_urls_are_refused_naming_the_variable() {
    for (url, scheme) in [
        ("https://proxy:443", "https"),
        ("socks5://proxy:1080", "socks5"),
    ] {
        let e = proxy(url, "", "p:443").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("HTTPS_PROXY: only http:// proxies are supported (not {scheme}://)")
        );
    }
    let e = ProxyEnv::new("", "socks5h://proxy:1080", "")
        .for_addr("p:443")
        .unwrap_err();
    assert!(e.to_string().starts_with("ALL_PROXY: only http://"), "{e}");
    for url in ["http://", "http://:3128", "ftp//x y"] {
        let e = proxy(url, "", "p:443").unwrap_err();
        assert!(
            e.to_string().starts_with("HTTPS_PROXY is not a proxy URL"),
            "{url}: {e}"
        );
    }
    // NO_PROXY still exempts its hosts from a proxy that cannot be used.
    assert_eq!(proxy("socks5://proxy:1080", "p", "p:443").unwrap(), None);
}
