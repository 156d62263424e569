//! `Builder::replay_unknown_length`: bodies of unknown length (chunked, or
//! HTTP/2 without `content-length`, as every gRPC call) may be replayed.

mod common;

use common::{Req, S, T};
use sticky_core::{BodyProblem, Env, KeySource, Outcome, Reason, Source, Sticky};

fn grpc_call(room: &str) -> Req {
    Req::new("POST", "/rooms.v1.Rooms/Join")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-room-id", room)
}

#[test]
fn off_by_default_a_body_of_unknown_length_is_served_here() {
    let s = Sticky::builder().build(Env::machine(S)).unwrap();
    let req = Req::new("POST", "/upload").cookie(T);
    assert_eq!(
        s.decide(&req).outcome(),
        &Outcome::Stick(Reason::BodyNotReplayable(
            Source::Cookie,
            BodyProblem::UnknownLength
        ))
    );
}

#[test]
fn on_a_body_of_unknown_length_is_replayed_and_nothing_is_read_first() {
    let s = Sticky::builder()
        .replay_unknown_length(true)
        .build(Env::machine(S))
        .unwrap();
    for req in [
        Req::new("POST", "/upload").cookie(T),
        Req::new("PUT", "/upload")
            .cookie(T)
            .header("transfer-encoding", "chunked"),
    ] {
        let d = s.decide(&req);
        let sc = d
            .short_circuit()
            .unwrap_or_else(|| panic!("{req:?}: {d:?}"));
        assert_eq!(
            sc.fly_replay(),
            Some(format!("prefer_instance={T}").as_str())
        );
        // The length is unknown: the adapter reads nothing before answering.
        assert_eq!(sc.body_to_read(), 0);
    }
    // A declared length still counts: over 1 MB, or malformed, is row 6.
    let too_large = Req::new("POST", "/upload")
        .cookie(T)
        .header("content-length", "1000001");
    assert_eq!(
        s.decide(&too_large).outcome(),
        &Outcome::Stick(Reason::BodyNotReplayable(
            Source::Cookie,
            BodyProblem::TooLarge
        ))
    );
    let malformed = Req::new("POST", "/upload")
        .cookie(T)
        .header("content-length", "12, 13");
    assert!(matches!(
        s.decide(&malformed).outcome(),
        Outcome::Stick(Reason::BodyNotReplayable(_, BodyProblem::UnknownLength))
    ));
}

#[test]
fn a_grpc_call_is_pinned_by_its_key_only_with_it_on() {
    let peers = [S, T].map(sticky_core::Peer::new);
    let build = |on: bool| {
        Sticky::builder()
            .sources([Source::Key])
            .key_source(KeySource::Header("x-room-id".into()))
            .peers(peers.clone())
            .replay_unknown_length(on)
            .build(Env::machine(S))
            .unwrap()
    };
    let (off, on) = (build(false), build(true));
    // A room that hashes to the other Machine.
    let room = (0..100)
        .map(|i| format!("room-{i}"))
        .find(|r| {
            on.decide(&grpc_call(r))
                .short_circuit()
                .is_some_and(|sc| sc.fly_replay().is_some())
        })
        .expect("some room hashes to T");
    assert!(off.decide(&grpc_call(&room)).short_circuit().is_none());
    let d = on.decide(&grpc_call(&room));
    assert_eq!(
        d.short_circuit().and_then(|sc| sc.fly_replay()),
        Some(format!("prefer_instance={T}").as_str())
    );
}
