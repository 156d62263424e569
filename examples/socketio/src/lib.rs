//! socket.io on several Fly Machines: axum + socketioxide, kept sticky by
//! `sticky-axum`.
//!
//! socket.io's session is several HTTP requests (long-polling `GET`s and
//! `POST`s sharing a `sid`, then a WebSocket upgrade). Each must reach the
//! Machine that opened the session, or socketioxide answers `400 Session ID
//! unknown`. The sticky layer, outermost, pins the client with a cookie on
//! the handshake and replays every later request to that Machine.
//!
//! HTTP routes:
//! - `GET /` a small page that talks socket.io with the browser client;
//! - `GET /client/socket.io.min.js` that browser client (see [`client_js_path`]);
//! - `GET /machine` this Machine's ID as text, for clients without a cookie
//!   jar: they pass it back as `?fly_instance_id=<id>` (the query source);
//! - `GET /health` `ok`, never sticky;
//! - `GET /metrics` the sticky engine's decision counters in Prometheus
//!   text, never sticky (absent with `STICKY=off`).
//!
//! socket.io events on the default namespace `/`:
//! - `whoami` acks this Machine's ID;
//! - `echo` with a string acks `<machine id>:<string>`;
//! - `join` with a room name joins it and acks the Machine's ID;
//! - `say` with `{ room, text }` emits `said` with `{ room, text, from,
//!   machine }` to every socket in that room on this Machine (rooms are
//!   per Machine: socketioxide's default adapter is local), and acks the
//!   Machine's ID.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef};
use sticky_axum::sticky_core::MetricsSnapshot;
use sticky_axum::{
    StickyLayer,
    sticky_core::{Env, Sticky},
};

/// Environment variable that names the browser client file served at
/// `/client/socket.io.min.js`.
pub const CLIENT_JS_VAR: &str = "SOCKETIO_CLIENT_JS";

/// Environment variable that turns the sticky layer off (`STICKY=off`), to
/// show what socket.io does on several Machines without it.
pub const STICKY_VAR: &str = "STICKY";

/// The engine from the environment (`FLY_MACHINE_ID` etc.): defaults with
/// `/health` and `/metrics` excluded; `None` when `STICKY=off`.
pub fn sticky_from_env() -> Result<Option<Sticky>, sticky_axum::sticky_core::ConfigError> {
    if std::env::var(STICKY_VAR).is_ok_and(|v| v == "off") {
        return Ok(None);
    }
    let sticky = Sticky::builder()
        .exclude(["/health", "/metrics"])
        .build(Env::from_process())?;
    Ok(Some(sticky))
}

/// The file served as the browser client: `$SOCKETIO_CLIENT_JS`, or else the
/// copy `npm ci` installs under this example's `js/node_modules`. The file is
/// socket.io's own build, never committed here; a deployment copies it into
/// its image and sets the variable.
pub fn client_js_path() -> PathBuf {
    std::env::var_os(CLIENT_JS_VAR).map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/js/node_modules/socket.io-client/dist/socket.io.min.js"
            ))
        },
        PathBuf::from,
    )
}

/// A `say` event's payload.
#[derive(Debug, Deserialize)]
struct Say {
    room: String,
    text: String,
}

/// What a room hears.
#[derive(Debug, Serialize)]
struct Said<'a> {
    room: &'a str,
    text: &'a str,
    from: String,
    machine: &'a str,
}

/// Registers the socket.io contract on `io`'s default namespace.
pub fn socket_handlers(io: &SocketIo, machine: Arc<str>) {
    io.ns("/", async move |s: SocketRef| {
        let m = machine.clone();
        s.on("whoami", async move |ack: AckSender| {
            let _ = ack.send(&*m);
        });
        let m = machine.clone();
        s.on(
            "echo",
            async move |Data(text): Data<String>, ack: AckSender| {
                let _ = ack.send(&format!("{m}:{text}"));
            },
        );
        let m = machine.clone();
        s.on(
            "join",
            async move |s: SocketRef, Data(room): Data<String>, ack: AckSender| {
                s.join(room);
                let _ = ack.send(&*m);
            },
        );
        let m = machine.clone();
        s.on(
            "say",
            async move |s: SocketRef, Data(say): Data<Say>, ack: AckSender| {
                let said = Said {
                    room: &say.room,
                    text: &say.text,
                    from: s.id.to_string(),
                    machine: &m,
                };
                // `within` includes the sender: it hears its own message.
                let _ = s.within(say.room.clone()).emit("said", &said).await;
                let _ = ack.send(&*m);
            },
        );
    });
}

/// The app: the HTTP routes and socket.io, with the sticky layer outermost
/// when `sticky` is given (`None` is the deliberately broken variant the
/// tests compare against).
pub fn app(sticky: Option<Sticky>, machine: Arc<str>) -> Router {
    let (sio_layer, io) = SocketIo::new_layer();
    socket_handlers(&io, machine.clone());
    let page_machine = machine.clone();
    let app = Router::new()
        .route("/", get(move || page(page_machine)))
        .route("/client/socket.io.min.js", get(client_js))
        .route("/machine", get(move || async move { machine.to_string() }))
        .route("/health", get(|| async { "ok" }));
    let Some(sticky) = sticky else {
        return app.layer(sio_layer);
    };
    // A clone shares the layer's counters.
    let engine = sticky.clone();
    let metrics = move || async move {
        (
            [(header::CONTENT_TYPE, MetricsSnapshot::CONTENT_TYPE)],
            engine.metrics().to_string(),
        )
    };
    let app = app.route("/metrics", get(metrics));
    app.layer(sio_layer).layer(StickyLayer::new(sticky))
}

async fn page(machine: Arc<str>) -> Html<String> {
    // The ID is shown as served; the socket's own `whoami` may differ only
    // if stickiness is off. Only hex IDs pass the engine, but escape anyway.
    let escaped: String = machine
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    Html(PAGE.replace("{machine}", &escaped))
}

async fn client_js() -> Response {
    let path = client_js_path();
    match tokio::fs::read(&path).await {
        Ok(js) => ([(header::CONTENT_TYPE, "text/javascript")], js).into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            format!(
                "socket.io browser client not found at {} ({e}).\n\
                 Install it with `npm ci --prefix examples/socketio/js` \
                 or set {CLIENT_JS_VAR} to the path of socket.io.min.js.\n",
                path.display()
            ),
        )
            .into_response(),
    }
}

/// Serves the app on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on Ctrl-C at once, or on SIGTERM after draining for `grace`
/// (requests pinned here are then replayed elsewhere; open WebSockets stay
/// until the process exits, and their clients reconnect elsewhere).
pub async fn shutdown_signal(sticky: Option<Sticky>, grace: Duration) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        #[cfg(unix)]
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
            if let Some(sticky) = &sticky {
                sticky.drain();
            }
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

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>sticky socket.io</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}#log{white-space:pre-wrap;border:1px solid #ccc;padding:.5em;min-height:8em}</style>
<h1>socket.io on Machine <code>{machine}</code></h1>
<p>socket: <span id="state">connecting</span>, Machine <code id="who">?</code>, transport <code id="transport">?</code></p>
<form id="echo"><input id="text" placeholder="echo this" autocomplete="off"> <button>echo</button></form>
<form id="chat"><input id="room" value="lobby" size="8"> <input id="msg" placeholder="say to the room" autocomplete="off"> <button>say</button></form>
<div id="log"></div>
<script src="/client/socket.io.min.js"></script>
<script>
const $ = (id) => document.getElementById(id);
const log = (line) => { $("log").textContent += line + "\n"; };
const socket = io({ withCredentials: true });
let joined = null;
socket.on("connect", () => {
  $("state").textContent = "connected";
  $("transport").textContent = socket.io.engine.transport.name;
  socket.io.engine.on("upgrade", (t) => { $("transport").textContent = t.name; });
  socket.emit("whoami", (id) => { $("who").textContent = id; });
  joined = null;
});
socket.on("disconnect", (reason) => { $("state").textContent = "disconnected (" + reason + ")"; });
socket.on("connect_error", (err) => log("connect_error: " + err.message));
socket.on("said", (m) => log("[" + m.room + "@" + m.machine + "] " + m.from + ": " + m.text));
$("echo").onsubmit = (e) => {
  e.preventDefault();
  socket.emit("echo", $("text").value, (reply) => log("echo: " + reply));
};
$("chat").onsubmit = (e) => {
  e.preventDefault();
  const room = $("room").value, text = $("msg").value;
  const say = () => socket.emit("say", { room, text });
  if (joined === room) return say();
  socket.emit("join", room, () => { joined = room; say(); });
};
</script>
"#;
