//! The decision counters: every decision is counted once under its outcome
//! and reason, clones share them, off means empty, and the Prometheus text
//! says the same as the snapshot.

mod common;

use std::collections::HashMap;

use common::{Req, S, T};
use proptest::prelude::*;
use sticky_core::{
    Env, LargeBody, Marker, MetricsSnapshot, OutcomeKind, Reason, Source, Sticky, Unavailable,
};

fn engine() -> Sticky {
    Sticky::builder()
        .exclude(["/health", "/metrics"])
        .build(Env::machine(S))
        .unwrap()
}

/// The value of the series with exactly these labels, read back from the text.
fn series(text: &str, labels: &str) -> Option<u64> {
    let prefix = format!("sticky_decisions_total{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|n| n.parse().unwrap())
}

#[test]
fn each_decision_is_counted_under_its_outcome_and_reason() {
    let sticky = engine();
    let _ = sticky.decide(&Req::get("/").cookie(S));
    let _ = sticky.decide(&Req::get("/").cookie(S));
    let _ = sticky.decide(&Req::get("/"));
    let _ = sticky.decide(&Req::get("/").cookie(T));
    let _ = sticky.decide(&Req::get("/").cookie("not-an-id"));
    let _ = sticky.decide(&Req::get("/metrics").cookie(T));
    let _ = sticky.decide(&Req::get("/").cookie(T).header("fly-replay-src", "x"));
    let _ = sticky.skipped();

    let m = sticky.metrics();
    assert!(m.is_counting());
    let pinned_here = Reason::PinnedHere(Source::Cookie);
    assert_eq!(m.get(OutcomeKind::Stick, pinned_here), 2);
    assert_eq!(m.get(OutcomeKind::SetCookie, Reason::NoTarget), 1);
    assert_eq!(
        m.get(OutcomeKind::Replay, Reason::PinnedElsewhere(Source::Cookie)),
        1
    );
    assert_eq!(
        m.get(
            OutcomeKind::SetCookie,
            Reason::InvalidTarget(Source::Cookie, sticky_core::Rejected::Format)
        ),
        1
    );
    assert_eq!(m.get(OutcomeKind::Stick, Reason::PathExcluded), 1);
    assert_eq!(
        m.get(
            OutcomeKind::SetCookie,
            Reason::AlreadyReplayed(Source::Cookie, Marker::ReplaySrc)
        ),
        1
    );
    assert_eq!(m.get(OutcomeKind::Stick, Reason::Skipped), 1);
    assert_eq!(m.total(), 8);
    assert_eq!(m.total_of(OutcomeKind::Replay), 1);
    assert_eq!(m.total_of(OutcomeKind::SetCookie), 3);
    assert_eq!(m.iter().count(), 7, "{m:?}");
    let handler_runs: u64 = m
        .iter()
        .filter(|(o, ..)| o.runs_handler())
        .map(|(.., n)| n)
        .sum();
    assert_eq!(handler_runs, 7, "all but the replay");

    let text = m.to_string();
    assert_eq!(
        series(
            &text,
            r#"outcome="stick",reason="pinned_here",source="cookie""#
        ),
        Some(2)
    );
    assert_eq!(
        series(&text, r#"outcome="set_cookie",reason="no_target""#),
        Some(1)
    );
    assert_eq!(
        series(
            &text,
            r#"outcome="set_cookie",reason="invalid_target",source="cookie",detail="format""#
        ),
        Some(1)
    );
    assert_eq!(
        series(
            &text,
            r#"outcome="set_cookie",reason="already_replayed",source="cookie",detail="fly-replay-src""#
        ),
        Some(1)
    );
    // Not a decision that happened: no series.
    assert_eq!(
        series(
            &text,
            r#"outcome="refuse",reason="pinned_elsewhere",source="cookie""#
        ),
        None
    );
    assert!(text.ends_with("# TYPE sticky_draining gauge\nsticky_draining 0\n"));
}

#[test]
fn clones_share_the_counters_across_threads() {
    let sticky = engine();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let sticky = sticky.clone();
            std::thread::spawn(move || {
                let req = Req::get("/").cookie(S);
                for _ in 0..1_000 {
                    let _ = sticky.decide(&req);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        sticky
            .metrics()
            .get(OutcomeKind::Stick, Reason::PinnedHere(Source::Cookie)),
        4_000
    );
    // A separately built engine has counters of its own.
    assert_eq!(engine().metrics().total(), 0);
}

#[test]
fn off_counts_nothing() {
    let sticky = Sticky::builder()
        .count_decisions(false)
        .build(Env::machine(S))
        .unwrap();
    let _ = sticky.decide(&Req::get("/").cookie(T));
    let m = sticky.metrics();
    assert!(!m.is_counting());
    assert_eq!(m.total(), 0);
    assert!(!m.to_string().contains("sticky_decisions_total{"));
}

#[test]
fn disabled_and_draining_are_counted_and_the_gauge_follows_the_drain() {
    let off_fly = Sticky::builder().build(Env::default()).unwrap();
    let _ = off_fly.decide(&Req::get("/").cookie(T));
    assert_eq!(
        off_fly.metrics().get(OutcomeKind::Stick, Reason::Disabled),
        1
    );

    let sticky = engine();
    sticky.drain();
    let _ = sticky.decide(&Req::get("/").cookie(S));
    let m = sticky.metrics();
    assert!(m.is_draining());
    assert_eq!(m.get(OutcomeKind::Replay, Reason::Draining), 1);
    assert!(m.to_string().ends_with("\nsticky_draining 1\n"));
    assert_eq!(
        MetricsSnapshot::CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
    );
}

/// What a test request may be: the situations of the decision table.
fn request() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(vec!["GET", "POST", "OPTIONS"]),
        prop::sample::select(vec!["/", "/cart", "/health", "/metrics"]),
        prop::option::of(prop::sample::select(vec![S, T, "nope", "90801679A10038"])),
        prop::option::of(prop::sample::select(vec![
            "fly-replay-src",
            "fly-replay-failed",
            "fly-preferred-instance-unavailable",
            "access-control-request-method",
        ])),
        prop::option::of(prop::sample::select(vec!["10", "2000000", "x"])),
    )
        .prop_map(|(method, path, target, marker, length)| {
            let mut req = Req::new(method, path);
            if let Some(t) = target {
                req = req.cookie(t);
            }
            if let Some(m) = marker {
                req = req.header(m, "1");
            }
            if let Some(l) = length {
                req = req.header("content-length", l);
            }
            req
        })
}

proptest! {
    /// Whatever the requests and policies, the counters equal a tally of
    /// the decisions returned, and the text carries each count.
    #[test]
    fn the_counters_are_a_tally_of_the_decisions(
        requests in prop::collection::vec(request(), 0..40),
        refuse in any::<bool>(),
        drain_at in prop::option::of(0usize..40),
    ) {
        let sticky = Sticky::builder()
            .exclude(["/health", "/metrics"])
            .unavailable(if refuse { Unavailable::Refuse } else { Unavailable::Repin })
            .large_body(if refuse { LargeBody::Refuse } else { LargeBody::ServeHere })
            .build(Env::machine(S))
            .unwrap();
        let mut tally: HashMap<(OutcomeKind, Reason), u64> = HashMap::new();
        for (i, req) in requests.iter().enumerate() {
            if drain_at == Some(i) {
                sticky.drain();
            }
            let d = sticky.decide(req);
            *tally.entry((d.outcome().kind(), d.reason())).or_default() += 1;
        }
        let m = sticky.metrics();
        let counted: HashMap<(OutcomeKind, Reason), u64> =
            m.iter().map(|(o, r, n)| ((o, r), n)).collect();
        prop_assert_eq!(&counted, &tally);
        prop_assert_eq!(m.total(), requests.len() as u64);
        let text = m.to_string();
        for ((o, r), n) in &tally {
            let mut labels = format!("outcome=\"{o}\",reason=\"{}\"", r.name());
            if let Some(s) = r.source() {
                labels.push_str(&format!(",source=\"{s}\""));
            }
            if let Some(d) = r.detail() {
                labels.push_str(&format!(",detail=\"{d}\""));
            }
            prop_assert_eq!(series(&text, &labels), Some(*n), "{}", labels);
        }
    }
}
