//! Session affinity on [Fly.io](https://fly.io) for [actix-web].
//!
//! [`StickyMiddleware`] is an actix-web middleware (a [`Transform`] used with
//! `.wrap(...)`). For each request it asks [`sticky_core::Sticky::decide`]
//! and then either calls the wrapped service unchanged, calls it and appends
//! the sticky `Set-Cookie` to its response, or answers at once with a
//! `fly-replay` response **without calling the wrapped service**: Fly's proxy
//! then replays the request to the Machine the user is pinned to. All
//! decisions live in `sticky-core`; this crate only translates.
//!
//! # Quickstart
//!
//! Build the engine once, then wrap the app. The configuration is the same
//! as for every other sticky adapter; only the line that attaches the
//! middleware is specific to actix-web.
//!
//! ```no_run
//! use actix_web::{App, HttpServer, web};
//! use sticky_actix_web::sticky_core::{Env, Sticky};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sticky = Sticky::builder()
//!     .exclude(["/health"])
//!     .build(Env::from_process())?;
//!
//! actix_web::rt::System::new().block_on(async move {
//!     HttpServer::new(move || {
//!         App::new()
//!             .route("/", web::get().to(|| async { "hello from this Machine" }))
//!             .route("/health", web::get().to(|| async { "ok" }))
//!             .wrap(sticky_actix_web::StickyMiddleware::new(sticky.clone()))
//!     })
//!     .bind(("0.0.0.0", 8080))?
//!     .run()
//!     .await
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! Register the middleware **last** (actix-web runs the last `.wrap(...)`
//! first) so that nothing runs before the decision: a replayed request must
//! not have side effects on this Machine. It also works on a `Scope` or a
//! `Resource`; the decision always sees the full request path.
//!
//! What the middleware does, end to end (this example runs):
//!
//! ```
//! use actix_web::{App, http::StatusCode, test, web};
//! use sticky_actix_web::sticky_core::{Env, Sticky};
//!
//! # actix_web::rt::System::new().block_on(async {
//! let sticky = Sticky::builder().build(Env::machine("148ed599c14189")).unwrap();
//! let app = test::init_service(
//!     App::new()
//!         .route("/", web::get().to(|| async { "served here" }))
//!         .wrap(sticky_actix_web::StickyMiddleware::new(sticky)),
//! )
//! .await;
//!
//! // A first visit is served here and pinned here.
//! let res = test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
//! assert_eq!(res.status(), StatusCode::OK);
//! let cookie = res.headers().get("set-cookie").unwrap().to_str().unwrap();
//! assert!(cookie.starts_with("fly-machine-id=148ed599c14189;"));
//!
//! // A user pinned to another Machine is replayed there; the handler does not run.
//! let req = test::TestRequest::get()
//!     .uri("/")
//!     .insert_header(("cookie", "fly-machine-id=90801679a10038"))
//!     .to_request();
//! let res = test::call_service(&app, req).await;
//! assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
//! assert_eq!(res.headers().get("fly-replay").unwrap(), "prefer_instance=90801679a10038");
//! assert!(test::read_body(res).await.is_empty());
//! # });
//! ```
//!
//! # Draining on shutdown
//!
//! Fly sends a signal before stopping a Machine. Turn drain on (requests
//! pinned here are then replayed elsewhere with `elsewhere=true`), keep
//! serving for a grace period, then stop the server gracefully. Disable
//! actix-web's own signal handling so that it does not stop at once:
//!
//! ```no_run
//! use std::time::Duration;
//! use actix_web::{App, HttpServer, web};
//! use sticky_actix_web::sticky_core::{Env, Sticky};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sticky = Sticky::builder().build(Env::from_process())?;
//! let engine = sticky.clone();
//!
//! actix_web::rt::System::new().block_on(async move {
//!     let server = HttpServer::new(move || {
//!         App::new()
//!             .route("/", web::get().to(|| async { "hello" }))
//!             .wrap(sticky_actix_web::StickyMiddleware::new(engine.clone()))
//!     })
//!     .disable_signals()
//!     .shutdown_timeout(5)
//!     .bind(("0.0.0.0", 8080))?
//!     .run();
//!
//!     let handle = server.handle();
//!     actix_web::rt::spawn(async move {
//!         use tokio::signal::unix::{SignalKind, signal};
//!         let Ok(mut term) = signal(SignalKind::terminate()) else { return };
//!         term.recv().await;
//!         sticky.drain(); // from now on, new and pinned-here requests go elsewhere
//!         actix_web::rt::time::sleep(Duration::from_secs(5)).await;
//!         handle.stop(true).await; // graceful: in-flight requests finish
//!     });
//!     server.await
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! What draining does, and the `fly.toml` settings it needs, are in
//! [`sticky_core`'s docs](sticky_core#draining-on-shutdown).
//!
//! # Skipping requests
//!
//! Path globs, methods and a predicate over the request view are configured
//! on the [`sticky_core::Sticky`] builder and behave the same in every
//! framework. [`StickyMiddleware::skip_if`] adds a predicate over the full
//! [`ServiceRequest`] (extensions, app data, peer address) for actix-specific
//! needs.
//!
//! # Notes on actix-web
//!
//! - actix-web uses `http` 0.2 types. The request view borrows the method,
//!   path, query and header values straight from the [`ServiceRequest`]; no
//!   header map is converted or copied.
//! - The short-circuit response has an empty body; the two body types are
//!   unified with [`EitherBody`] (`Left` is the app's body, `Right` the
//!   short-circuit).
//! - A WebSocket upgrade that must be replayed gets the replay status
//!   (307 by default), never `101`; actix-web then answers with
//!   `connection: close`, which Fly's proxy handles.
//! - The [adapter contract](sticky_core#the-adapter-contract) holds here as
//!   everywhere: a replay reads the body it names first (an upgrade's
//!   payload, the upgraded stream, is never read), and while draining every
//!   answer closes its connection (actix-web writes `Connection` from the
//!   response's connection type, so that is what is set).
//!
//! [actix-web]: https://actix.rs
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::future::{Future, Ready, ready};
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::Error;
use actix_web::body::EitherBody;
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{CACHE_CONTROL, HeaderMap, HeaderName, HeaderValue, SET_COOKIE};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::{HttpMessage, HttpResponse};
use futures_util::StreamExt;
use pin_project_lite::pin_project;
pub use sticky_core;
use sticky_core::{Action, Answer, Finish, HeaderNames, READ_HEADERS, RequestView};

/// A predicate that exempts a request from stickiness.
///
/// Implemented for every `Fn(&ServiceRequest) -> bool`.
pub trait Skip {
    /// Whether `req` bypasses the middleware.
    fn skip(&self, req: &ServiceRequest) -> bool;
}

/// The default: skip nothing (the engine's own rules still apply).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSkip;

impl Skip for NoSkip {
    fn skip(&self, _: &ServiceRequest) -> bool {
        false
    }
}

impl<F> Skip for F
where
    F: Fn(&ServiceRequest) -> bool,
{
    fn skip(&self, req: &ServiceRequest) -> bool {
        self(req)
    }
}

/// The session-affinity middleware: use it with `.wrap(...)` on an `App`,
/// a `Scope` or a `Resource`.
///
/// ```
/// use actix_web::{App, web};
/// use sticky_actix_web::StickyMiddleware;
/// use sticky_actix_web::sticky_core::{Env, Sticky};
///
/// let sticky = Sticky::builder().build(Env::default()).unwrap();
/// let app = App::new()
///     .route("/", web::get().to(|| async { "hi" }))
///     .wrap(StickyMiddleware::new(sticky));
/// # let _ = app;
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

impl From<sticky_core::Sticky> for StickyMiddleware {
    fn from(sticky: sticky_core::Sticky) -> Self {
        Self::new(sticky)
    }
}

impl<P> StickyMiddleware<P> {
    /// Bypasses the middleware for requests where `skip` returns true.
    ///
    /// ```
    /// # use sticky_actix_web::sticky_core::{Env, Sticky};
    /// use actix_web::dev::ServiceRequest;
    /// use sticky_actix_web::StickyMiddleware;
    ///
    /// let sticky = Sticky::builder().build(Env::default()).unwrap();
    /// let middleware = StickyMiddleware::new(sticky)
    ///     .skip_if(|req: &ServiceRequest| req.headers().contains_key("x-internal"));
    /// # let _ = middleware;
    /// ```
    pub fn skip_if<F>(self, skip: F) -> StickyMiddleware<F>
    where
        F: Fn(&ServiceRequest) -> bool,
    {
        StickyMiddleware {
            sticky: self.sticky,
            skip,
        }
    }

    /// The engine, e.g. to call [`sticky_core::Sticky::drain`].
    pub fn sticky(&self) -> &sticky_core::Sticky {
        &self.sticky
    }
}

impl<S, B, P> Transform<S, ServiceRequest> for StickyMiddleware<P>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    P: Skip + Clone,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = StickyService<S, P>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(StickyService {
            service,
            read: parse(self.sticky.read_headers()),
            sticky: self.sticky.clone(),
            skip: self.skip.clone(),
        }))
    }
}

/// The service made by [`StickyMiddleware`] around the wrapped service.
#[derive(Debug)]
pub struct StickyService<S, P = NoSkip> {
    service: S,
    sticky: sticky_core::Sticky,
    /// [`Sticky::read_headers`](sticky_core::Sticky::read_headers) as
    /// actix-web's names, parsed once per worker.
    read: Box<[Option<HeaderName>]>,
    skip: P,
}

impl<S, P> StickyService<S, P> {
    /// The engine.
    pub fn sticky(&self) -> &sticky_core::Sticky {
        &self.sticky
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }

    /// Consumes the middleware, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.service
    }
}

impl<S, B, P> Service<ServiceRequest> for StickyService<S, P>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    P: Skip,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, B>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let decision = if self.skip.skip(&req) {
            self.sticky.skipped()
        } else {
            self.sticky.decide(&View {
                req: &req,
                read: (self.sticky.read_headers(), &self.read),
            })
        };
        let kind = match decision.into_action() {
            Action::Run(finish) => Kind::Inner {
                future: self.service.call(req),
                finish,
            },
            Action::Answer(answer) => Kind::Answer {
                // Other short-circuits leave the body to actix-web.
                payload: if answer.body_to_read() > 0 {
                    req.take_payload()
                } else {
                    Payload::None
                },
                left: answer.body_to_read(),
                response: Some(short_circuit(req, &answer)),
            },
        };
        ResponseFuture { kind }
    }
}

/// Answers `req` with the short-circuit (status, headers, empty body),
/// dropping its unread body.
fn short_circuit<B>(req: ServiceRequest, answer: &Answer) -> ServiceResponse<EitherBody<B>> {
    // The core never yields 101 or an invalid status; 307 is its default.
    let status = StatusCode::from_u16(answer.status()).unwrap_or(StatusCode::TEMPORARY_REDIRECT);
    let mut response = HttpResponse::new(status);
    append(response.headers_mut(), answer.headers());
    if answer.closes_connection() {
        response
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    req.into_response(response).map_into_right_body()
}

/// Appends headers yielded by the core (lowercase static names, validated
/// values) to an actix-web header map, never replacing existing values.
/// `connection` is left out: actix-web writes it from the connection type.
fn append<'a>(map: &mut HeaderMap, headers: impl Iterator<Item = (&'static str, &'a [u8])>) {
    for (name, value) in headers {
        // Both were validated by the core; a failure would be a core bug and
        // dropping the header is the safe outcome.
        if let (Some(name), Ok(value)) = (header_name(name), HeaderValue::from_bytes(value)) {
            map.append(name, value);
        }
    }
}

/// The names the core yields, without allocating; any other is parsed.
fn header_name(name: &'static str) -> Option<HeaderName> {
    const FLY_REPLAY: HeaderName = HeaderName::from_static("fly-replay");
    const FLY_REPLAY_CACHE: HeaderName = HeaderName::from_static("fly-replay-cache");
    const FLY_REPLAY_CACHE_TTL: HeaderName = HeaderName::from_static("fly-replay-cache-ttl-secs");
    match name {
        "set-cookie" => Some(SET_COOKIE),
        "cache-control" => Some(CACHE_CONTROL),
        "fly-replay" => Some(FLY_REPLAY),
        "fly-replay-cache" => Some(FLY_REPLAY_CACHE),
        "fly-replay-cache-ttl-secs" => Some(FLY_REPLAY_CACHE_TTL),
        "connection" => None,
        other => HeaderName::from_lowercase(other.as_bytes()).ok(),
    }
}
/// The request view the engine decides on, borrowed from the actix-web
/// request, with the engine's per-request header set and its parsed names.
struct View<'r> {
    req: &'r ServiceRequest,
    read: (&'r HeaderNames, &'r [Option<HeaderName>]),
}

/// `names` as actix-web's header names (`None`: not a valid name, so in no
/// request).
fn parse(names: &HeaderNames) -> Box<[Option<HeaderName>]> {
    names
        .iter()
        .map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect()
}

impl RequestView for View<'_> {
    fn method(&self) -> &str {
        self.req.method().as_str()
    }

    fn path(&self) -> &str {
        self.req.path()
    }

    fn query(&self) -> Option<&str> {
        // actix-web gives "" for both "no query" and "empty query".
        Some(self.req.query_string()).filter(|q| !q.is_empty())
    }

    fn header_values<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>) {
        // Every value of a repeated header, in the order received. The
        // headers the engine reads are looked up by pre-parsed name: by
        // `&str`, the map parses and validates the name on every call.
        let headers = self.req.headers();
        let values = match READ_HEADERS.iter().position(|h| *h == name) {
            Some(i) => headers.get_all(&KNOWN[i]),
            None => headers.get_all(name),
        };
        for value in values {
            if each(value.as_bytes()).is_break() {
                break;
            }
        }
    }

    fn header_values_of<'a>(
        &'a self,
        names: &HeaderNames,
        each: &mut dyn FnMut(usize, &'a [u8]) -> ControlFlow<()>,
    ) {
        let headers = self.req.headers();
        // The engine's own set, asked for on every request: a lookup per
        // name, parsed once, costs less than a walk over actix-web's hashed
        // map (whose `iter` also counts every value first), and does not
        // grow with the fields a browser sends.
        let (read, parsed) = self.read;
        if std::ptr::eq(names, read) {
            for (i, name) in parsed.iter().enumerate() {
                let Some(name) = name else { continue };
                for value in headers.get_all(name) {
                    if each(i, value.as_bytes()).is_break() {
                        return;
                    }
                }
            }
            return;
        }
        for (field, value) in headers.iter() {
            if let Some(i) = names.position(field.as_str())
                && each(i, value.as_bytes()).is_break()
            {
                return;
            }
        }
    }
}

/// [`READ_HEADERS`] as http 0.2 names, parsed once.
static KNOWN: [HeaderName; READ_HEADERS.len()] = [
    HeaderName::from_static(READ_HEADERS[0]),
    HeaderName::from_static(READ_HEADERS[1]),
    HeaderName::from_static(READ_HEADERS[2]),
    HeaderName::from_static(READ_HEADERS[3]),
    HeaderName::from_static(READ_HEADERS[4]),
    HeaderName::from_static(READ_HEADERS[5]),
    HeaderName::from_static(READ_HEADERS[6]),
    HeaderName::from_static(READ_HEADERS[7]),
    HeaderName::from_static(READ_HEADERS[8]),
    HeaderName::from_static(READ_HEADERS[9]),
];

pin_project! {
    /// The future of [`StickyService`]: the wrapped service's future (then
    /// the headers to add), or a short-circuit answer after reading the
    /// body it names.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: F, finish: Finish },
        Answer { payload: Payload, left: u64, response: Option<ServiceResponse<EitherBody<B>>> },
    }
}

impl<F, B> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
{
    type Output = Result<ServiceResponse<EitherBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, finish } => {
                let mut response = std::task::ready!(future.poll(cx))?;
                let status = response.status().as_u16();
                let headers = response.headers_mut();
                let has_cache_control = headers.contains_key(CACHE_CONTROL);
                append(headers, finish.headers(status, has_cache_control));
                if finish.closes(status) {
                    response
                        .response_mut()
                        .head_mut()
                        .set_connection_type(ConnectionType::Close);
                }
                Poll::Ready(Ok(response.map_into_left_body()))
            }
            KindProj::Answer {
                payload,
                left,
                response,
            } => {
                while *left > 0 {
                    match std::task::ready!(payload.poll_next_unpin(cx)) {
                        Some(Ok(chunk)) => *left = left.saturating_sub(chunk.len() as u64),
                        None | Some(Err(_)) => break,
                    }
                }
                Poll::Ready(response.take().ok_or_else(|| {
                    actix_web::error::ErrorInternalServerError(
                        "ResponseFuture polled after completion",
                    )
                }))
            }
        }
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
