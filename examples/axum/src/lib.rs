//! The sticky app contract (DESIGN.md) served with axum.
//!
//! Its port speaks HTTP/1.1 and h2c with prior knowledge (axum's `http2`
//! feature: `axum::serve` then uses hyper-util's auto builder), so it runs
//! behind Fly's `h2_backend = true` too; WebSocket upgrades stay HTTP/1.1.
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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use sticky_axum::StickyLayer;
use sticky_axum::sticky_core::{
    ConfigError, Env, KeySource, MetricsSnapshot, ReplayCache, Source, Sticky,
};

/// Uploads up to this size are accepted (well past Fly's 1 MB replay limit).
pub const MAX_UPLOAD: usize = 64 * 1024 * 1024;

#[derive(Clone)]
struct App {
    machine: Arc<str>,
    handled: Arc<AtomicU64>,
    /// For `GET /metrics`: a clone shares the layer's counters.
    sticky: Sticky,
}

impl App {
    fn count(&self) -> u64 {
        self.handled.fetch_add(1, Ordering::Relaxed) + 1
    }
}

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

/// The contract app behind the sticky layer.
pub fn app(sticky: Sticky) -> Router {
    let state = App {
        machine: sticky.machine_id().unwrap_or("local").into(),
        handled: Arc::default(),
        sticky: sticky.clone(),
    };
    Router::new()
        .route("/", get(index))
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/upload", post(upload))
        .route("/ws", get(ws))
        .route("/api/tenant", get(tenant))
        .route("/rooms/{room}", get(room))
        .route("/app", get(page))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(state)
        .layer(StickyLayer::new(sticky))
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, MetricsSnapshot::CONTENT_TYPE)],
        app.sticky.metrics().to_string(),
    )
}

async fn index(State(app): State<App>) -> String {
    let n = app.count();
    index_text(&app.machine, n)
}

/// The browser page of `GET /app`, the same in every example.
const APP_PAGE: &str = include_str!("../../app.html");

async fn page(State(app): State<App>) -> Html<String> {
    let n = app.count();
    Html(
        APP_PAGE
            .replace("{{machine}}", &app.machine)
            .replace("{{handled}}", &n.to_string()),
    )
}

async fn tenant(State(app): State<App>, headers: HeaderMap) -> String {
    app.count();
    let tenant = headers
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    format!("machine={} tenant={tenant}", app.machine)
}

async fn room(State(app): State<App>, Path(room): Path<String>) -> String {
    app.count();
    format!("machine={} room={room}", app.machine)
}

async fn upload(State(app): State<App>, body: Bytes) -> String {
    app.count();
    format!("machine={} bytes={}", app.machine, body.len())
}

async fn ws(State(app): State<App>, upgrade: WebSocketUpgrade) -> Response {
    app.count();
    upgrade.on_upgrade(move |socket| echo(socket, app.machine))
}

async fn echo(mut socket: WebSocket, machine: Arc<str>) {
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            Message::Text(text) => {
                let reply = format!("{machine}:{}", text.as_str());
                if socket.send(Message::Text(reply.into())).await.is_err() {
                    break;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
}

/// Serves the app on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sticky: Sticky,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(sticky))
        .with_graceful_shutdown(shutdown)
        .await
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
