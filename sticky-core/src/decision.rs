//! What the engine answers: one enum, each variant with its reason.

use std::fmt;
use std::sync::Arc;

use crate::target::Source;

/// What [`Sticky::decide`](crate::Sticky::decide) answers: the outcome of
/// the decision table, and whether the answer closes its connection (this
/// Machine is draining).
///
/// Adapters need two arms, taken from [`into_action`](Self::into_action):
/// run the handler and [`Finish`] its response, or [`Answer`] at once.
/// Tests and logs look at the [`Outcome`] (with its [`Reason`]); a
/// `Decision` compares equal to an `Outcome` when its outcome is that one.
///
/// ```
/// use sticky_core::{Action, Env, Outcome, Reason, Source, Sticky};
///
/// let sticky = Sticky::builder().build(Env::machine("148ed599c14189"))?;
/// let req = http::Request::get("/").header("cookie", "fly-machine-id=148ed599c14189").body(()).unwrap();
/// let decision = sticky.decide(&req);
/// assert_eq!(decision, Outcome::Stick(Reason::PinnedHere(Source::Cookie)));
/// match decision.into_action() {
///     Action::Run(finish) => assert!(finish.is_empty()),
///     Action::Answer(_) => unreachable!("pinned here"),
/// }
/// # Ok::<(), sticky_core::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Decision {
    pub(crate) outcome: Outcome,
    pub(crate) close: bool,
}

/// The four outcomes of the decision table.
///
/// | variant | the request |
/// |---|---|
/// | [`Stick`](Outcome::Stick) | is served here; nothing is added |
/// | [`SetCookie`](Outcome::SetCookie) | is served here; the response gets the pin cookie |
/// | [`Replay`](Outcome::Replay) | is not served: Fly's proxy replays it elsewhere |
/// | [`Refuse`](Outcome::Refuse) | is not served: a policy refuses it here (503 or 413) |
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Serve the request here; add nothing.
    Stick(Reason),
    /// Serve the request here, then add this cookie to the response.
    SetCookie(SetCookie, Reason),
    /// Do not serve: answer so that Fly's proxy replays the request elsewhere.
    Replay(ShortCircuit, Reason),
    /// Do not serve: a policy refuses the request here (503 or 413).
    Refuse(ShortCircuit, Reason),
}

impl Outcome {
    /// Why this outcome was chosen.
    pub fn reason(&self) -> Reason {
        match self {
            Outcome::Stick(r)
            | Outcome::SetCookie(_, r)
            | Outcome::Replay(_, r)
            | Outcome::Refuse(_, r) => *r,
        }
    }
}

impl PartialEq<Outcome> for Decision {
    fn eq(&self, other: &Outcome) -> bool {
        self.outcome == *other
    }
}

impl Decision {
    /// The outcome of the decision table.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// Why this decision was taken.
    pub fn reason(&self) -> Reason {
        self.outcome.reason()
    }

    /// The response to answer with instead of running the handler, if any.
    pub fn short_circuit(&self) -> Option<&ShortCircuit> {
        match &self.outcome {
            Outcome::Replay(sc, _) | Outcome::Refuse(sc, _) => Some(sc),
            Outcome::Stick(_) | Outcome::SetCookie(..) => None,
        }
    }

    /// The cookie to add to the handler's response, if any.
    pub fn set_cookie(&self) -> Option<&SetCookie> {
        match &self.outcome {
            Outcome::SetCookie(c, _) => Some(c),
            _ => None,
        }
    }

    /// Whether the handler runs (`Stick` or `SetCookie`).
    pub fn runs_handler(&self) -> bool {
        self.short_circuit().is_none()
    }

    /// Whether the answer, whichever it is, must close its connection:
    /// this Machine is draining, so the proxy's kept-alive connections to
    /// it are closed one by one and none is reused at the instant the
    /// server exits (see [Draining](crate#draining-on-shutdown)).
    pub fn closes_connection(&self) -> bool {
        self.close
    }

    /// The two arms an adapter maps: run the handler, or answer now.
    pub fn into_action(self) -> Action {
        let close = self.close;
        match self.outcome {
            Outcome::Stick(_) => Action::Run(Finish {
                cookie: None,
                close,
            }),
            Outcome::SetCookie(cookie, _) => Action::Run(Finish {
                cookie: Some(cookie),
                close,
            }),
            Outcome::Replay(reply, _) | Outcome::Refuse(reply, _) => {
                Action::Answer(Answer { reply, close })
            }
        }
    }
}

/// What an adapter does with a request: the two arms of a [`Decision`].
///
/// ```
/// use sticky_core::{Action, Env, Sticky};
///
/// let sticky = Sticky::builder().build(Env::machine("148ed599c14189"))?;
/// let req = http::Request::get("/").header("cookie", "fly-machine-id=90801679a10038").body(()).unwrap();
/// let response: http::Response<String> = match sticky.decide(&req).into_action() {
///     Action::Run(finish) => {
///         let mut response = http::Response::new("served here".to_owned()); // the handler
///         finish.apply(response.status(), response.headers_mut());
///         response
///     }
///     // Read and drop `answer.body_to_read()` bytes of the body first.
///     Action::Answer(answer) => answer.to_response(),
/// };
/// assert_eq!(response.status(), 307);
/// assert_eq!(response.headers()["fly-replay"], "prefer_instance=90801679a10038");
/// # Ok::<(), sticky_core::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Run the handler, then add [`Finish::headers`] to its response.
    Run(Finish),
    /// Do not run the handler: read and drop [`Answer::body_to_read`] bytes
    /// of the request body, then send this answer.
    Answer(Answer),
}

/// What to add to the handler's response: the pin cookie (with
/// `Cache-Control: private`) and, while draining, `Connection: close`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finish {
    cookie: Option<SetCookie>,
    close: bool,
}

impl Finish {
    /// Nothing to add: the handler's response goes out untouched.
    pub fn is_empty(&self) -> bool {
        self.cookie.is_none() && !self.close
    }

    /// The pin cookie to add, if any.
    pub fn cookie(&self) -> Option<&SetCookie> {
        self.cookie.as_ref()
    }

    /// Whether a response with this status gets `Connection: close`: while
    /// draining, except on `101 Switching Protocols`, whose connection
    /// belongs to the upgraded protocol (its `Connection: upgrade` stays).
    pub fn closes(&self, status: u16) -> bool {
        self.close && status != 101
    }

    /// The headers to add to a response with `status` (lowercase names):
    /// the cookie's (see [`SetCookie::headers`]) and `connection: close`
    /// when [`closes`](Self::closes). `connection` replaces any the response
    /// has; the others are appended.
    pub fn headers(
        &self,
        status: u16,
        response_has_cache_control: bool,
    ) -> impl Iterator<Item = (&'static str, &[u8])> + '_ {
        let cookie = self
            .cookie
            .iter()
            .flat_map(move |c| c.headers(response_has_cache_control));
        cookie.chain(self.closes(status).then_some(CONNECTION_CLOSE))
    }

    /// Adds [`headers`](Self::headers) to the headers of an `http` 1.x
    /// response with `status`.
    #[cfg(feature = "http")]
    pub fn apply(&self, status: http::StatusCode, headers: &mut http::HeaderMap) {
        if let Some(cookie) = &self.cookie {
            cookie.apply(headers);
        }
        if self.closes(status.as_u16()) {
            headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
    }
}

/// `Connection: close`, sent with every answer while draining.
const CONNECTION_CLOSE: (&str, &[u8]) = ("connection", b"close");

/// A response to send instead of running the handler: a [`ShortCircuit`]
/// (status, headers, empty body), closing the connection while draining.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    reply: ShortCircuit,
    close: bool,
}

impl Answer {
    /// The status code (never 101).
    pub fn status(&self) -> u16 {
        self.reply.status
    }

    /// The `fly-replay` header value, for a replay.
    pub fn fly_replay(&self) -> Option<&str> {
        self.reply.fly_replay()
    }

    /// How many bytes of the request body to read and drop first (see
    /// [`ShortCircuit::body_to_read`]).
    pub fn body_to_read(&self) -> u64 {
        self.reply.body_to_read
    }

    /// Whether the answer carries `Connection: close` (draining).
    pub fn closes_connection(&self) -> bool {
        self.close
    }

    /// The replay or refusal itself.
    pub fn short_circuit(&self) -> &ShortCircuit {
        &self.reply
    }

    /// The headers to send (lowercase names): `fly-replay` for a replay,
    /// and `connection: close` while draining.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &[u8])> + '_ {
        self.reply
            .headers()
            .chain(self.close.then_some(CONNECTION_CLOSE))
    }

    /// Builds an `http` 1.x response with an empty (default) body.
    #[cfg(feature = "http")]
    pub fn to_response<B: Default>(&self) -> http::Response<B> {
        let mut res = http::Response::new(B::default());
        *res.status_mut() = http::StatusCode::from_u16(self.status())
            .unwrap_or(http::StatusCode::TEMPORARY_REDIRECT);
        for (name, value) in self.headers() {
            if let Ok(value) = http::HeaderValue::from_bytes(value) {
                res.headers_mut()
                    .append(http::HeaderName::from_static(name), value);
            }
        }
        res
    }
}

/// Which replay marker a request carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Marker {
    /// `fly-replay-src`: the proxy replayed this request to us.
    ReplaySrc,
    /// `fly-replay-failed`: a strict replay failed and fell back to us.
    ReplayFailed,
    /// `fly-preferred-instance-unavailable`: the preferred Machine was unusable.
    PreferredUnavailable,
    /// `fly-replay-cache-status`: the proxy's replay cache routed this request.
    ReplayCache,
}

impl Marker {
    /// The request header that carries this marker.
    pub const fn header(self) -> &'static str {
        match self {
            Marker::ReplaySrc => "fly-replay-src",
            Marker::ReplayFailed => "fly-replay-failed",
            Marker::PreferredUnavailable => "fly-preferred-instance-unavailable",
            Marker::ReplayCache => "fly-replay-cache-status",
        }
    }

    /// Every marker, in the order they are checked.
    pub const ALL: [Marker; 4] = [
        Marker::ReplaySrc,
        Marker::ReplayFailed,
        Marker::PreferredUnavailable,
        Marker::ReplayCache,
    ];
}

/// Why a body cannot be replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyProblem {
    /// `Content-Length` is above the replay limit.
    TooLarge,
    /// The length is unknown (chunked, or a body-carrying method without
    /// `Content-Length`), or `Content-Length` is malformed.
    UnknownLength,
}

/// Why a target from the request was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejected {
    /// The value does not match the target format.
    Format,
    /// The signature is missing, wrong, or from an unknown key.
    Signature,
    /// The signed cookie is past its maximum lifetime or idle timeout, or
    /// its timestamps are in the future.
    Expired,
}

/// Why a decision was taken: one variant per row of the decision table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Row 1: not on Fly (no Machine ID).
    Disabled,
    /// Row 2: the path matches no include rule.
    PathNotIncluded,
    /// Row 2: the path matches an exclude rule.
    PathExcluded,
    /// Row 2: the method is not sticky.
    MethodSkipped,
    /// Row 2: the skip predicate said so.
    Skipped,
    /// Row 2: a CORS preflight.
    Preflight,
    /// Row 3: the request names no target.
    NoTarget,
    /// Row 3: the request named a target, but it was refused.
    InvalidTarget(Source, Rejected),
    /// Row 4: pinned to this Machine.
    PinnedHere(Source),
    /// Row 4: pinned to this Machine and the cookie was due a refresh.
    Refreshed,
    /// Row 5: pinned elsewhere, but the request was already replayed (or
    /// the replay failed): serve here.
    AlreadyReplayed(Source, Marker),
    /// Row 6: pinned elsewhere, but the body cannot be replayed.
    BodyNotReplayable(Source, BodyProblem),
    /// Row 7: pinned to another Machine.
    PinnedElsewhere(Source),
    /// Row 8: this Machine is draining; send the request elsewhere.
    Draining,
    /// Row 8: this Machine is draining, but the request cannot be moved
    /// (already replayed, or its body cannot be replayed): serve it here
    /// without pinning it.
    DrainingServedHere,
}

impl Reason {
    /// The row of the decision table (1 to 8) this reason belongs to.
    pub fn row(self) -> u8 {
        match self {
            Reason::Disabled => 1,
            Reason::PathNotIncluded
            | Reason::PathExcluded
            | Reason::MethodSkipped
            | Reason::Skipped
            | Reason::Preflight => 2,
            Reason::NoTarget | Reason::InvalidTarget(..) => 3,
            Reason::PinnedHere(_) | Reason::Refreshed => 4,
            Reason::AlreadyReplayed(..) => 5,
            Reason::BodyNotReplayable(..) => 6,
            Reason::PinnedElsewhere(_) => 7,
            Reason::Draining | Reason::DrainingServedHere => 8,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Disabled => f.write_str("not on Fly (no FLY_MACHINE_ID)"),
            Reason::PathNotIncluded => f.write_str("path not included"),
            Reason::PathExcluded => f.write_str("path excluded"),
            Reason::MethodSkipped => f.write_str("method skipped"),
            Reason::Skipped => f.write_str("skipped by predicate"),
            Reason::Preflight => f.write_str("CORS preflight"),
            Reason::NoTarget => f.write_str("no target: pin here"),
            Reason::InvalidTarget(s, r) => write!(f, "invalid {s} target ({r:?}): pin here"),
            Reason::PinnedHere(s) => write!(f, "pinned here by {s}"),
            Reason::Refreshed => f.write_str("pinned here, cookie refreshed"),
            Reason::AlreadyReplayed(s, m) => {
                write!(f, "pinned elsewhere by {s}, but {} is present", m.header())
            }
            Reason::BodyNotReplayable(s, p) => {
                write!(
                    f,
                    "pinned elsewhere by {s}, but the body cannot be replayed ({p:?})"
                )
            }
            Reason::PinnedElsewhere(s) => write!(f, "pinned elsewhere by {s}: replay"),
            Reason::Draining => f.write_str("draining: replay elsewhere"),
            Reason::DrainingServedHere => f.write_str("draining, but the request cannot move"),
        }
    }
}

/// Header text that is either shared (computed once at start-up) or owned.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Text {
    Shared(Arc<str>),
    Owned(Box<str>),
}

impl Text {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Text::Shared(s) => s,
            Text::Owned(s) => s,
        }
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A `Set-Cookie` to add to the handler's response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetCookie {
    pub(crate) value: Text,
    pub(crate) cache_private: bool,
}

impl SetCookie {
    /// The full `Set-Cookie` header value.
    pub fn value(&self) -> &str {
        self.value.as_str()
    }

    /// The headers to add to the handler's response.
    ///
    /// Always `Set-Cookie`; also `Cache-Control: private` when the response
    /// has no `Cache-Control` of its own (unless turned off), so that a
    /// shared cache never hands one user's pin to everyone.
    pub fn headers(
        &self,
        response_has_cache_control: bool,
    ) -> impl Iterator<Item = (&'static str, &[u8])> + '_ {
        let cache = (self.cache_private && !response_has_cache_control)
            .then_some(("cache-control", &b"private"[..]));
        std::iter::once(("set-cookie", self.value().as_bytes())).chain(cache)
    }

    /// Adds [`headers`](Self::headers) to an `http` 1.x header map.
    #[cfg(feature = "http")]
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        let has_cache_control = headers.contains_key(http::header::CACHE_CONTROL);
        for (name, value) in self.headers(has_cache_control) {
            // Values were validated when built; a failure here would be a bug,
            // and dropping the cookie is the safe outcome.
            if let Ok(value) = http::HeaderValue::from_bytes(value) {
                headers.append(http::HeaderName::from_static(name), value);
            }
        }
    }
}

/// A response to send instead of running the handler: a status, a few
/// headers and an empty body.
///
/// It is plain data so that frameworks on `http` 0.2 and 1.x both use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShortCircuit {
    pub(crate) status: u16,
    pub(crate) fly_replay: Option<Text>,
    pub(crate) body_to_read: u64,
    pub(crate) cache: CacheHeader,
}

/// What a replay tells Fly's replay cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CacheHeader {
    /// Nothing (session rules need no header).
    None,
    /// `fly-replay-cache: invalidate`: the entry that routed this request
    /// here is stale.
    Invalidate,
    /// `fly-replay-cache: <pattern>` and `fly-replay-cache-ttl-secs`.
    Path { pattern: Box<str>, ttl: Arc<str> },
}

impl ShortCircuit {
    /// The status code (never 101).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The `fly-replay` header value, for a replay.
    pub fn fly_replay(&self) -> Option<&str> {
        self.fly_replay.as_ref().map(Text::as_str)
    }

    /// How many bytes of the request body to read and drop before sending
    /// this answer: the declared `Content-Length` of a replayed request (at
    /// most the body limit, 1 MB: row 6 serves larger ones here), else 0.
    /// See [Reading the body before a replay](crate#reading-the-body-before-a-replay).
    ///
    /// ```
    /// # use sticky_core::{Env, Sticky};
    /// let sticky = Sticky::builder().build(Env::machine("148ed599c14189")).unwrap();
    /// let upload = http::Request::post("/upload")
    ///     .header("cookie", "fly-machine-id=90801679a10038")
    ///     .header("content-length", "5")
    ///     .body(())
    ///     .unwrap();
    /// assert_eq!(sticky.decide(&upload).short_circuit().unwrap().body_to_read(), 5);
    /// ```
    pub fn body_to_read(&self) -> u64 {
        self.body_to_read
    }

    /// The `fly-replay-cache` header value, when the replay is meant for
    /// Fly's path cache (a pattern such as `/rooms/abc/*`) or tells it an
    /// entry is stale (`invalidate`).
    pub fn fly_replay_cache(&self) -> Option<&str> {
        match &self.cache {
            CacheHeader::None => None,
            CacheHeader::Invalidate => Some("invalidate"),
            CacheHeader::Path { pattern, .. } => Some(pattern),
        }
    }

    /// The headers to send (names in lowercase).
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &[u8])> + '_ {
        let replay = self.fly_replay().map(|v| ("fly-replay", v.as_bytes()));
        let cache = self
            .fly_replay_cache()
            .map(|v| ("fly-replay-cache", v.as_bytes()));
        let ttl = match &self.cache {
            CacheHeader::Path { ttl, .. } => Some(("fly-replay-cache-ttl-secs", ttl.as_bytes())),
            _ => None,
        };
        replay.into_iter().chain(cache).chain(ttl)
    }
}
