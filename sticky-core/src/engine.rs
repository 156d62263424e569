//! The engine: built once, then `decide` per request. This file is the
//! decision table; each row's details live in the module named for it
//! (`filter`: row 2, `find`: targets, `body`: row 6, `render`: headers,
//! `keys`: key affinity, `compile`: the builder's checks).

use std::cell::OnceCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::{Builder, LargeBody, Refresh, ReplayCache, SkipFn, Unavailable};
use crate::decision::{Decision, Marker, Outcome, Reason};
use crate::filter::PathSet;
use crate::find::{Found, Target};
use crate::keys::{CompiledKey, PeerSet};
use crate::metrics::Counters;
use crate::render::{CookieAttrs, refusal};
use crate::seen::{PathOnce, Seen, Slot};
#[cfg(feature = "signed")]
use crate::signed::Signer;
use crate::target::{self, CookieScanner, PinPair, Source, TargetFormat};
use crate::view::{HeaderNames, RequestView};

/// The sticky-session engine: configuration plus this Machine's identity.
///
/// Cheap to clone (one `Arc`); clones share the drain switch and the
/// decision counters ([`metrics`](Self::metrics)).
///
/// ```
/// use sticky_core::{Env, Outcome, Reason, Source, Sticky};
///
/// let sticky = Sticky::builder().build(Env::machine("148ed599c14189"))?;
///
/// let here = http::Request::get("/").header("cookie", "fly-machine-id=148ed599c14189").body(()).unwrap();
/// assert_eq!(sticky.decide(&here), Outcome::Stick(Reason::PinnedHere(Source::Cookie)));
///
/// let first = http::Request::get("/").body(()).unwrap();
/// let decision = sticky.decide(&first);
/// assert!(decision.set_cookie().unwrap().value().starts_with("fly-machine-id=148ed599c14189;"));
///
/// let elsewhere = http::Request::get("/").header("cookie", "fly-machine-id=90801679a10038").body(()).unwrap();
/// let replay = sticky.decide(&elsewhere);
/// assert_eq!(replay.short_circuit().unwrap().fly_replay(), Some("prefer_instance=90801679a10038"));
/// # Ok::<(), sticky_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Sticky {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sticky")
            .field("machine_id", &self.machine_id())
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) me: Option<Box<str>>,
    pub(crate) draining: AtomicBool,
    pub(crate) scanner: CookieScanner,
    /// `name=<this Machine>`, for the Stick path (`None`: signed cookies).
    pub(crate) pin_pair: Option<PinPair>,
    pub(crate) sources: Vec<Source>,
    pub(crate) query_param: String,
    pub(crate) header_source: Option<String>,
    /// The headers [`Seen`](crate::seen::Seen) finds in one pass.
    pub(crate) read_headers: HeaderNames,
    pub(crate) cookie_slot: Slot,
    pub(crate) header_slot: Slot,
    /// [`ROUTING`], for [`RoutingSeen`].
    pub(crate) routing_headers: HeaderNames,
    pub(crate) format: TargetFormat,
    pub(crate) cookie: CookieAttrs,
    /// `Set-Cookie` naming this Machine, unsigned: without and with `Secure`.
    pub(crate) pin: [Arc<str>; 2],
    pub(crate) cache_private: bool,
    pub(crate) replay_prefix: String,
    pub(crate) replay_suffix: String,
    pub(crate) drain_replay: Arc<str>,
    pub(crate) replay_status: u16,
    pub(crate) replay_cache: ReplayCache,
    /// `fly-replay-cache-ttl-secs` for path-cached replays.
    pub(crate) cache_ttl: Option<Arc<str>>,
    pub(crate) unavailable: Unavailable,
    pub(crate) large_body: LargeBody,
    pub(crate) body_limit: u64,
    /// Bodies of unknown length may be replayed.
    pub(crate) replay_unknown_length: bool,
    pub(crate) include: Option<PathSet>,
    pub(crate) exclude: Option<PathSet>,
    pub(crate) skip_methods: Vec<String>,
    pub(crate) skip_preflight: bool,
    pub(crate) skip_if: Option<SkipFn>,
    pub(crate) refresh: Refresh,
    #[cfg(feature = "signed")]
    pub(crate) signer: Option<Signer>,
    pub(crate) keys: Vec<CompiledKey>,
    pub(crate) peers: RwLock<Arc<PeerSet>>,
    /// This Machine's region, when keys prefer it.
    pub(crate) key_region: Option<String>,
    /// Whether the cookie is a source: only then is a client pinned by cookie.
    pub(crate) pins_cookie: bool,
    /// The decision counters (`None`: counting off).
    pub(crate) counters: Option<Counters>,
}

/// Where a request that is not served as pinned here must go (rows 5 to 8).
/// Each case names a real situation: no "draining and nowhere" placeholder.
#[derive(Clone, Copy)]
enum Away<'a> {
    /// Pinned to another Machine; this one may be draining as well.
    Pinned { target: Target<'a>, draining: bool },
    /// This Machine is draining and the request names no other Machine
    /// (no target, an invalid one, or this Machine).
    Draining,
}

impl<'a> Away<'a> {
    fn target(self) -> Option<Target<'a>> {
        match self {
            Away::Pinned { target, .. } => Some(target),
            Away::Draining => None,
        }
    }
}

impl Sticky {
    /// Starts a [`Builder`] with the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// This Machine's ID, when on Fly.
    pub fn machine_id(&self) -> Option<&str> {
        self.inner.me.as_deref()
    }

    /// Whether the engine acts at all (a Machine ID was given).
    pub fn is_enabled(&self) -> bool {
        self.inner.me.is_some()
    }

    /// Starts draining: new and pinned-here requests are replayed with
    /// `elsewhere=true` so the proxy moves them to another Machine (row 8),
    /// and every answer closes its connection. Callable from any thread,
    /// e.g. a SIGTERM handler.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Stops draining.
    pub fn undrain(&self) {
        self.inner.draining.store(false, Ordering::Relaxed);
    }

    /// Whether this Machine is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Whether decisions depend on the clock (signed cookies with
    /// lifetimes or timed refresh): only then does [`decide`](Self::decide)
    /// read it, and only then does [`decide_at`](Self::decide_at)'s `now`
    /// matter.
    pub fn needs_clock(&self) -> bool {
        #[cfg(feature = "signed")]
        {
            self.inner.signer.is_some()
        }
        #[cfg(not(feature = "signed"))]
        {
            false
        }
    }

    /// Decides what to do with `req`: [`decide_at`](Self::decide_at) with
    /// the system clock as `now`, read only if
    /// [`needs_clock`](Self::needs_clock). The one place the core reads a
    /// clock; callers with their own time source use `decide_at`.
    pub fn decide<V: RequestView>(&self, req: &V) -> Decision {
        let now = if self.needs_clock() { unix_now() } else { 0 };
        self.decide_at(req, now)
    }

    /// Decides what to do with `req` at `now` (Unix seconds). Pure given
    /// the engine's state (configuration, live set, drain switch): the same
    /// inputs always give the same decision.
    pub fn decide_at<V: RequestView>(&self, req: &V, now: u64) -> Decision {
        let draining = self.is_draining();
        let outcome = self.outcome(req, now, draining);
        self.count(&outcome);
        let decision = Decision {
            outcome,
            close: draining,
        };
        #[cfg(feature = "tracing")]
        tracing::debug!(
            method = req.method(),
            path = req.path(),
            reason = %decision.reason(),
            row = decision.reason().row(),
            "sticky decision"
        );
        decision
    }

    /// The decision for a request an adapter's own predicate exempts
    /// (e.g. `StickyLayer::skip_if`): served here untouched, except that it
    /// still closes its connection while draining.
    pub fn skipped(&self) -> Decision {
        let outcome = Outcome::Stick(Reason::Skipped);
        self.count(&outcome);
        Decision {
            outcome,
            close: self.is_draining(),
        }
    }

    /// Counts a finished decision for [`metrics`](Self::metrics).
    #[inline]
    fn count(&self, outcome: &Outcome) {
        if let Some(counters) = &self.inner.counters {
            counters.count(outcome);
        }
    }

    /// The decision table.
    fn outcome<V: RequestView>(&self, req: &V, now: u64, draining: bool) -> Outcome {
        let inner = &*self.inner;
        // Row 1.
        let Some(me) = inner.me.as_deref() else {
            return Outcome::Stick(Reason::Disabled);
        };
        // Row 2.
        let path = PathOnce::new(req);
        if let Some(reason) = self.filtered(req, &path) {
            return Outcome::Stick(reason);
        }
        let seen = Seen::of(req, &inner.read_headers);
        let live = OnceCell::new();
        let away = match self.find_target(req, &path, &seen, &live, me, now) {
            Found::Target(t) if !target::same_bytes(t.id, me.as_bytes()) => Away::Pinned {
                target: t,
                draining,
            },
            _ if draining => Away::Draining,
            // Row 4.
            Found::Target(t) => return self.pinned_here(req, t, now),
            // Row 3.
            found => {
                let reason = match found {
                    Found::Refused(source, why) => Reason::InvalidTarget(source, why),
                    _ => Reason::NoTarget,
                };
                // Without a cookie source (keys only) there is nothing to pin.
                return if inner.pins_cookie {
                    Outcome::SetCookie(self.pin_here(req, now, None), reason)
                } else {
                    Outcome::Stick(reason)
                };
            }
        };

        // Row 5: never replay a request twice.
        let routing = RoutingSeen::of(req, &inner.routing_headers);
        let routed = Routed::of(req, &routing);
        if let Some(marker) = routed.marker(away) {
            return match away {
                Away::Pinned {
                    target,
                    draining: false,
                } => {
                    let reason = Reason::AlreadyReplayed(target.source, marker);
                    match inner.unavailable {
                        // A key keeps naming its Machine: serve, pin nothing.
                        Unavailable::Repin
                            if target.source == Source::Key || !inner.pins_cookie =>
                        {
                            Outcome::Stick(reason)
                        }
                        Unavailable::Repin => {
                            Outcome::SetCookie(self.pin_here(req, now, None), reason)
                        }
                        Unavailable::Refuse => Outcome::Refuse(refusal(503), reason),
                    }
                }
                Away::Pinned { draining: true, .. } | Away::Draining => {
                    Outcome::Stick(Reason::DrainingServedHere)
                }
            };
        }
        // Row 6.
        let body = match self.body_length(req, &routing) {
            Ok(length) => length,
            Err(problem) => {
                let reason = match away.target() {
                    Some(t) => Reason::BodyNotReplayable(t.source, problem),
                    None => Reason::DrainingServedHere,
                };
                return match inner.large_body {
                    LargeBody::Refuse => Outcome::Refuse(refusal(413), reason),
                    LargeBody::ServeHere => Outcome::Stick(reason),
                };
            }
        };
        match away {
            // Row 7.
            Away::Pinned { target, .. } => Outcome::Replay(
                self.replay_to(
                    target.id,
                    body,
                    self.cache_header(&target, routed.cache_hit),
                ),
                Reason::PinnedElsewhere(target.source),
            ),
            // Row 8.
            Away::Draining => Outcome::Replay(self.drain_replay(body), Reason::Draining),
        }
    }

    /// Row 4: pinned here; refresh the cookie if due.
    fn pinned_here<V: RequestView>(&self, req: &V, t: Target<'_>, now: u64) -> Outcome {
        let due = match self.inner.refresh {
            Refresh::Never => false,
            Refresh::EveryRequest => true,
            Refresh::After(d) => t
                .stamps
                .is_some_and(|(_, seen)| now.saturating_sub(seen) >= d.as_secs()),
        };
        // Only the cookie is re-issued: a query or header pin says nothing
        // about the cookie the client holds.
        if due && t.source == Source::Cookie {
            let issued = t.stamps.map(|(issued, _)| issued);
            Outcome::SetCookie(self.pin_here(req, now, issued), Reason::Refreshed)
        } else {
            Outcome::Stick(Reason::PinnedHere(t.source))
        }
    }

    /// The header names [`decide`](Self::decide) asks every request for,
    /// in one [`RequestView::header_values_of`] call, fixed when the engine
    /// was built.
    ///
    /// A view over a hashed header map can parse these once, at start-up,
    /// and look each up when `header_values_of` is called with this very set
    /// ([`std::ptr::eq`]), instead of walking the request's fields (the
    /// actix-web adapter does). Any other set it is asked for, it walks.
    ///
    /// ```
    /// use sticky_core::{Env, KeySource, Source, Sticky};
    ///
    /// let sticky = Sticky::builder()
    ///     .sources([Source::Key, Source::Cookie])
    ///     .key_source(KeySource::Header("x-tenant-id".into()))
    ///     .build(Env::machine("148ed599c14189"))?;
    /// let names: Vec<&str> = sticky.read_headers().iter().collect();
    /// assert_eq!(names, ["cookie", "x-tenant-id"]);
    /// # Ok::<(), sticky_core::ConfigError>(())
    /// ```
    pub fn read_headers(&self) -> &HeaderNames {
        &self.inner.read_headers
    }

    /// The request headers this configuration reads beyond
    /// [`READ_HEADERS`]: the header source and key headers (lowercase).
    pub fn configured_headers(&self) -> impl Iterator<Item = &str> {
        let keys = self.inner.keys.iter().filter_map(|k| match k {
            CompiledKey::Header(h, _) => Some(h.as_str()),
            _ => None,
        });
        self.inner
            .header_source
            .as_deref()
            .into_iter()
            .chain(keys)
            .filter(|h| !READ_HEADERS.contains(h))
    }

    /// The cookie names this configuration reads: the sticky cookie (when
    /// it is a source) and key cookies.
    pub fn configured_cookies(&self) -> impl Iterator<Item = &str> {
        let keys = self.inner.keys.iter().filter_map(|k| match k {
            CompiledKey::Cookie(c) => Some(c.name()),
            _ => None,
        });
        self.inner
            .pins_cookie
            .then_some(self.inner.cookie.name.as_str())
            .into_iter()
            .chain(keys)
    }
}

/// Every request header the engine's built-in rules may read (lowercase).
/// Configured sources add their own: see [`Sticky::configured_headers`].
pub const READ_HEADERS: [&str; 10] = [
    "cookie",
    "x-forwarded-proto",
    "content-length",
    "transfer-encoding",
    "access-control-request-method",
    Marker::ALL[0].header(),
    Marker::ALL[1].header(),
    Marker::ALL[2].header(),
    Marker::ALL[3].header(),
    "fly-client-ip",
];

/// The headers read once a request is not served as pinned here (rows 5
/// to 8), found in one pass: the markers of [`Routed`], then the body's
/// framing (`body.rs`).
pub(crate) const ROUTING: [&str; 6] = [
    Marker::ReplaySrc.header(),
    Marker::ReplayFailed.header(),
    Marker::PreferredUnavailable.header(),
    Marker::ReplayCache.header(),
    "transfer-encoding",
    "content-length",
];

/// The one pass over [`ROUTING`].
pub(crate) type RoutingSeen<'a> = Seen<'a, { ROUTING.len() }>;

/// How the proxy brought a request here, from the markers it carries.
/// None of them is authenticated (a client can send any), so each may only
/// ever make this Machine serve, re-pin or replay the same client once more.
struct Routed {
    /// `fly-replay-src` or `fly-replay-failed`: an app already replayed it.
    replayed: Option<Marker>,
    /// `fly-preferred-instance-unavailable`: a preferred Machine was gone.
    unavailable: bool,
    /// `fly-replay-cache-status: hit`: the replay cache routed it here; it
    /// reached no other Machine (a hit carries no `fly-replay-src`).
    cache_hit: bool,
    /// Any other `fly-replay-cache-status` (`miss`, or one we do not know)
    /// counts as replayed; `bypass` means it was balanced as usual.
    cache_replayed: bool,
}

impl Routed {
    fn of<'a, V: RequestView>(req: &'a V, seen: &RoutingSeen<'a>) -> Self {
        let marker = |i: u8| seen.first(req, RoutingSeen::slot(i), ROUTING[usize::from(i)]);
        let replayed = [(0, Marker::ReplaySrc), (1, Marker::ReplayFailed)]
            .into_iter()
            .find_map(|(i, m)| marker(i).map(|_| m));
        let status = marker(3).map(target::header_value);
        Routed {
            replayed,
            unavailable: marker(2).is_some(),
            cache_hit: status.is_some_and(|v| v.eq_ignore_ascii_case(b"hit")),
            cache_replayed: status.is_some_and(|v| {
                !v.eq_ignore_ascii_case(b"hit") && !v.eq_ignore_ascii_case(b"bypass")
            }),
        }
    }

    /// The marker that stops a replay (row 5), if any. A cache hit is not
    /// one: a draining Machine moves the client, and a key that moved since
    /// the entry was made is replayed to its owner (with `invalidate`). A
    /// hit whose Machine was gone (`unavailable`) still moves a key, which
    /// names its owner anew; a pin names the gone Machine, so it re-pins.
    fn marker(&self, away: Away<'_>) -> Option<Marker> {
        if let Some(m) = self.replayed {
            return Some(m);
        }
        if self.cache_replayed {
            return Some(Marker::ReplayCache);
        }
        let moves_anyway = self.cache_hit
            && match away {
                Away::Pinned { target, .. } => target.source == Source::Key,
                Away::Draining => true,
            };
        (self.unavailable && !moves_anyway).then_some(Marker::PreferredUnavailable)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
