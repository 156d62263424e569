//! What Fly's replay cache changes (flysim with the rules of
//! `examples/fly.toml`): after one replay a pinned client is routed straight
//! home, and every way a home can go away still ends with the client served
//! and re-pinned, never looping on a stale entry.

use std::time::Duration;

use sticky_core::{Peer, PeerSet};

use super::{Cluster, Kind, Scenario, tenants_settle, with_cluster};
use crate::TENANT_HEADER;
use crate::client::{Client, Request, send, websocket_echo};

/// Sends `GET /` until the cache holds an entry for this client's pin (the
/// round-robin balancer sends the second request elsewhere, so it is
/// replayed and remembered); returns the home.
async fn cached_home(c: &Cluster, client: &mut Client) -> Result<String, String> {
    let home = client
        .send(c.front(), Request::get("/"))
        .await?
        .machine()
        .ok_or("no machine")?;
    for _ in 0..6 {
        let res = client.send(c.front(), Request::get("/")).await?;
        ensure!(
            res.machine().as_deref() == Some(home.as_str()),
            "left home {home} before any fault: {}",
            res.summary()
        );
        if c.cache().entries > 0 {
            return Ok(home);
        }
    }
    Err(format!(
        "no cache entry after 6 pinned requests: {:?}",
        c.cache()
    ))
}

/// Sends `n` pinned requests that must all land on `home`; returns the
/// replays the apps answered meanwhile.
async fn stays_home(c: &Cluster, client: &mut Client, home: &str, n: usize) -> Result<u64, String> {
    let before = c.replays();
    for i in 0..n {
        let res = client.send(c.front(), Request::get("/")).await?;
        ensure!(
            res.status == 200 && res.machine().as_deref() == Some(home),
            "request {i} left home {home}: {}",
            res.summary()
        );
        ensure!(
            res.one("set-cookie").is_none(),
            "request {i} re-pinned: {}",
            res.summary()
        );
    }
    Ok(c.replays() - before)
}

/// Waits until every Machine, asked directly, maps each room to its owner
/// in `set`: serves it when it owns it, else answers the replay to the
/// owner. Before that, a Machine with a partial live set could send a room
/// elsewhere, and the cache would remember that stale choice.
async fn live_sets_settled(c: &Cluster, set: &PeerSet, rooms: &[String]) -> Result<(), String> {
    let mut wrong = Vec::new();
    for _ in 0..100 {
        wrong.clear();
        for m in c.sim.machines() {
            let Some(addr) = m.addr else { continue };
            for room in rooms {
                let owner = set
                    .pick(room.as_bytes(), None)
                    .map(Peer::id)
                    .unwrap_or_default();
                let res = send(addr, &Request::get(format!("/rooms/{room}"))).await?;
                let expected = if owner == m.id {
                    res.status == 200 && res.machine().as_deref() == Some(owner)
                } else {
                    res.status == 307
                        && res.one("fly-replay")
                            == Some(&format!("prefer_instance={owner}") as &str)
                };
                if !expected {
                    wrong.push(format!("{} for {room}: {}", m.id, res.summary()));
                }
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("the live sets never settled: {}", wrong.join("; ")))
}

/// Visits each room until it is served by its owner in `set` (the live set
/// reaches each Machine asynchronously) after a replay, so that the cache
/// holds its path entry. A room that lands on its owner directly is tried
/// again after a `GET /health`, which moves the round-robin balancer on.
async fn rooms_settle(c: &Cluster, set: &PeerSet, rooms: &[String]) -> Result<(), String> {
    live_sets_settled(c, set, rooms).await?;
    for room in rooms {
        let owner = set.pick(room.as_bytes(), None).map(Peer::id);
        let mut last = None;
        for _ in 0..100 {
            let replays = c.replays();
            let res = send(c.front(), &Request::get(format!("/rooms/{room}"))).await?;
            ensure!(res.status == 200, "{room}: {}", res.summary());
            if res.machine().as_deref() == owner && c.replays() > replays {
                last = None;
                break;
            }
            last = Some(res.summary());
            send(c.front(), &Request::get("/health")).await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(last) = last {
            return Err(format!(
                "{room} was never replayed to its owner {owner:?}: {last}"
            ));
        }
    }
    Ok(())
}

pub(super) fn all() -> Vec<Scenario> {
    vec![
        scenario!(
            "cluster-room-path-cached",
            Cluster,
            "every user of a room lands on its Machine; its first replay names /rooms/<room>/* and the cache routes the rest",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let ids = c.sim.machine_ids();
                        let set = PeerSet::new(ids.iter().cloned().map(Peer::new));
                        let rooms: Vec<String> = (0..6).map(|r| format!("room-{r}")).collect();
                        // The live set reaches each Machine asynchronously.
                        rooms_settle(c, &set, &rooms).await?;
                        let created = c.cache().created;
                        let mut per_room = vec![0u64; rooms.len()];
                        for visitor in 0..12 {
                            for (i, room) in rooms.iter().enumerate() {
                                let owner = set.pick(room.as_bytes(), None).map(Peer::id);
                                let replays = c.replays();
                                // Strangers and pinned users alike: the room decides.
                                let mut req = Request::get(format!("/rooms/{room}"));
                                if visitor % 2 == 1 {
                                    req = req.cookie(&ids[visitor % ids.len()]);
                                }
                                let res = send(c.front(), &req).await?;
                                ensure!(
                                    res.status == 200
                                        && res.machine().as_deref() == owner
                                        && res.text().ends_with(&format!(" room={room}")),
                                    "{room} (owner {owner:?}): {}",
                                    res.summary()
                                );
                                per_room[i] += c.replays() - replays;
                            }
                        }
                        ensure!(
                            per_room.iter().all(|n| *n == 0),
                            "after a room's first replay the cache should route its users: replays per room {per_room:?} ({:?})",
                            c.cache()
                        );
                        ensure!(
                            c.cache().hits > 0 && c.cache().created >= created,
                            "no path entry routed a room: {:?}",
                            c.cache()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cache-routes-pinned-client",
            Cache,
            "after its first replay a pinned client is routed home by the cache: 1 replay in 30 requests",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let mut client = Client::default();
                        let home = client
                            .send(c.front(), Request::get("/"))
                            .await?
                            .machine()
                            .ok_or("no machine")?;
                        let replays = stays_home(c, &mut client, &home, 30).await?;
                        let stats = c.cache();
                        ensure!(
                            replays == 1,
                            "the cache should leave exactly the first replay, saw {replays} ({stats:?})"
                        );
                        ensure!(
                            stats.hits >= 27 && stats.misses >= 1 && stats.created >= 1,
                            "the rest should be cache hits: {stats:?}"
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cache-destroyed-home-repins",
            Cache,
            "a cached client whose home is destroyed is served elsewhere, re-pinned, and cached anew",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let mut client = Client::default();
                        let home = cached_home(c, &mut client).await?;
                        c.sim
                            .destroy_machine(&home)
                            .await
                            .map_err(|e| format!("destroy: {e}"))?;
                        let res = client.send(c.front(), Request::get("/")).await?;
                        ensure!(res.status == 200, "after destroy: {}", res.summary());
                        let new_home = res.machine().ok_or("no machine")?;
                        ensure!(
                            new_home != home
                                && res.pinned_to().as_deref() == Some(&new_home as &str),
                            "not re-pinned away from the destroyed {home}: {}",
                            res.summary()
                        );
                        let replays = stays_home(c, &mut client, &new_home, 10).await?;
                        ensure!(
                            replays <= 1,
                            "the new pin should be cached after one replay, saw {replays}"
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cache-drain-moves-cached-clients",
            Cache,
            "a draining Machine moves the clients the cache sends it, re-pinned, and they stay moved",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let mut client = Client::default();
                        let home = cached_home(c, &mut client).await?;
                        let hits = c.cache().hits;
                        c.drain(&home)?;
                        let mut moved = None;
                        for _ in 0..50 {
                            let res = client.send(c.front(), Request::get("/")).await?;
                            ensure!(res.status == 200, "while draining: {}", res.summary());
                            if res.machine().as_deref() != Some(&home as &str) {
                                moved = Some(res);
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let res =
                            moved.ok_or("the cached client never left the draining Machine")?;
                        ensure!(
                            c.cache().hits > hits,
                            "the move should start from a cache hit: {:?}",
                            c.cache()
                        );
                        let new_home = res.machine().ok_or("no machine")?;
                        ensure!(
                            res.pinned_to().as_deref() == Some(&new_home as &str),
                            "not re-pinned: {}",
                            res.summary()
                        );
                        let replays = stays_home(c, &mut client, &new_home, 10).await?;
                        ensure!(
                            replays <= 1,
                            "the new pin should be cached, saw {replays} replays"
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cache-websocket-lands-home",
            Cache,
            "a WebSocket handshake with the pin cookie alone is routed home by the cache",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let mut client = Client::default();
                        let home = cached_home(c, &mut client).await?;
                        for i in 0..3 {
                            let (hits, replays) = (c.cache().hits, c.replays());
                            let echo = websocket_echo(
                                c.front(),
                                "/ws",
                                client.cookie.as_deref(),
                                &format!("c{i}"),
                            )
                            .await?;
                            ensure!(
                                echo.as_deref().ok() == Some(&format!("{home}:c{i}") as &str),
                                "socket {i} did not land home {home}: {echo:?}"
                            );
                            ensure!(
                                c.cache().hits == hits + 1 && c.replays() == replays,
                                "socket {i} should be one cache hit and no replay: {:?}",
                                c.cache()
                            );
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cache-tenants-across-live-set-change",
            Cache,
            "tenants cached by x-tenant-id follow their owner when a Machine joins: stale entries are invalidated, not replayed forever",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let ids = c.sim.machine_ids();
                        let tenants: Vec<String> = (0..13).map(|t| format!("tenant-{t}")).collect();
                        // Three rounds, so that most tenants get an entry.
                        for _ in 0..3 {
                            tenants_settle(c, &ids, &tenants).await?;
                        }
                        let before = PeerSet::new(ids.iter().cloned().map(Peer::new));
                        let added = c.sim.add_machine().await.map_err(|e| format!("add: {e}"))?;
                        let mut grown = ids.clone();
                        grown.push(added.clone());
                        let after = PeerSet::new(grown.iter().cloned().map(Peer::new));
                        let moved = tenants
                            .iter()
                            .filter(|t| {
                                before.pick(t.as_bytes(), None).map(Peer::id)
                                    != after.pick(t.as_bytes(), None).map(Peer::id)
                            })
                            .count();
                        tenants_settle(c, &grown, &tenants).await?;
                        // A stale entry would cost a replay on every request;
                        // an invalidated one costs at most one more (the
                        // replay that caches the new owner).
                        let mut per_tenant = vec![0u64; tenants.len()];
                        for _ in 0..6 {
                            for (i, tenant) in tenants.iter().enumerate() {
                                let replays = c.replays();
                                let res = send(
                                    c.front(),
                                    &Request::get("/api/tenant").header(TENANT_HEADER, tenant),
                                )
                                .await?;
                                ensure!(res.status == 200, "{tenant}: {}", res.summary());
                                per_tenant[i] += c.replays() - replays;
                            }
                        }
                        let looping: Vec<String> = tenants
                            .iter()
                            .zip(&per_tenant)
                            .filter(|(_, n)| **n > 1)
                            .map(|(t, n)| format!("{t}: {n} replays"))
                            .collect();
                        ensure!(
                            looping.is_empty(),
                            "tenants replayed on every request after the change ({moved} moved, {:?}): {}",
                            c.cache(),
                            looping.join(", ")
                        );
                        ensure!(
                            c.cache().hits > 0,
                            "tenants should be routed by the cache: {:?}",
                            c.cache()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
    ]
}
