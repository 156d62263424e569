//! `examples/fly.toml` agrees with the code: the replay cache rules name
//! the pin cookie and the tenant header, the port is the one the examples listen on, the kill
//! signal is the one they drain on and its timeout outlasts the drain, and
//! the health check and the metrics scrape are paths the middleware never
//! makes sticky, on the port the examples listen on.

use std::time::Duration;

use flysim::{CacheKeyKind, FlyToml, Signal};
use sticky_core::{DEFAULT_COOKIE_NAME, Env, Reason};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/fly.toml");

fn env_var(text: &str, name: &str) -> Option<String> {
    let table: toml::Table = text.parse().expect("fly.toml parses");
    Some(table.get("env")?.get(name)?.as_str()?.to_owned())
}

#[test]
fn the_deploy_kit_agrees_with_the_code() {
    let text = std::fs::read_to_string(FILE).expect("examples/fly.toml");
    let file = FlyToml::parse(&text, "examples/fly.toml").expect("flysim reads it");

    // The cache rules key on the cookie the engine writes, for every path,
    // and on the tenant header for the tenant API (the longest prefix
    // decides alone, so the cookie rule never remembers a tenant's replay).
    let [pin, tenant] = &file.replay_cache[..] else {
        panic!("two replay_cache rules: {:?}", file.replay_cache);
    };
    assert_eq!(pin.kind(), CacheKeyKind::Cookie);
    assert_eq!(pin.name(), DEFAULT_COOKIE_NAME);
    assert_eq!(pin.path_prefix(), "/");
    assert_eq!(tenant.kind(), CacheKeyKind::Header);
    assert_eq!(tenant.name(), conformance::TENANT_HEADER);
    assert_eq!(
        tenant.path_prefix(),
        "/api/tenant",
        "the examples' tenant API"
    );

    // The port Fly sends to is the one the examples read from PORT.
    let port: u16 = env_var(&text, "PORT").expect("[env] PORT").parse().unwrap();
    assert_eq!(file.internal_port, Some(port));

    // SIGTERM drains (SIGINT, Fly's default, stops at once), and Fly waits
    // longer than the drain before killing.
    assert_eq!(file.kill_signal, Some(Signal::Term));
    let drain: u64 = env_var(&text, "DRAIN_SECONDS")
        .expect("[env] DRAIN_SECONDS")
        .parse()
        .unwrap();
    let timeout = file.kill_timeout.expect("kill_timeout");
    assert!(
        timeout > Duration::from_secs(drain),
        "kill_timeout {timeout:?} must outlast DRAIN_SECONDS={drain}"
    );

    // The health check's path is never sticky in the examples' engine.
    let table: toml::Table = text.parse().unwrap();
    let checks = table["http_service"]["checks"].as_array().expect("checks");
    let sticky = conformance::contract_sticky(Env::machine("148ed599c14189")).unwrap();
    for check in checks {
        let path = check["path"].as_str().expect("a check path");
        let req = conformance::PinnedElsewhere(path);
        assert_eq!(sticky.decide(&req).reason(), Reason::PathExcluded, "{path}");
    }

    // Fly scrapes the decision counters where the examples serve them, on
    // the port they listen on, and the path is never sticky.
    let metrics = table["metrics"].as_table().expect("[metrics]");
    assert_eq!(metrics["port"].as_integer(), Some(i64::from(port)));
    let path = metrics["path"].as_str().expect("[metrics] path");
    assert!(
        conformance::NEVER_STICKY.contains(&path),
        "{path} must be one of the examples' never-sticky paths"
    );
    assert_eq!(
        sticky.decide(&conformance::PinnedElsewhere(path)).reason(),
        Reason::PathExcluded,
        "{path}"
    );
    conformance::check_never_sticky(&sticky).unwrap();

    // A fixed glibc mmap threshold (RELIABILITY.md, "Long run"): freed
    // request bodies go back to the OS instead of ratcheting RSS up. flysim
    // passes [env] to the Machines it runs, so the long run has it too.
    let threshold: u64 = env_var(&text, "MALLOC_MMAP_THRESHOLD_")
        .expect("[env] MALLOC_MMAP_THRESHOLD_")
        .parse()
        .unwrap();
    assert!(
        (64 * 1024..=1024 * 1024).contains(&threshold),
        "{threshold}: below the 1 MB replay limit, so uploads get their own mappings"
    );
    assert!(
        file.env
            .iter()
            .any(|(k, v)| k == "MALLOC_MMAP_THRESHOLD_" && *v == threshold.to_string())
    );
}
