//! Things the simulated proxy noticed, recorded for tests and for the admin interface.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

/// Events kept in memory; older ones are dropped.
const MAX_EVENTS: usize = 10_000;

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
    /// The replay cache remembered a replay, invalidated an entry, or was
    /// bypassed by a client (cache hits are counted, not recorded).
    ReplayCache,
    /// A replay meant to be cached (the request carries a rule's cookie or
    /// header, or the replay names a path pattern) was not cached: it carries
    /// `state`, `timeout`, `fallback` or a transform, or its cache
    /// instruction is invalid. The replay itself is still followed. Counted
    /// as an error ([`Event::is_error`]): Fly documents such a replay as one
    /// that cannot be cached.
    ReplayNotCached,
    /// A deploy began, moved on to a phase (a batch, a canary, a cutover),
    /// finished or failed; messages name the deploy's number.
    Deploy,
    /// A scale to a new Machine count began or finished.
    Scale,
    /// Autostop stopped or suspended an idle Machine.
    Autostop,
    /// A Machine's health check verdict changed (pass or fail).
    Health,
    /// A network fault began or ended on a Machine.
    Fault,
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
    /// Whether this event is an error: one a client saw (a proxy error or a
    /// failed replay), or a replay meant to be cached that could not be.
    pub fn is_error(&self) -> bool {
        matches!(
            self.kind,
            EventKind::ProxyError | EventKind::ReplayFailed | EventKind::ReplayNotCached
        )
    }
}

/// The newest [`MAX_EVENTS`] events, shared by the proxy and the Machines' lifecycle.
#[derive(Debug)]
pub(crate) struct EventLog {
    events: Mutex<VecDeque<Event>>,
    /// Do not print errors to stderr (they are still logged with `tracing`).
    quiet: bool,
}

impl EventLog {
    pub(crate) fn new(quiet: bool) -> Self {
        EventLog {
            events: Mutex::new(VecDeque::new()),
            quiet,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Event>> {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records one event (and logs it; errors also go to stderr unless quiet).
    pub(crate) fn record(
        &self,
        kind: EventKind,
        code: Option<&str>,
        request_id: Option<&str>,
        machine: Option<&str>,
        message: String,
    ) {
        let event = Event {
            kind,
            code: code.map(str::to_owned),
            request_id: request_id.map(str::to_owned),
            machine: machine.map(str::to_owned),
            message,
            at: SystemTime::now(),
        };
        if event.is_error() {
            tracing::warn!(code = ?event.code, request_id = ?event.request_id, "{}", event.message);
            if !self.quiet {
                eprintln!("flysim: {}", event.message);
            }
        } else {
            tracing::info!("{}", event.message);
        }
        let mut events = self.lock();
        if events.len() == MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// Everything recorded so far, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<Event> {
        self.lock().iter().cloned().collect()
    }

    /// Forgets every event.
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }
}
