//! Delivery: getting one request to the Machine a [`Route`] leads to, through
//! the [`Upstream`](crate::upstream::Upstream) transport.
//!
//! Which Machine to try after one could not take the request is the
//! planner's call ([`plan::after_miss`]); this module does the waiting,
//! starting and connecting, and applies the one retry rule ([`may_retry`]).

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::upgrade::OnUpgrade;
use tokio::net::TcpStream;

use crate::balance::Pick;
use crate::body::{ProxyBody, RequestBody};
use crate::errors::ProxyError;
use crate::events::EventKind;
use crate::faults::FaultKind;
use crate::fleet::{Counter, Lookup};
use crate::plan::{self, Miss, Route};
use crate::sim::Shared;
use crate::upstream::UpstreamError;

/// One client request on its way through the proxy.
pub(crate) struct Ctx {
    pub(crate) request_id: String,
    pub(crate) method: Method,
    pub(crate) pq: PathAndQuery,
    /// Headers sent with every delivery (client headers plus Fly's).
    pub(crate) headers: HeaderMap,
    pub(crate) body: RequestBody,
    /// The client side of a WebSocket (or other) upgrade.
    pub(crate) upgrade: Option<OnUpgrade>,
    pub(crate) is_upgrade: bool,
    /// Send a buffered body without a declared length (the client declared
    /// none, and the Machine is reached over h2c).
    pub(crate) unsized_body: bool,
    /// The current delivery is a fallback after a failed replay.
    pub(crate) fallback: bool,
    pub(crate) served_by: Option<String>,
}

/// A Machine's response to one delivery.
pub(crate) struct Delivered {
    pub(crate) machine: String,
    pub(crate) resp: Response<ProxyBody>,
}

/// How a delivery reaches its Machine.
enum Conn {
    /// A kept-alive connection from the pool.
    Pool(SocketAddr),
    /// A connection made ahead (under a replay's `timeout`).
    Stream(TcpStream),
}

/// How a route names its Machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// `fly-force-instance-id`: that Machine, whatever its health.
    Named,
    /// `prefer_instance` or `fly-prefer-instance-id`: another one will do.
    Preferred,
    /// A strict `instance` replay.
    Strict,
}

/// Why one delivery through [`Shared::send_with_fault`] failed.
enum Sent {
    /// The Machine's reset fault refused the connection.
    Reset(String),
    /// No answer within the response timeout.
    Timeout(Duration),
    Other(SendError),
}

enum SendError {
    /// A streamed body was used up by an earlier delivery.
    BodyUsed,
    Upstream(UpstreamError),
}

impl From<UpstreamError> for SendError {
    fn from(e: UpstreamError) -> Self {
        SendError::Upstream(e)
    }
}

/// The one retry rule. A kept-alive connection can be closed by the Machine
/// just as a request is sent on it (it shuts down, or closes idle
/// connections), and a Machine closing its listener can reset a new one
/// before reading the request: the exchange fails with no answer, though the
/// Machine never read the request. Like proxies do, and as HTTP allows for
/// idempotent methods (RFC 9110, section 9.2.2), such a request is sent once
/// more on a new connection when its method is idempotent and its body
/// buffered; any other failure stands.
fn may_retry(method: &Method, body_replayable: bool, e: &UpstreamError) -> bool {
    method.is_idempotent() && body_replayable && matches!(e, UpstreamError::NoAnswer(_))
}

/// One delivery of the request: its body (a fresh copy when buffered), the
/// forwarded headers plus `extra`.
fn build(ctx: &mut Ctx, extra: &HeaderMap) -> Result<Request<ProxyBody>, SendError> {
    let body = ctx.body.take(ctx.unsized_body).ok_or(SendError::BodyUsed)?;
    let mut headers = ctx.headers.clone();
    for (name, value) in extra {
        headers.insert(name.clone(), value.clone());
    }
    let mut req = Request::new(body);
    *req.method_mut() = ctx.method.clone();
    *req.uri_mut() = Uri::from(ctx.pq.clone());
    *req.headers_mut() = headers;
    Ok(req)
}

impl Shared {
    /// Gets the request to a Machine along `route` (and the routes the
    /// planner gives after each miss) and returns that Machine's response.
    pub(crate) async fn deliver(
        &self,
        ctx: &mut Ctx,
        mut route: Route,
        mut extra: HeaderMap,
    ) -> Result<Delivered, ProxyError> {
        loop {
            let (id, reached) = match &route {
                Route::Nowhere => return Err(ProxyError::NoCandidate),
                Route::Balanced { exclude } => match self.pick(exclude) {
                    Pick::Started(id, addr) => (id, Ok(Conn::Pool(addr))),
                    Pick::Start(id) => {
                        let started = self.fleet.ensure_started(&id).await;
                        (
                            id,
                            started
                                .map(Conn::Pool)
                                .map_err(|e| Miss::NotStarted(e.to_string())),
                        )
                    }
                    Pick::None => return Err(ProxyError::NoCandidate),
                },
                Route::Exact { id, .. } => (id.clone(), self.reach(id, None, Reach::Named).await),
                Route::Prefer { id, timeout, .. } => {
                    (id.clone(), self.reach(id, *timeout, Reach::Preferred).await)
                }
                // Fly fails a strict replay to a gone Machine slowly.
                Route::Strict { id, timeout } => {
                    (id.clone(), self.reach(id, *timeout, Reach::Strict).await)
                }
            };
            let miss = match reached {
                Err(miss) => miss,
                Ok(conn) => match self.send_with_fault(ctx, &id, conn, &extra).await {
                    Ok(resp) => return Ok(Delivered { machine: id, resp }),
                    Err(Sent::Reset(why)) => Miss::Refused(why),
                    Err(Sent::Timeout(after)) => {
                        return Err(ProxyError::Timeout { machine: id, after });
                    }
                    Err(Sent::Other(e)) => match e {
                        SendError::BodyUsed => return Err(ProxyError::BodyUsed),
                        SendError::Upstream(UpstreamError::Connect(e)) => Miss::Refused(e),
                        SendError::Upstream(UpstreamError::NotH2c(detail)) => {
                            return Err(ProxyError::NotH2c {
                                machine: id,
                                detail,
                            });
                        }
                        SendError::Upstream(
                            UpstreamError::NoAnswer(error) | UpstreamError::Failed(error),
                        ) => return Err(ProxyError::Upstream { machine: id, error }),
                    },
                },
            };
            let next = plan::after_miss(route, &id, miss, &mut extra)?;
            if let Some(id) = &next.unavailable {
                self.events.record(
                    EventKind::PreferredUnavailable,
                    None,
                    Some(&ctx.request_id),
                    Some(id),
                    format!(
                        "preferred Machine {id} is unavailable; routing {} {} to another Machine",
                        ctx.method, ctx.pq
                    ),
                );
            }
            route = next.route;
        }
    }

    /// One delivery to Machine `id` through its network fault, if it has
    /// one, within the proxy's response timeout. The Machine counts the
    /// delivery as in flight until its response head (or failure).
    async fn send_with_fault(
        &self,
        ctx: &mut Ctx,
        id: &str,
        conn: Conn,
        extra: &HeaderMap,
    ) -> Result<Response<ProxyBody>, Sent> {
        let _busy = self.fleet.busy(id);
        let limit = self.config.response_timeout;
        match self.fleet.fault(id) {
            Some(FaultKind::Reset) => {
                return Err(Sent::Reset(format!(
                    "connection reset by peer (network fault on Machine {id})"
                )));
            }
            // Accepted and never answered, even if the fault ends meanwhile.
            Some(FaultKind::Blackhole) => {
                tokio::time::sleep(limit).await;
                return Err(Sent::Timeout(limit));
            }
            Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
            None => {}
        }
        match tokio::time::timeout(limit, self.send(ctx, conn, extra)).await {
            Ok(result) => result.map_err(Sent::Other),
            Err(_) => Err(Sent::Timeout(limit)),
        }
    }

    /// Starts (if needed) and reaches a Machine within `timeout`. A destroyed
    /// or unknown Machine is missed after `dead_target_delay` for a strict
    /// replay; a preferred Machine failing its health check or being
    /// updated is missed.
    async fn reach(&self, id: &str, timeout: Option<Duration>, how: Reach) -> Result<Conn, Miss> {
        let attempt = async {
            match self.fleet.lookup(id) {
                Lookup::Gone => {
                    if how == Reach::Strict {
                        tokio::time::sleep(self.config.dead_target_delay).await;
                    }
                    Err(Miss::Gone)
                }
                Lookup::Unroutable if how == Reach::Preferred => Err(Miss::NotStarted(
                    "it is failing its health check or being updated by a deploy".to_owned(),
                )),
                Lookup::Started | Lookup::Unroutable | Lookup::Stopped => {
                    let addr = self
                        .fleet
                        .ensure_started(id)
                        .await
                        .map_err(|e| Miss::NotStarted(e.to_string()))?;
                    if timeout.is_some() {
                        // The timeout covers making the connection only.
                        self.upstream
                            .connect(addr)
                            .await
                            .map(Conn::Stream)
                            .map_err(|e| Miss::Refused(e.text().to_owned()))
                    } else {
                        Ok(Conn::Pool(addr))
                    }
                }
            }
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, attempt)
                .await
                .unwrap_or(Err(Miss::Timeout)),
            None => attempt.await,
        }
    }

    /// Sends one delivery over `conn`, once more on a new connection when
    /// [`may_retry`] allows.
    async fn send(
        &self,
        ctx: &mut Ctx,
        conn: Conn,
        extra: &HeaderMap,
    ) -> Result<Response<ProxyBody>, SendError> {
        let up = &*self.upstream;
        let req = build(ctx, extra)?;
        let (addr, first) = match conn {
            Conn::Pool(addr) if !ctx.is_upgrade => (Some(addr), up.send_pooled(addr, req).await),
            // An upgrade keeps its connection: it gets one of its own.
            Conn::Pool(addr) => match up.connect(addr).await {
                Ok(stream) => (Some(addr), up.send_on(stream, req).await),
                Err(e) => return Err(e.into()),
            },
            Conn::Stream(stream) => (stream.peer_addr().ok(), up.send_on(stream, req).await),
        };
        let e = match first {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        let Some(addr) = addr.filter(|_| may_retry(&ctx.method, ctx.body.replayable(), &e)) else {
            return Err(e.into());
        };
        tracing::info!(
            request_id = %ctx.request_id,
            "sending {} {} again on a new connection to {addr}: {}",
            ctx.method,
            ctx.pq,
            e.text()
        );
        if let Some(id) = self.fleet.id_at(addr) {
            self.fleet.count(&id, Counter::Retry);
        }
        let req = build(ctx, extra)?;
        let stream = up.connect(addr).await?;
        Ok(up.send_on(stream, req).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unanswered_idempotent_replayable_requests_are_retried() {
        let no_answer = UpstreamError::NoAnswer("connection closed".into());
        assert!(may_retry(&Method::GET, true, &no_answer));
        assert!(may_retry(&Method::PUT, true, &no_answer));
        assert!(!may_retry(&Method::POST, true, &no_answer));
        assert!(!may_retry(&Method::GET, false, &no_answer));
        assert!(!may_retry(
            &Method::GET,
            true,
            &UpstreamError::Failed("bad response".into())
        ));
        assert!(!may_retry(
            &Method::GET,
            true,
            &UpstreamError::Connect("refused".into())
        ));
    }
}
