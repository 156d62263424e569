//! Strict validation of the `fly-replay` header: malformed headers are PA03, another
//! app is PA04, valid variants are followed, and the replay response is discarded.

mod common;

use bytes::Bytes;
use common::{App, Reply, config, full_body, get, send, served_by, start};
use flysim::EventKind;

/// Every malformed header, answered by whichever Machine gets the request, must be
/// a 502 with `fly-error: PA03`, a message naming the problem and quoting the header.
#[tokio::test]
async fn malformed_headers_are_rejected_loudly_as_pa03() {
    let app = App::echo();
    let sim = start(config().quiet(true), &app).await;
    let id = sim.machine_ids()[1].clone();
    let cases: Vec<(String, &str)> = vec![
        (format!("instance={id};foo=1"), "unknown field \"foo\""),
        (
            format!("instance={id}; state=a"),
            "whitespace is not allowed",
        ),
        (
            format!("instance={id},state=a"),
            "comma is only allowed inside a double-quoted value",
        ),
        (
            "region=sjc,any".to_owned(),
            "comma is only allowed inside a double-quoted value",
        ),
        (
            format!("instance={id};instance={id}"),
            "duplicate field \"instance\"",
        ),
        (
            "instance=".to_owned(),
            "field \"instance\" has an empty value",
        ),
        ("instance".to_owned(), "has no value"),
        (format!("instance={id};"), "trailing ';'"),
        ("instance=148ED599C14189".to_owned(), "invalid Machine ID"),
        ("instance=abc".to_owned(), "invalid Machine ID"),
        (
            format!("prefer_instance={id};app=x;y"),
            "field \"y\" has no value",
        ),
        ("elsewhere=1".to_owned(), "must be true or false"),
        (
            format!("instance={id};timeout=soon"),
            "invalid duration \"soon\"",
        ),
        (
            format!("instance={id};fallback=self"),
            "must be force_self or prefer_self",
        ),
        ("region=\"iad,any".to_owned(), "unterminated quoted value"),
        (
            format!("instance={id};prefer_instance={id}"),
            "cannot be combined",
        ),
        ("state=a\"b".to_owned(), "double quote"),
    ];
    for (header, problem) in &cases {
        let h = header.clone();
        app.set_handler(move |_| Reply::replay(&h));
        let resp = get(&sim.url()).await;
        assert_eq!(resp.status, 502, "{header}");
        assert_eq!(resp.header("fly-error"), Some("PA03"), "{header}");
        let text = resp.text();
        assert!(text.starts_with("PA03 Invalid fly-replay: "), "{text}");
        assert!(
            text.contains(problem),
            "{header:?}: {text:?} should name {problem:?}"
        );
        assert!(
            text.contains(&format!("\"{}\"", header.replace('"', "\\\""))),
            "{text}"
        );
        assert!(!text.contains("must never reach"));
        assert!(resp.header("set-cookie").is_none());
    }
    let pa03 = sim
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::ProxyError && e.code.as_deref() == Some("PA03"))
        .count();
    assert_eq!(pa03, cases.len());
    // Each malformed header came from one handler run; nothing was replayed.
    assert_eq!(app.runs(), cases.len());
    let sent: u64 = sim.machines().iter().map(|m| m.replays_sent).sum();
    let received: u64 = sim.machines().iter().map(|m| m.replays_received).sum();
    assert_eq!(sent, cases.len() as u64);
    assert_eq!(received, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn two_fly_replay_headers_are_rejected() {
    let app = App::echo();
    let sim = start(config().quiet(true), &app).await;
    let id = sim.machine_ids()[0].clone();
    app.set_handler(move |_| {
        Reply::replay(&format!("instance={id}")).with_header("fly-replay", "elsewhere=true")
    });
    let resp = get(&sim.url()).await;
    assert_eq!(resp.status, 502);
    assert!(
        resp.text().contains("more than one fly-replay header"),
        "{}",
        resp.text()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn replay_to_another_app_is_pa04() {
    let app = App::echo();
    let sim = start(config().quiet(true), &app).await;
    app.set_handler(|_| Reply::replay("app=some-other-app"));
    let resp = get(&sim.url()).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("fly-error"), Some("PA04"));
    assert!(resp.text().contains("some-other-app"));
    assert!(
        sim.events()
            .iter()
            .any(|e| e.code.as_deref() == Some("PA04"))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn valid_header_variants_are_followed() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let b = sim.machine_ids()[1].clone();
    let variants = [
        format!("instance={b}"),
        format!("instance={b};state=abc"),
        format!("instance={b};timeout=800ms"),
        format!("instance={b};timeout=1500"),
        format!("instance={b};timeout=10s;fallback=force_self"),
        format!("instance={b};app=flysim-app;region=iad"),
        format!("prefer_instance={b};fallback=prefer_self"),
        format!("prefer_instance={b};elsewhere=false"),
        "region=iad".to_owned(),
        "region=\"sjc,any\"".to_owned(),
        "region=us".to_owned(),
        "app=flysim-app".to_owned(),
        "elsewhere=true".to_owned(),
        "state=\"with,comma\"".to_owned(),
        format!("instance=\"{b}\""),
    ];
    for v in &variants {
        let header = v.clone();
        app.set_handler(move |s| {
            if s.header("fly-replay-src").is_some() {
                Reply::ok(format!("machine={}", s.machine))
            } else {
                Reply::replay(&header)
            }
        });
        let resp = get(&sim.url()).await;
        assert_eq!(resp.status, 200, "{v}: {}", resp.text());
        if v.contains("instance=") {
            assert_eq!(served_by(&resp), b, "{v}");
        }
        assert!(resp.header("set-cookie").is_none(), "{v}");
        assert!(resp.header("x-replay-noise").is_none(), "{v}");
    }
    assert!(
        sim.events().iter().all(|e| !e.is_error()),
        "{:?}",
        sim.events()
    );
    sim.shutdown().await;
}

/// The proxy throws the replay response away (status, body, headers, Set-Cookie)
/// and sends the original request (method, URI, headers, body) again.
#[tokio::test]
async fn replay_discards_the_response_and_resends_the_original_request() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let b = sim.machine_ids()[1].clone();
    let target = b.clone();
    app.set_handler(move |s| {
        if s.machine == target {
            Reply::ok(format!("machine={}", s.machine)).with_header("x-from", "target")
        } else {
            Reply::replay(&format!("instance={target}"))
        }
    });
    // Round-robin: the first request goes to Machine 0, which replays to Machine 1.
    let req = http::Request::post(format!("{}/submit?x=1&y=2", sim.url()))
        .header("x-custom", "kept")
        .header("cookie", "session=abc")
        .body(full_body(Bytes::from_static(b"payload-123")))
        .unwrap();
    let resp = send(req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), format!("machine={b}"));
    assert_eq!(resp.header("x-from"), Some("target"));
    assert!(resp.header("set-cookie").is_none());
    assert!(resp.header("x-replay-noise").is_none());
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    let (first, second) = (&seen[0], &seen[1]);
    assert_ne!(first.machine, b);
    assert_eq!(second.machine, b);
    for s in [first, second] {
        assert_eq!(s.method, http::Method::POST);
        assert_eq!(s.path, "/submit?x=1&y=2");
        assert_eq!(s.header("x-custom"), Some("kept"));
        assert_eq!(s.header("cookie"), Some("session=abc"));
        assert_eq!(&s.body[..], b"payload-123");
    }
    assert_eq!(
        first.header("fly-request-id"),
        second.header("fly-request-id")
    );
    assert!(first.header("fly-replay-src").is_none());
    assert!(second.header("fly-replay-src").is_some());
    let a = sim.machine(&first.machine).unwrap();
    let t = sim.machine(&b).unwrap();
    assert_eq!((a.served, a.replays_sent, a.replays_received), (0, 1, 0));
    assert_eq!((t.served, t.replays_sent, t.replays_received), (1, 0, 1));
    assert!(sim.events().iter().any(|e| e.kind == EventKind::Replay));
    sim.shutdown().await;
}
