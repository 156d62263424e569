//! Shared helpers for flysim's integration tests: a tiny scriptable in-process app
//! (one hyper server per Machine) and an HTTP client.

#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flysim::{Config, FlySim, Instance, Launch, MachineEnv};
use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type TestBody = BoxBody<Bytes, BoxError>;

/// A request as one Machine of the test app saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) machine: String,
    pub(crate) method: Method,
    /// The HTTP version the request reached the Machine with.
    pub(crate) version: Version,
    /// Path and query.
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the test app answers.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Bytes,
    /// Complete a WebSocket upgrade and echo text messages as `<machine>:<text>`.
    pub(crate) websocket: bool,
}

impl Reply {
    /// 200 with `text`.
    pub(crate) fn ok(text: impl Into<String>) -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: Bytes::from(text.into()),
            websocket: false,
        }
    }

    /// A replay response with noise that the proxy must throw away: status 409, a
    /// body, a Set-Cookie and a custom header.
    pub(crate) fn replay(value: &str) -> Reply {
        Reply {
            status: StatusCode::CONFLICT,
            headers: vec![
                (
                    HeaderName::from_static("fly-replay"),
                    HeaderValue::from_bytes(value.as_bytes()).expect("header value"),
                ),
                (
                    HeaderName::from_static("set-cookie"),
                    HeaderValue::from_static("from-replay=1"),
                ),
                (
                    HeaderName::from_static("x-replay-noise"),
                    HeaderValue::from_static("1"),
                ),
            ],
            body: Bytes::from_static(b"this replay response must never reach the client"),
            websocket: false,
        }
    }

    /// A JSON-form replay response.
    pub(crate) fn json_replay(json: &str) -> Reply {
        Reply {
            status: StatusCode::TEMPORARY_REDIRECT,
            headers: vec![(
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/vnd.fly.replay+json"),
            )],
            body: Bytes::from(json.to_owned()),
            websocket: false,
        }
    }

    /// Completes a WebSocket handshake and echoes.
    pub(crate) fn websocket() -> Reply {
        Reply {
            status: StatusCode::SWITCHING_PROTOCOLS,
            headers: Vec::new(),
            body: Bytes::new(),
            websocket: true,
        }
    }

    /// Adds a header.
    pub(crate) fn with_header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("header value"),
        ));
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// The scriptable test app. Every Machine runs the same handler; it records every
/// request it sees.
#[derive(Clone)]
pub(crate) struct App {
    seen: Arc<Mutex<Vec<Seen>>>,
    envs: Arc<Mutex<Vec<MachineEnv>>>,
    stops: Arc<Mutex<Vec<String>>>,
    signals: Arc<Mutex<Vec<(String, flysim::Signal)>>>,
    handler: Arc<Mutex<Handler>>,
    /// Serve HTTP/1.1 and h2c (prior knowledge) rather than HTTP/1.1 only.
    h2c: bool,
}

impl App {
    /// An app answering `200 machine=<id>`.
    pub(crate) fn echo() -> App {
        App::new(|s| Reply::ok(format!("machine={}", s.machine)))
    }

    pub(crate) fn new(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> App {
        App {
            seen: Arc::default(),
            envs: Arc::default(),
            stops: Arc::default(),
            signals: Arc::default(),
            handler: Arc::new(Mutex::new(Arc::new(handler))),
            h2c: false,
        }
    }

    /// The same app serving HTTP/1.1 and h2c with prior knowledge
    /// (hyper-util's auto connection builder), as an `h2_backend` app must.
    pub(crate) fn speaking_h2c(mut self) -> App {
        self.h2c = true;
        self
    }

    /// Replaces the handler (e.g. once the Machine IDs are known).
    pub(crate) fn set_handler(&self, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }

    /// Every request seen so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Handler runs so far.
    pub(crate) fn runs(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Handler runs on one Machine.
    pub(crate) fn runs_on(&self, machine: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.machine == machine)
            .count()
    }

    /// The environments Machines were launched with.
    pub(crate) fn envs(&self) -> Vec<MachineEnv> {
        self.envs.lock().unwrap().clone()
    }

    /// Machine IDs whose instance was stopped, in order.
    pub(crate) fn stops(&self) -> Vec<String> {
        self.stops.lock().unwrap().clone()
    }

    /// Signals sent to Machines (through `Instance::on_signal`), in order.
    pub(crate) fn signals(&self) -> Vec<(String, flysim::Signal)> {
        self.signals.lock().unwrap().clone()
    }

    pub(crate) fn launch(&self) -> Launch {
        let app = self.clone();
        Launch::in_process(move |env: MachineEnv| {
            let app = app.clone();
            async move {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                app.envs.lock().unwrap().push(env.clone());
                let (stop_tx, stop_rx) = watch::channel(false);
                tokio::spawn(serve(
                    app.clone(),
                    env.machine_id.clone(),
                    listener,
                    stop_rx,
                ));
                let stops = app.stops.clone();
                let signals = app.signals.clone();
                let id = env.machine_id;
                let signalled = id.clone();
                Ok(Instance::new(addr, move || {
                    stops.lock().unwrap().push(id);
                    let _ = stop_tx.send(true);
                })
                .on_signal(move |signal| {
                    signals.lock().unwrap().push((signalled.clone(), signal));
                }))
            }
        })
    }
}

async fn serve(app: App, machine: String, listener: TcpListener, stop: watch::Receiver<bool>) {
    let mut stop_accept = stop.clone();
    loop {
        let accepted = tokio::select! {
            _ = stop_accept.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let app = app.clone();
        let service_app = app.clone();
        let machine = machine.clone();
        let mut stop_conn = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = service_app.clone();
                let machine = machine.clone();
                async move { Ok::<_, Infallible>(handle(app, machine, req).await) }
            });
            if app.h2c {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    _ = stop_conn.changed() => {}
                }
                return;
            }
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                _ = conn => {}
                _ = stop_conn.changed() => {}
            }
        });
    }
}

async fn handle(app: App, machine: String, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        machine: machine.clone(),
        method: parts.method.clone(),
        version: parts.version,
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts.headers.clone(),
        body,
    };
    app.seen.lock().unwrap().push(seen.clone());
    let handler = app.handler.lock().unwrap().clone();
    let reply = handler(&seen);
    let mut resp = Response::new(Full::new(reply.body.clone()));
    *resp.status_mut() = reply.status;
    if reply.websocket {
        let key = parts
            .headers
            .get("sec-websocket-key")
            .map(|k| derive_accept_key(k.as_bytes()))
            .unwrap_or_default();
        let h = resp.headers_mut();
        h.insert("connection", HeaderValue::from_static("upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("sec-websocket-accept", HeaderValue::from_str(&key).unwrap());
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Text(text) => {
                        let echo = format!("{machine}:{}", text.as_str());
                        if ws.send(Message::text(echo)).await.is_err() {
                            break;
                        }
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        });
    }
    for (name, value) in reply.headers {
        resp.headers_mut().append(name, value);
    }
    resp
}

/// Test defaults: 3 Machines, a short slow-failure delay.
pub(crate) fn config() -> Config {
    Config::default().dead_target_delay(Duration::from_millis(300))
}

pub(crate) async fn start(config: Config, app: &App) -> FlySim {
    FlySim::start(config, app.launch())
        .await
        .expect("flysim starts")
}

/// A response as the client saw it.
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Resp {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) fn full_body(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Sends one request (a fresh client each time).
pub(crate) async fn send(req: Request<TestBody>) -> Resp {
    let client: Client<HttpConnector, TestBody> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let resp = client.request(req).await.expect("request to flysim");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends one request over h2c with prior knowledge (a fresh client each time).
pub(crate) async fn send_h2(req: Request<TestBody>) -> Resp {
    let client: Client<HttpConnector, TestBody> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let resp = client.request(req).await.expect("h2c request to flysim");
    assert_eq!(resp.version(), Version::HTTP_2);
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET `url` with extra headers.
pub(crate) async fn get_with(url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(full_body(Bytes::new())).unwrap()).await
}

pub(crate) async fn get(url: &str) -> Resp {
    get_with(url, &[]).await
}

/// The machine that produced a `machine=<id>` body.
pub(crate) fn served_by(resp: &Resp) -> String {
    let text = resp.text();
    text.strip_prefix("machine=")
        .unwrap_or_else(|| panic!("unexpected body {text:?} (status {})", resp.status))
        .to_owned()
}

/// A random valid Machine ID that no Machine has.
pub(crate) fn unknown_id() -> String {
    "0123456789abcd".to_owned()
}

/// Waits (up to 5 s) for `cond`.
pub(crate) async fn eventually(mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}

/// Calls the admin interface: the status and the JSON answer (or the text).
pub(crate) async fn admin_call(sim: &FlySim, method: &str, path: &str) -> (u16, serde_json::Value) {
    let url = format!("http://{}{path}", sim.admin_addr().expect("an admin port"));
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(full_body(Bytes::new()))
        .unwrap();
    let resp = send(req).await;
    let value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|_| serde_json::Value::String(resp.text()));
    (resp.status.as_u16(), value)
}

/// Waits (up to `secs`) for `cond`, checking every 10 ms.
pub(crate) async fn within(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within {secs} s");
}

/// The messages of the recorded events of `kind`, oldest first.
pub(crate) fn messages(sim: &FlySim, kind: flysim::EventKind) -> Vec<String> {
    sim.events()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.message)
        .collect()
}

/// A test app whose `/health` fails (503) on the Machines in the returned
/// list, and answers `machine=<id>` elsewhere.
pub(crate) fn app_with_health() -> (App, Arc<Mutex<Vec<String>>>) {
    let failing: Arc<Mutex<Vec<String>>> = Arc::default();
    let f = failing.clone();
    let app = App::new(move |s| {
        if s.path == "/health" {
            if f.lock().unwrap().contains(&s.machine) {
                let mut r = Reply::ok("sick");
                r.status = StatusCode::SERVICE_UNAVAILABLE;
                return r;
            }
            return Reply::ok("ok");
        }
        Reply::ok(format!("machine={}", s.machine))
    });
    (app, failing)
}
