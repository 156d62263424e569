//! Configuration: the builder and everything it refuses.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::keys::{KeySource, Peer};
use crate::target::{Source, TargetFormat};
use crate::view::RequestView;

/// The largest body Fly's proxy can replay: 1 MB, counted as 1,000,000 bytes
/// (the conservative reading of Fly's "1MB").
pub const MAX_REPLAY_BODY: u64 = 1_000_000;

/// The default sticky cookie name.
pub const DEFAULT_COOKIE_NAME: &str = "fly-machine-id";

/// The default query parameter for WebSocket handshakes from browsers.
pub const DEFAULT_QUERY_PARAM: &str = "fly_instance_id";

/// A setting the builder refuses. Each message names the setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `cookie_name` is not an HTTP token.
    #[error(
        "cookie_name {0:?} is not a valid cookie name (an HTTP token: letters, digits and !#$%&'*+-.^_`|~)"
    )]
    InvalidCookieName(String),
    /// `cookie_path` is not an absolute path safe in a cookie.
    #[error(
        "cookie_path {0:?} must start with '/' and contain no ';', whitespace or control characters"
    )]
    InvalidCookiePath(String),
    /// `cookie_domain` is not a plain host name.
    #[error("cookie_domain {0:?} is not a host name (letters, digits, '-' and '.')")]
    InvalidCookieDomain(String),
    /// `max_age` is zero or longer than browsers keep cookies (400 days).
    #[error("max_age {0:?} must be between 1 second and 400 days")]
    InvalidMaxAge(Duration),
    /// `same_site` could not be parsed.
    #[error("same_site {0:?} is not one of Strict, Lax, None")]
    InvalidSameSite(String),
    /// `SameSite=None` without `Secure`: browsers drop such cookies.
    #[error(
        "same_site None requires secure(Secure::Always): browsers reject SameSite=None cookies without Secure"
    )]
    SameSiteNoneWithoutSecure,
    /// A `__Host-` cookie may not set a Domain.
    #[error("cookie_name {0:?} has the __Host- prefix, which forbids cookie_domain")]
    HostPrefixWithDomain(String),
    /// A `__Host-` cookie must have `Path=/`.
    #[error("cookie_name {0:?} has the __Host- prefix, which requires cookie_path \"/\"")]
    HostPrefixWithPath(String),
    /// A `__Host-` or `__Secure-` cookie must be Secure.
    #[error(
        "cookie_name {0:?} has a __Host-/__Secure- prefix, which requires Secure (not Secure::Never)"
    )]
    PrefixWithoutSecure(String),
    /// `query_param` is empty or holds characters that cannot be matched raw.
    #[error(
        "query_param {0:?} must be 1-64 characters without '&', '=', '#', '%', '+' or whitespace"
    )]
    InvalidQueryParam(String),
    /// `header_source` is not an HTTP header name.
    #[error("header_source {0:?} is not a valid header name")]
    InvalidHeaderName(String),
    /// `sources` is empty, repeats a source, or names the header or key source without configuring it.
    #[error("sources: {0}")]
    InvalidSources(&'static str),
    /// `replay_status` is 101 or outside 200..=599.
    #[error("replay_status {0} is not allowed: use a final status in 200..=599 (never 101)")]
    InvalidReplayStatus(u16),
    /// `replay_state` holds characters that would break the `fly-replay` header.
    #[error(
        "replay_state {0:?} must be 1-64 visible ASCII characters without ';', ',', '=', '\"' or '\\\\'"
    )]
    InvalidReplayState(String),
    /// A replay `timeout` of zero or over an hour.
    #[error("replay timeout {0:?} must be between 1 ms and 1 hour")]
    InvalidReplayTimeout(Duration),
    /// `body_limit` is above what Fly can replay.
    #[error(
        "body_limit {0} is above 1 MB ({MAX_REPLAY_BODY} bytes): Fly's proxy cannot replay larger bodies"
    )]
    BodyLimitTooLarge(u64),
    /// A path glob does not parse.
    #[error("{setting} pattern {pattern:?} is not a valid glob: {source}")]
    InvalidGlob {
        /// `include` or `exclude`.
        setting: &'static str,
        /// The pattern as given.
        pattern: String,
        /// The parser's complaint.
        source: globset::Error,
    },
    /// A key source names an invalid header, query parameter or cookie.
    #[error(
        "key_source {0:?}: the name must be an HTTP token (a query parameter: no '&', '=', '#', '%', '+' or whitespace)"
    )]
    InvalidKeySource(String),
    /// A method in `skip_methods` is not an HTTP token.
    #[error("skip_methods entry {0:?} is not an HTTP method")]
    InvalidMethod(String),
    /// An empty signing key.
    #[error("signing_keys: a key is empty")]
    EmptySigningKey,
    /// A signing key under 32 bytes.
    #[error("signing_keys: a key has {0} bytes; at least 32 are required")]
    SigningKeyTooShort(usize),
    /// Lifetimes or timed refresh set without signing: unsigned cookies carry no timestamps.
    #[error("{0} needs signed cookies (signing_keys): unsigned cookies carry no timestamps")]
    NeedsSigning(&'static str),
    /// A lifetime of zero.
    #[error("{0} must be at least 1 second")]
    InvalidLifetime(&'static str),
    /// A cache-meant replay cannot carry this setting: Fly's proxy does not
    /// cache a replay with `state`, `timeout` or `fallback`.
    #[error(
        "replay_cache({mode}) cannot be combined with {setting}: Fly does not cache a replay that carries {field}"
    )]
    CacheConflict {
        /// The cache mode, as written in code.
        mode: &'static str,
        /// The conflicting setting.
        setting: &'static str,
        /// The `fly-replay` field it would add.
        field: &'static str,
    },
    /// A path cache TTL under Fly's minimum of 10 seconds.
    #[error("replay_cache(ReplayCache::Path): ttl {0:?} is under Fly's minimum of 10 s")]
    CacheTtlTooShort(Duration),
    /// `KeySource::PathSegment` with a prefix that is not a plain path.
    #[error(
        "key_source PathSegment({0:?}): the prefix must start and end with '/' and hold only letters, digits and -._~/"
    )]
    InvalidPathPrefix(String),
    /// The Machine ID in the environment fails the target format.
    #[error(
        "FLY_MACHINE_ID {0:?} does not match target_format; check the environment or the format"
    )]
    InvalidMachineId(String),
}

/// When the cookie gets the `Secure` attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Secure {
    /// When the request came over https (`X-Forwarded-Proto: https`, as Fly's edge sets it).
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The cookie's `SameSite` attribute. Parses case-insensitively.
///
/// ```
/// use sticky_core::SameSite;
/// assert_eq!("lax".parse::<SameSite>().unwrap(), SameSite::Lax);
/// assert_eq!("STRICT".parse::<SameSite>().unwrap(), SameSite::Strict);
/// assert!("sometimes".parse::<SameSite>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax`.
    #[default]
    Lax,
    /// `SameSite=None` (requires [`Secure::Always`]).
    None,
}

impl FromStr for SameSite {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "strict" => Ok(SameSite::Strict),
            "lax" => Ok(SameSite::Lax),
            "none" => Ok(SameSite::None),
            _ => Err(ConfigError::InvalidSameSite(s.to_owned())),
        }
    }
}

/// The `fallback` of a strict replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// `fallback=force_self`: back to exactly this Machine.
    ForceSelf,
    /// `fallback=prefer_self`: back to this Machine, or any.
    PreferSelf,
}

impl Fallback {
    fn as_str(self) -> &'static str {
        match self {
            Fallback::ForceSelf => "force_self",
            Fallback::PreferSelf => "prefer_self",
        }
    }
}

/// How a replay names its target.
///
/// ```
/// use std::time::Duration;
/// use sticky_core::{Fallback, Replay};
///
/// let soft = Replay::prefer_instance();
/// let strict = Replay::instance().timeout(Duration::from_millis(800)).fallback(Fallback::PreferSelf);
/// # let _ = (soft, strict);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replay {
    strict: bool,
    timeout: Option<Duration>,
    fallback: Option<Fallback>,
}

impl Default for Replay {
    fn default() -> Self {
        Self::prefer_instance()
    }
}

impl Replay {
    /// `prefer_instance=T` (the default): if T is gone, Fly routes to any
    /// Machine and tells it with `fly-preferred-instance-unavailable`.
    pub fn prefer_instance() -> Self {
        Self {
            strict: false,
            timeout: None,
            fallback: None,
        }
    }

    /// `instance=T`: strict. Without a timeout, a replay to a destroyed
    /// Machine fails slowly (Fly: about 7.5 s); set one, with a fallback.
    pub fn instance() -> Self {
        Self {
            strict: true,
            ..Self::prefer_instance()
        }
    }

    /// Adds `timeout=...` (sent as `800ms` or `10s`).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds `fallback=...`.
    #[must_use]
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// The header text before the target, and the fields after it.
    pub(crate) fn render(&self, state: Option<&str>) -> Result<(String, String), ConfigError> {
        let prefix = if self.strict {
            "instance="
        } else {
            "prefer_instance="
        }
        .to_owned();
        let mut suffix = String::new();
        if let Some(t) = self.timeout {
            if t < Duration::from_millis(1) || t > Duration::from_secs(3600) {
                return Err(ConfigError::InvalidReplayTimeout(t));
            }
            let ms = t.as_millis();
            if ms % 1000 == 0 {
                suffix.push_str(&format!(";timeout={}s", ms / 1000));
            } else {
                suffix.push_str(&format!(";timeout={ms}ms"));
            }
        }
        if let Some(f) = self.fallback {
            suffix.push_str(";fallback=");
            suffix.push_str(f.as_str());
        }
        if let Some(s) = state {
            suffix.push_str(";state=");
            suffix.push_str(s);
        }
        Ok((prefix, suffix))
    }
}

/// Whether replays are meant for Fly's replay cache (FLY-PROTOCOL.md
/// section 7), which then routes a user straight home without the extra
/// hop. Say what `fly.toml` or the replays configure; the engine checks that
/// its replays stay cacheable and reads the cache's markers either way.
///
/// ```
/// use std::time::Duration;
/// use sticky_core::{Env, ReplayCache, Sticky};
///
/// // fly.toml: [[http_service.http_options.replay_cache]]
/// //   path_prefix = "/", ttl_seconds = 300, type = "cookie", name = "fly-machine-id"
/// let sticky = Sticky::builder().replay_cache(ReplayCache::Session).build(Env::machine("148ed599c14189"))?;
/// # let _ = sticky;
/// // A state field is never cached: refused at start-up.
/// let err = Sticky::builder()
///     .replay_cache(ReplayCache::Session)
///     .replay_state("v1")
///     .build(Env::default())
///     .unwrap_err();
/// assert!(err.to_string().contains("replay_state"));
/// # Ok::<(), sticky_core::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplayCache {
    /// No cache rule (the default). Replays may carry `state`, `timeout`
    /// and `fallback`.
    #[default]
    Off,
    /// A session rule in `fly.toml` keys the cache by the pin cookie or by a
    /// key header: replays carry nothing more, and must stay cacheable.
    Session,
    /// Replays of requests keyed by a [`KeySource::PathSegment`] carry
    /// `fly-replay-cache: /<prefix><segment>/*` and this TTL, so that every
    /// user of a room or document goes straight to its Machine.
    Path {
        /// How long Fly keeps the entry (at least 10 s).
        ttl: Duration,
    },
}

impl ReplayCache {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ReplayCache::Off => "ReplayCache::Off",
            ReplayCache::Session => "ReplayCache::Session",
            ReplayCache::Path { .. } => "ReplayCache::Path",
        }
    }

    /// Checks the settings a cache-meant replay cannot carry.
    pub(crate) fn check(self, replay: &Replay, state: Option<&str>) -> Result<(), ConfigError> {
        if self == ReplayCache::Off {
            return Ok(());
        }
        let conflict = |setting, field| ConfigError::CacheConflict {
            mode: self.name(),
            setting,
            field,
        };
        if state.is_some() {
            return Err(conflict("replay_state", "state"));
        }
        if replay.timeout.is_some() {
            return Err(conflict("replay(Replay::timeout(..))", "timeout"));
        }
        if replay.fallback.is_some() {
            return Err(conflict("replay(Replay::fallback(..))", "fallback"));
        }
        if let ReplayCache::Path { ttl } = self
            && ttl < Duration::from_secs(10)
        {
            return Err(ConfigError::CacheTtlTooShort(ttl));
        }
        Ok(())
    }
}

/// Row 5: the request is pinned elsewhere but was already replayed (or the
/// replay failed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unavailable {
    /// Serve it here and re-pin the client to this Machine.
    #[default]
    Repin,
    /// Answer 503 without running the handler.
    Refuse,
}

/// Row 6: the request is pinned elsewhere but its body cannot be replayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LargeBody {
    /// Serve it here, without re-pinning.
    #[default]
    ServeHere,
    /// Answer 413 without running the handler.
    Refuse,
}

/// When a cookie naming this Machine is issued again (sliding expiry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Never: the cookie lives `max_age` from the first visit.
    Never,
    /// On every request served here (one `Set-Cookie` per response).
    EveryRequest,
    /// When the signed cookie was last issued this long ago (signed cookies only).
    After(Duration),
}

pub(crate) type SkipFn = Arc<dyn Fn(&dyn RequestView) -> bool + Send + Sync>;

/// Builds a [`Sticky`](crate::Sticky). Every setting has a default that
/// works on Fly; [`build`](Builder::build) refuses anything invalid.
///
/// ```
/// use std::time::Duration;
/// use sticky_core::{Env, Sticky, SameSite, Unavailable};
///
/// let sticky = Sticky::builder()
///     .cookie_name("__Host-machine")
///     .max_age(Duration::from_secs(24 * 3600))
///     .same_site(SameSite::Strict)
///     .exclude(["/health", "/assets/**"])
///     .unavailable(Unavailable::Repin)
///     .build(Env::machine("148ed599c14189"))?;
/// assert!(sticky.is_enabled());
///
/// let err = Sticky::builder().replay_status(101).build(Env::default()).unwrap_err();
/// assert!(err.to_string().contains("replay_status"));
/// # Ok::<(), sticky_core::ConfigError>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct Builder {
    pub(crate) cookie_name: String,
    pub(crate) cookie_path: String,
    pub(crate) cookie_domain: Option<String>,
    pub(crate) max_age: Duration,
    pub(crate) secure: Secure,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
    pub(crate) cache_private: bool,
    pub(crate) sources: Vec<Source>,
    pub(crate) query_param: String,
    pub(crate) header_source: Option<String>,
    pub(crate) target_format: TargetFormat,
    pub(crate) replay: Replay,
    pub(crate) replay_status: u16,
    pub(crate) replay_state: Option<String>,
    pub(crate) replay_cache: ReplayCache,
    pub(crate) unavailable: Unavailable,
    pub(crate) large_body: LargeBody,
    pub(crate) body_limit: u64,
    pub(crate) replay_unknown_length: bool,
    pub(crate) include: Vec<String>,
    pub(crate) exclude: Vec<String>,
    pub(crate) skip_methods: Vec<String>,
    pub(crate) skip_preflight: bool,
    pub(crate) skip_if: Option<SkipFn>,
    pub(crate) signing_keys: Vec<Vec<u8>>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) refresh: Option<Refresh>,
    pub(crate) key_sources: Vec<KeySource>,
    pub(crate) prefer_region: bool,
    pub(crate) peers: Vec<Peer>,
    pub(crate) count_decisions: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            cookie_name: DEFAULT_COOKIE_NAME.to_owned(),
            cookie_path: "/".to_owned(),
            cookie_domain: None,
            max_age: Duration::from_secs(6 * 24 * 3600),
            secure: Secure::Auto,
            http_only: true,
            same_site: SameSite::Lax,
            cache_private: true,
            sources: vec![Source::Cookie, Source::Query],
            query_param: DEFAULT_QUERY_PARAM.to_owned(),
            header_source: None,
            target_format: TargetFormat::MachineId,
            replay: Replay::prefer_instance(),
            replay_status: 307,
            replay_state: None,
            replay_cache: ReplayCache::Off,
            unavailable: Unavailable::Repin,
            large_body: LargeBody::ServeHere,
            body_limit: MAX_REPLAY_BODY,
            replay_unknown_length: false,
            include: Vec::new(),
            exclude: Vec::new(),
            skip_methods: Vec::new(),
            skip_preflight: true,
            skip_if: None,
            signing_keys: Vec::new(),
            max_lifetime: None,
            idle_timeout: None,
            refresh: None,
            key_sources: Vec::new(),
            prefer_region: false,
            peers: Vec::new(),
            count_decisions: true,
        }
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("cookie_name", &self.cookie_name)
            .field("sources", &self.sources)
            .field("replay", &self.replay)
            .field("replay_status", &self.replay_status)
            .field("signing_keys", &self.signing_keys.len())
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// The sticky cookie's name (default `fly-machine-id`). A `__Host-`
    /// prefix is recommended on custom domains: it stops sibling subdomains
    /// from tossing a cookie of the same name.
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// The cookie's `Path` (default `/`).
    pub fn cookie_path(mut self, path: impl Into<String>) -> Self {
        self.cookie_path = path.into();
        self
    }

    /// The cookie's `Domain` (default none: host-only).
    pub fn cookie_domain(mut self, domain: impl Into<String>) -> Self {
        self.cookie_domain = Some(domain.into());
        self
    }

    /// The cookie's `Max-Age` (default 6 days).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// When to add `Secure` (default [`Secure::Auto`]).
    pub fn secure(mut self, secure: Secure) -> Self {
        self.secure = secure;
        self
    }

    /// Whether to add `HttpOnly` (default on).
    pub fn http_only(mut self, on: bool) -> Self {
        self.http_only = on;
        self
    }

    /// The cookie's `SameSite` (default Lax).
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// Whether to add `Cache-Control: private` to responses that get the
    /// cookie and have no `Cache-Control` (default on).
    pub fn cache_control_private(mut self, on: bool) -> Self {
        self.cache_private = on;
        self
    }

    /// The order in which target sources are consulted (default: cookie,
    /// then query). The first source holding a valid target wins.
    pub fn sources(mut self, sources: impl IntoIterator<Item = Source>) -> Self {
        self.sources = sources.into_iter().collect();
        self
    }

    /// The query parameter consulted by [`Source::Query`] (default `fly_instance_id`).
    pub fn query_param(mut self, name: impl Into<String>) -> Self {
        self.query_param = name.into();
        self
    }

    /// Reads targets from this request header too (appended to the
    /// sources unless [`sources`](Self::sources) already names it).
    pub fn header_source(mut self, name: impl Into<String>) -> Self {
        self.header_source = Some(name.into());
        if !self.sources.contains(&Source::Header) {
            self.sources.push(Source::Header);
        }
        self
    }

    /// Pins requests by a key hashed onto the live Machines (rendezvous
    /// hashing). Several key sources are tried in the order added; the key
    /// source is appended to the [`sources`](Self::sources) unless they
    /// already name [`Source::Key`]. The live set comes from
    /// [`peers`](Self::peers) and [`Sticky::set_peers`](crate::Sticky::set_peers).
    ///
    /// ```
    /// use sticky_core::{Env, KeySource, Peer, Source, Sticky};
    ///
    /// let sticky = Sticky::builder()
    ///     .sources([Source::Key, Source::Cookie, Source::Query])
    ///     .key_source(KeySource::Header("x-tenant-id".into()))
    ///     .peers(["148ed599c14189", "90801679a10038"].map(Peer::new))
    ///     .build(Env::machine("148ed599c14189"))?;
    /// let req = http::Request::get("/api/tenant").header("x-tenant-id", "acme").body(()).unwrap();
    /// assert_eq!(sticky.decide(&req).reason().row(), if sticky.resolve(b"acme").as_deref() == Some("148ed599c14189") { 4 } else { 7 });
    /// # Ok::<(), sticky_core::ConfigError>(())
    /// ```
    pub fn key_source(mut self, source: KeySource) -> Self {
        self.key_sources.push(source);
        if !self.sources.contains(&Source::Key) {
            self.sources.push(Source::Key);
        }
        self
    }

    /// Keys prefer Machines in this Machine's region (`FLY_REGION`) when
    /// the live set has any there (default off).
    pub fn prefer_region(mut self, on: bool) -> Self {
        self.prefer_region = on;
        self
    }

    /// The initial live set for key affinity (a static list); a provider
    /// can replace it later with [`Sticky::set_peers`](crate::Sticky::set_peers).
    pub fn peers(mut self, peers: impl IntoIterator<Item = Peer>) -> Self {
        self.peers = peers.into_iter().collect();
        self
    }

    /// Which values are Machine IDs (default: 14 lowercase hex).
    pub fn target_format(mut self, format: TargetFormat) -> Self {
        self.target_format = format;
        self
    }

    /// How replays name their target (default `prefer_instance`).
    pub fn replay(mut self, replay: Replay) -> Self {
        self.replay = replay;
        self
    }

    /// The status of replay responses (default 307; never 101).
    pub fn replay_status(mut self, status: u16) -> Self {
        self.replay_status = status;
        self
    }

    /// An opaque `state=` for replays, echoed by Fly in `fly-replay-src`.
    pub fn replay_state(mut self, state: impl Into<String>) -> Self {
        self.replay_state = Some(state.into());
        self
    }

    /// Whether replays are meant for Fly's replay cache (default
    /// [`ReplayCache::Off`]); see [`ReplayCache`].
    pub fn replay_cache(mut self, cache: ReplayCache) -> Self {
        self.replay_cache = cache;
        self
    }

    /// Row 5 policy (default [`Unavailable::Repin`]).
    pub fn unavailable(mut self, policy: Unavailable) -> Self {
        self.unavailable = policy;
        self
    }

    /// Row 6 policy (default [`LargeBody::ServeHere`]).
    pub fn large_body(mut self, policy: LargeBody) -> Self {
        self.large_body = policy;
        self
    }

    /// The largest body that may be replayed (default and maximum 1 MB).
    pub fn body_limit(mut self, bytes: u64) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Whether a body of unknown length (`Transfer-Encoding: chunked`, or
    /// HTTP/2 without `content-length` on `POST`/`PUT`/`PATCH`, as every
    /// gRPC call is) may be replayed. Default `false`: such a request is
    /// row 6 (the [`LargeBody`] policy), since Fly documents only that a
    /// body over 1 MB cannot be replayed, and a replay it cannot honour
    /// fails the request. Turn it on for gRPC and other HTTP/2 APIs whose
    /// bodies stay small: the proxy buffers the body to replay it, and one
    /// over 1 MB then fails at the proxy (PA01) instead of being served
    /// here. Whether Fly replays a body of unknown length is unconfirmed
    /// (flysim does, within 1 MB).
    pub fn replay_unknown_length(mut self, on: bool) -> Self {
        self.replay_unknown_length = on;
        self
    }

    /// Whether the engine counts its decisions by outcome and reason, for
    /// [`Sticky::metrics`](crate::Sticky::metrics) (default `true`). Each
    /// decision then costs one relaxed atomic add more (about 20
    /// instructions on the Stick path), and nothing is allocated; off, the
    /// counter table is not even allocated and `metrics()` is empty. The
    /// counters are shared by every thread: when many cores decide at once,
    /// the hot counter's cache line moves between them (a cost the 2-core
    /// benchmark machine cannot show); turn counting off if it ever appears
    /// in a profile.
    pub fn count_decisions(mut self, on: bool) -> Self {
        self.count_decisions = on;
        self
    }

    /// Only paths matching one of these globs are sticky (default: all).
    /// `*` stays within a segment, `**` crosses `/`.
    pub fn include<I, S>(mut self, globs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.include.extend(globs.into_iter().map(Into::into));
        self
    }

    /// Paths matching any of these globs are never sticky.
    pub fn exclude<I, S>(mut self, globs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exclude.extend(globs.into_iter().map(Into::into));
        self
    }

    /// Requests with these methods are never sticky.
    pub fn skip_methods<I, S>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.skip_methods
            .extend(methods.into_iter().map(Into::into));
        self
    }

    /// Whether CORS preflights (`OPTIONS` with `Access-Control-Request-Method`)
    /// are skipped (default on).
    pub fn skip_preflight(mut self, on: bool) -> Self {
        self.skip_preflight = on;
        self
    }

    /// Requests for which `skip` returns true are never sticky.
    pub fn skip_if(
        mut self,
        skip: impl Fn(&dyn RequestView) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.skip_if = Some(Arc::new(skip));
        self
    }

    /// Signs the cookie with HMAC-SHA256. Keys are given newest first: the
    /// first signs, every key verifies (rotation). Each key must have at
    /// least 32 bytes; give every Machine the same keys.
    #[cfg(feature = "signed")]
    pub fn signing_keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        self.signing_keys = keys.into_iter().map(|k| k.as_ref().to_vec()).collect();
        self
    }

    /// Signed cookies older than this (since first issued) are not trusted.
    #[cfg(feature = "signed")]
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_lifetime = Some(lifetime);
        self
    }

    /// Signed cookies not re-issued for this long are not trusted. Implies
    /// [`Refresh::After`] half this time unless a refresh is set.
    #[cfg(feature = "signed")]
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// When to re-issue a cookie naming this Machine (default [`Refresh::Never`]).
    pub fn refresh(mut self, refresh: Refresh) -> Self {
        self.refresh = Some(refresh);
        self
    }
}
