//! [`relay_records`] between a real rustls client and an upstream socket on loopback: the
//! proxy's side accepts, ends TLS in rustls, takes the session out (`hand_over`) and
//! relays.

use super::*;
use crate::io::ktls::{hand_over, HandOver};
use crate::io::records::session::tests::{configs, suites};
use crate::io::Prefixed;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Client = tokio_rustls::client::TlsStream<TcpStream>;

/// A client through a one-connection proxy to `upstream` (the upstream's end of it).
async fn through_the_proxy(suite: usize) -> (Client, TcpStream, JoinHandle<RelayStats>) {
    let (client_config, server_config) = configs(suites()[suite]);
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (front_addr, back_addr) = (front.local_addr().unwrap(), back.local_addr().unwrap());
    let proxy = tokio::spawn(async move {
        let (socket, _) = front.accept().await.unwrap();
        let replay = Prefixed::record_exact(Vec::new(), socket);
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
        let tls = acceptor.accept(replay).await.unwrap();
        let HandOver::Proxy(handed, session) = hand_over(Box::new(tls), Ok).await.unwrap() else {
            panic!("the session stayed in rustls");
        };
        let mut upstream = TcpStream::connect(back_addr).await.unwrap();
        upstream.write_all(&handed.early).await.unwrap();
        if handed.client_closed {
            upstream.shutdown().await.unwrap();
        }
        let closed = handed.client_closed;
        let mut stats = relay_records(handed.socket, upstream, session, 64 << 10, closed).await;
        stats.client_to_upstream += handed.early.len() as u64;
        stats
    });
    let connector = tokio_rustls::TlsConnector::from(client_config);
    let name = ServerName::try_from("localhost").unwrap();
    let socket = TcpStream::connect(front_addr).await.unwrap();
    let client = connector.connect(name, socket).await.unwrap();
    let (upstream, _) = back.accept().await.unwrap();
    (client, upstream, proxy)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

#[tokio::test]
async fn bulk_both_ways_arrives_byte_exact_and_each_end_is_passed_on() {
    for suite in 0..3 {
        let (client, mut upstream, proxy) = through_the_proxy(suite).await;
        let (up, down) = (pattern(5 << 20, 1), pattern(3 << 20, 2));
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let sent_up = up.clone();
        let writer = tokio::spawn(async move {
            client_w.write_all(&sent_up).await.unwrap();
            // close_notify, then the TCP half-close.
            client_w.shutdown().await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client_r.read_to_end(&mut got).await.unwrap();
            got
        });
        let (mut up_r, mut up_w) = upstream.split();
        let mut got_up = Vec::new();
        let (read, wrote) = tokio::join!(up_r.read_to_end(&mut got_up), async {
            up_w.write_all(&down).await?;
            up_w.shutdown().await
        });
        read.unwrap();
        wrote.unwrap();
        writer.await.unwrap();
        assert!(got_up == up, "suite {suite}: client → upstream differs");
        assert!(
            reader.await.unwrap() == down,
            "suite {suite}: upstream → client differs"
        );
        let stats = proxy.await.unwrap();
        assert!(stats.error.is_none(), "{:?}", stats.error);
        assert_eq!(
            (stats.client_to_upstream, stats.upstream_to_client),
            (up.len() as u64, down.len() as u64)
        );
    }
}

#[tokio::test]
async fn the_upstream_answers_after_the_clients_close_notify() {
    let (mut client, mut upstream, proxy) = through_the_proxy(0).await;
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    upstream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"request");
    upstream
        .write_all(b"response after half-close")
        .await
        .unwrap();
    upstream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"response after half-close");
    assert!(proxy.await.unwrap().error.is_none());
}

#[tokio::test]
async fn a_key_update_ends_the_relay_with_its_reason_after_the_data_before_it() {
    let (mut client, mut upstream, proxy) = through_the_proxy(0).await;
    client.write_all(b"before").await.unwrap();
    client.flush().await.unwrap();
    let mut before = [0u8; 6];
    upstream.read_exact(&mut before).await.unwrap();
    assert_eq!(&before, b"before");
    client.get_mut().1.refresh_traffic_keys().unwrap();
    client.write_all(b"after").await.unwrap();
    client.flush().await.unwrap();
    let stats = proxy.await.unwrap();
    let error = stats.error.expect("the relay ends in an error").to_string();
    assert!(error.contains("KeyUpdate"), "{error}");
    assert_eq!(stats.client_to_upstream, 6);
    // The upstream never sees bytes sent under keys the relay does not have.
    let mut rest = Vec::new();
    let _ = upstream.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{rest:?}");
}
