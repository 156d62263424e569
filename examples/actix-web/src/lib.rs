//! The sticky app contract (DESIGN.md) served with actix-web.
//!
//! Its port speaks HTTP/1.1 and h2c with prior knowledge
//! (`HttpServer::listen_auto_h2c`, actix-web's `http2` feature; a plain
//! `listen`/`bind` is HTTP/1.1 only, and h2 otherwise needs TLS), so it runs
//! behind Fly's `h2_backend = true` too; WebSocket upgrades stay HTTP/1.1.
//!
//! - `GET /` answers `machine=<id> handled=<n>`, where `n` counts handler
//!   runs on this process (every route but `/health` and `/metrics`);
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
//!
//! actix-web builds one `App` per worker thread, so the handler counter lives
//! in a [`Contract`] that is built once and shared by every worker's app.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServerHandle, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, Error, HttpRequest, HttpResponse, HttpServer, web};
use actix_ws::Message;
use sticky_actix_web::sticky_core::{
    ConfigError, Env, KeySource, MetricsSnapshot, ReplayCache, Source, Sticky,
};

/// Uploads up to this size are accepted (well past Fly's 1 MB replay limit).
pub const MAX_UPLOAD: usize = 64 * 1024 * 1024;

/// How long a graceful stop waits for in-flight requests (seconds).
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

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

struct State {
    machine: Arc<str>,
    handled: AtomicU64,
    /// For `GET /metrics`: a clone shares the middleware's counters.
    sticky: Sticky,
}

impl State {
    fn count(&self) -> u64 {
        self.handled.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The contract app: one engine and one shared handler counter, from which
/// each worker builds its [`App`].
#[derive(Clone)]
pub struct Contract {
    sticky: Sticky,
    state: web::Data<State>,
}

impl Contract {
    /// The app deciding with `sticky`; `<id>` is its Machine ID or `local`.
    pub fn new(sticky: Sticky) -> Self {
        let state = State {
            machine: sticky.machine_id().unwrap_or("local").into(),
            handled: AtomicU64::new(0),
            sticky: sticky.clone(),
        };
        Self {
            sticky,
            state: web::Data::new(state),
        }
    }

    /// The engine (clones share the drain switch).
    pub fn sticky(&self) -> &Sticky {
        &self.sticky
    }

    /// How many times a handler ran (every route but `/health` and `/metrics`).
    pub fn handled(&self) -> u64 {
        self.state.handled.load(Ordering::Relaxed)
    }

    /// The routes behind the sticky middleware, for one worker.
    pub fn app(
        &self,
    ) -> App<
        impl ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<impl MessageBody + use<>>,
            Error = Error,
            InitError = (),
        > + use<>,
    > {
        App::new()
            .app_data(self.state.clone())
            .app_data(web::PayloadConfig::new(MAX_UPLOAD))
            .route("/", web::get().to(index))
            .route("/health", web::get().to(health))
            .route("/metrics", web::get().to(metrics))
            .route("/upload", web::post().to(upload))
            .route("/ws", web::get().to(ws))
            .route("/api/tenant", web::get().to(tenant))
            .route("/rooms/{room}", web::get().to(room))
            .route("/app", web::get().to(page))
            .wrap(sticky_actix_web::StickyMiddleware::new(self.sticky.clone()))
    }
}

async fn index(state: web::Data<State>) -> String {
    let n = state.count();
    index_text(&state.machine, n)
}

/// The browser page of `GET /app`, the same in every example.
const APP_PAGE: &str = include_str!("../../app.html");

async fn page(state: web::Data<State>) -> HttpResponse {
    let n = state.count();
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(
            APP_PAGE
                .replace("{{machine}}", &state.machine)
                .replace("{{handled}}", &n.to_string()),
        )
}

async fn health() -> &'static str {
    "ok"
}

async fn metrics(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(MetricsSnapshot::CONTENT_TYPE)
        .body(state.sticky.metrics().to_string())
}

async fn tenant(state: web::Data<State>, req: HttpRequest) -> String {
    state.count();
    let tenant = req
        .headers()
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    format!("machine={} tenant={tenant}", state.machine)
}

async fn room(state: web::Data<State>, room: web::Path<String>) -> String {
    state.count();
    format!("machine={} room={room}", state.machine)
}

async fn upload(state: web::Data<State>, body: web::Bytes) -> String {
    state.count();
    format!("machine={} bytes={}", state.machine, body.len())
}

async fn ws(
    state: web::Data<State>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, Error> {
    let (response, mut session, mut stream) = actix_ws::handle(&req, body)?;
    state.count();
    let machine = state.machine.clone();
    actix_web::rt::spawn(async move {
        while let Some(Ok(message)) = stream.recv().await {
            let sent = match message {
                Message::Text(text) => session.text(format!("{machine}:{text}")).await,
                Message::Ping(bytes) => session.pong(&bytes).await,
                Message::Close(reason) => {
                    let _ = session.close(reason).await;
                    return;
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
        let _ = session.close(None).await;
    });
    Ok(response)
}

/// The contract app served on `listener` (actix-web's own signal handling
/// is off; see [`shutdown_on_signals`]).
///
/// Nothing runs until the returned [`Server`] is awaited, on an actix
/// `System` (as in `main`) or with [`run_on_thread`].
pub fn server(listener: std::net::TcpListener, sticky: Sticky) -> io::Result<Server> {
    let contract = Contract::new(sticky);
    Ok(HttpServer::new(move || contract.app())
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        // HTTP/1.1 and h2c with prior knowledge on one port (Fly's h2_backend).
        .listen_auto_h2c(listener)?
        .run())
}

/// Runs `server` on a dedicated thread with its own actix `System`, so that
/// it can be started from any context (a tokio test, a plain thread).
///
/// Stop it with the returned handle, e.g. `handle.stop(true)`; the stop
/// command is sent even if the returned future is dropped.
pub fn run_on_thread(server: Server) -> io::Result<ServerHandle> {
    let handle = server.handle();
    std::thread::Builder::new()
        .name("example-actix-web".into())
        .spawn(move || actix_web::rt::System::new().block_on(server))?;
    Ok(handle)
}

/// Waits for a shutdown signal, then stops the server behind `handle`:
/// on SIGTERM, calls `sticky.drain()`, keeps serving for `grace`, then stops
/// gracefully; on SIGINT (Ctrl-C), stops at once.
pub async fn shutdown_on_signals(sticky: Sticky, grace: Duration, handle: ServerHandle) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
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
    let graceful = tokio::select! {
        () = ctrl_c => false,
        () = term => true,
    };
    handle.stop(graceful).await;
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
