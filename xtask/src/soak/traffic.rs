//! The clients: `clients` tokio tasks, each a browser-like visitor with its
//! own cookie jar, sharing a budget of `requests` requests of a fixed mix.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use conformance::client::{Client, Request, Response};

use super::metrics::{Kind, Outcome, Record};

/// 1 MB, as Fly counts it (the replay body limit).
pub(crate) const MB: usize = flysim::REPLAY_BODY_LIMIT;

/// The mix, in percent of requests (the rest are page loads).
pub(crate) const MIX: [(Kind, u64); 4] = [
    (Kind::Upload, 12),
    (Kind::LargeUpload, 3),
    (Kind::ChunkedUpload, 5),
    (Kind::WebSocket, 10),
];

/// Per request, the chance (percent) that the visitor leaves and a new one,
/// with an empty cookie jar, takes its place.
pub(crate) const CHURN_PERCENT: u64 = 1;

/// Messages echoed per WebSocket session.
pub(crate) const WS_MESSAGES: usize = 3;

/// A small deterministic generator (SplitMix64): the same seed gives the same mix.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        let span = (hi - lo) as u64 + 1;
        lo + (self.next_u64() % span) as usize
    }

    /// True with probability `percent` / 100.
    pub(crate) fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// Picks the kind of the next request.
pub(crate) fn pick(rng: &mut Rng) -> Kind {
    let mut roll = rng.next_u64() % 100;
    for (kind, share) in MIX {
        if roll < share {
            return kind;
        }
        roll -= share;
    }
    Kind::Page
}

/// What the clients share.
pub(crate) struct Traffic {
    front: SocketAddr,
    /// Every Machine ID the app has had (deploys and scales add some).
    machines: Mutex<Vec<String>>,
    total: usize,
    /// The scenario is over: clients stop after their current request.
    stopped: AtomicBool,
    /// A lull: clients wait (between requests) until it ends.
    paused: AtomicBool,
    started: AtomicUsize,
    visitors: AtomicU64,
    base: Instant,
    seed: u64,
    /// Mean pause between a visitor's requests (uniform in 0..=2x).
    think: Duration,
    records: Mutex<Vec<Record>>,
}

impl Traffic {
    pub(crate) fn new(
        front: SocketAddr,
        machines: Vec<String>,
        total: usize,
        seed: u64,
        think: Duration,
    ) -> Self {
        Traffic {
            front,
            machines: Mutex::new(machines),
            total,
            stopped: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            started: AtomicUsize::new(0),
            visitors: AtomicU64::new(0),
            base: Instant::now(),
            seed,
            think,
            records: Mutex::new(Vec::with_capacity(total)),
        }
    }

    /// Time since the traffic began.
    pub(crate) fn now(&self) -> Duration {
        self.base.elapsed()
    }

    /// The share of the request budget already sent (0..=1).
    pub(crate) fn progress(&self) -> f64 {
        self.started.load(Ordering::SeqCst).min(self.total) as f64 / self.total.max(1) as f64
    }

    /// Whether every request has been sent (or the traffic was stopped).
    pub(crate) fn all_sent(&self) -> bool {
        self.stopped.load(Ordering::SeqCst) || self.started.load(Ordering::SeqCst) >= self.total
    }

    /// Stops the traffic: clients send nothing more.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Begins (`true`) or ends a lull: clients send nothing meanwhile.
    pub(crate) fn pause(&self, on: bool) {
        self.paused.store(on, Ordering::SeqCst);
    }

    /// Makes `id` a Machine whose answers count as right.
    pub(crate) fn learn(&self, id: &str) {
        let mut machines = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        if !machines.iter().any(|m| m == id) {
            machines.push(id.to_owned());
        }
    }

    /// Every record so far.
    pub(crate) fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn new_visitor(&self) -> u64 {
        self.visitors.fetch_add(1, Ordering::SeqCst)
    }

    fn known(&self, id: &str) -> bool {
        self.machines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|m| m == id)
    }
}

/// One client: visitors one after the other, each with its own cookie jar,
/// until the budget is spent, pausing between requests (a user reading the
/// page). Requests are never retried (a browser does not resubmit a POST, and
/// an error page is an error whatever the method).
pub(crate) async fn client(traffic: Arc<Traffic>, index: u64) {
    let mut rng = Rng::new(traffic.seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut jar = Client::default();
    let mut visitor = traffic.new_visitor();
    loop {
        while traffic.paused.load(Ordering::SeqCst) && !traffic.stopped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if traffic.stopped.load(Ordering::SeqCst) {
            break;
        }
        let ticket = traffic.started.fetch_add(1, Ordering::SeqCst);
        if ticket >= traffic.total {
            break;
        }
        if rng.percent(CHURN_PERCENT) {
            jar = Client::default();
            visitor = traffic.new_visitor();
        }
        let kind = pick(&mut rng);
        let pin_before = jar.cookie.clone();
        // Half the unreplayable uploads name the visitor's Machine with
        // `fly-prefer-instance-id`, as a page's fetch() can (the page knows
        // its Machine); the rest are plain form posts.
        let routed = kind.unreplayable() && pin_before.is_some() && rng.percent(50);
        let start = traffic.now();
        let outcome = one(&traffic, &mut jar, &mut rng, kind, routed, ticket).await;
        let end = traffic.now();
        traffic
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Record {
                visitor,
                kind,
                routed,
                start,
                end,
                pin_before,
                outcome,
            });
        let think = traffic.think.as_micros() as usize;
        if think > 0 {
            let pause = rng.range(0, 2 * think) as u64;
            tokio::time::sleep(Duration::from_micros(pause)).await;
        }
    }
}

/// Sends one request of `kind` and judges the answer.
async fn one(
    traffic: &Traffic,
    jar: &mut Client,
    rng: &mut Rng,
    kind: Kind,
    routed: bool,
    ticket: usize,
) -> Outcome {
    let front = traffic.front;
    let body_len = match kind {
        Kind::Page | Kind::WebSocket => 0,
        Kind::Upload => rng.range(1, 64 * 1024),
        Kind::LargeUpload => rng.range(MB + 1, 2 * MB),
        // A third of the chunked uploads are over 1 MB.
        Kind::ChunkedUpload if rng.percent(33) => rng.range(MB + 1, MB + MB / 2),
        Kind::ChunkedUpload => rng.range(8 * 1024, 256 * 1024),
    };
    let mut req = match kind {
        Kind::Page => Request::get("/"),
        Kind::Upload | Kind::LargeUpload => {
            Request::new("POST", "/upload").body(vec![b'x'; body_len])
        }
        Kind::ChunkedUpload => {
            let mut chunks = Vec::new();
            let mut left = body_len;
            while left > 0 {
                let n = rng.range(1024, 64 * 1024).min(left);
                chunks.push(vec![b'y'; n]);
                left -= n;
            }
            Request::new("POST", "/upload").chunked(chunks)
        }
        Kind::WebSocket => return websocket(traffic, jar, rng, ticket).await,
    };
    if routed && let Some(pin) = &jar.cookie {
        req = req.header("fly-prefer-instance-id", pin);
    }
    match jar.send(front, req).await {
        Err(e) => Outcome::ConnectionFailure { detail: e },
        Ok(res) => judge_http(traffic, kind, body_len, &res),
    }
}

fn server_error(res: &Response) -> Outcome {
    Outcome::ServerError {
        status: res.status,
        detail: res.summary(),
    }
}

/// Whether an HTTP answer is the right one.
pub(crate) fn judge_http(
    traffic: &Traffic,
    kind: Kind,
    body_len: usize,
    res: &Response,
) -> Outcome {
    if res.status >= 500 {
        return server_error(res);
    }
    let Some(id) = res.machine().filter(|id| traffic.known(id)) else {
        return Outcome::Wrong {
            detail: res.summary(),
        };
    };
    let right = res.status == 200
        && match kind {
            Kind::Page => res.handled().is_some(),
            _ => res.text() == format!("machine={id} bytes={body_len}"),
        };
    if right {
        Outcome::Ok {
            served_by: id,
            pinned_to: res.pinned_to(),
        }
    } else {
        Outcome::Wrong {
            detail: format!("(sent {body_len} bytes) {}", res.summary()),
        }
    }
}

async fn websocket(traffic: &Traffic, jar: &mut Client, rng: &mut Rng, ticket: usize) -> Outcome {
    // Half the sessions also name the Machine in the query, as a page that
    // reconnects its socket does; the cookie goes along either way.
    let path = match &jar.cookie {
        Some(pin) if rng.percent(50) => format!("/ws?fly_instance_id={pin}"),
        _ => "/ws".to_owned(),
    };
    let messages: Vec<String> = (0..WS_MESSAGES).map(|k| format!("r{ticket}m{k}")).collect();
    let session = match jar.websocket(traffic.front, &path, &messages).await {
        Ok(session) => session,
        Err(e) => return Outcome::ConnectionFailure { detail: e },
    };
    if session.handshake.status >= 500 {
        return server_error(&session.handshake);
    }
    if session.handshake.status != 101 {
        return Outcome::Wrong {
            detail: session.handshake.summary(),
        };
    }
    let id = session
        .replies
        .first()
        .and_then(|r| r.split_once(':'))
        .map(|(id, _)| id.to_owned())
        .unwrap_or_default();
    let right = traffic.known(&id)
        && session.replies.len() == messages.len()
        && session
            .replies
            .iter()
            .zip(&messages)
            .all(|(reply, sent)| *reply == format!("{id}:{sent}"));
    if right {
        Outcome::Ok {
            served_by: id,
            pinned_to: session.handshake.pinned_to(),
        }
    } else {
        Outcome::Wrong {
            detail: format!("echoes {:?} to {messages:?}", session.replies),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_follows_the_shares() {
        let mut rng = Rng::new(7);
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..100_000 {
            *counts.entry(pick(&mut rng)).or_insert(0usize) += 1;
        }
        let share = |k: Kind| counts.get(&k).copied().unwrap_or(0) as f64 / 1000.0;
        for (kind, percent) in MIX {
            assert!((share(kind) - percent as f64).abs() < 1.0, "{kind:?}");
        }
        assert!((share(Kind::Page) - 70.0).abs() < 1.0);
    }

    #[test]
    fn the_generator_is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(1), Rng::new(1));
        for _ in 0..1000 {
            let n = a.range(MB + 1, 2 * MB);
            assert_eq!(n, b.range(MB + 1, 2 * MB));
            assert!((MB + 1..=2 * MB).contains(&n));
        }
    }

    fn response(status: u16, body: &str, set_cookie: Option<&str>) -> Response {
        let mut headers = Vec::new();
        if let Some(v) = set_cookie {
            headers.push((
                "set-cookie".to_owned(),
                format!("fly-machine-id={v}; Path=/"),
            ));
        }
        Response {
            status,
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_are_judged() {
        let id = "148ed599c14189";
        let t = Traffic::new(
            SocketAddr::from(([127, 0, 0, 1], 1)),
            vec![id.to_owned()],
            1,
            0,
            Duration::ZERO,
        );
        let page = response(200, &format!("machine={id} handled=3"), Some(id));
        assert_eq!(
            judge_http(&t, Kind::Page, 0, &page),
            Outcome::Ok {
                served_by: id.to_owned(),
                pinned_to: Some(id.to_owned())
            }
        );
        let upload = response(200, &format!("machine={id} bytes=10"), None);
        assert!(matches!(
            judge_http(&t, Kind::Upload, 10, &upload),
            Outcome::Ok { .. }
        ));
        assert!(matches!(
            judge_http(&t, Kind::Upload, 11, &upload),
            Outcome::Wrong { .. }
        ));
        let stranger = response(200, "machine=90801679a10038 handled=1", None);
        assert!(matches!(
            judge_http(&t, Kind::Page, 0, &stranger),
            Outcome::Wrong { .. }
        ));
        assert!(matches!(
            judge_http(&t, Kind::Page, 0, &response(502, "PR04", None)),
            Outcome::ServerError { status: 502, .. }
        ));
        assert!(matches!(
            judge_http(&t, Kind::Page, 0, &response(307, "", None)),
            Outcome::Wrong { .. }
        ));
    }
}
