//! example-tonic end to end through flysim with `h2_backend` and 3
//! Machines: every call for one room lands on one Machine (unary and
//! server streaming), a destroyed Machine's rooms move to live ones with no
//! failed call after the first, and a call without `x-room-id` is served
//! wherever it lands.

use std::io;
use std::time::Duration;

use example_tonic::{JoinReply, JoinRequest, RoomsClient, WatchRequest, in_room};
use flysim::{Config, FlySim, Instance, Launch, MachineEnv};
use futures_util::StreamExt;
use sticky_axum::sticky_core::{Env, Peer, PeerSet};
use tonic::transport::Channel;

/// How often the Machines refresh their live set from flysim's DNS.
const REFRESH: Duration = Duration::from_millis(50);

/// One Machine: example-tonic's server, its live set from flysim's DNS.
fn launch() -> Launch {
    Launch::in_process(|env: MachineEnv| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let sticky = example_tonic::sticky(
            Env::machine(env.machine_id.clone())
                .with_app(env.app_name.clone())
                .with_region(env.region.clone()),
        )
        .map_err(io::Error::other)?;
        let server = env
            .dns_server
            .ok_or_else(|| io::Error::other("flysim serves no DNS"))?;
        let config = sticky_peers::DnsConfig {
            server,
            app: env.app_name.clone(),
            refresh: REFRESH,
            timeout: Duration::from_secs(1),
        };
        let engine = sticky.clone();
        let provider =
            tokio::task::spawn_blocking(move || sticky_peers::Provider::dns(&engine, config))
                .await
                .map_err(io::Error::other)?
                .map_err(io::Error::other)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(example_tonic::serve(listener, sticky, async move {
            let _ = stopped.await;
        }));
        Ok(Instance::new(addr, move || {
            let _ = stop.send(());
            drop(provider);
        }))
    })
}

async fn start() -> (FlySim, RoomsClient<Channel>) {
    let config = Config::default()
        .machines(3)
        .h2_backend(true)
        .quiet(true)
        .dead_target_delay(Duration::from_millis(300));
    let sim = FlySim::start(config, launch())
        .await
        .expect("flysim starts");
    let channel = Channel::from_shared(sim.url())
        .expect("a URI")
        .connect()
        .await
        .expect("a gRPC channel to flysim");
    (sim, RoomsClient::new(channel))
}

async fn join(client: &mut RoomsClient<Channel>, room: &str) -> Result<JoinReply, tonic::Status> {
    let req = in_room(
        room,
        JoinRequest {
            name: "test".into(),
        },
    )?;
    Ok(client.join(req).await?.into_inner())
}

/// The Machine `room` hashes to among `live`.
fn owner(live: &[String], room: &str) -> String {
    PeerSet::new(live.iter().cloned().map(Peer::new))
        .pick(room.as_bytes(), None)
        .map(|p| p.id().to_owned())
        .expect("a live set")
}

/// Joins each room until every one is served by its owner among `live`
/// (the Machines' DNS refresh is asynchronous); every call must succeed
/// meanwhile. Returns the number of joins made per room.
async fn settle(client: &mut RoomsClient<Channel>, live: &[String], rooms: &[String]) -> usize {
    for round in 1..=100 {
        let mut wrong = Vec::new();
        for room in rooms {
            let reply = join(client, room).await.expect("a join while settling");
            assert_eq!(&reply.room, room);
            if reply.machine != owner(live, room) {
                wrong.push(room.clone());
            }
        }
        if wrong.is_empty() {
            return round;
        }
        tokio::time::sleep(REFRESH).await;
    }
    panic!("rooms never settled on their owners among {live:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_for_a_room_lands_on_its_machine() {
    let (sim, mut client) = start().await;
    let ids = sim.machine_ids();
    let rooms: Vec<String> = (0..12).map(|i| format!("room-{i}")).collect();
    settle(&mut client, &ids, &rooms).await;
    let mut owners = std::collections::HashSet::new();
    for room in &rooms {
        let home = owner(&ids, room);
        owners.insert(home.clone());
        // The room's count lives on its Machine: consecutive joins see it
        // grow by one, whichever Machine each call reached first.
        let first = join(&mut client, room).await.expect("join");
        assert_eq!(first.machine, home, "{room}");
        for k in 1..=5 {
            let reply = join(&mut client, room).await.expect("join");
            assert_eq!(reply.machine, home, "{room}");
            assert_eq!(reply.members, first.members + k, "{room}: {reply:?}");
        }
        // Server streaming: the whole stream comes from the room's Machine.
        let req = in_room(room, WatchRequest { count: 4 }).unwrap();
        let events: Vec<_> = client
            .watch(req)
            .await
            .expect("watch")
            .into_inner()
            .collect()
            .await;
        assert_eq!(events.len(), 4);
        for (i, event) in events.into_iter().enumerate() {
            let event = event.expect("an event");
            assert_eq!(event.machine, home, "{room}");
            assert_eq!(event.seq, i as u64 + 1);
            assert_eq!(event.members, first.members + 5);
        }
    }
    assert!(owners.len() >= 2, "12 rooms all hashed to one Machine");
    // Replays did the routing: Machines answered fly-replay.
    let replays: u64 = sim.machines().iter().map(|m| m.replays_sent).sum();
    assert!(replays > 0, "{}", sim.report());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_without_a_room_is_served_where_it_lands() {
    let (sim, mut client) = start().await;
    let mut served = std::collections::HashSet::new();
    for _ in 0..9 {
        let reply = client
            .join(JoinRequest {
                name: "lobby".into(),
            })
            .await
            .expect("a call without x-room-id")
            .into_inner();
        assert_eq!(reply.room, "");
        assert_eq!(reply.members, 0);
        served.insert(reply.machine);
    }
    // Round-robin balancing spreads them: no key, no replay.
    assert_eq!(served.len(), 3, "{served:?}");
    let replays: u64 = sim.machines().iter().map(|m| m.replays_sent).sum();
    assert_eq!(replays, 0, "{}", sim.report());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destroyed_machines_rooms_move_to_live_ones_with_no_failed_call_after_the_first() {
    let (sim, mut client) = start().await;
    let ids = sim.machine_ids();
    let rooms: Vec<String> = (0..24).map(|i| format!("r{i}")).collect();
    settle(&mut client, &ids, &rooms).await;
    let victim = owner(&ids, &rooms[0]);
    let moved: Vec<&String> = rooms.iter().filter(|r| owner(&ids, r) == victim).collect();
    sim.destroy_machine(&victim).await.expect("destroy");
    let live: Vec<String> = ids.iter().filter(|id| **id != victim).cloned().collect();
    let mut calls = 0usize;
    let mut failed_after_first = Vec::new();
    let mut settled = false;
    for _ in 0..100 {
        let mut wrong = 0;
        for room in &rooms {
            calls += 1;
            match join(&mut client, room).await {
                Ok(reply) => {
                    assert_ne!(reply.machine, victim, "served by a destroyed Machine");
                    let home = owner(&live, room);
                    if owner(&ids, room) != victim {
                        // Rendezvous hashing: the other rooms never move.
                        assert_eq!(reply.machine, home, "{room} moved");
                    } else if reply.machine != home {
                        wrong += 1;
                    }
                }
                Err(status) if calls == 1 => {
                    eprintln!("the first call after the destroy failed: {status}");
                }
                Err(status) => failed_after_first.push(format!("{room}: {status}")),
            }
        }
        if wrong == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(REFRESH).await;
    }
    assert!(
        failed_after_first.is_empty(),
        "calls failed after the first: {failed_after_first:?}"
    );
    assert!(settled, "{moved:?} never settled on live Machines");
    assert!(!moved.is_empty());
    // Once moved, a room's calls stay on its new Machine.
    for room in &moved {
        let home = owner(&live, room);
        for _ in 0..3 {
            assert_eq!(join(&mut client, room).await.expect("join").machine, home);
        }
    }
    sim.shutdown().await;
}
