//! The replay cache: Fly's proxy remembering a replay decision.
//!
//! Two kinds of entries, both kept per hostname:
//! - **session-based**, from [`ReplayCacheRule`]s (fly.toml's
//!   `[[http_service.http_options.replay_cache]]`): when an app answers
//!   `fly-replay` to a request carrying the rule's cookie (or header), the
//!   replay is remembered under (hostname, rule, value);
//! - **path-based**, from the replay response itself (`fly-replay-cache:
//!   /rooms/42/*` with `fly-replay-cache-ttl-secs`, or the JSON `cache`
//!   object): remembered under (hostname, path pattern), for every user.
//!
//! Everything here is plain data with the time passed in, so the rules, the
//! parsing and the store are unit-tested without sockets or sleeping. The
//! planner ([`plan`](crate::plan)) decides what to look up and what to
//! remember; the proxy applies it to the one [`Store`] under a lock. Where
//! Fly's documentation is silent, the choice made is one of the named
//! assumptions in the crate documentation.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::{self, HeaderName};
use serde::Serialize;
use serde_json::Value;

use crate::replay::ReplayDirective;

/// The shortest TTL Fly accepts for a replay cache entry: 10 seconds.
pub const MIN_TTL: Duration = Duration::from_secs(10);

/// Request header: `skip` asks to bypass the cache where bypass is allowed.
pub(crate) const CACHE_CONTROL: &str = "fly-replay-cache-control";
/// Request header flysim adds to a cache hit (`hit`) and to a replayed
/// cacheable request (`miss`, `bypass`).
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("fly-replay-cache-status");
/// Response header on a replay: a path pattern to cache, or `invalidate`.
pub(crate) const REPLAY_CACHE: &str = "fly-replay-cache";
/// Response header on a replay: the TTL of a path-based entry, in seconds.
pub(crate) const REPLAY_CACHE_TTL: &str = "fly-replay-cache-ttl-secs";
/// Response header on a replay: `yes` lets clients bypass this entry.
pub(crate) const REPLAY_CACHE_ALLOW_BYPASS: &str = "fly-replay-cache-allow-bypass";

/// What keys a session-based rule: a cookie or a request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKeyKind {
    /// `type = "cookie"`: the value of the named cookie.
    Cookie,
    /// `type = "header"`: the value of the named request header.
    Header,
}

impl CacheKeyKind {
    /// The fly.toml spelling (`cookie` / `header`).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheKeyKind::Cookie => "cookie",
            CacheKeyKind::Header => "header",
        }
    }
}

/// A session-based replay cache rule, as fly.toml's `replay_cache` tables
/// write it: `path_prefix`, `ttl_seconds` (at least [`MIN_TTL`]), `type`
/// (`cookie` or `header`), `name` and `allow_bypass`.
///
/// ```
/// use flysim::ReplayCacheRule;
///
/// let rule: ReplayCacheRule = "path_prefix=/,ttl_seconds=300,type=cookie,name=fly-machine-id"
///     .parse()
///     .unwrap();
/// assert_eq!(rule.name(), "fly-machine-id");
/// let err = "path_prefix=/,ttl_seconds=5,type=cookie,name=sid"
///     .parse::<ReplayCacheRule>()
///     .unwrap_err();
/// assert_eq!(err.field(), Some("ttl_seconds"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayCacheRule {
    host: Option<String>,
    /// Normalised: no trailing `/` or `/*`; empty for `/`.
    path: String,
    ttl: Duration,
    kind: CacheKeyKind,
    name: String,
    allow_bypass: bool,
}

/// Why a replay cache rule (or a fly.toml) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    field: Option<String>,
    message: String,
}

impl RuleError {
    pub(crate) fn new(field: Option<&str>, message: impl Into<String>) -> Self {
        RuleError {
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }

    /// The field at fault (`ttl_seconds`, `type`, ...), when one is.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RuleError {}

fn field_error(field: &str, problem: impl fmt::Display) -> RuleError {
    RuleError::new(Some(field), format!("field \"{field}\": {problem}"))
}

impl ReplayCacheRule {
    /// A rule keyed by the cookie `name` for requests under `path_prefix`
    /// (`/`, `/api`, `example.com/api`; an implicit `/*` follows).
    pub fn cookie(path_prefix: &str, name: &str, ttl: Duration) -> Result<Self, RuleError> {
        Self::new(path_prefix, CacheKeyKind::Cookie, name, ttl)
    }

    /// A rule keyed by the request header `name` for requests under `path_prefix`.
    pub fn header(path_prefix: &str, name: &str, ttl: Duration) -> Result<Self, RuleError> {
        Self::new(path_prefix, CacheKeyKind::Header, name, ttl)
    }

    /// Lets clients skip this rule's entries with `fly-replay-cache-control:
    /// skip` (fly.toml's `allow_bypass`). Default `false`.
    pub fn with_allow_bypass(mut self, allow: bool) -> Self {
        self.allow_bypass = allow;
        self
    }

    fn new(
        path_prefix: &str,
        kind: CacheKeyKind,
        name: &str,
        ttl: Duration,
    ) -> Result<Self, RuleError> {
        let (host, path) = parse_pattern(path_prefix).map_err(|e| field_error("path_prefix", e))?;
        if ttl < MIN_TTL {
            return Err(field_error(
                "ttl_seconds",
                format!(
                    "{} s is under the minimum of {} seconds",
                    ttl.as_secs(),
                    MIN_TTL.as_secs()
                ),
            ));
        }
        let name = match kind {
            CacheKeyKind::Cookie if is_token(name) => name.to_owned(),
            CacheKeyKind::Header if HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                name.to_ascii_lowercase()
            }
            _ => {
                return Err(field_error(
                    "name",
                    format!("{name:?} is not a valid {} name", kind.as_str()),
                ));
            }
        };
        Ok(ReplayCacheRule {
            host,
            path,
            ttl,
            kind,
            name,
            allow_bypass: false,
        })
    }

    /// Parses the command-line form
    /// `path_prefix=/,ttl_seconds=300,type=cookie,name=fly-machine-id[,allow_bypass=true]`.
    pub fn parse(s: &str) -> Result<Self, RuleError> {
        let mut fields: Vec<(&str, &str)> = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let Some((key, value)) = part.split_once('=') else {
                return Err(RuleError::new(
                    None,
                    format!(
                        "{part:?} is not key=value (expected path_prefix=/,ttl_seconds=300,type=cookie,name=NAME)"
                    ),
                ));
            };
            let key = key.trim();
            if !matches!(
                key,
                "path_prefix" | "ttl_seconds" | "type" | "name" | "allow_bypass"
            ) {
                return Err(RuleError::new(
                    Some(key),
                    format!(
                        "unknown field \"{key}\" (expected path_prefix, ttl_seconds, type, name, allow_bypass)"
                    ),
                ));
            }
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(field_error(key, "given twice"));
            }
            fields.push((key, value.trim()));
        }
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .ok_or_else(|| field_error(key, "missing"))
        };
        let ttl = get("ttl_seconds")?;
        let ttl: u64 = ttl.parse().map_err(|_| {
            field_error(
                "ttl_seconds",
                format!("{ttl:?} is not a whole number of seconds"),
            )
        })?;
        let kind = get("type")?.parse()?;
        let rule = Self::new(
            get("path_prefix")?,
            kind,
            get("name")?,
            Duration::from_secs(ttl),
        )?;
        let allow_bypass = match fields.iter().find(|(k, _)| *k == "allow_bypass") {
            None => false,
            Some((_, "true")) => true,
            Some((_, "false")) => false,
            Some((_, v)) => {
                return Err(field_error(
                    "allow_bypass",
                    format!("{v:?} is not true or false"),
                ));
            }
        };
        Ok(rule.with_allow_bypass(allow_bypass))
    }

    /// The normalised `path_prefix`: `/`, `/api`, `example.com/api`.
    pub fn path_prefix(&self) -> String {
        pattern_text(self.host.as_deref(), &self.path)
    }

    /// How long an entry lives (fixed from its creation).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Cookie or header.
    pub fn kind(&self) -> CacheKeyKind {
        self.kind
    }

    /// The cookie or header name (header names lowercased).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether clients may bypass this rule's entries.
    pub fn allow_bypass(&self) -> bool {
        self.allow_bypass
    }

    fn matches(&self, host: &str, path: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host) && path_under(path, &self.path)
    }

    /// This rule's key value in `headers`, if the request carries one.
    fn value(&self, headers: &HeaderMap) -> Option<String> {
        let value = match self.kind {
            CacheKeyKind::Cookie => cookie_value(headers, &self.name),
            CacheKeyKind::Header => headers
                .get(self.name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned()),
        };
        value.filter(|v| !v.is_empty())
    }
}

impl FromStr for CacheKeyKind {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        match s {
            "cookie" => Ok(CacheKeyKind::Cookie),
            "header" => Ok(CacheKeyKind::Header),
            _ => Err(field_error(
                "type",
                format!("{s:?} is not cookie or header"),
            )),
        }
    }
}

impl FromStr for ReplayCacheRule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        ReplayCacheRule::parse(s)
    }
}

impl fmt::Display for ReplayCacheRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "path_prefix={},ttl_seconds={},type={},name={}",
            self.path_prefix(),
            self.ttl.as_secs(),
            self.kind.as_str(),
            self.name
        )?;
        if self.allow_bypass {
            f.write_str(",allow_bypass=true")?;
        }
        Ok(())
    }
}

/// RFC 9110 token characters (cookie names, header names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a prefix or pattern (`/api`, `/api/`, `/api/*`, `example.com/api/*`)
/// into its host (lowercased) and path (no trailing `/` or `/*`; empty for `/`).
pub(crate) fn parse_pattern(s: &str) -> Result<(Option<String>, String), String> {
    if s.is_empty() {
        return Err("empty (expected /path or host/path)".to_owned());
    }
    if s.contains("://") {
        return Err(format!("{s:?} has a scheme (expected /path or host/path)"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '?' || *c == '#')
    {
        return Err(format!("{s:?} contains {c:?}"));
    }
    let (host, path) = match s.find('/') {
        Some(0) => (None, s),
        Some(i) => (Some(&s[..i]), &s[i..]),
        None => (Some(s), "/"),
    };
    let host = match host {
        None => None,
        Some(h) if h.contains(':') => return Err(format!("{s:?} has a port (no port is allowed)")),
        Some(h)
            if !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
        {
            Some(h.to_ascii_lowercase())
        }
        Some(h) => return Err(format!("{h:?} is not a hostname")),
    };
    let mut path = path.strip_suffix('*').unwrap_or(path);
    path = path.strip_suffix('/').unwrap_or(path);
    if path.contains('*') {
        return Err(format!("{s:?} has a '*' that is not the final \"/*\""));
    }
    if path.contains("//") {
        return Err(format!("{s:?} has an empty path segment"));
    }
    Ok((host, path.to_owned()))
}

fn pattern_text(host: Option<&str>, path: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    format!("{}{path}", host.unwrap_or(""))
}

/// Whether `path` is under the normalised prefix (`/api` covers `/api` and
/// `/api/...`, not `/apis`).
fn path_under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The first cookie called `name` in any `Cookie` header field, as sent.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_owned())
}

/// The request's hostname: `Host` lowercased, without its port.
pub(crate) fn hostname(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(i) => host[..i + 2].to_owned(),
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_owned(),
        _ => host,
    }
}

/// Where an entry is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// (hostname, index of the rule, cookie or header value).
    Session {
        host: String,
        rule: usize,
        value: String,
    },
    /// (hostname, normalised path pattern).
    Path { host: String, path: String },
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Session { host, rule, value } => {
                write!(f, "host {host}, rule {}, value {value:?}", rule + 1)
            }
            Key::Path { host, path } => write!(f, "host {host}, pattern {}/*", path),
        }
    }
}

/// A remembered replay.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The replay as the first Machine gave it (no state, timeout, fallback
    /// or transform: such a replay is never cached).
    pub(crate) directive: ReplayDirective,
    /// The Machine that answered it (left out by a cached `elsewhere=true`).
    pub(crate) source: String,
    pub(crate) expires: Instant,
    pub(crate) allow_bypass: bool,
}

/// What the cache knows about one request, from its headers alone.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestKeys {
    pub(crate) host: String,
    pub(crate) path: String,
    /// The longest matching rule (index) and the request's value for it,
    /// when the request carries one.
    pub(crate) session: Option<(usize, String)>,
    /// The client sent `fly-replay-cache-control: skip`.
    pub(crate) skip: bool,
}

/// The answer of [`Store::lookup`].
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    /// Not in the cache (or caching not in play).
    None,
    /// The client skipped the cache where that is allowed.
    Bypass,
    /// Route by this entry.
    Hit { key: Key, entry: Box<Entry> },
}

/// A replay's caching instruction, from its response (header or JSON form).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ask {
    /// `fly-replay-cache: invalidate` / `"cache": {"invalidate": true}`.
    pub(crate) invalidate: bool,
    /// A path pattern to cache under: host (if named) and normalised path.
    pub(crate) pattern: Option<(Option<String>, String)>,
    /// `fly-replay-cache-ttl-secs` / `cache.ttl`.
    pub(crate) ttl: Option<u64>,
    /// `fly-replay-cache-allow-bypass: yes` / `allow_bypass: true`.
    pub(crate) allow_bypass: bool,
}

/// Reads the cache headers of a header-form replay response: `Ok(None)`
/// when there are none.
pub(crate) fn ask_from_headers(headers: &HeaderMap) -> Result<Option<Ask>, String> {
    let text = |name: &str| -> Result<Option<String>, String> {
        let mut all = headers.get_all(name).iter();
        let Some(v) = all.next() else {
            return Ok(None);
        };
        if all.next().is_some() {
            return Err(format!("more than one {name} header"));
        }
        v.to_str()
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|_| format!("{name} is not ASCII"))
    };
    let cache = text(REPLAY_CACHE)?;
    let ttl = text(REPLAY_CACHE_TTL)?;
    let bypass = text(REPLAY_CACHE_ALLOW_BYPASS)?;
    if cache.is_none() && ttl.is_none() && bypass.is_none() {
        return Ok(None);
    }
    let mut ask = Ask::default();
    match cache.as_deref() {
        None => {}
        Some("invalidate") => ask.invalidate = true,
        Some(p) => {
            ask.pattern = Some(parse_pattern(p).map_err(|e| format!("{REPLAY_CACHE}: {e}"))?)
        }
    }
    if let Some(t) = ttl {
        ask.ttl =
            Some(t.parse().map_err(|_| {
                format!("{REPLAY_CACHE_TTL}: {t:?} is not a whole number of seconds")
            })?);
    }
    match bypass.as_deref() {
        None => {}
        Some(v) if v.eq_ignore_ascii_case("yes") => ask.allow_bypass = true,
        Some(v) => return Err(format!("{REPLAY_CACHE_ALLOW_BYPASS}: {v:?} is not yes")),
    }
    Ok(Some(ask))
}

/// Reads the `cache` object (and a top-level `allow_bypass`) of a JSON
/// replay body that [`replay::parse_json`](crate::replay::parse_json) accepted.
pub(crate) fn ask_from_json(body: &[u8]) -> Result<Option<Ask>, String> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    let cache = map.get("cache").and_then(Value::as_object);
    let top_bypass = map.get("allow_bypass").and_then(Value::as_bool);
    if cache.is_none() && top_bypass.is_none() {
        return Ok(None);
    }
    let mut ask = Ask {
        allow_bypass: top_bypass.unwrap_or(false),
        ..Ask::default()
    };
    if let Some(cache) = cache {
        ask.invalidate = cache.get("invalidate").and_then(Value::as_bool) == Some(true);
        if let Some(p) = cache.get("prefix").and_then(Value::as_str) {
            ask.pattern = Some(parse_pattern(p).map_err(|e| format!("cache.prefix: {e}"))?);
        }
        ask.ttl = cache.get("ttl").and_then(Value::as_u64);
        if cache.get("allow_bypass").and_then(Value::as_bool) == Some(true) {
            ask.allow_bypass = true;
        }
    }
    Ok(Some(ask))
}

/// Whether the pattern (host, path) covers this request.
pub(crate) fn pattern_covers(pattern: &(Option<String>, String), keys: &RequestKeys) -> bool {
    pattern.0.as_deref().is_none_or(|h| h == keys.host) && path_under(&keys.path, &pattern.1)
}

/// The cache's counters, for tests, the admin interface and the exit table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReplayCacheStats {
    /// Live (unexpired) entries now.
    pub entries: u64,
    /// Entries created so far.
    pub created: u64,
    /// Requests routed by an entry (they never reached the first Machine).
    pub hits: u64,
    /// Cacheable requests replayed the ordinary way (`miss`).
    pub misses: u64,
    /// Requests that skipped the cache where bypass is allowed (`bypass`).
    pub bypasses: u64,
    /// Entries removed by `fly-replay-cache: invalidate`.
    pub invalidations: u64,
    /// Replays meant to be cached that were not (loud events).
    pub not_cached: u64,
}

/// A clock for the replay cache that only moves when told to, so that tests
/// can let entries expire without sleeping
/// ([`Config::replay_cache_clock`](crate::Config::replay_cache_clock)).
#[derive(Debug, Clone)]
pub struct ManualClock {
    base: Instant,
    offset: Arc<Mutex<Duration>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl ManualClock {
    /// A clock standing at the moment it is made.
    pub fn new() -> Self {
        ManualClock {
            base: Instant::now(),
            offset: Arc::default(),
        }
    }

    /// Moves the clock forward by `d` (every clone sees it).
    pub fn advance(&self, d: Duration) {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner()) += d;
    }

    pub(crate) fn now(&self) -> Instant {
        self.base + *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The rules, the entries and the counters.
#[derive(Debug, Default)]
pub(crate) struct Store {
    rules: Vec<ReplayCacheRule>,
    entries: HashMap<Key, Entry>,
    stats: ReplayCacheStats,
}

impl Store {
    pub(crate) fn new(rules: Vec<ReplayCacheRule>) -> Self {
        Store {
            rules,
            ..Store::default()
        }
    }

    pub(crate) fn rules(&self) -> &[ReplayCacheRule] {
        &self.rules
    }

    /// Whether caching can be in play at all (a rule, or any entry ever made).
    pub(crate) fn in_play(&self) -> bool {
        !self.rules.is_empty() || self.stats != ReplayCacheStats::default()
    }

    /// What the cache reads from a request: its hostname, path, the longest
    /// matching rule's value, and whether it asks to skip the cache.
    pub(crate) fn keys(&self, headers: &HeaderMap, path: &str) -> RequestKeys {
        let host = hostname(headers);
        let rule = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.matches(&host, path))
            // Longest path wins; at equal length a rule naming the host wins,
            // then the first declared.
            .max_by_key(|(i, r)| (r.path.len(), r.host.is_some(), std::cmp::Reverse(*i)));
        let session = rule.and_then(|(i, r)| r.value(headers).map(|v| (i, v)));
        let skip = headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("skip"));
        RequestKeys {
            host,
            path: path.to_owned(),
            session,
            skip,
        }
    }

    fn session_key(keys: &RequestKeys) -> Option<Key> {
        keys.session.as_ref().map(|(rule, value)| Key::Session {
            host: keys.host.clone(),
            rule: *rule,
            value: value.clone(),
        })
    }

    /// Drops expired entries.
    fn expire(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.expires > now);
    }

    /// The entry that would route this request: its session entry, else the
    /// longest path pattern covering it.
    fn find(&self, keys: &RequestKeys) -> Option<Key> {
        if let Some(key) = Self::session_key(keys).filter(|k| self.entries.contains_key(k)) {
            return Some(key);
        }
        self.entries
            .keys()
            .filter_map(|k| match k {
                Key::Path { host, path } if *host == keys.host && path_under(&keys.path, path) => {
                    Some((path.len(), k))
                }
                _ => None,
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, k)| k.clone())
    }

    /// Looks the request up (a bypass is counted here; a hit is counted by
    /// [`Store::count_hit`] once the planner uses it).
    pub(crate) fn lookup(&mut self, keys: &RequestKeys, now: Instant) -> Lookup {
        self.expire(now);
        let found = self.find(keys);
        if keys.skip {
            let rule_allows = keys
                .session
                .as_ref()
                .is_some_and(|(i, _)| self.rules[*i].allow_bypass);
            let entry_allows = found
                .as_ref()
                .and_then(|k| self.entries.get(k))
                .is_some_and(|e| e.allow_bypass);
            if rule_allows || entry_allows {
                self.stats.bypasses += 1;
                return Lookup::Bypass;
            }
        }
        match found {
            Some(key) => {
                let entry = Box::new(self.entries[&key].clone());
                Lookup::Hit { key, entry }
            }
            None => Lookup::None,
        }
    }

    pub(crate) fn count_hit(&mut self) {
        self.stats.hits += 1;
    }

    pub(crate) fn count_miss(&mut self) {
        self.stats.misses += 1;
    }

    pub(crate) fn count_not_cached(&mut self) {
        self.stats.not_cached += 1;
    }

    /// Remembers a replay under `key` for `ttl` from `now` (replacing any entry).
    pub(crate) fn remember(&mut self, key: Key, entry: Entry) {
        self.stats.created += 1;
        self.entries.insert(key, entry);
    }

    /// Removes the entry that routed this request (`hit`), or else the one
    /// that would route it; returns the key removed.
    pub(crate) fn invalidate(
        &mut self,
        hit: Option<&Key>,
        keys: &RequestKeys,
        now: Instant,
    ) -> Option<Key> {
        self.expire(now);
        let key = match hit {
            Some(k) if self.entries.contains_key(k) => Some(k.clone()),
            _ => self.find(keys),
        }?;
        self.entries.remove(&key);
        self.stats.invalidations += 1;
        Some(key)
    }

    /// The counters, with the live entries at `now`.
    pub(crate) fn stats(&mut self, now: Instant) -> ReplayCacheStats {
        self.expire(now);
        ReplayCacheStats {
            entries: self.entries.len() as u64,
            ..self.stats
        }
    }

    /// The live entries, for the admin interface.
    pub(crate) fn list(&mut self, now: Instant) -> Vec<Value> {
        self.expire(now);
        let mut out: Vec<(String, Value)> = self
            .entries
            .iter()
            .map(|(k, e)| {
                let target = e
                    .directive
                    .instance
                    .clone()
                    .map(|i| format!("instance={i}"))
                    .or_else(|| {
                        e.directive
                            .prefer_instance
                            .clone()
                            .map(|i| format!("prefer_instance={i}"))
                    })
                    .unwrap_or_else(|| "balanced".to_owned());
                (
                    k.to_string(),
                    serde_json::json!({
                        "key": k.to_string(),
                        "target": target,
                        "source": e.source,
                        "expires_in_secs": e.expires.saturating_duration_since(now).as_secs(),
                        "allow_bypass": e.allow_bypass,
                    }),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, v)| v).collect()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn rule(s: &str) -> ReplayCacheRule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app.example:8080"));
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn entry(now: Instant, ttl: u64) -> Entry {
        Entry {
            directive: ReplayDirective {
                prefer_instance: Some("148ed599c14189".into()),
                ..ReplayDirective::default()
            },
            source: "90801679a10038".into(),
            expires: now + Duration::from_secs(ttl),
            allow_bypass: false,
        }
    }

    #[test]
    fn rules_parse_with_every_field() {
        let r = rule("path_prefix=/,ttl_seconds=300,type=cookie,name=fly-machine-id");
        assert_eq!(r.path_prefix(), "/");
        assert_eq!(r.ttl(), Duration::from_secs(300));
        assert_eq!(r.kind(), CacheKeyKind::Cookie);
        assert!(!r.allow_bypass());
        let r = rule(
            "name=X-Tenant-Id,type=header,ttl_seconds=10,path_prefix=Example.com/api/*,allow_bypass=true",
        );
        assert_eq!(r.path_prefix(), "example.com/api");
        assert_eq!(r.name(), "x-tenant-id");
        assert!(r.allow_bypass());
        assert_eq!(
            r.to_string(),
            "path_prefix=example.com/api,ttl_seconds=10,type=header,name=x-tenant-id,allow_bypass=true"
        );
        for same in ["/api", "/api/", "/api/*"] {
            assert_eq!(
                rule(&format!(
                    "path_prefix={same},ttl_seconds=10,type=cookie,name=a"
                ))
                .path_prefix(),
                "/api"
            );
        }
    }

    #[test]
    fn bad_rules_name_the_field() {
        for (s, field, needle) in [
            (
                "path_prefix=/,ttl_seconds=9,type=cookie,name=a",
                Some("ttl_seconds"),
                "minimum of 10",
            ),
            (
                "path_prefix=/,ttl_seconds=x,type=cookie,name=a",
                Some("ttl_seconds"),
                "whole number",
            ),
            (
                "path_prefix=/,ttl_seconds=10,type=query,name=a",
                Some("type"),
                "cookie or header",
            ),
            (
                "path_prefix=/,ttl_seconds=10,type=cookie,name=a b",
                Some("name"),
                "not a valid cookie name",
            ),
            (
                "path_prefix=/,ttl_seconds=10,type=cookie",
                Some("name"),
                "missing",
            ),
            (
                "path_prefix=/,ttl_seconds=10,type=cookie,name=a,color=red",
                Some("color"),
                "unknown field \"color\"",
            ),
            (
                "path_prefix=/,ttl_seconds=10,type=cookie,name=a,name=b",
                Some("name"),
                "twice",
            ),
            (
                "path_prefix=https://x/,ttl_seconds=10,type=cookie,name=a",
                Some("path_prefix"),
                "scheme",
            ),
            (
                "path_prefix=x.com:8080/a,ttl_seconds=10,type=cookie,name=a",
                Some("path_prefix"),
                "port",
            ),
            (
                "path_prefix=/a*b,ttl_seconds=10,type=cookie,name=a",
                Some("path_prefix"),
                "'*'",
            ),
            (
                "path_prefix=/,ttl_seconds=10,type=cookie,name=a,allow_bypass=yes",
                Some("allow_bypass"),
                "true or false",
            ),
            ("path_prefix=/,ttl_seconds", None, "key=value"),
        ] {
            let e = ReplayCacheRule::parse(s).expect_err(s);
            assert_eq!(e.field(), field, "{s}: {e}");
            assert!(e.to_string().contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn longest_prefix_wins_and_a_missing_cookie_is_not_cacheable() {
        let store = Store::new(vec![
            rule("path_prefix=/,ttl_seconds=60,type=cookie,name=sid"),
            rule("path_prefix=/api,ttl_seconds=60,type=header,name=x-tenant"),
            rule("path_prefix=other.example/api/v2,ttl_seconds=60,type=cookie,name=v2"),
        ]);
        let h = req(&[("cookie", "a=1; sid=s-1"), ("x-tenant", "t-9")]);
        assert_eq!(store.keys(&h, "/").session, Some((0, "s-1".into())));
        assert_eq!(store.keys(&h, "/apis").session, Some((0, "s-1".into())));
        assert_eq!(store.keys(&h, "/api/x").session, Some((1, "t-9".into())));
        // Another host's rule does not apply here.
        assert_eq!(store.keys(&h, "/api/v2/x").session, Some((1, "t-9".into())));
        // The longest rule decides alone: without its header nothing keys it.
        let h = req(&[("cookie", "sid=s-1")]);
        assert_eq!(store.keys(&h, "/api").session, None);
        // Cookies split over several fields (HTTP/2) are all read; empty is absent.
        let h = req(&[("cookie", "a=1"), ("cookie", "sid=s-2")]);
        assert_eq!(store.keys(&h, "/x").session, Some((0, "s-2".into())));
        let h = req(&[("cookie", "sid=")]);
        assert_eq!(store.keys(&h, "/x").session, None);
        assert_eq!(store.keys(&h, "/x").host, "app.example");
    }

    #[test]
    fn entries_expire_at_a_fixed_time_and_hits_do_not_refresh_them() {
        let now = Instant::now();
        let mut store = Store::new(vec![rule(
            "path_prefix=/,ttl_seconds=60,type=cookie,name=sid",
        )]);
        let keys = store.keys(&req(&[("cookie", "sid=1")]), "/");
        assert!(matches!(store.lookup(&keys, now), Lookup::None));
        let key = Store::session_key(&keys).unwrap();
        store.remember(key, entry(now, 60));
        assert!(matches!(
            store.lookup(&keys, now + Duration::from_secs(59)),
            Lookup::Hit { .. }
        ));
        store.count_hit();
        assert!(matches!(
            store.lookup(&keys, now + Duration::from_secs(60)),
            Lookup::None
        ));
        let stats = store.stats(now + Duration::from_secs(60));
        assert_eq!((stats.entries, stats.created, stats.hits), (0, 1, 1));
    }

    #[test]
    fn caches_are_per_hostname_and_value() {
        let now = Instant::now();
        let mut store = Store::new(vec![rule(
            "path_prefix=/,ttl_seconds=60,type=cookie,name=sid",
        )]);
        let keys = store.keys(&req(&[("cookie", "sid=1")]), "/");
        store.remember(Store::session_key(&keys).unwrap(), entry(now, 60));
        let mut other = req(&[("cookie", "sid=1")]);
        other.insert(header::HOST, HeaderValue::from_static("other.example"));
        assert!(matches!(
            store.lookup(&store.keys(&other, "/"), now),
            Lookup::None
        ));
        let keys2 = store.keys(&req(&[("cookie", "sid=2")]), "/");
        assert!(matches!(store.lookup(&keys2, now), Lookup::None));
    }

    #[test]
    fn path_entries_match_their_pattern_longest_first() {
        let now = Instant::now();
        let mut store = Store::new(Vec::new());
        let keys = store.keys(&req(&[]), "/rooms/42/chat");
        for path in ["/rooms", "/rooms/42"] {
            store.remember(
                Key::Path {
                    host: "app.example".into(),
                    path: path.into(),
                },
                entry(now, 60),
            );
        }
        match store.lookup(&keys, now) {
            Lookup::Hit {
                key: Key::Path { path, .. },
                ..
            } => assert_eq!(path, "/rooms/42"),
            other => panic!("{other:?}"),
        }
        let keys = store.keys(&req(&[]), "/roomsx");
        assert!(matches!(store.lookup(&keys, now), Lookup::None));
    }

    #[test]
    fn bypass_only_where_allowed_and_invalidate_removes_the_routing_entry() {
        let now = Instant::now();
        let mut store = Store::new(vec![
            rule("path_prefix=/,ttl_seconds=60,type=cookie,name=sid"),
            rule("path_prefix=/open,ttl_seconds=60,type=cookie,name=sid,allow_bypass=true"),
        ]);
        let skip = [("cookie", "sid=1"), ("fly-replay-cache-control", "skip")];
        let closed = store.keys(&req(&skip), "/x");
        let open = store.keys(&req(&skip), "/open");
        for keys in [&closed, &open] {
            store.remember(Store::session_key(keys).unwrap(), entry(now, 60));
        }
        assert!(matches!(store.lookup(&closed, now), Lookup::Hit { .. }));
        assert!(matches!(store.lookup(&open, now), Lookup::Bypass));
        assert_eq!(store.stats(now).bypasses, 1);
        let removed = store.invalidate(None, &closed, now).unwrap();
        assert_eq!(Some(removed), Store::session_key(&closed));
        assert!(store.invalidate(None, &closed, now).is_none());
        let s = store.stats(now);
        assert_eq!((s.entries, s.invalidations), (1, 1));
    }

    #[test]
    fn replay_cache_headers_and_json() {
        let mut h = HeaderMap::new();
        assert_eq!(ask_from_headers(&h), Ok(None));
        h.insert(
            "fly-replay-cache",
            HeaderValue::from_static("example.com/rooms/1/*"),
        );
        h.insert("fly-replay-cache-ttl-secs", HeaderValue::from_static("30"));
        h.insert(
            "fly-replay-cache-allow-bypass",
            HeaderValue::from_static("yes"),
        );
        let ask = ask_from_headers(&h).unwrap().unwrap();
        assert_eq!(
            ask.pattern,
            Some((Some("example.com".into()), "/rooms/1".into()))
        );
        assert_eq!(
            (ask.ttl, ask.allow_bypass, ask.invalidate),
            (Some(30), true, false)
        );
        h.insert("fly-replay-cache", HeaderValue::from_static("invalidate"));
        assert!(ask_from_headers(&h).unwrap().unwrap().invalidate);
        h.insert(
            "fly-replay-cache-ttl-secs",
            HeaderValue::from_static("soon"),
        );
        assert!(ask_from_headers(&h).unwrap_err().contains("whole number"));

        let ask = ask_from_json(
            br#"{"prefer_instance":"148ed599c14189","cache":{"prefix":"/p/*","ttl":60}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ask.pattern, Some((None, "/p".into())));
        assert_eq!(ask.ttl, Some(60));
        assert!(
            ask_from_json(br#"{"cache":{"invalidate":true}}"#)
                .unwrap()
                .unwrap()
                .invalidate
        );
        assert_eq!(ask_from_json(br#"{"elsewhere":true}"#), Ok(None));
    }

    #[test]
    fn hostnames_lose_their_port() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("Example.COM:443"));
        assert_eq!(hostname(&h), "example.com");
        h.insert(header::HOST, HeaderValue::from_static("[::1]:8080"));
        assert_eq!(hostname(&h), "[::1]");
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let c = ManualClock::new();
        let t0 = c.now();
        c.clone().advance(Duration::from_secs(301));
        assert_eq!(c.now() - t0, Duration::from_secs(301));
    }
}
