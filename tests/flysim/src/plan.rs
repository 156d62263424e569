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
//! belongs here too: a hit is another answer of [`first`] (straight to the
//! remembered Machine, marked `fly-replay-cache-status: hit`, no
//! `fly-replay-src`), and remembering a cacheable replay is part of [`replay`].

use std::time::Duration;

use http::HeaderMap;

use crate::MAX_REPLAYS;
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

/// The first delivery of a client's request, as its routing headers ask.
pub(crate) fn first(headers: &HeaderMap) -> Route {
    let text = |v: &http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    if let Some(v) = headers.get(FORCE_INSTANCE) {
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
    } else {
        Route::Balanced {
            exclude: Vec::new(),
        }
    }
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

    let exclude = if d.elsewhere {
        vec![machine.clone()]
    } else {
        Vec::new()
    };
    let covered = d.region.as_ref().is_none_or(|specs| {
        specs
            .iter()
            .any(|spec| regions::covers(spec, cluster.region))
    });
    let route = if !covered {
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
    };
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
        }
    }

    fn plan(progress: &Progress, header: &str) -> Plan {
        replay(&cluster(), progress, &answer(header), 1_700_000_000_000_000)
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
            first(&h),
            Route::Balanced {
                exclude: Vec::new()
            }
        );
        h.insert(PREFER_INSTANCE, HeaderValue::from_static(TARGET));
        assert_eq!(
            first(&h),
            Route::Prefer {
                id: TARGET.to_owned(),
                exclude: Vec::new(),
                mark: true,
                timeout: None
            }
        );
        h.insert(FORCE_INSTANCE, HeaderValue::from_static(SRC));
        assert_eq!(
            first(&h),
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
}
