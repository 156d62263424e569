//! The request path: a client's request in, the Machine's response out.
//!
//! It reads the request, asks the planner where it goes ([`plan`]), delivers
//! it ([`deliver`](crate::deliver)), reads each answer (a final response or a
//! `fly-replay`), follows replays and fallbacks as planned, and answers errors
//! through the one mapping in [`errors`].

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::{self, ProxyBody};
use crate::cache::{self, Ask, Key, Lookup, RequestKeys};
use crate::deliver::{Ctx, Delivered};
use crate::errors::{self, ProxyError};
use crate::events::EventKind;
use crate::fleet::Counter;
use crate::headers::{
    ConnInfo, FLY_REPLAY, FLY_REQUEST_ID, forwarded_headers, header_value, is_upgrade_request,
    micros_since_epoch, new_request_id, strip_hop_by_hop,
};
use crate::plan::{
    self, AfterFailure, Answer, CacheCtx, CacheOp, Cluster, OnFailure, Plan, Progress, Reason,
};
use crate::replay::{self, ReplayError};
use crate::sim::Shared;
use crate::upstream::error_chain;

/// Largest JSON replay body flysim reads.
const MAX_JSON_REPLAY: usize = 64 * 1024;

/// A Machine's answer: final, or a replay instruction (valid or not).
enum Classified {
    Final(Response<ProxyBody>),
    Replay {
        directive: Result<replay::ReplayDirective, ReplayError>,
        quoted: String,
        /// Its replay cache instruction, if any (or why it is invalid).
        cache: Result<Option<Ask>, String>,
    },
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
                    unsized_body: self.config.h2_backend
                        && !parts.headers.contains_key(header::CONTENT_LENGTH),
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

    /// What the planner knows about this simulator.
    fn cluster(&self) -> Cluster<'_> {
        Cluster {
            app_name: &self.config.app_name,
            region: &self.config.region,
            body_limit: self.config.replay_body_limit,
        }
    }

    /// Routes the request: the first delivery (by the replay cache on a
    /// hit), then every replay and fallback, applying what each replay does
    /// to the cache.
    async fn route(&self, ctx: &mut Ctx) -> Response<ProxyBody> {
        let cluster = self.cluster();
        let (keys, lookup) = {
            let now = self.cache_now();
            let mut store = self.cache();
            let keys = store.keys(&ctx.headers, ctx.pq.path());
            let lookup = store.lookup(&keys, now);
            (keys, lookup)
        };
        let bypassed = matches!(lookup, Lookup::Bypass);
        if bypassed {
            self.events.record(
                EventKind::ReplayCache,
                None,
                Some(&ctx.request_id),
                None,
                format!(
                    "{} {} bypassed the replay cache (fly-replay-cache-control: skip)",
                    ctx.method, ctx.pq
                ),
            );
        }
        let first = plan::first(&cluster, &ctx.headers, &lookup);
        let (hit, hit_failure) = match first.hit {
            Some((key, on)) => {
                self.cache().count_hit();
                (Some(key), Some(on))
            }
            None => (None, None),
        };
        let t0 = Instant::now();
        let mut delivered = match self.deliver(ctx, first.route, first.extra).await {
            Ok(d) => d,
            Err(e) => match (e.no_connection(), &hit_failure) {
                // A hit fails as the cached replay would (no fallback: none is cached).
                (Some(reason), Some(on)) => {
                    return match self.replay_failed(ctx, on, reason, t0).await {
                        Ok(_) => unreachable!("a cached replay has no fallback"),
                        Err(resp) => resp,
                    };
                }
                _ => return self.refuse(ctx, &e),
            },
        };
        let mut replays = 0usize;
        let mut miss_counted = false;
        loop {
            let Delivered { machine, resp } = delivered;
            let (directive, quoted, cache) = match self.classify(resp).await {
                Classified::Final(resp) => return self.finish(ctx, &machine, resp),
                Classified::Replay {
                    directive,
                    quoted,
                    cache,
                } => (directive, quoted, cache),
            };
            self.fleet.count(&machine, Counter::ReplaySent);
            let answer = Answer {
                machine,
                directive,
                quoted,
                cache,
            };
            let progress = Progress {
                body_replayable: ctx.body.replayable(),
                replays,
                fallback: ctx.fallback,
            };
            let now = self.cache_now();
            let planned = {
                let store = self.cache();
                let cache_ctx = CacheCtx {
                    keys: &keys,
                    rules: store.rules(),
                    hit: hit.as_ref(),
                    bypassed,
                    now,
                };
                plan::replay(
                    &cluster,
                    &progress,
                    &answer,
                    micros_since_epoch(),
                    &cache_ctx,
                )
            };
            let replay = match planned {
                Plan::Replay(replay) => replay,
                Plan::Refuse(e) => return self.refuse(ctx, &e),
            };
            replays += 1;
            if replay.cache_status == Some("miss") && !miss_counted {
                miss_counted = true;
                self.cache().count_miss();
            }
            self.apply_cache_op(
                ctx,
                &answer,
                &keys,
                hit.as_ref(),
                replay.cache_op.clone(),
                now,
            );
            if let Some(t) = &replay.transform {
                if let Some(path) = &t.path {
                    ctx.pq = path.clone();
                }
                t.apply_headers(&mut ctx.headers);
            }
            self.events.record(
                EventKind::Replay,
                None,
                Some(&ctx.request_id),
                Some(&answer.machine),
                format!(
                    "Machine {} replayed {} {} with {}",
                    answer.machine, ctx.method, ctx.pq, answer.quoted
                ),
            );
            let t0 = Instant::now();
            delivered = match self.deliver(ctx, replay.route, replay.extra).await {
                Ok(next) => {
                    self.fleet.count(&next.machine, Counter::ReplayReceived);
                    next
                }
                Err(e) => match e.no_connection() {
                    Some(reason) => {
                        match self
                            .replay_failed(ctx, &replay.on_failure, reason, t0)
                            .await
                        {
                            Ok(next) => next,
                            Err(resp) => return resp,
                        }
                    }
                    None => return self.refuse(ctx, &e),
                },
            };
        }
    }

    /// Applies what the planner said a replay does to the replay cache, and
    /// records it.
    fn apply_cache_op(
        &self,
        ctx: &Ctx,
        answer: &Answer,
        keys: &RequestKeys,
        hit: Option<&Key>,
        op: CacheOp,
        now: std::time::Instant,
    ) {
        let machine = &answer.machine;
        let what = format!("{} {}", ctx.method, ctx.pq);
        let (kind, message) = match op {
            CacheOp::Nothing => return,
            CacheOp::Remember(key, entry) => {
                let ttl = entry.expires.saturating_duration_since(now).as_secs();
                self.cache().remember(key.clone(), *entry);
                (
                    EventKind::ReplayCache,
                    format!(
                        "replay cache: remembered Machine {machine}'s replay {} of {what} under ({key}) for {ttl} s",
                        answer.quoted
                    ),
                )
            }
            CacheOp::Invalidate => {
                let removed = self.cache().invalidate(hit, keys, now);
                (
                    EventKind::ReplayCache,
                    match removed {
                        Some(key) => format!(
                            "replay cache: Machine {machine} invalidated the entry ({key}) with {}; replaying {what} the ordinary way",
                            answer.quoted
                        ),
                        None => format!(
                            "replay cache: Machine {machine} asked to invalidate with {}, but no entry routes {what}",
                            answer.quoted
                        ),
                    },
                )
            }
            CacheOp::NotCached(why) => {
                self.cache().count_not_cached();
                (
                    EventKind::ReplayNotCached,
                    format!(
                        "replay cache: Machine {machine}'s replay {} of {what} was meant to be cached but is not: {why}; it is replayed uncached",
                        answer.quoted
                    ),
                )
            }
        };
        self.events
            .record(kind, None, Some(&ctx.request_id), Some(machine), message);
    }

    /// A replay got no connection: a fallback request, or an empty 502.
    async fn replay_failed(
        &self,
        ctx: &mut Ctx,
        on: &OnFailure,
        reason: Reason,
        t0: Instant,
    ) -> Result<Delivered, Response<ProxyBody>> {
        let elapsed_ms = t0.elapsed().as_millis();
        let source = &on.source;
        let what = match &on.target {
            Some(id) => format!("Machine {id}"),
            None => "any Machine".to_owned(),
        };
        self.events.record(
            EventKind::ReplayFailed,
            None,
            Some(&ctx.request_id),
            Some(source),
            format!(
                "replay from Machine {source} to {what} failed after {elapsed_ms} ms (reason {}){}",
                reason.as_str(),
                match on.fallback {
                    Some(f) => format!("; falling back ({})", f.as_str()),
                    None => "; answering 502".to_owned(),
                }
            ),
        );
        let (how, route, extra, failed) =
            match plan::after_failure(&self.cluster(), on, reason, elapsed_ms) {
                AfterFailure::BadGateway => {
                    let mut resp = Response::new(body::empty());
                    *resp.status_mut() = StatusCode::BAD_GATEWAY;
                    resp.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                    return Err(resp);
                }
                AfterFailure::Fallback {
                    how,
                    route,
                    extra,
                    failed,
                } => (how, route, extra, failed),
            };
        ctx.fallback = true;
        self.events.record(
            EventKind::Fallback,
            None,
            Some(&ctx.request_id),
            Some(source),
            format!(
                "fallback {} to Machine {source} with fly-replay-failed: {failed}",
                how.as_str()
            ),
        );
        match self.deliver(ctx, route, extra).await {
            Ok(next) => {
                self.fleet.count(&next.machine, Counter::FallbackReceived);
                Ok(next)
            }
            Err(e) => Err(self.refuse(ctx, &e)),
        }
    }

    /// The client's answer to a proxy error.
    fn refuse(&self, ctx: &Ctx, e: &ProxyError) -> Response<ProxyBody> {
        let message = e.message(&self.cluster(), &ctx.method, &ctx.pq);
        errors::respond(&self.events, &ctx.request_id, e, message)
    }

    /// Whether a Machine's response is a replay instruction, and which.
    async fn classify(&self, resp: Response<ProxyBody>) -> Classified {
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
                directive: Err(ReplayError::new(
                    "a 101 Switching Protocols response cannot be replayed (answer the upgrade request with an ordinary status and fly-replay)",
                )),
                quoted,
                cache: Ok(None),
            };
        }
        if json {
            return match body::read_limited(resp.into_body(), MAX_JSON_REPLAY).await {
                Ok(bytes) => Classified::Replay {
                    directive: replay::parse_json(&bytes),
                    quoted: format!("JSON body {}", replay::quote_for_message(&bytes)),
                    cache: cache::ask_from_json(&bytes),
                },
                Err(e) => Classified::Replay {
                    directive: Err(ReplayError::new(format!(
                        "the JSON replay body could not be read or is larger than {MAX_JSON_REPLAY} bytes ({e})"
                    ))),
                    quoted: "a JSON replay body".to_owned(),
                    cache: Ok(None),
                },
            };
        }
        if headers.len() > 1 {
            let joined: Vec<String> = headers
                .iter()
                .map(|h| replay::quote_for_message(h.as_bytes()))
                .collect();
            return Classified::Replay {
                directive: Err(ReplayError::new("more than one fly-replay header")),
                quoted: joined.join(" and "),
                cache: Ok(None),
            };
        }
        let raw = headers[0].as_bytes();
        Classified::Replay {
            directive: replay::parse_header_bytes(raw),
            quoted: replay::quote_for_message(raw),
            cache: cache::ask_from_headers(resp.headers()),
        }
    }

    /// Passes a final response back to the client (and connects an upgrade).
    fn finish(
        &self,
        ctx: &mut Ctx,
        machine: &str,
        mut resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        self.fleet.count(machine, Counter::Served);
        ctx.served_by = Some(machine.to_owned());
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upgrade_header = resp.headers().get(header::UPGRADE).cloned();
        if switching && let Some(client) = ctx.upgrade.take() {
            let backend = hyper::upgrade::on(&mut resp);
            let ends = TunnelEnds {
                shutdown: self.shutdown.subscribe(),
                resets: self.fleet.resets(machine),
                busy: self.fleet.busy(machine),
            };
            tokio::spawn(tunnel(client, backend, ends));
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if switching {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(u) = upgrade_header {
                parts.headers.insert(header::UPGRADE, u);
            }
        }
        Response::from_parts(parts, body)
    }
}

/// What ends a tunnel besides its connections: flysim shutting down, or a
/// reset fault on its Machine; and the Machine's in-flight mark it holds
/// (an open WebSocket keeps its Machine from autostop).
struct TunnelEnds {
    shutdown: tokio::sync::watch::Receiver<bool>,
    resets: Option<tokio::sync::watch::Receiver<u64>>,
    busy: crate::fleet::Busy,
}

/// Copies bytes both ways between an upgraded client connection and an upgraded
/// Machine connection.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade, ends: TunnelEnds) {
    let TunnelEnds {
        mut shutdown,
        resets,
        busy,
    } = ends;
    let (client, backend) = tokio::join!(client, backend);
    let (Ok(client), Ok(backend)) = (client, backend) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    let reset = async {
        match resets {
            Some(mut r) => {
                let _ = r.changed().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut backend) => {}
        _ = shutdown.changed() => {}
        _ = reset => {}
    }
    drop(busy);
}

#[cfg(test)]
mod tests {
    use super::*;

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
