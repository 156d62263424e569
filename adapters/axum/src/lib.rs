//! Session affinity on [Fly.io](https://fly.io) for axum, hyper, tonic and any
//! [tower](https://docs.rs/tower) stack.
//!
//! [`StickyLayer`] wraps a service. For each request it asks
//! [`sticky_core::Sticky::decide`] and then either calls the inner service
//! unchanged, calls it and appends the sticky `Set-Cookie` to its response, or
//! answers at once with a `fly-replay` response **without calling the inner
//! service**: Fly's proxy then replays the request to the Machine the user is
//! pinned to. All decisions live in `sticky-core`; this crate only translates.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use sticky_axum::StickyLayer;
//! use sticky_axum::sticky_core::{Env, Sticky};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let sticky = Sticky::builder()
//!     .exclude(["/health"])
//!     .build(Env::from_process())?;
//!
//! let app = Router::new()
//!     .route("/", get(|| async { "hello from this Machine" }))
//!     .route("/health", get(|| async { "ok" }))
//!     .layer(StickyLayer::new(sticky));
//!
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Put the layer outermost (last `.layer(...)` call) so that nothing runs
//! before the decision: a replayed request must not have side effects here.
//!
//! A replay is answered once the request's body has been read and dropped
//! (at most 1 MB: larger bodies are never replayed). A server that answers
//! early and closes the connection with the body unread resets it, and the
//! proxy can lose the answer (RFC 9112, section 9.6); read, the connection
//! stays usable.
//!
//! # Draining on shutdown
//!
//! Fly sends a signal before stopping a Machine. Turn drain on, keep serving
//! for a grace period (requests pinned here are replayed elsewhere with
//! `elsewhere=true`), then stop:
//!
//! ```no_run
//! # use sticky_axum::sticky_core::{Env, Sticky};
//! # async fn run(sticky: Sticky, app: axum::Router) -> std::io::Result<()> {
//! let drain = sticky.clone();
//! let shutdown = async move {
//!     let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
//!     term.recv().await;
//!     drain.drain();
//!     tokio::time::sleep(std::time::Duration::from_secs(5)).await;
//! };
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! axum::serve(listener, app).with_graceful_shutdown(shutdown).await
//! # }
//! ```
//!
//! While draining, every answer carries `Connection: close`: the proxy's
//! kept-alive connections to this Machine are closed one by one, so that none
//! is still open, and reused by the proxy, at the instant the server exits
//! (a request sent on a connection as it closes fails).
//!
//! On Fly, set `kill_signal = "SIGTERM"` in `fly.toml` (the default is
//! SIGINT) and a `kill_timeout` longer than the grace period (default 5 s).
//! `examples/axum` does this (grace from `DRAIN_SECONDS`; SIGINT stops at
//! once); `examples/axum/tests/shutdown.rs` checks it on the running binary.
//!
//! # Skipping requests
//!
//! Path globs, methods and a predicate over the request view are configured
//! on the [`Sticky`] builder and behave the same in every framework.
//! [`StickyLayer::skip_if`] adds a predicate over the full `http::Request`
//! (extensions included) for tower-specific needs.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
pub use sticky_core;
use sticky_core::{Decision, SetCookie, Sticky};
use tower_layer::Layer;
use tower_service::Service;

/// A predicate that exempts a request from stickiness.
pub trait Skip<B> {
    /// Whether `req` bypasses the middleware.
    fn skip(&self, req: &Request<B>) -> bool;
}

/// The default: skip nothing (the core's own rules still apply).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSkip;

impl<B> Skip<B> for NoSkip {
    fn skip(&self, _: &Request<B>) -> bool {
        false
    }
}

impl<B, F> Skip<B> for F
where
    F: Fn(&Request<B>) -> bool,
{
    fn skip(&self, req: &Request<B>) -> bool {
        self(req)
    }
}

/// A tower [`Layer`] that applies session affinity.
#[derive(Clone, Debug)]
pub struct StickyLayer<P = NoSkip> {
    sticky: Sticky,
    skip: P,
}

impl StickyLayer {
    /// A layer deciding with `sticky`.
    pub fn new(sticky: Sticky) -> Self {
        Self {
            sticky,
            skip: NoSkip,
        }
    }
}

impl<P> StickyLayer<P> {
    /// Bypasses the middleware for requests where `skip` returns true.
    ///
    /// ```
    /// # use sticky_axum::{StickyLayer, sticky_core::{Env, Sticky}};
    /// let sticky = Sticky::builder().build(Env::default()).unwrap();
    /// let layer = StickyLayer::new(sticky)
    ///     .skip_if(|req: &http::Request<axum::body::Body>| req.headers().contains_key("x-internal"));
    /// # let _ = layer;
    /// ```
    pub fn skip_if<F>(self, skip: F) -> StickyLayer<F> {
        StickyLayer {
            sticky: self.sticky,
            skip,
        }
    }

    /// The engine, e.g. to call [`Sticky::drain`].
    pub fn sticky(&self) -> &Sticky {
        &self.sticky
    }
}

impl<S, P: Clone> Layer<S> for StickyLayer<P> {
    type Service = StickyService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        StickyService {
            inner,
            sticky: self.sticky.clone(),
            skip: self.skip.clone(),
        }
    }
}

/// The service made by [`StickyLayer`].
#[derive(Clone, Debug)]
pub struct StickyService<S, P = NoSkip> {
    inner: S,
    sticky: Sticky,
    skip: P,
}

impl<S, P, ReqB, ResB> Service<Request<ReqB>> for StickyService<S, P>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    P: Skip<ReqB>,
    ReqB: Body + Send + 'static,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // While draining, every answer closes its connection (see the crate docs).
        let close = self.sticky.is_draining();
        let kind = if self.skip.skip(&req) {
            Kind::Inner {
                future: self.inner.call(req),
                cookie: None,
            }
        } else {
            match self.sticky.decide(&req) {
                Decision::Stick(_) => Kind::Inner {
                    future: self.inner.call(req),
                    cookie: None,
                },
                Decision::SetCookie(cookie, _) => Kind::Inner {
                    future: self.inner.call(req),
                    cookie: Some(cookie),
                },
                Decision::Replay(reply, _) if reply.body_to_read() > 0 => Kind::Drain {
                    body: Some(Box::pin(DrainBody {
                        body: req.into_body(),
                        left: reply.body_to_read(),
                    })),
                    response: Some(reply.to_response()),
                },
                Decision::Replay(reply, _) | Decision::Refuse(reply, _) => Kind::Ready {
                    response: Some(reply.to_response()),
                },
            }
        };
        ResponseFuture { kind, close }
    }
}

pin_project! {
    /// The future of [`StickyService`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
        close: bool,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: F, cookie: Option<SetCookie> },
        Ready { response: Option<Response<B>> },
        Drain { body: Option<Pin<Box<dyn Future<Output = ()> + Send>>>, response: Option<Response<B>> },
    }
}

pin_project! {
    /// Reads a request body to its end (or its declared length, or an
    /// error) and drops it.
    struct DrainBody<B> {
        #[pin]
        body: B,
        left: u64,
    }
}

impl<B: Body> Future for DrainBody<B> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            match std::task::ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        *this.left = this.left.saturating_sub(data.remaining() as u64);
                    }
                    if *this.left == 0 {
                        return Poll::Ready(());
                    }
                }
                None | Some(Err(_)) => return Poll::Ready(()),
            }
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.kind.project() {
            KindProj::Inner { future, cookie } => {
                let mut response = std::task::ready!(future.poll(cx))?;
                if let Some(cookie) = cookie.take() {
                    cookie.apply(response.headers_mut());
                }
                response
            }
            KindProj::Ready { response } => response
                .take()
                .expect("ResponseFuture polled after completion"),
            KindProj::Drain { body, response } => {
                if let Some(drain) = body {
                    std::task::ready!(drain.as_mut().poll(cx));
                    *body = None;
                }
                response
                    .take()
                    .expect("ResponseFuture polled after completion")
            }
        };
        if *this.close {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        Poll::Ready(Ok(response))
    }
}
