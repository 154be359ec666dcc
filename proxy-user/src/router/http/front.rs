//! [`Front`]: the HTTP servers behind the proxy, built once per start or reload — the web
//! route's upstream and the `apps:` — and the host-name rules that pick one for a request.

use super::pool::Upstream;
use crate::config::{Config, ConfigError};
use crate::router::metrics::{HttpRoute, Metrics};
use crate::router::route::app_route;
use crate::router::trust::AllowFrom;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One HTTP app.
pub(crate) struct App {
    pub(crate) name: String,
    /// The host name it is reached by, lower-case.
    pub(crate) host: String,
    /// Whether it asks for a client certificate (so it is not served over plaintext HTTP).
    pub(crate) client_cert: bool,
    /// Its `allow_from` (over TLS checked before the handshake, by the route table).
    pub(crate) allow_from: Option<AllowFrom>,
    pub(crate) upstream: Upstream,
    /// Its requests' counters (`app:<name>`).
    pub(crate) route: Arc<HttpRoute>,
}

/// The HTTP side of the running proxy.
pub(crate) struct Front {
    /// `upstreams.web`.
    pub(crate) web: Option<Upstream>,
    apps: Vec<App>,
    /// App route name (`app:<name>`) → index.
    by_route: BTreeMap<String, usize>,
    /// Host name → index.
    by_host: BTreeMap<String, usize>,
    /// `proxy_service.public_addr` host names.
    public: Vec<String>,
    /// The counters of requests for the web route and of those for no known name.
    pub(crate) web_route: Arc<HttpRoute>,
    pub(crate) none_route: Arc<HttpRoute>,
}

/// What a request's host names.
#[derive(Clone, Copy)]
pub(crate) enum Host<'a> {
    /// The proxy itself: any host that is not an app's and not under a public address.
    Proxy,
    App(&'a App),
    /// A name under a public address (`nope.proxy.example.com`) that is no app's: the
    /// place apps are named, so a typo gets a clear 404 instead of the web route.
    Unknown,
}

impl Front {
    /// Builds the upstreams' pools from a validated configuration.
    pub(crate) fn new(config: &Config, metrics: &Metrics) -> Result<Front, ConfigError> {
        let web = match &config.upstreams.web {
            Some(w) => Some(Upstream::new(config, "upstreams.web", "web", &w.http())?),
            None => None,
        };
        let mut front = Front {
            web,
            apps: vec![],
            by_route: BTreeMap::new(),
            by_host: BTreeMap::new(),
            public: config.public_hosts(),
            web_route: metrics.http_route("web"),
            none_route: metrics.http_route("none"),
        };
        for (i, a) in config.apps.iter().enumerate() {
            let Some(host) = config.app_host(a) else {
                continue; // refused by validation
            };
            let route = app_route(&a.name);
            let upstream = Upstream::new(config, &format!("apps[{i}]"), &route, &a.upstream())?;
            let stats = metrics.http_route(&route);
            front.by_route.insert(route, front.apps.len());
            front.by_host.insert(host.clone(), front.apps.len());
            front.apps.push(App {
                name: a.name.clone(),
                host,
                client_cert: a.wants_client_cert(),
                allow_from: a
                    .allow_from
                    .as_ref()
                    .map(|n| AllowFrom::new(format!("apps[{i}].allow_from"), n)),
                upstream,
                route: stats,
            });
        }
        Ok(front)
    }

    /// The app a route name (`app:<name>`) belongs to.
    pub(crate) fn app_of_route(&self, route: &str) -> Option<&App> {
        self.by_route.get(route).map(|&i| &self.apps[i])
    }

    /// What `host` (lower-case, no port) names.
    pub(crate) fn host(&self, host: Option<&str>) -> Host<'_> {
        let Some(host) = host else {
            return Host::Proxy;
        };
        if let Some(&i) = self.by_host.get(host) {
            return Host::App(&self.apps[i]);
        }
        let under_public = self.public.iter().any(|p| {
            host.strip_suffix(p.as_str())
                .is_some_and(|l| l.ends_with('.'))
        });
        if under_public {
            Host::Unknown
        } else {
            Host::Proxy
        }
    }

    /// The name an agent's HTTP app would have for `host`: its first label, when the
    /// rest is a public address (`grafana.proxy.example.com` → `grafana`).
    pub(crate) fn agent_name<'h>(&self, host: &'h str) -> Option<&'h str> {
        let (label, rest) = host.split_once('.')?;
        self.public.iter().any(|p| p == rest).then_some(label)
    }

    /// The apps' host names, for messages.
    pub(crate) fn app_hosts(&self) -> impl Iterator<Item = &str> {
        self.apps.iter().map(|a| a.host.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn front(public: &str) -> Front {
        let text = format!(
            "proxy_service: {{web_listen_addr: '127.0.0.1:0'{public}}}\n\
             upstreams: {{web: 'web:80'}}\n\
             apps: [{{name: docs, public_addr: docs.example.com, uri: 'http://docs:80'}}]\n"
        );
        let config = Config::parse(&text, Path::new(".")).unwrap();
        Front::new(&config, &Metrics::new()).unwrap()
    }

    fn named(f: &Front, host: Option<&str>) -> &'static str {
        match f.host(host) {
            Host::Proxy => "proxy",
            Host::App(a) if a.name == "docs" => "docs",
            Host::App(_) => "another app",
            Host::Unknown => "unknown",
        }
    }

    #[test]
    fn a_host_is_an_app_the_proxy_or_a_name_under_a_public_address_that_is_neither() {
        let f = front(", public_addr: ['proxy.example.com:443', 'alt.example.net:443']");
        assert_eq!(named(&f, Some("docs.example.com")), "docs");
        for proxy in [None, Some("proxy.example.com"), Some("alt.example.net")] {
            assert_eq!(named(&f, proxy), "proxy", "{proxy:?}");
        }
        for other in [
            "127.0.0.1",
            "[::1]",
            "localhost",
            "example.com",
            "xproxy.example.com",
        ] {
            assert_eq!(named(&f, Some(other)), "proxy", "{other}");
        }
        for unknown in ["nope.proxy.example.com", "a.b.alt.example.net"] {
            assert_eq!(named(&f, Some(unknown)), "unknown", "{unknown}");
        }
        assert!(f.app_of_route("app:docs").is_some());
        assert!(f.app_of_route("web").is_none());
        let without_public = front("");
        assert_eq!(
            named(&without_public, Some("nope.proxy.example.com")),
            "proxy"
        );
    }
}
