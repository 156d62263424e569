//! The `example-hyper` binary drains on SIGTERM, keeps serving what cannot
//! move for `DRAIN_SECONDS`, then exits 0; SIGINT stops it at once. The
//! checks are shared by every example: `conformance::binary`.
#![cfg(unix)]

const BINARY: &str = env!("CARGO_BIN_EXE_example-hyper");

#[test]
fn sigterm_drains_keeps_serving_then_exits() {
    conformance::binary::sigterm_drains_keeps_serving_then_exits(BINARY);
}

#[test]
fn sigint_stops_at_once() {
    conformance::binary::sigint_stops_at_once(BINARY);
}
