//! `decide` alone per path, for instruction counts under callgrind
//! (`cargo xtask bench --instructions` runs it; it is no timing bench).
//!
//! `instructions <path> <calls>` builds the engine and the request of
//! `<path>`, checks that `decide` takes that path, then calls it `<calls>`
//! times inside [`measured`], the one function callgrind collects
//! (`--toggle-collect=*measured*`). Two runs with different call counts give
//! the cost of one call exactly: (total(b) - total(a)) / (b - a), with
//! whatever the loop costs once (entry, exit) cancelled out.
//!
//! `instructions --list` prints the paths; with no arguments (as under
//! `cargo bench`) every path runs a few calls, as a smoke test.

use std::hint::black_box;

use sticky_core::{Env, KeySource, Outcome, Peer, Reason, ReplayCache, Source, Sticky};

const S: &str = "148ed599c14189";
const T: &str = "90801679a10038";
/// 5 cookies, about 250 bytes, ours last: the request of `decide.rs` and of
/// the examples' instruction counts.
const COOKIES: &str = "_ga=GA1.1.1234567890.1700000000; theme=dark; session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV; lang=en-GB; fly-machine-id=";

/// The paths, with what each measures (for the report).
const PATHS: [(&str, &str); 13] = [
    (
        "stick",
        "Stick: the cookie names this Machine, default settings",
    ),
    (
        "stick/uncounted",
        "Stick, default settings, decision counters off",
    ),
    (
        "stick/contract-app",
        "Stick with the example apps' settings (key source first)",
    ),
    (
        "stick/contract-app/uncounted",
        "Stick with the example apps' settings, decision counters off",
    ),
    (
        "stick/contract-request",
        "the same, on the request the examples' counts send (host and cookie only)",
    ),
    ("disabled", "not on Fly: what OFF pays"),
    ("first-visit", "no cookie: SetCookie (pre-rendered)"),
    ("replay", "the cookie names another Machine: Replay"),
    (
        "replay/contract-app",
        "Replay with the example apps' settings",
    ),
    ("key/3-machines", "key affinity: header key, 3 Machines"),
    ("key/20-machines", "key affinity: header key, 20 Machines"),
    ("key/100-machines", "key affinity: header key, 100 Machines"),
    (
        "key/1000-machines",
        "key affinity: header key, 1,000 Machines",
    ),
];

fn request(cookie: Option<&str>) -> http::Request<()> {
    let mut b = http::Request::get("/cart/items?page=2")
        .header("host", "app.fly.dev")
        .header("accept", "text/html")
        .header("x-forwarded-proto", "https");
    if let Some(c) = cookie {
        b = b.header("cookie", format!("{COOKIES}{c}"));
    }
    b.body(()).unwrap()
}

/// The examples' settings (`conformance::contract_sticky`, written out:
/// the core's benches do not depend on the test crates), with the decision
/// counters on (the default) or off.
fn contract_counting(env: Env, count: bool) -> Sticky {
    Sticky::builder()
        .exclude(["/health", "/metrics"])
        .sources([Source::Key, Source::Cookie, Source::Query])
        .key_source(KeySource::Header("x-tenant-id".into()))
        .key_source(KeySource::PathSegment("/rooms/".into()))
        .replay_cache(ReplayCache::Path {
            ttl: std::time::Duration::from_secs(60),
        })
        .count_decisions(count)
        .build(env)
        .unwrap()
}

fn contract(env: Env) -> Sticky {
    contract_counting(env, true)
}

fn keyed(machines: usize) -> Sticky {
    Sticky::builder()
        .sources([Source::Key, Source::Cookie])
        .key_source(KeySource::Header("x-tenant-id".into()))
        .peers((0..machines as u64).map(|i| Peer::new(format!("{:014x}", 0x9080_1679_a100 + i))))
        .build(Env::machine(S))
        .unwrap()
}

/// Takes from the heap, for good, what the engine's counter table takes
/// (4 outcomes x 54 reasons x 8 bytes), before an engine without counters
/// is built: the request built next then lands where it does beside a
/// counting engine, and the SIMD cookie scan and `memcmp`, whose counts
/// vary by a few instructions with alignment, run the same instructions.
/// The `/uncounted` paths then differ from theirs by the counting alone.
fn heap_as_if_counted() {
    let _ = black_box(Box::leak(Box::new([0u64; 4 * 54])));
}

/// Whether `decide` took the path measured.
type Check = fn(&Outcome) -> bool;

/// The engine and request of `path`, and a check that `decide` takes it.
fn setup(path: &str) -> Option<(Sticky, http::Request<()>, Check)> {
    let stick: Check = |o| matches!(o, Outcome::Stick(Reason::PinnedHere(_)));
    let replay: Check = |o| matches!(o, Outcome::Replay(..));
    let default = || Sticky::builder().build(Env::machine(S)).unwrap();
    Some(match path {
        "stick" => (default(), request(Some(S)), stick),
        "stick/uncounted" => (
            {
                heap_as_if_counted();
                Sticky::builder()
                    .count_decisions(false)
                    .build(Env::machine(S))
                    .unwrap()
            },
            request(Some(S)),
            stick,
        ),
        "stick/contract-app" => (contract(Env::machine(S)), request(Some(S)), stick),
        "stick/contract-request" => {
            let req = http::Request::get("/")
                .header("host", "app.test")
                .header("cookie", format!("{COOKIES}{S}"))
                .body(())
                .unwrap();
            (contract(Env::machine(S)), req, stick)
        }
        "stick/contract-app/uncounted" => (
            {
                heap_as_if_counted();
                contract_counting(Env::machine(S), false)
            },
            request(Some(S)),
            stick,
        ),
        "disabled" => (contract(Env::default()), request(Some(S)), |o| {
            matches!(o, Outcome::Stick(Reason::Disabled))
        }),
        "first-visit" => (default(), request(None), |o| {
            matches!(o, Outcome::SetCookie(..))
        }),
        "replay" => (default(), request(Some(T)), replay),
        "replay/contract-app" => (contract(Env::machine(S)), request(Some(T)), replay),
        key => {
            let n: usize = key
                .strip_prefix("key/")?
                .strip_suffix("-machines")?
                .parse()
                .ok()?;
            let req = http::Request::get("/api/tenant")
                .header("x-tenant-id", "acme-corp")
                .body(())
                .unwrap();
            (keyed(n), req, |o| {
                matches!(
                    o,
                    Outcome::Replay(_, Reason::PinnedElsewhere(Source::Key))
                        | Outcome::Stick(Reason::PinnedHere(Source::Key))
                )
            })
        }
    })
}

/// The measured loop: the only code callgrind collects.
#[inline(never)]
fn measured(sticky: &Sticky, req: &http::Request<()>, calls: u64) {
    for _ in 0..calls {
        let _ = black_box(sticky.decide(black_box(req)));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--list") {
        for (path, what) in PATHS {
            println!("{path}\t{what}");
        }
        return;
    }
    let runs: Vec<(String, u64)> = match (args.first(), args.get(1)) {
        (Some(path), Some(calls)) if !path.starts_with('-') => {
            let Ok(calls) = calls.parse() else {
                eprintln!("usage: instructions [--list | <path> <calls>]");
                std::process::exit(2);
            };
            vec![(path.clone(), calls)]
        }
        // `cargo bench` (which passes `--bench`): every path, briefly.
        _ => PATHS.iter().map(|(p, _)| ((*p).to_owned(), 10)).collect(),
    };
    for (path, calls) in runs {
        let Some((sticky, req, expected)) = setup(&path) else {
            eprintln!("instructions: unknown path {path:?} (see --list)");
            std::process::exit(2);
        };
        let outcome = sticky.decide(&req);
        if !expected(outcome.outcome()) {
            eprintln!("instructions: {path}: decide took another path: {outcome:?}");
            std::process::exit(1);
        }
        measured(&sticky, &req, calls);
    }
}
