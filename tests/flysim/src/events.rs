//! Things the simulated proxy noticed, recorded for tests and for the admin interface.

use std::time::SystemTime;

use serde::Serialize;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A valid replay instruction was followed.
    Replay,
    /// A preferred Machine (`prefer_instance` or `fly-prefer-instance-id`) could not
    /// be used; the request went to another Machine with
    /// `fly-preferred-instance-unavailable`.
    PreferredUnavailable,
    /// A replay target could not be reached (slow failure, timeout, no candidate).
    ReplayFailed,
    /// A fallback request (with `fly-replay-failed`) was sent after a failed replay.
    Fallback,
    /// A stopped Machine was started because a request was routed to it.
    Autostart,
    /// The proxy answered the client with an error of its own (see `code`).
    ProxyError,
    /// A Machine was added, started, stopped, destroyed or exited.
    Lifecycle,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// What kind of event this is.
    pub kind: EventKind,
    /// Fly-style error code for proxy errors (`PA01`, `PA02`, `PA03`, `PA04`, `PR02`,
    /// `PR04`), `None` otherwise.
    pub code: Option<String>,
    /// The `Fly-Request-Id` of the request concerned, if any.
    pub request_id: Option<String>,
    /// The Machine concerned (for a replay: the replaying Machine).
    pub machine: Option<String>,
    /// Human-readable description.
    pub message: String,
    /// When it happened.
    #[serde(skip)]
    pub at: SystemTime,
}

impl Event {
    /// Whether this event is an error a client saw (a proxy error or a failed replay).
    pub fn is_error(&self) -> bool {
        matches!(self.kind, EventKind::ProxyError | EventKind::ReplayFailed)
    }
}
