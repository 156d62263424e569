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
//! Replays are answered once the request body is read, and while draining
//! every answer closes its connection: see the adapter contract in
//! [`sticky_core`'s docs](sticky_core#the-adapter-contract), which also has
//! the `fly.toml` settings for a drain on shutdown:
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

use bytes::Buf;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
pub use sticky_core;
use sticky_core::{Action, Finish, Sticky};
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

impl<S, P> StickyService<S, P> {
    /// The engine.
    pub fn sticky(&self) -> &Sticky {
        &self.sticky
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
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
        let decision = if self.skip.skip(&req) {
            self.sticky.skipped()
        } else {
            self.sticky.decide(&req)
        };
        let kind = match decision.into_action() {
            Action::Run(finish) => Kind::Inner {
                future: self.inner.call(req),
                finish,
            },
            Action::Answer(answer) => Kind::Answer {
                body: (answer.body_to_read() > 0).then(|| {
                    Box::pin(DrainBody {
                        body: req.into_body(),
                        left: answer.body_to_read(),
                    }) as Pin<Box<dyn Future<Output = ()> + Send>>
                }),
                response: Some(answer.to_response()),
            },
        };
        ResponseFuture { kind }
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
        Inner { #[pin] future: F, finish: Finish },
        // The body to read first (a replay's), then the answer.
        Answer { body: Option<Pin<Box<dyn Future<Output = ()> + Send>>>, response: Option<Response<B>> },
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
        match self.project().kind.project() {
            KindProj::Inner { future, finish } => {
                let mut response = std::task::ready!(future.poll(cx))?;
                finish.apply(response.status(), response.headers_mut());
                Poll::Ready(Ok(response))
            }
            KindProj::Answer { body, response } => {
                if let Some(drain) = body {
                    std::task::ready!(drain.as_mut().poll(cx));
                    *body = None;
                }
                Poll::Ready(Ok(response
                    .take()
                    .expect("ResponseFuture polled after completion")))
            }
        }
    }
}
