//! What the decision counters cost on the Stick path, wall-clock: `decide`
//! on two engines that differ only in `count_decisions`, interleaved in one
//! run (`cargo bench -p sticky-core --bench counting`; `cargo xtask bench`
//! runs it and writes BENCHMARKS.md). Each round times a short block of
//! calls on one engine and then on the other (the order alternates round by
//! round), so load from other processes falls on both sides alike. Blocks
//! are short (a few hundred microseconds) so that most run without being
//! preempted; each side's figure is the 10th percentile of its blocks (the
//! unloaded cost, robust to the blocks a busy machine stretches), and the
//! median and interquartile range of the paired differences ON - OFF say
//! how far the machine's noise reaches. No timing is asserted.
//!
//! The `counting:` lines are machine-readable for xtask:
//! `counting: settings=<s> on=<ns> off=<ns> diff=<ns> median=<ns> q1=<ns> q3=<ns> rounds=<n> calls=<n>`.

use std::hint::black_box;
use std::time::Instant;

use sticky_core::{Env, KeySource, Outcome, Reason, Source, Sticky};

const S: &str = "148ed599c14189";
/// 5 cookies, about 250 bytes, ours last: the request of `decide.rs`.
const COOKIES: &str = "_ga=GA1.1.1234567890.1700000000; theme=dark; session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV; lang=en-GB; fly-machine-id=";

/// Engines per side, used in turn.
const ENGINES: usize = 16;

fn engine(count: bool, contract: bool) -> Sticky {
    let b = Sticky::builder().count_decisions(count);
    let b = if contract {
        b.exclude(["/health", "/metrics"])
            .sources([Source::Key, Source::Cookie, Source::Query])
            .key_source(KeySource::Header("x-tenant-id".into()))
    } else {
        b
    };
    b.build(Env::machine(S)).unwrap()
}

/// Nanoseconds per call of `calls` decisions.
#[inline(never)]
fn block(sticky: &Sticky, req: &http::Request<()>, calls: u32) -> f64 {
    let started = Instant::now();
    for _ in 0..calls {
        let _ = black_box(sticky.decide(black_box(req)));
    }
    started.elapsed().as_nanos() as f64 / f64::from(calls)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn main() {
    // `cargo bench` passes `--bench`; `--quick` (or `cargo test --benches`'s
    // run) takes fewer rounds.
    let quick = std::env::args().any(|a| a == "--quick" || a == "--test");
    let (rounds, calls) = if quick { (301, 1_000) } else { (3_001, 2_000) };
    let req = http::Request::get("/cart/items?page=2")
        .header("host", "app.fly.dev")
        .header("accept", "text/html")
        .header("x-forwarded-proto", "https")
        .header("cookie", format!("{COOKIES}{S}"))
        .body(())
        .unwrap();
    for contract in [false, true] {
        // Several engines per side, built alternately so both sides' data
        // spread over the same stretch of heap, used in turn: where the
        // allocator put one engine (the alignment of its Machine ID and
        // cookie name, which `memcmp` and the cookie scan read) is then
        // not mistaken for the counters' cost.
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for _ in 0..ENGINES {
            on.push(engine(true, contract));
            off.push(engine(false, contract));
        }
        for e in on.iter().chain(&off) {
            assert!(matches!(
                e.decide(&req).outcome(),
                Outcome::Stick(Reason::PinnedHere(_))
            ));
            // Warm each (caches, branch predictors, CPU frequency).
            block(e, &req, calls);
        }
        let (mut ons, mut offs, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (a, b) = (&on[round % ENGINES], &off[round % ENGINES]);
            let (a, b) = if round % 2 == 0 {
                let a = block(a, &req, calls);
                (a, block(b, &req, calls))
            } else {
                let b = block(b, &req, calls);
                (block(a, &req, calls), b)
            };
            ons.push(a);
            offs.push(b);
            diffs.push(a - b);
        }
        assert!(on.iter().all(|e| e.metrics().total() > 0));
        assert!(off.iter().all(|e| e.metrics().total() == 0));
        let (ons, offs, diffs) = (sorted(ons), sorted(offs), sorted(diffs));
        let settings = if contract { "contract-app" } else { "default" };
        let (on_ns, off_ns) = (quantile(&ons, 0.1), quantile(&offs, 0.1));
        let (median, q1, q3) = (
            quantile(&diffs, 0.5),
            quantile(&diffs, 0.25),
            quantile(&diffs, 0.75),
        );
        println!(
            "Stick path, {settings} settings: counting on {on_ns:.2} ns, off {off_ns:.2} ns \
             (10th percentiles), on - off {:+.2} ns; paired differences: median {median:+.2} ns, \
             interquartile {q1:+.2} .. {q3:+.2} ns ({rounds} rounds of {calls} calls per side)",
            on_ns - off_ns
        );
        println!(
            "counting: settings={settings} on={on_ns:.3} off={off_ns:.3} diff={:.3} median={median:.3} \
             q1={q1:.3} q3={q3:.3} rounds={rounds} calls={calls}",
            on_ns - off_ns
        );
    }
}
