//! Why an ACME attempt failed, told apart for the one line it gets and the `result` label
//! it counts under: the CA down ([`Unreachable`] from the client), a URL that is no
//! directory, a name the CA cannot resolve, a challenge the CA could not complete, anything
//! else the CA refused, or a local fault.

use super::client::{NotADirectory, Unreachable};
use instant_acme::Problem;

/// Why an attempt failed: one kind per line, one `result` label per kind.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error("ACME CA unreachable: {0}")]
    CaUnreachable(String),
    #[error("ACME directory misconfigured: {uri} is not an ACME directory ({detail}); check proxy_service.acme.uri")]
    Directory { uri: String, detail: String },
    #[error("ACME name not resolvable: the CA cannot resolve {name} ({detail}); its DNS must point at this proxy")]
    NameUnresolvable { name: String, detail: String },
    #[error("ACME challenge failed for {name}: {detail} (the CA must reach this proxy's port with TLS-ALPN-01 for the name)")]
    ChallengeFailed { name: String, detail: String },
    #[error("ACME CA refused: {0}")]
    Refused(String),
    #[error("ACME: {0}")]
    Local(String),
}

impl Failure {
    pub(super) fn result(&self) -> &'static str {
        match self {
            Failure::CaUnreachable(_) => "ca_unreachable",
            Failure::Directory { .. } => "directory",
            Failure::NameUnresolvable { .. } => "name_unresolvable",
            Failure::ChallengeFailed { .. } => "challenge_failed",
            Failure::Refused(_) => "refused",
            Failure::Local(_) => "local",
        }
    }

    /// `e`, from a request made while `doing`; `uri` is the directory.
    pub(super) fn acme(doing: &str, uri: &str, e: instant_acme::Error) -> Failure {
        use instant_acme::Error as E;
        match e {
            E::Other(inner) if inner.is::<Unreachable>() => {
                let mut line = format!("{doing}: {inner}");
                if line.contains("certificate") {
                    line += " (does proxy_service.acme.ca_file hold the CA of the directory's certificate?)";
                }
                Failure::CaUnreachable(line)
            }
            E::Other(inner) if inner.is::<NotADirectory>() => Failure::Directory {
                uri: uri.to_owned(),
                detail: inner.to_string(),
            },
            E::Json(j) if doing == OPENING => Failure::Directory {
                uri: uri.to_owned(),
                detail: format!("its answer is not the directory's JSON: {j}"),
            },
            E::Http(_) | E::InvalidUri(_) => Failure::Directory {
                uri: uri.to_owned(),
                detail: e.to_string(),
            },
            E::Api(p) => Failure::problem(None, &p, doing),
            other => Failure::Refused(format!("{doing}: {other}")),
        }
    }

    /// What the CA said about `name` (or the order).
    pub(super) fn problem(name: Option<&str>, p: &Problem, doing: &str) -> Failure {
        let kind = p.r#type.as_deref().unwrap_or("");
        let kind = kind.rsplit(':').next().unwrap_or(kind);
        let detail = p.detail.clone().unwrap_or_else(|| kind.to_owned());
        let name = name.unwrap_or("the order").to_owned();
        // Boulder (Let's Encrypt) says `dns`; Pebble says `malformed` with "Could not
        // resolve"; both mean the CA's lookup of the name failed.
        let lookup = ["resolve", "NXDOMAIN", "SERVFAIL", "no such host"];
        let dns = kind == "dns" || lookup.iter().any(|w| detail.contains(w));
        match kind {
            _ if dns => Failure::NameUnresolvable { name, detail },
            "connection" | "tls" | "incorrectResponse" | "unauthorized" | "caa" => {
                Failure::ChallengeFailed { name, detail }
            }
            _ => Failure::Refused(format!("{doing}: {kind}: {detail}")),
        }
    }
}

/// What [`Failure::acme`] is told while the account is being opened (the first request).
pub(super) const OPENING: &str = "opening the account";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_told_apart() {
        let p = |t: &str| Problem {
            r#type: Some(format!("urn:ietf:params:acme:error:{t}")),
            detail: Some("x".into()),
            status: Some(400),
            subproblems: vec![],
        };
        let kind = |t| Failure::problem(Some("a.test"), &p(t), "validating").result();
        assert_eq!(kind("dns"), "name_unresolvable");
        assert_eq!(kind("connection"), "challenge_failed");
        assert_eq!(kind("unauthorized"), "challenge_failed");
        assert_eq!(kind("rateLimited"), "refused");
        let pebble = Problem {
            detail: Some("Could not resolve URL \"a.test\"".into()),
            ..p("malformed")
        };
        let failure = Failure::problem(Some("a.test"), &pebble, "validating");
        assert_eq!(failure.result(), "name_unresolvable");
    }
}
