//! Heap allocations per decision, counted by a global allocator. Counts are
//! deterministic, so they are asserted; timings never are.
#![allow(unsafe_code)] // the counting allocator below

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use sticky_core::{Decision, Env, Outcome, Sticky};

struct Counting;

thread_local! {
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counter
// is a thread-local Cell, so tests running in parallel do not disturb it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const S: &str = "148ed599c14189";
const T: &str = "90801679a10038";
/// A realistic Cookie header: 5 cookies, about 250 bytes.
const COOKIES: &str = "_ga=GA1.1.1234567890.1700000000; theme=dark; session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV; lang=en-GB; fly-machine-id=";

fn allocations(f: impl FnOnce() -> Decision) -> (u64, Decision) {
    let before = COUNT.with(Cell::get);
    let d = f();
    (COUNT.with(Cell::get) - before, d)
}

fn request(cookie_target: Option<&str>, extra: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::get("/cart/items?page=2");
    if let Some(t) = cookie_target {
        b = b.header("cookie", format!("{COOKIES}{t}"));
    }
    for (n, v) in extra {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap()
}

#[test]
fn allocation_counts_per_path() {
    let sticky = Sticky::builder()
        .exclude(["/health", "/static/**"])
        .build(Env::machine(S))
        .unwrap();

    let here = request(Some(S), &[]);
    let (n, d) = allocations(|| sticky.decide(&here));
    assert!(matches!(d.outcome(), Outcome::Stick(_)));
    assert_eq!(
        n, 0,
        "Stick path (cookie names this Machine, path rules on)"
    );
    drop(d);

    let first = request(None, &[("x-forwarded-proto", "https")]);
    let (n, d) = allocations(|| sticky.decide(&first));
    assert!(matches!(d.outcome(), Outcome::SetCookie(..)));
    assert_eq!(
        n, 0,
        "first visit: the Set-Cookie for this Machine is shared, rendered at start-up"
    );
    drop(d);

    let elsewhere = request(Some(T), &[]);
    let (n, d) = allocations(|| sticky.decide(&elsewhere));
    assert!(matches!(d.outcome(), Outcome::Replay(..)));
    assert_eq!(n, 1, "Replay: one allocation, the fly-replay value");
    drop(d);

    let replayed = request(Some(T), &[("fly-replay-src", "instance=x")]);
    let (n, d) = allocations(|| sticky.decide(&replayed));
    assert!(matches!(d.outcome(), Outcome::SetCookie(..)));
    assert_eq!(n, 0, "row 5 re-pin");
    drop(d);

    sticky.drain();
    let (n, d) = allocations(|| sticky.decide(&here));
    assert!(matches!(d.outcome(), Outcome::Replay(..)));
    assert_eq!(n, 0, "drain: elsewhere=true is shared");

    // Every decision above was counted (the counters are on by default),
    // and counting allocated nothing: the counts above include it.
    assert_eq!(sticky.metrics().total(), 5);
}

/// The Stick path allocates nothing with the decision counters on or off,
/// over many calls (a counter that grew a table lazily would show here).
#[test]
fn counting_allocates_nothing_on_the_stick_path() {
    for on in [true, false] {
        let sticky = Sticky::builder()
            .count_decisions(on)
            .build(Env::machine(S))
            .unwrap();
        let here = request(Some(S), &[]);
        let before = COUNT.with(Cell::get);
        for _ in 0..1_000 {
            let d = sticky.decide(&here);
            assert!(matches!(d.outcome(), Outcome::Stick(_)));
        }
        let n = COUNT.with(Cell::get) - before;
        assert_eq!(n, 0, "1,000 Stick decisions, counting {on}");
        assert_eq!(sticky.metrics().total(), if on { 1_000 } else { 0 });
    }
}

#[cfg(feature = "signed")]
#[test]
fn signed_allocation_counts() {
    let key = b"a signing key that is at least thirty-two bytes";
    let sticky = Sticky::builder()
        .signing_keys([key])
        .build(Env::machine(S))
        .unwrap();
    let other = Sticky::builder()
        .signing_keys([key])
        .build(Env::machine(T))
        .unwrap();
    let first = sticky.decide_at(&request(None, &[]), 1_000);
    let value = first
        .set_cookie()
        .unwrap()
        .value()
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    let here = request(Some(&value), &[]);
    let (n, d) = allocations(|| sticky.decide_at(&here, 1_001));
    assert!(matches!(d.outcome(), Outcome::Stick(_)));
    // Verification goes through the cookie crate's SignedJar: an owned name
    // and value, the jar, the decoded MAC. Stated, not a budget.
    println!("signed Stick path: {n} allocations");
    assert!(n <= 12, "signed verification allocated {n} times");
    let (n, d) = allocations(|| other.decide_at(&here, 1_001));
    assert!(matches!(d.outcome(), Outcome::Replay(..)));
    println!("signed Replay path: {n} allocations");
}
