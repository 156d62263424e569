//! The one mapping from what went wrong to what the client sees: each
//! [`ProxyError`] has a Fly error code, the Machine concerned and a message;
//! [`respond`] turns it into a 502 with `fly-error` and records the event.

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode};

use crate::MAX_REPLAYS;
use crate::body::{self, ProxyBody};
use crate::events::{EventKind, EventLog};
use crate::headers::{FLY_ERROR, header_value};
use crate::plan::{Cluster, Reason};

/// An error the proxy answers with itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// PA03: the replay instruction is invalid.
    InvalidReplay {
        machine: String,
        problem: String,
        quoted: String,
    },
    /// PA03: a fallback request (with `fly-replay-failed`) replayed again.
    ReplayOfFallback { machine: String, quoted: String },
    /// PA04: a replay to an app this simulator does not run.
    OtherApp {
        machine: String,
        app: String,
        quoted: String,
    },
    /// PA01: a replay of a request whose body is too large to send again.
    BodyTooLarge { machine: String, quoted: String },
    /// PA02: more than [`MAX_REPLAYS`] replays of one request.
    TooManyReplays { machine: String, quoted: String },
    /// PA01: a streamed body was used up by an earlier delivery.
    BodyUsed,
    /// PR04: no Machine can take the request.
    NoCandidate,
    /// PR02: the Machine a client or a fallback named cannot be used.
    NotFound { id: String, what: String },
    /// PR04: a strict replay target could not be reached.
    Unreachable { id: String, reason: Reason },
    /// PU01: the Machine does not speak h2c, but the proxy speaks HTTP/2 to
    /// it (`h2_backend`).
    NotH2c { machine: String, detail: String },
    /// No code: the exchange with a Machine failed after it got the request.
    Upstream { machine: String, error: String },
    /// No code: the Machine did not answer within the proxy's response
    /// timeout ([`Config::response_timeout`](crate::Config::response_timeout)).
    Timeout {
        machine: String,
        after: std::time::Duration,
    },
}

impl ProxyError {
    /// The Fly error code (`fly-error` header and event code).
    pub(crate) fn code(&self) -> Option<&'static str> {
        Some(match self {
            ProxyError::InvalidReplay { .. } | ProxyError::ReplayOfFallback { .. } => "PA03",
            ProxyError::OtherApp { .. } => "PA04",
            ProxyError::BodyTooLarge { .. } | ProxyError::BodyUsed => "PA01",
            ProxyError::TooManyReplays { .. } => "PA02",
            ProxyError::NoCandidate | ProxyError::Unreachable { .. } => "PR04",
            ProxyError::NotFound { .. } => "PR02",
            ProxyError::NotH2c { .. } => "PU01",
            ProxyError::Upstream { .. } | ProxyError::Timeout { .. } => return None,
        })
    }

    /// The Machine concerned (for a refused replay: the replaying one).
    pub(crate) fn machine(&self) -> Option<&str> {
        match self {
            ProxyError::InvalidReplay { machine, .. }
            | ProxyError::ReplayOfFallback { machine, .. }
            | ProxyError::OtherApp { machine, .. }
            | ProxyError::BodyTooLarge { machine, .. }
            | ProxyError::TooManyReplays { machine, .. }
            | ProxyError::NotH2c { machine, .. }
            | ProxyError::Upstream { machine, .. }
            | ProxyError::Timeout { machine, .. } => Some(machine),
            ProxyError::NotFound { id, .. } | ProxyError::Unreachable { id, .. } => Some(id),
            ProxyError::BodyUsed | ProxyError::NoCandidate => None,
        }
    }

    /// Whether this means a replay got no connection, so that its `fallback`
    /// applies, and why.
    pub(crate) fn no_connection(&self) -> Option<Reason> {
        match self {
            ProxyError::NoCandidate => Some(Reason::NoCandidate),
            ProxyError::Unreachable { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// The message for the client's body and the event, about `method pq`.
    pub(crate) fn message(
        &self,
        cluster: &Cluster<'_>,
        method: &Method,
        pq: &PathAndQuery,
    ) -> String {
        let app_name = cluster.app_name;
        let limit = cluster.body_limit;
        match self {
            ProxyError::InvalidReplay {
                machine,
                problem,
                quoted,
            } => format!("PA03 Invalid fly-replay: {problem} in {quoted} (from Machine {machine})"),
            ProxyError::ReplayOfFallback { machine, quoted } => format!(
                "PA03 Invalid fly-replay: a fallback request (one carrying fly-replay-failed) cannot replay again, but Machine {machine} answered {quoted}"
            ),
            ProxyError::OtherApp {
                machine,
                app,
                quoted,
            } => format!(
                "PA04 Replay target app not found: Machine {machine} replayed to app \"{app}\" in {quoted}, but this simulator runs only app \"{app_name}\""
            ),
            ProxyError::BodyTooLarge { machine, quoted } => format!(
                "PA01 request body too large to replay: bodies larger than {limit} bytes (1 MB) cannot be replayed, but Machine {machine} answered {quoted} to a {method} {pq} with a larger body"
            ),
            ProxyError::TooManyReplays { machine, quoted } => format!(
                "PA02 too many replays: fly-replay was returned more than {MAX_REPLAYS} times for one request (last by Machine {machine}: {quoted})"
            ),
            ProxyError::BodyUsed => format!(
                "PA01 the request body (larger than {limit} bytes) was already streamed to a Machine and cannot be sent again"
            ),
            ProxyError::NoCandidate => format!(
                "PR04 no candidate Machine found for {method} {pq}: no Machine of app \"{app_name}\" is started or startable"
            ),
            ProxyError::NotFound { what, .. } => format!("PR02 Machine not found: {what}"),
            ProxyError::Unreachable { id, reason } => {
                format!(
                    "PR04 Machine {id} could not be reached ({})",
                    reason.as_str()
                )
            }
            ProxyError::NotH2c { machine, detail } => format!(
                "PU01 Machine {machine} does not speak h2c: the proxy speaks HTTP/2 with prior knowledge to the app (http_options.h2_backend = true), but {detail}; serve h2c on the internal port (hyper-util's auto::Builder, axum::serve, tonic) or remove h2_backend"
            ),
            ProxyError::Upstream { machine, error } => {
                format!("error talking to Machine {machine}: {error}")
            }
            ProxyError::Timeout { machine, after } => format!(
                "Machine {machine} did not answer {method} {pq} within {after:?} (the proxy's response timeout)"
            ),
        }
    }
}

/// The client's answer to `error` (a 502 with `fly-error` and the message),
/// recorded as a [`EventKind::ProxyError`] event.
pub(crate) fn respond(
    events: &EventLog,
    request_id: &str,
    error: &ProxyError,
    message: String,
) -> Response<ProxyBody> {
    let code = error.code();
    events.record(
        EventKind::ProxyError,
        code,
        Some(request_id),
        error.machine(),
        message.clone(),
    );
    let mut resp = Response::new(body::full(format!("{message}\n")));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(code) = code {
        h.insert(FLY_ERROR, header_value(code));
    }
    resp
}
