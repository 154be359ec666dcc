use super::*;
use crate::io::tunnel::mux::{self, Limits, Mode};
use crate::io::tunnel::Kind;
use crate::router::metrics::Metrics;

fn opener() -> Opener {
    let (a, _b) = tokio::io::duplex(1024);
    let limits = Limits {
        max_streams: 4,
        window_bytes: 0,
    };
    mux::start(a, Mode::Server, limits, 1).opener
}

fn svc(kind: Kind, name: &str) -> Service {
    Service {
        kind,
        name: name.into(),
    }
}

fn grant(identity: &str, serve: &[&str]) -> Grant {
    Grant {
        identity: identity.into(),
        rule: 0,
        serve: serve
            .iter()
            .map(|p| ServePattern::parse(p).unwrap())
            .collect(),
        allow: vec!["devs".into()],
    }
}

#[tokio::test]
async fn admits_what_the_identity_may_serve_and_says_why_for_the_rest() {
    let r = Registry::new(Arc::new(Metrics::new()));
    let services = [
        svc(Kind::Ssh, "node1"),
        svc(Kind::Tcp, "echo"),
        svc(Kind::Ssh, "static1"),
        svc(Kind::Ssh, "node1"),
    ];
    let fixed = BTreeSet::from([svc(Kind::Ssh, "static1")]);
    let offer = Offer {
        agent_id: "a1",
        tunnels: 2,
        services: &services,
    };
    let g = grant("edge", &["ssh:*"]);
    let admit = r.admit(&offer, &g, &fixed, 8, Tunnel::new(1, opener(), "p".into()));
    let Ok(Admit::Welcome { accepted, refused }) = admit else {
        panic!("{admit:?}")
    };
    assert_eq!(accepted, [svc(Kind::Ssh, "node1")]);
    let reasons: Vec<_> = refused.iter().map(|r| r.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("may not serve tcp:echo")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("static configuration")),
        "{reasons:?}"
    );
    assert!(r.serves(&svc(Kind::Ssh, "node1")));
    assert!(!r.serves(&svc(Kind::Tcp, "echo")));

    // The second tunnel of the same agent joins; a third is more than it asked for.
    let t2 = r.admit(&offer, &g, &fixed, 8, Tunnel::new(2, opener(), "p".into()));
    assert!(matches!(t2, Ok(Admit::Welcome { .. })));
    let t3 = r.admit(&offer, &g, &fixed, 8, Tunnel::new(3, opener(), "p".into()));
    assert_eq!(t3, Ok(Admit::Full));

    // Another identity cannot take the name; the same id with another identity is refused.
    let other = Offer {
        agent_id: "a2",
        tunnels: 1,
        services: &services[..1],
    };
    let admit = r.admit(
        &other,
        &grant("rogue", &["ssh:*"]),
        &fixed,
        8,
        Tunnel::new(4, opener(), "q".into()),
    );
    let Ok(Admit::Welcome { accepted, refused }) = admit else {
        panic!()
    };
    assert!(accepted.is_empty());
    assert!(refused[0]
        .reason
        .contains("already served by an agent with identity edge"));
    let hijack = r.admit(
        &offer,
        &grant("rogue", &["ssh:*"]),
        &fixed,
        8,
        Tunnel::new(5, opener(), "q".into()),
    );
    assert!(hijack
        .unwrap_err()
        .contains("already connected with identity edge"));

    // Picking prefers the least busy tunnel that is not draining.
    let (t, allow) = r.pick(&svc(Kind::Ssh, "node1")).unwrap();
    assert_eq!(allow, ["devs"]);
    t.streams.fetch_add(5, Ordering::Relaxed);
    let (u, _) = r.pick(&svc(Kind::Ssh, "node1")).unwrap();
    assert_ne!(t.id, u.id);
    u.draining.store(true, Ordering::Relaxed);
    assert_eq!(r.pick(&svc(Kind::Ssh, "node1")).unwrap().0.id, t.id);

    // The services go with the agent's last tunnel.
    r.remove("a1", 1);
    assert!(r.serves(&svc(Kind::Ssh, "node1")));
    r.remove("a1", 2);
    assert!(!r.serves(&svc(Kind::Ssh, "node1")));
    assert!(r.pick(&svc(Kind::Ssh, "node1")).is_none());
    let json = r.snapshot("p1", &["p1".into()]);
    assert_eq!(json["agents"].as_array().unwrap().len(), 1, "{json}");
}
