//! Bad engine.io input through flysim (3 Machines, random balancing): every
//! request gets socketioxide's own 4xx, after at most the one replay that
//! takes it to its Machine; never a replay loop, never a 5xx, never a proxy
//! error. Raw HTTP (conformance's client) so that the bytes are exactly these.

mod harness;

use conformance::client::{Request, Response, send};
use flysim::{EventKind, FlySim};

/// Sends `req` and checks the proxy side: no 5xx, at most one replay.
async fn check(sim: &FlySim, what: &str, req: Request) -> Response {
    sim.clear_events();
    let res = send(sim.front_addr(), &req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let events = sim.events();
    let replays = events
        .iter()
        .filter(|e| e.kind == EventKind::Replay)
        .count();
    assert!(res.status < 500, "{what}: {}", res.summary());
    assert!(replays <= 1, "{what}: {replays} replays: {events:?}");
    assert!(
        !events.iter().any(|e| e.is_error()),
        "{what}: proxy errors {events:?}"
    );
    res
}

fn unknown_sid(what: &str, res: &Response) {
    assert_eq!(res.status, 400, "{what}: {}", res.summary());
    assert!(
        res.text().contains("Session ID unknown"),
        "{what}: {}",
        res.summary()
    );
}

fn poll(sid: &str) -> String {
    format!("/socket.io/?EIO=4&transport=polling&sid={sid}")
}

/// Opens an engine.io session on `machine` (forced there) and returns its sid.
async fn open(sim: &FlySim, machine: &str) -> String {
    let res = check(
        sim,
        "handshake",
        Request::get("/socket.io/?EIO=4&transport=polling")
            .header("fly-force-instance-id", machine),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.summary());
    assert_eq!(res.pinned_to().as_deref(), Some(machine));
    let text = res.text();
    let sid = text
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no sid in {text}"));
    sid.to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_engine_io_input_gets_socketioxide_answers_without_loops_or_5xx() {
    let sim = harness::start(true, 5).await;
    let ids = sim.machine_ids();
    let (home, other) = (ids[0].as_str(), ids[1].as_str());
    let sid = open(&sim, home).await;

    // The session works where it lives (socket.io CONNECT on the default namespace).
    let res = check(
        &sim,
        "connect at home",
        Request::new("POST", poll(&sid))
            .cookie(home)
            .body(b"40".to_vec()),
    )
    .await;
    assert_eq!(
        (res.status, res.text().as_str()),
        (200, "ok"),
        "{}",
        res.summary()
    );

    // Garbage sid, pinned elsewhere or not pinned at all.
    let res = check(
        &sim,
        "garbage sid, pinned",
        Request::get(poll("AAAAAAAAAAAAAAAA")).cookie(other),
    )
    .await;
    unknown_sid("garbage sid, pinned", &res);
    let res = check(
        &sim,
        "garbage sid, no cookie",
        Request::get(poll("not-a-sid%00;x")),
    )
    .await;
    unknown_sid("garbage sid, no cookie", &res);
    assert!(
        res.pinned_to().is_some(),
        "first visit is pinned: {}",
        res.summary()
    );

    // A real sid presented with a cookie for another Machine (a foreign sid):
    // replayed there once, where socketioxide does not know it.
    let res = check(
        &sim,
        "foreign sid",
        Request::new("POST", poll(&sid))
            .cookie(other)
            .body(b"3".to_vec()),
    )
    .await;
    unknown_sid("foreign sid", &res);

    // Bad pins on the sid's own requests: a forged value never reaches
    // fly-replay, an unknown Machine falls back and re-pins.
    let res = check(
        &sim,
        "forged cookie",
        Request::get(poll("AAAAAAAAAAAAAAAA")).cookie("x;app=other"),
    )
    .await;
    unknown_sid("forged cookie", &res);
    let res = check(
        &sim,
        "unknown Machine in cookie",
        Request::get("/socket.io/?EIO=4&transport=polling").cookie("00000000000000"),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.summary());
    assert!(
        res.pinned_to().is_some_and(|m| ids.contains(&m)),
        "{}",
        res.summary()
    );

    // Malformed engine.io queries, with and without a pin.
    for (what, target) in [
        ("no EIO", "/socket.io/?transport=polling"),
        ("EIO=9", "/socket.io/?EIO=9&transport=polling"),
        ("unknown transport", "/socket.io/?EIO=4&transport=pigeon"),
        ("no transport", "/socket.io/?EIO=4"),
        ("empty sid", "/socket.io/?EIO=4&transport=polling&sid="),
        ("garbage query", "/socket.io/?%ZZ&&=&EIO=4=4"),
    ] {
        for pin in [None, Some(other)] {
            let req = Request::get(target);
            let req = match pin {
                Some(m) => req.cookie(m),
                None => req,
            };
            let res = check(&sim, what, req).await;
            assert!(
                (400..500).contains(&res.status),
                "{what}: {}",
                res.summary()
            );
        }
    }
    let res = check(
        &sim,
        "POST handshake",
        Request::new("POST", "/socket.io/?EIO=4&transport=polling").body(b"40".to_vec()),
    )
    .await;
    assert!(
        (400..500).contains(&res.status),
        "POST handshake: {}",
        res.summary()
    );

    // Oversized polling bodies. Above socketioxide's max_payload (100 kB)
    // and under Fly's 1 MB replay limit: replayed home, refused there with
    // 413 (socketioxide then closes that session).
    let res = check(
        &sim,
        "500 kB at the wrong Machine",
        Request::new("POST", poll(&sid))
            .cookie(home)
            .header("fly-force-instance-id", other)
            .body(vec![b'4'; 500_000]),
    )
    .await;
    assert_eq!(res.status, 413, "{}", res.summary());
    // Above 1 MB it cannot be replayed: the layer lets the Machine it landed
    // on answer (there the sid is unknown) and re-pins nobody. Sent to that
    // Machine directly: socketioxide answers before reading the body and
    // closes, which flysim can turn into its own 502 while still writing
    // the body (a proxy race, not the layer's answer).
    let sid = open(&sim, home).await;
    let addr = sim.machine(other).and_then(|m| m.addr).expect("other runs");
    let res = send(
        addr,
        &Request::new("POST", poll(&sid))
            .cookie(home)
            .body(vec![b'4'; 2_000_000]),
    )
    .await
    .expect("2 MB answered");
    unknown_sid("2 MB at the wrong Machine", &res);
    assert_eq!(res.pinned_to(), None, "{}", res.summary());

    // An expired sid: close the session (engine.io close packet), then use it.
    let sid = open(&sim, home).await;
    let res = check(
        &sim,
        "close",
        Request::new("POST", poll(&sid))
            .cookie(home)
            .body(b"1".to_vec()),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.summary());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let res = check(
        &sim,
        "expired sid",
        Request::new("POST", poll(&sid))
            .cookie(home)
            .body(b"40".to_vec()),
    )
    .await;
    unknown_sid("expired sid", &res);

    // A WebSocket upgrade with an unknown sid, pinned elsewhere: replayed
    // once; socketioxide 0.18 accepts the upgrade (101) and then ends it.
    let res = check(
        &sim,
        "websocket, garbage sid",
        Request::get("/socket.io/?EIO=4&transport=websocket&sid=AAAAAAAAAAAAAAAA")
            .cookie(other)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    )
    .await;
    assert_eq!(res.status, 101, "{}", res.summary());
    sim.shutdown().await;
}
