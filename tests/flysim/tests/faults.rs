//! Network faults on a Machine (reset, delay, blackhole) for a while, from
//! code and from the admin interface, and the proxy's response timeout.

mod common;

use std::time::{Duration, Instant};

use common::{App, Reply, admin_call, config, get, get_with, messages, served_by, start, within};
use flysim::{EventKind, FaultKind, FlySim, Instance, Launch};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_reset_machine_gets_no_requests_and_its_websockets_are_cut() {
    let app = App::new(|s| {
        if s.path == "/ws" {
            Reply::websocket()
        } else {
            Reply::ok(format!("machine={}", s.machine))
        }
    });
    let sim = start(config().quiet(true), &app).await;
    let ids = sim.machine_ids();
    let url = format!("ws://{}/ws", sim.front_addr());
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    req.headers_mut()
        .insert("fly-force-instance-id", ids[0].parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text("a")).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());

    sim.fault(&ids[0], FaultKind::Reset, LONG).unwrap();
    // The open WebSocket is cut.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tunnel was not cut");
    let before = app.runs_on(&ids[0]);
    // Balanced requests go elsewhere, all answered.
    for _ in 0..9 {
        let resp = get(&sim.url()).await;
        assert_eq!(resp.status, 200);
        assert_ne!(served_by(&resp), ids[0]);
    }
    // A preferred one falls back; a forced one fails.
    let resp = get_with(&sim.url(), &[("fly-prefer-instance-id", &ids[0])]).await;
    assert_ne!(served_by(&resp), ids[0]);
    let resp = get_with(&sim.url(), &[("fly-force-instance-id", &ids[0])]).await;
    assert_eq!(
        (resp.status.as_u16(), resp.header("fly-error")),
        (502, Some("PR02"))
    );
    assert!(resp.text().contains("reset"), "{}", resp.text());
    assert_eq!(app.runs_on(&ids[0]), before);
    let info = sim.machine(&ids[0]).unwrap().fault.unwrap();
    assert_eq!(info.kind, "reset");
    assert!(sim.clear_fault(&ids[0]).unwrap());
    let resp = get_with(&sim.url(), &[("fly-force-instance-id", &ids[0])]).await;
    assert_eq!(served_by(&resp), ids[0]);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_delayed_machine_answers_late_and_the_fault_ends_on_time() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let delay = Duration::from_millis(200);
    sim.fault(
        &ids[1],
        FaultKind::Delay(delay),
        Duration::from_millis(1500),
    )
    .unwrap();
    let t0 = Instant::now();
    let resp = get_with(&sim.url(), &[("fly-force-instance-id", &ids[1])]).await;
    assert_eq!(served_by(&resp), ids[1]);
    assert!(t0.elapsed() >= delay);
    let info = sim.machine(&ids[1]).unwrap().fault.unwrap();
    assert_eq!((info.kind, info.delay_ms), ("delay", Some(200)));
    within(10, "the fault ended", || {
        sim.machine(&ids[1]).unwrap().fault.is_none()
    })
    .await;
    within(10, "its end recorded", || {
        messages(&sim, EventKind::Fault)
            .iter()
            .any(|m| m.contains("ended"))
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_blackholed_machine_fails_its_requests_at_the_response_timeout() {
    let app = App::echo();
    let timeout = Duration::from_millis(300);
    let sim = start(config().quiet(true).response_timeout(timeout), &app).await;
    let ids = sim.machine_ids();
    // The fault is shorter than the timeout: a request sent under it is
    // still never answered.
    sim.fault(&ids[2], FaultKind::Blackhole, Duration::from_millis(100))
        .unwrap();
    let t0 = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        get_with(&sim.url(), &[("fly-force-instance-id", &ids[2])]),
    )
    .await
    .expect("a blackholed request fails at the response timeout");
    assert!(t0.elapsed() >= timeout);
    assert_eq!(resp.status, 502);
    assert!(resp.text().contains("did not answer"), "{}", resp.text());
    assert_eq!(app.runs_on(&ids[2]), 0);
    // Once over, it answers again.
    within(10, "the fault ended", || {
        sim.machine(&ids[2]).unwrap().fault.is_none()
    })
    .await;
    let resp = get_with(&sim.url(), &[("fly-force-instance-id", &ids[2])]).await;
    assert_eq!(served_by(&resp), ids[2]);
    sim.shutdown().await;
}

/// A Machine that accepts connections and never answers (no fault): the
/// proxy's response timeout applies.
#[tokio::test]
async fn a_machine_that_never_answers_meets_the_response_timeout() {
    let launch = Launch::in_process(|_env| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Ok(Instance::new(addr, move || task.abort()))
    });
    let timeout = Duration::from_millis(250);
    let sim = FlySim::start(
        config().machines(1).quiet(true).response_timeout(timeout),
        launch,
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(20), get(&sim.url()))
        .await
        .expect("the proxy gives up on a Machine that never answers");
    assert!(t0.elapsed() >= timeout);
    assert_eq!(resp.status, 502);
    assert!(resp.text().contains("response timeout"), "{}", resp.text());
    sim.shutdown().await;
}

fn fault_view(sim: &FlySim) -> Vec<(String, Option<&'static str>)> {
    sim.machines()
        .into_iter()
        .map(|m| (m.id, m.fault.map(|f| f.kind)))
        .collect()
}

#[tokio::test]
async fn the_admin_interface_sets_shows_and_refuses_faults() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let path = format!("/machines/{}/fault?kind=delay&ms=50&for_ms=60000", ids[0]);
    let (status, m) = admin_call(&sim, "POST", &path).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["fault"]["kind"], "delay");
    assert_eq!(m["fault"]["delay_ms"], 50);
    let (_, list) = admin_call(&sim, "GET", "/machines").await;
    assert_eq!(list[0]["fault"]["kind"], "delay");
    assert!(list[1]["fault"].is_null());
    assert!(
        messages(&sim, EventKind::Fault)
            .iter()
            .any(|m| m.contains("began"))
    );

    sim.destroy_machine(&ids[2]).await.unwrap();
    let refused = async |method: &str, path: String, status: u16, message: &str| {
        let before = fault_view(&sim);
        let (got, body) = admin_call(&sim, method, &path).await;
        assert_eq!(got, status, "{path}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{path}: {error:?}");
        assert_eq!(fault_view(&sim), before, "{path}");
    };
    let id = &ids[1];
    refused(
        "POST",
        format!("/machines/{id}/fault?kind=flood&for_ms=5"),
        400,
        "unknown fault kind",
    )
    .await;
    refused(
        "POST",
        format!("/machines/{id}/fault?for_ms=5"),
        400,
        "kind=",
    )
    .await;
    refused(
        "POST",
        format!("/machines/{id}/fault?kind=reset"),
        400,
        "for_ms=",
    )
    .await;
    refused(
        "POST",
        format!("/machines/{id}/fault?kind=reset&for_ms=0"),
        400,
        "out of range",
    )
    .await;
    refused(
        "POST",
        format!("/machines/{id}/fault?kind=reset&for_ms=soon"),
        400,
        "not a number",
    )
    .await;
    refused(
        "POST",
        format!("/machines/{id}/fault?kind=reset&for_ms=3600001"),
        400,
        "out of range",
    )
    .await;
    refused(
        "POST",
        format!("/machines/{id}/fault?kind=delay&for_ms=5"),
        400,
        "ms=",
    )
    .await;
    refused(
        "POST",
        format!("/machines/{id}/fault?kind=delay&ms=0&for_ms=5"),
        400,
        "out of range",
    )
    .await;
    refused(
        "POST",
        "/machines/0123456789abcd/fault?kind=reset&for_ms=5".into(),
        404,
        "no Machine",
    )
    .await;
    refused(
        "POST",
        format!("/machines/{}/fault?kind=reset&for_ms=5", ids[2]),
        409,
        "destroyed",
    )
    .await;
    refused(
        "DELETE",
        "/machines/0123456789abcd/fault".into(),
        404,
        "no Machine",
    )
    .await;

    let (status, body) = admin_call(&sim, "DELETE", &format!("/machines/{}/fault", ids[0])).await;
    assert_eq!((status, body["cleared"].as_bool()), (200, Some(true)));
    assert!(sim.machine(&ids[0]).unwrap().fault.is_none());
    sim.shutdown().await;
}
