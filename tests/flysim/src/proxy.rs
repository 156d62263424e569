//! The request path: headers, routing, delivery, replays, fallbacks and upgrades.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::net::TcpStream;

use crate::body::{self, ProxyBody, RequestBody};
use crate::events::EventKind;
use crate::replay::{self, Fallback, ReplayDirective, ReplayError};
use crate::sim::{Counter, Lookup, Pick, Shared};
use crate::{Config, MAX_REPLAYS};

const FLY_REPLAY: &str = "fly-replay";
const FLY_REPLAY_SRC: HeaderName = HeaderName::from_static("fly-replay-src");
const FLY_REPLAY_FAILED: HeaderName = HeaderName::from_static("fly-replay-failed");
const PREFERRED_UNAVAILABLE: HeaderName =
    HeaderName::from_static("fly-preferred-instance-unavailable");
const FORCE_INSTANCE: &str = "fly-force-instance-id";
const PREFER_INSTANCE: &str = "fly-prefer-instance-id";
const FLY_ERROR: HeaderName = HeaderName::from_static("fly-error");
const FLY_REQUEST_ID: HeaderName = HeaderName::from_static("fly-request-id");

/// Largest JSON replay body flysim reads.
const MAX_JSON_REPLAY: usize = 64 * 1024;

/// Region aliases and the region codes they cover (approximate, for `region=`).
const AREAS: &[(&str, &[&str])] = &[
    (
        "us",
        &[
            "atl", "bos", "den", "dfw", "ewr", "iad", "lax", "mia", "ord", "phx", "sea", "sjc",
        ],
    ),
    (
        "usa",
        &[
            "atl", "bos", "den", "dfw", "ewr", "iad", "lax", "mia", "ord", "phx", "sea", "sjc",
        ],
    ),
    (
        "na",
        &[
            "atl", "bos", "den", "dfw", "ewr", "iad", "lax", "mia", "ord", "phx", "sea", "sjc",
            "yul", "yyz", "qro",
        ],
    ),
    (
        "eu",
        &["ams", "arn", "cdg", "fra", "lhr", "mad", "otp", "waw"],
    ),
    ("sa", &["bog", "eze", "gdl", "gig", "gru", "scl"]),
    ("apac", &["bom", "hkg", "nrt", "sin", "syd"]),
];

/// What the front server knows about a client connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) local_port: u16,
}

/// One client request on its way through the proxy.
struct Ctx {
    request_id: String,
    method: Method,
    pq: PathAndQuery,
    /// Headers sent with every delivery (client headers plus Fly's).
    headers: HeaderMap,
    body: RequestBody,
    /// The client side of a WebSocket (or other) upgrade.
    upgrade: Option<OnUpgrade>,
    is_upgrade: bool,
    /// The current delivery is a fallback after a failed replay.
    fallback: bool,
    served_by: Option<String>,
}

/// Where a delivery should go.
enum Route {
    /// Any started Machine not excluded (autostarting one if none is started).
    Balanced { exclude: Vec<String> },
    /// `fly-force-instance-id`: exactly this Machine, error if it is gone.
    Force(String),
    /// This Machine if it can be reached, otherwise balanced; `mark` adds
    /// `fly-preferred-instance-unavailable` when falling back.
    Prefer {
        id: String,
        exclude: Vec<String>,
        mark: bool,
        timeout: Option<Duration>,
    },
    /// `instance=`: exactly this Machine; a gone Machine fails slowly.
    Strict {
        id: String,
        timeout: Option<Duration>,
    },
    /// `fallback=force_self`: back to the replaying Machine, error if it is gone.
    SelfOnly(String),
}

enum Conn {
    Pool(SocketAddr),
    Stream(TcpStream),
}

enum SendError {
    Connect(String),
    BodyUsed,
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Timeout,
    NoCandidate,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::NoCandidate => "no_candidate",
        }
    }
}

enum DeliverError {
    NoCandidate,
    NotFound { id: String, what: String },
    Unreachable { id: String, reason: Reason },
    BodyUsed,
    Upstream { machine: String, error: String },
}

struct Delivered {
    machine: String,
    resp: Response<Incoming>,
}

enum Classified {
    Final(Response<Incoming>),
    Replay {
        result: Result<ReplayDirective, ReplayError>,
        quoted: String,
    },
}

fn error_chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Whether a failed exchange got no answer at all because the connection
/// was closed or reset under it (as opposed to a malformed answer).
fn no_answer(e: &(dyn StdError + 'static)) -> bool {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        cause = err.source();
    }
    false
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_bytes(s.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn micros_since_epoch() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// A Fly-style request ID: 26 characters of a ULID, a dash, the edge region.
fn new_request_id(region: &str) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut out = String::with_capacity(27 + region.len());
    for i in (0..10).rev() {
        out.push(ALPHABET[((ms >> (i * 5)) & 31) as usize] as char);
    }
    let mut rng = rand::rng();
    for _ in 0..16 {
        out.push(ALPHABET[rng.random_range(0..32)] as char);
    }
    out.push('-');
    out.push_str(region);
    out
}

/// Whether the header value list of `name` contains `token` (comma-separated,
/// case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn is_upgrade_request(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && has_token(headers, header::CONNECTION, "upgrade")
}

/// Removes hop-by-hop headers (the standard ones and those named in `Connection`).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// The headers every delivery of this request carries: the client's (without
/// hop-by-hop ones) plus the ones Fly's proxy adds.
fn forwarded_headers(
    parts: &http::request::Parts,
    conn: &ConnInfo,
    request_id: &str,
    cfg: &Config,
    is_upgrade: bool,
) -> HeaderMap {
    let mut h = parts.headers.clone();
    let upgrade = if is_upgrade {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(&mut h);
    if let Some(upgrade) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, upgrade);
    }
    h.remove(header::EXPECT);
    if !h.contains_key(header::HOST) {
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| format!("127.0.0.1:{}", conn.local_port));
        h.insert(header::HOST, header_value(&host));
    }
    let ip = conn.peer.ip().to_canonical().to_string();
    let port = cfg.forwarded_port.unwrap_or(conn.local_port).to_string();
    h.insert("fly-client-ip", header_value(&ip));
    h.insert("fly-region", header_value(&cfg.region));
    h.insert(FLY_REQUEST_ID, header_value(request_id));
    h.insert("fly-forwarded-port", header_value(&port));
    let prior: Vec<String> = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let xff = if prior.is_empty() {
        ip
    } else {
        format!("{}, {ip}", prior.join(", "))
    };
    h.insert("x-forwarded-for", header_value(&xff));
    h.insert("x-forwarded-proto", header_value(&cfg.forwarded_proto));
    h.insert("x-forwarded-port", header_value(&port));
    let ssl = if cfg.forwarded_proto.eq_ignore_ascii_case("https") {
        "on"
    } else {
        "off"
    };
    h.insert("x-forwarded-ssl", HeaderValue::from_static(ssl));
    let via = if parts.version == Version::HTTP_2 {
        "2 fly.io"
    } else {
        "1.1 fly.io"
    };
    h.append(header::VIA, HeaderValue::from_static(via));
    h
}

fn is_json_replay(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(replay::JSON_CONTENT_TYPE))
}

impl Shared {
    /// Handles one client request end to end.
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = new_request_id(&self.config.region);
        let version = req.version();
        let is_upgrade = is_upgrade_request(version, req.headers());
        let upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, incoming) = req.into_parts();
        let headers = forwarded_headers(&parts, &conn, &request_id, &self.config, is_upgrade);
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut resp = match body::buffer(incoming, self.config.replay_body_limit).await {
            Ok(body) => {
                let mut ctx = Ctx {
                    request_id: request_id.clone(),
                    method: parts.method.clone(),
                    pq,
                    headers,
                    body,
                    upgrade,
                    is_upgrade,
                    fallback: false,
                    served_by: None,
                };
                let resp = self.route(&mut ctx).await;
                if self.config.log_requests {
                    eprintln!(
                        "flysim: {} {} -> {} by {} in {:?} ({request_id})",
                        parts.method,
                        parts.uri,
                        resp.status().as_u16(),
                        ctx.served_by.as_deref().unwrap_or("the proxy"),
                        started.elapsed()
                    );
                }
                resp
            }
            Err(e) => {
                let mut resp = Response::new(body::full(format!(
                    "flysim: could not read the request body: {}\n",
                    error_chain(&e)
                )));
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                resp
            }
        };
        let h = resp.headers_mut();
        h.insert(FLY_REQUEST_ID, header_value(&request_id));
        let via = if version == Version::HTTP_2 {
            "2 fly.io"
        } else {
            "1.1 fly.io"
        };
        h.append(header::VIA, HeaderValue::from_static(via));
        resp
    }

    /// The first delivery, as the client's routing headers ask.
    fn initial_route(headers: &HeaderMap) -> Route {
        let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        if let Some(v) = headers.get(FORCE_INSTANCE) {
            Route::Force(text(v))
        } else if let Some(v) = headers.get(PREFER_INSTANCE) {
            Route::Prefer {
                id: text(v),
                exclude: Vec::new(),
                mark: true,
                timeout: None,
            }
        } else {
            Route::Balanced {
                exclude: Vec::new(),
            }
        }
    }

    async fn route(&self, ctx: &mut Ctx) -> Response<ProxyBody> {
        let first = Self::initial_route(&ctx.headers);
        let mut delivered = match self.deliver(ctx, first, HeaderMap::new()).await {
            Ok(d) => d,
            Err(e) => return self.delivery_error(ctx, e),
        };
        let mut replays = 0usize;
        loop {
            let Delivered { machine, resp } = delivered;
            let (result, quoted) = match self.classify(resp).await {
                Classified::Final(resp) => return self.finish(ctx, &machine, resp),
                Classified::Replay { result, quoted } => (result, quoted),
            };
            self.count(&machine, Counter::ReplaySent);
            let d = match result {
                Ok(d) => d,
                Err(problem) => {
                    return self.error(
                        ctx,
                        "PA03",
                        &machine,
                        format!("PA03 Invalid fly-replay: {problem} in {quoted} (from Machine {machine})"),
                    );
                }
            };
            if ctx.fallback {
                return self.error(
                    ctx,
                    "PA03",
                    &machine,
                    format!(
                        "PA03 Invalid fly-replay: a fallback request (one carrying fly-replay-failed) cannot replay again, but Machine {machine} answered {quoted}"
                    ),
                );
            }
            if let Some(app) = d.app.as_deref().filter(|a| *a != self.config.app_name) {
                return self.error(
                    ctx,
                    "PA04",
                    &machine,
                    format!(
                        "PA04 Replay target app not found: Machine {machine} replayed to app \"{app}\" in {quoted}, but this simulator runs only app \"{}\"",
                        self.config.app_name
                    ),
                );
            }
            if !ctx.body.replayable() {
                return self.error(
                    ctx,
                    "PA01",
                    &machine,
                    format!(
                        "PA01 request body too large to replay: bodies larger than {} bytes (1 MB) cannot be replayed, but Machine {machine} answered {quoted} to a {} {} with a larger body",
                        self.config.replay_body_limit, ctx.method, ctx.pq
                    ),
                );
            }
            if replays >= MAX_REPLAYS {
                return self.error(
                    ctx,
                    "PA02",
                    &machine,
                    format!(
                        "PA02 too many replays: fly-replay was returned more than {MAX_REPLAYS} times for one request (last by Machine {machine}: {quoted})"
                    ),
                );
            }
            replays += 1;

            if let Some(t) = &d.transform {
                if let Some(path) = &t.path {
                    ctx.pq = path.clone();
                }
                t.apply_headers(&mut ctx.headers);
            }
            let mut src = format!(
                "instance={machine};region={};t={}",
                self.config.region,
                micros_since_epoch()
            );
            if let Some(state) = &d.state {
                src.push_str(";state=");
                src.push_str(state);
            }
            let mut extra = HeaderMap::new();
            extra.insert(FLY_REPLAY_SRC, header_value(&src));
            self.record(
                EventKind::Replay,
                None,
                Some(&ctx.request_id),
                Some(&machine),
                format!(
                    "Machine {machine} replayed {} {} with {quoted}",
                    ctx.method, ctx.pq
                ),
            );

            let exclude = if d.elsewhere {
                vec![machine.clone()]
            } else {
                Vec::new()
            };
            let route = if let Some(id) = &d.instance {
                Route::Strict {
                    id: id.clone(),
                    timeout: d.timeout,
                }
            } else if let Some(id) = &d.prefer_instance {
                Route::Prefer {
                    id: id.clone(),
                    exclude,
                    mark: true,
                    timeout: d.timeout,
                }
            } else {
                Route::Balanced { exclude }
            };
            let t0 = Instant::now();
            let outcome = if self.region_ok(&d) {
                self.deliver(ctx, route, extra).await
            } else {
                Err(DeliverError::NoCandidate)
            };
            delivered = match outcome {
                Ok(next) => {
                    self.count(&next.machine, Counter::ReplayReceived);
                    next
                }
                Err(DeliverError::NoCandidate) => {
                    let target = d.instance.clone().or_else(|| d.prefer_instance.clone());
                    match self
                        .replay_failed(ctx, &machine, &d, target, Reason::NoCandidate, t0)
                        .await
                    {
                        Ok(next) => next,
                        Err(resp) => return resp,
                    }
                }
                Err(DeliverError::Unreachable { id, reason }) => {
                    match self
                        .replay_failed(ctx, &machine, &d, Some(id), reason, t0)
                        .await
                    {
                        Ok(next) => next,
                        Err(resp) => return resp,
                    }
                }
                Err(e) => return self.delivery_error(ctx, e),
            };
        }
    }

    fn region_ok(&self, d: &ReplayDirective) -> bool {
        let Some(regions) = &d.region else {
            return true;
        };
        let mine = self.config.region.as_str();
        regions.iter().any(|r| {
            r == "any"
                || r == mine
                || AREAS
                    .iter()
                    .any(|(alias, codes)| alias == r && codes.contains(&mine))
        })
    }

    /// A replay could not be delivered: either a fallback request or an empty 502.
    async fn replay_failed(
        &self,
        ctx: &mut Ctx,
        source: &str,
        d: &ReplayDirective,
        target: Option<String>,
        reason: Reason,
        t0: Instant,
    ) -> Result<Delivered, Response<ProxyBody>> {
        let elapsed_ms = t0.elapsed().as_millis();
        let what = match &target {
            Some(id) => format!("Machine {id}"),
            None => "any Machine".to_owned(),
        };
        self.record(
            EventKind::ReplayFailed,
            None,
            Some(&ctx.request_id),
            Some(source),
            format!(
                "replay from Machine {source} to {what} failed after {elapsed_ms} ms (reason {}){}",
                reason.as_str(),
                match d.fallback {
                    Some(f) => format!("; falling back ({})", f.as_str()),
                    None => "; answering 502".to_owned(),
                }
            ),
        );
        let Some(fallback) = d.fallback else {
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            return Err(resp);
        };
        let mut failed = String::new();
        if let Some(id) = &target {
            failed.push_str("instance=");
            failed.push_str(id);
            failed.push(';');
        }
        failed.push_str(&format!(
            "app={};region={};replay_source={source};reason={};elapsed_ms={elapsed_ms}",
            d.app.as_deref().unwrap_or(&self.config.app_name),
            self.config.region,
            reason.as_str()
        ));
        let mut extra = HeaderMap::new();
        extra.insert(FLY_REPLAY_FAILED, header_value(&failed));
        ctx.fallback = true;
        self.record(
            EventKind::Fallback,
            None,
            Some(&ctx.request_id),
            Some(source),
            format!(
                "fallback {} to Machine {source} with fly-replay-failed: {failed}",
                fallback.as_str()
            ),
        );
        let route = match fallback {
            Fallback::ForceSelf => Route::SelfOnly(source.to_owned()),
            Fallback::PreferSelf => Route::Prefer {
                id: source.to_owned(),
                exclude: Vec::new(),
                mark: false,
                timeout: None,
            },
        };
        match self.deliver(ctx, route, extra).await {
            Ok(next) => {
                self.count(&next.machine, Counter::FallbackReceived);
                Ok(next)
            }
            Err(e) => Err(self.delivery_error(ctx, e)),
        }
    }

    /// Gets the request to a Machine according to `route` and returns its response.
    async fn deliver(
        &self,
        ctx: &mut Ctx,
        mut route: Route,
        mut extra: HeaderMap,
    ) -> Result<Delivered, DeliverError> {
        loop {
            match route {
                Route::Balanced { mut exclude } => loop {
                    let (id, addr) = match self.pick(&exclude) {
                        Pick::Started(id, addr) => (id, addr),
                        Pick::Start(id) => match self.ensure_started(&id).await {
                            Ok(addr) => (id, addr),
                            Err(_) => {
                                exclude.push(id);
                                continue;
                            }
                        },
                        Pick::None => return Err(DeliverError::NoCandidate),
                    };
                    match self.send(ctx, Conn::Pool(addr), &extra).await {
                        Ok(resp) => return Ok(Delivered { machine: id, resp }),
                        Err(SendError::Connect(_)) => exclude.push(id),
                        Err(SendError::BodyUsed) => return Err(DeliverError::BodyUsed),
                        Err(SendError::Other(error)) => {
                            return Err(DeliverError::Upstream { machine: id, error });
                        }
                    }
                },
                Route::Force(id) => {
                    return self
                        .deliver_exact(ctx, id, &extra, "fly-force-instance-id")
                        .await;
                }
                Route::SelfOnly(id) => {
                    return self
                        .deliver_exact(ctx, id, &extra, "fallback=force_self")
                        .await;
                }
                Route::Strict { id, timeout } => {
                    let conn = match self.reach(&id, timeout, true).await {
                        Ok(conn) => conn,
                        Err(reason) => return Err(DeliverError::Unreachable { id, reason }),
                    };
                    return match self.send(ctx, conn, &extra).await {
                        Ok(resp) => Ok(Delivered { machine: id, resp }),
                        Err(SendError::Connect(_)) => Err(DeliverError::Unreachable {
                            id,
                            reason: Reason::NoCandidate,
                        }),
                        Err(SendError::BodyUsed) => Err(DeliverError::BodyUsed),
                        Err(SendError::Other(error)) => {
                            Err(DeliverError::Upstream { machine: id, error })
                        }
                    };
                }
                Route::Prefer {
                    id,
                    exclude,
                    mark,
                    timeout,
                } => {
                    if let Ok(conn) = self.reach(&id, timeout, false).await {
                        match self.send(ctx, conn, &extra).await {
                            Ok(resp) => return Ok(Delivered { machine: id, resp }),
                            Err(SendError::Connect(_)) => {}
                            Err(SendError::BodyUsed) => return Err(DeliverError::BodyUsed),
                            Err(SendError::Other(error)) => {
                                return Err(DeliverError::Upstream { machine: id, error });
                            }
                        }
                    }
                    if mark {
                        extra.insert(PREFERRED_UNAVAILABLE, header_value(&id));
                        self.record(
                            EventKind::PreferredUnavailable,
                            None,
                            Some(&ctx.request_id),
                            Some(&id),
                            format!(
                                "preferred Machine {id} is unavailable; routing {} {} to another Machine",
                                ctx.method, ctx.pq
                            ),
                        );
                    }
                    route = Route::Balanced { exclude };
                }
            }
        }
    }

    /// Delivery to exactly one Machine, with no fallback.
    async fn deliver_exact(
        &self,
        ctx: &mut Ctx,
        id: String,
        extra: &HeaderMap,
        what: &str,
    ) -> Result<Delivered, DeliverError> {
        let not_found = |id: String, why: &str| DeliverError::NotFound {
            what: format!("{what} names Machine {id}, {why}"),
            id,
        };
        let addr = match self.lookup(&id) {
            Lookup::Gone => {
                return Err(not_found(
                    id,
                    "which is not a Machine of this app (destroyed or unknown)",
                ));
            }
            Lookup::Started | Lookup::Stopped => match self.ensure_started(&id).await {
                Ok(addr) => addr,
                Err(e) => return Err(not_found(id, &format!("which could not be started ({e})"))),
            },
        };
        match self.send(ctx, Conn::Pool(addr), extra).await {
            Ok(resp) => Ok(Delivered { machine: id, resp }),
            Err(SendError::Connect(e)) => Err(not_found(
                id,
                &format!("which refused the connection ({e})"),
            )),
            Err(SendError::BodyUsed) => Err(DeliverError::BodyUsed),
            Err(SendError::Other(error)) => Err(DeliverError::Upstream { machine: id, error }),
        }
    }

    /// Starts (if needed) and connects to a Machine within `timeout`. A destroyed or
    /// unknown Machine fails after `dead_target_delay` when `slow_if_gone`.
    async fn reach(
        &self,
        id: &str,
        timeout: Option<Duration>,
        slow_if_gone: bool,
    ) -> Result<Conn, Reason> {
        let attempt = async {
            match self.lookup(id) {
                Lookup::Gone => {
                    if slow_if_gone {
                        tokio::time::sleep(self.config.dead_target_delay).await;
                    }
                    Err(Reason::NoCandidate)
                }
                Lookup::Started | Lookup::Stopped => {
                    let addr = self
                        .ensure_started(id)
                        .await
                        .map_err(|_| Reason::NoCandidate)?;
                    if timeout.is_some() {
                        // The timeout covers making the connection only.
                        TcpStream::connect(addr)
                            .await
                            .map(Conn::Stream)
                            .map_err(|_| Reason::NoCandidate)
                    } else {
                        Ok(Conn::Pool(addr))
                    }
                }
            }
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, attempt)
                .await
                .unwrap_or(Err(Reason::Timeout)),
            None => attempt.await,
        }
    }

    /// One delivery of the request: its body (a fresh copy when buffered),
    /// the forwarded headers plus `extra`.
    fn build(&self, ctx: &mut Ctx, extra: &HeaderMap) -> Result<Request<ProxyBody>, SendError> {
        let body = ctx.body.take().ok_or(SendError::BodyUsed)?;
        let mut headers = ctx.headers.clone();
        for (name, value) in extra {
            headers.insert(name.clone(), value.clone());
        }
        let mut req = Request::new(body);
        *req.method_mut() = ctx.method.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Ok(req)
    }

    /// Sends one delivery of the request over `conn`.
    ///
    /// A pooled (kept-alive) connection can be closed by the Machine just as
    /// a request is sent on it (it shuts down, or it closes idle
    /// connections): the request fails with no answer, though the Machine
    /// never read it. Like proxies do, and as HTTP allows for idempotent
    /// methods (RFC 9110, section 9.2.2), such a request is sent once more on
    /// a new connection when its method is idempotent and its body buffered;
    /// any other request fails (a 502).
    async fn send(
        &self,
        ctx: &mut Ctx,
        conn: Conn,
        extra: &HeaderMap,
    ) -> Result<Response<Incoming>, SendError> {
        let mut req = self.build(ctx, extra)?;
        let stream = match conn {
            Conn::Pool(addr) if !ctx.is_upgrade => {
                let uri = Uri::builder()
                    .scheme("http")
                    .authority(addr.to_string())
                    .path_and_query(ctx.pq.clone())
                    .build()
                    .map_err(|e| SendError::Other(e.to_string()))?;
                *req.uri_mut() = uri;
                let e = match self.client.request(req).await {
                    Ok(resp) => return Ok(resp),
                    Err(e) if e.is_connect() => return Err(SendError::Connect(error_chain(&e))),
                    Err(e) => e,
                };
                if !(ctx.method.is_idempotent() && ctx.body.replayable() && no_answer(&e)) {
                    return Err(SendError::Other(error_chain(&e)));
                }
                self.note_retry(ctx, addr, &e);
                req = self.build(ctx, extra)?;
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(|e| SendError::Connect(e.to_string()))?;
                return self
                    .send_on(stream, req, &ctx.pq)
                    .await
                    .map_err(|e| SendError::Other(error_chain(&e)));
            }
            Conn::Pool(addr) => TcpStream::connect(addr)
                .await
                .map_err(|e| SendError::Connect(e.to_string()))?,
            Conn::Stream(stream) => stream,
        };
        // A dedicated connection (upgrades, or a connection made under a
        // timeout): a Machine closing its listener can reset it before reading
        // the request; an idempotent one is sent again as above.
        let addr = stream.peer_addr().ok();
        let e = match self.send_on(stream, req, &ctx.pq).await {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        let Some(addr) =
            addr.filter(|_| ctx.method.is_idempotent() && ctx.body.replayable() && no_answer(&e))
        else {
            return Err(SendError::Other(error_chain(&e)));
        };
        self.note_retry(ctx, addr, &e);
        let req = self.build(ctx, extra)?;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        self.send_on(stream, req, &ctx.pq)
            .await
            .map_err(|e| SendError::Other(error_chain(&e)))
    }

    /// Logs and counts a request sent again on a new connection.
    fn note_retry(&self, ctx: &Ctx, addr: SocketAddr, e: &(dyn StdError + 'static)) {
        tracing::info!(
            request_id = %ctx.request_id,
            "sending {} {} again on a new connection to {addr}: {}",
            ctx.method,
            ctx.pq,
            error_chain(e)
        );
        if let Some(id) = self.id_at(addr) {
            self.count(&id, Counter::Retry);
        }
    }

    /// Sends `req` on its own new connection (upgrades are kept going).
    async fn send_on(
        &self,
        stream: TcpStream,
        mut req: Request<ProxyBody>,
        pq: &PathAndQuery,
    ) -> Result<Response<Incoming>, hyper::Error> {
        let _ = stream.set_nodelay(true);
        *req.uri_mut() = Uri::from(pq.clone());
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        sender.send_request(req).await
    }

    /// Whether a Machine's response is a replay instruction, and which.
    async fn classify(&self, resp: Response<Incoming>) -> Classified {
        let json = is_json_replay(resp.headers());
        let headers: Vec<HeaderValue> =
            resp.headers().get_all(FLY_REPLAY).iter().cloned().collect();
        if !json && headers.is_empty() {
            return Classified::Final(resp);
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let quoted = headers.first().map_or_else(
                || "a JSON replay".to_owned(),
                |h| replay::quote_for_message(h.as_bytes()),
            );
            return Classified::Replay {
                result: Err(ReplayError::new(
                    "a 101 Switching Protocols response cannot be replayed (answer the upgrade request with an ordinary status and fly-replay)",
                )),
                quoted,
            };
        }
        if json {
            let body = Limited::new(resp.into_body(), MAX_JSON_REPLAY)
                .collect()
                .await;
            return match body {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    Classified::Replay {
                        result: replay::parse_json(&bytes),
                        quoted: format!("JSON body {}", replay::quote_for_message(&bytes)),
                    }
                }
                Err(e) => Classified::Replay {
                    result: Err(ReplayError::new(format!(
                        "the JSON replay body could not be read or is larger than {MAX_JSON_REPLAY} bytes ({})",
                        error_chain(&*e)
                    ))),
                    quoted: "a JSON replay body".to_owned(),
                },
            };
        }
        if headers.len() > 1 {
            let joined: Vec<String> = headers
                .iter()
                .map(|h| replay::quote_for_message(h.as_bytes()))
                .collect();
            return Classified::Replay {
                result: Err(ReplayError::new("more than one fly-replay header")),
                quoted: joined.join(" and "),
            };
        }
        let raw = headers[0].as_bytes();
        Classified::Replay {
            result: replay::parse_header_bytes(raw),
            quoted: replay::quote_for_message(raw),
        }
    }

    /// Passes a final response back to the client (and connects an upgrade).
    fn finish(
        &self,
        ctx: &mut Ctx,
        machine: &str,
        mut resp: Response<Incoming>,
    ) -> Response<ProxyBody> {
        self.count(machine, Counter::Served);
        ctx.served_by = Some(machine.to_owned());
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upgrade_header = resp.headers().get(header::UPGRADE).cloned();
        if switching && let Some(client) = ctx.upgrade.take() {
            let backend = hyper::upgrade::on(&mut resp);
            let shutdown = self.shutdown.subscribe();
            tokio::spawn(tunnel(client, backend, shutdown));
        }
        let (mut parts, incoming) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if switching {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(u) = upgrade_header {
                parts.headers.insert(header::UPGRADE, u);
            }
        }
        Response::from_parts(parts, body::incoming(incoming))
    }

    /// A proxy error response with a `fly-error` code and a message body.
    fn error(&self, ctx: &Ctx, code: &str, machine: &str, message: String) -> Response<ProxyBody> {
        self.error_response(
            ctx,
            StatusCode::BAD_GATEWAY,
            Some(code),
            Some(machine),
            message,
        )
    }

    fn error_response(
        &self,
        ctx: &Ctx,
        status: StatusCode,
        code: Option<&str>,
        machine: Option<&str>,
        message: String,
    ) -> Response<ProxyBody> {
        self.record(
            EventKind::ProxyError,
            code,
            Some(&ctx.request_id),
            machine,
            message.clone(),
        );
        let mut resp = Response::new(body::full(format!("{message}\n")));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(code) = code {
            h.insert(FLY_ERROR, header_value(code));
        }
        resp
    }

    fn delivery_error(&self, ctx: &Ctx, e: DeliverError) -> Response<ProxyBody> {
        match e {
            DeliverError::NoCandidate => self.error_response(
                ctx,
                StatusCode::BAD_GATEWAY,
                Some("PR04"),
                None,
                format!(
                    "PR04 no candidate Machine found for {} {}: no Machine of app \"{}\" is started or startable",
                    ctx.method, ctx.pq, self.config.app_name
                ),
            ),
            DeliverError::NotFound { id, what } => self.error_response(
                ctx,
                StatusCode::BAD_GATEWAY,
                Some("PR02"),
                Some(&id),
                format!("PR02 Machine not found: {what}"),
            ),
            DeliverError::Unreachable { id, reason } => self.error_response(
                ctx,
                StatusCode::BAD_GATEWAY,
                Some("PR04"),
                Some(&id),
                format!("PR04 Machine {id} could not be reached ({})", reason.as_str()),
            ),
            DeliverError::BodyUsed => self.error_response(
                ctx,
                StatusCode::BAD_GATEWAY,
                Some("PA01"),
                None,
                format!(
                    "PA01 the request body (larger than {} bytes) was already streamed to a Machine and cannot be sent again",
                    self.config.replay_body_limit
                ),
            ),
            DeliverError::Upstream { machine, error } => self.error_response(
                ctx,
                StatusCode::BAD_GATEWAY,
                None,
                Some(&machine),
                format!("error talking to Machine {machine}: {error}"),
            ),
        }
    }
}

/// Copies bytes both ways between an upgraded client connection and an upgraded
/// Machine connection.
async fn tunnel(
    client: OnUpgrade,
    backend: OnUpgrade,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (client, backend) = tokio::join!(client, backend);
    let (Ok(client), Ok(backend)) = (client, backend) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut backend) => {}
        _ = shutdown.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_fly_ones() {
        let id = new_request_id("iad");
        assert_eq!(id.len(), 30);
        assert!(id.ends_with("-iad"));
        assert!(
            id[..26]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn json_content_type_detection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/Vnd.Fly.Replay+JSON; charset=utf-8"),
        );
        assert!(is_json_replay(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_json_replay(&h));
    }
}
