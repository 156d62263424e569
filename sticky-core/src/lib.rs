//! Sans-IO session affinity for apps on [Fly.io](https://fly.io) with several Machines.
//!
//! `sticky-core` decides, for one request, whether this Machine should serve
//! it or whether Fly's proxy should replay it to the Machine the user is
//! pinned to. It does no I/O: the request comes in as a borrowed
//! [`RequestView`], the Machine's identity as an [`Env`] (read from the
//! process only if you call [`Env::from_process`]), the live Machine set
//! for key affinity through [`Sticky::set_peers`], and time as a number:
//! [`Sticky::decide_at`] takes `now`; the convenience [`Sticky::decide`]
//! reads the system clock, and only when signed cookies need it
//! ([`Sticky::needs_clock`]). Framework adapters (`sticky-axum`,
//! `sticky-actix-web`, `sticky-warp`, `sticky-rocket`, `sticky-poem`) map the
//! [`Decision`] onto their framework.
//!
//! ```
//! use sticky_core::{Env, Outcome, Sticky};
//!
//! // Once, at start-up (Env::from_process() on a real Machine).
//! let sticky = Sticky::builder()
//!     .exclude(["/health"])
//!     .build(Env::machine("148ed599c14189"))?;
//!
//! // Per request: a browser pinned to another Machine.
//! let req = http::Request::get("/cart")
//!     .header("cookie", "theme=dark; fly-machine-id=90801679a10038")
//!     .body(())
//!     .unwrap();
//! match sticky.decide(&req).outcome() {
//!     Outcome::Replay(reply, reason) => {
//!         assert_eq!(reply.status(), 307);
//!         assert_eq!(reply.fly_replay(), Some("prefer_instance=90801679a10038"));
//!         assert_eq!(reason.row(), 7);
//!     }
//!     other => panic!("expected a replay, got {other:?}"),
//! }
//! # Ok::<(), sticky_core::ConfigError>(())
//! ```
//!
//! # The decision table
//!
//! S is this Machine, T the target found in the request.
//!
//! | # | situation | decision |
//! |---|---|---|
//! | 1 | not on Fly (no Machine ID) | `Stick` |
//! | 2 | path not included or excluded, method skipped, skip predicate, CORS preflight | `Stick` |
//! | 3 | no valid target | `SetCookie(S)` |
//! | 4 | T == S | `Stick` (`SetCookie` when a refresh is due) |
//! | 5 | T != S, request already replayed (`fly-replay-src`, `fly-replay-failed`, `fly-preferred-instance-unavailable`, `fly-replay-cache-status` other than `hit` and `bypass`) | [`Unavailable`] policy: re-pin here, or 503 |
//! | 6 | T != S, body cannot be replayed (over 1 MB, or unknown length unless [`Builder::replay_unknown_length`]) | [`LargeBody`] policy: serve here, or 413 |
//! | 7 | T != S | `Replay` with `fly-replay: prefer_instance=T` (307) |
//! | 8 | draining | new and pinned-here requests `Replay` with `elsewhere=true` |
//!
//! # The adapter contract
//!
//! Every adapter does the same three things, and nothing else:
//!
//! 1. builds a [`RequestView`] over its framework's request without copying
//!    the header map, and calls [`Sticky::decide`] before anything with
//!    side effects runs (the middleware is outermost);
//! 2. maps [`Decision::into_action`]'s two arms: [`Action::Run`] runs the
//!    handler and adds [`Finish::headers`] to its response (the pin cookie,
//!    `Cache-Control: private` if the response has none, `Connection:
//!    close` while draining); [`Action::Answer`] does not run the handler
//!    and sends [`Answer`]'s status and headers with an empty body, after
//!    reading the request body as below;
//! 3. a request its own predicate exempts gets [`Sticky::skipped`], mapped
//!    the same way.
//!
//! ## Reading the body before a replay
//!
//! A replay is answered once the request's body has been read and dropped:
//! [`Answer::body_to_read`] bytes, the declared `Content-Length` (at most
//! 1 MB, since larger bodies are never replayed). A server that answers
//! early and closes the connection with the body unread resets it, and the
//! proxy can lose the answer (RFC 9112, section 9.6); read, the connection
//! stays usable.
//!
//! ## Draining on shutdown
//!
//! Fly signals a Machine before stopping it. Call [`Sticky::drain`] on that
//! signal and keep serving for a grace period: requests pinned here, and
//! new ones, are replayed elsewhere with `elsewhere=true` (row 8), and the
//! Machine that receives them re-pins them (row 5). While draining, every
//! answer carries `Connection: close`, so the proxy's kept-alive
//! connections to this Machine close one by one and none is still open,
//! and reused, at the instant the server exits (a request sent on a
//! connection as it closes fails). On Fly, set `kill_signal = "SIGTERM"` in
//! `fly.toml` (the default is SIGINT) and a `kill_timeout` longer than the
//! grace period (the default is 5 s). Every example in the repository does
//! this (grace from `DRAIN_SECONDS`; SIGINT stops at once), and its tests
//! check it on the running binary.
//!
//! ## On request types of your own
//!
//! A server that is not on `http` types (a proxy, an embedded server)
//! implements [`RequestView`] over its own request and adds the headers of
//! [`Finish::headers`] and [`Answer::headers`] to its own response. Here,
//! over a request whose headers are a `Vec<(String, Vec<u8>)>`
//! (`examples/hyper` is the same on hyper's types):
//!
//! ```
//! use std::ops::ControlFlow;
//! use sticky_core::{Action, Env, RequestView, Sticky};
//!
//! struct MyRequest {
//!     method: String,
//!     target: String, // as on the request line: path and query
//!     headers: Vec<(String, Vec<u8>)>,
//! }
//!
//! struct MyResponse {
//!     status: u16,
//!     headers: Vec<(String, Vec<u8>)>,
//!     body: Vec<u8>,
//! }
//!
//! impl RequestView for MyRequest {
//!     fn method(&self) -> &str {
//!         &self.method
//!     }
//!     fn path(&self) -> &str {
//!         self.target.split_once('?').map_or(&self.target, |(path, _)| path)
//!     }
//!     fn query(&self) -> Option<&str> {
//!         self.target.split_once('?').map(|(_, query)| query)
//!     }
//!     fn header_values<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>) {
//!         // `name` is lowercase; the client's spelling may not be. Every
//!         // field counts, in order (a `Cookie` may come in several).
//!         for (field, value) in &self.headers {
//!             if field.eq_ignore_ascii_case(name) && each(value).is_break() {
//!                 return;
//!             }
//!         }
//!     }
//! }
//!
//! fn handler(_req: &MyRequest) -> MyResponse {
//!     MyResponse { status: 200, headers: Vec::new(), body: b"hello".to_vec() }
//! }
//!
//! fn serve(sticky: &Sticky, req: MyRequest) -> MyResponse {
//!     match sticky.decide(&req).into_action() {
//!         Action::Run(finish) => {
//!             let mut res = handler(&req);
//!             let has_cache_control =
//!                 res.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("cache-control"));
//!             for (name, value) in finish.headers(res.status, has_cache_control) {
//!                 // `connection: close` (draining) replaces the handler's own.
//!                 if name == "connection" {
//!                     res.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
//!                 }
//!                 res.headers.push((name.to_owned(), value.to_vec()));
//!             }
//!             res
//!         }
//!         Action::Answer(answer) => {
//!             // Here a streaming server reads and drops
//!             // `answer.body_to_read()` bytes of the request body first.
//!             let headers = answer.headers().map(|(n, v)| (n.to_owned(), v.to_vec())).collect();
//!             MyResponse { status: answer.status(), headers, body: Vec::new() }
//!         }
//!     }
//! }
//!
//! let sticky = Sticky::builder().build(Env::machine("148ed599c14189"))?;
//! let get = |cookie: &str| MyRequest {
//!     method: "GET".into(),
//!     target: "/cart?page=2".into(),
//!     headers: vec![("Cookie".into(), cookie.as_bytes().to_vec())],
//! };
//!
//! // Pinned to another Machine: the handler does not run.
//! let res = serve(&sticky, get("fly-machine-id=90801679a10038"));
//! assert_eq!(res.status, 307);
//! assert_eq!(res.headers, [("fly-replay".to_owned(), b"prefer_instance=90801679a10038".to_vec())]);
//! assert!(res.body.is_empty());
//!
//! // A first visit is served here and pinned here.
//! let res = serve(&sticky, get("theme=dark"));
//! assert_eq!((res.status, &res.body[..]), (200, &b"hello"[..]));
//! let names: Vec<&str> = res.headers.iter().map(|(n, _)| n.as_str()).collect();
//! assert_eq!(names, ["set-cookie", "cache-control"]);
//! assert!(res.headers[0].1.starts_with(b"fly-machine-id=148ed599c14189;"));
//!
//! // Draining: pinned-here requests go elsewhere, and the connection closes.
//! sticky.drain();
//! let res = serve(&sticky, get("fly-machine-id=148ed599c14189"));
//! assert_eq!(res.status, 307);
//! assert_eq!(res.headers, [
//!     ("fly-replay".to_owned(), b"elsewhere=true".to_vec()),
//!     ("connection".to_owned(), b"close".to_vec()),
//! ]);
//! # Ok::<(), sticky_core::ConfigError>(())
//! ```
//!
//! # Fly's replay cache
//!
//! With a `replay_cache` rule in `fly.toml` keyed by the pin cookie (or a
//! key header), Fly's proxy remembers a replay and routes the user's next
//! requests straight home: no extra hop. [`ReplayCache`] tells the engine,
//! which then refuses settings that would make its replays uncacheable
//! (`state`, `timeout`, `fallback`). A request the cache routed
//! (`fly-replay-cache-status: hit`) reached no other Machine, so it is not
//! "already replayed": a draining Machine still moves it (row 8), and a
//! request the cache sent to a Machine it is not pinned to (a key whose
//! owner changed since the entry was made, or a pin-cookie entry that a
//! key's replay made under a cookie rule covering the key's path) is
//! replayed once more to its Machine with `fly-replay-cache: invalidate`,
//! so the wrong entry goes rather than costing a hop per request. With
//! [`ReplayCache::Path`], a room or document key from
//! [`KeySource::PathSegment`] makes the replay name its path pattern, so
//! every user of that room goes straight to its Machine.
//!
//! # Metrics
//!
//! The engine counts its decisions by outcome and reason, for operators:
//! [`Sticky::metrics`] is a [`MetricsSnapshot`], iterable as
//! `(OutcomeKind, Reason, count)` and rendered in Prometheus' text format
//! (`sticky_decisions_total{outcome,reason,source,detail}` and the gauge
//! `sticky_draining`). Counting is on by default: one relaxed atomic add
//! per decision into a table allocated once at start-up and shared by every
//! clone, nothing allocated per request, no dependency
//! ([`Builder::count_decisions`] turns it off). Serve it on a path you
//! exclude, so that a scrape is never replayed:
//!
//! ```
//! use sticky_core::{Env, MetricsSnapshot, Sticky};
//!
//! let sticky = Sticky::builder()
//!     .exclude(["/health", "/metrics"])
//!     .build(Env::machine("148ed599c14189"))?;
//! // In the app's `GET /metrics` handler (pinned elsewhere, yet served here):
//! let scrape = http::Request::get("/metrics")
//!     .header("cookie", "fly-machine-id=90801679a10038")
//!     .body(())
//!     .unwrap();
//! assert!(sticky.decide(&scrape).short_circuit().is_none());
//! let body = sticky.metrics().to_string();
//! let content_type = MetricsSnapshot::CONTENT_TYPE;
//! assert!(body.contains(r#"sticky_decisions_total{outcome="stick",reason="path_excluded"} 1"#));
//! # let _ = content_type;
//! # Ok::<(), sticky_core::ConfigError>(())
//! ```
//!
//! On Fly, a `[metrics]` section in `fly.toml` (`port`, `path = "/metrics"`)
//! makes Fly's Prometheus scrape every Machine and label the series with
//! it; the Machine a replay went to is not a label (it would grow a series
//! per Machine ever named).
//!
//! # Safety of the `fly-replay` header
//!
//! Only a target that passed the [`TargetFormat`] reaches a header, and no
//! format can admit `;`, `,`, `=`, `"`, `\`, whitespace or control bytes, so
//! a value such as `x;app=other` (raw or percent-encoded) can never add a
//! field. Nothing is percent-decoded. Cookies are scanned by hand for the one
//! name, in every `Cookie` field, without allocating.
//!
//! # Features
//!
//! - `http` (default): [`RequestView`] for `http` 1.x requests, [`HttpView`],
//!   and conversions of the outputs to `http` types.
//! - `signed`: HMAC-signed cookies with key rotation, maximum lifetime and
//!   idle timeout.
//! - `tracing`: a debug-level event per decision.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod compile;
mod config;
mod decision;
mod engine;
mod env;
mod filter;
mod find;
mod keys;
mod metrics;
mod render;
mod seen;
#[cfg(feature = "signed")]
mod signed;
mod target;
mod view;

pub use config::{
    Builder, ConfigError, DEFAULT_COOKIE_NAME, DEFAULT_QUERY_PARAM, Fallback, LargeBody,
    MAX_REPLAY_BODY, Refresh, Replay, ReplayCache, SameSite, Secure, Unavailable,
};
pub use decision::{
    Action, Answer, BodyProblem, Decision, Finish, Marker, Outcome, Reason, Rejected, SetCookie,
    ShortCircuit,
};
pub use engine::{READ_HEADERS, Sticky};
pub use env::Env;
pub use keys::{KeyFn, KeySource, Peer, PeerSet};
pub use metrics::{MetricsSnapshot, OutcomeKind};
pub use target::{MAX_TARGET_LEN, Source, TargetFormat};
pub use view::{HeaderNames, RequestView};
#[cfg(feature = "http")]
pub use view::{HttpView, http_header_values, http_header_values_of};
