//! The texts among the seeds: upgrade request heads, the answers a client reads, and the
//! complete configuration example.

/// Request heads of the web route: a WebSocket upgrade, a legacy one behind a balancer,
/// one through several hops, and a plain request.
pub(super) const UPGRADE_HEADS: [(&str, &str); 4] = [
    ("websocket", "GET /webapi/connectionupgrade HTTP/1.1\r\nHost: proxy\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: alpn-ping, alpn\r\n\r\n"),
    ("legacy_xff", "GET /webapi/connectionupgrade HTTP/1.1\r\nHost: lb\r\nUpgrade: alpn-ping\r\nX-Teleport-Upgrade: alpn-ping\r\nX-Forwarded-For: 203.0.113.7:4242\r\n\r\n"),
    ("hops", "GET /webapi/connectionupgrade?x=1 HTTP/1.1\r\nUpgrade: alpn\r\nX-Forwarded-For: 198.51.100.1, 10.0.0.2\r\nX-Forwarded-For: [2001:db8::5]:443\r\n\r\n"),
    ("ping", "GET /webapi/ping HTTP/1.1\r\n\r\n"),
];

/// Answers as balancers and the proxy send them (`client/upgrade/request_tests.rs`),
/// behind the control byte: legacy `101`s with framed bytes after them, a WebSocket `101`,
/// refusals with bodies.
pub(super) const UPGRADE_ANSWERS: [(&str, &[u8]); 5] = [
    ("legacy_ping", b"\x02HTTP/1.1 101 Switching Protocols\r\nUpgrade: alpn-ping\r\nConnection: Upgrade\r\n\r\n\0\0\0\0\0\0\0\x02hi"),
    ("legacy_raw", b"\x00HTTP/1.1 101 Switching Protocols\r\nX-Teleport-Upgrade: alpn\r\n\r\n\x16\x03\x01"),
    ("websocket", b"\x21HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: alpn-ping\r\n\r\n\x89\x00"),
    ("nginx_404", b"\x60HTTP/1.1 404 Not Found\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: 52\r\n\r\n<html>\r\n<head><title>404 Not Found</title></head>"),
    ("haproxy_400", b"\x01HTTP/1.0 400 Bad Request\r\ncontent-length: 24\r\n\r\nsecond X-Forwarded-For\n"),
];

/// The complete example of docs/config.md, its files all `ca.crt`.
pub(super) const COMPLETE_CONFIG: &str = "version: v2
auth_service: {cluster_name: example, proxy_listener_mode: multiplex}
proxy_service:
  enabled: \"yes\"
  web_listen_addr: 0.0.0.0:443
  public_addr: proxy.example.com:443
  https_keypairs: [{cert_file: ca.crt, key_file: ca.crt}]
  client_ca_file: ca.crt
  proxy_protocol: \"on\"
  trusted_proxies: [10.0.0.2, 10.0.1.0/24, \"2001:db8:1::/64\"]
  trust_x_forwarded_for: hops
upstreams:
  web: 127.0.0.1:8080
  ssh: 10.0.0.5:22
  ssh_nodes: {node1: 10.0.0.11:22, db-bastion: 10.0.0.12:2222}
  tunnel: 127.0.0.1:3024
  postgres: db.internal:5432
  mysql: db.internal:3306
  mongodb: db.internal:27017
  kube: kube-api.internal:443
  auth: {example: auth.internal:3025, leaf: leaf-auth.internal:3025}
routes:
  - {name: grafana, sni: grafana.example.com, alpn: teleport-tcp, mode: terminate, upstream: 10.0.0.9:3000, allow: [alice, sre], allow_from: [192.0.2.0/24]}
  - {name: apps, sni: \"*.apps.example.com\", mode: passthrough, upstream: 10.0.0.10:443}
apps:
  - {name: metrics, public_addr: metrics.example.com, uri: http://10.0.0.9:3001, allow: [sre]}
  - {name: wiki, uri: https://10.0.0.20:8443, protocol: h2, ca_file: ca.crt}
allow_from: {postgres: [192.0.2.0/24]}
limits: {handshake_timeout: 10s, connect_timeout: 5s, drain_timeout: 30s, max_connections: 10000, max_hello_bytes: 16384}
diag_addr: 127.0.0.1:3081
";
