//! `decide` on every path, each beside a straightforward baseline (parse
//! every cookie with the `cookie` crate, `format!` the header) so the report
//! shows a ratio. Budgets (BENCHMARKS.md): Stick <= 60 ns, Replay <= 250 ns.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sticky_core::{Env, Outcome, Sticky};

const S: &str = "148ed599c14189";
const T: &str = "90801679a10038";
/// 5 cookies, about 250 bytes, ours last.
const COOKIES: &str = "_ga=GA1.1.1234567890.1700000000; theme=dark; session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV; lang=en-GB; fly-machine-id=";
const KEY: &[u8] = b"a signing key that is at least thirty-two bytes";

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

/// The obvious implementation: parse every cookie, validate, compare, format.
fn baseline(req: &http::Request<()>, me: &str) -> Option<String> {
    let header = req.headers().get("cookie").and_then(|v| v.to_str().ok());
    let target = header.and_then(|h| {
        cookie::Cookie::split_parse(h)
            .filter_map(Result::ok)
            .find(|c| c.name() == "fly-machine-id")
            .map(|c| c.value().to_owned())
            .filter(|v| {
                v.len() == 14
                    && v.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
    });
    match target {
        Some(t) if t == me => None,
        Some(t) => Some(format!("prefer_instance={t}")),
        None => Some(
            cookie::Cookie::build(("fly-machine-id", me))
                .path("/")
                .http_only(true)
                .secure(true)
                .same_site(cookie::SameSite::Lax)
                .max_age(cookie::time::Duration::days(6))
                .build()
                .to_string(),
        ),
    }
}

fn bench(c: &mut Criterion) {
    let sticky = Sticky::builder().build(Env::machine(S)).unwrap();
    let with_paths = Sticky::builder()
        .exclude(["/health", "/static/**", "/assets/*.css"])
        .build(Env::machine(S))
        .unwrap();
    let signed = Sticky::builder()
        .signing_keys([KEY])
        .build(Env::machine(S))
        .unwrap();
    let signed_value = {
        let other = Sticky::builder()
            .signing_keys([KEY])
            .build(Env::machine(S))
            .unwrap();
        let d = other.decide_at(&request(None), 1_000);
        d.set_cookie()
            .unwrap()
            .value()
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned()
    };

    let peers: Vec<String> = (0..20u64)
        .map(|i| format!("{:014x}", 0x9080_1679_a100 + i))
        .collect();
    let keyed = Sticky::builder()
        .sources([sticky_core::Source::Key, sticky_core::Source::Cookie])
        .key_source(sticky_core::KeySource::Header("x-tenant-id".into()))
        .peers(peers.iter().map(|p| sticky_core::Peer::new(p.clone())))
        .build(Env::machine(S))
        .unwrap();
    let tenant = http::Request::get("/api/tenant")
        .header("x-tenant-id", "acme-corp")
        .body(())
        .unwrap();

    // What the example apps run in `cargo xtask bench`: the contract's
    // settings, and the request wrk sends (its own `Host`, our cookie alone).
    let contract = Sticky::builder()
        .exclude(["/health"])
        .sources([
            sticky_core::Source::Key,
            sticky_core::Source::Cookie,
            sticky_core::Source::Query,
        ])
        .key_source(sticky_core::KeySource::Header("x-tenant-id".into()))
        .build(Env::machine(S))
        .unwrap();
    let disabled = Sticky::builder().build(Env::default()).unwrap();
    let wrk = http::Request::get("/")
        .header("host", "127.0.0.1:8080")
        .header("cookie", format!("fly-machine-id={S}"))
        .body(())
        .unwrap();

    let here = request(Some(S));
    let elsewhere = request(Some(T));
    let first = request(None);
    let signed_here = request(Some(&signed_value));

    let mut g = c.benchmark_group("decide");
    g.bench_function("stick", |b| b.iter(|| sticky.decide(black_box(&here))));
    g.bench_function("stick/baseline", |b| {
        b.iter(|| baseline(black_box(&here), S))
    });
    g.bench_function("stick/path-rules", |b| {
        b.iter(|| with_paths.decide(black_box(&here)))
    });
    g.bench_function("stick/contract-app", |b| {
        b.iter(|| contract.decide(black_box(&wrk)))
    });
    g.bench_function("disabled", |b| b.iter(|| disabled.decide(black_box(&wrk))));
    g.bench_function("first-visit", |b| {
        b.iter(|| sticky.decide(black_box(&first)))
    });
    g.bench_function("first-visit/baseline", |b| {
        b.iter(|| baseline(black_box(&first), S))
    });
    g.bench_function("replay", |b| {
        b.iter(|| sticky.decide(black_box(&elsewhere)))
    });
    g.bench_function("replay/baseline", |b| {
        b.iter(|| baseline(black_box(&elsewhere), S))
    });
    g.bench_function("key/20-machines", |b| {
        b.iter(|| keyed.decide(black_box(&tenant)))
    });
    g.bench_function("stick/signed", |b| {
        b.iter(|| signed.decide_at(black_box(&signed_here), 1_001))
    });
    g.finish();

    // Sanity: the benches measure the paths they name.
    assert!(matches!(sticky.decide(&here).outcome(), Outcome::Stick(_)));
    assert!(matches!(
        with_paths.decide(&here).outcome(),
        Outcome::Stick(_)
    ));
    assert!(matches!(
        contract.decide(&wrk).outcome(),
        Outcome::Stick(sticky_core::Reason::PinnedHere(_))
    ));
    assert!(matches!(
        disabled.decide(&wrk).outcome(),
        Outcome::Stick(sticky_core::Reason::Disabled)
    ));
    assert!(matches!(
        sticky.decide(&first).outcome(),
        Outcome::SetCookie(..)
    ));
    assert!(matches!(
        sticky.decide(&elsewhere).outcome(),
        Outcome::Replay(..)
    ));
    assert!(matches!(
        signed.decide_at(&signed_here, 1_001).outcome(),
        Outcome::Stick(_)
    ));
}

criterion_group!(benches, bench);
criterion_main!(benches);
