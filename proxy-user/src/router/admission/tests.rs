use super::*;

#[test]
fn budgets_count_per_class_and_per_source_and_give_back_on_drop() {
    let text = "proxy_service: {web_listen_addr: '127.0.0.1:0'}\n\
        limits: {classes: {ssh: {per_source: 2, max_connections: 3, max_handshakes: 1}}}\n";
    let config = Config::parse(text, std::path::Path::new(".")).unwrap();
    let a = Arc::new(Admission::new(&config, Arc::new(Metrics::new())));
    let one: IpAddr = "10.0.0.1".parse().unwrap();
    let two: IpAddr = "10.0.0.2".parse().unwrap();
    let x = a.admit("ssh", one).unwrap();
    let _y = a.admit("ssh", one).unwrap();
    assert_eq!(a.admit("ssh", one).err(), Some(Refusal::PerSource));
    let _z = a.admit("ssh", two).unwrap();
    assert_eq!(a.admit("ssh", two).err(), Some(Refusal::MaxConnections));
    // Other classes are untouched.
    assert!(a.admit("postgres", one).is_ok());
    let h = x.handshake().unwrap();
    assert_eq!(x.handshake().err(), Some(Refusal::MaxHandshakes));
    drop(h);
    assert!(x.handshake().is_ok());
    drop(x);
    assert!(
        a.admit("ssh", one).is_ok(),
        "a dropped connection gives its place back"
    );
    // IPv6 sources are counted by /64.
    let v6a: IpAddr = "2001:db8::1".parse().unwrap();
    let v6b: IpAddr = "2001:db8::2".parse().unwrap();
    assert_eq!(source_key(v6a), source_key(v6b));
}

#[test]
fn a_rate_refuses_beyond_its_burst_and_a_reload_takes_new_budgets() {
    let parse = |classes: &str| {
        let text = format!(
            "proxy_service: {{web_listen_addr: '127.0.0.1:0'}}\nlimits: {{classes: {classes}}}\n"
        );
        Config::parse(&text, std::path::Path::new(".")).unwrap()
    };
    let config = parse("{ssh: {rate: 0.001, burst: 3, max_handshakes: 1}}");
    let a = Arc::new(Admission::new(&config, Arc::new(Metrics::new())));
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let held: Vec<_> = (0..3).map(|_| a.admit("ssh", ip).unwrap()).collect();
    assert_eq!(a.admit("ssh", ip).err(), Some(Refusal::Rate));
    let h = held[0].handshake().unwrap();
    assert!(held[1].handshake().is_err());
    // SIGHUP: a new rate refills the bucket, more handshakes are allowed at once.
    a.reconfigure(&parse("{ssh: {rate: 1000, max_handshakes: 3}}"));
    assert!(a.admit("ssh", ip).is_ok());
    let _h2 = held[1].handshake().unwrap();
    let _h3 = held[2].handshake().unwrap();
    drop(h);
    a.reconfigure(&parse("{ssh: {max_handshakes: 1}}"));
    let in_flight = [_h2, _h3];
    assert!(held[0].handshake().is_err(), "withdrawn while others run");
    drop(in_flight);
}

#[test]
fn a_per_source_rate_refuses_the_flooding_source_and_nobody_else() {
    let text = "proxy_service: {web_listen_addr: '127.0.0.1:0'}\n\
        limits: {classes: {unclassified: {per_source_rate: 0.001, per_source_burst: 3}}}\n";
    let config = Config::parse(text, std::path::Path::new(".")).unwrap();
    let metrics = Arc::new(Metrics::new());
    let a = Arc::new(Admission::new(&config, metrics.clone()));
    let flood: IpAddr = "10.0.0.2".parse().unwrap();
    let other: IpAddr = "10.0.0.1".parse().unwrap();
    // Short-lived connections: each gives its place back, the source's tokens stay spent.
    for _ in 0..3 {
        drop(a.admit(UNCLASSIFIED, flood).unwrap());
    }
    assert_eq!(
        a.admit(UNCLASSIFIED, flood).err(),
        Some(Refusal::PerSourceRate)
    );
    assert!(a.admit(UNCLASSIFIED, other).is_ok());
    // Another /64 of IPv6 is another source; the same /64 is the same one.
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    for _ in 0..3 {
        drop(a.admit(UNCLASSIFIED, v6).unwrap());
    }
    let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
    assert_eq!(
        a.admit(UNCLASSIFIED, same_64).err(),
        Some(Refusal::PerSourceRate)
    );
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"switchyard_class_refused_total{class="unclassified",reason="per_source_rate"} 2"#
        ),
        "{text}"
    );
    // Other classes have no per-source rate by default.
    for _ in 0..10 {
        drop(a.admit("ssh", flood).unwrap());
    }
}

#[test]
fn per_source_rate_keys_are_checked() {
    let parse = |classes: &str| {
        let text = format!(
            "proxy_service: {{web_listen_addr: '127.0.0.1:0'}}\nlimits: {{classes: {classes}}}\n"
        );
        Config::parse(&text, std::path::Path::new(".")).map_err(|e| e.to_string())
    };
    let e = parse("{ssh: {per_source_rate: 0}}").unwrap_err();
    assert!(e.contains("limits.classes.ssh.per_source_rate"), "{e}");
    let e = parse("{ssh: {per_source_burst: 5}}").unwrap_err();
    assert!(e.contains("needs per_source_rate"), "{e}");
    let e = parse("{ssh: {per_source_rate: 5, per_source_burst: 0}}").unwrap_err();
    assert!(e.contains("per_source_burst"), "{e}");
    assert!(parse("{ssh: {per_source_rate: 5}}").is_ok());
}
