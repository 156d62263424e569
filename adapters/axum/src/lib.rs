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

use http::{Request, Response};
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
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if self.skip.skip(&req) {
            return ResponseFuture::inner(self.inner.call(req), None);
        }
        match self.sticky.decide(&req) {
            Decision::Stick(_) => ResponseFuture::inner(self.inner.call(req), None),
            Decision::SetCookie(cookie, _) => {
                ResponseFuture::inner(self.inner.call(req), Some(cookie))
            }
            Decision::Replay(reply, _) | Decision::Refuse(reply, _) => ResponseFuture {
                kind: Kind::Ready {
                    response: Some(reply.to_response()),
                },
            },
        }
    }
}

pin_project! {
    /// The future of [`StickyService`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: F, cookie: Option<SetCookie> },
        Ready { response: Option<Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn inner(future: F, cookie: Option<SetCookie>) -> Self {
        Self {
            kind: Kind::Inner { future, cookie },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, cookie } => {
                let mut response = std::task::ready!(future.poll(cx))?;
                if let Some(cookie) = cookie.take() {
                    cookie.apply(response.headers_mut());
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}
