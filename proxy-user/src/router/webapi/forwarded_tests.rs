//! `X-Forwarded-For` judged from header values: one value, chains of trusted hops,
//! untrusted senders, malformed and oversize lists.

use super::*;
use crate::config::Net;

fn req(xff: &[&str]) -> Request {
    Request {
        method: "GET".into(),
        headers: xff
            .iter()
            .map(|v| ("x-forwarded-for".to_owned(), v.to_string()))
            .collect(),
        len: 0,
    }
}

/// 127.0.0.3 and 10.0.0.0/8 are trusted proxies.
fn trusted() -> Nets {
    Nets(
        ["127.0.0.3", "10.0.0.0/8"]
            .iter()
            .map(|s| Net::try_from(s.to_string()).unwrap())
            .collect(),
    )
}

fn judge(mode: XffMode, sender_trusted: bool, xff: &[&str]) -> Result<Forwarded, Refused> {
    let rule = Xff {
        mode,
        sender_trusted,
    };
    forwarded_for(&req(xff), rule, &trusted())
}

fn believed(s: &str) -> Forwarded {
    Forwarded::Believed(address(s).unwrap())
}

fn claimed(s: &str) -> Forwarded {
    Forwarded::Claimed(address(s).unwrap())
}

#[test]
fn one_value_from_a_trusted_sender_is_the_client() {
    use XffMode::Single;
    assert_eq!(judge(Single, true, &[]), Ok(Forwarded::None));
    assert_eq!(
        judge(Single, true, &["203.0.113.7"]),
        Ok(believed("203.0.113.7"))
    );
    assert_eq!(
        judge(Single, true, &["203.0.113.7:5555"]),
        Ok(believed("203.0.113.7:5555"))
    );
    assert_eq!(
        judge(Single, true, &["[2001:db8::1]:443"]),
        Ok(believed("[2001:db8::1]:443"))
    );
    assert_eq!(
        judge(Single, true, &["2001:db8::1"]),
        Ok(believed("2001:db8::1"))
    );
    for bad in [
        &["1.2.3.4, 203.0.113.7"][..],
        &["1.2.3.4", "203.0.113.7"],
        &["evil.example"],
        &[""],
    ] {
        let e = judge(Single, true, bad).unwrap_err();
        assert_eq!(e.status, 400, "{bad:?}: {e}");
    }
}

#[test]
fn untrusted_senders_are_never_believed_and_never_refused() {
    for mode in [XffMode::Single, XffMode::Hops] {
        assert_eq!(
            judge(mode, false, &["203.0.113.7"]),
            Ok(claimed("203.0.113.7"))
        );
        assert_eq!(judge(mode, false, &["evil.example"]), Ok(Forwarded::None));
        assert_eq!(judge(mode, false, &[]), Ok(Forwarded::None));
    }
    assert_eq!(
        judge(XffMode::Single, false, &["1.2.3.4, 203.0.113.7"]),
        Ok(Forwarded::None)
    );
    for trusted in [true, false] {
        assert_eq!(
            judge(XffMode::Off, trusted, &["203.0.113.7"]),
            Ok(Forwarded::None)
        );
    }
    let on = Xff {
        mode: XffMode::Single,
        sender_trusted: true,
    };
    assert!(on.believed());
    assert!(!Xff {
        sender_trusted: false,
        ..on
    }
    .believed());
    assert!(!Xff {
        mode: XffMode::Off,
        ..on
    }
    .believed());
}

#[test]
fn hops_take_the_rightmost_address_that_is_not_a_trusted_proxy() {
    use XffMode::Hops;
    // client → 10.0.0.9 (trusted) → 127.0.0.3 (the sender): the client is 198.51.100.4.
    assert_eq!(
        judge(Hops, true, &["198.51.100.4, 10.0.0.9"]),
        Ok(believed("198.51.100.4"))
    );
    // A spoofed value to the left of the real client is not looked at, even malformed.
    assert_eq!(
        judge(Hops, true, &["evil, 203.0.113.77, 198.51.100.4, 10.0.0.9"]),
        Ok(believed("198.51.100.4"))
    );
    // Several headers are one list, in order.
    assert_eq!(
        judge(Hops, true, &["203.0.113.77", "198.51.100.4", "10.0.0.9"]),
        Ok(believed("198.51.100.4"))
    );
    // Everyone trusted: the left-most.
    assert_eq!(
        judge(Hops, true, &["10.0.0.1, 127.0.0.3"]),
        Ok(believed("10.0.0.1"))
    );
    assert_eq!(
        judge(Hops, true, &["198.51.100.4"]),
        Ok(believed("198.51.100.4"))
    );
    assert_eq!(judge(Hops, true, &[]), Ok(Forwarded::None));
    // Untrusted sender: the same walk, only claimed.
    assert_eq!(
        judge(Hops, false, &["198.51.100.4, 10.0.0.9"]),
        Ok(claimed("198.51.100.4"))
    );
}

#[test]
fn malformed_or_oversize_chains_are_refused() {
    use XffMode::Hops;
    for bad in [
        "198.51.100.4, 10.0.0.9, nonsense",
        "198.51.100.4,, 10.0.0.9,",
        "",
    ] {
        let e = judge(Hops, true, &[bad]).unwrap_err();
        assert_eq!(e.status, 400, "{bad:?}: {e}");
        assert!(e.reason.contains("is not an address"), "{e}");
    }
    let long = vec!["10.0.0.1"; MAX_HOPS + 1].join(", ");
    let e = judge(Hops, true, &[&long]).unwrap_err();
    assert_eq!(e.status, 400);
    assert!(e.reason.contains("at most 32"), "{e}");
    let most = vec!["10.0.0.1"; MAX_HOPS].join(", ");
    assert_eq!(judge(Hops, true, &[&most]), Ok(believed("10.0.0.1")));
}
