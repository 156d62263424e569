//! The `example-poem` binary: environment, signals and exit codes. The
//! drain checks are shared by every example: `conformance::binary`.
#![cfg(unix)]

use std::process::{Command, Stdio};

const BINARY: &str = env!("CARGO_BIN_EXE_example-poem");

#[test]
fn sigterm_drains_keeps_serving_then_exits() {
    conformance::binary::sigterm_drains_keeps_serving_then_exits(BINARY);
}

#[test]
fn sigint_stops_at_once() {
    conformance::binary::sigint_stops_at_once(BINARY);
}

fn command(envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BINARY);
    cmd.env_remove("FLY_MACHINE_ID")
        .env_remove("FLY_APP_NAME")
        .env_remove("FLY_REGION")
        .env_remove("DRAIN_SECONDS")
        .env("PORT", "0")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn a_config_error_exits_non_zero() {
    let output = command(&[("FLY_MACHINE_ID", "not a machine id")])
        .output()
        .expect("run example-poem");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sticky configuration"), "{stderr}");
}

#[test]
fn a_bad_port_exits_non_zero() {
    let output = command(&[("PORT", "eighty")])
        .output()
        .expect("run example-poem");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("PORT"));
}
