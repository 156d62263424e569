//! The engine: built once, then `decide` per request.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::{
    Builder, ConfigError, LargeBody, MAX_REPLAY_BODY, Refresh, SameSite, Secure, SkipFn,
    Unavailable,
};
use crate::decision::{
    BodyProblem, Decision, Marker, Reason, Rejected, SetCookie, ShortCircuit, Text,
};
use crate::env::Env;
use crate::keys::{self, CompiledKey, KeySource, Peer, PeerSet};
#[cfg(feature = "signed")]
use crate::signed::Signer;
use crate::target::{self, CookieScanner, Source, TargetFormat};
use crate::view::RequestView;

/// The sticky-session engine: configuration plus this Machine's identity.
///
/// Cheap to clone (one `Arc`); clones share the drain switch.
///
/// ```
/// use sticky_core::{Decision, Env, Reason, Source, Sticky};
///
/// let sticky = Sticky::builder().build(Env::machine("148ed599c14189"))?;
///
/// let here = http::Request::get("/").header("cookie", "fly-machine-id=148ed599c14189").body(()).unwrap();
/// assert_eq!(sticky.decide(&here), Decision::Stick(Reason::PinnedHere(Source::Cookie)));
///
/// let first = http::Request::get("/").body(()).unwrap();
/// let decision = sticky.decide(&first);
/// assert!(decision.set_cookie().unwrap().value().starts_with("fly-machine-id=148ed599c14189;"));
///
/// let elsewhere = http::Request::get("/").header("cookie", "fly-machine-id=90801679a10038").body(()).unwrap();
/// let replay = sticky.decide(&elsewhere);
/// assert_eq!(replay.short_circuit().unwrap().fly_replay(), Some("prefer_instance=90801679a10038"));
/// # Ok::<(), sticky_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Sticky {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sticky")
            .field("machine_id", &self.machine_id())
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

struct Inner {
    me: Option<Box<str>>,
    draining: AtomicBool,
    scanner: CookieScanner,
    sources: Vec<Source>,
    query_param: String,
    header_source: Option<String>,
    format: TargetFormat,
    cookie: CookieAttrs,
    /// `Set-Cookie` naming this Machine, unsigned: without and with `Secure`.
    pin: [Arc<str>; 2],
    cache_private: bool,
    replay_prefix: String,
    replay_suffix: String,
    drain_replay: Arc<str>,
    replay_status: u16,
    unavailable: Unavailable,
    large_body: LargeBody,
    body_limit: u64,
    include: Option<PathSet>,
    exclude: Option<PathSet>,
    skip_methods: Vec<String>,
    skip_preflight: bool,
    skip_if: Option<SkipFn>,
    refresh: Refresh,
    #[cfg(feature = "signed")]
    signer: Option<Signer>,
    keys: Vec<CompiledKey>,
    peers: RwLock<Arc<PeerSet>>,
    /// This Machine's region, when keys prefer it.
    key_region: Option<String>,
    /// Whether the cookie is a source: only then is a client pinned by cookie.
    pins_cookie: bool,
}

struct CookieAttrs {
    name: String,
    path: String,
    domain: Option<String>,
    max_age: i64,
    secure: Secure,
    http_only: bool,
    same_site: SameSite,
}

impl CookieAttrs {
    fn render(&self, value: &str, secure: bool) -> String {
        let same_site = match self.same_site {
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::None => cookie::SameSite::None,
        };
        let mut c = cookie::Cookie::build((self.name.as_str(), value))
            .path(self.path.as_str())
            .max_age(cookie::time::Duration::seconds(self.max_age))
            .http_only(self.http_only)
            .same_site(same_site);
        if secure {
            c = c.secure(true);
        }
        if let Some(domain) = &self.domain {
            c = c.domain(domain.as_str());
        }
        c.build().to_string()
    }
}

/// A target found in the request.
enum Found<'a> {
    Nothing,
    Refused(Source, Rejected),
    Target(Target<'a>),
}

/// A target ID: borrowed from the request, or copied from the live set.
#[derive(Clone, Copy)]
enum Id<'a> {
    Request(&'a [u8]),
    Peer([u8; target::MAX_TARGET_LEN], u8),
}

impl Id<'_> {
    fn peer(id: &str) -> Option<Self> {
        let mut buf = [0; target::MAX_TARGET_LEN];
        buf.get_mut(..id.len())?.copy_from_slice(id.as_bytes());
        Some(Id::Peer(buf, u8::try_from(id.len()).ok()?))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Id::Request(b) => b,
            Id::Peer(buf, len) => &buf[..usize::from(*len)],
        }
    }
}

#[derive(Clone, Copy)]
struct Target<'a> {
    id: Id<'a>,
    source: Source,
    /// `(issued, seen)` of a signed cookie.
    stamps: Option<(u64, u64)>,
}

impl Sticky {
    /// Starts a [`Builder`] with the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// This Machine's ID, when on Fly.
    pub fn machine_id(&self) -> Option<&str> {
        self.inner.me.as_deref()
    }

    /// Whether the engine acts at all (a Machine ID was given).
    pub fn is_enabled(&self) -> bool {
        self.inner.me.is_some()
    }

    /// Starts draining: new and pinned-here requests are replayed with
    /// `elsewhere=true` so the proxy moves them to another Machine (row 8).
    /// Callable from any thread, e.g. a SIGTERM handler.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Stops draining.
    pub fn undrain(&self) {
        self.inner.draining.store(false, Ordering::Relaxed);
    }

    /// Whether this Machine is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Whether decisions depend on the clock (signed cookies with
    /// lifetimes or timed refresh). [`decide`](Self::decide) reads the
    /// system clock only then.
    pub fn needs_clock(&self) -> bool {
        #[cfg(feature = "signed")]
        {
            self.inner.signer.is_some()
        }
        #[cfg(not(feature = "signed"))]
        {
            false
        }
    }

    /// Decides what to do with `req`, reading the wall clock only if
    /// [`needs_clock`](Self::needs_clock).
    pub fn decide<V: RequestView>(&self, req: &V) -> Decision {
        let now = if self.needs_clock() { unix_now() } else { 0 };
        self.decide_at(req, now)
    }

    /// Decides what to do with `req` at `now` (Unix seconds). Pure: the
    /// same inputs always give the same decision.
    pub fn decide_at<V: RequestView>(&self, req: &V, now: u64) -> Decision {
        let decision = self.decide_inner(req, now);
        #[cfg(feature = "tracing")]
        tracing::debug!(
            method = req.method(),
            path = req.path(),
            reason = %decision.reason(),
            row = decision.reason().row(),
            "sticky decision"
        );
        decision
    }

    fn decide_inner<V: RequestView>(&self, req: &V, now: u64) -> Decision {
        let inner = &*self.inner;
        // Row 1.
        let Some(me) = inner.me.as_deref() else {
            return Decision::Stick(Reason::Disabled);
        };
        // Row 2.
        if let Some(reason) = self.filtered(req) {
            return Decision::Stick(reason);
        }
        let draining = self.is_draining();
        let found = self.find_target(req, me, now);

        let target = match found {
            Found::Target(t) if t.id.bytes() == me.as_bytes() => {
                if !draining {
                    // Row 4.
                    return self.pinned_here(req, t, now);
                }
                Some(t)
            }
            Found::Target(t) => Some(t),
            Found::Nothing | Found::Refused(..) if !draining => {
                // Row 3.
                let reason = match found {
                    Found::Refused(source, why) => Reason::InvalidTarget(source, why),
                    _ => Reason::NoTarget,
                };
                // Without a cookie source (keys only) there is nothing to pin.
                return if inner.pins_cookie {
                    Decision::SetCookie(self.pin_here(req, now, None), reason)
                } else {
                    Decision::Stick(reason)
                };
            }
            Found::Nothing | Found::Refused(..) => None,
        };

        // From here the request is either pinned elsewhere or this Machine
        // is draining: both want a replay, unless the request cannot move.
        let elsewhere = target.filter(|t| t.id.bytes() != me.as_bytes());
        if let Some(marker) = replay_marker(req) {
            // Row 5: never replay a request twice.
            return match (elsewhere, draining) {
                (_, true) => Decision::Stick(Reason::DrainingServedHere),
                (Some(t), false) => {
                    let reason = Reason::AlreadyReplayed(t.source, marker);
                    match inner.unavailable {
                        // A key keeps naming its Machine: serve, pin nothing.
                        Unavailable::Repin if t.source == Source::Key || !inner.pins_cookie => {
                            Decision::Stick(reason)
                        }
                        Unavailable::Repin => {
                            Decision::SetCookie(self.pin_here(req, now, None), reason)
                        }
                        Unavailable::Refuse => Decision::Refuse(refusal(503), reason),
                    }
                }
                (None, false) => unreachable_stick(),
            };
        }
        let body = match self.body_length(req) {
            Ok(length) => length,
            // Row 6.
            Err(problem) => {
                return match (elsewhere, inner.large_body) {
                    (_, LargeBody::Refuse) => Decision::Refuse(
                        refusal(413),
                        match elsewhere {
                            Some(t) => Reason::BodyNotReplayable(t.source, problem),
                            None => Reason::DrainingServedHere,
                        },
                    ),
                    (Some(t), LargeBody::ServeHere) => {
                        Decision::Stick(Reason::BodyNotReplayable(t.source, problem))
                    }
                    (None, LargeBody::ServeHere) => Decision::Stick(Reason::DrainingServedHere),
                };
            }
        };
        match elsewhere {
            // Row 7.
            Some(t) => Decision::Replay(
                self.replay_to(t.id.bytes(), body),
                Reason::PinnedElsewhere(t.source),
            ),
            // Row 8.
            None => Decision::Replay(
                ShortCircuit {
                    status: inner.replay_status,
                    fly_replay: Some(Text::Shared(inner.drain_replay.clone())),
                    body_to_read: body,
                },
                Reason::Draining,
            ),
        }
    }

    /// Row 2: requests the engine leaves alone.
    fn filtered<V: RequestView>(&self, req: &V) -> Option<Reason> {
        let inner = &*self.inner;
        let method = req.method();
        if inner.skip_preflight
            && method == "OPTIONS"
            && req.has_header("access-control-request-method")
        {
            return Some(Reason::Preflight);
        }
        if inner.skip_methods.iter().any(|m| m == method) {
            return Some(Reason::MethodSkipped);
        }
        if let Some(include) = &inner.include
            && !include.matches(req.path())
        {
            return Some(Reason::PathNotIncluded);
        }
        if let Some(exclude) = &inner.exclude
            && exclude.matches(req.path())
        {
            return Some(Reason::PathExcluded);
        }
        if inner
            .skip_if
            .as_ref()
            .is_some_and(|skip| skip(req as &dyn RequestView))
        {
            return Some(Reason::Skipped);
        }
        None
    }

    /// Consults the sources in order; the first valid target wins.
    fn find_target<'a, V: RequestView>(&self, req: &'a V, me: &str, now: u64) -> Found<'a> {
        let mut refused = None;
        for &source in &self.inner.sources {
            let mut best: Option<Target<'a>> = None;
            let mut consider = |raw: &'a [u8]| -> bool {
                match self.check(source, raw, now) {
                    Ok(t) => {
                        let mine = t.id.bytes() == me.as_bytes();
                        if best.is_none() || mine {
                            best = Some(t);
                        }
                        // A value naming this Machine settles duplicates.
                        mine
                    }
                    Err(why) => {
                        refused.get_or_insert((source, why));
                        false
                    }
                }
            };
            match source {
                Source::Cookie => {
                    let scanner = &self.inner.scanner;
                    req.header_values("cookie", &mut |field| {
                        if scanner.scan(field, &mut consider) {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    });
                }
                Source::Query => {
                    if let Some(query) = req.query() {
                        target::scan_query(query, &self.inner.query_param, &mut consider);
                    }
                }
                Source::Key => {
                    if let Some(t) = self.key_target(req) {
                        return Found::Target(t);
                    }
                }
                Source::Header => {
                    if let Some(name) = &self.inner.header_source {
                        req.header_values(name, &mut |v| {
                            if consider(target::header_value(v)) {
                                ControlFlow::Break(())
                            } else {
                                ControlFlow::Continue(())
                            }
                        });
                    }
                }
            }
            if let Some(t) = best {
                return Found::Target(t);
            }
        }
        match refused {
            Some((source, why)) => Found::Refused(source, why),
            None => Found::Nothing,
        }
    }

    /// The Machine a request's key maps to, from the first key source that
    /// yields a key, when the live set is not empty.
    fn key_target<V: RequestView>(&self, req: &V) -> Option<Target<'static>> {
        let inner = &*self.inner;
        if inner.keys.is_empty() {
            return None;
        }
        let region = inner.key_region.as_deref();
        // The live set is fetched once a key is found: requests without a
        // key (most, when keys and cookies are mixed) never touch its lock,
        // whose cache line would otherwise bounce between worker threads.
        let mut peers: Option<Arc<PeerSet>> = None;
        let mut id = None;
        for source in &inner.keys {
            if keys::key_of(source, req, &mut |key| {
                let set = peers.get_or_insert_with(|| self.peers());
                id = set.pick(key, region).and_then(|p| Id::peer(p.id()));
                id.is_some()
            }) {
                break;
            }
            if peers.as_ref().is_some_and(|set| set.is_empty()) {
                return None;
            }
        }
        id.map(|id| Target {
            id,
            source: Source::Key,
            stamps: None,
        })
    }

    /// Replaces the live Machines used by key affinity. IDs that fail the
    /// target format are dropped (a provider's data is not trusted blindly);
    /// returns how many Machines were kept. Callable from any thread.
    pub fn set_peers(&self, peers: impl IntoIterator<Item = Peer>) -> usize {
        let format = &self.inner.format;
        let set = PeerSet::new(peers.into_iter().filter(|p| format.accepts(p.id())));
        let kept = set.len();
        *self
            .inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        kept
    }

    /// The live Machines used by key affinity.
    pub fn peers(&self) -> Arc<PeerSet> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The Machine a key maps to now, as `decide` would resolve it.
    pub fn resolve(&self, key: &[u8]) -> Option<String> {
        self.peers()
            .pick(key, self.inner.key_region.as_deref())
            .map(|p| p.id().to_owned())
    }

    /// The request headers this configuration reads beyond
    /// [`READ_HEADERS`]: the header source and key headers (lowercase).
    pub fn configured_headers(&self) -> impl Iterator<Item = &str> {
        let keys = self.inner.keys.iter().filter_map(|k| match k {
            CompiledKey::Header(h) => Some(h.as_str()),
            _ => None,
        });
        self.inner
            .header_source
            .as_deref()
            .into_iter()
            .chain(keys)
            .filter(|h| !READ_HEADERS.contains(h))
    }

    /// The cookie names this configuration reads: the sticky cookie (when
    /// it is a source) and key cookies.
    pub fn configured_cookies(&self) -> impl Iterator<Item = &str> {
        let keys = self.inner.keys.iter().filter_map(|k| match k {
            CompiledKey::Cookie(c) => Some(c.name()),
            _ => None,
        });
        self.inner
            .pins_cookie
            .then_some(self.inner.cookie.name.as_str())
            .into_iter()
            .chain(keys)
    }

    /// Validates one raw value from `source`.
    #[inline]
    fn check<'a>(&self, source: Source, raw: &'a [u8], now: u64) -> Result<Target<'a>, Rejected> {
        #[cfg(feature = "signed")]
        if let (Source::Cookie, Some(signer)) = (source, &self.inner.signer) {
            let v = signer.verify(raw, now)?;
            return if self.inner.format.accepts_bytes(v.id) {
                Ok(Target {
                    id: Id::Request(v.id),
                    source,
                    stamps: Some((v.issued, v.seen)),
                })
            } else {
                Err(Rejected::Format)
            };
        }
        let _ = now;
        if self.inner.format.accepts_bytes(raw) {
            Ok(Target {
                id: Id::Request(raw),
                source,
                stamps: None,
            })
        } else {
            Err(Rejected::Format)
        }
    }

    /// Row 4: pinned here; refresh the cookie if due.
    fn pinned_here<V: RequestView>(&self, req: &V, t: Target<'_>, now: u64) -> Decision {
        let due = match self.inner.refresh {
            Refresh::Never => false,
            Refresh::EveryRequest => true,
            Refresh::After(d) => t
                .stamps
                .is_some_and(|(_, seen)| now.saturating_sub(seen) >= d.as_secs()),
        };
        // Only the cookie is re-issued: a query or header pin says nothing
        // about the cookie the client holds.
        if due && t.source == Source::Cookie {
            let issued = t.stamps.map(|(issued, _)| issued);
            Decision::SetCookie(self.pin_here(req, now, issued), Reason::Refreshed)
        } else {
            Decision::Stick(Reason::PinnedHere(t.source))
        }
    }

    /// A cookie naming this Machine. `issued` keeps a signed cookie's first
    /// issue time across refreshes.
    fn pin_here<V: RequestView>(&self, req: &V, now: u64, issued: Option<u64>) -> SetCookie {
        let inner = &*self.inner;
        let secure = match inner.cookie.secure {
            Secure::Always => true,
            Secure::Never => false,
            Secure::Auto => is_https(req),
        };
        #[cfg(feature = "signed")]
        if let (Some(signer), Some(me)) = (&inner.signer, &inner.me) {
            let value = signer.sign(me, issued.unwrap_or(now), now);
            return SetCookie {
                value: Text::Owned(inner.cookie.render(&value, secure).into()),
                cache_private: inner.cache_private,
            };
        }
        let _ = (now, issued);
        SetCookie {
            value: Text::Shared(inner.pin[usize::from(secure)].clone()),
            cache_private: inner.cache_private,
        }
    }

    /// Row 7: the replay response for a validated target.
    fn replay_to(&self, id: &[u8], body_to_read: u64) -> ShortCircuit {
        let inner = &*self.inner;
        // `id` passed the target format, so it is ASCII without separators.
        let id = std::str::from_utf8(id).unwrap_or_default();
        let mut value =
            String::with_capacity(inner.replay_prefix.len() + id.len() + inner.replay_suffix.len());
        value.push_str(&inner.replay_prefix);
        value.push_str(id);
        value.push_str(&inner.replay_suffix);
        ShortCircuit {
            status: inner.replay_status,
            fly_replay: Some(Text::Owned(value.into_boxed_str())),
            body_to_read,
        }
    }

    /// Row 6: the declared length of a body that can be replayed (0 for
    /// none), or why it cannot.
    fn body_length<V: RequestView>(&self, req: &V) -> Result<u64, BodyProblem> {
        if req.has_header("transfer-encoding") {
            return Err(BodyProblem::UnknownLength);
        }
        let mut length: Option<u64> = None;
        let mut malformed = false;
        req.header_values("content-length", &mut |v| {
            for part in v.split(|&b| b == b',') {
                match parse_length(target::header_value(part)) {
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => {
                        malformed = true;
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        });
        if malformed {
            return Err(BodyProblem::UnknownLength);
        }
        match length {
            Some(n) if n > self.inner.body_limit => Err(BodyProblem::TooLarge),
            Some(n) => Ok(n),
            None if matches!(req.method(), "POST" | "PUT" | "PATCH") => {
                Err(BodyProblem::UnknownLength)
            }
            None => Ok(0),
        }
    }
}

/// A marker reaching row 5 always comes with a target elsewhere or a drain;
/// this keeps the match total without a panic.
fn unreachable_stick() -> Decision {
    Decision::Stick(Reason::DrainingServedHere)
}

fn refusal(status: u16) -> ShortCircuit {
    ShortCircuit {
        status,
        fly_replay: None,
        body_to_read: 0,
    }
}

/// Every request header the engine's built-in rules may read (lowercase).
/// Configured sources add their own: see [`Sticky::configured_headers`].
/// Adapters that must fetch headers one by one (warp) fetch these.
pub const READ_HEADERS: [&str; 10] = [
    "cookie",
    "x-forwarded-proto",
    "content-length",
    "transfer-encoding",
    "access-control-request-method",
    Marker::ALL[0].header(),
    Marker::ALL[1].header(),
    Marker::ALL[2].header(),
    Marker::ALL[3].header(),
    "fly-client-ip",
];

fn replay_marker<V: RequestView>(req: &V) -> Option<Marker> {
    Marker::ALL.into_iter().find(|m| req.has_header(m.header()))
}

fn is_https<V: RequestView>(req: &V) -> bool {
    req.header("x-forwarded-proto").is_some_and(|v| {
        let first = v.split(|&b| b == b',').next().unwrap_or_default();
        target::header_value(first).eq_ignore_ascii_case(b"https")
    })
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Path patterns. Plain paths (the usual `/health`) are compared as
/// strings: a glob without metacharacters matches exactly itself, and the
/// comparison skips globset's hashing of every request path.
struct PathSet {
    literals: Vec<Box<str>>,
    globs: Option<GlobSet>,
}

impl PathSet {
    fn matches(&self, path: &str) -> bool {
        self.literals.iter().any(|l| **l == *path)
            || self.globs.as_ref().is_some_and(|g| g.is_match(path))
    }
}

fn glob_set(setting: &'static str, patterns: &[String]) -> Result<Option<PathSet>, ConfigError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut literals = Vec::new();
    let mut globs = GlobSetBuilder::new();
    let mut glob_patterns = Vec::new();
    for pattern in patterns {
        // Compiled even when plain, so that every pattern is validated alike.
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|source| ConfigError::InvalidGlob {
                setting,
                pattern: pattern.clone(),
                source,
            })?;
        if pattern.bytes().any(|b| b"*?[]{}\\".contains(&b)) {
            globs.add(glob);
            glob_patterns.push(pattern.as_str());
        } else {
            literals.push(pattern.as_str().into());
        }
    }
    let globs = if glob_patterns.is_empty() {
        None
    } else {
        Some(globs.build().map_err(|source| ConfigError::InvalidGlob {
            setting,
            pattern: glob_patterns.join(", "),
            source,
        })?)
    };
    Ok(Some(PathSet { literals, globs }))
}

/// A query parameter name we can match raw.
fn is_query_name(q: &str) -> bool {
    !q.is_empty()
        && q.len() <= 64
        && q.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'&' | b'=' | b'#' | b'%' | b'+'))
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

impl Builder {
    /// Checks every setting and builds the engine for `env`.
    pub fn build(self, env: Env) -> Result<Sticky, ConfigError> {
        let name = &self.cookie_name;
        if !target::is_token(name) {
            return Err(ConfigError::InvalidCookieName(name.clone()));
        }
        let path = &self.cookie_path;
        if !path.starts_with('/')
            || path.len() > 1024
            || path
                .bytes()
                .any(|b| b == b';' || b == b',' || !(0x21..=0x7e).contains(&b))
        {
            return Err(ConfigError::InvalidCookiePath(path.clone()));
        }
        if let Some(domain) = &self.cookie_domain {
            let d = domain.strip_prefix('.').unwrap_or(domain);
            if d.is_empty()
                || d.len() > 253
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(ConfigError::InvalidCookieDomain(domain.clone()));
            }
        }
        if self.max_age.is_zero() || self.max_age > Duration::from_secs(400 * 24 * 3600) {
            return Err(ConfigError::InvalidMaxAge(self.max_age));
        }
        let mut secure = self.secure;
        let host_prefix = name.starts_with("__Host-");
        if host_prefix || name.starts_with("__Secure-") {
            if secure == Secure::Never {
                return Err(ConfigError::PrefixWithoutSecure(name.clone()));
            }
            secure = Secure::Always;
        }
        if host_prefix && self.cookie_domain.is_some() {
            return Err(ConfigError::HostPrefixWithDomain(name.clone()));
        }
        if host_prefix && path != "/" {
            return Err(ConfigError::HostPrefixWithPath(name.clone()));
        }
        if self.same_site == SameSite::None && secure != Secure::Always {
            return Err(ConfigError::SameSiteNoneWithoutSecure);
        }
        let q = &self.query_param;
        if !is_query_name(q) {
            return Err(ConfigError::InvalidQueryParam(q.clone()));
        }
        let header_source = match &self.header_source {
            Some(h) if !target::is_token(h) => {
                return Err(ConfigError::InvalidHeaderName(h.clone()));
            }
            Some(h) => Some(h.to_ascii_lowercase()),
            None => None,
        };
        if self.sources.is_empty() {
            return Err(ConfigError::InvalidSources(
                "at least one source is required",
            ));
        }
        for (i, s) in self.sources.iter().enumerate() {
            if self.sources[..i].contains(s) {
                return Err(ConfigError::InvalidSources("a source is listed twice"));
            }
        }
        if self.sources.contains(&Source::Key) && self.key_sources.is_empty() {
            return Err(ConfigError::InvalidSources(
                "the key source needs key_source(..)",
            ));
        }
        let mut keys = Vec::with_capacity(self.key_sources.len());
        for source in &self.key_sources {
            keys.push(match source {
                KeySource::Header(h) if target::is_token(h) => {
                    CompiledKey::Header(h.to_ascii_lowercase())
                }
                KeySource::Query(q) if is_query_name(q) => CompiledKey::Query(q.clone()),
                KeySource::Cookie(c) if target::is_token(c) => {
                    CompiledKey::Cookie(Box::new(CookieScanner::new(c)))
                }
                KeySource::ClientIp => CompiledKey::ClientIp,
                KeySource::Custom(f) => CompiledKey::Custom(f.clone()),
                KeySource::Header(name) | KeySource::Query(name) | KeySource::Cookie(name) => {
                    return Err(ConfigError::InvalidKeySource(name.clone()));
                }
            });
        }
        if self.sources.contains(&Source::Header) && header_source.is_none() {
            return Err(ConfigError::InvalidSources(
                "the header source needs header_source(name)",
            ));
        }
        if !(200..=599).contains(&self.replay_status) {
            return Err(ConfigError::InvalidReplayStatus(self.replay_status));
        }
        if let Some(state) = &self.replay_state
            && !target::is_safe_token(state.as_bytes())
        {
            return Err(ConfigError::InvalidReplayState(state.clone()));
        }
        let (replay_prefix, replay_suffix) = self.replay.render(self.replay_state.as_deref())?;
        if self.body_limit > MAX_REPLAY_BODY {
            return Err(ConfigError::BodyLimitTooLarge(self.body_limit));
        }
        let include = glob_set("include", &self.include)?;
        let exclude = glob_set("exclude", &self.exclude)?;
        for m in &self.skip_methods {
            if !target::is_token(m) {
                return Err(ConfigError::InvalidMethod(m.clone()));
            }
        }
        for (setting, value) in [
            ("max_lifetime", self.max_lifetime),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_some_and(|d| d.as_secs() == 0) {
                return Err(ConfigError::InvalidLifetime(setting));
            }
        }
        let signed = !self.signing_keys.is_empty();
        if !signed {
            if self.max_lifetime.is_some() {
                return Err(ConfigError::NeedsSigning("max_lifetime"));
            }
            if self.idle_timeout.is_some() {
                return Err(ConfigError::NeedsSigning("idle_timeout"));
            }
            if matches!(self.refresh, Some(Refresh::After(_))) {
                return Err(ConfigError::NeedsSigning("refresh(Refresh::After)"));
            }
        }
        let refresh = match (self.refresh, self.idle_timeout) {
            (Some(r), _) => r,
            (None, Some(idle)) => Refresh::After(idle / 2),
            (None, None) => Refresh::Never,
        };
        let pins_cookie = self.sources.contains(&Source::Cookie);
        let me = match env.machine_id.clone() {
            Some(id) if !self.target_format.accepts(&id) => {
                return Err(ConfigError::InvalidMachineId(id));
            }
            id => id.map(String::into_boxed_str),
        };
        #[cfg(feature = "signed")]
        let signer = if signed {
            Some(Signer::new(
                name,
                &self.signing_keys,
                self.max_lifetime.map(secs),
                self.idle_timeout.map(secs),
            )?)
        } else {
            None
        };
        let cookie = CookieAttrs {
            name: name.clone(),
            path: path.clone(),
            domain: self.cookie_domain.clone(),
            max_age: i64::try_from(secs(self.max_age)).unwrap_or(i64::MAX),
            secure,
            http_only: self.http_only,
            same_site: self.same_site,
        };
        let id = me.as_deref().unwrap_or_default();
        let pin = [
            Arc::from(cookie.render(id, false)),
            Arc::from(cookie.render(id, true)),
        ];
        let mut drain_replay = String::from("elsewhere=true");
        if let Some(state) = &self.replay_state {
            drain_replay.push_str(";state=");
            drain_replay.push_str(state);
        }
        let initial_peers = self.peers;
        let sticky = Sticky {
            inner: Arc::new(Inner {
                me,
                draining: AtomicBool::new(false),
                scanner: CookieScanner::new(name),
                sources: self.sources,
                query_param: self.query_param,
                header_source,
                format: self.target_format,
                cookie,
                pin,
                cache_private: self.cache_private,
                replay_prefix,
                replay_suffix,
                drain_replay: Arc::from(drain_replay),
                replay_status: self.replay_status,
                unavailable: self.unavailable,
                large_body: self.large_body,
                body_limit: self.body_limit,
                include,
                exclude,
                skip_methods: self.skip_methods,
                skip_preflight: self.skip_preflight,
                skip_if: self.skip_if,
                refresh,
                #[cfg(feature = "signed")]
                signer,
                keys,
                peers: RwLock::default(),
                key_region: if self.prefer_region {
                    env.region.clone()
                } else {
                    None
                },
                pins_cookie,
            }),
        };
        sticky.set_peers(initial_peers);
        Ok(sticky)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(patterns: &[String]) -> GlobSet {
        let mut set = GlobSetBuilder::new();
        for p in patterns {
            set.add(GlobBuilder::new(p).literal_separator(true).build().unwrap());
        }
        set.build().unwrap()
    }

    #[test]
    fn plain_paths_match_exactly() {
        let set = glob_set("exclude", &["/health".into(), "/static/**".into()])
            .unwrap()
            .unwrap();
        assert_eq!(set.literals.len(), 1);
        assert!(set.globs.is_some());
        for (path, hit) in [
            ("/health", true),
            ("/health/", false),
            ("/healthz", false),
            ("/Health", false),
            ("/static/a/b.css", true),
            ("/", false),
        ] {
            assert_eq!(set.matches(path), hit, "{path}");
        }
    }

    proptest! {
        /// Splitting plain paths off changes no answer.
        #[test]
        fn path_sets_agree_with_globset(
            patterns in prop::collection::vec("(/[a-c*?]{0,3}){1,3}|/[a-c]{1,2}/\\*\\*|/[a-c]{0,2}", 1..5),
            path in "(/[a-c.*?]{0,3}){0,4}",
        ) {
            let ours = glob_set("include", &patterns).unwrap().unwrap();
            prop_assert_eq!(ours.matches(&path), reference(&patterns).is_match(&path));
        }
    }
}
