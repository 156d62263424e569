//! The figures, computed from what the clients recorded and when the faults
//! happened. Pure functions of their inputs (unit-tested below).

use std::collections::BTreeMap;
use std::time::Duration;

/// What a request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    /// `GET /`.
    Page,
    /// `POST /upload`, `Content-Length`, at most 64 KiB.
    Upload,
    /// `POST /upload`, `Content-Length` over 1 MB: Fly cannot replay it.
    LargeUpload,
    /// `POST /upload`, `Transfer-Encoding: chunked` (some over 1 MB): unknown
    /// length, so the middleware treats it as not replayable.
    ChunkedUpload,
    /// A WebSocket session on `/ws`: handshake and a few echoes.
    WebSocket,
}

impl Kind {
    /// Every kind, in report order.
    pub(crate) const ALL: [Kind; 5] = [
        Kind::Page,
        Kind::Upload,
        Kind::LargeUpload,
        Kind::ChunkedUpload,
        Kind::WebSocket,
    ];

    /// Its name in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Page => "page load",
            Kind::Upload => "small upload",
            Kind::LargeUpload => "upload > 1 MB",
            Kind::ChunkedUpload => "chunked upload",
            Kind::WebSocket => "WebSocket session",
        }
    }

    /// Whether the body stops Fly's proxy (or the middleware) from replaying it.
    pub(crate) fn unreplayable(self) -> bool {
        matches!(self, Kind::LargeUpload | Kind::ChunkedUpload)
    }
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The right answer, from this Machine; `pinned_to` is the Machine a
    /// `Set-Cookie` in the answer named, if any.
    Ok {
        served_by: String,
        pinned_to: Option<String>,
    },
    /// A 5xx status (from the proxy or a Machine).
    ServerError { status: u16, detail: String },
    /// No complete answer: connection refused or reset, timeout, bad response.
    ConnectionFailure { detail: String },
    /// An answer, but a wrong one (a 4xx, a wrong byte count or echo...).
    Wrong { detail: String },
}

impl Outcome {
    fn served_by(&self) -> Option<&str> {
        match self {
            Outcome::Ok { served_by, .. } => Some(served_by),
            _ => None,
        }
    }

    /// The Machine this answer pinned the client to by serving it: a
    /// `Set-Cookie` naming the Machine that served it.
    fn repinned_to(&self) -> Option<&str> {
        match self {
            Outcome::Ok {
                served_by,
                pinned_to: Some(pin),
            } if pin == served_by => Some(served_by),
            _ => None,
        }
    }
}

/// One request as a client saw it.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    /// The cookie jar (a visitor) that sent it.
    pub(crate) visitor: u64,
    /// What it was.
    pub(crate) kind: Kind,
    /// Sent with `fly-prefer-instance-id` naming the client's Machine.
    pub(crate) routed: bool,
    /// When it was sent and when its answer was complete (since the start).
    pub(crate) start: Duration,
    pub(crate) end: Duration,
    /// The Machine the jar's cookie named when it was sent.
    pub(crate) pin_before: Option<String>,
    pub(crate) outcome: Outcome,
}

/// The faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// The Machine is destroyed.
    Destroy,
    /// The Machine is stopped, then started.
    StopStart,
    /// The Machine gets SIGTERM (drains), exits, and is started again.
    Drain,
    /// The Machine leaves the proxy's rotation and comes back with its ID
    /// (a deploy updating it, autostop, a failed health check).
    Out,
    /// Its connections are reset.
    Reset,
    /// Its answers are delayed.
    Delay,
    /// Requests to it are accepted and never answered.
    Blackhole,
}

impl FaultKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            FaultKind::Destroy => "destroy",
            FaultKind::StopStart => "stop, then start",
            FaultKind::Drain => "drain (SIGTERM), exit, start",
            FaultKind::Out => "out of the rotation, then back",
            FaultKind::Reset => "network fault: reset",
            FaultKind::Delay => "network fault: delay",
            FaultKind::Blackhole => "network fault: blackhole",
        }
    }

    /// Whether the Machine's clients must move (or wait for it) while it
    /// lasts: they are counted as stranded until served.
    fn strands(self) -> bool {
        matches!(
            self,
            FaultKind::Out | FaultKind::Reset | FaultKind::Blackhole
        )
    }
}

/// One fault and its window.
#[derive(Clone, Debug)]
pub(crate) struct Fault {
    pub(crate) kind: FaultKind,
    pub(crate) machine: String,
    /// The fault began (the window opens).
    pub(crate) start: Duration,
    /// It took effect as seen from outside: the proxy's table says destroyed
    /// or stopped, or the Machine answers with drain replays.
    pub(crate) effective: Duration,
    /// The cluster is settled again (the window closes).
    pub(crate) settled: Duration,
    /// What happened in between, for the timeline.
    pub(crate) steps: Vec<(Duration, String)>,
}

impl Fault {
    fn overlaps(&self, r: &Record) -> bool {
        r.start < self.settled && r.end > self.start
    }
}

/// How many requests one visitor needed to get home (`None`: never, within
/// what it sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Moved {
    pub(crate) visitor: u64,
    pub(crate) requests: Option<usize>,
    /// Unreplayable uploads without a routing header it sent meanwhile (not
    /// counted in `requests`: row 6 serves them where they land).
    pub(crate) unrouted: usize,
}

/// The figures of one run (or several, merged).
#[derive(Clone, Debug, Default)]
pub(crate) struct Figures {
    pub(crate) requests: usize,
    pub(crate) by_kind: BTreeMap<Kind, usize>,
    /// 5xx answers.
    pub(crate) server_errors: usize,
    /// No complete answer.
    pub(crate) connection_failures: usize,
    /// A wrong answer that was not a 5xx.
    pub(crate) wrong: usize,
    /// Requests overlapping a fault window.
    pub(crate) in_windows: usize,
    /// Requests counted for affinity, and those served by the pinned Machine.
    pub(crate) affinity_total: usize,
    pub(crate) affinity_home: usize,
    /// Unreplayable uploads sent without a routing header (row 6: served
    /// where they land, by design), and those that happened to land home.
    pub(crate) unrouted: usize,
    pub(crate) unrouted_home: usize,
    /// Visitors pinned to a destroyed Machine: requests until re-pinned.
    pub(crate) stranded: Vec<Moved>,
    /// Visitors pinned to the draining Machine: requests until moved off it
    /// before it exited.
    pub(crate) drained: Vec<Moved>,
    /// Requests of the stopped Machine's visitors during its window (row-6
    /// uploads left out): served by it, and in all.
    pub(crate) stop_kept: usize,
    pub(crate) stop_total: usize,
    /// A few examples of what went wrong, for the report.
    pub(crate) samples: Vec<String>,
    /// Requests the fault itself made unanswerable (not lost): a request
    /// delivered to a blackholed Machine (answered 502 at the proxy's
    /// response timeout), a WebSocket session cut by a reset.
    pub(crate) unanswerable: usize,
    /// WebSocket sessions of clients whose Machine was out (destroyed, out
    /// of the rotation, faulty) when they opened it, and those that ran on a
    /// live Machine.
    pub(crate) ws_moved: usize,
    pub(crate) ws_moved_ok: usize,
    /// Whether the faults must strand some clients (a scenario that
    /// destroys or updates Machines); without, none stranded is fine.
    pub(crate) stranding_expected: bool,
}

/// How many examples of failures are kept.
const SAMPLES: usize = 8;

impl Figures {
    /// Requests without the right answer: 5xx, connection failures, wrong answers.
    pub(crate) fn lost(&self) -> usize {
        self.server_errors + self.connection_failures + self.wrong
    }

    /// Client-visible errors: 5xx and connection failures.
    pub(crate) fn errors(&self) -> usize {
        self.server_errors + self.connection_failures
    }

    /// Affinity outside fault windows, as a fraction (`None` if nothing counted).
    pub(crate) fn affinity(&self) -> Option<f64> {
        (self.affinity_total > 0).then(|| self.affinity_home as f64 / self.affinity_total as f64)
    }

    /// Stranded visitors re-pinned on their very next request.
    pub(crate) fn repinned_first(&self) -> usize {
        self.stranded
            .iter()
            .filter(|m| m.requests == Some(1))
            .count()
    }

    /// The most requests a stranded visitor needed (`None` if one never got home).
    pub(crate) fn max_to_repin(&self) -> Option<usize> {
        self.stranded
            .iter()
            .try_fold(0, |max, m| m.requests.map(|n| max.max(n)))
    }

    /// The targets, each with whether it is met.
    pub(crate) fn targets(&self) -> [(&'static str, bool); 4] {
        [
            (
                "affinity 100% outside fault windows",
                self.affinity_total > 0 && self.affinity_home == self.affinity_total,
            ),
            ("0 requests lost", self.lost() == 0),
            (
                "every stranded client re-pinned on its next request",
                (!self.stranded.is_empty() || !self.stranding_expected)
                    && self.repinned_first() == self.stranded.len(),
            ),
            (
                "WebSocket clients reconnect to a live Machine",
                self.ws_moved_ok == self.ws_moved,
            ),
        ]
    }

    /// Whether every target is met.
    pub(crate) fn met(&self) -> bool {
        self.targets().iter().all(|(_, ok)| *ok)
    }

    /// Adds another run's figures to these.
    pub(crate) fn merge(&mut self, other: &Figures) {
        self.requests += other.requests;
        for (kind, n) in &other.by_kind {
            *self.by_kind.entry(*kind).or_default() += n;
        }
        self.server_errors += other.server_errors;
        self.connection_failures += other.connection_failures;
        self.wrong += other.wrong;
        self.in_windows += other.in_windows;
        self.affinity_total += other.affinity_total;
        self.affinity_home += other.affinity_home;
        self.unrouted += other.unrouted;
        self.unrouted_home += other.unrouted_home;
        self.stranded.extend_from_slice(&other.stranded);
        self.drained.extend_from_slice(&other.drained);
        self.stop_kept += other.stop_kept;
        self.stop_total += other.stop_total;
        self.unanswerable += other.unanswerable;
        self.ws_moved += other.ws_moved;
        self.ws_moved_ok += other.ws_moved_ok;
        self.stranding_expected |= other.stranding_expected;
        for s in &other.samples {
            if self.samples.len() < SAMPLES {
                self.samples.push(s.clone());
            }
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// Why the fault itself made `r` unanswerable, if it did: it was
/// delivered to a blackholed Machine (the proxy answers 502 at its response
/// timeout), or it is a WebSocket session open when a reset cut it.
pub(crate) fn unanswerable(r: &Record, faults: &[Fault]) -> Option<&'static str> {
    let failed = !matches!(r.outcome, Outcome::Ok { .. });
    if !failed {
        return None;
    }
    let timed_out = matches!(&r.outcome, Outcome::ServerError { status: 502, detail }
        if detail.contains("did not answer"));
    for x in faults {
        match x.kind {
            // Sent before the fault began but delivered after it: swallowed too.
            FaultKind::Blackhole if timed_out && r.end >= x.start && r.start < x.settled => {
                return Some(
                    "delivered to a blackholed Machine: 502 at the proxy's response timeout",
                );
            }
            FaultKind::Reset
                if r.kind == Kind::WebSocket && r.start < x.start && r.end >= x.start =>
            {
                return Some("a WebSocket session cut by a reset");
            }
            _ => {}
        }
    }
    None
}

/// Computes the figures of one run; `stranding_expected` when its faults
/// must strand clients.
pub(crate) fn compute_for(
    records: &[Record],
    faults: &[Fault],
    stranding_expected: bool,
) -> Figures {
    let mut f = compute(records, faults);
    f.stranding_expected = stranding_expected;
    f
}

/// The 99th percentile of the latency (send to complete answer) of the
/// requests sent in `from..to`, if any.
pub(crate) fn p99(records: &[Record], from: Duration, to: Duration) -> Option<Duration> {
    let mut took: Vec<Duration> = records
        .iter()
        .filter(|r| r.start >= from && r.start < to)
        .map(|r| r.end.saturating_sub(r.start))
        .collect();
    if took.is_empty() {
        return None;
    }
    took.sort();
    let i = (took.len() * 99).div_ceil(100).saturating_sub(1);
    Some(took[i.min(took.len() - 1)])
}

/// Computes the figures of one run.
pub(crate) fn compute(records: &[Record], faults: &[Fault]) -> Figures {
    let mut f = Figures {
        requests: records.len(),
        stranding_expected: faults.iter().any(|x| x.kind == FaultKind::Destroy),
        ..Figures::default()
    };
    let sample = |f: &mut Figures, text: String| {
        if f.samples.len() < SAMPLES {
            f.samples.push(text);
        }
    };
    let destroyed: Vec<&Fault> = faults
        .iter()
        .filter(|x| x.kind == FaultKind::Destroy)
        .collect();
    for r in records {
        *f.by_kind.entry(r.kind).or_default() += 1;
        if let Some(why) = unanswerable(r, faults) {
            f.unanswerable += 1;
            let _ = why;
            continue;
        }
        if r.kind == Kind::WebSocket
            && let Some(pin) = r.pin_before.as_deref()
            && faults.iter().any(|x| {
                x.machine == pin
                    && x.effective <= r.start
                    && (x.kind == FaultKind::Destroy || (x.kind.strands() && r.start < x.settled))
            })
        {
            f.ws_moved += 1;
            f.ws_moved_ok += usize::from(matches!(r.outcome, Outcome::Ok { .. }));
        }
        match &r.outcome {
            Outcome::Ok { .. } => {}
            Outcome::ServerError { status, detail } => {
                f.server_errors += 1;
                sample(
                    &mut f,
                    format!("{} at {}: {status} {detail}", r.kind.name(), secs(r.start)),
                );
            }
            Outcome::ConnectionFailure { detail } => {
                f.connection_failures += 1;
                sample(
                    &mut f,
                    format!("{} at {}: {detail}", r.kind.name(), secs(r.start)),
                );
            }
            Outcome::Wrong { detail } => {
                f.wrong += 1;
                sample(
                    &mut f,
                    format!(
                        "{} at {}: wrong answer {detail}",
                        r.kind.name(),
                        secs(r.start)
                    ),
                );
            }
        }
        let in_window = faults.iter().any(|x| x.overlaps(r));
        f.in_windows += usize::from(in_window);
        let (Some(pin), Some(served)) = (r.pin_before.as_deref(), r.outcome.served_by()) else {
            // A first visit (nothing to be faithful to), or lost (counted above).
            continue;
        };
        if r.kind.unreplayable() && !r.routed {
            // Row 6: nobody can move it, it is served where it lands.
            f.unrouted += 1;
            f.unrouted_home += usize::from(served == pin);
            continue;
        }
        let stranded = destroyed
            .iter()
            .any(|x| x.machine == pin && x.effective <= r.start);
        if in_window || stranded {
            continue;
        }
        f.affinity_total += 1;
        if served == pin {
            f.affinity_home += 1;
        } else {
            sample(
                &mut f,
                format!(
                    "{} at {}: pinned to {pin}, served by {served}",
                    r.kind.name(),
                    secs(r.start)
                ),
            );
        }
    }

    let mut visitors: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    for r in records {
        visitors.entry(r.visitor).or_default().push(r);
    }
    for list in visitors.values_mut() {
        list.sort_by_key(|r| r.start);
    }
    // A Machine can be out for two reasons at once (a network fault and the
    // failing health check it causes): each stranded client counts once.
    let mut counted: std::collections::BTreeSet<(u64, &str, Duration)> =
        std::collections::BTreeSet::new();
    for fault in faults {
        match fault.kind {
            FaultKind::Destroy => {
                for list in visitors.values() {
                    // An answer from the destroyed Machine itself means it
                    // was still there (the window opens at the last poll
                    // that saw it in the rotation): not yet stranded.
                    let Some(moved) = requests_until_skipping(
                        list,
                        fault,
                        None,
                        |r| r.outcome.repinned_to().is_some_and(|m| m != fault.machine),
                        |r| r.outcome.served_by() == Some(fault.machine.as_str()),
                    ) else {
                        continue;
                    };
                    if moved.requests != Some(1) {
                        let trail: Vec<String> = list
                            .iter()
                            .filter(|r| r.start >= fault.effective)
                            .take(moved.requests.unwrap_or(3) + moved.unrouted)
                            .map(|r| describe(r))
                            .collect();
                        let needed = moved.requests.map_or_else(
                            || "more requests than it sent".to_owned(),
                            |n| format!("{n} requests"),
                        );
                        sample(
                            &mut f,
                            format!("stranded client needed {needed}: {}", trail.join(", then ")),
                        );
                    }
                    f.stranded.push(moved);
                }
            }
            FaultKind::Out | FaultKind::Reset | FaultKind::Blackhole => {
                for list in visitors.values() {
                    let Some(first) = list.iter().position(|r| r.start >= fault.effective) else {
                        continue;
                    };
                    let r0 = list[first];
                    if r0.start >= fault.settled
                        || r0.pin_before.as_deref() != Some(fault.machine.as_str())
                        || !counted.insert((r0.visitor, fault.machine.as_str(), r0.start))
                    {
                        continue;
                    }
                    let home = |r: &Record| {
                        unanswerable(r, faults).is_none()
                            && (r.outcome.served_by() == Some(fault.machine.as_str())
                                || r.outcome.repinned_to().is_some_and(|m| m != fault.machine))
                    };
                    let skip = |r: &Record| unanswerable(r, faults).is_some();
                    let Some(moved) = requests_until_skipping(list, fault, None, home, skip) else {
                        continue;
                    };
                    if moved.requests != Some(1) {
                        let trail: Vec<String> = list
                            .iter()
                            .filter(|r| r.start >= fault.effective)
                            .take(moved.requests.unwrap_or(3) + moved.unrouted)
                            .map(|r| describe(r))
                            .collect();
                        sample(
                            &mut f,
                            format!(
                                "client of {} ({}) needed {:?} requests: {}",
                                &fault.machine[..6.min(fault.machine.len())],
                                fault.kind.name(),
                                moved.requests,
                                trail.join(", then ")
                            ),
                        );
                    }
                    f.stranded.push(moved);
                }
            }
            FaultKind::Delay => {}
            FaultKind::Drain => {
                for list in visitors.values() {
                    if let Some(moved) = requests_until(list, fault, Some(fault.settled), |r| {
                        r.outcome.repinned_to().is_some_and(|m| m != fault.machine)
                    }) {
                        f.drained.push(moved);
                    }
                }
            }
            FaultKind::StopStart => {
                for r in records {
                    let unrouted = r.kind.unreplayable() && !r.routed;
                    if r.pin_before.as_deref() == Some(&fault.machine)
                        && fault.overlaps(r)
                        && !unrouted
                    {
                        f.stop_total += 1;
                        f.stop_kept +=
                            usize::from(r.outcome.served_by() == Some(fault.machine.as_str()));
                    }
                }
            }
        }
    }
    f
}

/// One request in a few words, for the samples.
fn describe(r: &Record) -> String {
    let short = |id: &str| id.get(..6).unwrap_or(id).to_owned();
    let pin = r
        .pin_before
        .as_deref()
        .map_or_else(|| "-".to_owned(), short);
    let what = match &r.outcome {
        Outcome::Ok {
            served_by,
            pinned_to,
        } => format!(
            "served by {}{}",
            short(served_by),
            pinned_to
                .as_deref()
                .map_or_else(String::new, |p| format!(", re-pinned to {}", short(p)))
        ),
        Outcome::ServerError { status, .. } => format!("{status}"),
        Outcome::ConnectionFailure { .. } => "connection failure".to_owned(),
        Outcome::Wrong { .. } => "wrong answer".to_owned(),
    };
    format!(
        "{}{} at {} pinned to {pin}: {what}",
        r.kind.name(),
        if r.routed { " (routed)" } else { "" },
        secs(r.start)
    )
}

/// For a visitor whose cookie names the fault's Machine on its first request
/// sent once the fault took effect: how many requests (that one included,
/// unreplayable uploads sent without a routing header not counted) until
/// `home` holds (`Some(None)`: never, among those sent before `until`).
/// `None` if the visitor was not affected.
fn requests_until(
    list: &[&Record],
    fault: &Fault,
    until: Option<Duration>,
    home: impl Fn(&Record) -> bool,
) -> Option<Moved> {
    requests_until_skipping(list, fault, until, home, |_| false)
}

/// [`requests_until`], not counting the requests `skip` says (ones the
/// fault itself made unanswerable).
fn requests_until_skipping(
    list: &[&Record],
    fault: &Fault,
    until: Option<Duration>,
    home: impl Fn(&Record) -> bool,
    skip: impl Fn(&Record) -> bool,
) -> Option<Moved> {
    let first = list.iter().position(|r| r.start >= fault.effective)?;
    if list[first].pin_before.as_deref() != Some(fault.machine.as_str()) {
        return None;
    }
    let mut moved = Moved {
        visitor: list[first].visitor,
        requests: None,
        unrouted: 0,
    };
    let mut n = 0;
    for r in &list[first..] {
        if until.is_some_and(|t| r.start >= t) {
            break;
        }
        if skip(r) {
            continue;
        }
        let at_home = home(r);
        if !at_home && r.kind.unreplayable() && !r.routed {
            // Row 6: served where it lands without re-pinning (the Machine
            // it lands on cannot know the pinned one is gone): not a chance
            // to get home, so not counted (affinity leaves it out too).
            moved.unrouted += 1;
            continue;
        }
        n += 1;
        if at_home {
            moved.requests = Some(n);
            break;
        }
    }
    // A visitor that sent nothing more that could take it home (it left,
    // or only sent uploads nobody can route, or requests the fault
    // swallowed) had no next request: it is not counted.
    (n > 0).then_some(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccc";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ok(visitor: u64, at: u64, pin: Option<&str>, served: &str, set: Option<&str>) -> Record {
        Record {
            visitor,
            kind: Kind::Page,
            routed: false,
            start: ms(at),
            end: ms(at + 1),
            pin_before: pin.map(str::to_owned),
            outcome: Outcome::Ok {
                served_by: served.to_owned(),
                pinned_to: set.map(str::to_owned),
            },
        }
    }

    fn fault(kind: FaultKind, machine: &str, start: u64, effective: u64, settled: u64) -> Fault {
        Fault {
            kind,
            machine: machine.to_owned(),
            start: ms(start),
            effective: ms(effective),
            settled: ms(settled),
            steps: Vec::new(),
        }
    }

    #[test]
    fn affinity_counts_pinned_requests_outside_windows_only() {
        let records = vec![
            ok(1, 0, None, A, Some(A)),      // first visit: not counted
            ok(1, 10, Some(A), A, None),     // home
            ok(1, 20, Some(A), B, None),     // a miss
            ok(1, 100, Some(A), B, None),    // in the window: not counted
            ok(2, 300, Some(B), B, None),    // home
            ok(2, 100, Some(B), C, Some(C)), // overlaps the window's start
            ok(2, 199, Some(C), C, None),    // overlaps its end
            ok(2, 200, Some(C), C, None),    // after it
        ];
        let faults = [fault(FaultKind::StopStart, C, 100, 105, 200)];
        let f = compute(&records, &faults);
        assert_eq!((f.affinity_home, f.affinity_total), (3, 4));
        assert_eq!(f.in_windows, 3);
        assert_eq!(f.lost(), 0);
        assert_eq!(f.affinity(), Some(0.75));
        assert!(!f.targets()[0].1);
        assert!(f.samples[0].contains("served by bbbbbbbbbbbbbb"));
    }

    #[test]
    fn errors_and_wrong_answers_are_lost() {
        let mut records = vec![ok(1, 0, None, A, Some(A))];
        let mut bad = records[0].clone();
        bad.outcome = Outcome::ServerError {
            status: 502,
            detail: "PR04".into(),
        };
        records.push(bad.clone());
        bad.outcome = Outcome::ConnectionFailure {
            detail: "reset".into(),
        };
        records.push(bad.clone());
        bad.outcome = Outcome::Wrong {
            detail: "bytes=1".into(),
        };
        records.push(bad);
        let f = compute(&records, &[]);
        assert_eq!(f.errors(), 2);
        assert_eq!(f.lost(), 3);
        assert_eq!(f.requests, 4);
        assert_eq!(f.by_kind[&Kind::Page], 4);
        assert!(!f.targets()[1].1);
        assert_eq!(f.samples.len(), 3);
    }

    #[test]
    fn unrouted_unreplayable_uploads_are_reported_apart() {
        let mut big = ok(1, 10, Some(A), B, None);
        big.kind = Kind::LargeUpload;
        let mut routed = ok(1, 20, Some(A), A, None);
        routed.kind = Kind::ChunkedUpload;
        routed.routed = true;
        let f = compute(&[big, routed], &[]);
        assert_eq!((f.unrouted, f.unrouted_home), (1, 0));
        assert_eq!((f.affinity_home, f.affinity_total), (1, 1));
    }

    #[test]
    fn stranded_visitors_count_requests_until_repinned() {
        let records = vec![
            // Visitor 1: re-pinned on its first request after the destroy
            // took effect (the one in flight before does not count).
            ok(1, 0, None, A, Some(A)),
            ok(1, 95, Some(A), A, None),
            ok(1, 120, Some(A), B, Some(B)),
            ok(1, 500, Some(B), B, None),
            // Visitor 2: needed two requests (the first failed).
            ok(2, 0, None, A, Some(A)),
            Record {
                outcome: Outcome::ServerError {
                    status: 502,
                    detail: String::new(),
                },
                ..ok(2, 130, Some(A), B, None)
            },
            ok(2, 140, Some(A), C, Some(C)),
            // Visitor 3: served elsewhere but not re-pinned, never home.
            ok(3, 0, None, A, Some(A)),
            ok(3, 150, Some(A), B, None),
            // Visitor 4: pinned to B, unaffected.
            ok(4, 0, None, B, Some(B)),
            ok(4, 150, Some(B), B, None),
            // Visitor 5: a form upload over 1 MB first (served elsewhere,
            // not re-pinned: row 6, not counted), then re-pinned.
            ok(5, 0, None, A, Some(A)),
            Record {
                kind: Kind::LargeUpload,
                ..ok(5, 150, Some(A), C, None)
            },
            ok(5, 160, Some(A), C, Some(C)),
        ];
        let faults = [fault(FaultKind::Destroy, A, 90, 110, 300)];
        let f = compute(&records, &faults);
        assert_eq!(
            f.stranded,
            vec![
                Moved {
                    visitor: 1,
                    requests: Some(1),
                    unrouted: 0
                },
                Moved {
                    visitor: 2,
                    requests: Some(2),
                    unrouted: 0
                },
                Moved {
                    visitor: 3,
                    requests: None,
                    unrouted: 0
                },
                Moved {
                    visitor: 5,
                    requests: Some(1),
                    unrouted: 1
                },
            ]
        );
        assert_eq!(f.repinned_first(), 2);
        assert_eq!(f.max_to_repin(), None);
        assert!(!f.targets()[2].1);
        // Visitor 1's later request, pinned to B and outside the window, counts.
        assert_eq!((f.affinity_home, f.affinity_total), (1, 1));
    }

    #[test]
    fn requests_pinned_to_a_destroyed_machine_are_not_affinity_misses() {
        // Outside the window, but still pinned to the destroyed Machine.
        let records = vec![ok(1, 400, Some(A), B, Some(B))];
        let f = compute(&records, &[fault(FaultKind::Destroy, A, 90, 110, 300)]);
        assert_eq!(f.affinity_total, 0);
        assert_eq!(f.stranded.len(), 1);
        assert_eq!(f.max_to_repin(), Some(1));
    }

    #[test]
    fn drained_visitors_count_requests_until_moved_before_settled() {
        let records = vec![
            ok(1, 110, Some(C), C, None),
            ok(1, 120, Some(C), A, Some(A)),
            ok(2, 110, Some(C), C, None),
            ok(2, 400, Some(C), C, None),
        ];
        let f = compute(&records, &[fault(FaultKind::Drain, C, 100, 105, 300)]);
        assert_eq!(
            f.drained,
            vec![
                Moved {
                    visitor: 1,
                    requests: Some(2),
                    unrouted: 0
                },
                Moved {
                    visitor: 2,
                    requests: None,
                    unrouted: 0
                }
            ]
        );
    }

    #[test]
    fn stop_window_requests_of_the_stopped_machine_are_counted() {
        let records = vec![
            ok(1, 110, Some(B), B, None),
            ok(2, 120, Some(B), B, None),
            ok(3, 130, Some(A), A, None),
            // A form upload over 1 MB lands where it lands (row 6): not counted.
            Record {
                kind: Kind::LargeUpload,
                ..ok(2, 140, Some(B), A, None)
            },
        ];
        let f = compute(&records, &[fault(FaultKind::StopStart, B, 100, 105, 300)]);
        assert_eq!((f.stop_kept, f.stop_total), (2, 2));
    }

    #[test]
    fn merged_figures_add_up() {
        let one = compute(&[ok(1, 10, Some(A), A, None)], &[]);
        let mut all = Figures::default();
        all.merge(&one);
        all.merge(&one);
        assert_eq!(
            (all.requests, all.affinity_home, all.affinity_total),
            (2, 2, 2)
        );
        // No stranded client at all: the re-pin target is not shown to
        // hold where the faults must strand some.
        assert!(all.met());
        all.stranding_expected = true;
        assert!(!all.met());
    }

    #[test]
    fn blackholed_timeouts_and_reset_websockets_are_unanswerable_not_lost() {
        let timeout = Record {
            outcome: Outcome::ServerError {
                status: 502,
                detail: "502 [] \"Machine c did not answer GET / within 2s\"".into(),
            },
            ..ok(1, 120, Some(A), A, None)
        };
        let other_502 = Record {
            outcome: Outcome::ServerError {
                status: 502,
                detail: "PR04".into(),
            },
            ..ok(2, 120, Some(A), A, None)
        };
        let cut = Record {
            kind: Kind::WebSocket,
            end: ms(205),
            outcome: Outcome::ConnectionFailure {
                detail: "reset".into(),
            },
            ..ok(3, 195, Some(B), B, None)
        };
        let faults = [
            fault(FaultKind::Blackhole, C, 100, 100, 150),
            fault(FaultKind::Reset, B, 200, 200, 300),
        ];
        let f = compute(&[timeout, other_502, cut], &faults);
        assert_eq!(f.unanswerable, 2);
        assert_eq!(f.lost(), 1);
    }

    #[test]
    fn clients_of_a_machine_out_of_the_rotation_are_stranded_until_served() {
        let records = vec![
            // Re-pinned elsewhere on the first request in the window.
            ok(1, 120, Some(A), B, Some(B)),
            // Served by its own Machine once back: home too.
            ok(2, 190, Some(A), A, None),
            // A WebSocket session moved to a live Machine.
            Record {
                kind: Kind::WebSocket,
                ..ok(3, 130, Some(A), C, Some(C))
            },
            // Served elsewhere without a re-pin: not home.
            ok(4, 140, Some(A), B, None),
            // Its first request after the window: not stranded.
            ok(5, 250, Some(A), A, None),
        ];
        // The same outage seen twice (a fault, and the failing health check
        // it causes) counts each client once.
        let faults = [
            fault(FaultKind::Out, A, 100, 100, 200),
            fault(FaultKind::Reset, A, 100, 100, 200),
        ];
        let f = compute_for(&records, &faults, true);
        let homes: Vec<Option<usize>> = f.stranded.iter().map(|m| m.requests).collect();
        assert_eq!(homes, [Some(1), Some(1), Some(1), None]);
        assert_eq!((f.ws_moved, f.ws_moved_ok), (1, 1));
        assert!(!f.targets()[2].1);
    }

    #[test]
    fn a_visitor_with_no_next_request_is_not_counted_as_stranded() {
        let timeout = Record {
            outcome: Outcome::ServerError {
                status: 502,
                detail: "did not answer".into(),
            },
            ..ok(1, 120, Some(A), A, None)
        };
        let faults = [fault(FaultKind::Blackhole, A, 100, 100, 200)];
        let f = compute_for(&[timeout], &faults, false);
        assert!(f.stranded.is_empty());
        assert!(f.targets()[2].1);
    }

    #[test]
    fn p99_takes_the_requests_sent_in_the_phase() {
        let mut records: Vec<Record> = (0..100).map(|i| ok(1, i, None, A, None)).collect();
        for (i, r) in records.iter_mut().enumerate() {
            r.end = r.start + ms(i as u64 + 1);
        }
        assert_eq!(p99(&records, ms(0), ms(100)), Some(ms(99)));
        assert_eq!(p99(&records, ms(0), ms(10)), Some(ms(10)));
        assert_eq!(p99(&records, ms(500), ms(600)), None);
    }
}
