//! The JSON replay form (`Content-Type: application/vnd.fly.replay+json`).

mod common;

use common::{App, Reply, config, get_with, served_by, start};
use flysim::EventKind;

#[tokio::test]
async fn json_replay_routes_and_applies_the_transform() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let json = format!(
        r#"{{"instance":"{}","state":"js","timeout":"5s","fallback":"prefer_self",
            "transform":{{"path":"/rewritten?x=1",
                          "delete_headers":["x-drop","cookie"],
                          "set_headers":[{{"name":"x-set","value":"new"}},{{"name":"x-keep","value":"over"}}]}}}}"#,
        ids[1]
    );
    let target = ids[1].clone();
    app.set_handler(move |s| {
        if s.machine == target {
            Reply::ok(format!("machine={}", s.machine))
        } else {
            Reply::json_replay(&json)
        }
    });
    let resp = get_with(
        &format!("{}/original?y=2", sim.url()),
        &[
            ("fly-force-instance-id", &ids[0]),
            ("x-drop", "1"),
            ("cookie", "a=b"),
            ("x-keep", "old"),
            ("authorization", "Bearer t"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(served_by(&resp), ids[1]);
    let seen = app.seen();
    assert_eq!(seen[0].path, "/original?y=2");
    let replayed = &seen[1];
    assert_eq!(replayed.path, "/rewritten?x=1");
    assert!(replayed.header("x-drop").is_none());
    assert!(replayed.header("cookie").is_none());
    assert_eq!(replayed.header("x-set"), Some("new"));
    assert_eq!(replayed.header("x-keep"), Some("over"));
    // flysim does not reproduce the unconfirmed "set_headers drops Authorization" report.
    assert_eq!(replayed.header("authorization"), Some("Bearer t"));
    let src = replayed.header("fly-replay-src").unwrap();
    assert!(
        src.starts_with(&format!("instance={};region=iad;t=", ids[0])),
        "{src}"
    );
    assert!(src.ends_with(";state=js"), "{src}");
    assert_eq!(sim.machine(&ids[0]).unwrap().replays_sent, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn json_replay_accepts_cache_and_region_lists() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    app.set_handler(|s| {
        if s.header("fly-replay-src").is_some() {
            Reply::ok(format!("machine={}", s.machine))
        } else {
            Reply::json_replay(
                r#"{"region":"sjc,iad","elsewhere":true,"cache":{"prefix":"/x/*","ttl":10},"allow_bypass":false}"#,
            )
        }
    });
    let resp = common::get(&sim.url()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_json_replays_are_pa03() {
    let app = App::echo();
    let sim = start(config().quiet(true), &app).await;
    let cases = [
        (r#"{"instance":"#, "malformed JSON"),
        (r#"["instance"]"#, "must be an object"),
        (r#"{"instance":"not-an-id"}"#, "invalid Machine ID"),
        (r#"{"region":"iad","foo":1}"#, "unknown field \"foo\""),
        (r#"{"elsewhere":"yes"}"#, "must be a boolean"),
        (r#"{"timeout":"soon"}"#, "invalid duration"),
        (r#"{"transform":{"path":"no-slash"}}"#, "invalid path"),
        (
            r#"{"transform":{"rename":[]}}"#,
            "unknown field \"rename\" in transform",
        ),
    ];
    for (json, problem) in cases {
        app.set_handler(move |_| Reply::json_replay(json));
        let resp = common::get(&sim.url()).await;
        assert_eq!(resp.status, 502, "{json}");
        assert_eq!(resp.header("fly-error"), Some("PA03"));
        let text = resp.text();
        assert!(text.contains("PA03 Invalid fly-replay"), "{text}");
        assert!(text.contains(problem), "{json}: {text}");
        assert!(text.contains("JSON body"), "{text}");
    }
    let errors = sim
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::ProxyError && e.code.as_deref() == Some("PA03"))
        .count();
    assert_eq!(errors, cases.len());
    sim.shutdown().await;
}

#[tokio::test]
async fn an_ordinary_json_response_is_not_a_replay() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    app.set_handler(|_| {
        Reply::ok(r#"{"instance":"x"}"#).with_header("content-type", "application/json")
    });
    let resp = common::get(&sim.url()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), r#"{"instance":"x"}"#);
    sim.shutdown().await;
}
