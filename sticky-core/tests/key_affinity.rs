//! Key affinity: rendezvous hashing over the live Machines, and key-pinned
//! requests through the decision table.

mod common;

use common::Req;
use sticky_core::{
    BodyProblem, ConfigError, Env, KeySource, Marker, Outcome, Peer, PeerSet, Reason, Source,
    Sticky,
};

/// N distinct Machine IDs.
fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{:014x}", 0x1000_0000_0000_u64 * (i as u64 + 1) + 0xabcd))
        .collect()
}

fn owners(peers: &PeerSet, keys: usize) -> Vec<String> {
    (0..keys)
        .map(|k| {
            peers
                .pick(format!("tenant-{k}").as_bytes(), None)
                .unwrap()
                .id()
                .to_owned()
        })
        .collect()
}

const KEYS: usize = 10_000;

#[test]
fn removing_a_machine_moves_only_its_keys() {
    for n in 3..=20 {
        let all = ids(n);
        let before = owners(&PeerSet::new(all.iter().cloned().map(Peer::new)), KEYS);
        for gone in [0, n / 2, n - 1] {
            let after = owners(
                &PeerSet::new(
                    all.iter()
                        .enumerate()
                        .filter(|(i, _)| *i != gone)
                        .map(|(_, id)| Peer::new(id.clone())),
                ),
                KEYS,
            );
            for (b, a) in before.iter().zip(&after) {
                if *b != all[gone] {
                    assert_eq!(a, b, "n={n}: a key of a remaining Machine moved");
                } else {
                    assert_ne!(a, &all[gone]);
                }
            }
        }
    }
}

#[test]
fn adding_a_machine_moves_at_most_its_share() {
    for n in 3..=20 {
        let all = ids(n + 1);
        let before = owners(&PeerSet::new(all[..n].iter().cloned().map(Peer::new)), KEYS);
        let after = owners(&PeerSet::new(all.iter().cloned().map(Peer::new)), KEYS);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        // Every moved key went to the newcomer.
        assert!(
            before
                .iter()
                .zip(&after)
                .all(|(b, a)| b == a || *a == all[n])
        );
        let share = moved as f64 / KEYS as f64;
        let expected = 1.0 / (n + 1) as f64;
        assert!(
            share <= expected + 0.02,
            "n={n}: {share:.4} of keys moved, expected about {expected:.4}"
        );
    }
}

#[test]
fn shares_are_within_20_percent_of_even() {
    for n in 3..=20 {
        let all = ids(n);
        let owners = owners(&PeerSet::new(all.iter().cloned().map(Peer::new)), KEYS);
        let even = KEYS as f64 / n as f64;
        for id in &all {
            let got = owners.iter().filter(|o| *o == id).count() as f64;
            assert!(
                (got - even).abs() <= 0.2 * even,
                "n={n}: {id} got {got}, even is {even:.0}"
            );
        }
    }
}

fn keyed(me: &str, peers: &[&str]) -> Sticky {
    Sticky::builder()
        .sources([Source::Key, Source::Cookie, Source::Query])
        .key_source(KeySource::Header("x-tenant-id".into()))
        .peers(peers.iter().map(|p| Peer::new(*p)))
        .build(Env::machine(me))
        .unwrap()
}

/// A key that resolves to `want` among `peers`.
fn key_for(sticky: &Sticky, want: &str) -> String {
    (0..10_000)
        .map(|k| format!("t{k}"))
        .find(|k| sticky.resolve(k.as_bytes()).as_deref() == Some(want))
        .unwrap()
}

const A: &str = "148ed599c14189";
const B: &str = "90801679a10038";
const C: &str = "e784079b449483";

#[test]
fn key_pinned_requests_follow_the_table() {
    let s = keyed(A, &[A, B, C]);
    let here = key_for(&s, A);
    let there = key_for(&s, B);

    let d = s.decide(&Req::get("/api/tenant").header("x-tenant-id", &here));
    assert_eq!(d, Outcome::Stick(Reason::PinnedHere(Source::Key)));

    let d = s.decide(
        &Req::get("/api/tenant")
            .header("x-tenant-id", &there)
            .cookie(A),
    );
    assert_eq!(
        d.reason(),
        Reason::PinnedElsewhere(Source::Key),
        "key first, then the cookie"
    );
    let value = d.short_circuit().unwrap().fly_replay().unwrap();
    assert_eq!(value, format!("prefer_instance={B}"));
    assert!(!value.contains(&there), "the key itself is never sent");

    // Loop guard: already replayed, serve here without pinning a cookie.
    let d = s.decide(
        &Req::get("/")
            .header("x-tenant-id", &there)
            .header(Marker::ReplaySrc.header(), "instance=x"),
    );
    assert_eq!(
        d,
        Outcome::Stick(Reason::AlreadyReplayed(Source::Key, Marker::ReplaySrc))
    );
    // Large bodies are served here.
    let d = s.decide(
        &Req::new("POST", "/")
            .header("x-tenant-id", &there)
            .header("content-length", "2000000"),
    );
    assert_eq!(
        d,
        Outcome::Stick(Reason::BodyNotReplayable(
            Source::Key,
            BodyProblem::TooLarge
        ))
    );
    // No key: the cookie decides.
    let d = s.decide(&Req::get("/").cookie(B));
    assert_eq!(d.reason(), Reason::PinnedElsewhere(Source::Cookie));
    // Drain moves key-pinned-here requests too.
    s.drain();
    let d = s.decide(&Req::get("/").header("x-tenant-id", &here));
    assert_eq!(
        d.short_circuit().unwrap().fly_replay(),
        Some("elsewhere=true")
    );
}

#[test]
fn the_live_set_is_an_input() {
    let s = keyed(A, &[]);
    let req = Req::get("/").header("x-tenant-id", "acme");
    // No live set yet: the key yields nothing, the cookie source pins here.
    assert_eq!(s.decide(&req).reason(), Reason::NoTarget);
    assert_eq!(
        s.set_peers([A, B, "not-a-machine", "x;app=evil"].map(Peer::new)),
        2,
        "invalid IDs are dropped"
    );
    assert!(!s.peers().contains("x;app=evil"));
    let owner = s.resolve(b"acme").unwrap();
    assert!(owner == A || owner == B);
    s.set_peers([Peer::new(C)]);
    assert_eq!(
        s.decide(&req).short_circuit().unwrap().fly_replay(),
        Some(&format!("prefer_instance={C}") as &str)
    );
}

#[test]
fn key_only_configurations_set_no_cookie() {
    let s = Sticky::builder()
        .sources([Source::Key])
        .key_source(KeySource::Header("x-tenant-id".into()))
        .peers([A, B].map(Peer::new))
        .build(Env::machine(A))
        .unwrap();
    assert_eq!(s.decide(&Req::get("/")), Outcome::Stick(Reason::NoTarget));
}

#[test]
fn key_sources() {
    let peers = [A, B, C];
    let build = |source: KeySource| {
        Sticky::builder()
            .sources([Source::Key])
            .key_source(source)
            .peers(peers.map(Peer::new))
            .build(Env::machine(A))
            .unwrap()
    };
    let expect = |s: &Sticky, req: Req, key: &str| {
        let owner = s.resolve(key.as_bytes()).unwrap();
        let d = s.decide(&req);
        let want = if owner == A {
            Reason::PinnedHere(Source::Key)
        } else {
            Reason::PinnedElsewhere(Source::Key)
        };
        assert_eq!(d.reason(), want, "key {key:?}");
    };
    expect(
        &build(KeySource::Query("room".into())),
        Req::get("/ws?a=1&room=lobby"),
        "lobby",
    );
    expect(
        &build(KeySource::Cookie("session".into())),
        Req::get("/").header("cookie", "a=1; session=s3cr3t"),
        "s3cr3t",
    );
    let ip = build(KeySource::ClientIp);
    expect(
        &ip,
        Req::get("/")
            .header("fly-client-ip", "203.0.113.7")
            .header("x-forwarded-for", "198.51.100.1, 203.0.113.7"),
        "203.0.113.7",
    );
    // Only Fly-Client-IP counts, never the client-controlled X-Forwarded-For.
    assert_eq!(
        ip.decide(&Req::get("/").header("x-forwarded-for", "198.51.100.1"))
            .reason(),
        Reason::NoTarget
    );
    let custom = build(KeySource::custom(|r| {
        r.path()
            .strip_prefix("/docs/")
            .map(|d| d.split('/').next().unwrap_or("").to_owned())
    }));
    expect(&custom, Req::get("/docs/readme/edit"), "readme");
    // Empty keys count as none.
    assert_eq!(
        build(KeySource::Header("x-k".into()))
            .decide(&Req::get("/").header("x-k", "  "))
            .reason(),
        Reason::NoTarget
    );
}

#[test]
fn region_preference() {
    let s = Sticky::builder()
        .sources([Source::Key])
        .key_source(KeySource::Header("x-k".into()))
        .prefer_region(true)
        .peers([
            Peer::new(A).with_region("iad"),
            Peer::new(B).with_region("ord"),
            Peer::new(C).with_region("ord"),
        ])
        .build(Env::machine(B).with_region("ord"))
        .unwrap();
    for k in 0..200 {
        assert_ne!(s.resolve(format!("k{k}").as_bytes()).as_deref(), Some(A));
    }
}

#[test]
fn key_config_errors_name_the_setting() {
    for source in [
        KeySource::Header("bad header".into()),
        KeySource::Query("a&b".into()),
        KeySource::Cookie("".into()),
    ] {
        let err = Sticky::builder()
            .key_source(source)
            .build(Env::machine(A))
            .unwrap_err();
        assert!(matches!(err, ConfigError::InvalidKeySource(_)));
        assert!(err.to_string().contains("key_source"));
    }
    let err = Sticky::builder()
        .sources([Source::Key])
        .build(Env::machine(A))
        .unwrap_err();
    assert!(err.to_string().contains("sources"));
}
