//! Signed cookies: rotation, lifetimes, tampering.
#![cfg(feature = "signed")]

mod common;

use std::time::Duration;

use common::{Req, S, T};
use sticky_core::{Env, Outcome, Reason, Refresh, Rejected, Source, Sticky};

const OLD: &[u8] = b"an old signing key of at least thirty-two bytes";
const NEW: &[u8] = b"the new signing key, also at least thirty-two bytes";

fn machine(id: &str, keys: &[&[u8]]) -> Sticky {
    Sticky::builder()
        .signing_keys(keys.iter().copied())
        .max_lifetime(Duration::from_secs(1000))
        .idle_timeout(Duration::from_secs(100))
        .build(Env::machine(id))
        .unwrap()
}

/// The cookie value a Machine issues at `now`.
fn issued(s: &Sticky, now: u64) -> String {
    let d = s.decide_at(&Req::get("/"), now);
    let set = d.set_cookie().unwrap().value();
    set.split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned()
}

#[test]
fn a_signed_pin_replays_and_sticks() {
    let here = machine(S, &[NEW]);
    let there = machine(T, &[NEW]);
    let value = issued(&there, 10_000);
    assert!(value.ends_with(&format!("{T}.10000.10000")));
    let d = here.decide_at(&Req::get("/").cookie(&value), 10_001);
    assert_eq!(
        d.short_circuit().unwrap().fly_replay(),
        Some("prefer_instance=90801679a10038")
    );
    let d = there.decide_at(&Req::get("/").cookie(&value), 10_001);
    assert_eq!(d, Outcome::Stick(Reason::PinnedHere(Source::Cookie)));
}

#[test]
fn rotation_accepts_old_keys_and_signs_with_the_newest() {
    let old = machine(T, &[OLD]);
    let value = issued(&old, 5000);
    let rotated = machine(S, &[NEW, OLD]);
    assert_eq!(
        rotated
            .decide_at(&Req::get("/").cookie(&value), 5001)
            .reason()
            .row(),
        7
    );
    let retired = machine(S, &[NEW]);
    assert_eq!(
        retired
            .decide_at(&Req::get("/").cookie(&value), 5001)
            .reason(),
        Reason::InvalidTarget(Source::Cookie, Rejected::Signature)
    );
    // What the rotated Machine issues verifies with the new key alone.
    let fresh = issued(&rotated, 5000);
    assert_eq!(
        machine(T, &[NEW])
            .decide_at(&Req::get("/").cookie(&fresh), 5001)
            .reason()
            .row(),
        7
    );
}

#[test]
fn tampered_truncated_and_plain_values_are_never_trusted() {
    let s = machine(S, &[NEW]);
    let value = issued(&machine(T, &[NEW]), 5000);
    let swapped = value.replace(T, S);
    let truncated = &value[..value.len() - 1];
    for bad in [swapped.as_str(), truncated, T, S, &value[44..], ""] {
        let d = s.decide_at(&Req::get("/").cookie(bad), 5001);
        assert!(
            matches!(
                d.reason(),
                Reason::InvalidTarget(Source::Cookie, _) | Reason::NoTarget
            ),
            "{bad:?}: {d:?}"
        );
        assert!(d.set_cookie().is_some());
    }
}

#[test]
fn lifetimes_and_sliding_refresh() {
    let s = machine(S, &[NEW]);
    let value = issued(&s, 1000);
    let at = |now| s.decide_at(&Req::get("/").cookie(&value), now);
    assert_eq!(at(1010).reason(), Reason::PinnedHere(Source::Cookie));
    // Idle timeout 100 s implies a refresh after 50 s, keeping the first issue time.
    let d = at(1060);
    assert_eq!(d.reason(), Reason::Refreshed);
    assert!(
        d.set_cookie()
            .unwrap()
            .value()
            .contains(&format!("{S}.1000.1060;"))
    );
    assert_eq!(
        at(1101).reason(),
        Reason::InvalidTarget(Source::Cookie, Rejected::Expired)
    );

    let every = Sticky::builder()
        .signing_keys([NEW])
        .refresh(Refresh::After(Duration::from_secs(5)))
        .build(Env::machine(S))
        .unwrap();
    let v = issued(&every, 100);
    assert_eq!(
        every.decide_at(&Req::get("/").cookie(&v), 104).reason(),
        Reason::PinnedHere(Source::Cookie)
    );
    assert_eq!(
        every.decide_at(&Req::get("/").cookie(&v), 105).reason(),
        Reason::Refreshed
    );
}
