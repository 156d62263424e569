//! One case per row of the decision table (DESIGN.md), both policies of rows
//! 5 and 6, drain, sources, cookie attributes and path rules.

mod common;

use std::time::Duration;

use common::{Req, S, T};
use sticky_core::{
    Action, BodyProblem, Decision, Env, Fallback, LargeBody, Marker, Outcome, Reason, Rejected,
    Replay, SameSite, Secure, Source, Sticky, TargetFormat, Unavailable,
};

fn sticky() -> Sticky {
    Sticky::builder().build(Env::machine(S)).unwrap()
}

fn replay_value(d: &Decision) -> Option<&str> {
    d.short_circuit().and_then(|sc| sc.fly_replay())
}

fn cookie_of(d: &Decision) -> &str {
    d.set_cookie().expect("a Set-Cookie").value()
}

#[test]
fn row1_not_on_fly_touches_nothing() {
    let s = Sticky::builder().build(Env::default()).unwrap();
    assert!(!s.is_enabled());
    for req in [
        Req::get("/"),
        Req::get("/").cookie(T),
        Req::new("POST", "/x"),
    ] {
        assert_eq!(s.decide(&req), Outcome::Stick(Reason::Disabled));
    }
    s.drain();
    assert_eq!(
        s.decide(&Req::get("/").cookie(S)),
        Outcome::Stick(Reason::Disabled)
    );
}

#[test]
fn row2_paths_methods_predicate_and_preflight() {
    let s = Sticky::builder()
        .include(["/app/**", "/ws", "/files/*"])
        .exclude(["/app/static/**"])
        .skip_methods(["HEAD"])
        .skip_if(|r| r.header("x-internal").is_some())
        .build(Env::machine(S))
        .unwrap();
    let elsewhere = |path: &str| Req::get(path).cookie(T);
    assert_eq!(
        s.decide(&elsewhere("/other")).reason(),
        Reason::PathNotIncluded
    );
    assert_eq!(
        s.decide(&elsewhere("/app/static/a.css")).reason(),
        Reason::PathExcluded
    );
    assert_eq!(
        s.decide(&elsewhere("/files/a/b")).reason(),
        Reason::PathNotIncluded,
        "* does not cross /"
    );
    assert_eq!(
        s.decide(&elsewhere("/files/a")).reason(),
        Reason::PinnedElsewhere(Source::Cookie)
    );
    assert_eq!(
        s.decide(&elsewhere("/app/deep/er")).reason(),
        Reason::PinnedElsewhere(Source::Cookie),
        "** crosses /"
    );
    assert_eq!(
        s.decide(&Req::new("HEAD", "/ws").cookie(T)).reason(),
        Reason::MethodSkipped
    );
    assert_eq!(
        s.decide(&elsewhere("/ws").header("X-Internal", "1"))
            .reason(),
        Reason::Skipped
    );
    let preflight = Req::new("OPTIONS", "/ws")
        .cookie(T)
        .header("origin", "https://a.example")
        .header("access-control-request-method", "POST");
    assert_eq!(s.decide(&preflight), Outcome::Stick(Reason::Preflight));
    // A plain OPTIONS is not a preflight.
    assert_eq!(
        s.decide(&Req::new("OPTIONS", "/ws").cookie(T))
            .reason()
            .row(),
        7
    );

    let s = Sticky::builder()
        .skip_preflight(false)
        .build(Env::machine(S))
        .unwrap();
    assert_eq!(s.decide(&preflight).reason().row(), 7);
}

#[test]
fn row3_no_or_invalid_target_pins_here() {
    let s = sticky();
    let d = s.decide(&Req::get("/"));
    assert_eq!(d.reason(), Reason::NoTarget);
    assert_eq!(
        cookie_of(&d),
        format!("fly-machine-id={S}; HttpOnly; SameSite=Lax; Path=/; Max-Age=518400")
    );

    for bad in [
        "",
        "ABCDEF01234567",
        "148ed599c1418",
        "148ed599c141890",
        "x;app=other",
        "90801679a10038%3Bapp%3Dx",
        "\"90801679a10038\"",
    ] {
        let d = s.decide(&Req::get("/").cookie(bad));
        assert_eq!(
            d.reason(),
            Reason::InvalidTarget(Source::Cookie, Rejected::Format),
            "{bad:?}"
        );
        assert!(
            cookie_of(&d).starts_with(&format!("fly-machine-id={S};")),
            "{bad:?}"
        );
    }
}

#[test]
fn row4_pinned_here_sticks_without_cookie() {
    let s = sticky();
    assert_eq!(
        s.decide(&Req::get("/").cookie(S)),
        Outcome::Stick(Reason::PinnedHere(Source::Cookie))
    );
    let refreshing = Sticky::builder()
        .refresh(sticky_core::Refresh::EveryRequest)
        .build(Env::machine(S))
        .unwrap();
    let d = refreshing.decide(&Req::get("/").cookie(S));
    assert_eq!(d.reason(), Reason::Refreshed);
    assert!(cookie_of(&d).starts_with("fly-machine-id=148ed599c14189;"));
}

#[test]
fn row5_already_replayed_repins_by_default() {
    let s = sticky();
    for marker in Marker::ALL {
        let d = s.decide(
            &Req::get("/")
                .cookie(T)
                .header(marker.header(), "instance=x"),
        );
        assert_eq!(d.reason(), Reason::AlreadyReplayed(Source::Cookie, marker));
        assert!(cookie_of(&d).starts_with(&format!("fly-machine-id={S};")));
        assert!(d.runs_handler());
    }
}

#[test]
fn row5_refuse_policy_answers_503() {
    let s = Sticky::builder()
        .unavailable(Unavailable::Refuse)
        .build(Env::machine(S))
        .unwrap();
    let d = s.decide(
        &Req::get("/")
            .cookie(T)
            .header("fly-replay-failed", "reason=timeout"),
    );
    assert!(matches!(d.outcome(), Outcome::Refuse(..)));
    let sc = d.short_circuit().unwrap();
    assert_eq!(sc.status(), 503);
    assert_eq!(sc.headers().count(), 0);
}

#[test]
fn row6_body_that_cannot_be_replayed_is_served_here() {
    let s = sticky();
    let cases = [
        (
            Req::new("POST", "/upload")
                .cookie(T)
                .header("content-length", "1000001"),
            BodyProblem::TooLarge,
        ),
        (
            Req::new("POST", "/upload")
                .cookie(T)
                .header("transfer-encoding", "chunked"),
            BodyProblem::UnknownLength,
        ),
        (
            Req::new("POST", "/upload").cookie(T),
            BodyProblem::UnknownLength,
        ),
        (
            Req::new("PUT", "/upload")
                .cookie(T)
                .header("content-length", "12, 13"),
            BodyProblem::UnknownLength,
        ),
        (
            Req::new("PATCH", "/upload")
                .cookie(T)
                .header("content-length", "-1"),
            BodyProblem::UnknownLength,
        ),
        (
            Req::get("/")
                .cookie(T)
                .header("transfer-encoding", "chunked"),
            BodyProblem::UnknownLength,
        ),
    ];
    for (req, problem) in cases {
        assert_eq!(
            s.decide(&req),
            Outcome::Stick(Reason::BodyNotReplayable(Source::Cookie, problem)),
            "{req:?}"
        );
    }
    // At the limit, and repeated equal lengths, still replay.
    for req in [
        Req::new("POST", "/upload")
            .cookie(T)
            .header("content-length", "1000000"),
        Req::new("POST", "/upload")
            .cookie(T)
            .header("content-length", "5")
            .header("content-length", "5"),
        Req::new("DELETE", "/x").cookie(T),
    ] {
        assert_eq!(
            s.decide(&req).reason(),
            Reason::PinnedElsewhere(Source::Cookie),
            "{req:?}"
        );
    }
}

#[test]
fn row6_refuse_policy_answers_413() {
    let s = Sticky::builder()
        .large_body(LargeBody::Refuse)
        .body_limit(10)
        .build(Env::machine(S))
        .unwrap();
    let d = s.decide(
        &Req::new("POST", "/")
            .cookie(T)
            .header("content-length", "11"),
    );
    let sc = d.short_circuit().unwrap();
    assert_eq!(sc.status(), 413);
    assert_eq!(
        sc.body_to_read(),
        0,
        "a body too large to replay is not read"
    );
    assert!(!d.runs_handler());
}

#[test]
fn replays_name_the_body_to_read_first() {
    let s = sticky();
    let upload = |len: &str| {
        Req::new("POST", "/upload")
            .cookie(T)
            .header("content-length", len)
    };
    let body = |d: Decision| d.short_circuit().unwrap().body_to_read();
    assert_eq!(body(s.decide(&upload("1000000"))), 1_000_000);
    assert_eq!(body(s.decide(&upload("0"))), 0);
    assert_eq!(body(s.decide(&Req::get("/").cookie(T))), 0);
    s.drain();
    assert_eq!(body(s.decide(&upload("42").cookie(S))), 42);
}

#[test]
fn row7_replays_to_the_target() {
    let s = sticky();
    let d = s.decide(&Req::get("/").cookie(T));
    assert_eq!(d.reason(), Reason::PinnedElsewhere(Source::Cookie));
    let sc = d.short_circuit().unwrap();
    assert_eq!(sc.status(), 307);
    assert_eq!(sc.fly_replay(), Some("prefer_instance=90801679a10038"));
    assert!(
        d.set_cookie().is_none(),
        "no Set-Cookie on a replay: the proxy drops it"
    );

    // WebSocket upgrades replay like anything else, never 101.
    let ws = Req::get("/ws")
        .cookie(T)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade");
    assert_eq!(s.decide(&ws).short_circuit().unwrap().status(), 307);
}

#[test]
fn row7_strict_instance_with_timeout_fallback_state_and_status() {
    let s = Sticky::builder()
        .replay(
            Replay::instance()
                .timeout(Duration::from_millis(800))
                .fallback(Fallback::PreferSelf),
        )
        .replay_state("sticky")
        .replay_status(409)
        .build(Env::machine(S))
        .unwrap();
    let d = s.decide(&Req::get("/").cookie(T));
    assert_eq!(d.short_circuit().unwrap().status(), 409);
    assert_eq!(
        replay_value(&d),
        Some("instance=90801679a10038;timeout=800ms;fallback=prefer_self;state=sticky")
    );
    let s = Sticky::builder()
        .replay(
            Replay::instance()
                .timeout(Duration::from_secs(10))
                .fallback(Fallback::ForceSelf),
        )
        .build(Env::machine(S))
        .unwrap();
    assert_eq!(
        replay_value(&s.decide(&Req::get("/").cookie(T))),
        Some("instance=90801679a10038;timeout=10s;fallback=force_self")
    );
}

#[test]
fn row8_draining_moves_new_and_pinned_here_requests() {
    let s = sticky();
    let handle = s.clone();
    std::thread::spawn(move || handle.drain()).join().unwrap();
    assert!(s.is_draining());
    for req in [Req::get("/").cookie(S), Req::get("/")] {
        let d = s.decide(&req);
        assert_eq!(d.reason(), Reason::Draining);
        assert_eq!(replay_value(&d), Some("elsewhere=true"));
    }
    // Pinned elsewhere: the ordinary replay.
    assert_eq!(
        replay_value(&s.decide(&Req::get("/").cookie(T))),
        Some("prefer_instance=90801679a10038")
    );
    // Cannot move: serve here, do not pin a draining Machine.
    let replayed = Req::get("/")
        .cookie(S)
        .header("fly-replay-src", "instance=x");
    assert_eq!(
        s.decide(&replayed),
        Outcome::Stick(Reason::DrainingServedHere)
    );
    let big = Req::new("POST", "/").header("content-length", "2000000");
    assert_eq!(s.decide(&big), Outcome::Stick(Reason::DrainingServedHere));
    s.undrain();
    assert!(!s.decide(&Req::get("/").cookie(S)).closes_connection());
    assert_eq!(
        s.decide(&Req::get("/").cookie(S)).reason(),
        Reason::PinnedHere(Source::Cookie)
    );
}

#[test]
fn duplicate_cookies_prefer_this_machine_then_the_first_valid() {
    let s = sticky();
    let d = s
        .decide(&Req::get("/").header("cookie", format!("fly-machine-id={T}; fly-machine-id={S}")));
    assert_eq!(d.reason(), Reason::PinnedHere(Source::Cookie));
    let d = s
        .decide(&Req::get("/").header("cookie", format!("fly-machine-id=bad; fly-machine-id={T}")));
    assert_eq!(replay_value(&d), Some("prefer_instance=90801679a10038"));
    // Several Cookie fields (HTTP/2 splits them).
    let d = s.decide(
        &Req::get("/")
            .header("cookie", "a=1")
            .header("cookie", format!("fly-machine-id={S}")),
    );
    assert_eq!(d.reason(), Reason::PinnedHere(Source::Cookie));
}

#[test]
fn sources_in_configured_order() {
    let s = sticky();
    let ws = Req::get(&format!("/ws?x=1&fly_instance_id={T}"));
    assert_eq!(
        s.decide(&ws).reason(),
        Reason::PinnedElsewhere(Source::Query)
    );
    // Cookie first by default.
    assert_eq!(
        s.decide(&ws.clone().cookie(S)).reason(),
        Reason::PinnedHere(Source::Cookie)
    );
    // An invalid cookie falls through to the query.
    assert_eq!(
        s.decide(&ws.clone().cookie("zzz")).reason(),
        Reason::PinnedElsewhere(Source::Query)
    );
    // Percent-encoded query values are never decoded.
    let d = s.decide(&Req::get("/ws?fly_instance_id=90801679a10038%3Bapp%3Dx"));
    assert_eq!(
        d.reason(),
        Reason::InvalidTarget(Source::Query, Rejected::Format)
    );

    let s = Sticky::builder()
        .sources([Source::Query, Source::Cookie])
        .header_source("X-Sticky-Machine")
        .build(Env::machine(S))
        .unwrap();
    assert_eq!(
        s.decide(&ws.clone().cookie(S)).reason(),
        Reason::PinnedElsewhere(Source::Query)
    );
    let h = Req::get("/").header("x-sticky-machine", format!(" {T} "));
    assert_eq!(
        s.decide(&h).reason(),
        Reason::PinnedElsewhere(Source::Header)
    );
}

#[test]
fn custom_target_format_narrows_but_never_admits_separators() {
    let s = Sticky::builder()
        .target_format(TargetFormat::custom(|v| v.starts_with("m-")))
        .build(Env::machine("m-1"))
        .unwrap();
    assert_eq!(
        replay_value(&s.decide(&Req::get("/").cookie("m-2"))),
        Some("prefer_instance=m-2")
    );
    // In a Cookie field `;` ends the pair, so `m-2;app=x` is the cookie
    // `m-2` and another cookie `app`: no field can be injected.
    assert_eq!(
        replay_value(&s.decide(&Req::get("/").cookie("m-2;app=x"))),
        Some("prefer_instance=m-2")
    );
    // A header source hands the whole value to the format.
    let s = Sticky::builder()
        .sources([Source::Header])
        .header_source("x-machine")
        .target_format(TargetFormat::custom(|v| v.starts_with("m-")))
        .build(Env::machine("m-1"))
        .unwrap();
    for bad in [
        "m-2;app=x",
        "m-2,x",
        "m-2 x",
        "m-\"",
        "m-2=1",
        "m-\r\n",
        "m-2\\",
        "n-2",
        "m-\u{e9}",
    ] {
        let d = s.decide(&Req::get("/").header("x-machine", bad));
        assert_eq!(d.reason().row(), 3, "{bad:?}");
    }
}

#[test]
fn cookie_attributes() {
    let https = |s: &Sticky| {
        cookie_of(&s.decide(&Req::get("/").header("x-forwarded-proto", "https"))).to_owned()
    };
    let s = sticky();
    assert!(
        https(&s).contains("; Secure"),
        "automatic Secure over https"
    );
    assert!(
        !cookie_of(&s.decide(&Req::get("/").header("x-forwarded-proto", "http")))
            .contains("Secure")
    );
    // The first value of the list decides, trimmed, in any case.
    for (proto, secure) in [
        ("https", true),
        ("HTTPS", true),
        (" https ,http", true),
        ("https, http", true),
        ("http, https", false),
        ("httpsx", false),
        ("http", false),
        ("", false),
    ] {
        let req = Req::get("/").header("x-forwarded-proto", proto);
        assert_eq!(
            cookie_of(&s.decide(&req)).contains("; Secure"),
            secure,
            "{proto:?}"
        );
    }

    let s = Sticky::builder()
        .cookie_name("__Host-m")
        .same_site(SameSite::Strict)
        .max_age(Duration::from_secs(60))
        .http_only(false)
        .build(Env::machine(S))
        .unwrap();
    let c = cookie_of(&s.decide(&Req::get("/"))).to_owned();
    assert!(c.starts_with("__Host-m=148ed599c14189;"));
    assert!(
        c.contains("; Secure")
            && c.contains("SameSite=Strict")
            && c.contains("Max-Age=60")
            && c.contains("Path=/")
    );
    assert!(!c.contains("HttpOnly") && !c.contains("Domain"));

    let s = Sticky::builder()
        .cookie_domain("example.com")
        .cookie_path("/app")
        .same_site(SameSite::None)
        .secure(Secure::Always)
        .build(Env::machine(S))
        .unwrap();
    let c = cookie_of(&s.decide(&Req::get("/"))).to_owned();
    assert!(
        c.contains("Domain=example.com")
            && c.contains("Path=/app")
            && c.contains("SameSite=None")
            && c.contains("Secure")
    );
}

#[test]
fn cache_control_private_only_when_the_response_has_none() {
    let s = sticky();
    let d = s.decide(&Req::get("/"));
    let c = d.set_cookie().unwrap();
    let names: Vec<_> = c.headers(false).map(|(n, _)| n).collect();
    assert_eq!(names, ["set-cookie", "cache-control"]);
    assert_eq!(c.headers(false).nth(1).unwrap().1, b"private");
    let names: Vec<_> = c.headers(true).map(|(n, _)| n).collect();
    assert_eq!(names, ["set-cookie"]);

    let s = Sticky::builder()
        .cache_control_private(false)
        .build(Env::machine(S))
        .unwrap();
    assert_eq!(
        s.decide(&Req::get("/"))
            .set_cookie()
            .unwrap()
            .headers(false)
            .count(),
        1
    );
}

#[test]
fn http_types_round_trip() {
    let s = sticky();
    let req = http::Request::post("/upload?fly_instance_id=90801679a10038")
        .body(())
        .unwrap();
    // POST without Content-Length: unknown length, served here.
    assert_eq!(
        s.decide(&req).reason(),
        Reason::BodyNotReplayable(Source::Query, BodyProblem::UnknownLength)
    );
    let (parts, ()) = http::Request::get("/")
        .header("cookie", format!("fly-machine-id={T}"))
        .body(())
        .unwrap()
        .into_parts();
    let Action::Answer(answer) = s.decide(&parts).into_action() else {
        panic!("a replay answers without the handler");
    };
    let res: http::Response<()> = answer.to_response();
    assert_eq!(res.status(), 307);
    assert_eq!(
        res.headers()["fly-replay"],
        "prefer_instance=90801679a10038"
    );

    let mut headers = http::HeaderMap::new();
    headers.insert("set-cookie", "app=1".parse().unwrap());
    s.decide(&http::Request::get("/").body(()).unwrap())
        .set_cookie()
        .unwrap()
        .apply(&mut headers);
    assert_eq!(
        headers.get_all("set-cookie").iter().count(),
        2,
        "appended, never replaced"
    );
    assert_eq!(headers["cache-control"], "private");
}

#[test]
fn reasons_map_to_rows_and_print() {
    let s = sticky();
    let d = s.decide(&Req::get("/").cookie(T));
    assert_eq!(d.reason().row(), 7);
    assert_eq!(d.reason().to_string(), "pinned elsewhere by cookie: replay");
}

/// Adapters that fetch headers one by one rely on `READ_HEADERS` and
/// `configured_headers`: every name `decide` asks for must be listed.
#[test]
fn read_headers_lists_every_header_decide_reads() {
    use std::cell::RefCell;
    use std::ops::ControlFlow;

    struct Recording<'r>(&'r Req, RefCell<Vec<String>>);
    impl sticky_core::RequestView for Recording<'_> {
        fn method(&self) -> &str {
            &self.0.method
        }
        fn path(&self) -> &str {
            &self.0.path
        }
        fn query(&self) -> Option<&str> {
            self.0.query.as_deref()
        }
        fn header_values<'a>(
            &'a self,
            name: &str,
            each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>,
        ) {
            self.1.borrow_mut().push(name.to_owned());
            self.0.header_values(name, each);
        }
    }

    let engines = [
        sticky(),
        Sticky::builder()
            .header_source("X-Machine")
            .sources([Source::Key, Source::Header, Source::Cookie, Source::Query])
            .key_source(sticky_core::KeySource::Header("x-tenant-id".into()))
            .key_source(sticky_core::KeySource::ClientIp)
            .key_source(sticky_core::KeySource::Cookie("session".into()))
            .peers([S, T].map(sticky_core::Peer::new))
            .build(Env::machine(S))
            .unwrap(),
    ];
    let requests = [
        Req::get("/"),
        Req::get("/").cookie(S),
        Req::get("/").cookie(T),
        Req::get("/").cookie(T).header("fly-replay-src", "x"),
        Req::new("POST", "/")
            .cookie(T)
            .header("content-length", "5"),
        Req::new("POST", "/").cookie(T),
        Req::new("OPTIONS", "/").header("access-control-request-method", "GET"),
    ];
    for engine in &engines {
        let allowed: Vec<&str> = sticky_core::READ_HEADERS
            .iter()
            .copied()
            .chain(engine.configured_headers())
            .collect();
        for drain in [false, true] {
            if drain {
                engine.drain();
            }
            for req in &requests {
                let view = Recording(req, RefCell::default());
                let _ = engine.decide(&view);
                for name in view.1.into_inner() {
                    assert!(
                        allowed.contains(&name.as_str()),
                        "decide read {name:?}, not in READ_HEADERS/configured_headers"
                    );
                }
            }
        }
    }
    let configured: Vec<&str> = engines[1].configured_headers().collect();
    assert_eq!(configured, ["x-machine", "x-tenant-id"]);
    assert_eq!(
        engines[1].configured_cookies().collect::<Vec<_>>(),
        ["fly-machine-id", "session"]
    );
}

#[test]
fn row8_every_answer_closes_its_connection_while_draining() {
    let s = Sticky::builder()
        .exclude(["/health"])
        .build(Env::machine(S))
        .unwrap();
    let cases = [
        Req::get("/health"),
        Req::get("/").cookie(T),
        Req::get("/").cookie(S),
        Req::get("/")
            .cookie(S)
            .header("fly-replay-src", "instance=x"),
    ];
    for req in &cases {
        assert!(!s.decide(req).closes_connection(), "{req:?}");
    }
    s.drain();
    for req in &cases {
        let d = s.decide(req);
        assert!(d.closes_connection(), "{req:?}");
        match d.into_action() {
            Action::Run(finish) => {
                assert!(finish.closes(200));
                assert!(
                    finish
                        .headers(200, false)
                        .any(|h| h == ("connection", &b"close"[..]))
                );
                let mut headers = http::HeaderMap::new();
                headers.insert("connection", "keep-alive".parse().unwrap());
                finish.apply(http::StatusCode::OK, &mut headers);
                let values: Vec<_> = headers.get_all("connection").iter().collect();
                assert_eq!(values, ["close"], "replaced, not appended");
                // An upgrade keeps its connection: it belongs to the new protocol.
                assert!(!finish.closes(101));
                let mut upgrade = http::HeaderMap::new();
                upgrade.insert("connection", "upgrade".parse().unwrap());
                finish.apply(http::StatusCode::SWITCHING_PROTOCOLS, &mut upgrade);
                assert_eq!(upgrade["connection"], "upgrade");
            }
            Action::Answer(answer) => {
                assert!(answer.closes_connection());
                let res: http::Response<()> = answer.to_response();
                assert_eq!(res.headers()["connection"], "close");
            }
        }
    }
    // Disabled engines drain too: a Machine off Fly still closes on SIGTERM.
    let off = Sticky::builder().build(Env::default()).unwrap();
    off.drain();
    assert!(off.decide(&Req::get("/")).closes_connection());
    assert!(off.skipped().closes_connection());
    assert_eq!(off.skipped(), Outcome::Stick(Reason::Skipped));
}
