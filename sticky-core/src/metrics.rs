//! Decision counters: one relaxed atomic add per decision, by outcome and
//! reason, read as a [`MetricsSnapshot`] and rendered in Prometheus text.
//!
//! The counters are a fixed table of `AtomicU64`, one per (outcome,
//! reason) pair, allocated once when the engine is built and shared by
//! every clone of the [`Sticky`](crate::Sticky). Counting a decision is an
//! index computed from the [`Outcome`] and one `fetch_add(1, Relaxed)`: no
//! allocation, no lock, no dependency. Relaxed is enough because each
//! counter is read on its own; a snapshot is not a single instant across
//! counters (a decision counted meanwhile may be in it or not).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::decision::{BodyProblem, Marker, Outcome, Reason, Rejected};
use crate::target::Source;

/// The four outcomes of the decision table, without their data: the
/// `outcome` label of the counters.
///
/// ```
/// use sticky_core::{Env, OutcomeKind, Sticky};
///
/// let sticky = Sticky::builder().build(Env::machine("148ed599c14189"))?;
/// let first = http::Request::get("/").body(()).unwrap();
/// assert_eq!(sticky.decide(&first).outcome().kind(), OutcomeKind::SetCookie);
/// assert_eq!(OutcomeKind::SetCookie.as_str(), "set_cookie");
/// # Ok::<(), sticky_core::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutcomeKind {
    /// [`Outcome::Stick`]: served here, nothing added.
    Stick,
    /// [`Outcome::SetCookie`]: served here and pinned here.
    SetCookie,
    /// [`Outcome::Replay`]: answered with `fly-replay`, not served.
    Replay,
    /// [`Outcome::Refuse`]: refused here (503 or 413), not served.
    Refuse,
}

impl OutcomeKind {
    /// Every outcome, in the order of the decision table's enum.
    pub const ALL: [OutcomeKind; 4] = [
        OutcomeKind::Stick,
        OutcomeKind::SetCookie,
        OutcomeKind::Replay,
        OutcomeKind::Refuse,
    ];

    /// The label value: `stick`, `set_cookie`, `replay` or `refuse`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Stick => "stick",
            OutcomeKind::SetCookie => "set_cookie",
            OutcomeKind::Replay => "replay",
            OutcomeKind::Refuse => "refuse",
        }
    }

    /// Whether the app's handler runs (`Stick`, `SetCookie`); a `Replay` or
    /// a `Refuse` is answered by the middleware alone.
    pub const fn runs_handler(self) -> bool {
        matches!(self, OutcomeKind::Stick | OutcomeKind::SetCookie)
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Outcome {
    /// Which of the four outcomes this is, without its data.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Stick(_) => OutcomeKind::Stick,
            Outcome::SetCookie(..) => OutcomeKind::SetCookie,
            Outcome::Replay(..) => OutcomeKind::Replay,
            Outcome::Refuse(..) => OutcomeKind::Refuse,
        }
    }
}

impl Reason {
    /// A stable snake_case name of the variant (without its source or
    /// detail), the `reason` label of the counters: `pinned_here`,
    /// `pinned_elsewhere`, `path_excluded`...
    ///
    /// ```
    /// use sticky_core::{Marker, Reason, Source};
    ///
    /// let reason = Reason::AlreadyReplayed(Source::Cookie, Marker::ReplaySrc);
    /// assert_eq!(reason.name(), "already_replayed");
    /// assert_eq!(reason.source(), Some(Source::Cookie));
    /// assert_eq!(reason.detail(), Some("fly-replay-src"));
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Disabled => "disabled",
            Reason::PathNotIncluded => "path_not_included",
            Reason::PathExcluded => "path_excluded",
            Reason::MethodSkipped => "method_skipped",
            Reason::Skipped => "skipped",
            Reason::Preflight => "preflight",
            Reason::NoTarget => "no_target",
            Reason::InvalidTarget(..) => "invalid_target",
            Reason::PinnedHere(_) => "pinned_here",
            Reason::Refreshed => "refreshed",
            Reason::AlreadyReplayed(..) => "already_replayed",
            Reason::BodyNotReplayable(..) => "body_not_replayable",
            Reason::PinnedElsewhere(_) => "pinned_elsewhere",
            Reason::Draining => "draining",
            Reason::DrainingServedHere => "draining_served_here",
        }
    }

    /// Where the target that led to this reason came from, if one did.
    pub const fn source(self) -> Option<Source> {
        match self {
            Reason::InvalidTarget(s, _)
            | Reason::PinnedHere(s)
            | Reason::AlreadyReplayed(s, _)
            | Reason::BodyNotReplayable(s, _)
            | Reason::PinnedElsewhere(s) => Some(s),
            _ => None,
        }
    }

    /// The reason's detail, the `detail` label: why a target was refused
    /// (`format`, `signature`, `expired`), which replay marker was present
    /// (its header name), or why a body cannot be replayed (`too_large`,
    /// `unknown_length`).
    pub const fn detail(self) -> Option<&'static str> {
        match self {
            Reason::InvalidTarget(_, r) => Some(match r {
                Rejected::Format => "format",
                Rejected::Signature => "signature",
                Rejected::Expired => "expired",
            }),
            Reason::AlreadyReplayed(_, m) => Some(m.header()),
            Reason::BodyNotReplayable(_, p) => Some(match p {
                BodyProblem::TooLarge => "too_large",
                BodyProblem::UnknownLength => "unknown_length",
            }),
            _ => None,
        }
    }
}

// The counter table: every reason has a slot, laid out as below. The match
// in `reason_index` is exhaustive, so a new `Reason` variant does not
// compile until it has a slot; `reason_at` is its inverse (tested).
const SOURCES: [Source; 4] = [Source::Cookie, Source::Query, Source::Header, Source::Key];
const REJECTED: [Rejected; 3] = [Rejected::Format, Rejected::Signature, Rejected::Expired];
const PROBLEMS: [BodyProblem; 2] = [BodyProblem::TooLarge, BodyProblem::UnknownLength];
const PINNED_HERE: usize = 10;
const PINNED_ELSEWHERE: usize = PINNED_HERE + SOURCES.len();
const INVALID: usize = PINNED_ELSEWHERE + SOURCES.len();
const REPLAYED: usize = INVALID + SOURCES.len() * REJECTED.len();
const BODY: usize = REPLAYED + SOURCES.len() * Marker::ALL.len();
/// How many distinct reasons there are (sources and details included).
const REASONS: usize = BODY + SOURCES.len() * PROBLEMS.len();
const CELLS: usize = OutcomeKind::ALL.len() * REASONS;

const fn source_index(s: Source) -> usize {
    match s {
        Source::Cookie => 0,
        Source::Query => 1,
        Source::Header => 2,
        Source::Key => 3,
    }
}

const fn reason_index(r: Reason) -> usize {
    match r {
        Reason::Disabled => 0,
        Reason::PathNotIncluded => 1,
        Reason::PathExcluded => 2,
        Reason::MethodSkipped => 3,
        Reason::Skipped => 4,
        Reason::Preflight => 5,
        Reason::NoTarget => 6,
        Reason::Refreshed => 7,
        Reason::Draining => 8,
        Reason::DrainingServedHere => 9,
        Reason::PinnedHere(s) => PINNED_HERE + source_index(s),
        Reason::PinnedElsewhere(s) => PINNED_ELSEWHERE + source_index(s),
        Reason::InvalidTarget(s, why) => {
            let why = match why {
                Rejected::Format => 0,
                Rejected::Signature => 1,
                Rejected::Expired => 2,
            };
            INVALID + source_index(s) * REJECTED.len() + why
        }
        Reason::AlreadyReplayed(s, m) => {
            let m = match m {
                Marker::ReplaySrc => 0,
                Marker::ReplayFailed => 1,
                Marker::PreferredUnavailable => 2,
                Marker::ReplayCache => 3,
            };
            REPLAYED + source_index(s) * Marker::ALL.len() + m
        }
        Reason::BodyNotReplayable(s, p) => {
            let p = match p {
                BodyProblem::TooLarge => 0,
                BodyProblem::UnknownLength => 1,
            };
            BODY + source_index(s) * PROBLEMS.len() + p
        }
    }
}

/// The reason in slot `i`, the inverse of `reason_index`.
fn reason_at(i: usize) -> Option<Reason> {
    let pair = |base: usize, width: usize| {
        let j = i - base;
        Some((*SOURCES.get(j / width)?, j % width))
    };
    Some(match i {
        0 => Reason::Disabled,
        1 => Reason::PathNotIncluded,
        2 => Reason::PathExcluded,
        3 => Reason::MethodSkipped,
        4 => Reason::Skipped,
        5 => Reason::Preflight,
        6 => Reason::NoTarget,
        7 => Reason::Refreshed,
        8 => Reason::Draining,
        9 => Reason::DrainingServedHere,
        _ if i < PINNED_ELSEWHERE => Reason::PinnedHere(pair(PINNED_HERE, 1)?.0),
        _ if i < INVALID => Reason::PinnedElsewhere(pair(PINNED_ELSEWHERE, 1)?.0),
        _ if i < REPLAYED => {
            let (s, k) = pair(INVALID, REJECTED.len())?;
            Reason::InvalidTarget(s, *REJECTED.get(k)?)
        }
        _ if i < BODY => {
            let (s, k) = pair(REPLAYED, Marker::ALL.len())?;
            Reason::AlreadyReplayed(s, *Marker::ALL.get(k)?)
        }
        _ if i < REASONS => {
            let (s, k) = pair(BODY, PROBLEMS.len())?;
            Reason::BodyNotReplayable(s, *PROBLEMS.get(k)?)
        }
        _ => return None,
    })
}

/// The engine's counters, one per (outcome, reason).
pub(crate) struct Counters {
    cells: Box<[AtomicU64; CELLS]>,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            cells: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    /// Counts one decision: the hot path's whole cost.
    #[inline]
    pub(crate) fn count(&self, outcome: &Outcome) {
        // One match for the outcome's row and its reason (not `kind()` and
        // then `reason()`, two): this is the Stick path's whole extra cost.
        let (row, reason) = match outcome {
            Outcome::Stick(r) => (0, r),
            Outcome::SetCookie(_, r) => (REASONS, r),
            Outcome::Replay(_, r) => (2 * REASONS, r),
            Outcome::Refuse(_, r) => (3 * REASONS, r),
        };
        let cell = row + reason_index(*reason);
        if let Some(c) = self.cells.get(cell) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn read(&self) -> Box<[u64]> {
        self.cells
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

impl crate::engine::Sticky {
    /// The decision counters now: how many decisions this engine (and every
    /// clone of it) took, by [`OutcomeKind`] and [`Reason`], since it was
    /// built. Counting is on unless [`Builder::count_decisions`] turned it
    /// off, and costs one relaxed atomic add per decision, with no
    /// allocation. [`Sticky::skipped`](crate::Sticky::skipped) counts too.
    ///
    /// Render it for Prometheus with
    /// [`MetricsSnapshot::write_prometheus`] (or `to_string()`), served
    /// as [`MetricsSnapshot::CONTENT_TYPE`] on a path you exclude from
    /// stickiness (a scrape must never be replayed).
    ///
    /// ```
    /// use sticky_core::{Env, OutcomeKind, Reason, Source, Sticky};
    ///
    /// let sticky = Sticky::builder().exclude(["/metrics"]).build(Env::machine("148ed599c14189"))?;
    /// let pinned_elsewhere = http::Request::get("/").header("cookie", "fly-machine-id=90801679a10038").body(()).unwrap();
    /// let _ = sticky.decide(&pinned_elsewhere);
    /// let _ = sticky.clone().decide(&pinned_elsewhere); // clones share the counters
    ///
    /// let snapshot = sticky.metrics();
    /// assert_eq!(snapshot.get(OutcomeKind::Replay, Reason::PinnedElsewhere(Source::Cookie)), 2);
    /// assert_eq!(snapshot.total(), 2);
    /// assert!(snapshot.to_string().contains(
    ///     r#"sticky_decisions_total{outcome="replay",reason="pinned_elsewhere",source="cookie"} 2"#
    /// ));
    /// # Ok::<(), sticky_core::ConfigError>(())
    /// ```
    ///
    /// [`Builder::count_decisions`]: crate::Builder::count_decisions
    pub fn metrics(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            counts: self.inner.counters.as_ref().map(Counters::read),
            draining: self.is_draining(),
        }
    }
}

/// The decision counters at one moment ([`Sticky::metrics`](crate::Sticky::metrics)).
///
/// Iterate it as `(outcome, reason, count)`, or render it in the
/// Prometheus text exposition format (version 0.0.4) with
/// [`write_prometheus`](Self::write_prometheus) or `Display`:
///
/// ```text
/// # HELP sticky_decisions_total Requests decided by the sticky-session engine, by outcome and reason.
/// # TYPE sticky_decisions_total counter
/// sticky_decisions_total{outcome="stick",reason="pinned_here",source="cookie"} 1022
/// sticky_decisions_total{outcome="set_cookie",reason="no_target"} 17
/// sticky_decisions_total{outcome="replay",reason="pinned_elsewhere",source="cookie"} 41
/// # HELP sticky_draining Whether this Machine is draining (1) or not (0).
/// # TYPE sticky_draining gauge
/// sticky_draining 0
/// ```
///
/// Labels: `outcome` ([`OutcomeKind::as_str`]), `reason`
/// ([`Reason::name`]), and, where the reason has them, `source`
/// ([`Source::as_str`]) and `detail` ([`Reason::detail`]); a label a
/// reason does not have is left out, which Prometheus reads as empty.
/// A series appears once its first decision is counted (as a labelled
/// counter does in Prometheus' client libraries). Every label has a bounded
/// set of values (at most 4 outcomes times 54 reasons); the replay target
/// (a Machine ID) is deliberately not a label, since it would add a series
/// per Machine ever named, and Fly's scraper already labels every series
/// with the Machine that served it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// `None` when counting is off.
    counts: Option<Box<[u64]>>,
    draining: bool,
}

impl MetricsSnapshot {
    /// The `Content-Type` of the rendered text: Prometheus' text format.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// Whether the engine counts decisions (see
    /// [`Builder::count_decisions`](crate::Builder::count_decisions)).
    pub fn is_counting(&self) -> bool {
        self.counts.is_some()
    }

    /// Whether the Machine was draining.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// How many decisions had this outcome and reason.
    pub fn get(&self, outcome: OutcomeKind, reason: Reason) -> u64 {
        self.cell(outcome.index() * REASONS + reason_index(reason))
    }

    /// Every (outcome, reason, count) with a count above zero, by outcome
    /// and then reason.
    pub fn iter(&self) -> impl Iterator<Item = (OutcomeKind, Reason, u64)> + '_ {
        OutcomeKind::ALL.into_iter().flat_map(move |outcome| {
            (0..REASONS).filter_map(move |i| {
                let n = self.cell(outcome.index() * REASONS + i);
                Some((outcome, reason_at(i)?, n)).filter(|_| n > 0)
            })
        })
    }

    /// Every decision counted.
    pub fn total(&self) -> u64 {
        self.counts.as_deref().map_or(0, |c| c.iter().sum())
    }

    /// The decisions with this outcome, whatever the reason.
    pub fn total_of(&self, outcome: OutcomeKind) -> u64 {
        self.iter()
            .filter(|(o, ..)| *o == outcome)
            .map(|(.., n)| n)
            .sum()
    }

    /// Writes the snapshot in the Prometheus text exposition format
    /// (version 0.0.4): the counter `sticky_decisions_total` and the gauge
    /// `sticky_draining`, each with its `# HELP` and `# TYPE` lines.
    ///
    /// ```
    /// use sticky_core::{Env, Sticky};
    ///
    /// let sticky = Sticky::builder().build(Env::default())?; // not on Fly
    /// let _ = sticky.decide(&http::Request::get("/").body(()).unwrap());
    /// let mut text = String::new();
    /// sticky.metrics().write_prometheus(&mut text)?;
    /// assert!(text.contains("# TYPE sticky_decisions_total counter\n"));
    /// assert!(text.contains("sticky_decisions_total{outcome=\"stick\",reason=\"disabled\"} 1\n"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_prometheus(&self, out: &mut impl fmt::Write) -> fmt::Result {
        out.write_str(
            "# HELP sticky_decisions_total Requests decided by the sticky-session engine, by outcome and reason.\n\
             # TYPE sticky_decisions_total counter\n",
        )?;
        // Label values are fixed ASCII names: nothing to escape.
        for (outcome, reason, n) in self.iter() {
            write!(
                out,
                "sticky_decisions_total{{outcome=\"{outcome}\",reason=\"{}\"",
                reason.name()
            )?;
            if let Some(source) = reason.source() {
                write!(out, ",source=\"{source}\"")?;
            }
            if let Some(detail) = reason.detail() {
                write!(out, ",detail=\"{detail}\"")?;
            }
            writeln!(out, "}} {n}")?;
        }
        writeln!(
            out,
            "# HELP sticky_draining Whether this Machine is draining (1) or not (0).\n\
             # TYPE sticky_draining gauge\n\
             sticky_draining {}",
            u8::from(self.draining)
        )
    }

    fn cell(&self, i: usize) -> u64 {
        self.counts
            .as_deref()
            .and_then(|c| c.get(i))
            .copied()
            .unwrap_or(0)
    }
}

impl fmt::Display for MetricsSnapshot {
    /// The Prometheus text of [`write_prometheus`](Self::write_prometheus).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_prometheus(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{CacheHeader, SetCookie, ShortCircuit, Text};

    fn outcome(kind: OutcomeKind, reason: Reason) -> Outcome {
        let reply = || ShortCircuit {
            status: 307,
            fly_replay: None,
            body_to_read: 0,
            cache: CacheHeader::None,
        };
        match kind {
            OutcomeKind::Stick => Outcome::Stick(reason),
            OutcomeKind::SetCookie => Outcome::SetCookie(
                SetCookie {
                    value: Text::Owned("c=v".into()),
                    cache_private: true,
                },
                reason,
            ),
            OutcomeKind::Replay => Outcome::Replay(reply(), reason),
            OutcomeKind::Refuse => Outcome::Refuse(reply(), reason),
        }
    }

    /// Every (outcome, reason) pair, possible in the engine or not, has its
    /// own counter and its own rendered series.
    #[test]
    fn every_outcome_and_reason_is_counted_and_rendered_apart() {
        let counters = Counters::new();
        let all: Vec<(OutcomeKind, Reason)> = OutcomeKind::ALL
            .into_iter()
            .flat_map(|o| (0..REASONS).filter_map(move |i| Some((o, reason_at(i)?))))
            .collect();
        assert_eq!(all.len(), CELLS);
        // A distinct count per pair: 1, 2, 3...
        for (n, (kind, reason)) in all.iter().enumerate() {
            for _ in 0..=n {
                counters.count(&outcome(*kind, *reason));
            }
        }
        let snapshot = MetricsSnapshot {
            counts: Some(counters.read()),
            draining: false,
        };
        let text = snapshot.to_string();
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            series.len(),
            CELLS + 1,
            "one series per pair, and the gauge"
        );
        for (n, (kind, reason)) in all.iter().enumerate() {
            let want = n as u64 + 1;
            assert_eq!(snapshot.get(*kind, *reason), want, "{kind:?} {reason:?}");
            let line = series
                .iter()
                .find(|l| l.ends_with(&format!(" {want}")))
                .expect("rendered");
            assert!(line.contains(&format!("outcome=\"{kind}\",reason=\"{}\"", reason.name())));
            let source = reason.source().map(|s| format!(",source=\"{s}\""));
            assert_eq!(
                source.as_deref().is_some_and(|s| line.contains(s)),
                source.is_some(),
                "{line}"
            );
            let detail = reason.detail().map(|d| format!(",detail=\"{d}\""));
            assert_eq!(
                detail.as_deref().is_some_and(|d| line.contains(d)),
                detail.is_some(),
                "{line}"
            );
        }
        let mut labels: Vec<&str> = series
            .iter()
            .filter_map(|l| l.split_once(' '))
            .map(|(l, _)| l)
            .collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), CELLS + 1, "no two pairs share a series");
        assert_eq!(snapshot.total(), (1..=CELLS as u64).sum::<u64>());
    }

    #[test]
    fn an_empty_snapshot_still_declares_its_metrics() {
        let off = MetricsSnapshot {
            counts: None,
            draining: true,
        };
        assert_eq!(
            off.to_string(),
            "# HELP sticky_decisions_total Requests decided by the sticky-session engine, by outcome and reason.\n\
             # TYPE sticky_decisions_total counter\n\
             # HELP sticky_draining Whether this Machine is draining (1) or not (0).\n\
             # TYPE sticky_draining gauge\n\
             sticky_draining 1\n"
        );
        assert_eq!(off.iter().count(), 0);
        assert!(!off.is_counting());
    }

    #[test]
    fn every_slot_is_one_reason_and_back() {
        for i in 0..REASONS {
            let reason = reason_at(i).expect("every slot names a reason");
            assert_eq!(reason_index(reason), i, "{reason:?}");
        }
        assert_eq!(reason_at(REASONS), None);
        assert_eq!(REASONS, 54);
    }
}
