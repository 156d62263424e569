//! `GET /metrics`: the engine's decision counters in Prometheus text, never
//! sticky, and equal to what flysim saw each Machine do.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use flysim::MachineInfo;

use super::{Cluster, Kind, OTHER, Scenario, handled, with_cluster, with_single};
use crate::TENANT_HEADER;
use crate::client::{Client, Request, Response, send};

/// One series of `sticky_decisions_total`: its labels, and its value.
#[derive(Debug)]
struct Series {
    labels: BTreeMap<String, String>,
    value: u64,
}

/// The counters of one Machine, read from its `/metrics`.
#[derive(Debug)]
struct Decisions(Vec<Series>);

impl Decisions {
    /// Parses the text; refuses anything but the format the core writes
    /// (so a renderer that broke the format fails here, not in Prometheus).
    fn parse(text: &str) -> Result<Decisions, String> {
        ensure!(
            text.lines()
                .any(|l| l == "# TYPE sticky_decisions_total counter"),
            "no `# TYPE sticky_decisions_total counter` line in {text:?}"
        );
        ensure!(
            text.lines()
                .any(|l| l.starts_with("# HELP sticky_decisions_total ")),
            "no `# HELP sticky_decisions_total` line in {text:?}"
        );
        let mut series = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some(rest) = line.strip_prefix("sticky_decisions_total{") else {
                continue;
            };
            let (labels, value) = rest
                .split_once("} ")
                .ok_or_else(|| format!("malformed series {line:?}"))?;
            let value = value
                .parse()
                .map_err(|e| format!("value of {line:?}: {e}"))?;
            let mut map = BTreeMap::new();
            for pair in labels.split(',') {
                let (name, quoted) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("label {pair:?} in {line:?}"))?;
                let value = quoted
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .ok_or_else(|| format!("unquoted label {pair:?} in {line:?}"))?;
                map.insert(name.to_owned(), value.to_owned());
            }
            ensure!(
                map.contains_key("outcome") && map.contains_key("reason"),
                "a series without outcome and reason: {line:?}"
            );
            series.push(Series { labels: map, value });
        }
        Ok(Decisions(series))
    }

    /// The sum of the series whose labels include all of `want`.
    fn sum(&self, want: &[(&str, &str)]) -> u64 {
        self.0
            .iter()
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    fn total(&self) -> u64 {
        self.sum(&[])
    }
}

/// `GET /metrics` of the Machine at `addr`, checked as a scrape must be
/// answered: 200, Prometheus' text type, nothing sticky on it.
async fn scrape(addr: SocketAddr, req: Request) -> Result<(Response, Decisions), String> {
    let res = send(addr, &req).await?;
    ensure!(res.status == 200, "GET /metrics: {}", res.summary());
    ensure!(
        res.one("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "GET /metrics must be Prometheus text (text/plain; version=0.0.4): {}",
        res.summary()
    );
    ensure!(
        res.one("set-cookie").is_none() && res.one("fly-replay").is_none(),
        "GET /metrics must never be sticky: {}",
        res.summary()
    );
    let decisions = Decisions::parse(&res.text())?;
    Ok((res, decisions))
}

/// One Machine's `/metrics` set against what flysim saw it do: the
/// relation of scenario `cluster-metrics-match-flysim`, for anything that
/// runs a cluster whose Machines were never restarted (a restart starts the
/// counters again from 0, flysim's are kept): the soak's long run uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineMetrics {
    /// The Machine.
    pub id: String,
    /// `sticky_decisions_total{outcome="replay"}`, summed.
    pub replays: u64,
    /// flysim: the `fly-replay` answers it sent.
    pub replays_sent: u64,
    /// Every other decision, less `direct` (the requests that reached the
    /// Machine without the proxy: this scrape).
    pub decided_here: u64,
    /// flysim: the final responses it served.
    pub served: u64,
    /// `outcome="set_cookie"`: the pins it gave.
    pub set_cookie: u64,
    /// `reason="path_excluded"` (the scrape counts itself).
    pub path_excluded: u64,
}

impl MachineMetrics {
    /// Reads one scrape's text against flysim's counters of that Machine,
    /// taken after the last request through the proxy; `direct` requests
    /// reached the Machine without the proxy since it started (a scrape
    /// counts itself: at least 1). `Err` if the text is not the core's
    /// format.
    pub fn read(text: &str, machine: &MachineInfo, direct: u64) -> Result<MachineMetrics, String> {
        MachineMetrics::of(
            text,
            &machine.id,
            machine.served,
            machine.replays_sent,
            direct,
        )
    }

    fn of(
        text: &str,
        id: &str,
        served: u64,
        replays_sent: u64,
        direct: u64,
    ) -> Result<MachineMetrics, String> {
        let d = Decisions::parse(text)?;
        let replays = d.sum(&[("outcome", "replay")]);
        Ok(MachineMetrics {
            id: id.to_owned(),
            replays,
            replays_sent,
            decided_here: (d.total() - replays).saturating_sub(direct),
            served,
            set_cookie: d.sum(&[("outcome", "set_cookie")]),
            path_excluded: d.sum(&[("reason", "path_excluded")]),
        })
    }

    /// The relation: every replay it decided is one flysim saw it send, and
    /// every other decision one final response flysim saw it serve.
    pub fn check(&self) -> Result<(), String> {
        ensure!(
            self.replays == self.replays_sent,
            "{}: /metrics counts {} replays, flysim saw it send {}",
            self.id,
            self.replays,
            self.replays_sent
        );
        ensure!(
            self.decided_here == self.served,
            "{}: /metrics counts {} other decisions through the proxy, flysim saw it serve {}",
            self.id,
            self.decided_here,
            self.served
        );
        Ok(())
    }
}

/// Scrapes `machine`'s `GET /metrics` directly (checked as a scrape must be
/// answered: 200, Prometheus text, never sticky) and sets it against
/// flysim's counters ([`MachineMetrics::read`]; `direct` as there). `Err`
/// if the scrape fails; whether the counts agree is
/// [`MachineMetrics::check`]'s to say.
pub async fn machine_metrics(machine: &MachineInfo, direct: u64) -> Result<MachineMetrics, String> {
    let addr = machine
        .addr
        .ok_or_else(|| format!("{} has no address", machine.id))?;
    let (res, _) = scrape(addr, Request::get("/metrics")).await?;
    MachineMetrics::read(&res.text(), machine, direct)
}

pub(super) fn all() -> Vec<Scenario> {
    vec![
        scenario!(
            "metrics-never-sticky",
            Direct,
            "GET /metrics answers the decision counters in Prometheus text, never pins, replays or runs a counted handler, even with a foreign pin",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let before = handled(addr, me).await?;
                        scrape(addr, Request::get("/metrics")).await?;
                        scrape(addr, Request::get("/metrics").cookie(OTHER)).await?;
                        scrape(
                            addr,
                            Request::get(format!("/metrics?fly_instance_id={OTHER}")),
                        )
                        .await?;
                        let res = send(addr, &Request::get("/").cookie(OTHER)).await?;
                        ensure!(
                            res.status == 307,
                            "GET / pinned elsewhere: {}",
                            res.summary()
                        );
                        let res = send(addr, &Request::get("/")).await?;
                        ensure!(
                            res.pinned_to().as_deref() == Some(me),
                            "first visit: {}",
                            res.summary()
                        );
                        ensure!(
                            handled(addr, me).await? == before + 2,
                            "GET /metrics ran a counted handler"
                        );
                        let (_, m) = scrape(addr, Request::get("/metrics")).await?;
                        // Each request of this scenario, under its reason;
                        // the last scrape counts itself.
                        for (labels, want) in [
                            (&[("outcome", "stick"), ("reason", "path_excluded")][..], 4),
                            (
                                &[
                                    ("outcome", "stick"),
                                    ("reason", "pinned_here"),
                                    ("source", "cookie"),
                                ],
                                2,
                            ),
                            (
                                &[
                                    ("outcome", "replay"),
                                    ("reason", "pinned_elsewhere"),
                                    ("source", "cookie"),
                                ],
                                1,
                            ),
                            (&[("outcome", "set_cookie"), ("reason", "no_target")], 1),
                        ] {
                            ensure!(
                                m.sum(labels) == want,
                                "{labels:?}: expected {want}, got {}: {m:?}",
                                m.sum(labels)
                            );
                        }
                        ensure!(m.total() == 8, "8 decisions, counted {}: {m:?}", m.total());
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cluster-metrics-match-flysim",
            Cluster,
            "each Machine's /metrics equals what flysim saw it do: its replays are flysim's replays sent, the rest flysim's responses served, and pins the Set-Cookies clients got",
            |ctx| { with_cluster(ctx, |c| Box::pin(async move { metrics_match(c).await })).await }
        ),
    ]
}

/// Traffic of every kind through the proxy, then each Machine's counters
/// (read directly, so the proxy's counts stay as they are) against the
/// proxy's.
async fn metrics_match(c: &Cluster) -> Result<(), String> {
    let mut pins_seen = 0u64;
    let mut tally = |res: &Response| {
        pins_seen += u64::from(res.pinned_to().is_some());
    };
    for _ in 0..4 {
        let mut client = Client::default();
        for _ in 0..6 {
            let res = client.send(c.front(), Request::get("/")).await?;
            ensure!(res.status == 200, "GET /: {}", res.summary());
            tally(&res);
        }
        for body in [1_000, 1_500_000] {
            let req = Request::new("POST", "/upload").body(vec![b'u'; body]);
            let res = client.send(c.front(), req).await?;
            ensure!(res.status == 200, "POST /upload: {}", res.summary());
            tally(&res);
        }
        let session = client
            .websocket(c.front(), "/ws", &["hello".to_owned()])
            .await?;
        ensure!(
            session.handshake.status == 101,
            "GET /ws: {}",
            session.handshake.summary()
        );
        tally(&session.handshake);
    }
    for i in 0..9 {
        for req in [
            Request::get("/api/tenant").header(TENANT_HEADER, format!("tenant-{}", i % 3)),
            Request::get(format!("/rooms/room-{}", i % 3)),
        ] {
            let res = send(c.front(), &req).await?;
            ensure!(res.status == 200, "{}", res.summary());
            tally(&res);
        }
    }

    let machines = c.sim.machines();
    let (mut replays, mut pins) = (0, 0);
    for m in &machines {
        // Everything reached the proxy but the scrape itself, which went to
        // the Machine directly.
        let got = machine_metrics(m, 1).await?;
        got.check().map_err(|e| format!("{e}: {got:?}"))?;
        ensure!(
            got.path_excluded == 1,
            "{}: only the scrape is excluded: {got:?}",
            m.id
        );
        replays += got.replays;
        pins += got.set_cookie;
    }
    ensure!(
        replays == c.replays() && replays > 0,
        "replays over the Machines: /metrics {replays}, flysim {}",
        c.replays()
    );
    ensure!(
        pins == pins_seen,
        "SetCookie decisions {pins}, pins the clients received {pins_seen}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "# HELP sticky_decisions_total Decisions of the sticky middleware, by outcome and reason.
# TYPE sticky_decisions_total counter
sticky_decisions_total{outcome=\"stick\",reason=\"pinned_here\",source=\"cookie\"} 40
sticky_decisions_total{outcome=\"stick\",reason=\"path_excluded\"} 1
sticky_decisions_total{outcome=\"set_cookie\",reason=\"no_target\"} 9
sticky_decisions_total{outcome=\"replay\",reason=\"pinned_elsewhere\",source=\"cookie\"} 30
";

    fn read(served: u64, replays_sent: u64, direct: u64) -> Result<MachineMetrics, String> {
        MachineMetrics::of(TEXT, "148ed599c14189", served, replays_sent, direct)
    }

    #[test]
    fn the_counts_match_when_flysim_saw_the_same() {
        let m = read(49, 30, 1).unwrap();
        assert_eq!((m.replays, m.decided_here, m.set_cookie), (30, 49, 9));
        m.check().unwrap();
    }

    #[test]
    fn a_mismatch_fails() {
        let e = read(49, 31, 1).unwrap().check().unwrap_err();
        assert!(e.contains("30 replays, flysim saw it send 31"), "{e}");
        let e = read(50, 30, 1).unwrap().check().unwrap_err();
        assert!(e.contains("49 other decisions"), "{e}");
        // A scrape not counted as direct is one decision too many.
        assert!(read(49, 30, 0).unwrap().check().is_err());
        assert!(MachineMetrics::of("not metrics", "x", 0, 0, 1).is_err());
    }
}
