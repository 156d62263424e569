//! The replay planner: where a request goes next, decided on plain data.
//!
//! The proxy asks it four questions and does what it answers:
//! - [`first`]: where a client's request goes (its routing headers);
//! - [`replay`]: what a Machine's `fly-replay` answer means: a [`Plan`] (a
//!   refusal with a Fly error code, or the next [`Route`] with the headers the
//!   replayed request carries);
//! - [`after_miss`]: the Machine a route led to could not take the request
//!   (gone, not startable, refused, too slow): which route next, or which error;
//! - [`after_failure`]: a replay got no connection at all: fall back to the
//!   replaying Machine (with `fly-replay-failed`) or answer an empty 502.
//!
//! Nothing here touches sockets, locks or clocks (the time comes in as an
//! argument), so each of Fly's rules is unit-tested below. The replay cache
//! ([`cache`](crate::cache)) is consulted here too: a hit is another answer
//! of [`first`] (straight to the remembered route, marked
//! `fly-replay-cache-status: hit`, no `fly-replay-src`), and what a replay
//! does to the cache (remember it, invalidate an entry, refuse to cache it
//! loudly) is part of what [`replay`] answers, as a [`CacheOp`] the proxy
//! applies to the store.

use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::MAX_REPLAYS;
use crate::cache::{
    self, Ask, CACHE_STATUS, Entry, Key, Lookup, MIN_TTL, ReplayCacheRule, RequestKeys,
};
use crate::errors::ProxyError;
use crate::headers::{
    FLY_REPLAY_FAILED, FLY_REPLAY_SRC, FORCE_INSTANCE, PREFER_INSTANCE, PREFERRED_UNAVAILABLE,
    header_value,
};
use crate::regions;
use crate::replay::{Fallback, ReplayDirective, ReplayError, Transform};

/// What the planner knows about the app and the proxy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cluster<'a> {
    /// The one app flysim runs.
    pub(crate) app_name: &'a str,
    /// The one region flysim runs (the Machines' and the edge's).
    pub(crate) region: &'a str,
    /// The largest replayable request body.
    pub(crate) body_limit: usize,
}

/// Where a request stands when a Machine answers it with `fly-replay`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    /// Its body was buffered, so it can be sent again.
    pub(crate) body_replayable: bool,
    /// Replays already followed.
    pub(crate) replays: usize,
    /// The answering delivery was a fallback after a failed replay.
    pub(crate) fallback: bool,
}

/// A Machine's replay answer as the proxy read it.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The Machine that answered.
    pub(crate) machine: String,
    /// The parsed instruction, or why it is invalid.
    pub(crate) directive: Result<ReplayDirective, ReplayError>,
    /// The instruction as messages quote it.
    pub(crate) quoted: String,
    /// Its replay cache instruction (`fly-replay-cache` headers or the JSON
    /// `cache` object): none, or why it is invalid.
    pub(crate) cache: Result<Option<Ask>, String>,
}

/// What the replay cache knows about the request a replay answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CacheCtx<'a> {
    /// The request's hostname, path and session key.
    pub(crate) keys: &'a RequestKeys,
    /// The session rules (indexed by the key's rule).
    pub(crate) rules: &'a [ReplayCacheRule],
    /// The entry that routed this request, if it was a cache hit.
    pub(crate) hit: Option<&'a Key>,
    /// The client bypassed the cache.
    pub(crate) bypassed: bool,
    /// The cache clock now (entries expire at a fixed time from creation).
    pub(crate) now: Instant,
}

/// What a replay does to the replay cache.
#[derive(Debug, Clone)]
pub(crate) enum CacheOp {
    /// Nothing.
    Nothing,
    /// Remember it under this key.
    Remember(Key, Box<Entry>),
    /// Remove the entry that routed the request (or would have).
    Invalidate,
    /// It was meant to be cached but is not (why): a loud event.
    NotCached(String),
}

/// Where one delivery should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// Any started Machine not excluded (autostarting one if none is started).
    Balanced { exclude: Vec<String> },
    /// Exactly this Machine, with no fallback: a gone Machine is PR02.
    /// `named_by` says who asked (`fly-force-instance-id`, `fallback=force_self`).
    Exact { id: String, named_by: &'static str },
    /// This Machine if it can be reached, otherwise balanced; `mark` adds
    /// `fly-preferred-instance-unavailable` when falling back.
    Prefer {
        id: String,
        exclude: Vec<String>,
        mark: bool,
        timeout: Option<Duration>,
    },
    /// `instance=`: exactly this Machine; a gone one fails the replay slowly.
    Strict {
        id: String,
        timeout: Option<Duration>,
    },
    /// No Machine can take it (a `region=` this simulator does not run).
    Nowhere,
}

/// Why a replay got no connection (the `reason` of `fly-replay-failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Timeout,
    NoCandidate,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::NoCandidate => "no_candidate",
        }
    }
}

/// The planner's answer to a `fly-replay`.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Replay the request (boxed: it is much larger than a refusal).
    Replay(Box<Replay>),
    /// Refuse it: the client gets this error.
    Refuse(ProxyError),
}

/// A replay to make.
#[derive(Debug)]
pub(crate) struct Replay {
    /// Where the replayed request goes.
    pub(crate) route: Route,
    /// Headers it carries besides its own (`fly-replay-src`).
    pub(crate) extra: HeaderMap,
    /// Changes to the request first (JSON form only).
    pub(crate) transform: Option<Transform>,
    /// What to do if it gets no connection.
    pub(crate) on_failure: OnFailure,
    /// The `fly-replay-cache-status` it carries (also in `extra`).
    pub(crate) cache_status: Option<&'static str>,
    /// What it does to the replay cache.
    pub(crate) cache_op: CacheOp,
}

/// The first delivery of a client's request.
#[derive(Debug)]
pub(crate) struct First {
    pub(crate) route: Route,
    /// Headers it carries besides its own (`fly-replay-cache-status: hit`).
    pub(crate) extra: HeaderMap,
    /// For a cache hit: the entry's key, and what a failure to reach its
    /// target means (the cached replay's own failure, with no fallback).
    pub(crate) hit: Option<(Key, OnFailure)>,
}

/// What [`after_failure`] needs to know about a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OnFailure {
    /// The replaying Machine.
    pub(crate) source: String,
    /// The Machine the replay named, if any.
    pub(crate) target: Option<String>,
    /// The app the replay named (flysim's own).
    pub(crate) app: String,
    pub(crate) fallback: Option<Fallback>,
}

/// Why the Machine a route led to could not take the request (it never got it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Miss {
    /// Destroyed or unknown.
    Gone,
    /// Stopped, and starting it failed.
    NotStarted(String),
    /// Not reached within the replay's `timeout`.
    Timeout,
    /// The connection was refused.
    Refused(String),
}

/// The route to try after a [`Miss`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reroute {
    pub(crate) route: Route,
    /// The preferred Machine that could not be used, when the next delivery
    /// carries `fly-preferred-instance-unavailable` for it.
    pub(crate) unavailable: Option<String>,
}

/// What follows a replay that got no connection.
#[derive(Debug)]
pub(crate) enum AfterFailure {
    /// No `fallback`: the client gets an empty 502.
    BadGateway,
    /// Send the request back to `route` (as `how` says) with `extra`
    /// (`fly-replay-failed`, whose value is `failed`). That request cannot
    /// replay again.
    Fallback {
        how: Fallback,
        route: Route,
        extra: HeaderMap,
        failed: String,
    },
}

/// The first delivery of a client's request: as its routing headers ask
/// (they win over the cache), else by the cache entry `lookup` found (a hit),
/// else balanced.
pub(crate) fn first(cluster: &Cluster<'_>, headers: &HeaderMap, lookup: &Lookup) -> First {
    let text = |v: &http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let mut extra = HeaderMap::new();
    let mut hit = None;
    let route = if let Some(v) = headers.get(FORCE_INSTANCE) {
        Route::Exact {
            id: text(v),
            named_by: "fly-force-instance-id",
        }
    } else if let Some(v) = headers.get(PREFER_INSTANCE) {
        Route::Prefer {
            id: text(v),
            exclude: Vec::new(),
            mark: true,
            timeout: None,
        }
    } else if let Lookup::Hit { key, entry } = lookup {
        extra.insert(CACHE_STATUS, http::HeaderValue::from_static("hit"));
        let d = &entry.directive;
        hit = Some((
            key.clone(),
            OnFailure {
                source: entry.source.clone(),
                target: d.instance.clone().or_else(|| d.prefer_instance.clone()),
                app: cluster.app_name.to_owned(),
                fallback: None,
            },
        ));
        directive_route(cluster, d, &entry.source)
    } else {
        Route::Balanced {
            exclude: Vec::new(),
        }
    };
    First { route, extra, hit }
}

/// Where a valid replay instruction from Machine `source` sends the request.
fn directive_route(cluster: &Cluster<'_>, d: &ReplayDirective, source: &str) -> Route {
    let exclude = if d.elsewhere {
        vec![source.to_owned()]
    } else {
        Vec::new()
    };
    let covered = d.region.as_ref().is_none_or(|specs| {
        specs
            .iter()
            .any(|spec| regions::covers(spec, cluster.region))
    });
    if !covered {
        Route::Nowhere
    } else if let Some(id) = &d.instance {
        Route::Strict {
            id: id.clone(),
            timeout: d.timeout,
        }
    } else if let Some(id) = &d.prefer_instance {
        Route::Prefer {
            id: id.clone(),
            exclude,
            mark: true,
            timeout: d.timeout,
        }
    } else {
        Route::Balanced { exclude }
    }
}

/// What a cache-meant replay carries that a cached one cannot.
fn uncacheable(d: &ReplayDirective) -> Vec<&'static str> {
    let mut out = Vec::new();
    if d.state.is_some() {
        out.push("state");
    }
    if d.timeout.is_some() {
        out.push("timeout");
    }
    if d.fallback.is_some() {
        out.push("fallback");
    }
    if d.transform.is_some() {
        out.push("transform");
    }
    out
}

/// The replay's `fly-replay-cache-status` and what it does to the cache.
fn cache_plan(
    d: &ReplayDirective,
    answer: &Answer,
    progress: &Progress,
    cache: &CacheCtx<'_>,
) -> (Option<&'static str>, CacheOp) {
    let keys = cache.keys;
    // One step of cache lookup: only the first Machine's replay is remembered.
    let first_answer = progress.replays == 0 && cache.hit.is_none() && !progress.fallback;
    let ask = answer.cache.as_ref();
    let in_play = keys.session.is_some() || cache.hit.is_some() || !matches!(ask, Ok(None));
    let status = if cache.bypassed {
        Some("bypass")
    } else if in_play {
        Some("miss")
    } else {
        None
    };
    let cannot = |what: Vec<&str>| {
        CacheOp::NotCached(format!(
            "it carries {} (a cached replay cannot carry state, timeout, fallback or a transform)",
            what.join(", ")
        ))
    };
    let entry = |ttl: Duration, allow_bypass: bool| Entry {
        directive: d.clone(),
        source: answer.machine.clone(),
        expires: cache.now + ttl,
        allow_bypass,
    };
    let op = match ask {
        Err(problem) => CacheOp::NotCached(format!(
            "its replay cache instruction is invalid: {problem}"
        )),
        Ok(Some(ask)) if ask.invalidate => CacheOp::Invalidate,
        Ok(Some(Ask {
            pattern: Some(pattern),
            ttl,
            allow_bypass,
            ..
        })) => {
            let what = uncacheable(d);
            if !first_answer {
                CacheOp::NotCached(
                    "it answers a request that the cache routed or that was already replayed (only the first Machine's replay is cached)".to_owned(),
                )
            } else if !cache::pattern_covers(pattern, keys) {
                CacheOp::NotCached(format!(
                    "its pattern does not cover this request (host {}, path {})",
                    keys.host, keys.path
                ))
            } else if let Some(ttl) = ttl.filter(|t| *t >= MIN_TTL.as_secs()) {
                if what.is_empty() {
                    let key = Key::Path {
                        host: keys.host.clone(),
                        path: pattern.1.clone(),
                    };
                    CacheOp::Remember(
                        key,
                        Box::new(entry(Duration::from_secs(ttl), *allow_bypass)),
                    )
                } else {
                    cannot(what)
                }
            } else {
                CacheOp::NotCached(match ttl {
                    None => "it has no TTL (fly-replay-cache-ttl-secs, or cache.ttl)".to_owned(),
                    Some(t) => format!(
                        "its TTL of {t} s is under the minimum of {} s",
                        MIN_TTL.as_secs()
                    ),
                })
            }
        }
        Ok(ask) => match &keys.session {
            Some((rule, value)) if first_answer => {
                let what = uncacheable(d);
                if what.is_empty() {
                    let rule_ = &cache.rules[*rule];
                    let key = Key::Session {
                        host: keys.host.clone(),
                        rule: *rule,
                        value: value.clone(),
                    };
                    let bypass =
                        rule_.allow_bypass() || ask.as_ref().is_some_and(|a| a.allow_bypass);
                    CacheOp::Remember(key, Box::new(entry(rule_.ttl(), bypass)))
                } else {
                    cannot(what)
                }
            }
            _ => CacheOp::Nothing,
        },
    };
    (status, op)
}

/// Plans a replay: checks it as Fly does (PA03 invalid, PA03 a fallback
/// replaying again, PA04 another app, PA01 a body too large, PA02 more than
/// [`MAX_REPLAYS`]), then says where the request goes and with which
/// `fly-replay-src` (`t` is `now_micros`, microseconds since the epoch).
pub(crate) fn replay(
    cluster: &Cluster<'_>,
    progress: &Progress,
    answer: &Answer,
    now_micros: u128,
    cache: &CacheCtx<'_>,
) -> Plan {
    let machine = answer.machine.clone();
    let quoted = answer.quoted.clone();
    let d = match &answer.directive {
        Ok(d) => d,
        Err(problem) => {
            return Plan::Refuse(ProxyError::InvalidReplay {
                machine,
                problem: problem.to_string(),
                quoted,
            });
        }
    };
    if progress.fallback {
        return Plan::Refuse(ProxyError::ReplayOfFallback { machine, quoted });
    }
    if let Some(app) = d.app.as_deref().filter(|a| *a != cluster.app_name) {
        return Plan::Refuse(ProxyError::OtherApp {
            machine,
            app: app.to_owned(),
            quoted,
        });
    }
    if !progress.body_replayable {
        return Plan::Refuse(ProxyError::BodyTooLarge { machine, quoted });
    }
    if progress.replays >= MAX_REPLAYS {
        return Plan::Refuse(ProxyError::TooManyReplays { machine, quoted });
    }

    let mut src = format!(
        "instance={machine};region={};t={now_micros}",
        cluster.region
    );
    if let Some(state) = &d.state {
        src.push_str(";state=");
        src.push_str(state);
    }
    let mut extra = HeaderMap::new();
    extra.insert(FLY_REPLAY_SRC, header_value(&src));

    let (cache_status, cache_op) = cache_plan(d, answer, progress, cache);
    if let Some(status) = cache_status {
        extra.insert(CACHE_STATUS, http::HeaderValue::from_static(status));
    }
    let route = directive_route(cluster, d, &machine);
    Plan::Replay(Box::new(Replay {
        route,
        extra,
        transform: d.transform.clone(),
        on_failure: OnFailure {
            source: machine,
            target: d.instance.clone().or_else(|| d.prefer_instance.clone()),
            app: d.app.clone().unwrap_or_else(|| cluster.app_name.to_owned()),
            fallback: d.fallback,
        },
        cache_status,
        cache_op,
    }))
}

/// The Machine `id` that `route` led to could not take the request: the
/// route to try next (adding `fly-preferred-instance-unavailable` to `extra`
/// when a preferred Machine is given up), or the error that ends the delivery.
pub(crate) fn after_miss(
    route: Route,
    id: &str,
    miss: Miss,
    extra: &mut HeaderMap,
) -> Result<Reroute, ProxyError> {
    match route {
        Route::Balanced { mut exclude } => {
            exclude.push(id.to_owned());
            Ok(Reroute {
                route: Route::Balanced { exclude },
                unavailable: None,
            })
        }
        Route::Prefer {
            id, exclude, mark, ..
        } => {
            let unavailable = mark.then(|| {
                extra.insert(PREFERRED_UNAVAILABLE, header_value(&id));
                id
            });
            Ok(Reroute {
                route: Route::Balanced { exclude },
                unavailable,
            })
        }
        Route::Strict { id, .. } => Err(ProxyError::Unreachable {
            id,
            reason: match miss {
                Miss::Timeout => Reason::Timeout,
                Miss::Gone | Miss::NotStarted(_) | Miss::Refused(_) => Reason::NoCandidate,
            },
        }),
        Route::Exact { id, named_by } => {
            let why = match miss {
                Miss::Gone => {
                    "which is not a Machine of this app (destroyed or unknown)".to_owned()
                }
                Miss::NotStarted(e) => format!("which could not be started ({e})"),
                Miss::Refused(e) => format!("which refused the connection ({e})"),
                Miss::Timeout => "which could not be reached in time".to_owned(),
            };
            Err(ProxyError::NotFound {
                what: format!("{named_by} names Machine {id}, {why}"),
                id,
            })
        }
        Route::Nowhere => Err(ProxyError::NoCandidate),
    }
}

/// A replay got no connection (`reason`, after `elapsed_ms`): the fallback
/// its `fallback=` asks for, or an empty 502.
pub(crate) fn after_failure(
    cluster: &Cluster<'_>,
    on: &OnFailure,
    reason: Reason,
    elapsed_ms: u128,
) -> AfterFailure {
    let Some(fallback) = on.fallback else {
        return AfterFailure::BadGateway;
    };
    let mut failed = String::new();
    if let Some(id) = &on.target {
        failed.push_str("instance=");
        failed.push_str(id);
        failed.push(';');
    }
    failed.push_str(&format!(
        "app={};region={};replay_source={};reason={};elapsed_ms={elapsed_ms}",
        on.app,
        cluster.region,
        on.source,
        reason.as_str()
    ));
    let mut extra = HeaderMap::new();
    extra.insert(FLY_REPLAY_FAILED, header_value(&failed));
    let route = match fallback {
        Fallback::ForceSelf => Route::Exact {
            id: on.source.clone(),
            named_by: "fallback=force_self",
        },
        Fallback::PreferSelf => Route::Prefer {
            id: on.source.clone(),
            exclude: Vec::new(),
            mark: false,
            timeout: None,
        },
    };
    AfterFailure::Fallback {
        how: fallback,
        route,
        extra,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::replay::parse_header;

    const SRC: &str = "148ed599c14189";
    const TARGET: &str = "90801679a10038";

    fn cluster() -> Cluster<'static> {
        Cluster {
            app_name: "flysim-app",
            region: "iad",
            body_limit: 1_000_000,
        }
    }

    fn fresh() -> Progress {
        Progress {
            body_replayable: true,
            replays: 0,
            fallback: false,
        }
    }

    fn answer(header: &str) -> Answer {
        Answer {
            machine: SRC.to_owned(),
            directive: parse_header(header),
            quoted: format!("\"{header}\""),
            cache: Ok(None),
        }
    }

    fn no_cache(keys: &RequestKeys) -> CacheCtx<'_> {
        CacheCtx {
            keys,
            rules: &[],
            hit: None,
            bypassed: false,
            now: Instant::now(),
        }
    }

    fn plan(progress: &Progress, header: &str) -> Plan {
        let keys = RequestKeys::default();
        replay(
            &cluster(),
            progress,
            &answer(header),
            1_700_000_000_000_000,
            &no_cache(&keys),
        )
    }

    fn first_route(h: &HeaderMap) -> Route {
        first(&cluster(), h, &Lookup::None).route
    }

    fn planned(header: &str) -> Replay {
        match plan(&fresh(), header) {
            Plan::Replay(r) => *r,
            Plan::Refuse(e) => panic!("{header} refused: {e:?}"),
        }
    }

    fn refused(progress: &Progress, header: &str) -> ProxyError {
        match plan(progress, header) {
            Plan::Refuse(e) => e,
            Plan::Replay(r) => panic!("{header} replayed to {:?}", r.route),
        }
    }

    fn header(map: &HeaderMap, name: &str) -> Option<String> {
        map.get(name).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn client_headers_choose_the_first_route() {
        let mut h = HeaderMap::new();
        assert_eq!(
            first_route(&h),
            Route::Balanced {
                exclude: Vec::new()
            }
        );
        h.insert(PREFER_INSTANCE, HeaderValue::from_static(TARGET));
        assert_eq!(
            first_route(&h),
            Route::Prefer {
                id: TARGET.to_owned(),
                exclude: Vec::new(),
                mark: true,
                timeout: None
            }
        );
        h.insert(FORCE_INSTANCE, HeaderValue::from_static(SRC));
        assert_eq!(
            first_route(&h),
            Route::Exact {
                id: SRC.to_owned(),
                named_by: "fly-force-instance-id"
            }
        );
    }

    #[test]
    fn instance_is_strict_with_its_timeout() {
        let r = planned(&format!("instance={TARGET};timeout=800ms;elsewhere=true"));
        // `elsewhere` only narrows a balanced pick; a named Machine is exact.
        assert_eq!(
            r.route,
            Route::Strict {
                id: TARGET.to_owned(),
                timeout: Some(Duration::from_millis(800))
            }
        );
        assert_eq!(r.on_failure.target.as_deref(), Some(TARGET));
    }

    #[test]
    fn prefer_instance_falls_back_marked_with_preferred_unavailable() {
        let r = planned(&format!("prefer_instance={TARGET};elsewhere=true"));
        assert_eq!(
            r.route,
            Route::Prefer {
                id: TARGET.to_owned(),
                exclude: vec![SRC.to_owned()],
                mark: true,
                timeout: None
            }
        );
        let mut extra = r.extra;
        let next = after_miss(r.route, TARGET, Miss::Gone, &mut extra).unwrap();
        assert_eq!(
            next.route,
            Route::Balanced {
                exclude: vec![SRC.to_owned()]
            }
        );
        assert_eq!(next.unavailable.as_deref(), Some(TARGET));
        assert_eq!(
            header(&extra, "fly-preferred-instance-unavailable").as_deref(),
            Some(TARGET)
        );
        assert!(extra.contains_key("fly-replay-src"), "kept: {extra:?}");
    }

    #[test]
    fn elsewhere_leaves_the_replaying_machine_out() {
        assert_eq!(
            planned("elsewhere=true").route,
            Route::Balanced {
                exclude: vec![SRC.to_owned()]
            }
        );
        assert_eq!(
            planned("state=x").route,
            Route::Balanced {
                exclude: Vec::new()
            }
        );
    }

    #[test]
    fn a_region_flysim_does_not_run_routes_nowhere() {
        for covered in ["region=iad", "region=\"ord,any\"", "region=us", "region=na"] {
            assert!(
                matches!(planned(covered).route, Route::Balanced { .. }),
                "{covered}"
            );
        }
        for elsewhere in ["region=ord", "region=eu", "region=\"ams,sa\""] {
            assert_eq!(planned(elsewhere).route, Route::Nowhere, "{elsewhere}");
        }
        let mut extra = HeaderMap::new();
        let e = after_miss(Route::Nowhere, "", Miss::Gone, &mut extra).unwrap_err();
        assert_eq!(e.no_connection(), Some(Reason::NoCandidate));
    }

    #[test]
    fn state_is_echoed_in_fly_replay_src() {
        let r = planned("state=cart-42");
        assert_eq!(
            header(&r.extra, "fly-replay-src").as_deref(),
            Some(format!("instance={SRC};region=iad;t=1700000000000000;state=cart-42").as_str())
        );
        let r = planned("elsewhere=true");
        assert_eq!(
            header(&r.extra, "fly-replay-src").as_deref(),
            Some(format!("instance={SRC};region=iad;t=1700000000000000").as_str())
        );
    }

    #[test]
    fn the_eleventh_replay_is_pa02() {
        let tenth = Progress {
            replays: MAX_REPLAYS - 1,
            ..fresh()
        };
        assert!(matches!(plan(&tenth, "elsewhere=true"), Plan::Replay(_)));
        let eleventh = Progress {
            replays: MAX_REPLAYS,
            ..fresh()
        };
        let e = refused(&eleventh, "elsewhere=true");
        assert!(matches!(e, ProxyError::TooManyReplays { .. }), "{e:?}");
        assert_eq!(e.code(), Some("PA02"));
        assert_eq!(e.machine(), Some(SRC));
    }

    #[test]
    fn invalid_other_app_and_large_body_are_refused() {
        let e = refused(&fresh(), "instance=nope");
        assert_eq!(e.code(), Some("PA03"));
        let e = refused(&fresh(), "app=other-app");
        assert!(
            matches!(&e, ProxyError::OtherApp { app, .. } if app == "other-app"),
            "{e:?}"
        );
        assert_eq!(e.code(), Some("PA04"));
        assert!(matches!(
            planned("app=flysim-app").route,
            Route::Balanced { .. }
        ));
        let large = Progress {
            body_replayable: false,
            ..fresh()
        };
        let e = refused(&large, "elsewhere=true");
        assert!(matches!(e, ProxyError::BodyTooLarge { .. }), "{e:?}");
        assert_eq!(e.code(), Some("PA01"));
        // An invalid header is reported as such whatever else is wrong.
        let e = refused(&large, "bogus=1");
        assert!(matches!(e, ProxyError::InvalidReplay { .. }), "{e:?}");
    }

    #[test]
    fn a_fallback_request_cannot_replay_again() {
        let after_fallback = Progress {
            fallback: true,
            ..fresh()
        };
        let e = refused(&after_fallback, "elsewhere=true");
        assert!(matches!(e, ProxyError::ReplayOfFallback { .. }), "{e:?}");
        assert_eq!(e.code(), Some("PA03"));
    }

    fn failing(header: &str) -> OnFailure {
        planned(header).on_failure
    }

    #[test]
    fn force_self_goes_back_to_the_replaying_machine_only() {
        let on = failing(&format!(
            "instance={TARGET};timeout=200ms;fallback=force_self"
        ));
        let AfterFailure::Fallback {
            how,
            route,
            extra,
            failed,
        } = after_failure(&cluster(), &on, Reason::Timeout, 201)
        else {
            panic!("force_self falls back");
        };
        assert_eq!(how, Fallback::ForceSelf);
        assert_eq!(
            route,
            Route::Exact {
                id: SRC.to_owned(),
                named_by: "fallback=force_self"
            }
        );
        let expected = format!(
            "instance={TARGET};app=flysim-app;region=iad;replay_source={SRC};reason=timeout;elapsed_ms=201"
        );
        assert_eq!(failed, expected);
        assert_eq!(
            header(&extra, "fly-replay-failed").as_deref(),
            Some(expected.as_str())
        );
        assert!(!extra.contains_key("fly-replay-src"));
    }

    #[test]
    fn prefer_self_goes_back_or_anywhere_unmarked() {
        let on = failing("region=ord;fallback=prefer_self");
        let AfterFailure::Fallback { route, failed, .. } =
            after_failure(&cluster(), &on, Reason::NoCandidate, 0)
        else {
            panic!("prefer_self falls back");
        };
        assert_eq!(
            route,
            Route::Prefer {
                id: SRC.to_owned(),
                exclude: Vec::new(),
                mark: false,
                timeout: None
            }
        );
        // No target Machine, so no instance= part.
        assert_eq!(
            failed,
            format!(
                "app=flysim-app;region=iad;replay_source={SRC};reason=no_candidate;elapsed_ms=0"
            )
        );
        let mut extra = HeaderMap::new();
        let next = after_miss(route, SRC, Miss::Gone, &mut extra).unwrap();
        assert_eq!(next.unavailable, None);
        assert!(extra.is_empty());
    }

    #[test]
    fn without_fallback_a_failed_replay_is_a_bare_502() {
        let on = failing(&format!("instance={TARGET}"));
        assert!(matches!(
            after_failure(&cluster(), &on, Reason::NoCandidate, 7500),
            AfterFailure::BadGateway
        ));
    }

    #[test]
    fn misses_end_strict_and_exact_routes() {
        let mut extra = HeaderMap::new();
        let strict = |timeout| Route::Strict {
            id: TARGET.to_owned(),
            timeout,
        };
        let e = after_miss(strict(None), TARGET, Miss::Gone, &mut extra).unwrap_err();
        assert_eq!(e.no_connection(), Some(Reason::NoCandidate));
        let e = after_miss(
            strict(Some(Duration::ZERO)),
            TARGET,
            Miss::Timeout,
            &mut extra,
        )
        .unwrap_err();
        assert_eq!(e.no_connection(), Some(Reason::Timeout));

        let exact = Route::Exact {
            id: TARGET.to_owned(),
            named_by: "fly-force-instance-id",
        };
        let e = after_miss(exact, TARGET, Miss::Refused("refused".into()), &mut extra).unwrap_err();
        assert_eq!(e.code(), Some("PR02"));
        assert_eq!(e.no_connection(), None);
        assert!(
            matches!(&e, ProxyError::NotFound { what, .. }
                if what == &format!("fly-force-instance-id names Machine {TARGET}, which refused the connection (refused)")),
            "{e:?}"
        );
        assert!(extra.is_empty());
    }

    #[test]
    fn a_balanced_miss_excludes_that_machine() {
        let mut extra = HeaderMap::new();
        let route = Route::Balanced {
            exclude: vec![SRC.to_owned()],
        };
        let next = after_miss(route, TARGET, Miss::NotStarted("x".into()), &mut extra).unwrap();
        assert_eq!(
            next.route,
            Route::Balanced {
                exclude: vec![SRC.to_owned(), TARGET.to_owned()]
            }
        );
    }

    fn cookie_keys() -> (Vec<ReplayCacheRule>, RequestKeys) {
        let rules = vec![
            "path_prefix=/,ttl_seconds=300,type=cookie,name=sid"
                .parse()
                .unwrap(),
        ];
        let keys = RequestKeys {
            host: "app.example".into(),
            path: "/".into(),
            session: Some((0, "u1".into())),
            skip: false,
        };
        (rules, keys)
    }

    #[test]
    fn a_hit_goes_where_the_cached_replay_went_marked_hit_without_src() {
        let entry = Entry {
            directive: parse_header(&format!("prefer_instance={TARGET}")).unwrap(),
            source: SRC.to_owned(),
            expires: Instant::now(),
            allow_bypass: false,
        };
        let key = Key::Path {
            host: "h".into(),
            path: "/p".into(),
        };
        let lookup = Lookup::Hit {
            key: key.clone(),
            entry: Box::new(entry),
        };
        let f = first(&cluster(), &HeaderMap::new(), &lookup);
        assert_eq!(
            f.route,
            Route::Prefer {
                id: TARGET.to_owned(),
                exclude: Vec::new(),
                mark: true,
                timeout: None
            }
        );
        assert_eq!(
            header(&f.extra, "fly-replay-cache-status").as_deref(),
            Some("hit")
        );
        assert!(!f.extra.contains_key("fly-replay-src"));
        let (hit, on) = f.hit.unwrap();
        assert_eq!(hit, key);
        assert_eq!((on.source.as_str(), on.fallback), (SRC, None));
        // Client routing headers win over the cache.
        let mut h = HeaderMap::new();
        h.insert(FORCE_INSTANCE, HeaderValue::from_static(SRC));
        assert!(first(&cluster(), &h, &lookup).hit.is_none());
    }

    fn cached_plan(header: &str, progress: &Progress, hit: Option<&Key>) -> Replay {
        let (rules, keys) = cookie_keys();
        let ctx = CacheCtx {
            keys: &keys,
            rules: &rules,
            hit,
            bypassed: false,
            now: Instant::now(),
        };
        match replay(&cluster(), progress, &answer(header), 1, &ctx) {
            Plan::Replay(r) => *r,
            Plan::Refuse(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn the_first_replay_of_a_cacheable_request_is_remembered_and_marked_miss() {
        let r = cached_plan(&format!("prefer_instance={TARGET}"), &fresh(), None);
        assert_eq!(r.cache_status, Some("miss"));
        assert_eq!(
            header(&r.extra, "fly-replay-cache-status").as_deref(),
            Some("miss")
        );
        assert!(r.extra.contains_key("fly-replay-src"));
        let CacheOp::Remember(Key::Session { rule, value, .. }, entry) = r.cache_op else {
            panic!("{:?}", r.cache_op);
        };
        assert_eq!(
            (rule, value.as_str(), entry.source.as_str()),
            (0, "u1", SRC)
        );

        // One step of lookup: a replay after a hit or a replay is ordinary.
        let key = Key::Path {
            host: "h".into(),
            path: "".into(),
        };
        let r = cached_plan("elsewhere=true", &fresh(), Some(&key));
        assert!(matches!(r.cache_op, CacheOp::Nothing), "{:?}", r.cache_op);
        assert_eq!(r.cache_status, Some("miss"));
        let second = Progress {
            replays: 1,
            ..fresh()
        };
        assert!(matches!(
            cached_plan("elsewhere=true", &second, None).cache_op,
            CacheOp::Nothing
        ));
    }

    #[test]
    fn a_cache_meant_replay_with_state_timeout_or_fallback_is_not_cached() {
        let r = cached_plan(
            &format!("instance={TARGET};state=s;timeout=1s;fallback=prefer_self"),
            &fresh(),
            None,
        );
        let CacheOp::NotCached(why) = &r.cache_op else {
            panic!("{:?}", r.cache_op);
        };
        assert!(why.contains("state, timeout, fallback"), "{why}");
        assert!(
            header(&r.extra, "fly-replay-src")
                .unwrap()
                .ends_with(";state=s")
        );
    }
}
