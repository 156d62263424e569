//! The sticky app contract (DESIGN.md) served with warp.
//!
//! Its port speaks HTTP/1.1 and h2c with prior knowledge as it is
//! (`warp::serve` uses hyper-util's auto builder), so it runs behind Fly's
//! `h2_backend = true` too; WebSocket upgrades stay HTTP/1.1.
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

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use sticky_warp::StickyWrap;
use sticky_warp::sticky_core::{
    ConfigError, Env, KeySource, MetricsSnapshot, ReplayCache, Source, Sticky,
};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::ws::{Message, WebSocket, Ws};
use warp::{Buf, Filter, Rejection};

/// Uploads up to this size are accepted (well past Fly's 1 MB replay limit).
/// warp itself sets no body limit; the upload handler enforces this one.
pub const MAX_UPLOAD: u64 = 64 * 1024 * 1024;

#[derive(Clone)]
struct App {
    machine: Arc<str>,
    handled: Arc<AtomicU64>,
}

impl App {
    fn count(&self) -> u64 {
        self.handled.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The browser page of `GET /app`, the same in every example.
const APP_PAGE: &str = include_str!("../../app.html");

/// The header that pins `/api/tenant` by key affinity.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// The engine with the contract's settings: defaults, `/health` and `/metrics` excluded,
/// tenants (`x-tenant-id`) and rooms (`/rooms/<room>`) pinned by key
/// affinity before the cookie, replays kept cacheable for the `replay_cache`
/// rule of `examples/fly.toml`, and a room's replays naming its path for
/// Fly's cache (`fly-replay-cache: /rooms/<room>/*`, 60 s).
pub fn sticky(env: Env) -> Result<Sticky, ConfigError> {
    Sticky::builder()
        .exclude(["/health", "/metrics"])
        .sources([Source::Key, Source::Cookie, Source::Query])
        .key_source(KeySource::Header(TENANT_HEADER.into()))
        .key_source(KeySource::PathSegment("/rooms/".into()))
        .replay_cache(ReplayCache::Path {
            ttl: Duration::from_secs(60),
        })
        .build(env)
}

/// The contract app wrapped in the sticky filter (which also fetches the
/// tenant header for the engine's key source).
pub fn app(
    sticky: Sticky,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let app = App {
        machine: sticky.machine_id().unwrap_or("local").into(),
        handled: Arc::default(),
    };
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };

    let index = warp::get()
        .and(warp::path::end())
        .and(with_app.clone())
        .map(|app: App| {
            let n = app.count();
            index_text(&app.machine, n).into_response()
        });
    let health = warp::get()
        .and(warp::path!("health"))
        .map(|| "ok".into_response());
    // A clone shares the filter's counters.
    let engine = sticky.clone();
    let metrics = warp::get().and(warp::path!("metrics")).map(move || {
        warp::reply::with_header(
            engine.metrics().to_string(),
            "content-type",
            MetricsSnapshot::CONTENT_TYPE,
        )
        .into_response()
    });
    let upload = warp::post()
        .and(warp::path!("upload"))
        .and(with_app.clone())
        .and(warp::body::stream())
        .then(upload);
    let tenant = warp::get()
        .and(warp::path!("api" / "tenant"))
        .and(with_app.clone())
        .and(warp::header::optional::<String>(TENANT_HEADER))
        .map(|app: App, tenant: Option<String>| {
            app.count();
            let tenant = tenant.unwrap_or_default();
            format!("machine={} tenant={tenant}", app.machine).into_response()
        });
    let room = warp::get()
        .and(warp::path!("rooms" / String))
        .and(with_app.clone())
        .map(|room: String, app: App| {
            app.count();
            format!("machine={} room={room}", app.machine).into_response()
        });
    let page = warp::get()
        .and(warp::path!("app"))
        .and(with_app.clone())
        .map(|app: App| {
            let n = app.count();
            let page = APP_PAGE
                .replace("{{machine}}", &app.machine)
                .replace("{{handled}}", &n.to_string());
            warp::reply::html(page).into_response()
        });
    let ws = warp::path!("ws")
        .and(with_app)
        .and(warp::ws())
        .map(|app: App, ws: Ws| {
            app.count();
            ws.on_upgrade(move |socket| echo(socket, app.machine))
                .into_response()
        });

    let routes = index
        .or(health)
        .unify()
        .or(metrics)
        .unify()
        .or(upload)
        .unify()
        .or(ws)
        .unify()
        .or(tenant)
        .unify()
        .or(room)
        .unify()
        .or(page)
        .unify();
    // The engine's tenant header is fetched automatically.
    StickyWrap::new(sticky).wrap(routes)
}

/// Reads the whole body (counting it), up to [`MAX_UPLOAD`].
async fn upload<S, B>(app: App, body: S) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    app.count();
    let mut body = std::pin::pin!(body);
    let mut len: u64 = 0;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => len += chunk.remaining() as u64,
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
        if len > MAX_UPLOAD {
            return StatusCode::PAYLOAD_TOO_LARGE.into_response();
        }
    }
    format!("machine={} bytes={len}", app.machine).into_response()
}

async fn echo(mut socket: WebSocket, machine: Arc<str>) {
    while let Some(Ok(message)) = socket.next().await {
        if message.is_close() {
            break;
        }
        if let Ok(text) = message.to_str() {
            let reply = format!("{machine}:{text}");
            if socket.send(Message::text(reply)).await.is_err() {
                break;
            }
        }
    }
}

/// Serves the app on `listener` until `shutdown` resolves, then shuts down
/// gracefully (in-flight requests finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    sticky: Sticky,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(app(sticky))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
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
