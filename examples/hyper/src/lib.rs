//! The sticky app contract (DESIGN.md) served with plain hyper: no tower, no
//! framework, `sticky-core` called by hand.
//!
//! Its port speaks HTTP/1.1 and h2c with prior knowledge (hyper-util's
//! `auto::Builder`; `http1::Builder` would be HTTP/1.1 only), so it runs
//! behind Fly's `h2_backend = true` too; WebSocket upgrades stay HTTP/1.1.
//!
//! [`respond`] is the whole integration: it asks [`Sticky::decide`] and maps
//! the two arms of [`Decision::into_action`](sticky_core::Decision::into_action)
//! itself. The routes are the same as every example's:
//!
//! - `GET /` answers `machine=<id> handled=<n>`, where `n` counts handler
//!   runs on this Machine (every route but `/health` and `/metrics`);
//! - `GET /health` answers `ok` and is never sticky;
//! - `GET /metrics` answers the engine's decision counters in Prometheus
//!   text, and is never sticky (excluded like `/health`, not counted);
//! - `POST /upload` reads the whole body and answers `machine=<id> bytes=<len>`;
//! - `GET /ws` echoes each text message as `<id>:<message>`;
//! - `GET /api/tenant` answers `machine=<id> tenant=<value>`, pinned by key
//!   affinity on the `x-tenant-id` header (live set: `STICKY_PEERS`, or
//!   Fly's internal DNS, see `sticky-peers`);
//! - `GET /rooms/<room>` answers `machine=<id> room=<room>`, pinned by key
//!   affinity on the path segment, its replays cacheable by path;
//! - `GET /app` answers the browser page shared by every example
//!   (`examples/app.html`), sticky like `/`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sticky_core::{
    Action, ConfigError, Env, KeySource, MetricsSnapshot, ReplayCache, Source, Sticky,
};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key};

/// The browser page of `GET /app`, the same in every example.
const APP_PAGE: &str = include_str!("../../app.html");

/// The response type of every route: a whole body, or an empty one.
pub type Res = Response<Full<Bytes>>;

/// The engine with the contract's settings: defaults, `/health` and `/metrics` excluded,
/// tenants (`x-tenant-id`) and rooms (`/rooms/<room>`) pinned by key
/// affinity before the cookie, replays kept cacheable for the `replay_cache`
/// rule of `examples/fly.toml`, and a room's replays naming its path for
/// Fly's cache (`fly-replay-cache: /rooms/<room>/*`, 60 s).
pub fn sticky(env: Env) -> Result<Sticky, ConfigError> {
    Sticky::builder()
        .exclude(["/health", "/metrics"])
        .sources([Source::Key, Source::Cookie, Source::Query])
        .key_source(KeySource::Header("x-tenant-id".into()))
        .key_source(KeySource::PathSegment("/rooms/".into()))
        .replay_cache(ReplayCache::Path {
            ttl: Duration::from_secs(60),
        })
        .build(env)
}

/// The contract app's state: this Machine's ID and its handler-run count.
#[derive(Clone, Debug)]
pub struct App {
    machine: Arc<str>,
    handled: Arc<AtomicU64>,
    /// For `GET /metrics`: a clone shares the counters of the engine that decides.
    sticky: Sticky,
}

impl App {
    /// The app for the Machine `sticky` runs on (`local` off Fly).
    pub fn new(sticky: &Sticky) -> Self {
        App {
            machine: sticky.machine_id().unwrap_or("local").into(),
            handled: Arc::default(),
            sticky: sticky.clone(),
        }
    }

    fn count(&self) -> u64 {
        self.handled.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The routes: what runs when sticky lets the request through.
    pub async fn handle(&self, req: Request<Incoming>) -> Res {
        // hyper sends no body for HEAD, so GET routes answer it too.
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let post = req.method() == Method::POST;
        match req.uri().path() {
            "/" if get => text(index_text(&self.machine, self.count())),
            "/health" if get => text("ok"),
            "/metrics" if get => self.metrics(),
            "/upload" if post => self.upload(req.into_body()).await,
            "/ws" if get => self.websocket(req),
            "/api/tenant" if get => self.tenant(&req),
            "/app" if get => self.page(),
            "/" | "/health" | "/metrics" | "/upload" | "/ws" | "/api/tenant" | "/app" => {
                empty(StatusCode::METHOD_NOT_ALLOWED)
            }
            path => match path.strip_prefix("/rooms/") {
                Some(room) if !room.is_empty() && !room.contains('/') => {
                    if get {
                        self.count();
                        text(format!("machine={} room={room}", self.machine))
                    } else {
                        empty(StatusCode::METHOD_NOT_ALLOWED)
                    }
                }
                _ => empty(StatusCode::NOT_FOUND),
            },
        }
    }

    fn metrics(&self) -> Res {
        let mut res = text(self.sticky.metrics().to_string());
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(MetricsSnapshot::CONTENT_TYPE),
        );
        res
    }

    fn page(&self) -> Res {
        let n = self.count();
        let page = APP_PAGE
            .replace("{{machine}}", &self.machine)
            .replace("{{handled}}", &n.to_string());
        let mut res = Response::new(Full::new(Bytes::from(page)));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        res
    }

    fn tenant(&self, req: &Request<Incoming>) -> Res {
        self.count();
        let tenant = req
            .headers()
            .get("x-tenant-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        text(format!("machine={} tenant={tenant}", self.machine))
    }

    async fn upload(&self, mut body: Incoming) -> Res {
        // Counted, not kept: the contract only reports the length.
        let mut bytes = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => bytes += frame.data_ref().map_or(0, Bytes::len),
                Err(_) => return empty(StatusCode::BAD_REQUEST),
            }
        }
        self.count();
        text(format!("machine={} bytes={bytes}", self.machine))
    }

    fn websocket(&self, mut req: Request<Incoming>) -> Res {
        let Some(accept) = websocket_accept(&req) else {
            return empty(StatusCode::BAD_REQUEST);
        };
        self.count();
        let upgrade = hyper::upgrade::on(&mut req);
        let machine = self.machine.clone();
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let io = TokioIo::new(upgraded);
                echo(
                    WebSocketStream::from_raw_socket(io, Role::Server, None).await,
                    &machine,
                )
                .await;
            }
        });
        let mut res = empty(StatusCode::SWITCHING_PROTOCOLS);
        let headers = res.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        res
    }
}

/// Answers one request: sticky decides first, then the app runs, or not.
pub async fn respond(sticky: &Sticky, app: &App, req: Request<Incoming>) -> Res {
    match sticky.decide(&req).into_action() {
        // Served here: run the handler, then add the pin cookie (with
        // `Cache-Control: private`) and, while draining, `Connection: close`.
        Action::Run(finish) => {
            let mut res = app.handle(req).await;
            finish.apply(res.status(), res.headers_mut());
            res
        }
        // A replay (or a refusal): the handler never runs. Read the body the
        // proxy sent first, so the connection stays usable for its next request.
        Action::Answer(answer) => {
            read_and_drop(req.into_body(), answer.body_to_read()).await;
            answer.to_response()
        }
    }
}

/// Reads up to `left` bytes of `body` (to its end, or an error) and drops them.
async fn read_and_drop(mut body: Incoming, mut left: u64) {
    while left > 0 {
        match body.frame().await {
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                left = left.saturating_sub(len as u64);
            }
            None | Some(Err(_)) => break,
        }
    }
}

/// The `Sec-WebSocket-Accept` for a valid WebSocket handshake, else `None`.
fn websocket_accept(req: &Request<Incoming>) -> Option<HeaderValue> {
    let headers = req.headers();
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let version = headers.get(header::SEC_WEBSOCKET_VERSION)?;
    if !has_token(header::CONNECTION, "upgrade")
        || !has_token(header::UPGRADE, "websocket")
        || version != "13"
    {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok()
}

async fn echo(mut socket: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, machine: &str) {
    // Until the peer closes (tungstenite answers pings and the close itself).
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message {
            let reply = format!("{machine}:{}", text.as_str());
            if socket.send(Message::text(reply)).await.is_err() {
                break;
            }
        }
    }
}

fn text(body: impl Into<String>) -> Res {
    let mut res = Response::new(Full::new(Bytes::from(body.into())));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn empty(status: StatusCode) -> Res {
    let mut res = Response::new(Full::default());
    *res.status_mut() = status;
    res
}

/// Serves the app on `listener` (HTTP/1.1 and h2c) until `shutdown`
/// resolves, then waits for the open requests to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sticky: Sticky,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = App::new(&sticky);
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    eprintln!("example-hyper: accept: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (sticky, app) = (sticky.clone(), app.clone());
        let service = hyper::service::service_fn(move |req| {
            let (sticky, app) = (sticky.clone(), app.clone());
            async move { Ok::<_, Infallible>(respond(&sticky, &app, req).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            // A client that goes away mid-request is not the server's error.
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C at once, or on SIGTERM after draining for `grace`.
pub async fn shutdown_signal(sticky: Sticky, grace: Duration) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        #[cfg(unix)]
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
            sticky.drain();
            tokio::time::sleep(grace).await;
            return;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// `machine=<id> handled=<n>`, in a string sized up front: `format!`
/// guesses from the literal parts and grows once for a 14-character Machine
/// ID but not for `local`, which would count as the middleware's cost in
/// `cargo xtask bench`'s ON/OFF instruction counts.
fn index_text(machine: &str, n: u64) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(machine.len() + 32);
    let _ = write!(text, "machine={machine} handled={n}");
    text
}
