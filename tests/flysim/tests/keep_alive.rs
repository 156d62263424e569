//! Kept-alive connections to Machines that close under a request.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{config, full_body, send};
use flysim::{FlySim, Instance, Launch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one request (head and `Content-Length` body); false at end of stream.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while raw.len() < end + 4 + len {
                let n = stream.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return false;
                }
                raw.extend_from_slice(&buf[..n]);
            }
            return true;
        }
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return false;
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// A Machine that answers the first request of every connection (keeping it
/// alive) and closes the connection, unanswered, on the second: the race of
/// a server closing a kept-alive connection just as the proxy reuses it.
/// Counts the requests it answered.
fn closing_app(answered: Arc<AtomicUsize>) -> Launch {
    Launch::in_process(move |env: flysim::MachineEnv| {
        let answered = answered.clone();
        async move {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let server = tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let answered = answered.clone();
                    let body = format!("machine={}", env.machine_id);
                    tokio::spawn(async move {
                        if !read_request(&mut stream).await {
                            return;
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(resp.as_bytes()).await;
                        // The second request is read, then the connection dropped.
                        let _ = read_request(&mut stream).await;
                    });
                }
            });
            Ok(Instance::new(addr, move || server.abort()))
        }
    })
}

async fn request(sim: &FlySim, method: &str) -> u16 {
    let req = http::Request::builder()
        .method(method)
        .uri(sim.url())
        .body(full_body(Bytes::from_static(b"payload")))
        .unwrap();
    send(req).await.status.as_u16()
}

#[tokio::test]
async fn idempotent_requests_are_retried_when_a_kept_alive_connection_closes() {
    let answered = Arc::new(AtomicUsize::new(0));
    let sim = FlySim::start(config().machines(1), closing_app(answered.clone()))
        .await
        .unwrap();
    let id = sim.machine_ids()[0].clone();
    // The first request opens a connection that the proxy keeps.
    assert_eq!(request(&sim, "GET").await, 200);
    // The second reuses it, the Machine closes it: sent again on a new one.
    assert_eq!(request(&sim, "GET").await, 200);
    // The same for any idempotent method.
    assert_eq!(request(&sim, "PUT").await, 200);
    assert_eq!(request(&sim, "DELETE").await, 200);
    assert_eq!(answered.load(Ordering::SeqCst), 4);
    assert_eq!(sim.machine(&id).unwrap().retries, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_post_is_never_sent_twice() {
    let answered = Arc::new(AtomicUsize::new(0));
    let sim = FlySim::start(config().machines(1), closing_app(answered.clone()))
        .await
        .unwrap();
    let id = sim.machine_ids()[0].clone();
    assert_eq!(request(&sim, "POST").await, 200);
    // The Machine read it and closed the connection: it may have acted on it.
    assert_eq!(request(&sim, "POST").await, 502);
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    assert_eq!(sim.machine(&id).unwrap().retries, 0);
    sim.shutdown().await;
}

/// A Machine that drops its first connection unanswered (as when a request
/// reaches a listener that is closing) and answers on the others.
fn drops_first_connection(answered: Arc<AtomicUsize>) -> Launch {
    Launch::in_process(move |_env: flysim::MachineEnv| {
        let answered = answered.clone();
        async move {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let server = tokio::spawn(async move {
                let mut first = true;
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    if !read_request(&mut stream).await {
                        continue;
                    }
                    if std::mem::take(&mut first) {
                        continue;
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
            Ok(Instance::new(addr, move || server.abort()))
        }
    })
}

#[tokio::test]
async fn an_upgrade_request_reset_before_an_answer_is_sent_again() {
    let answered = Arc::new(AtomicUsize::new(0));
    let sim = FlySim::start(
        config().machines(1),
        drops_first_connection(answered.clone()),
    )
    .await
    .unwrap();
    let id = sim.machine_ids()[0].clone();
    // Upgrade requests go on a connection of their own, never a pooled one.
    let req = http::Request::get(sim.url())
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(full_body(Bytes::new()))
        .unwrap();
    let resp = send(req).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    assert_eq!(sim.machine(&id).unwrap().retries, 1);
    sim.shutdown().await;
}
