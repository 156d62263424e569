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
//! | 6 | T != S, body cannot be replayed (over 1 MB, or unknown length) | [`LargeBody`] policy: serve here, or 413 |
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
//! # Fly's replay cache
//!
//! With a `replay_cache` rule in `fly.toml` keyed by the pin cookie (or a
//! key header), Fly's proxy remembers a replay and routes the user's next
//! requests straight home: no extra hop. [`ReplayCache`] tells the engine,
//! which then refuses settings that would make its replays uncacheable
//! (`state`, `timeout`, `fallback`). A request the cache routed
//! (`fly-replay-cache-status: hit`) reached no other Machine, so it is not
//! "already replayed": a draining Machine still moves it (row 8), and a key
//! whose owner changed since the entry was made is replayed once more to
//! its owner with `fly-replay-cache: invalidate`. With
//! [`ReplayCache::Path`], a room or document key from
//! [`KeySource::PathSegment`] makes the replay name its path pattern, so
//! every user of that room goes straight to its Machine.
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
mod render;
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
pub use target::{MAX_TARGET_LEN, Source, TargetFormat};
pub use view::RequestView;
#[cfg(feature = "http")]
pub use view::{HttpView, http_header_values};
