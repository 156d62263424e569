//! The threat model, one section per threat, each test named after the
//! protection it proves. README.md ("Security") indexes them; the property
//! tests (`properties.rs`) and the fuzz target (`fuzz/`) cover the same
//! rules over arbitrary input, these tests state them on the attacks one by
//! one. Every test here fails if its protection is removed from the core.

mod common;

use common::{Req, S, T};
use sticky_core::{
    Decision, Env, KeySource, Marker, Outcome, Peer, Reason, Rejected, Replay, Source, Sticky,
    TargetFormat, Unavailable,
};

/// A third Machine of the same app.
const U: &str = "e784079b449483";

fn machine(id: &str) -> Sticky {
    Sticky::builder().build(Env::machine(id)).unwrap()
}

fn fly_replay(d: &Decision) -> Option<&str> {
    d.short_circuit().and_then(|sc| sc.fly_replay())
}

/// The request was refused as a target: no replay, the handler runs, and
/// this same client is pinned here.
fn assert_refused(d: &Decision, source: Source, what: &str) {
    assert_eq!(
        d.reason(),
        Reason::InvalidTarget(source, Rejected::Format),
        "{what}: {d:?}"
    );
    assert!(fly_replay(d).is_none(), "{what} reached fly-replay: {d:?}");
    assert!(
        d.set_cookie()
            .is_some_and(|c| c.value().starts_with(&format!("fly-machine-id={S};"))),
        "{what}: {d:?}"
    );
}

/// Field-injection attempts around another Machine's ID.
fn injections(id: &str) -> Vec<String> {
    [
        ";app=evil",
        "%3Bapp%3Devil",
        "%3bapp%3devil",
        ",app=evil",
        "%2Capp%3Devil",
        ";region=\"sjc,any\"",
        "%3Bregion%3Dsjc",
        "=app",
        " app=evil",
        "\tapp=evil",
        "\r\nfly-replay: app=evil",
        "\\",
        "\"",
    ]
    .iter()
    .flat_map(|inj| [format!("{id}{inj}"), format!("{inj}{id}")])
    .collect()
}

// ----- 1. fly-replay field injection (`;app=`, raw or percent-encoded) -----

#[test]
fn injection_in_the_cookie_is_refused_or_split_at_the_pair() {
    let s = machine(S);
    for value in injections(T) {
        let d = s.decide(&Req::get("/").cookie(&value));
        match value.split_once(';') {
            // In a Cookie field `;` ends the pair: `T;app=evil` is our cookie
            // `T` followed by another cookie `app`. The replay names T alone.
            Some((first, _)) if first == T => {
                assert_eq!(fly_replay(&d), Some("prefer_instance=90801679a10038"));
            }
            _ => assert_refused(&d, Source::Cookie, &value),
        }
    }
}

#[test]
fn injection_in_the_query_is_refused_never_decoded() {
    let s = machine(S);
    for value in injections(T) {
        if value.contains(['\r', '\n', ' ', '\t']) {
            continue; // not a possible request target
        }
        let d = s.decide(&Req::get(&format!("/ws?fly_instance_id={value}")));
        assert_refused(&d, Source::Query, &value);
    }
    // `&` ends the parameter: `app=evil` is another parameter, never a field.
    let d = s.decide(&Req::get(&format!("/ws?fly_instance_id={T}&app=evil")));
    assert_eq!(fly_replay(&d), Some("prefer_instance=90801679a10038"));
}

#[test]
fn injection_in_a_header_source_is_refused() {
    let s = Sticky::builder()
        .sources([Source::Header, Source::Cookie])
        .header_source("x-machine")
        .build(Env::machine(S))
        .unwrap();
    for value in injections(T) {
        let d = s.decide(&Req::get("/").header("x-machine", &value));
        assert_refused(&d, Source::Header, &value);
    }
}

#[test]
fn no_custom_target_format_admits_a_separator() {
    // A format that accepts everything still cannot let a field through.
    let s = Sticky::builder()
        .target_format(TargetFormat::custom(|_| true))
        .sources([Source::Header, Source::Query, Source::Cookie])
        .header_source("x-machine")
        .build(Env::machine(S))
        .unwrap();
    let long = "a".repeat(sticky_core::MAX_TARGET_LEN + 1);
    for value in injections("m-2").iter().map(String::as_str).chain([
        "m-2\u{0}",
        "m-\u{e9}",
        long.as_str(),
        "",
    ]) {
        let d = s.decide(&Req::get("/").header("x-machine", value));
        assert!(fly_replay(&d).is_none(), "{value:?}: {d:?}");
        assert_eq!(d.reason().row(), 3, "{value:?}: {d:?}");
    }
    // What it admits is used verbatim, as a single field.
    let d = s.decide(&Req::get("/").header("x-machine", "m-2"));
    assert_eq!(fly_replay(&d), Some("prefer_instance=m-2"));
}

// ----- 2. Cookie tossing: duplicate names from a sibling subdomain -----

#[test]
fn tossed_cookie_cannot_move_a_client_pinned_here() {
    let s = machine(S);
    // Whatever the order the browser sends them in, and across fields.
    for req in [
        Req::get("/").header("cookie", format!("fly-machine-id={T}; fly-machine-id={S}")),
        Req::get("/").header("cookie", format!("fly-machine-id={S}; fly-machine-id={T}")),
        Req::get("/")
            .header("cookie", format!("fly-machine-id={T}"))
            .header("cookie", format!("fly-machine-id={S}")),
    ] {
        assert_eq!(
            s.decide(&req),
            Outcome::Stick(Reason::PinnedHere(Source::Cookie)),
            "{req:?}"
        );
    }
}

#[test]
fn unsigned_duplicates_elsewhere_follow_the_first_valid_value() {
    // On a third Machine neither value names it: the first valid one wins,
    // deterministically. Unsigned, a tossed valid ID sent first can move the
    // victim to another Machine of the same app (never outside it); signed
    // cookies and the `__Host-` prefix close this (below).
    let u = machine(U);
    let d = u.decide(&Req::get("/").header(
        "cookie",
        format!("fly-machine-id=junk; fly-machine-id={S}; fly-machine-id={T}"),
    ));
    assert_eq!(fly_replay(&d), Some("prefer_instance=148ed599c14189"));
}

#[cfg(feature = "signed")]
#[test]
fn signed_cookies_ignore_tossed_forgeries() {
    const KEY: &[u8] = b"the app's signing key, at least thirty-two bytes";
    const FOREIGN: &[u8] = b"an attacker's own key, also thirty-two bytes long";
    let signed = |id: &str, key: &[u8]| {
        Sticky::builder()
            .signing_keys([key])
            .build(Env::machine(id))
            .unwrap()
    };
    let issue = |id: &str, key: &[u8]| {
        let d = signed(id, key).decide_at(&Req::get("/"), 1000);
        let set = d.set_cookie().unwrap().value().to_owned();
        set.split(';').next().unwrap()["fly-machine-id=".len()..].to_owned()
    };
    let genuine = issue(S, KEY);
    let forgeries = [
        T.to_owned(),              // a plain ID
        issue(T, FOREIGN),         // signed with a key the app does not hold
        genuine.replacen(S, T, 1), // the victim's pin, edited
    ];
    for forged in &forgeries {
        // The forgery comes first, as a tossed cookie with a longer Path would.
        let cookie = format!("fly-machine-id={forged}; fly-machine-id={genuine}");
        let req = Req::get("/").header("cookie", &cookie);
        // Home: served, nothing moves.
        let d = signed(S, KEY).decide_at(&req, 1001);
        assert_eq!(d.reason(), Reason::PinnedHere(Source::Cookie), "{forged:?}");
        // The Machine the forgery names does not take the victim...
        let d = signed(T, KEY).decide_at(&req, 1001);
        assert_eq!(
            fly_replay(&d),
            Some("prefer_instance=148ed599c14189"),
            "{forged:?}"
        );
        // ...and neither does any other: the genuine pin decides.
        let d = signed(U, KEY).decide_at(&req, 1001);
        assert_eq!(
            fly_replay(&d),
            Some("prefer_instance=148ed599c14189"),
            "{forged:?}"
        );
        // Alone, a forgery is no target at all.
        let alone = Req::get("/").header("cookie", format!("fly-machine-id={forged}"));
        let d = signed(U, KEY).decide_at(&alone, 1001);
        assert_eq!(d.reason().row(), 3, "{forged:?}: {d:?}");
        assert!(fly_replay(&d).is_none());
    }
}

#[test]
fn host_prefix_cookie_cannot_be_set_by_a_sibling_domain() {
    // Browsers only accept a `__Host-` cookie that is Secure, has Path=/ and
    // no Domain, so a sibling subdomain cannot toss one. The builder keeps
    // the pin within those rules.
    let s = Sticky::builder()
        .cookie_name("__Host-fly-machine-id")
        .build(Env::machine(S))
        .unwrap();
    let d = s.decide(&Req::get("/"));
    let c = d.set_cookie().unwrap().value();
    assert!(c.starts_with(&format!("__Host-fly-machine-id={S};")), "{c}");
    assert!(
        c.contains("; Secure") && c.contains("Path=/;") && !c.contains("Domain"),
        "{c}"
    );
    let with_domain = Sticky::builder()
        .cookie_name("__Host-fly-machine-id")
        .cookie_domain("example.com")
        .build(Env::machine(S));
    assert!(with_domain.is_err());
    let with_path = Sticky::builder()
        .cookie_name("__Host-fly-machine-id")
        .cookie_path("/app")
        .build(Env::machine(S));
    assert!(with_path.is_err());
}

// ----- 3. Spoofed Fly headers -----

#[test]
fn spoofed_replay_markers_only_serve_the_spoofer_here() {
    let s = machine(S);
    for marker in Marker::ALL {
        // Pinned elsewhere: served here and this same client re-pinned, never
        // a replay, never anything for another client.
        let d = s.decide(
            &Req::get("/")
                .cookie(T)
                .header(marker.header(), "instance=x"),
        );
        assert_eq!(d.reason(), Reason::AlreadyReplayed(Source::Cookie, marker));
        assert!(d.runs_handler() && fly_replay(&d).is_none());
        assert!(
            d.set_cookie()
                .unwrap()
                .value()
                .starts_with(&format!("fly-machine-id={S};"))
        );
        // Pinned here: the marker changes nothing.
        let d = s.decide(
            &Req::get("/")
                .cookie(S)
                .header(marker.header(), "instance=x"),
        );
        assert_eq!(d, Outcome::Stick(Reason::PinnedHere(Source::Cookie)));
    }
}

#[test]
fn client_routing_headers_are_never_read() {
    // `fly-force-instance-id` and friends are Fly's proxy's business: the
    // engine never takes a target from them.
    let s = machine(S);
    let spoof = |req: Req| {
        req.header("fly-force-instance-id", T)
            .header("fly-prefer-instance-id", T)
            .header("fly-force-region", "sjc")
            .header("fly-prefer-region", "sjc")
            .header("fly-region", "sjc")
            .header("fly-request-id", "x")
    };
    for req in [
        Req::get("/"),
        Req::get("/").cookie(S),
        Req::get("/").cookie(U),
    ] {
        assert_eq!(s.decide(&spoof(req.clone())), s.decide(&req), "{req:?}");
    }
}

#[test]
fn forwarded_proto_only_changes_the_secure_flag_of_the_requesters_cookie() {
    // Fly's edge sets X-Forwarded-Proto; a spoofed one can only make the
    // spoofer's own cookie Secure or not. Routing never depends on it.
    let s = machine(S);
    let https = |req: Req| req.header("x-forwarded-proto", "https");
    for req in [
        Req::get("/").cookie(S),
        Req::get("/").cookie(T),
        Req::get("/").cookie("bad"),
    ] {
        let (plain, spoofed) = (s.decide(&req), s.decide(&https(req.clone())));
        assert_eq!(plain.reason(), spoofed.reason(), "{req:?}");
        assert_eq!(fly_replay(&plain), fly_replay(&spoofed), "{req:?}");
    }
    let plain = s.decide(&Req::get("/"));
    let spoofed = s.decide(&https(Req::get("/")));
    let (plain, spoofed) = (
        plain.set_cookie().unwrap().value(),
        spoofed.set_cookie().unwrap().value(),
    );
    assert!(
        !plain.contains("Secure") && spoofed.contains("; Secure"),
        "{spoofed}"
    );
    assert_eq!(spoofed.replacen("; Secure", "", 1), plain);
}

#[test]
fn client_ip_key_reads_fly_client_ip_never_x_forwarded_for() {
    let s = Sticky::builder()
        .sources([Source::Key, Source::Cookie])
        .key_source(KeySource::ClientIp)
        .peers([S, T, U].map(Peer::new))
        .build(Env::machine(S))
        .unwrap();
    let edge = "203.0.113.7";
    let home = s.resolve(edge.as_bytes()).unwrap();
    // The leftmost X-Forwarded-For is whatever the client wrote: ignored.
    for xff in ["198.51.100.1", "198.51.100.1, 203.0.113.7", "10.0.0.1"] {
        let d = s.decide(
            &Req::get("/")
                .header("fly-client-ip", edge)
                .header("x-forwarded-for", xff),
        );
        match fly_replay(&d) {
            Some(v) => assert_eq!(v, format!("prefer_instance={home}"), "{xff}"),
            None => assert_eq!(home, S, "{xff}"),
        }
        let alone = s.decide(&Req::get("/").header("x-forwarded-for", xff));
        assert_eq!(alone.reason(), Reason::NoTarget, "{xff}");
    }
}

// ----- 4. Shared caches storing Set-Cookie -----

#[test]
fn every_pin_is_marked_private_for_shared_caches() {
    let s = Sticky::builder()
        .sources([Source::Cookie, Source::Query])
        .build(Env::machine(S))
        .unwrap();
    // Every row that pins: no target, an invalid one, a re-pin after a replay.
    for req in [
        Req::get("/"),
        Req::get("/").cookie("junk"),
        Req::get("/")
            .cookie(T)
            .header("fly-replay-src", "instance=x"),
    ] {
        let d = s.decide(&req);
        let c = d.set_cookie().unwrap_or_else(|| panic!("{req:?}: {d:?}"));
        let added: Vec<_> = c.headers(false).collect();
        assert_eq!(
            added,
            [
                ("set-cookie", c.value().as_bytes()),
                ("cache-control", &b"private"[..])
            ],
            "{req:?}"
        );
        // A response with its own Cache-Control keeps it: the app decided.
        assert_eq!(c.headers(true).count(), 1);
    }
    // The http 1.x helper adapters use applies the same rule.
    #[cfg(feature = "http")]
    {
        let d = s.decide(&Req::get("/"));
        let mut headers = http::HeaderMap::new();
        d.set_cookie().unwrap().apply(&mut headers);
        assert_eq!(headers["cache-control"], "private");
    }
}

#[test]
fn replays_and_refusals_never_carry_set_cookie() {
    // The proxy throws a replay response away; a cookie on it would be lost
    // at best and cached at worst.
    let refuse = Sticky::builder()
        .unavailable(Unavailable::Refuse)
        .build(Env::machine(S))
        .unwrap();
    let drained = machine(S);
    drained.drain();
    for d in [
        machine(S).decide(&Req::get("/").cookie(T)),
        refuse.decide(
            &Req::get("/")
                .cookie(T)
                .header("fly-replay-src", "instance=x"),
        ),
        drained.decide(&Req::get("/")),
    ] {
        let sc = d.short_circuit().unwrap_or_else(|| panic!("{d:?}"));
        assert!(d.set_cookie().is_none());
        let names: Vec<_> = sc.headers().map(|(n, _)| n).collect();
        assert!(names.iter().all(|n| *n == "fly-replay"), "{names:?}");
    }
}

// ----- 5. Replay loops -----

#[test]
fn a_request_with_any_replay_marker_is_never_replayed() {
    let engines = || {
        let env = || Env::machine(S);
        [
            machine(S),
            Sticky::builder()
                .unavailable(Unavailable::Refuse)
                .build(env())
                .unwrap(),
            Sticky::builder()
                .replay(Replay::instance())
                .sources([Source::Header, Source::Query, Source::Cookie])
                .header_source("x-machine")
                .build(env())
                .unwrap(),
            Sticky::builder()
                .sources([Source::Key, Source::Cookie])
                .key_source(KeySource::Header("x-tenant-id".into()))
                .peers([T].map(Peer::new))
                .build(env())
                .unwrap(),
        ]
    };
    let requests = [
        Req::get("/"),
        Req::get("/").cookie(S),
        Req::get("/").cookie(T),
        Req::get(&format!("/ws?fly_instance_id={T}")),
        Req::get("/").header("x-machine", T),
        Req::get("/").header("x-tenant-id", "acme"),
    ];
    for marker in Marker::ALL {
        for drain in [false, true] {
            for s in engines() {
                if drain {
                    s.drain();
                }
                for req in &requests {
                    // Without the marker most of these replay (row 7 or 8).
                    let marked = req.clone().header(marker.header(), "instance=x");
                    let d = s.decide(&marked);
                    assert!(
                        !matches!(d.outcome(), Outcome::Replay(..)),
                        "{marker:?} drain={drain}: {req:?} -> {d:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_draining_machine_replays_elsewhere_and_the_next_one_serves() {
    let a = machine(S);
    a.drain();
    let req = Req::get("/").cookie(S);
    // `elsewhere=true`, no instance: the proxy cannot pick this Machine again.
    assert_eq!(fly_replay(&a.decide(&req)), Some("elsewhere=true"));
    // The replayed request carries fly-replay-src: the next Machine serves it
    // and re-pins the client there, even though the cookie names A.
    let replayed = req.header("fly-replay-src", format!("instance={S};region=iad"));
    let d = machine(T).decide(&replayed);
    assert_eq!(
        d.reason(),
        Reason::AlreadyReplayed(Source::Cookie, Marker::ReplaySrc)
    );
    assert!(
        d.set_cookie()
            .unwrap()
            .value()
            .starts_with(&format!("fly-machine-id={T};"))
    );
    // If that one is draining too, it serves rather than bouncing again.
    let b = machine(T);
    b.drain();
    assert_eq!(
        b.decide(&replayed),
        Outcome::Stick(Reason::DrainingServedHere)
    );
}

// ----- 6. Client data never reaches a host name, a URL or another app -----

/// Values a client controls, in every source the engine reads.
fn hostile() -> Vec<String> {
    let mut v = injections(T);
    v.extend(
        [
            "app=internal-admin",
            "internal-admin",
            "region=sjc",
            "http://169.254.169.254/",
            "90801679a10038.vm.other-app.internal",
            "other-app.internal",
            "[fdaa::3]:53",
            "90801679A10038",
            "90801679a1003",
            "90801679a100380",
        ]
        .map(str::to_owned),
    );
    v
}

#[test]
fn replay_targets_are_validated_machine_ids_only() {
    let s = Sticky::builder()
        .sources([Source::Header, Source::Query, Source::Cookie])
        .header_source("x-machine")
        .build(Env::machine(S))
        .unwrap();
    let mut replays = 0;
    for value in hostile() {
        let encoded: String = value
            .bytes()
            .map(|b| match b {
                b'&' | b'#' | b' ' | b'\t' | b'\r' | b'\n' => format!("%{b:02X}"),
                _ => (b as char).to_string(),
            })
            .collect();
        for req in [
            Req::get("/").cookie(&value),
            Req::get(&format!("/?fly_instance_id={encoded}")),
            Req::get("/").header("x-machine", &value),
        ] {
            let d = s.decide(&req);
            if let Some(v) = fly_replay(&d) {
                replays += 1;
                // Only ever the ID of a Machine of this app, as one field.
                assert_eq!(v, "prefer_instance=90801679a10038", "{req:?}");
            }
        }
    }
    // Only the cookie pair `T;...` (split at `;`) names a valid Machine.
    assert!(replays > 0);
}

#[test]
fn keys_never_reach_fly_replay_only_live_machine_ids_do() {
    let s = Sticky::builder()
        .sources([Source::Key, Source::Cookie])
        .key_source(KeySource::Header("x-tenant-id".into()))
        .peers([S, T, U].map(Peer::new))
        .build(Env::machine(S))
        .unwrap();
    for key in hostile() {
        let d = s.decide(&Req::get("/").header("x-tenant-id", &key));
        if let Some(v) = fly_replay(&d) {
            let id = v
                .strip_prefix("prefer_instance=")
                .unwrap_or_else(|| panic!("{v}"));
            assert!(id == T || id == U, "{key:?} -> {v:?}");
        }
    }
}

#[test]
fn live_set_entries_that_are_not_machine_ids_are_dropped() {
    // The live set comes from DNS or configuration, not the client, but it is
    // validated like any target before it can reach a header.
    let s = machine(S);
    let kept = s.set_peers(
        [
            T,
            "x;app=internal-admin",
            "other-app.internal",
            "http://169.254.169.254/",
            "",
            "90801679A10038",
        ]
        .map(Peer::new),
    );
    assert_eq!(kept, 1);
    assert_eq!(s.peers().len(), 1);
    for key in hostile() {
        assert_eq!(s.resolve(key.as_bytes()).as_deref(), Some(T));
    }
}

// ----- 6. Fly's replay cache -----

/// A forged `fly-replay-cache-status: hit` is no replay marker, so it can
/// cost at most the ordinary replay of this same client (whose next hop
/// carries `fly-replay-src` and is served). Only a key source in a cache
/// mode adds `invalidate`, and only for the entry of the key the client
/// itself sent.
#[test]
fn a_forged_cache_hit_replays_the_same_client_at_most_once() {
    use sticky_core::ReplayCache;
    let keyed = Sticky::builder()
        .replay_cache(ReplayCache::Session)
        .sources([Source::Key, Source::Cookie])
        .key_source(KeySource::Header("x-tenant-id".into()))
        .peers([T].map(Peer::new))
        .build(Env::machine(S))
        .unwrap();
    for value in hostile() {
        let forged = Req::get("/")
            .cookie(&value)
            .header("x-tenant-id", &value)
            .header("fly-replay-cache-status", "hit");
        let d = keyed.decide(&forged);
        if let Some(sc) = d.short_circuit() {
            assert_eq!(sc.fly_replay(), Some("prefer_instance=90801679a10038"));
            assert!(matches!(sc.fly_replay_cache(), None | Some("invalidate")));
        }
        let next = forged.header("fly-replay-src", format!("instance={S}"));
        assert!(keyed.decide(&next).runs_handler(), "{value:?}");
    }
}

/// A room segment reaches `fly-replay-cache` only when it is 1 to 64
/// letters, digits, `-` or `_`: nothing can end the header's value, start a
/// glob, climb a directory or widen the pattern to other rooms.
#[test]
fn room_segments_reach_the_cache_header_only_when_strict() {
    use sticky_core::ReplayCache;
    let s = Sticky::builder()
        .replay_cache(ReplayCache::Path {
            ttl: std::time::Duration::from_secs(60),
        })
        .sources([Source::Key, Source::Cookie])
        .key_source(KeySource::PathSegment("/rooms/".into()))
        .peers([T].map(Peer::new))
        .build(Env::machine(S))
        .unwrap();
    let long = "a".repeat(65);
    let bad = [
        "a;b",
        "a,b",
        "a=b",
        "a%2Fb",
        "..",
        "%2e%2e",
        ".",
        "a*",
        "*",
        "a b",
        "a\"b",
        "a\\b",
        "",
        "caf\u{e9}",
        "a\r\nx-evil: 1",
        &long,
    ];
    for segment in bad {
        for path in [format!("/rooms/{segment}"), format!("/rooms/{segment}/x")] {
            let d = s.decide(&Req::get(&path));
            assert!(
                d.short_circuit()
                    .is_none_or(|sc| sc.fly_replay_cache().is_none()),
                "{path:?} -> {d:?}"
            );
            assert_ne!(d.reason(), Reason::PinnedElsewhere(Source::Key), "{path:?}");
        }
    }
    let max = "Z9-_".repeat(16);
    let d = s.decide(&Req::get(&format!("/rooms/{max}/x")));
    let want = format!("/rooms/{max}/*");
    assert_eq!(
        d.short_circuit().unwrap().fly_replay_cache(),
        Some(want.as_str())
    );
}
