//! The replay cache: session rules (cookie, header), path patterns (header
//! and JSON forms), hits, misses, TTL, invalidation, bypass, what is not
//! cached, hits to stopped and destroyed targets, counters, and the
//! start-up refusals of bad rules and fly.tomls.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{App, Reply, Seen, config, full_body, get_with, send, served_by, start};
use flysim::{EventKind, FlyToml, ManualClock, ReplayCacheRule};
use serde_json::Value;

const COOKIE: &str = "fly-machine-id";

fn cookie_rule(extra: &str) -> ReplayCacheRule {
    format!("path_prefix=/,ttl_seconds=300,type=cookie,name={COOKIE}{extra}")
        .parse()
        .unwrap()
}

fn cookie(s: &Seen, name: &str) -> Option<String> {
    s.headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A sticky app: the cookie names the home Machine; a request elsewhere is
/// replayed there with `prefer_instance` (unless already replayed, or the
/// home is unavailable).
fn sticky() -> App {
    App::new(|s| match cookie(s, COOKIE) {
        Some(home)
            if home != s.machine
                && s.header("fly-replay-src").is_none()
                && s.header("fly-preferred-instance-unavailable").is_none() =>
        {
            Reply::replay(&format!("prefer_instance={home}"))
        }
        _ => Reply::ok(format!("machine={}", s.machine)),
    })
}

fn pin(id: &str) -> String {
    format!("{COOKIE}={id}")
}

async fn get_as(url: &str, cookie: &str) -> common::Resp {
    get_with(url, &[("cookie", cookie)]).await
}

/// The requests `machine` saw, newest last.
fn seen_on(app: &App, machine: &str) -> Vec<Seen> {
    app.seen()
        .into_iter()
        .filter(|s| s.machine == machine)
        .collect()
}

fn status(s: &Seen) -> Option<&str> {
    s.header("fly-replay-cache-status")
}

#[tokio::test]
async fn a_cookie_rule_routes_later_requests_without_the_first_machine() {
    let app = sticky();
    let sim = start(config().replay_cache(cookie_rule("")), &app).await;
    let ids = sim.machine_ids();
    let home = &ids[2];

    // First request: balanced to ids[0], replayed home the ordinary way.
    let r = get_as(&sim.url(), &pin(home)).await;
    assert_eq!(served_by(&r), *home);
    assert_eq!(app.runs_on(&ids[0]), 1);
    let first = seen_on(&app, home).pop().unwrap();
    assert_eq!(status(&first), Some("miss"));
    assert!(first.header("fly-replay-src").is_some());
    let s = sim.replay_cache_stats();
    assert_eq!((s.entries, s.created, s.misses, s.hits), (1, 1, 1, 0));

    // Later requests go straight home: no other Machine runs the handler.
    for _ in 0..6 {
        let r = get_as(&sim.url(), &pin(home)).await;
        assert_eq!(served_by(&r), *home);
        let seen = seen_on(&app, home).pop().unwrap();
        assert_eq!(status(&seen), Some("hit"));
        assert!(
            seen.header("fly-replay-src").is_none(),
            "{:?}",
            seen.headers
        );
    }
    assert_eq!(app.runs_on(&ids[0]), 1);
    assert_eq!(app.runs_on(&ids[1]), 0);
    let s = sim.replay_cache_stats();
    assert_eq!((s.entries, s.created, s.misses, s.hits), (1, 1, 1, 6));
    let m = sim.machine(home).unwrap();
    assert_eq!((m.served, m.replays_received), (7, 1));

    // A request without the cookie is not cacheable: never marked.
    let r = get_with(&sim.url(), &[]).await;
    let by = served_by(&r);
    assert!(status(&seen_on(&app, &by).pop().unwrap()).is_none());

    // The exit table has the counters.
    let report = sim.report();
    assert!(
        report.contains("replay cache: 1 entries, 6 hits, 1 misses, 0 bypasses, 0 invalidations"),
        "{report}"
    );
}

#[tokio::test]
async fn a_header_rule_keys_by_the_header_value() {
    let owner: Arc<Mutex<String>> = Arc::default();
    let o = owner.clone();
    let app = App::new(move |s| {
        let home = o.lock().unwrap().clone();
        if s.header("x-tenant-id") == Some("t1") && s.machine != home {
            Reply::replay(&format!("instance={home}"))
        } else {
            Reply::ok(format!("machine={}", s.machine))
        }
    });
    let rule = ReplayCacheRule::header("/", "X-Tenant-Id", Duration::from_secs(60)).unwrap();
    let sim = start(config().replay_cache(rule), &app).await;
    let ids = sim.machine_ids();
    *owner.lock().unwrap() = ids[1].clone();
    for _ in 0..4 {
        let r = get_with(&sim.url(), &[("x-tenant-id", "t1")]).await;
        assert_eq!(served_by(&r), ids[1]);
    }
    assert_eq!(app.runs_on(&ids[0]), 1, "only the first request met ids[0]");
    assert_eq!(app.runs_on(&ids[2]), 0);
    let s = sim.replay_cache_stats();
    assert_eq!((s.created, s.hits, s.misses), (1, 3, 1));
    // Another tenant has no entry.
    get_with(&sim.url(), &[("x-tenant-id", "t2")]).await;
    assert_eq!(sim.replay_cache_stats().hits, 3);
}

/// An app whose every Machine but `home` replays with `instance=home`.
fn homing(home: Arc<Mutex<String>>) -> App {
    App::new(move |s| {
        let home = home.lock().unwrap().clone();
        if s.machine != home && s.header("fly-replay-src").is_none() {
            Reply::replay(&format!("instance={home}"))
        } else {
            Reply::ok(format!("machine={}", s.machine))
        }
    })
}

async fn homing_sim(config: flysim::Config) -> (App, flysim::FlySim, Vec<String>) {
    let home: Arc<Mutex<String>> = Arc::default();
    let app = homing(home.clone());
    let sim = start(config, &app).await;
    let ids = sim.machine_ids();
    *home.lock().unwrap() = ids[2].clone();
    (app, sim, ids)
}

#[tokio::test]
async fn the_longest_path_prefix_wins_alone() {
    let (app, sim, ids) = homing_sim(
        config()
            .replay_cache(
                "path_prefix=/,ttl_seconds=60,type=cookie,name=sid"
                    .parse()
                    .unwrap(),
            )
            .replay_cache(
                "path_prefix=/api,ttl_seconds=60,type=header,name=x-k"
                    .parse()
                    .unwrap(),
            ),
    )
    .await;
    let url = sim.url();
    // Under /api the header rule decides: the cookie alone keys nothing.
    get_with(&format!("{url}/api/a"), &[("cookie", "sid=1")]).await;
    assert_eq!(sim.replay_cache_stats().created, 0);
    assert!(status(&seen_on(&app, &ids[2]).pop().unwrap()).is_none());
    get_with(&format!("{url}/api/a"), &[("x-k", "k1")]).await;
    assert_eq!(sim.replay_cache_stats().created, 1);
    let r = get_with(&format!("{url}/api/b"), &[("x-k", "k1")]).await;
    assert_eq!(served_by(&r), ids[2]);
    assert_eq!(sim.replay_cache_stats().hits, 1);
    // Outside /api (and /apix is outside) the cookie rule applies.
    get_with(&format!("{url}/apix"), &[("x-k", "k1")]).await;
    assert_eq!(sim.replay_cache_stats().hits, 1);
    get_with(&format!("{url}/other"), &[("cookie", "sid=1")]).await;
    get_with(&format!("{url}/other"), &[("cookie", "sid=1")]).await;
    let s = sim.replay_cache_stats();
    assert_eq!((s.created, s.hits), (2, 2));
}

#[tokio::test]
async fn caches_are_per_hostname() {
    let app = sticky();
    let sim = start(config().replay_cache(cookie_rule("")), &app).await;
    let ids = sim.machine_ids();
    let home = &ids[2];
    let c = pin(home);
    let a = [("cookie", c.as_str()), ("host", "a.example")];
    let b = [("cookie", c.as_str()), ("host", "b.example:8443")];
    get_with(&sim.url(), &a).await;
    get_with(&sim.url(), &a).await;
    assert_eq!(sim.replay_cache_stats().hits, 1);
    // Same cookie, another hostname: its own miss and entry.
    get_with(&sim.url(), &b).await;
    let s = sim.replay_cache_stats();
    assert_eq!((s.entries, s.hits, s.misses), (2, 1, 2));
    let last = seen_on(&app, home).pop().unwrap();
    assert_eq!(status(&last), Some("miss"));
}

#[tokio::test]
async fn entries_expire_a_fixed_ttl_after_creation() {
    let clock = ManualClock::new();
    let rule = "path_prefix=/,ttl_seconds=10,type=cookie,name=fly-machine-id";
    let app = sticky();
    let sim = start(
        config()
            .replay_cache(rule.parse().unwrap())
            .replay_cache_clock(clock.clone()),
        &app,
    )
    .await;
    let home = sim.machine_ids()[2].clone();
    get_as(&sim.url(), &pin(&home)).await;
    clock.advance(Duration::from_secs(9));
    get_as(&sim.url(), &pin(&home)).await;
    assert_eq!(sim.replay_cache_stats().hits, 1);
    // The hit did not refresh it: 10 s after creation it is gone.
    clock.advance(Duration::from_secs(1));
    assert_eq!(sim.replay_cache_stats().entries, 0);
    get_as(&sim.url(), &pin(&home)).await;
    let s = sim.replay_cache_stats();
    assert_eq!((s.hits, s.misses, s.created), (1, 2, 2));
    assert_eq!(status(&seen_on(&app, &home).pop().unwrap()), Some("miss"));
}

#[tokio::test]
async fn a_path_pattern_on_the_replay_caches_for_every_user() {
    let home: Arc<Mutex<String>> = Arc::default();
    let h = home.clone();
    let app = App::new(move |s| {
        let home = h.lock().unwrap().clone();
        if s.machine != home && s.header("fly-replay-src").is_none() {
            Reply::replay(&format!("instance={home}"))
                .with_header("fly-replay-cache", "/rooms/42/*")
                .with_header("fly-replay-cache-ttl-secs", "60")
        } else {
            Reply::ok(format!("machine={}", s.machine))
        }
    });
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    *home.lock().unwrap() = ids[2].clone();
    let url = sim.url();
    get_with(&format!("{url}/rooms/42/join"), &[("cookie", "user=a")]).await;
    assert_eq!(status(&seen_on(&app, &ids[2]).pop().unwrap()), Some("miss"));
    for user in ["user=b", "user=c"] {
        let r = get_with(&format!("{url}/rooms/42/chat"), &[("cookie", user)]).await;
        assert_eq!(served_by(&r), ids[2]);
        let seen = seen_on(&app, &ids[2]).pop().unwrap();
        assert_eq!(status(&seen), Some("hit"));
        assert!(seen.header("fly-replay-src").is_none());
    }
    assert_eq!(app.runs_on(&ids[0]), 1);
    assert_eq!(app.runs_on(&ids[1]), 0);
    // Another room is not covered (its replay names /rooms/42, which does
    // not cover it: not cached, and said so).
    get_with(&format!("{url}/rooms/43"), &[]).await;
    let s = sim.replay_cache_stats();
    assert_eq!((s.created, s.hits, s.not_cached), (1, 2, 1));
    assert!(
        sim.events()
            .iter()
            .any(|e| e.kind == EventKind::ReplayNotCached && e.message.contains("does not cover"))
    );
    // Caching is in play, so the exit table shows it.
    assert!(sim.report().contains("replay cache: 1 entries, 2 hits"));
}

#[tokio::test]
async fn the_json_cache_object_caches_a_path() {
    let home: Arc<Mutex<String>> = Arc::default();
    let h = home.clone();
    let app = App::new(move |s| {
        let home = h.lock().unwrap().clone();
        if s.machine != home && s.header("fly-replay-src").is_none() {
            Reply::json_replay(&format!(
                r#"{{"instance":"{home}","cache":{{"prefix":"/docs/7/*","ttl":60}}}}"#
            ))
        } else {
            Reply::ok(format!("machine={}", s.machine))
        }
    });
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    *home.lock().unwrap() = ids[1].clone();
    let url = sim.url();
    get_with(&format!("{url}/docs/7"), &[]).await;
    let r = get_with(&format!("{url}/docs/7/edit"), &[]).await;
    assert_eq!(served_by(&r), ids[1]);
    let s = sim.replay_cache_stats();
    assert_eq!((s.created, s.hits), (1, 1));
    assert_eq!(app.runs_on(&ids[0]), 1);
}

#[tokio::test]
async fn a_target_that_no_longer_owns_the_key_invalidates_the_entry() {
    let owner: Arc<Mutex<String>> = Arc::default();
    let o = owner.clone();
    // The cookie names the user; `owner` is where the app says it lives.
    let app = App::new(move |s| {
        let home = o.lock().unwrap().clone();
        if s.machine == home || s.header("fly-replay-src").is_some() {
            return Reply::ok(format!("machine={}", s.machine));
        }
        let reply = Reply::replay(&format!("prefer_instance={home}"));
        if status(s) == Some("hit") {
            reply.with_header("fly-replay-cache", "invalidate")
        } else {
            reply
        }
    });
    let sim = start(
        config().replay_cache(
            "path_prefix=/,ttl_seconds=300,type=cookie,name=user"
                .parse()
                .unwrap(),
        ),
        &app,
    )
    .await;
    let ids = sim.machine_ids();
    *owner.lock().unwrap() = ids[2].clone();
    get_with(&sim.url(), &[("cookie", "user=u1")]).await;
    get_with(&sim.url(), &[("cookie", "user=u1")]).await;
    assert_eq!(sim.replay_cache_stats().hits, 1);

    // The user moves: the cached target replays it on and invalidates.
    *owner.lock().unwrap() = ids[1].clone();
    let r = get_with(&sim.url(), &[("cookie", "user=u1")]).await;
    assert_eq!(served_by(&r), ids[1]);
    let on = seen_on(&app, &ids[1]).pop().unwrap();
    assert_eq!(status(&on), Some("miss"));
    assert!(on.header("fly-replay-src").is_some());
    let s = sim.replay_cache_stats();
    assert_eq!((s.entries, s.invalidations, s.hits), (0, 1, 2));
    // The invalidating replay was not remembered: the next requests are
    // balanced again, and the first one that meets another Machine is
    // replayed and makes the new entry.
    for _ in 0..3 {
        if sim.replay_cache_stats().entries == 1 {
            break;
        }
        let r = get_with(&sim.url(), &[("cookie", "user=u1")]).await;
        assert_eq!(served_by(&r), ids[1]);
    }
    let r = get_with(&sim.url(), &[("cookie", "user=u1")]).await;
    assert_eq!(served_by(&r), ids[1]);
    assert_eq!(status(&seen_on(&app, &ids[1]).pop().unwrap()), Some("hit"));
    let s = sim.replay_cache_stats();
    assert_eq!(
        (s.entries, s.created, s.hits, s.invalidations),
        (1, 2, 3, 1)
    );
}

#[tokio::test]
async fn skip_bypasses_only_where_the_rule_allows_it() {
    for allow in [true, false] {
        let app = sticky();
        let rule = cookie_rule(if allow { ",allow_bypass=true" } else { "" });
        let sim = start(config().replay_cache(rule), &app).await;
        let home = sim.machine_ids()[2].clone();
        let c = pin(&home);
        get_as(&sim.url(), &c).await;
        let r = get_with(
            &sim.url(),
            &[("cookie", c.as_str()), ("fly-replay-cache-control", "skip")],
        )
        .await;
        assert_eq!(served_by(&r), home);
        let last = seen_on(&app, &home).pop().unwrap();
        let s = sim.replay_cache_stats();
        if allow {
            assert_eq!(status(&last), Some("bypass"));
            assert!(last.header("fly-replay-src").is_some());
            assert_eq!((s.bypasses, s.hits), (1, 0));
        } else {
            assert_eq!(status(&last), Some("hit"));
            assert_eq!((s.bypasses, s.hits), (0, 1));
        }
    }
}

#[tokio::test]
async fn a_cache_meant_replay_with_state_is_replayed_but_not_cached() {
    let app = App::new(|s| match cookie(s, COOKIE) {
        Some(home) if home != s.machine && s.header("fly-replay-src").is_none() => {
            Reply::replay(&format!("prefer_instance={home};state=cart"))
        }
        _ => Reply::ok(format!("machine={}", s.machine)),
    });
    let sim = start(config().replay_cache(cookie_rule("")).quiet(true), &app).await;
    let ids = sim.machine_ids();
    for _ in 0..2 {
        let r = get_as(&sim.url(), &pin(&ids[2])).await;
        assert_eq!(served_by(&r), ids[2]);
        let seen = seen_on(&app, &ids[2]).pop().unwrap();
        assert!(
            seen.header("fly-replay-src")
                .unwrap()
                .ends_with(";state=cart")
        );
        assert_eq!(status(&seen), Some("miss"));
    }
    let s = sim.replay_cache_stats();
    assert_eq!((s.created, s.hits, s.not_cached), (0, 0, 2));
    let loud: Vec<_> = sim
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::ReplayNotCached)
        .collect();
    assert_eq!(loud.len(), 2);
    assert!(loud[0].is_error());
    assert!(
        loud[0].message.contains("carries state"),
        "{}",
        loud[0].message
    );
}

#[tokio::test]
async fn a_hit_to_a_stopped_target_autostarts_it() {
    let app = sticky();
    let sim = start(config().replay_cache(cookie_rule("")), &app).await;
    let ids = sim.machine_ids();
    get_as(&sim.url(), &pin(&ids[2])).await;
    sim.stop_machine(&ids[2]).await.unwrap();
    let before = app.runs_on(&ids[0]) + app.runs_on(&ids[1]);
    let r = get_as(&sim.url(), &pin(&ids[2])).await;
    assert_eq!(served_by(&r), ids[2]);
    assert_eq!(app.runs_on(&ids[0]) + app.runs_on(&ids[1]), before);
    assert_eq!(status(&seen_on(&app, &ids[2]).pop().unwrap()), Some("hit"));
    assert!(sim.events().iter().any(|e| e.kind == EventKind::Autostart));
}

#[tokio::test]
async fn a_hit_to_a_destroyed_prefer_instance_target_falls_back_marked() {
    let app = sticky();
    let sim = start(config().replay_cache(cookie_rule("")), &app).await;
    let ids = sim.machine_ids();
    get_as(&sim.url(), &pin(&ids[2])).await;
    sim.destroy_machine(&ids[2]).await.unwrap();
    let r = get_as(&sim.url(), &pin(&ids[2])).await;
    assert_eq!(r.status, 200);
    let by = served_by(&r);
    assert_ne!(by, ids[2]);
    let seen = seen_on(&app, &by).pop().unwrap();
    assert_eq!(
        seen.header("fly-preferred-instance-unavailable"),
        Some(ids[2].as_str())
    );
    assert_eq!(status(&seen), Some("hit"));
    assert!(seen.header("fly-replay-src").is_none());
}

#[tokio::test]
async fn a_hit_to_a_destroyed_instance_target_fails_slowly() {
    let (_app, sim, ids) = homing_sim(config().replay_cache(cookie_rule("")).quiet(true)).await;
    get_as(&sim.url(), &pin("x")).await;
    assert_eq!(sim.replay_cache_stats().created, 1);
    sim.destroy_machine(&ids[2]).await.unwrap();
    let t0 = std::time::Instant::now();
    let r = get_as(&sim.url(), &pin("x")).await;
    assert_eq!(r.status, 502);
    assert!(r.body.is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "the test config's slow failure"
    );
    assert_eq!(sim.replay_cache_stats().hits, 1);
    assert!(
        sim.events()
            .iter()
            .any(|e| e.kind == EventKind::ReplayFailed)
    );
}

async fn admin(sim: &flysim::FlySim, path: &str) -> Value {
    let url = format!("http://{}{path}", sim.admin_addr().unwrap());
    let req = http::Request::get(url)
        .body(full_body(Bytes::new()))
        .unwrap();
    serde_json::from_slice(&send(req).await.body).unwrap()
}

#[tokio::test]
async fn a_fly_toml_sets_rules_and_settings_shown_by_the_admin_interface() {
    let file = FlyToml::parse(
        r#"
app = "my-app"
primary_region = "iad"
kill_signal = "SIGTERM"
kill_timeout = "20s"

[build]

[http_service]
  internal_port = 8080
  force_https = true

  [[http_service.http_options.replay_cache]]
    path_prefix = "/"
    ttl_seconds = 300
    type = "cookie"
    name = "fly-machine-id"

[[vm]]
  memory = "256mb"
"#,
        "fly.toml",
    )
    .unwrap();
    let app = sticky();
    let sim = start(config().fly_toml(&file), &app).await;
    let home = sim.machine_ids()[1].clone();
    for _ in 0..3 {
        get_as(&sim.url(), &pin(&home)).await;
    }
    let cfg = admin(&sim, "/config").await;
    assert_eq!(cfg["internal_port"], 8080);
    assert_eq!(cfg["kill_signal"], "SIGTERM");
    assert_eq!(cfg["kill_timeout_ms"], 20_000);
    let cache = admin(&sim, "/replay-cache").await;
    assert_eq!(
        cache["rules"][0],
        "path_prefix=/,ttl_seconds=300,type=cookie,name=fly-machine-id"
    );
    let stats = &cache["stats"];
    for (key, n) in [
        ("entries", 1),
        ("hits", 2),
        ("misses", 1),
        ("bypasses", 0),
        ("invalidations", 0),
    ] {
        assert_eq!(stats[key], n, "{key} in {cache}");
    }
    assert_eq!(
        cache["entries"][0]["target"],
        format!("prefer_instance={home}")
    );
    // Machines still get a free port each.
    assert!(app.envs().iter().all(|e| e.port == 0));
}

fn flysim_bin(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flysim"))
        .args(args)
        .output()
        .expect("flysim runs")
}

#[test]
fn the_binary_refuses_bad_rules_and_fly_tomls_at_start_up() {
    for (rule, field) in [
        (
            "path_prefix=/,ttl_seconds=5,type=cookie,name=a",
            "ttl_seconds",
        ),
        ("path_prefix=/,ttl_seconds=50,type=query,name=a", "type"),
        (
            "path_prefix=/,ttl_seconds=50,type=cookie,name=a,colour=red",
            "colour",
        ),
        ("path_prefix=/,ttl_seconds=50,type=cookie", "name"),
    ] {
        let out = flysim_bin(&["--port", "0", "--replay-cache", rule, "--", "true"]);
        assert!(!out.status.success(), "{rule}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("field \"{field}\"")), "{rule}: {err}");
    }
    let dir = std::env::temp_dir().join(format!("flysim-fly-toml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fly.toml");
    for (text, needle) in [
        ("app = \"x\"\n[http_service\n", "fly.toml:2:"),
        (
            "app = \"x\"\n\n[[http_service.http_options.replay_cache]]\npath_prefix = \"/\"\nttl_seconds = 3\ntype = \"cookie\"\nname = \"a\"\n",
            "fly.toml:5: replay_cache: field \"ttl_seconds\"",
        ),
        (
            "[[http_service.http_options.replay_cache]]\npath_prefix = \"/\"\nttl_seconds = 30\ntype = \"cookie\"\nname = \"a\"\nsticky = true\n",
            "unknown field \"sticky\"",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = flysim_bin(&[
            "--port",
            "0",
            "--fly-toml",
            path.to_str().unwrap(),
            "--",
            "true",
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
