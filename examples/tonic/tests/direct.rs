//! example-tonic reached directly, with no proxy in front: what a client
//! sees of a replay, and that the room key is the only thing that moves a
//! call.

use example_tonic::{JoinRequest, RoomsClient, in_room};
use sticky_axum::sticky_core::{Env, Peer, PeerSet};
use tonic::transport::Channel;

const S: &str = "148ed599c14189";
const T: &str = "90801679a10038";

async fn serve_one() -> RoomsClient<Channel> {
    let sticky = example_tonic::sticky(Env::machine(S)).unwrap();
    sticky.set_peers([Peer::new(S), Peer::new(T)]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(example_tonic::serve(
        listener,
        sticky,
        std::future::pending(),
    ));
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    RoomsClient::new(channel)
}

fn room_on(machine: &str) -> String {
    let set = PeerSet::new([Peer::new(S), Peer::new(T)]);
    (0..100)
        .map(|i| format!("room-{i}"))
        .find(|r| set.pick(r.as_bytes(), None).map(Peer::id) == Some(machine))
        .expect("a room for each Machine")
}

#[tokio::test]
async fn a_room_held_here_is_served_and_one_held_elsewhere_is_a_replay_the_client_cannot_follow() {
    let mut client = serve_one().await;
    let here = room_on(S);
    let reply = client
        .join(in_room(&here, JoinRequest { name: "a".into() }).unwrap())
        .await
        .expect("a room held here is served")
        .into_inner();
    assert_eq!((reply.machine.as_str(), reply.members), (S, 1));
    // Without Fly's proxy nobody follows the fly-replay: the client gets
    // the replay's HTTP status (307), not a gRPC answer.
    let elsewhere = room_on(T);
    let status = client
        .join(in_room(&elsewhere, JoinRequest { name: "b".into() }).unwrap())
        .await
        .expect_err("a call for a room held elsewhere is answered with a replay");
    assert_ne!(status.code(), tonic::Code::Ok);
    assert!(
        status.message().contains("307"),
        "{:?}: {}",
        status.code(),
        status.message()
    );
    // Without a room: served here, no replay.
    let reply = client
        .join(JoinRequest { name: "c".into() })
        .await
        .expect("no key: served where it lands")
        .into_inner();
    assert_eq!((reply.machine.as_str(), reply.room.as_str()), (S, ""));
}

#[test]
fn a_room_that_is_not_a_header_value_is_refused_before_sending() {
    let status = in_room("bad\nroom", JoinRequest::default()).unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}
