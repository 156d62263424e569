//! Sans-IO session affinity for apps on [Fly.io](https://fly.io) with several Machines.
//!
//! `sticky-core` decides, for one request, whether this Machine should serve
//! it or whether Fly's proxy should replay it to the Machine the user is
//! pinned to. It reads nothing from the network, the clock or the process
//! environment on its own: the request comes in as a borrowed
//! [`RequestView`], the Machine's identity as an [`Env`], and time (for
//! signed cookies) as a number. Framework adapters (`sticky-axum`,
//! `sticky-actix-web`, `sticky-warp`, `sticky-rocket`, `sticky-poem`) turn
//! the [`Decision`] into "run the handler", "run it and add this cookie", or
//! "answer now with this `fly-replay`".
//!
//! ```
//! use sticky_core::{Decision, Env, Sticky};
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
//! match sticky.decide(&req) {
//!     Decision::Replay(reply, reason) => {
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
//! | 5 | T != S, request already replayed (`fly-replay-src`, `fly-replay-failed`, `fly-preferred-instance-unavailable`, `fly-replay-cache-status`) | [`Unavailable`] policy: re-pin here, or 503 |
//! | 6 | T != S, body cannot be replayed (over 1 MB, or unknown length) | [`LargeBody`] policy: serve here, or 413 |
//! | 7 | T != S | `Replay` with `fly-replay: prefer_instance=T` (307) |
//! | 8 | draining | new and pinned-here requests `Replay` with `elsewhere=true` |
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

mod config;
mod decision;
mod engine;
mod env;
mod keys;
#[cfg(feature = "signed")]
mod signed;
mod target;
mod view;

pub use config::{
    Builder, ConfigError, DEFAULT_COOKIE_NAME, DEFAULT_QUERY_PARAM, Fallback, LargeBody,
    MAX_REPLAY_BODY, Refresh, Replay, SameSite, Secure, Unavailable,
};
pub use decision::{BodyProblem, Decision, Marker, Reason, Rejected, SetCookie, ShortCircuit};
pub use engine::{READ_HEADERS, Sticky};
pub use env::Env;
pub use keys::{KeyFn, KeySource, Peer, PeerSet};
pub use target::{MAX_TARGET_LEN, Source, TargetFormat};
#[cfg(feature = "http")]
pub use view::HttpView;
pub use view::RequestView;
