//! Fly's replay cache (FLY-PROTOCOL.md section 7): the settings it forbids,
//! the markers a cached request carries, and what a replay tells the cache.
//! Under every reading of the unconfirmed points, a request is replayed at
//! most once more and never loops: every replay carries `fly-replay-src` on
//! its next hop, and that marker always stops a replay.

mod common;

use std::time::Duration;

use common::{Req, S, T};
use sticky_core::{
    ConfigError, Env, Fallback, KeySource, Marker, Outcome, Peer, Reason, Replay, ReplayCache,
    Source, Sticky,
};

const HIT: (&str, &str) = ("fly-replay-cache-status", "hit");

fn cached(mode: ReplayCache) -> Sticky {
    Sticky::builder()
        .replay_cache(mode)
        .build(Env::machine(S))
        .unwrap()
}

fn replay_of(d: &sticky_core::Decision) -> (Option<&str>, Option<&str>) {
    let sc = d.short_circuit().expect("a replay");
    (sc.fly_replay(), sc.fly_replay_cache())
}

#[test]
fn cache_meant_replays_refuse_state_timeout_and_fallback() {
    for mode in [
        ReplayCache::Session,
        ReplayCache::Path {
            ttl: Duration::from_secs(60),
        },
    ] {
        let err = Sticky::builder()
            .replay_cache(mode)
            .replay_state("v1")
            .build(Env::default())
            .unwrap_err();
        assert!(matches!(err, ConfigError::CacheConflict { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("replay_cache(") && msg.contains("replay_state"),
            "{msg}"
        );
        let err = Sticky::builder()
            .replay_cache(mode)
            .replay(Replay::instance().timeout(Duration::from_secs(1)))
            .build(Env::default())
            .unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
        let err = Sticky::builder()
            .replay_cache(mode)
            .replay(Replay::instance().fallback(Fallback::PreferSelf))
            .build(Env::default())
            .unwrap_err();
        assert!(err.to_string().contains("fallback"), "{err}");
        // A strict replay without them is cacheable.
        assert!(
            Sticky::builder()
                .replay_cache(mode)
                .replay(Replay::instance())
                .build(Env::machine(S))
                .is_ok()
        );
    }
    // Without a cache they are fine.
    assert!(
        Sticky::builder()
            .replay_state("v1")
            .replay(Replay::instance().timeout(Duration::from_secs(1)))
            .build(Env::machine(S))
            .is_ok()
    );
    let err = Sticky::builder()
        .replay_cache(ReplayCache::Path {
            ttl: Duration::from_secs(5),
        })
        .build(Env::default())
        .unwrap_err();
    assert!(matches!(err, ConfigError::CacheTtlTooShort(_)), "{err}");
    assert!(err.to_string().contains("10 s"));
}

#[test]
fn a_cache_hit_is_not_a_replay() {
    let s = cached(ReplayCache::Session);
    // Home: stick.
    assert_eq!(
        s.decide(&Req::get("/").cookie(S).header(HIT.0, HIT.1)),
        Outcome::Stick(Reason::PinnedHere(Source::Cookie))
    );
    // `bypass`: balanced as usual, so an ordinary replay.
    let d = s.decide(&Req::get("/").cookie(T).header(HIT.0, "bypass"));
    assert_eq!(d.reason(), Reason::PinnedElsewhere(Source::Cookie));
    // `miss` (and anything unknown) was replayed by an app: never again.
    for value in ["miss", "MISS", "something-new"] {
        let d = s.decide(&Req::get("/").cookie(T).header(HIT.0, value));
        assert_eq!(
            d.reason(),
            Reason::AlreadyReplayed(Source::Cookie, Marker::ReplayCache),
            "{value}"
        );
    }
    // A hit that also carries fly-replay-src was replayed: the guard holds.
    let d = s.decide(
        &Req::get("/")
            .cookie(T)
            .header(HIT.0, HIT.1)
            .header("fly-replay-src", "instance=x"),
    );
    assert_eq!(
        d.reason(),
        Reason::AlreadyReplayed(Source::Cookie, Marker::ReplaySrc)
    );
}

/// Row 8 with the cache on: a draining Machine moves the clients the cache
/// sends it (were a hit "already replayed", it would serve them until it
/// dies), and the Machine that receives them re-pins them by row 5.
#[test]
fn a_draining_machine_moves_its_cached_clients() {
    let s = cached(ReplayCache::Session);
    s.drain();
    let d = s.decide(&Req::get("/").cookie(S).header(HIT.0, HIT.1));
    assert_eq!(d.reason(), Reason::Draining);
    assert_eq!(replay_of(&d), (Some("elsewhere=true"), None));
    // The replayed request, on the next Machine: re-pinned there.
    let next = Sticky::builder()
        .replay_cache(ReplayCache::Session)
        .build(Env::machine(T))
        .unwrap();
    let d = next.decide(
        &Req::get("/")
            .cookie(S)
            .header("fly-replay-src", format!("instance={S}")),
    );
    assert!(
        d.set_cookie()
            .unwrap()
            .value()
            .starts_with(&format!("fly-machine-id={T};"))
    );
    // A replay that reached the draining Machine is still served there.
    let d = s.decide(
        &Req::get("/")
            .cookie(S)
            .header("fly-replay-src", "instance=x"),
    );
    assert_eq!(d, Outcome::Stick(Reason::DrainingServedHere));
}

/// A pin whose cached Machine is gone re-pins where the fallback landed.
/// A hit on a pin naming another Machine means the entry keyed by that pin
/// routes elsewhere: made by a replay the cookie did not decide (a key's,
/// under a cookie rule covering the key's path). The replay goes home and
/// invalidates it; kept, it would add a hop to every request of that pin.
#[test]
fn cookie_pins_under_the_session_cache() {
    let s = cached(ReplayCache::Session);
    let gone = Req::get("/")
        .cookie(T)
        .header(HIT.0, HIT.1)
        .header("fly-preferred-instance-unavailable", T);
    let d = s.decide(&gone);
    assert_eq!(
        d.reason(),
        Reason::AlreadyReplayed(Source::Cookie, Marker::PreferredUnavailable)
    );
    assert!(d.set_cookie().is_some(), "re-pinned here");
    let d = s.decide(&Req::get("/").cookie(T).header(HIT.0, HIT.1));
    assert_eq!(
        replay_of(&d),
        (Some("prefer_instance=90801679a10038"), Some("invalidate"))
    );
    // Without a cache the same request is an ordinary replay.
    let d = Sticky::builder()
        .build(Env::machine(S))
        .unwrap()
        .decide(&Req::get("/").cookie(T).header(HIT.0, HIT.1));
    assert_eq!(
        replay_of(&d),
        (Some("prefer_instance=90801679a10038"), None)
    );
}

fn tenants(mode: ReplayCache, me: &str, peers: &[&str]) -> Sticky {
    Sticky::builder()
        .replay_cache(mode)
        .sources([Source::Key, Source::Cookie])
        .key_source(KeySource::Header("x-tenant-id".into()))
        .peers(peers.iter().map(|p| Peer::new(*p)))
        .build(Env::machine(me))
        .unwrap()
}

/// A tenant whose owner changed with the live set: the cache still routes it
/// to the old owner, which replays it to the new one and says the entry is
/// stale; the new owner serves it (its `fly-replay-src` stops any further
/// replay), and the next request makes a fresh entry.
#[test]
fn a_key_that_moved_is_replayed_once_with_invalidate() {
    let all = [S, T];
    let owner_of = |key: &str| {
        tenants(ReplayCache::Session, S, &all)
            .resolve(key.as_bytes())
            .unwrap()
    };
    let key = (0..100)
        .map(|i| format!("tenant-{i}"))
        .find(|k| owner_of(k) == T)
        .unwrap();
    let s = tenants(ReplayCache::Session, S, &all);
    let hit = Req::get("/api/tenant")
        .header("x-tenant-id", &key)
        .header(HIT.0, HIT.1);
    let d = s.decide(&hit);
    assert_eq!(d.reason(), Reason::PinnedElsewhere(Source::Key));
    assert_eq!(
        replay_of(&d),
        (Some("prefer_instance=90801679a10038"), Some("invalidate"))
    );
    // Not routed by the cache: an ordinary replay, which makes the entry.
    let d = s.decide(&Req::get("/api/tenant").header("x-tenant-id", &key));
    assert_eq!(
        replay_of(&d),
        (Some("prefer_instance=90801679a10038"), None)
    );
    // Without a cache mode, nothing is said to a cache.
    let d = tenants(ReplayCache::Off, S, &all).decide(&hit);
    assert_eq!(
        replay_of(&d),
        (Some("prefer_instance=90801679a10038"), None)
    );
    // On the owner, the replayed request is served.
    let owner = tenants(ReplayCache::Session, T, &all);
    let replayed = Req::get("/api/tenant")
        .header("x-tenant-id", &key)
        .header("fly-replay-src", format!("instance={S}"));
    assert_eq!(
        owner.decide(&replayed),
        Outcome::Stick(Reason::PinnedHere(Source::Key))
    );
    // Had the owner's live set disagreed, it still would not replay again.
    let stale_owner = tenants(ReplayCache::Session, T, &[S]);
    assert!(stale_owner.decide(&replayed).runs_handler());
}

/// A cached tenant whose Machine was destroyed: the cache's
/// `prefer_instance` falls back to any Machine, which sends the tenant to
/// its new owner instead of serving it wherever it landed.
#[test]
fn a_cached_key_whose_machine_is_gone_goes_to_its_new_owner() {
    let s = tenants(ReplayCache::Session, S, &[S, T]);
    let key = (0..100)
        .map(|i| format!("t{i}"))
        .find(|k| s.resolve(k.as_bytes()).as_deref() == Some(T))
        .unwrap();
    let fell_back = Req::get("/api/tenant")
        .header("x-tenant-id", &key)
        .header(HIT.0, HIT.1)
        .header("fly-preferred-instance-unavailable", "00000000000000");
    let d = s.decide(&fell_back);
    assert_eq!(
        replay_of(&d),
        (Some("prefer_instance=90801679a10038"), Some("invalidate"))
    );
    // The same fallback after an ordinary replay carries fly-replay-src: served.
    let d = s.decide(&fell_back.clone().header("fly-replay-src", "instance=x"));
    assert!(d.runs_handler());
}

fn rooms(me: &str) -> Sticky {
    Sticky::builder()
        .replay_cache(ReplayCache::Path {
            ttl: Duration::from_secs(120),
        })
        .sources([Source::Key, Source::Cookie])
        .key_source(KeySource::PathSegment("/rooms/".into()))
        .peers([S, T].map(Peer::new))
        .build(Env::machine(me))
        .unwrap()
}

/// Path caching: a room's replay names the room's pattern, so every user of
/// the room goes straight to its Machine.
#[test]
fn a_room_replay_carries_its_path_pattern() {
    let s = rooms(S);
    let room = (0..100)
        .map(|i| format!("room-{i}"))
        .find(|r| s.resolve(r.as_bytes()).as_deref() == Some(T))
        .unwrap();
    let d = s.decide(&Req::get(&format!("/rooms/{room}/chat")));
    let sc = d.short_circuit().unwrap();
    assert_eq!(sc.fly_replay(), Some("prefer_instance=90801679a10038"));
    let pattern = format!("/rooms/{room}/*");
    let headers: Vec<(&str, &[u8])> = sc.headers().collect();
    assert_eq!(
        headers,
        [
            ("fly-replay", &b"prefer_instance=90801679a10038"[..]),
            ("fly-replay-cache", pattern.as_bytes()),
            ("fly-replay-cache-ttl-secs", b"120"),
        ]
    );
    // The bare room path too.
    let d = s.decide(&Req::get(&format!("/rooms/{room}")));
    assert_eq!(replay_of(&d).1, Some(pattern.as_str()));
    // A room owned here is served here.
    let mine = (0..100)
        .map(|i| format!("room-{i}"))
        .find(|r| s.resolve(r.as_bytes()).as_deref() == Some(S))
        .unwrap();
    assert_eq!(
        s.decide(&Req::get(&format!("/rooms/{mine}/chat"))),
        Outcome::Stick(Reason::PinnedHere(Source::Key))
    );
    // Session mode never writes a pattern.
    let session = Sticky::builder()
        .replay_cache(ReplayCache::Session)
        .key_source(KeySource::PathSegment("/rooms/".into()))
        .peers([S, T].map(Peer::new))
        .build(Env::machine(S))
        .unwrap();
    let d = session.decide(&Req::get(&format!("/rooms/{room}/chat")));
    assert_eq!(replay_of(&d).1, None);
}

#[test]
fn path_segment_prefixes_are_checked() {
    for bad in [
        "rooms/",
        "/rooms",
        "/ro oms/",
        "/rooms/*/",
        "/a//b/",
        "/../",
        "/a;b/",
    ] {
        let err = Sticky::builder()
            .key_source(KeySource::PathSegment(bad.into()))
            .build(Env::default())
            .unwrap_err();
        assert!(matches!(err, ConfigError::InvalidPathPrefix(_)), "{bad}");
        assert!(err.to_string().contains("PathSegment"), "{err}");
    }
    for good in ["/", "/rooms/", "/api/v1/docs/"] {
        assert!(
            Sticky::builder()
                .key_source(KeySource::PathSegment(good.into()))
                .build(Env::default())
                .is_ok(),
            "{good}"
        );
    }
}
