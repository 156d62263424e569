//! Session affinity on [Fly.io](https://fly.io) for [warp].
//!
//! [`sticky`] wraps a warp filter tree (your routes). For each request it asks
//! [`sticky_core::Sticky::decide`] and then either runs the routes unchanged,
//! runs them and appends the sticky `Set-Cookie` to their reply, or answers
//! at once with a `fly-replay` response **without running the routes**: Fly's
//! proxy then replays the request to the Machine the user is pinned to. All
//! decisions live in `sticky-core`; this crate only translates.
//!
//! ```
//! use warp::Filter;
//! use sticky_warp::sticky_core::{Env, Sticky};
//!
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! let sticky = Sticky::builder()
//!     .exclude(["/health"])
//!     .build(Env::machine("148ed599c14189"))?; // Env::from_process() on Fly
//!
//! let hello = warp::path::end().map(|| "hello from this Machine");
//! let health = warp::path("health").map(|| "ok");
//! let routes = hello
//!     .or(health)
//!     .with(warp::wrap_fn(sticky_warp::sticky(sticky)));
//!
//! // A browser pinned to another Machine: the route does not run.
//! let res = warp::test::request()
//!     .header("cookie", "fly-machine-id=90801679a10038")
//!     .reply(&routes)
//!     .await;
//! assert_eq!(res.status(), 307);
//! assert_eq!(res.headers()["fly-replay"], "prefer_instance=90801679a10038");
//!
//! // A first visit: served here and pinned here.
//! let res = warp::test::request().reply(&routes).await;
//! assert_eq!(res.body(), "hello from this Machine");
//! assert!(res.headers()["set-cookie"].to_str()?.starts_with("fly-machine-id=148ed599c14189;"));
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(doc()).unwrap();
//! ```
//!
//! Serving is plain warp:
//!
//! ```no_run
//! # use warp::Filter;
//! # use sticky_warp::sticky_core::{Env, Sticky};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # let sticky = Sticky::builder().build(Env::from_process())?;
//! # let routes = warp::any().map(|| "hi");
//! let routes = routes.with(warp::wrap_fn(sticky_warp::sticky(sticky)));
//! warp::serve(routes).run(([0, 0, 0, 0], 8080)).await;
//! # Ok(())
//! # }
//! ```
//!
//! Apply the wrapper once, outermost (last), so that nothing of your routes
//! runs before the decision: a replayed request must not have side effects
//! here. Rejections of your routes pass through unchanged (an unknown path
//! still gets warp's 404, a wrong method its 405, and neither gets the
//! sticky cookie: only a reply gets it); only the wrapper's own
//! short-circuit is turned into a response. A catch-all `.recover(...)` of
//! yours may come before `.with(...)` (it then sees nothing of the wrapper)
//! or after it.
//!
//! A replay is answered once the request's body has been read and dropped
//! (at most 1 MB: larger bodies are never replayed): a server that answers
//! early and closes the connection with the body unread resets it, and the
//! proxy can lose the answer (RFC 9112, section 9.6). While the engine
//! drains, every reply carries `Connection: close`, so that no kept-alive
//! connection from the proxy is still open, and reused, at the instant the
//! server exits.
//!
//! # What the wrapper reads
//!
//! warp offers no filter that borrows the whole request, and cloning the
//! whole header map per request (`warp::header::headers_cloned()`) is what
//! this crate avoids. The wrapper fetches exactly what the core reads with
//! its default sources: the method, the path, the raw query, the first
//! field of `cookie`, `x-forwarded-proto`, `content-length`,
//! `transfer-encoding`, `access-control-request-method`, `fly-replay-src`,
//! `fly-replay-failed`, `fly-preferred-instance-unavailable`,
//! `fly-replay-cache-status` and `fly-client-ip` (an absent header costs a
//! lookup, a present one a reference-counted clone of its value), and the
//! `fly-machine-id` cookie from **every** `Cookie` field (through warp's
//! cookie filter, which joins the fields, copying them only when there are
//! several).
//!
//! The headers and cookies the engine's configuration adds (a
//! [`Builder::header_source`], a [`KeySource::Header`] such as
//! `x-tenant-id`, a [`KeySource::Cookie`], a non-default
//! [`Builder::cookie_name`]) are fetched automatically, from
//! [`Sticky::configured_headers`](sticky_core::Sticky::configured_headers)
//! and [`configured_cookies`](sticky_core::Sticky::configured_cookies).
//! Only a header read by your own code, a [`Builder::skip_if`] predicate or
//! a custom key source, needs [`StickyWrap::fetch_header`]; a header that is
//! not fetched looks absent to the core, and only the first field of a
//! header is seen.

//! warp's cookie filter reads UTF-8 text only: when several `Cookie` fields
//! arrive and one holds other bytes, a sticky cookie outside the first
//! field is not seen, and the request is served here and re-pinned here
//! (never replayed to a wrong Machine).
//!
//! # The tower alternative
//!
//! If you serve warp through hyper yourself, `warp::service(routes)` is a
//! tower `Service`, and the tower layer of the `sticky-axum` crate
//! (`StickyLayer`) can wrap it; that layer sees the whole `http::Request`, so
//! nothing needs to be named to it. It does not work with `warp::serve`,
//! which takes a filter.
//!
//! # Draining on shutdown
//!
//! Fly sends a signal before stopping a Machine. Turn drain on, keep serving
//! for a grace period (requests pinned here are replayed elsewhere with
//! `elsewhere=true`), then shut down gracefully with warp's `graceful`:
//!
//! ```no_run
//! # use warp::Filter;
//! # use sticky_warp::sticky_core::{Env, Sticky};
//! # async fn run(sticky: Sticky) -> std::io::Result<()> {
//! # let routes = warp::any().map(|| "hi");
//! let routes = routes.with(warp::wrap_fn(sticky_warp::sticky(sticky.clone())));
//! let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
//! let shutdown = async move {
//!     term.recv().await;
//!     sticky.drain();
//!     tokio::time::sleep(std::time::Duration::from_secs(5)).await;
//! };
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! warp::serve(routes).incoming(listener).graceful(shutdown).run().await;
//! # Ok(())
//! # }
//! ```
//!
//! On Fly, set `kill_signal = "SIGTERM"` in `fly.toml` (the default is
//! SIGINT) and a `kill_timeout` longer than the grace period (default 5 s).
//! `examples/warp` does this (grace from `DRAIN_SECONDS`; SIGINT stops at
//! once); `examples/warp/tests/shutdown.rs` checks it on the running binary.
//!
//! [`Builder::header_source`]: sticky_core::Builder::header_source
//! [`Builder::skip_if`]: sticky_core::Builder::skip_if
//! [`Builder::cookie_name`]: sticky_core::Builder::cookie_name
//! [`KeySource::Header`]: sticky_core::KeySource::Header
//! [`KeySource::Cookie`]: sticky_core::KeySource::Cookie
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::ops::ControlFlow;
use std::str::FromStr;

use futures_util::{Stream, StreamExt};
pub use sticky_core;
use sticky_core::{DEFAULT_COOKIE_NAME, Decision, RequestView, SetCookie, ShortCircuit, Sticky};
use warp::filters::BoxedFilter;
use warp::filters::path::FullPath;
use warp::http::{HeaderValue, Method};
use warp::reject::{Reject, Rejection};
use warp::reply::{Reply, Response};
use warp::{Buf, Filter, any};

/// The headers the core's built-in rules read, fetched for every request
/// (first field only; see [`COOKIE`] for the rest of the cookies). The
/// engine's own list, so a header it starts reading is never missed here.
const HEADERS: [&str; 10] = sticky_core::READ_HEADERS;

/// warp's header filters take `&'static str` names: names from the
/// engine's configuration are interned once, so building wrappers again
/// never grows memory.
fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// The `Cookie` header: its first field is fetched raw like the others;
/// named cookies in any field come from `warp::cookie::optional`.
const COOKIE: &str = "cookie";

/// The wrapper with its settings: the engine, and what to fetch beyond the
/// defaults.
///
/// Build it from a [`Sticky`] and hand it to [`sticky`] (for
/// `.with(warp::wrap_fn(...))`) or call [`wrap`](Self::wrap) directly.
///
/// ```
/// use warp::Filter;
/// use sticky_warp::StickyWrap;
/// use sticky_warp::sticky_core::{Env, Sticky};
///
/// let sticky = Sticky::builder()
///     .header_source("x-machine")
///     .build(Env::machine("148ed599c14189"))
///     .unwrap();
/// let wrap = StickyWrap::new(sticky).fetch_header("x-machine");
/// let routes = warp::any().map(|| "hi").with(warp::wrap_fn(sticky_warp::sticky(wrap)));
/// # let _ = routes;
/// ```
#[derive(Clone, Debug)]
pub struct StickyWrap {
    sticky: Sticky,
    headers: Vec<&'static str>,
    cookies: Vec<&'static str>,
}

impl StickyWrap {
    /// A wrapper deciding with `sticky`. The headers and cookies its
    /// configuration reads (a header source, key headers and cookies, a
    /// non-default cookie name) are fetched automatically.
    pub fn new(sticky: Sticky) -> Self {
        let headers: Vec<&'static str> = sticky.configured_headers().map(intern).collect();
        let cookies: Vec<&'static str> = sticky.configured_cookies().map(intern).collect();
        let mut wrap = Self {
            sticky,
            headers: Vec::new(),
            cookies: Vec::new(),
        };
        for h in headers {
            wrap = wrap.fetch_header(h);
        }
        for c in cookies {
            wrap = wrap.fetch_cookie(c);
        }
        wrap
    }

    /// Also fetches the header `name` (any case) for the core: the header of
    /// [`Builder::header_source`](sticky_core::Builder::header_source) or of
    /// a [`KeySource::Header`](sticky_core::KeySource::Header), or one that a
    /// [`Builder::skip_if`](sticky_core::Builder::skip_if) predicate or a
    /// custom key source reads. Only its first field is seen. Headers the
    /// wrapper always fetches are ignored here.
    #[must_use]
    pub fn fetch_header(mut self, name: &'static str) -> Self {
        let same = |n: &&str| n.eq_ignore_ascii_case(name);
        if !HEADERS.iter().any(same) && !self.headers.iter().any(same) {
            self.headers.push(name);
        }
        self
    }

    /// Also looks the cookie `name` up in every `Cookie` field: the name given
    /// to [`Builder::cookie_name`](sticky_core::Builder::cookie_name) or to a
    /// [`KeySource::Cookie`](sticky_core::KeySource::Cookie). The default
    /// `fly-machine-id` is always looked up. Without this, only the first
    /// `Cookie` field is searched for `name` (which is all an HTTP/1.1
    /// client sends).
    #[must_use]
    pub fn fetch_cookie(mut self, name: &'static str) -> Self {
        if name != DEFAULT_COOKIE_NAME && !self.cookies.contains(&name) {
            self.cookies.push(name);
        }
        self
    }

    /// The engine, e.g. to call [`Sticky::drain`].
    pub fn sticky(&self) -> &Sticky {
        &self.sticky
    }

    /// Wraps `routes`: the returned filter decides first, then runs
    /// `routes` (appending the sticky cookie to its reply) or answers with
    /// the short-circuit response without running `routes`.
    ///
    /// `routes` must extract one [`Reply`]; they may reject (their
    /// rejections pass through unchanged) or not (see [`RoutesError`]).
    pub fn wrap<F, R>(
        &self,
        routes: F,
    ) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static + use<F, R>
    where
        F: Filter<Extract = (R,)> + Clone + Send + Sync + 'static,
        F::Error: RoutesError,
        R: Reply + 'static,
    {
        let sticky = self.sticky.clone();
        let decide = head(self.extra()).and_then(move |head: Head| ready(gate(&sticky, &head)));
        // A replay is answered once the body is read: `decide` rejects, so
        // `or` tries this branch, which decides again (only for
        // short-circuits of requests with a body) and takes the body only
        // for a replay.
        let sticky = self.sticky.clone();
        let drain = head(self.extra())
            .and_then(move |head: Head| ready(replay_only(&sticky, &head)))
            .and(warp::body::stream())
            .and_then(drain_then_answer);
        let gate = decide.or(drain).unify();
        // While draining, every answer closes its connection: the proxy's
        // kept-alive connections are closed one by one, so none is reused at
        // the instant the server exits.
        let sticky = self.sticky.clone();
        F::Error::then(gate, routes)
            .recover(recover)
            .unify()
            .map(move |mut res: Response| {
                if sticky.is_draining() {
                    res.headers_mut().insert(
                        warp::http::header::CONNECTION,
                        HeaderValue::from_static("close"),
                    );
                }
                res
            })
    }

    /// Fetches the configured extra headers and cookies.
    fn extra(&self) -> BoxedFilter<(Extra,)> {
        let mut filter = any().map(Extra::default).boxed();
        for &name in &self.headers {
            filter = filter
                .and(header(name))
                .map(move |mut extra: Extra, value: Option<HeaderValue>| {
                    extra.headers.extend(value.map(|v| (name, v)));
                    extra
                })
                .boxed();
        }
        for &name in &self.cookies {
            filter = filter
                .and(cookie(name))
                .map(|mut extra: Extra, field: Option<String>| {
                    extra.cookies.extend(field);
                    extra
                })
                .boxed();
        }
        filter
    }
}

impl From<Sticky> for StickyWrap {
    fn from(sticky: Sticky) -> Self {
        Self::new(sticky)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for warp::Rejection {}
    impl Sealed for std::convert::Infallible {}
}

/// The error type of the routes a [`StickyWrap`] wraps: warp's
/// [`Rejection`], or [`Infallible`] for routes that never reject (such as
/// a tree ending in a catch-all `.recover(...)`). Sealed.
pub trait RoutesError: sealed::Sealed + Sized {
    /// Runs `routes` after `gate`, appending the cookie `gate` extracts.
    #[doc(hidden)]
    fn then<G, F, R>(
        gate: G,
        routes: F,
    ) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static
    where
        G: Filter<Extract = (Option<SetCookie>,), Error = Rejection>
            + Clone
            + Send
            + Sync
            + 'static,
        F: Filter<Extract = (R,), Error = Self> + Clone + Send + Sync + 'static,
        R: Reply + 'static;
}

/// Both impls are the same code; each compiles against its concrete error
/// type, as warp's way of combining errors is not nameable.
macro_rules! routes_error {
    ($error:ty) => {
        impl RoutesError for $error {
            fn then<G, F, R>(
                gate: G,
                routes: F,
            ) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static
            where
                G: Filter<Extract = (Option<SetCookie>,), Error = Rejection>
                    + Clone
                    + Send
                    + Sync
                    + 'static,
                F: Filter<Extract = (R,), Error = Self> + Clone + Send + Sync + 'static,
                R: Reply + 'static,
            {
                gate.and(routes).map(append_cookie::<R>)
            }
        }
    };
}
routes_error!(Rejection);
routes_error!(Infallible);

/// The routes' reply, with the sticky cookie if the decision set one.
fn append_cookie<R: Reply>(cookie: Option<SetCookie>, reply: R) -> Response {
    let mut res = reply.into_response();
    if let Some(cookie) = cookie {
        cookie.apply(res.headers_mut());
    }
    res
}

/// The wrapping function for `routes.with(warp::wrap_fn(sticky_warp::sticky(sticky)))`.
///
/// Takes a [`Sticky`] or a [`StickyWrap`]. See [`StickyWrap::wrap`]; the
/// only difference is that this form boxes the wrapped filter (Rust cannot
/// yet name the unboxed type in this position), which costs one more
/// allocation per request.
///
/// ```
/// use warp::Filter;
/// use sticky_warp::sticky_core::{Env, Sticky};
///
/// let sticky = Sticky::builder().build(Env::from_process()).unwrap();
/// let routes = warp::path("hello")
///     .map(|| "hi")
///     .with(warp::wrap_fn(sticky_warp::sticky(sticky)));
/// # let _ = routes;
/// ```
pub fn sticky<F, R>(
    config: impl Into<StickyWrap>,
) -> impl Fn(F) -> BoxedFilter<(Response,)> + Clone + Send + Sync + 'static
where
    F: Filter<Extract = (R,)> + Clone + Send + Sync + 'static,
    F::Error: RoutesError,
    R: Reply + 'static,
{
    let config = config.into();
    move |routes| config.wrap(routes).boxed()
}

/// The short-circuit travelling from the gate to [`recover`] as a rejection.
#[derive(Debug)]
struct ShortCircuited(ShortCircuit);

impl Reject for ShortCircuited {}

/// Maps the decision: continue (maybe with a cookie) or reject with the
/// short-circuit, so that the routes never run.
fn gate(sticky: &Sticky, head: &Head) -> Result<Option<SetCookie>, Rejection> {
    match sticky.decide(head) {
        Decision::Stick(_) => Ok(None),
        Decision::SetCookie(cookie, _) => Ok(Some(cookie)),
        Decision::Replay(sc, _) | Decision::Refuse(sc, _) => {
            Err(warp::reject::custom(ShortCircuited(sc)))
        }
    }
}

/// Not a replay: the draining branch of the gate does not apply.
#[derive(Debug)]
struct NotReplayed;

impl Reject for NotReplayed {}

/// The replay to answer, if the decision is one with a body to read first.
fn replay_only(sticky: &Sticky, head: &Head) -> Result<ShortCircuit, Rejection> {
    // Without a `Content-Length` there is nothing to read: skip deciding twice.
    if !head.has_header("content-length") {
        return Err(warp::reject::custom(NotReplayed));
    }
    match sticky.decide(head) {
        Decision::Replay(sc, _) if sc.body_to_read() > 0 => Ok(sc),
        _ => Err(warp::reject::custom(NotReplayed)),
    }
}

/// Reads the body (its declared length at most), then rejects with the
/// replay. Closing a connection with its body unread resets it, and the
/// proxy can lose the answer.
async fn drain_then_answer<S, B>(sc: ShortCircuit, body: S) -> Result<Option<SetCookie>, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut left = sc.body_to_read();
    while left > 0 {
        match body.next().await {
            Some(Ok(chunk)) => left = left.saturating_sub(chunk.remaining() as u64),
            None | Some(Err(_)) => break,
        }
    }
    Err(warp::reject::custom(ShortCircuited(sc)))
}

/// Turns only our own rejection into its response; every other rejection
/// passes through unchanged.
fn recover(rejection: Rejection) -> Ready<Result<Response, Rejection>> {
    ready(match rejection.find::<ShortCircuited>() {
        Some(ShortCircuited(sc)) => Ok(sc.to_response()),
        None => Err(rejection),
    })
}

/// What the core reads of a request, fetched without copying the header map.
struct Head {
    method: Method,
    path: FullPath,
    query: Option<String>,
    /// The first field of each of [`HEADERS`].
    headers: [Option<HeaderValue>; HEADERS.len()],
    /// `fly-machine-id=<value>` of the first such cookie in any field.
    sticky_cookie: Option<String>,
    extra: Extra,
}

/// The configured extra headers and cookies that are present.
#[derive(Default)]
struct Extra {
    headers: Vec<(&'static str, HeaderValue)>,
    /// `<name>=<value>` of the first such cookie in any field.
    cookies: Vec<String>,
}

impl RequestView for Head {
    fn method(&self) -> &str {
        self.method.as_str()
    }
    fn path(&self) -> &str {
        self.path.as_str()
    }
    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    fn header_values<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>) {
        if name.eq_ignore_ascii_case(COOKIE) {
            // The first field as sent, then the named cookies from every
            // field (repeating what the first field holds is harmless: the
            // core sees the same values, and keeps their order).
            // `HEADERS[0]` is `COOKIE`.
            let first = self.headers[0].as_ref().map(HeaderValue::as_bytes);
            let named = self.sticky_cookie.iter().chain(&self.extra.cookies);
            for field in first.into_iter().chain(named.map(|c| c.as_bytes())) {
                if each(field).is_break() {
                    return;
                }
            }
            return;
        }
        let known = HEADERS.iter().zip(&self.headers);
        let known = known.map(|(n, v)| (*n, v.as_ref()));
        let extra = self.extra.headers.iter().map(|(n, v)| (*n, Some(v)));
        if let Some((_, Some(value))) = known
            .chain(extra)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            let _ = each(value.as_bytes());
        }
    }
}

/// A type whose parsing always fails: `warp::header::optional::<Never>`
/// answers `None` (without allocating) when the header is absent and
/// rejects when it is present.
enum Never {}

impl FromStr for Never {
    type Err = ();
    fn from_str(_: &str) -> Result<Self, ()> {
        Err(())
    }
}

/// The first value of the header `name`, if any; never rejects.
///
/// Absent headers (the common case for most of the names) cost a lookup;
/// present ones a reference-counted clone of the value.
fn header(
    name: &'static str,
) -> impl Filter<Extract = (Option<HeaderValue>,), Error = Infallible> + Clone + Send + Sync + 'static
{
    warp::header::optional::<Never>(name)
        .map(|_: Option<Never>| None)
        .or(warp::header::value(name).map(Some))
        .unify()
        .or(any().map(|| None))
        .unify()
}

/// A cookie value as `warp::cookie::optional` finds it.
struct CookieValue(String);

impl FromStr for CookieValue {
    type Err = Infallible;
    fn from_str(value: &str) -> Result<Self, Infallible> {
        Ok(Self(value.to_owned()))
    }
}

/// `<name>=<value>` of the first cookie `name` in any `Cookie` field, if any;
/// never rejects.
///
/// warp's header filters see only the first field of a repeated header;
/// its cookie filter joins every `Cookie` field (copying them only when
/// there are several). It reads UTF-8 text only, so a field with other
/// bytes hides the cookies of the later fields.
fn cookie(
    name: &'static str,
) -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone + Send + Sync + 'static {
    warp::cookie::optional::<CookieValue>(name).map(move |value: Option<CookieValue>| {
        value.map(|CookieValue(value)| {
            let mut field = String::with_capacity(name.len() + 1 + value.len());
            field.push_str(name);
            field.push('=');
            field.push_str(&value);
            field
        })
    })
}

/// The raw query, if any; never rejects.
fn query()
-> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone + Send + Sync + 'static {
    warp::query::raw().map(Some).or(any().map(|| None)).unify()
}

/// Fetches what the core reads: method, path, query, [`HEADERS`], the
/// sticky cookie from every field, and `extra`.
fn head(
    extra: BoxedFilter<(Extra,)>,
) -> impl Filter<Extract = (Head,), Error = Rejection> + Clone + Send + Sync + 'static {
    let [h0, h1, h2, h3, h4, h5, h6, h7, h8, h9] = HEADERS.map(header);
    let headers = h0
        .and(h1)
        .and(h2)
        .and(h3)
        .and(h4)
        .and(h5)
        .and(h6)
        .and(h7)
        .and(h8)
        .and(h9)
        .map(|a, b, c, d, e, f, g, h, i, j| [a, b, c, d, e, f, g, h, i, j]);
    warp::method()
        .and(warp::path::full())
        .and(query())
        .and(headers)
        .and(cookie(DEFAULT_COOKIE_NAME))
        .and(extra)
        .map(|method, path, query, headers, sticky_cookie, extra| Head {
            method,
            path,
            query,
            headers,
            sticky_cookie,
            extra,
        })
}
