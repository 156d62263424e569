//! Sticky sessions on [Fly.io](https://fly.io) for [poem](https://docs.rs/poem).
//!
//! [`StickyMiddleware`] is a poem [`Middleware`]: attach it with
//! [`EndpointExt::with`](poem::EndpointExt::with). For every request it asks the
//! [`sticky_core::Sticky`] engine what to do, and then
//!
//! - runs the endpoint and touches nothing (the user is pinned to this
//!   Machine, the path is excluded, or the app is not on Fly);
//! - runs the endpoint and appends `Set-Cookie` (plus `Cache-Control: private`
//!   when the response has no `Cache-Control`) to its response, next to any
//!   `Set-Cookie` of the app's own;
//! - or answers at once with `fly-replay` (307 by default, empty body)
//!   **without running the endpoint**, so Fly's proxy replays the request to
//!   the Machine the user is pinned to. WebSocket upgrade requests get the
//!   same answer (never a `101`): the endpoint, and so the upgrade, never
//!   runs.
//!
//! The [adapter contract](sticky_core#the-adapter-contract) holds here as
//! everywhere: a replay reads the body it names first, and while draining
//! every answer closes its connection. An endpoint's error passes through
//! as an error, without the cookie (as warp's rejections do), but with
//! `Connection: close` while draining.
//!
//! The adapter holds no decision logic; every rule (cookie attributes,
//! excluded paths, body limits, draining) is configured on the engine
//! through [`sticky_core::Sticky::builder`], re-exported here as
//! [`sticky_core`] so one dependency is enough.
//!
//! # Quickstart
//!
//! ```
//! use poem::{EndpointExt, Route, get, handler};
//! use sticky_poem::sticky_core::{Env, Sticky};
//!
//! #[handler]
//! fn index() -> &'static str {
//!     "hello"
//! }
//!
//! #[handler]
//! fn health() -> &'static str {
//!     "ok"
//! }
//!
//! # fn main() -> Result<(), sticky_poem::sticky_core::ConfigError> {
//! // Once, at start-up. On a Machine use `Env::from_process()`.
//! let sticky = Sticky::builder()
//!     .exclude(["/health"])
//!     .build(Env::machine("148ed599c14189"))?;
//!
//! let app = Route::new()
//!     .at("/", get(index))
//!     .at("/health", get(health))
//!     .with(sticky_poem::StickyMiddleware::new(sticky));
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! # let cli = poem::test::TestClient::new(app);
//! // A user pinned to another Machine: the proxy is asked to replay.
//! let resp = cli
//!     .get("/")
//!     .header("cookie", "fly-machine-id=90801679a10038")
//!     .send()
//!     .await;
//! resp.assert_status(poem::http::StatusCode::TEMPORARY_REDIRECT);
//! resp.assert_header("fly-replay", "prefer_instance=90801679a10038");
//! # });
//! # Ok(())
//! # }
//! ```
//!
//! Serving it is plain poem:
//!
//! ```no_run
//! # use poem::{EndpointExt, Route, Server, get, handler, listener::TcpListener};
//! # use sticky_poem::sticky_core::{Env, Sticky};
//! # #[handler] fn index() -> &'static str { "hello" }
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let sticky = Sticky::builder().build(Env::from_process())?;
//!     let app = Route::new()
//!         .at("/", get(index))
//!         .with(sticky_poem::StickyMiddleware::new(sticky));
//!     Server::new(TcpListener::bind("0.0.0.0:8080")).run(app).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Where to attach it
//!
//! Path rules (`include`, `exclude`) are matched against the request's
//! **original** path ([`Request::original_uri`]), not the path
//! [`Route::nest`](poem::Route::nest) rewrites for the inner routes, so a rule
//! reads the same wherever the middleware sits: with
//! `.exclude(["/api/health"])`, the middleware attached to the routes inside
//! `Route::new().nest("/api", ...)` leaves `/api/health` alone, exactly as it
//! would when attached at the top.
//!
//! Attaching it outermost is best: a short-circuit then costs nothing else.
//! Middleware outside it sees the replay answer like any other response.
//!
//! # Skipping requests
//!
//! Path globs, methods and a predicate over the request view are configured
//! on the [`sticky_core::Sticky`] builder and behave the same in every
//! framework. [`StickyMiddleware::skip_if`] adds a predicate over the whole
//! [`poem::Request`] (extensions, data, remote address) for poem-specific
//! needs.
//!
//! # Errors from the endpoint
//!
//! When the endpoint returns `Err` (poem's router does this for a 404, for
//! instance), the error is passed on unchanged, so error handlers outside
//! the middleware (`catch_error`, `catch_all_error`) keep working; such a
//! response gets no `Set-Cookie`, and the user is simply pinned on the next
//! successful response. To pin on error responses too, turn errors into
//! responses inside the middleware:
//! `route.catch_all_error(|e| async move { e.into_response() }).with(sticky_poem::StickyMiddleware::new(sticky))`.
//!
//! # Draining on shutdown
//!
//! When a Machine is about to stop (Fly sends a signal), call
//! [`sticky_core::Sticky::drain`] on a clone of the engine: from then on new
//! and pinned-here requests are answered with `fly-replay: elsewhere=true`
//! and the proxy moves them, and their users, to another Machine. Keep
//! serving for a grace period so the proxy and clients see it, then stop
//! with poem's [`Server::run_with_graceful_shutdown`](poem::Server::run_with_graceful_shutdown):
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use poem::{EndpointExt, Route, Server, get, handler, listener::TcpListener};
//! use sticky_poem::sticky_core::{Env, Sticky};
//! use tokio::signal::unix::{SignalKind, signal};
//!
//! #[handler]
//! fn index() -> &'static str {
//!     "hello"
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let sticky = Sticky::builder().build(Env::from_process())?;
//!     let app = Route::new()
//!         .at("/", get(index))
//!         .with(sticky_poem::StickyMiddleware::new(sticky.clone()));
//!
//!     let mut sigterm = signal(SignalKind::terminate())?;
//!     let drained = async move {
//!         sigterm.recv().await;
//!         // Clones share the switch: the middleware now replays elsewhere.
//!         sticky.drain();
//!         // Keep serving (replays, requests that cannot move) for a while.
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!     };
//!
//!     Server::new(TcpListener::bind("0.0.0.0:8080"))
//!         // Then stop accepting, and give in-flight requests 10 s to finish.
//!         .run_with_graceful_shutdown(app, drained, Some(Duration::from_secs(10)))
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! What draining does, and the `fly.toml` settings it needs, are in
//! [`sticky_core`'s docs](sticky_core#draining-on-shutdown).
//!
//! # Features
//!
//! - `signed`: HMAC-signed cookies (`sticky-core/signed`).
//! - `tracing`: a debug-level `tracing` event per decision (`sticky-core/tracing`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response, ResponseParts};
use sticky_core::{Action, Answer, HttpView};

pub use sticky_core;

/// The sticky-session middleware for poem.
///
/// Build the engine once with [`sticky_core::Sticky::builder`], wrap it in
/// this middleware and attach it with
/// [`EndpointExt::with`](poem::EndpointExt::with). Cloning is cheap, and every
/// clone shares the engine's drain switch.
///
/// ```
/// use poem::{EndpointExt, Route, get, handler};
/// use sticky_poem::sticky_core::{Env, Sticky};
///
/// #[handler]
/// fn index() -> &'static str {
///     "hello"
/// }
///
/// let sticky = Sticky::builder().build(Env::default())?; // not on Fly: does nothing
/// let app = Route::new().at("/", get(index)).with(sticky_poem::StickyMiddleware::new(sticky));
/// # Ok::<(), sticky_poem::sticky_core::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct StickyMiddleware<P = NoSkip> {
    sticky: sticky_core::Sticky,
    skip: P,
}

impl StickyMiddleware {
    /// A middleware deciding with `sticky`.
    pub fn new(sticky: sticky_core::Sticky) -> Self {
        Self {
            sticky,
            skip: NoSkip,
        }
    }
}

impl<P> StickyMiddleware<P> {
    /// Bypasses the middleware for requests where `skip` returns true.
    ///
    /// Path globs, methods and a predicate over the request view belong on
    /// the engine's builder and behave the same in every framework; this
    /// predicate sees the whole [`poem::Request`] (extensions, data, remote
    /// address) for poem-specific needs.
    ///
    /// ```
    /// use poem::{EndpointExt, Request, Route, get, handler};
    /// use sticky_poem::sticky_core::{Env, Sticky};
    ///
    /// #[handler]
    /// fn index() -> &'static str {
    ///     "hello"
    /// }
    ///
    /// let sticky = Sticky::builder().build(Env::default())?;
    /// let middleware = sticky_poem::StickyMiddleware::new(sticky)
    ///     .skip_if(|req: &Request| req.headers().contains_key("x-internal"));
    /// let app = Route::new().at("/", get(index)).with(middleware);
    /// # Ok::<(), sticky_poem::sticky_core::ConfigError>(())
    /// ```
    pub fn skip_if<F: Skip>(self, skip: F) -> StickyMiddleware<F> {
        StickyMiddleware {
            sticky: self.sticky,
            skip,
        }
    }

    /// The engine, e.g. to call [`drain`](sticky_core::Sticky::drain) on it.
    pub fn sticky(&self) -> &sticky_core::Sticky {
        &self.sticky
    }
}

impl From<sticky_core::Sticky> for StickyMiddleware {
    fn from(sticky: sticky_core::Sticky) -> Self {
        Self::new(sticky)
    }
}

/// A predicate that exempts a request from stickiness (see [`StickyMiddleware::skip_if`]).
pub trait Skip: Send + Sync {
    /// Whether `req` bypasses the middleware.
    fn skip(&self, req: &Request) -> bool;
}

/// The default: skip nothing (the engine's own rules still apply).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSkip;

impl Skip for NoSkip {
    fn skip(&self, _: &Request) -> bool {
        false
    }
}

impl<F> Skip for F
where
    F: Fn(&Request) -> bool + Send + Sync,
{
    fn skip(&self, req: &Request) -> bool {
        self(req)
    }
}

impl<E: Endpoint, P: Skip + Clone> Middleware<E> for StickyMiddleware<P> {
    type Output = StickyEndpoint<E, P>;

    fn transform(&self, ep: E) -> Self::Output {
        StickyEndpoint {
            inner: ep,
            sticky: self.sticky.clone(),
            skip: self.skip.clone(),
        }
    }
}

/// The endpoint [`StickyMiddleware`] wraps around an inner endpoint.
///
/// Its output is a [`poem::Response`]: the inner endpoint's output converted
/// with [`IntoResponse`], or the short-circuit answer.
#[derive(Debug)]
pub struct StickyEndpoint<E, P = NoSkip> {
    inner: E,
    sticky: sticky_core::Sticky,
    skip: P,
}

impl<E, P> StickyEndpoint<E, P> {
    /// The engine.
    pub fn sticky(&self) -> &sticky_core::Sticky {
        &self.sticky
    }

    /// The wrapped endpoint.
    pub fn get_ref(&self) -> &E {
        &self.inner
    }

    /// Consumes the middleware, returning the wrapped endpoint.
    pub fn into_inner(self) -> E {
        self.inner
    }
}

impl<E: Endpoint, P: Skip> Endpoint for StickyEndpoint<E, P> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let decision = if self.skip.skip(&req) {
            self.sticky.skipped()
        } else {
            // The original URI: `Route::nest` rewrites `uri()` for inner routes.
            self.sticky.decide(&HttpView {
                method: req.method(),
                uri: req.original_uri(),
                headers: req.headers(),
            })
        };
        match decision.into_action() {
            Action::Run(finish) => match self.inner.call(req).await {
                Ok(output) => {
                    let mut resp = output.into_response();
                    finish.apply(resp.status(), resp.headers_mut());
                    Ok(resp)
                }
                // An error passes through as an error (no cookie: it is not
                // a reply), but still closes its connection while draining.
                Err(err) if finish.closes(err.status().as_u16()) => {
                    let mut resp = err.into_response();
                    resp.headers_mut().insert(
                        poem::http::header::CONNECTION,
                        poem::http::HeaderValue::from_static("close"),
                    );
                    Err(poem::Error::from_response(resp))
                }
                Err(err) => Err(err),
            },
            Action::Answer(answer) => {
                if answer.body_to_read() > 0 {
                    let limit = usize::try_from(answer.body_to_read()).unwrap_or(usize::MAX);
                    let _ = req.take_body().into_bytes_limit(limit).await;
                }
                Ok(short_circuit(&answer))
            }
        }
    }
}

/// The answer sent instead of running the endpoint: status, headers, empty body.
fn short_circuit(answer: &Answer) -> Response {
    let (parts, ()) = answer.to_response::<()>().into_parts();
    Response::from_parts(
        ResponseParts {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            extensions: parts.extensions,
        },
        Body::empty(),
    )
}
