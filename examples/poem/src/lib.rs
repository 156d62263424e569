//! The sticky contract app, served by poem with [`sticky_poem`].
//!
//! Its port speaks HTTP/1.1 and h2c with prior knowledge as it is
//! (`poem::Server` uses hyper-util's auto builder), so it runs behind Fly's
//! `h2_backend = true` too; WebSocket upgrades stay HTTP/1.1.
//!
//! - `GET /` answers `machine=<id> handled=<n>`;
//! - `GET /health` answers `ok` and is never sticky;
//! - `GET /metrics` answers the engine's decision counters in Prometheus
//!   text, and is never sticky (excluded like `/health`, not counted);
//! - `POST /upload` reads the whole body and answers `machine=<id> bytes=<len>`;
//! - `GET /ws` is a WebSocket that echoes each text message as `<id>:<message>`;
//! - `GET /api/tenant` answers `machine=<id> tenant=<value>`, pinned by key
//!   affinity on the `x-tenant-id` header (live set: `STICKY_PEERS`, or
//!   Fly's internal DNS, see `sticky-peers`);
//! - `GET /rooms/<room>` answers `machine=<id> room=<room>`, pinned by key
//!   affinity on the path segment, its replays cacheable by path;
//! - `GET /app` answers the browser page shared by every example
//!   (`examples/app.html`), sticky like `/`.
//!
//! `<id>` is the Machine ID, or `local` when not on Fly; `n` counts the
//! handler runs of this process (every route but `/health` and `/metrics`).
//!
//! Tests start it with any engine:
//!
//! ```no_run
//! use sticky_poem::sticky_core::Env;
//!
//! # async fn demo() -> std::io::Result<()> {
//! let sticky = example_poem::configure(Env::machine("148ed599c14189")).expect("valid config");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(example_poem::serve(listener, sticky, async {
//!     let _ = stopped.await;
//! }));
//! // ... talk to `addr` ...
//! let _ = stop.send(());
//! server.await.expect("server task")?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use poem::listener::TcpAcceptor;
use poem::web::websocket::{Message, WebSocket};
use poem::web::{Data, Path};
use poem::{
    Body, Endpoint, EndpointExt, IntoResponse, Response, Route, Server, get, handler, post,
};
use sticky_poem::sticky_core::{
    ConfigError, Env, KeySource, MetricsSnapshot, ReplayCache, Source, Sticky,
};

/// The largest upload `/upload` accepts (64 MiB); larger bodies get a 413.
pub const UPLOAD_LIMIT: usize = 64 * 1024 * 1024;

/// How long a graceful shutdown waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The engine the contract asks for: defaults, except that `/health` and
/// `/metrics` are never sticky and tenants (`x-tenant-id`) are pinned by key affinity
/// before the cookie, as are rooms (`/rooms/<room>`); replays stay cacheable
/// for the `replay_cache` rule of `examples/fly.toml`, and a room's replays
/// name its path for Fly's cache (`fly-replay-cache: /rooms/<room>/*`, 60 s).
pub fn configure(env: Env) -> Result<Sticky, ConfigError> {
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

/// What the handlers share.
struct State {
    machine: String,
    handled: AtomicU64,
    /// For `GET /metrics`: a clone shares the middleware's counters.
    sticky: Sticky,
}

impl State {
    /// Counts one handler run and returns the new count.
    fn count(&self) -> u64 {
        self.handled.fetch_add(1, Ordering::SeqCst) + 1
    }
}

#[handler]
fn index(Data(state): Data<&Arc<State>>) -> String {
    let n = state.count();
    index_text(&state.machine, n)
}

#[handler]
fn room(Data(state): Data<&Arc<State>>, Path(room): Path<String>) -> String {
    state.count();
    format!("machine={} room={room}", state.machine)
}

#[handler]
fn tenant(Data(state): Data<&Arc<State>>, req: &poem::Request) -> String {
    state.count();
    let tenant = req.header("x-tenant-id").unwrap_or_default();
    format!("machine={} tenant={tenant}", state.machine)
}

/// The browser page of `GET /app`, the same in every example.
const APP_PAGE: &str = include_str!("../../app.html");

#[handler]
fn page(Data(state): Data<&Arc<State>>) -> poem::web::Html<String> {
    let n = state.count();
    poem::web::Html(
        APP_PAGE
            .replace("{{machine}}", &state.machine)
            .replace("{{handled}}", &n.to_string()),
    )
}

#[handler]
fn health() -> &'static str {
    "ok"
}

#[handler]
fn metrics(Data(state): Data<&Arc<State>>) -> Response {
    Response::builder()
        .content_type(MetricsSnapshot::CONTENT_TYPE)
        .body(state.sticky.metrics().to_string())
}

#[handler]
async fn upload(Data(state): Data<&Arc<State>>, body: Body) -> poem::Result<String> {
    state.count();
    let bytes = body.into_bytes_limit(UPLOAD_LIMIT).await?;
    Ok(format!("machine={} bytes={}", state.machine, bytes.len()))
}

#[handler]
fn ws(Data(state): Data<&Arc<State>>, ws: WebSocket) -> impl IntoResponse {
    state.count();
    let machine = state.machine.clone();
    ws.on_upgrade(move |mut socket| async move {
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Text(text) => {
                    let echo = Message::Text(format!("{machine}:{text}"));
                    if socket.send(echo).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    })
}

/// The contract app with `sticky` as its middleware (outermost).
pub fn app(sticky: Sticky) -> impl Endpoint<Output = Response> + 'static {
    let state = Arc::new(State {
        machine: sticky.machine_id().unwrap_or("local").to_owned(),
        handled: AtomicU64::new(0),
        sticky: sticky.clone(),
    });
    Route::new()
        .at("/", get(index))
        .at("/health", get(health))
        .at("/metrics", get(metrics))
        .at("/upload", post(upload))
        .at("/ws", get(ws))
        .at("/api/tenant", get(tenant))
        .at("/rooms/:room", get(room))
        .at("/app", get(page))
        .data(state)
        .with(sticky_poem::StickyMiddleware::new(sticky))
}

/// Serves the app on `listener` until `shutdown` completes, then stops
/// accepting and waits up to [`SHUTDOWN_GRACE`] for requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sticky: Sticky,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let acceptor = TcpAcceptor::from_tokio(listener)?;
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app(sticky), shutdown, Some(SHUTDOWN_GRACE))
        .await
}

/// Serves the app until a signal: on `SIGTERM` it drains `sticky` (requests
/// are replayed elsewhere), keeps serving for `drain_for`, then shuts down
/// gracefully; on `SIGINT` (Ctrl-C) it stops at once.
pub async fn run(
    listener: tokio::net::TcpListener,
    sticky: Sticky,
    drain_for: Duration,
) -> io::Result<()> {
    let sigterm = sigterm()?;
    let engine = sticky.clone();
    let drained = async move {
        sigterm.await;
        eprintln!("SIGTERM: draining for {}s", drain_for.as_secs_f32());
        engine.drain();
        tokio::time::sleep(drain_for).await;
        eprintln!("shutting down");
    };
    tokio::select! {
        served = serve(listener, sticky, drained) => served,
        interrupted = tokio::signal::ctrl_c() => {
            eprintln!("SIGINT: stopping");
            interrupted
        }
    }
}

/// Resolves on the first `SIGTERM` (never, where there is none).
#[cfg(unix)]
fn sigterm() -> io::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        term.recv().await;
    })
}

/// Resolves on the first `SIGTERM` (never, where there is none).
#[cfg(not(unix))]
fn sigterm() -> io::Result<impl Future<Output = ()> + Send> {
    Ok(std::future::pending())
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
