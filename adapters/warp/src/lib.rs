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
//! The [adapter contract](sticky_core#the-adapter-contract) holds here as
//! everywhere: a replay reads the body it names first, and while draining
//! every reply closes its connection.
//!
//! # What the wrapper reads
//!
//! warp offers no filter that borrows the whole request, so the wrapper
//! takes the method, the path, the raw query and a clone of the header map
//! (`warp::header::headers_cloned()`: the values are reference-counted, so
//! the clone copies the map's index, not the bytes). The engine, a
//! [`Builder::skip_if`] predicate and a custom key source therefore see
//! every header and every `Cookie` field, exactly as in the other
//! frameworks.
//!
//! # The tower alternative
//!
//! If you serve warp through hyper yourself, `warp::service(routes)` is a
//! tower `Service`, and the tower layer of the `sticky-axum` crate
//! (`StickyLayer`) can wrap it. It does not work with `warp::serve`, which
//! takes a filter.
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
//! What draining does, and the `fly.toml` settings it needs, are in
//! [`sticky_core`'s docs](sticky_core#draining-on-shutdown).
//!
//! [`Builder::skip_if`]: sticky_core::Builder::skip_if
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::ops::ControlFlow;

use futures_util::{Stream, StreamExt};
pub use sticky_core;
use sticky_core::{Action, Answer, Finish, HeaderNames, RequestView, Sticky};
use warp::filters::path::FullPath;
use warp::http::{HeaderMap, Method};
use warp::reject::{Reject, Rejection};
use warp::reply::{Reply, Response};
use warp::{Buf, Filter, any};

/// The wrapper: the engine, ready to wrap a filter tree.
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
/// let routes = StickyWrap::new(sticky).wrap(warp::any().map(|| "hi"));
/// # let _ = routes;
/// ```
#[derive(Clone, Debug)]
pub struct StickyWrap {
    sticky: Sticky,
}

impl StickyWrap {
    /// A wrapper deciding with `sticky`.
    pub fn new(sticky: Sticky) -> Self {
        Self { sticky }
    }

    /// The engine, e.g. to call [`Sticky::drain`].
    pub fn sticky(&self) -> &Sticky {
        &self.sticky
    }

    /// Wraps `routes`: the returned filter decides first, then runs
    /// `routes` (adding the decision's headers to its reply) or answers
    /// with the short-circuit response without running `routes`.
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
        let decide = head().and_then(move |head: Head| ready(gate(&sticky, &head)));
        // A replay is answered once the body is read: `decide` rejects, so
        // `or` tries this branch, which decides again (only for
        // short-circuits of requests with a body) and takes the body only
        // for a replay.
        let sticky = self.sticky.clone();
        let drain = head()
            .and_then(move |head: Head| ready(replay_only(&sticky, &head)))
            .and(warp::body::stream())
            .and_then(drain_then_answer);
        let gate = decide.or(drain).unify();
        F::Error::then(gate, routes).recover(recover).unify()
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
    /// Runs `routes` after `gate`, adding the headers `gate` extracts.
    #[doc(hidden)]
    fn then<G, F, R>(
        gate: G,
        routes: F,
    ) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static
    where
        G: Filter<Extract = (Finish,), Error = Rejection> + Clone + Send + Sync + 'static,
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
                G: Filter<Extract = (Finish,), Error = Rejection> + Clone + Send + Sync + 'static,
                F: Filter<Extract = (R,), Error = Self> + Clone + Send + Sync + 'static,
                R: Reply + 'static,
            {
                gate.and(routes).map(finish::<R>)
            }
        }
    };
}
routes_error!(Rejection);
routes_error!(Infallible);

/// The routes' reply, with the decision's headers added.
fn finish<R: Reply>(finish: Finish, reply: R) -> Response {
    let mut res = reply.into_response();
    finish.apply(res.status(), res.headers_mut());
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
) -> impl Fn(F) -> warp::filters::BoxedFilter<(Response,)> + Clone + Send + Sync + 'static
where
    F: Filter<Extract = (R,)> + Clone + Send + Sync + 'static,
    F::Error: RoutesError,
    R: Reply + 'static,
{
    let config = config.into();
    move |routes| config.wrap(routes).boxed()
}

/// The answer travelling from the gate to [`recover`] as a rejection.
#[derive(Debug)]
struct Answered(Answer);

impl Reject for Answered {}

/// Maps the decision: continue (with the headers to add) or reject with
/// the answer, so that the routes never run.
fn gate(sticky: &Sticky, head: &Head) -> Result<Finish, Rejection> {
    match sticky.decide(head).into_action() {
        Action::Run(finish) => Ok(finish),
        Action::Answer(answer) => Err(warp::reject::custom(Answered(answer))),
    }
}

/// Not an answer with a body to read: the draining branch of the gate does
/// not apply.
#[derive(Debug)]
struct NothingToRead;

impl Reject for NothingToRead {}

/// The answer to send, if the decision is one with a body to read first.
fn replay_only(sticky: &Sticky, head: &Head) -> Result<Answer, Rejection> {
    // Without a `Content-Length` there is nothing to read: skip deciding twice.
    if !head.has_header("content-length") {
        return Err(warp::reject::custom(NothingToRead));
    }
    match sticky.decide(head).into_action() {
        Action::Answer(answer) if answer.body_to_read() > 0 => Ok(answer),
        _ => Err(warp::reject::custom(NothingToRead)),
    }
}

/// Reads the body (its declared length at most), then rejects with the
/// answer (see the adapter contract).
async fn drain_then_answer<S, B>(answer: Answer, body: S) -> Result<Finish, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut left = answer.body_to_read();
    while left > 0 {
        match body.next().await {
            Some(Ok(chunk)) => left = left.saturating_sub(chunk.remaining() as u64),
            None | Some(Err(_)) => break,
        }
    }
    Err(warp::reject::custom(Answered(answer)))
}

/// Turns only our own rejection into its response; every other rejection
/// passes through unchanged.
fn recover(rejection: Rejection) -> Ready<Result<Response, Rejection>> {
    ready(match rejection.find::<Answered>() {
        Some(Answered(answer)) => Ok(answer.to_response()),
        None => Err(rejection),
    })
}

/// What the core reads of a request: the whole head.
struct Head {
    method: Method,
    path: FullPath,
    query: Option<String>,
    headers: HeaderMap,
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
        sticky_core::http_header_values(&self.headers, name, each);
    }
    fn header_values_of<'a>(
        &'a self,
        names: &HeaderNames,
        each: &mut dyn FnMut(usize, &'a [u8]) -> ControlFlow<()>,
    ) {
        sticky_core::http_header_values_of(&self.headers, names, each);
    }
}

/// The raw query, if any; never rejects.
fn query()
-> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone + Send + Sync + 'static {
    warp::query::raw().map(Some).or(any().map(|| None)).unify()
}

/// The request head: method, path, query and headers.
fn head() -> impl Filter<Extract = (Head,), Error = Infallible> + Clone + Send + Sync + 'static {
    warp::method()
        .and(warp::path::full())
        .and(query())
        .and(warp::header::headers_cloned())
        .map(|method, path, query, headers| Head {
            method,
            path,
            query,
            headers,
        })
}
