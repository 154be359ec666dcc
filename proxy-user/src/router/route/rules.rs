//! The `routes:` matchers: an SNI (exact or `*.` one label) and/or an ALPN, each pointing
//! at its entry; the most specific match wins (exact SNI over wildcard over none, an ALPN
//! over none), the first in file order among equals.

use super::Table;
use crate::protocol::PING_SUFFIX;

/// A `routes:` entry's matcher, pointing at its [`RouteEntry`].
#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub(super) sni: Option<SniMatch>,
    pub(super) alpn: Option<String>,
    pub(super) entry: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SniMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Wildcard(String),
}

impl SniMatch {
    pub(super) fn parse(s: &str) -> SniMatch {
        let s = s.to_ascii_lowercase();
        match s.strip_prefix('*') {
            Some(suffix) => SniMatch::Wildcard(suffix.to_owned()),
            None => SniMatch::Exact(s),
        }
    }

    /// Specificity of a match (higher wins), or `None`.
    fn matches(&self, sni: &str) -> Option<u8> {
        match self {
            SniMatch::Exact(name) => (name == sni).then_some(2),
            SniMatch::Wildcard(suffix) => sni
                .strip_suffix(suffix.as_str())
                .filter(|label| !label.is_empty() && !label.contains('.'))
                .map(|_| 1),
        }
    }
}

impl<T> Table<T> {
    /// The most specific matching `routes:` entry, first in file order among equals.
    pub(super) fn match_rules(&self, sni: &str, alpn: &[String]) -> Option<usize> {
        let mut best: Option<(u8, usize)> = None;
        for rule in &self.rules {
            let sni_score = match &rule.sni {
                Some(m) => match m.matches(sni) {
                    Some(s) => s,
                    None => continue,
                },
                None => 0,
            };
            let alpn_score = match &rule.alpn {
                Some(a)
                    if alpn
                        .iter()
                        .any(|p| p == a || p.strip_suffix(PING_SUFFIX) == Some(a)) =>
                {
                    1
                }
                Some(_) => continue,
                None => 0,
            };
            let score = sni_score * 2 + alpn_score;
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, rule.entry));
            }
        }
        best.map(|(_, e)| e)
    }
}
