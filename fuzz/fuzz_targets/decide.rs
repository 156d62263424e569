//! Fuzzes `Sticky::decide_at` over arbitrary requests and configurations.
//!
//! Beyond "never panics", every decision is checked against the invariants
//! the library promises (fuzz/README.md lists them):
//!
//! - every emitted `fly-replay` parses under Fly's grammar, checked with the
//!   strict parser of flysim (the local Fly proxy), has only the expected
//!   fields, and names a target that passed the configured format, is not
//!   this Machine, and came from the request or the live set;
//! - a request carrying any replay marker is never replayed (a replay
//!   cache `hit` or `bypass` is not one: it reached no other Machine);
//! - with a replay cache mode, a replay carries at most `fly-replay-cache`
//!   (`invalidate` only for a request the cache routed, or the room pattern
//!   of the request's own path) and its TTL, and never `state`, `timeout`
//!   or `fallback`;
//! - a `Set-Cookie` is a valid header value, parses as a cookie named as
//!   configured, with a value of cookie-octets naming this Machine, and the
//!   configured attributes;
//! - the builder refuses or accepts any setting without panicking, a
//!   disabled engine touches nothing, a draining Machine never pins, and
//!   `decide_at` is pure.
#![no_main]

use std::ops::ControlFlow;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sticky_core::{
    Env, Fallback, KeySource, LargeBody, Marker, Outcome, Peer, Reason, Refresh, Replay,
    ReplayCache, RequestView, SameSite, Secure, SetCookie, Source, Sticky, TargetFormat,
    Unavailable,
};

/// This Machine.
const ME: &str = "148ed599c14189";
/// Another live Machine.
const OTHER: &str = "90801679a10038";
/// A Machine that is gone.
const GONE: &str = "e784079b449483";
/// The signing key (fixed: the same on every Machine), the one it replaced,
/// and one nobody configured.
const KEY: &[u8] = b"the current signing key, at least 32 bytes long";
const OLD_KEY: &[u8] = b"the previous signing key, also 32 bytes or more";
const FOREIGN_KEY: &[u8] = b"a key nobody configured, thirty-two bytes long!";
/// A plausible "now" (Unix seconds) around which signed stamps are made.
const T0: u64 = 1_750_000_000;

fuzz_target!(|input: Input| {
    check(&input);
});

// ----- the input -----

#[derive(Arbitrary, Debug)]
struct Input {
    conf: Conf,
    req: Req,
    now: Now,
}

#[derive(Arbitrary, Debug)]
enum Now {
    Near(i32),
    Any(u64),
}

impl Now {
    fn get(&self) -> u64 {
        match self {
            Now::Near(d) => T0.saturating_add_signed(i64::from(*d)),
            Now::Any(t) => *t,
        }
    }
}

/// A string: one of a few meaningful values, or anything.
#[derive(Arbitrary, Debug, Clone)]
enum Text {
    Nice(u8),
    Raw(String),
}

impl Text {
    fn pick(&self, nice: &[&str]) -> String {
        match self {
            Text::Nice(i) => nice[usize::from(*i) % nice.len()].to_owned(),
            Text::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Conf {
    /// Off Fly (no Machine ID) when 0 mod 8.
    env: u8,
    drain: bool,
    sources: Option<Vec<SourceC>>,
    header_source: Option<Text>,
    key_sources: Vec<KeyC>,
    peers: Option<Vec<PeerC>>,
    prefer_region: bool,
    format: FormatC,
    cookie_name: Option<Text>,
    cookie_path: Option<Text>,
    cookie_domain: Option<Text>,
    max_age: Option<u32>,
    secure: Option<SecureC>,
    http_only: Option<bool>,
    same_site: Option<SameSiteC>,
    cache_private: Option<bool>,
    query_param: Option<Text>,
    replay: Option<ReplayC>,
    replay_status: Option<u16>,
    replay_state: Option<Text>,
    unavailable_refuse: Option<bool>,
    large_body_refuse: Option<bool>,
    body_limit: Option<u32>,
    include: Vec<Text>,
    exclude: Vec<Text>,
    skip_methods: Vec<Text>,
    skip_preflight: Option<bool>,
    skip_if: bool,
    signing: Option<SignC>,
    refresh: Option<RefreshC>,
    replay_cache: Option<CacheC>,
    replay_unknown_length: Option<bool>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum CacheC {
    Session,
    /// A path cache with this TTL in seconds (under 10 is refused).
    Path(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum SourceC {
    Cookie,
    Query,
    Header,
    Key,
}

#[derive(Arbitrary, Debug)]
enum KeyC {
    Header(Text),
    Query(Text),
    Cookie(Text),
    ClientIp,
    /// The document ID in `/docs/<id>/...`.
    Custom,
    /// The room in `/rooms/<room>/...` (or a prefix the builder refuses).
    PathSegment(Text),
}

#[derive(Arbitrary, Debug)]
struct PeerC {
    id: Text,
    region: Option<Text>,
    weight: Option<u8>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum FormatC {
    MachineId,
    /// Admits anything the safety rule admits.
    Permissive,
    /// Narrows: lowercase hex of any length.
    Hex,
    /// Narrows: Machine IDs starting with a digit.
    DigitFirst,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum SecureC {
    Auto,
    Always,
    Never,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum SameSiteC {
    Strict,
    Lax,
    None,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct ReplayC {
    strict: bool,
    timeout_ms: Option<u32>,
    fallback: Option<bool>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct SignC {
    rotated: bool,
    max_lifetime: Option<u32>,
    idle_timeout: Option<u32>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RefreshC {
    Never,
    EveryRequest,
    After(u32),
}

#[derive(Arbitrary, Debug)]
struct Req {
    method: Text,
    path: Text,
    query: Option<Vec<QueryPart>>,
    headers: Vec<(HeaderC, ValueC)>,
}

#[derive(Arbitrary, Debug)]
enum QueryPart {
    /// `<name>=<value>` with the configured parameter name (or a lookalike).
    Target(bool, TargetC),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum HeaderC {
    Cookie,
    CookieCapitalised,
    ForwardedProto,
    ContentLength,
    TransferEncoding,
    PreflightMethod,
    Marker(u8),
    ClientIp,
    Tenant,
    /// The configured header source, if any.
    Source,
    Upgrade,
    /// `fly-replay-cache-status`.
    CacheStatus,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum ValueC {
    /// A `Cookie` field of several pairs.
    Cookies(Vec<CookiePair>),
    Target(TargetC),
    Length(u64),
    Https(u8),
    /// `hit`, `miss`, `bypass`, ... as the cache marks a request.
    Status(u8),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct CookiePair {
    name: CookieNameC,
    separator: u8,
    value: TargetC,
}

#[derive(Arbitrary, Debug)]
enum CookieNameC {
    /// The configured cookie name.
    Ours,
    /// `x<ours>`: a lookalike.
    Lookalike,
    Session,
    Raw(String),
}

/// A value where a target may be expected.
#[derive(Arbitrary, Debug)]
enum TargetC {
    Me,
    Other,
    Gone,
    /// A signed `id.issued.seen` (issued and seen relative to [`T0`]).
    Signed {
        who: u8,
        key: u8,
        issued: i32,
        seen: i32,
    },
    /// A field-injection attempt around another Machine's ID.
    Injection(u8),
    Long(u16),
    Raw(String),
}

const INJECTIONS: &[&str] = &[
    ";app=evil",
    "%3Bapp%3Devil",
    "%3bapp%3devil",
    ",app=evil",
    "%2Capp%3Devil",
    "=app",
    ";region=\"sjc,any\"",
    ";instance=148ed599c14189",
    ";elsewhere=true",
    "\r\nfly-replay: app=evil",
    " ",
    "\t",
    "\"",
    "\\",
    "\u{0}",
    "é",
];

// ----- building the engine -----

/// What the checks need to know about the configuration.
struct Expect {
    on_fly: bool,
    drain: bool,
    sources: Vec<Source>,
    format: TargetFormat,
    peers: Vec<String>,
    cookie_name: String,
    cookie_path: String,
    cookie_domain: Option<String>,
    max_age: Duration,
    secure: SecureC,
    http_only: bool,
    same_site: SameSiteC,
    cache_private: bool,
    replay: ReplayC,
    replay_status: u16,
    replay_state: Option<String>,
    unavailable_refuse: bool,
    large_body_refuse: bool,
    signing: Option<SignC>,
    header_source: Option<String>,
    replay_cache: Option<CacheC>,
    /// The prefixes of `KeySource::PathSegment` sources.
    room_prefixes: Vec<String>,
}

fn format_of(f: FormatC) -> TargetFormat {
    match f {
        FormatC::MachineId => TargetFormat::MachineId,
        FormatC::Permissive => TargetFormat::custom(|_| true),
        FormatC::Hex => {
            TargetFormat::custom(|s| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        }
        FormatC::DigitFirst => TargetFormat::custom(|s| {
            s.len() == 14
                && s.as_bytes()[0].is_ascii_digit()
                && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }),
    }
}

const HEADER_NAMES: &[&str] = &[
    "x-machine",
    "X-Machine",
    "fly-machine",
    "",
    "bad header",
    "cookie",
];
const QUERY_NAMES: &[&str] = &["fly_instance_id", "m", "", "a&b", "a=b", "%3B"];
const COOKIE_NAMES: &[&str] = &[
    "fly-machine-id",
    "__Host-machine",
    "__Secure-machine",
    "m",
    "",
    "a;b",
    "a=b",
    "é",
];
const PATHS: &[&str] = &["/", "/app", "/a;b", "", "app", "/é", "/a b"];
const DOMAINS: &[&str] = &[
    "example.com",
    ".example.com",
    "",
    "a..b",
    "exa mple.com",
    "x;y",
];
const STATES: &[&str] = &["s1", "", "a;b", "a=b", "a,b", "\"q\"", "a b", "é"];
const GLOBS: &[&str] = &["/health", "/static/**", "/app/*", "{", "[", "**", "/ws"];
const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "OPTIONS", "HEAD", "DELETE", "get", "",
];
const ROOM_PREFIXES: &[&str] = &["/rooms/", "/r/", "/rooms", "rooms/", "/a;b/", "/../", ""];
const CACHE_STATUSES: &[&str] = &["hit", "HIT", " hit ", "miss", "bypass", "", "hit, miss"];
const REGIONS: &[&str] = &["iad", "ams", ""];
const PEER_IDS: &[&str] = &[ME, OTHER, GONE, "local-1", "a;b", "", "148ED599C14189"];

fn build(conf: &Conf) -> (Result<Sticky, sticky_core::ConfigError>, Expect) {
    let mut b = Sticky::builder();
    let mut sources = vec![Source::Cookie, Source::Query];
    if let Some(list) = &conf.sources {
        sources = list
            .iter()
            .map(|s| match s {
                SourceC::Cookie => Source::Cookie,
                SourceC::Query => Source::Query,
                SourceC::Header => Source::Header,
                SourceC::Key => Source::Key,
            })
            .collect();
        b = b.sources(sources.clone());
    }
    let mut header_source = None;
    if let Some(h) = &conf.header_source {
        let name = h.pick(HEADER_NAMES);
        header_source = Some(name.to_ascii_lowercase());
        b = b.header_source(name);
        if !sources.contains(&Source::Header) {
            sources.push(Source::Header);
        }
    }
    let mut room_prefixes = Vec::new();
    for k in &conf.key_sources {
        b = b.key_source(match k {
            KeyC::Header(t) => {
                KeySource::Header(t.pick(&["x-tenant-id", "X-Tenant-Id", "", "a b"]))
            }
            KeyC::Query(t) => KeySource::Query(t.pick(&["tenant", "", "a&b"])),
            KeyC::Cookie(t) => KeySource::Cookie(t.pick(&["session", "", "a;b"])),
            KeyC::ClientIp => KeySource::ClientIp,
            KeyC::Custom => KeySource::custom(|req| {
                req.path()
                    .strip_prefix("/docs/")?
                    .split('/')
                    .next()
                    .map(str::to_owned)
            }),
            KeyC::PathSegment(t) => {
                let prefix = t.pick(ROOM_PREFIXES);
                room_prefixes.push(prefix.clone());
                KeySource::PathSegment(prefix)
            }
        });
        if !sources.contains(&Source::Key) {
            sources.push(Source::Key);
        }
    }
    let mut peers = Vec::new();
    if let Some(list) = &conf.peers {
        let set: Vec<Peer> = list
            .iter()
            .map(|p| {
                let id = p.id.pick(PEER_IDS);
                peers.push(id.clone());
                let mut peer = Peer::new(id);
                if let Some(r) = &p.region {
                    peer = peer.with_region(r.pick(REGIONS));
                }
                if let Some(w) = p.weight {
                    peer = peer.with_weight(u32::from(w));
                }
                peer
            })
            .collect();
        b = b.peers(set);
    }
    b = b.prefer_region(conf.prefer_region);
    let format = format_of(conf.format);
    b = b.target_format(format.clone());
    let cookie_name = conf
        .cookie_name
        .as_ref()
        .map_or_else(|| "fly-machine-id".to_owned(), |t| t.pick(COOKIE_NAMES));
    b = b.cookie_name(cookie_name.clone());
    let cookie_path = conf
        .cookie_path
        .as_ref()
        .map_or_else(|| "/".to_owned(), |t| t.pick(PATHS));
    b = b.cookie_path(cookie_path.clone());
    let cookie_domain = conf.cookie_domain.as_ref().map(|t| t.pick(DOMAINS));
    if let Some(d) = &cookie_domain {
        b = b.cookie_domain(d.clone());
    }
    let max_age = conf
        .max_age
        .map_or(Duration::from_secs(6 * 24 * 3600), |s| {
            Duration::from_secs(u64::from(s))
        });
    b = b.max_age(max_age);
    let secure = conf.secure.unwrap_or(SecureC::Auto);
    b = b.secure(match secure {
        SecureC::Auto => Secure::Auto,
        SecureC::Always => Secure::Always,
        SecureC::Never => Secure::Never,
    });
    let http_only = conf.http_only.unwrap_or(true);
    b = b.http_only(http_only);
    let same_site = conf.same_site.unwrap_or(SameSiteC::Lax);
    b = b.same_site(match same_site {
        SameSiteC::Strict => SameSite::Strict,
        SameSiteC::Lax => SameSite::Lax,
        SameSiteC::None => SameSite::None,
    });
    let cache_private = conf.cache_private.unwrap_or(true);
    b = b.cache_control_private(cache_private);
    if let Some(q) = &conf.query_param {
        b = b.query_param(q.pick(QUERY_NAMES));
    }
    let replay = conf.replay.unwrap_or(ReplayC {
        strict: false,
        timeout_ms: None,
        fallback: None,
    });
    let mut r = if replay.strict {
        Replay::instance()
    } else {
        Replay::prefer_instance()
    };
    if let Some(ms) = replay.timeout_ms {
        r = r.timeout(Duration::from_millis(u64::from(ms)));
    }
    if let Some(force) = replay.fallback {
        r = r.fallback(if force {
            Fallback::ForceSelf
        } else {
            Fallback::PreferSelf
        });
    }
    b = b.replay(r);
    let replay_status = conf.replay_status.unwrap_or(307);
    b = b.replay_status(replay_status);
    let replay_state = conf.replay_state.as_ref().map(|t| t.pick(STATES));
    if let Some(s) = &replay_state {
        b = b.replay_state(s.clone());
    }
    let unavailable_refuse = conf.unavailable_refuse.unwrap_or(false);
    b = b.unavailable(if unavailable_refuse {
        Unavailable::Refuse
    } else {
        Unavailable::Repin
    });
    let large_body_refuse = conf.large_body_refuse.unwrap_or(false);
    b = b.large_body(if large_body_refuse {
        LargeBody::Refuse
    } else {
        LargeBody::ServeHere
    });
    if let Some(limit) = conf.body_limit {
        b = b.body_limit(u64::from(limit));
    }
    if !conf.include.is_empty() {
        b = b.include(conf.include.iter().map(|t| t.pick(GLOBS)));
    }
    if !conf.exclude.is_empty() {
        b = b.exclude(conf.exclude.iter().map(|t| t.pick(GLOBS)));
    }
    if !conf.skip_methods.is_empty() {
        b = b.skip_methods(conf.skip_methods.iter().map(|t| t.pick(METHODS)));
    }
    if let Some(on) = conf.skip_preflight {
        b = b.skip_preflight(on);
    }
    if conf.skip_if {
        b = b.skip_if(|req| req.path().starts_with("/internal/"));
    }
    if let Some(s) = conf.signing {
        b = if s.rotated {
            b.signing_keys([KEY, OLD_KEY])
        } else {
            b.signing_keys([KEY])
        };
        if let Some(l) = s.max_lifetime {
            b = b.max_lifetime(Duration::from_secs(u64::from(l)));
        }
        if let Some(i) = s.idle_timeout {
            b = b.idle_timeout(Duration::from_secs(u64::from(i)));
        }
    }
    if let Some(r) = conf.refresh {
        b = b.refresh(match r {
            RefreshC::Never => Refresh::Never,
            RefreshC::EveryRequest => Refresh::EveryRequest,
            RefreshC::After(s) => Refresh::After(Duration::from_secs(u64::from(s))),
        });
    }
    if let Some(c) = conf.replay_cache {
        b = b.replay_cache(match c {
            CacheC::Session => ReplayCache::Session,
            CacheC::Path(ttl) => ReplayCache::Path {
                ttl: Duration::from_secs(u64::from(ttl)),
            },
        });
    }
    if let Some(on) = conf.replay_unknown_length {
        b = b.replay_unknown_length(on);
    }
    let on_fly = !conf.env.is_multiple_of(8);
    let env = if on_fly {
        Env::machine(ME).with_region("iad")
    } else {
        Env::default()
    };
    let built = b.build(env);
    let expect = Expect {
        on_fly,
        drain: conf.drain,
        sources,
        format,
        peers,
        cookie_name,
        cookie_path,
        cookie_domain,
        max_age,
        secure,
        http_only,
        same_site,
        cache_private,
        replay,
        replay_status,
        replay_state,
        unavailable_refuse,
        large_body_refuse,
        signing: conf.signing,
        header_source,
        replay_cache: conf.replay_cache,
        room_prefixes,
    };
    (built, expect)
}

// ----- building the request -----

/// An owned request: any bytes in any header, several fields per name.
#[derive(Debug)]
struct View {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
}

impl RequestView for View {
    fn method(&self) -> &str {
        &self.method
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    fn header_values<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>) {
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case(name) && each(v).is_break() {
                return;
            }
        }
    }
}

fn signed_value(name: &str, id: &str, key: &[u8], issued: u64, seen: u64) -> String {
    let mut jar = cookie::CookieJar::new();
    jar.signed_mut(&cookie::Key::derive_from(key))
        .add(cookie::Cookie::new(
            name.to_owned(),
            format!("{id}.{issued}.{seen}"),
        ));
    jar.get(name)
        .map(|c| c.value().to_owned())
        .unwrap_or_default()
}

fn target_text(t: &TargetC, cookie_name: &str) -> String {
    match t {
        TargetC::Me => ME.to_owned(),
        TargetC::Other => OTHER.to_owned(),
        TargetC::Gone => GONE.to_owned(),
        TargetC::Signed {
            who,
            key,
            issued,
            seen,
        } => {
            let id = [ME, OTHER, GONE, "local-1"][usize::from(*who) % 4];
            let key = [KEY, OLD_KEY, FOREIGN_KEY][usize::from(*key) % 3];
            let at = |d: i32| T0.saturating_add_signed(i64::from(d));
            signed_value(cookie_name, id, key, at(*issued), at(*seen))
        }
        TargetC::Injection(i) => {
            let inj = INJECTIONS[usize::from(*i) % INJECTIONS.len()];
            if i % 2 == 0 {
                format!("{OTHER}{inj}")
            } else {
                format!("{inj}{OTHER}")
            }
        }
        TargetC::Long(n) => "9".repeat(usize::from(*n) % 9000),
        TargetC::Raw(s) => s.clone(),
    }
}

fn view(req: &Req, e: &Expect) -> View {
    let method = req.method.pick(METHODS);
    let path = req.path.pick(&[
        "/",
        "/health",
        "/static/app.css",
        "/ws",
        "/app/x",
        "/docs/42/edit",
        "/internal/metrics",
        "/upload",
        "/rooms/abc/chat",
        "/rooms/a;b",
        "/rooms/",
        "/r/x_1-Z",
    ]);
    let query = req.query.as_ref().map(|parts| {
        parts
            .iter()
            .map(|p| match p {
                QueryPart::Target(exact, t) => {
                    let name = if *exact {
                        "fly_instance_id"
                    } else {
                        "xfly_instance_id"
                    };
                    format!("{name}={}", target_text(t, &e.cookie_name))
                }
                QueryPart::Raw(s) => s.clone(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    let headers = req
        .headers
        .iter()
        .map(|(name, value)| {
            let name = match name {
                HeaderC::Cookie => "cookie".to_owned(),
                HeaderC::CookieCapitalised => "Cookie".to_owned(),
                HeaderC::ForwardedProto => "x-forwarded-proto".to_owned(),
                HeaderC::ContentLength => "content-length".to_owned(),
                HeaderC::TransferEncoding => "transfer-encoding".to_owned(),
                HeaderC::PreflightMethod => "access-control-request-method".to_owned(),
                HeaderC::Marker(i) => Marker::ALL[usize::from(*i) % 4].header().to_owned(),
                HeaderC::ClientIp => "fly-client-ip".to_owned(),
                HeaderC::Tenant => "x-tenant-id".to_owned(),
                HeaderC::Source => e
                    .header_source
                    .clone()
                    .unwrap_or_else(|| "x-machine".to_owned()),
                HeaderC::Upgrade => "upgrade".to_owned(),
                HeaderC::CacheStatus => Marker::ReplayCache.header().to_owned(),
                HeaderC::Raw(s) => s.clone(),
            };
            let value = match value {
                ValueC::Cookies(pairs) => {
                    let mut out = String::new();
                    for (i, p) in pairs.iter().enumerate() {
                        if i > 0 {
                            out.push_str(["; ", ";", " ; ", ";\t"][usize::from(p.separator) % 4]);
                        }
                        let name = match &p.name {
                            CookieNameC::Ours => e.cookie_name.clone(),
                            CookieNameC::Lookalike => format!("x{}", e.cookie_name),
                            CookieNameC::Session => "session".to_owned(),
                            CookieNameC::Raw(s) => s.clone(),
                        };
                        out.push_str(&name);
                        out.push('=');
                        out.push_str(&target_text(&p.value, &e.cookie_name));
                    }
                    out.into_bytes()
                }
                ValueC::Target(t) => target_text(t, &e.cookie_name).into_bytes(),
                ValueC::Length(n) => n.to_string().into_bytes(),
                ValueC::Https(i) => ["https", "HTTPS", "http", " https ,http", "http, https"]
                    [usize::from(*i) % 5]
                    .as_bytes()
                    .to_vec(),
                ValueC::Status(i) => CACHE_STATUSES[usize::from(*i) % CACHE_STATUSES.len()]
                    .as_bytes()
                    .to_vec(),
                ValueC::Raw(b) => b.clone(),
            };
            (name, value)
        })
        .collect();
    View {
        method,
        path,
        query,
        headers,
    }
}

// ----- the checks -----

fn check(input: &Input) {
    let (built, e) = build(&input.conf);
    let sticky = match built {
        Ok(s) => s,
        Err(err) => {
            // A refusal must say which setting is wrong.
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    if e.drain {
        sticky.drain();
    }
    let req = view(&input.req, &e);
    let now = input.now.get();
    let d = sticky.decide_at(&req, now);
    assert_eq!(d, sticky.decide_at(&req, now), "decide_at is pure");
    assert_eq!(
        d.closes_connection(),
        e.drain,
        "every answer closes while draining"
    );
    let reason = d.reason();
    assert!((1..=8).contains(&reason.row()));
    if !e.on_fly {
        assert_eq!(d, Outcome::Stick(Reason::Disabled));
        return;
    }
    let marked = Marker::ALL
        .iter()
        .any(|m| req.has_header(m.header()) && !(*m == Marker::ReplayCache && balanced(&req)));
    match d.outcome() {
        Outcome::Replay(sc, reason) => {
            assert!(
                !marked,
                "a request with a replay marker was replayed: {d:?} for {req:?}"
            );
            assert_eq!(sc.status(), e.replay_status);
            assert!(sc.status() != 101 && (200..=599).contains(&sc.status()));
            let headers: Vec<_> = sc.headers().collect();
            assert_eq!(headers[0].0, "fly-replay");
            let value = sc.fly_replay().expect("a replay carries fly-replay");
            assert_eq!(headers[0].1, value.as_bytes());
            check_replay(value, *reason, &req, &e);
            check_replay_cache(&headers[1..], *reason, &req, &e);
        }
        Outcome::Refuse(sc, reason) => {
            assert!(sc.fly_replay().is_none() && sc.headers().next().is_none());
            match sc.status() {
                503 => {
                    assert!(e.unavailable_refuse && matches!(reason, Reason::AlreadyReplayed(..)))
                }
                413 => assert!(e.large_body_refuse),
                other => panic!("refused with {other}"),
            }
        }
        Outcome::SetCookie(c, reason) => {
            assert!(!e.drain, "a draining Machine pinned a client: {d:?}");
            assert!(
                e.sources.contains(&Source::Cookie),
                "pinned without a cookie source"
            );
            assert!(matches!(
                reason,
                Reason::NoTarget
                    | Reason::InvalidTarget(..)
                    | Reason::AlreadyReplayed(..)
                    | Reason::Refreshed
            ));
            check_set_cookie(c, &req, now, &e);
        }
        Outcome::Stick(_) => {}
    }
}

/// Fly's grammar (flysim's strict parser), only the expected fields, and a
/// target that passed the format, is not this Machine, and came from the
/// request or the live set.
fn check_replay(value: &str, reason: Reason, req: &View, e: &Expect) {
    assert!(http::HeaderValue::from_str(value).is_ok(), "{value:?}");
    assert!(
        value.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "whitespace or control bytes in {value:?}"
    );
    let fields: Vec<(&str, &str)> = value
        .split(';')
        .map(|f| {
            f.split_once('=')
                .unwrap_or_else(|| panic!("no '=' in {value:?}"))
        })
        .collect();
    let target = fields
        .iter()
        .find(|(k, _)| matches!(*k, "instance" | "prefer_instance"))
        .map(|(_, v)| *v);
    // The grammar with the target swapped for a Machine ID, so that custom
    // formats are checked too; the target itself is checked below.
    let canonical = match target {
        Some(t) => value.replacen(&format!("={t}"), "=00000000000000", 1),
        None => value.to_owned(),
    };
    let parsed = flysim::replay::parse_header(&canonical)
        .unwrap_or_else(|err| panic!("{value:?} is not a valid fly-replay: {err}"));
    if matches!(e.format_kind(), FormatKind::MachineId) {
        let exact = flysim::replay::parse_header(value)
            .unwrap_or_else(|err| panic!("{value:?} is not a valid fly-replay: {err}"));
        assert_eq!(
            exact
                .instance
                .as_deref()
                .or(exact.prefer_instance.as_deref()),
            target
        );
    }
    assert!(parsed.app.is_none() && parsed.region.is_none() && parsed.transform.is_none());
    assert_eq!(parsed.state, e.replay_state, "{value:?}");
    match reason {
        Reason::Draining => {
            assert!(e.drain);
            assert!(parsed.elsewhere && target.is_none());
            assert!(parsed.timeout.is_none() && parsed.fallback.is_none());
        }
        Reason::PinnedElsewhere(source) => {
            let t = target.unwrap_or_else(|| panic!("no target in {value:?}"));
            assert!(!parsed.elsewhere);
            assert_eq!(parsed.instance.is_some(), e.replay.strict, "{value:?}");
            assert_eq!(parsed.timeout.is_some(), e.replay.timeout_ms.is_some());
            assert_eq!(parsed.fallback.is_some(), e.replay.fallback.is_some());
            assert_ne!(t, ME, "a replay to this Machine");
            assert!(
                e.format.accepts(t),
                "target {t:?} fails the configured format"
            );
            if source == Source::Key {
                assert!(
                    e.peers.iter().any(|p| p == t),
                    "{t:?} is not a live Machine"
                );
            } else {
                let mut raw: Vec<&[u8]> = req.headers.iter().map(|(_, v)| v.as_slice()).collect();
                raw.extend(req.query.as_deref().map(str::as_bytes));
                assert!(
                    raw.iter()
                        .any(|v| v.windows(t.len()).any(|w| w == t.as_bytes())),
                    "target {t:?} is not in the request"
                );
            }
        }
        other => panic!("a replay for {other:?}"),
    }
}

/// The first `fly-replay-cache-status` value is `hit` or `bypass` (trimmed,
/// any case): the request reached no other Machine first.
fn balanced(req: &View) -> bool {
    cache_status(req)
        .is_some_and(|v| v.eq_ignore_ascii_case("hit") || v.eq_ignore_ascii_case("bypass"))
}

fn cache_status(req: &View) -> Option<String> {
    let v = req.header(Marker::ReplayCache.header())?;
    Some(
        String::from_utf8_lossy(v)
            .trim_matches([' ', '\t'])
            .to_owned(),
    )
}

/// What a replay may tell Fly's cache: nothing without a cache mode;
/// `invalidate` only for a request the cache routed; a room's pattern (the
/// request's own path up to its valid room segment, then `/*`) with the
/// configured TTL only in path mode.
fn check_replay_cache(rest: &[(&str, &[u8])], reason: Reason, req: &View, e: &Expect) {
    let Some(mode) = e.replay_cache else {
        assert!(
            rest.is_empty(),
            "cache headers without a cache mode: {rest:?}"
        );
        return;
    };
    assert!(
        e.replay_state.is_none() && e.replay.timeout_ms.is_none() && e.replay.fallback.is_none()
    );
    let [(name, value), tail @ ..] = rest else {
        return;
    };
    assert_eq!(*name, "fly-replay-cache");
    assert!(
        matches!(reason, Reason::PinnedElsewhere(_)),
        "cache headers on {reason:?}"
    );
    if *value == b"invalidate" {
        let hit = cache_status(req).is_some_and(|v| v.eq_ignore_ascii_case("hit"));
        assert!(hit && tail.is_empty(), "invalidate without a hit: {req:?}");
        return;
    }
    let CacheC::Path(ttl) = mode else {
        panic!("a path pattern in session mode: {rest:?}");
    };
    let pattern = std::str::from_utf8(value).expect("an ASCII pattern");
    let room = pattern.strip_suffix("/*").expect("a pattern ends with /*");
    assert!(
        req.path.starts_with(room)
            && matches!(req.path.as_bytes().get(room.len()), None | Some(b'/')),
        "{pattern:?} does not cover {:?}",
        req.path
    );
    let segment = e
        .room_prefixes
        .iter()
        .find_map(|p| room.strip_prefix(p.as_str()))
        .expect("the pattern starts with a room prefix");
    assert!(
        (1..=64).contains(&segment.len())
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "room segment {segment:?}"
    );
    assert!(reason == Reason::PinnedElsewhere(Source::Key));
    assert_eq!(
        tail,
        [("fly-replay-cache-ttl-secs", ttl.to_string().as_bytes())]
    );
}

enum FormatKind {
    MachineId,
    Custom,
}

impl Expect {
    fn format_kind(&self) -> FormatKind {
        match self.format {
            TargetFormat::MachineId => FormatKind::MachineId,
            TargetFormat::Custom(_) => FormatKind::Custom,
        }
    }
}

/// RFC 6265 `cookie-octet`.
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

fn is_https(req: &View) -> bool {
    req.header("x-forwarded-proto").is_some_and(|v| {
        let first = v.split(|&b| b == b',').next().unwrap_or_default();
        // Optional whitespace is spaces and tabs only.
        let ows = |b: &u8| matches!(b, b' ' | b'\t');
        let start = first.iter().position(|b| !ows(b)).unwrap_or(first.len());
        let end = first.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
        first[start..end.max(start)].eq_ignore_ascii_case(b"https")
    })
}

fn check_set_cookie(c: &SetCookie, req: &View, now: u64, e: &Expect) {
    let value = c.value();
    assert!(http::HeaderValue::from_str(value).is_ok(), "{value:?}");
    let parsed = cookie::Cookie::parse(value.to_owned())
        .unwrap_or_else(|err| panic!("Set-Cookie {value:?} does not parse: {err}"));
    assert_eq!(parsed.name(), e.cookie_name);
    let v = parsed.value();
    assert!(
        !v.is_empty() && v.bytes().all(is_cookie_octet),
        "cookie value {v:?}"
    );
    // The raw pair is exactly name=value (nothing quoted or encoded).
    assert!(
        value.starts_with(&format!("{}={v}", e.cookie_name)),
        "{value:?}"
    );
    match e.signing {
        None => assert_eq!(v, ME),
        Some(_) => {
            let jar = cookie::CookieJar::new();
            let plain = jar
                .signed(&cookie::Key::derive_from(KEY))
                .verify(cookie::Cookie::new(e.cookie_name.clone(), v.to_owned()))
                .unwrap_or_else(|| panic!("a pin not signed with the current key: {v:?}"));
            let rest = plain
                .value()
                .strip_prefix(&format!("{ME}."))
                .unwrap_or_else(|| panic!("a signed pin not naming this Machine: {plain:?}"));
            let (_issued, seen) = rest.split_once('.').expect("id.issued.seen");
            assert_eq!(seen, now.to_string(), "a pin is stamped now");
        }
    }
    assert_eq!(parsed.path(), Some(e.cookie_path.as_str()));
    assert_eq!(
        parsed.max_age().map(|d| d.whole_seconds()),
        Some(i64::try_from(e.max_age.as_secs()).unwrap_or(i64::MAX))
    );
    assert_eq!(parsed.http_only().unwrap_or(false), e.http_only);
    let prefixed = e.cookie_name.starts_with("__Host-") || e.cookie_name.starts_with("__Secure-");
    let secure = prefixed
        || match e.secure {
            SecureC::Always => true,
            SecureC::Never => false,
            SecureC::Auto => is_https(req),
        };
    assert_eq!(parsed.secure().unwrap_or(false), secure, "{value:?}");
    if e.same_site == SameSiteC::None {
        assert!(secure, "SameSite=None without Secure: {value:?}");
    }
    let expected_same_site = match e.same_site {
        SameSiteC::Strict => cookie::SameSite::Strict,
        SameSiteC::Lax => cookie::SameSite::Lax,
        SameSiteC::None => cookie::SameSite::None,
    };
    assert_eq!(parsed.same_site(), Some(expected_same_site));
    let domain = e
        .cookie_domain
        .as_deref()
        .map(|d| d.strip_prefix('.').unwrap_or(d));
    assert_eq!(parsed.domain(), domain);
    if e.cookie_name.starts_with("__Host-") {
        assert!(parsed.domain().is_none() && parsed.path() == Some("/"));
    }
    // Cache-Control: private rides along unless the response has its own.
    let with: Vec<_> = c.headers(false).map(|(n, _)| n).collect();
    let without: Vec<_> = c.headers(true).map(|(n, _)| n).collect();
    assert_eq!(without, ["set-cookie"]);
    if e.cache_private {
        assert_eq!(with, ["set-cookie", "cache-control"]);
    } else {
        assert_eq!(with, ["set-cookie"]);
    }
}
