//! `Launch::Command` (child processes) and the `flysim` binary.
//!
//! The child app is this test executable itself, re-run with the ignored test
//! `child_app` selected: it serves HTTP on `$PORT` when `FLY_MACHINE_ID` is set.

mod common;

use std::convert::Infallible;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{config, get, get_with};
use flysim::{ChildOutput, FlySim, Launch, MachineState, Signal};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The child app (only does something when run by flysim). `GET /slow`
/// answers after 1 s; `GET /inflight` counts the `/slow` requests being
/// served. On SIGTERM it answers with `term=1` from then on and exits after
/// `CHILD_TERM_EXIT_MS` (default: at once), unless `CHILD_IGNORE_TERM` is set.
#[test]
#[ignore = "helper: the child process that the command tests run as a Machine"]
fn child_app() {
    let Ok(machine) = std::env::var("FLY_MACHINE_ID") else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let text = format!(
        "machine={machine} alloc={} app={} region={} port={} extra={}",
        env("FLY_ALLOC_ID"),
        env("FLY_APP_NAME"),
        env("FLY_REGION"),
        env("PORT"),
        env("CHILD_EXTRA"),
    );
    let port: u16 = env("PORT").parse().expect("PORT");
    let term_exit = Duration::from_millis(env("CHILD_TERM_EXIT_MS").parse().unwrap_or(0));
    let ignore_term = !env("CHILD_IGNORE_TERM").is_empty();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let termed = Arc::new(AtomicBool::new(false));
        let inflight = Arc::new(AtomicUsize::new(0));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let on_term = termed.clone();
        tokio::spawn(async move {
            term.recv().await;
            on_term.store(true, Ordering::SeqCst);
            if !ignore_term {
                tokio::time::sleep(term_exit).await;
                std::process::exit(0);
            }
            std::future::pending::<()>().await;
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let text = text.clone();
            let termed = termed.clone();
            let inflight = inflight.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let text = text.clone();
                    let termed = termed.clone();
                    let inflight = inflight.clone();
                    async move {
                        let reply = |s: String| {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(s))))
                        };
                        match req.uri().path() {
                            "/exit" => {
                                tokio::spawn(async {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    std::process::exit(0);
                                });
                                return reply("bye".to_owned());
                            }
                            "/slow" => {
                                inflight.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                inflight.fetch_sub(1, Ordering::SeqCst);
                                return reply("slow done".to_owned());
                            }
                            "/inflight" => {
                                return reply(inflight.load(Ordering::SeqCst).to_string());
                            }
                            _ => {}
                        }
                        let term = u8::from(termed.load(Ordering::SeqCst));
                        reply(format!("{text} term={term}"))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

fn child_args() -> Vec<String> {
    [
        "child_app",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
    .map(String::from)
    .to_vec()
}

fn child_launch() -> Launch {
    let exe = std::env::current_exe().unwrap();
    Launch::command(exe.to_str().unwrap(), child_args())
}

/// `machine=.. alloc=.. app=.. region=.. port=..` as pairs.
fn parse(body: &str) -> Vec<(String, String)> {
    body.split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{body:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn field(pairs: &[(String, String)], key: &str) -> String {
    pairs.iter().find(|(k, _)| k == key).unwrap().1.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_machines_run_with_the_fly_environment() {
    let cfg = config()
        .machines(2)
        .app_name("cmd-app")
        .region("fra")
        .child_output(ChildOutput::Null);
    let sim = FlySim::start(cfg, child_launch())
        .await
        .expect("children start");
    let ids = sim.machine_ids();
    for _ in 0..4 {
        let resp = get(&sim.url()).await;
        assert_eq!(resp.status, 200);
        let f = parse(&resp.text());
        let machine = field(&f, "machine");
        assert!(ids.contains(&machine));
        assert_eq!(field(&f, "alloc"), machine);
        assert_eq!(field(&f, "app"), "cmd-app");
        assert_eq!(field(&f, "region"), "fra");
        let port: u16 = field(&f, "port").parse().unwrap();
        assert_eq!(sim.machine(&machine).unwrap().addr.unwrap().port(), port);
    }
    assert_eq!(sim.machine(&ids[0]).unwrap().served, 2);

    // Each running Machine names its process.
    let pid = sim
        .machine(&ids[0])
        .unwrap()
        .pid
        .expect("a running child has a pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    // Stopping kills the process; a request forced to it starts a new one.
    let old = sim.machine(&ids[0]).unwrap().addr.unwrap();
    sim.stop_machine(&ids[0]).await.unwrap();
    assert_eq!(sim.machine(&ids[0]).unwrap().pid, None);
    assert!(tokio::net::TcpStream::connect(old).await.is_err());
    let resp = get_with(&sim.url(), &[("fly-force-instance-id", &ids[0])]).await;
    assert_eq!(field(&parse(&resp.text()), "machine"), ids[0]);
    assert_eq!(sim.machine(&ids[0]).unwrap().state, MachineState::Started);
    let new = sim.machine(&ids[0]).unwrap().pid.expect("restarted");
    assert_ne!(new, pid);

    let addrs: Vec<_> = sim.machines().iter().filter_map(|m| m.addr).collect();
    sim.shutdown().await;
    for addr in addrs {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still up"
        );
    }
}

/// Named assumption 37: fly.toml's `[env]` reaches every command Machine,
/// but `PORT` stays flysim's, and the launch's own variables win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_toml_env_reaches_the_machines_but_not_port() {
    let file = flysim::FlyToml::parse(
        "[env]\n  PORT = \"8080\"\n  CHILD_EXTRA = \"from-fly-toml\"\n",
        "fly.toml",
    )
    .unwrap();
    let cfg = || config().machines(1).child_output(ChildOutput::Null);
    let sim = FlySim::start(cfg(), child_launch().fly_toml_env(&file))
        .await
        .unwrap();
    let f = parse(&get(&sim.url()).await.text());
    assert_eq!(field(&f, "extra"), "from-fly-toml");
    let port = sim.machines()[0].addr.unwrap().port();
    assert_eq!(field(&f, "port"), port.to_string());
    assert_ne!(port, 8080);
    sim.shutdown().await;
    let launch = child_launch()
        .env("CHILD_EXTRA", "from-launch")
        .fly_toml_env(&file);
    let sim = FlySim::start(cfg(), launch).await.unwrap();
    let f = parse(&get(&sim.url()).await.text());
    assert_eq!(field(&f, "extra"), "from-launch");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_exits_leaves_its_machine_stopped() {
    let cfg = config().machines(1).child_output(ChildOutput::Null);
    let sim = FlySim::start(cfg, child_launch()).await.unwrap();
    let id = sim.machine_ids()[0].clone();
    let resp = get(&format!("{}/exit", sim.url())).await;
    assert_eq!(resp.text(), "bye");
    tokio::time::timeout(Duration::from_secs(10), sim.all_exited())
        .await
        .expect("all_exited resolves");
    assert_eq!(sim.machine(&id).unwrap().state, MachineState::Stopped);
    // The next request autostarts it again.
    let resp = get(&sim.url()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(sim.machine(&id).unwrap().starts, 2);
    sim.shutdown().await;
}

/// Polls until `id` is in `state` (the test's own timeout bounds it).
async fn wait_state(sim: &FlySim, id: &str, state: MachineState) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while sim.machine(id).unwrap().state != state {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("Machine {id} never became {state}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signalled_machine_stays_in_rotation_until_its_process_exits() {
    let cfg = config().machines(1).child_output(ChildOutput::Null);
    let launch = child_launch()
        .env("CHILD_EXTRA", "from-launch")
        .env("CHILD_TERM_EXIT_MS", "500");
    let sim = FlySim::start(cfg, launch).await.unwrap();
    let id = sim.machine_ids()[0].clone();
    let f = parse(&get(&sim.url()).await.text());
    assert_eq!(field(&f, "extra"), "from-launch");
    assert_eq!(field(&f, "term"), "0");

    sim.signal_machine(&id, Signal::Term).await.unwrap();
    // Still started and still served by the same process, which saw SIGTERM.
    let addr = sim.machine(&id).unwrap().addr.unwrap();
    let mut seen_term = false;
    for _ in 0..200 {
        let resp = get(&format!("http://{addr}/")).await;
        if field(&parse(&resp.text()), "term") == "1" {
            seen_term = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen_term, "the process never saw SIGTERM");
    // It exits on its own: the Machine is stopped, then autostarted again.
    wait_state(&sim, &id, MachineState::Stopped).await;
    assert!(
        sim.events()
            .iter()
            .any(|e| e.message.contains("was sent SIGTERM"))
    );
    let f = parse(&get(&sim.url()).await.text());
    assert_eq!(field(&f, "term"), "0");
    assert_eq!(sim.machine(&id).unwrap().starts, 2);
    // Signals reach only running Machines.
    sim.destroy_machine(&id).await.unwrap();
    assert!(sim.signal_machine(&id, Signal::Term).await.is_err());
    assert!("nope".parse::<Signal>().is_err());
    assert_eq!("term".parse::<Signal>(), Ok(Signal::Term));
    assert_eq!("SIGUSR1".parse::<Signal>(), Ok(Signal::Usr1));
    sim.shutdown().await;
}

/// Starts a `/slow` request through the proxy and waits until the Machine is
/// serving it.
async fn slow_request_in_flight(sim: &FlySim, id: &str) -> tokio::task::JoinHandle<common::Resp> {
    let url = format!("{}/slow", sim.url());
    let id_owned = id.to_owned();
    let request =
        tokio::spawn(async move { get_with(&url, &[("fly-force-instance-id", &id_owned)]).await });
    let addr = sim.machine(id).unwrap().addr.unwrap();
    loop {
        if get(&format!("http://{addr}/inflight")).await.text() == "1" {
            return request;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lets_requests_in_flight_finish() {
    let cfg = config()
        .machines(2)
        .child_output(ChildOutput::Null)
        .kill_signal(Some(Signal::Term))
        .kill_timeout(Duration::from_secs(20));
    // On SIGTERM the child exits after 1.5 s: the slow request (1 s) finishes.
    let launch = child_launch().env("CHILD_TERM_EXIT_MS", "1500");
    let sim = FlySim::start(cfg, launch).await.unwrap();
    let ids = sim.machine_ids();
    let old = sim.machine(&ids[0]).unwrap().addr.unwrap();
    let slow = slow_request_in_flight(&sim, &ids[0]).await;
    sim.destroy_machine(&ids[0]).await.unwrap();
    let resp = slow.await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "slow done");
    // destroy waited for the process to exit.
    assert!(tokio::net::TcpStream::connect(old).await.is_err());
    assert!(sim.events().iter().any(|e| e.message.contains("SIGTERM")));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_outlives_the_kill_timeout_is_killed() {
    let cfg = config()
        .machines(1)
        .child_output(ChildOutput::Null)
        .kill_signal(Some(Signal::Term))
        .kill_timeout(Duration::from_millis(300));
    let launch = child_launch().env("CHILD_IGNORE_TERM", "1");
    let sim = FlySim::start(cfg, launch).await.unwrap();
    let id = sim.machine_ids()[0].clone();
    let old = sim.machine(&id).unwrap().addr.unwrap();
    sim.stop_machine(&id).await.unwrap();
    assert!(tokio::net::TcpStream::connect(old).await.is_err());
    assert_eq!(sim.machine(&id).unwrap().state, MachineState::Stopped);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_kill_signal_a_stop_kills_requests_in_flight() {
    let cfg = config().machines(2).child_output(ChildOutput::Null);
    let sim = FlySim::start(cfg, child_launch()).await.unwrap();
    let ids = sim.machine_ids();
    let slow = slow_request_in_flight(&sim, &ids[0]).await;
    sim.stop_machine(&ids[0]).await.unwrap();
    let resp = slow.await.unwrap();
    assert_eq!(resp.status, 502, "{}", resp.text());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_command_that_does_not_serve_fails_to_start() {
    let cfg = || config().machines(1).child_output(ChildOutput::Null);
    let err = FlySim::start(cfg(), Launch::command("sh", ["-c", "exit 3"]))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("exited before accepting connections"),
        "{err}"
    );
    let err = FlySim::start(
        cfg(),
        Launch::command("/nonexistent/flysim-test-program", Vec::<String>::new()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cannot start"), "{err}");
    let slow = cfg().ready_timeout(Duration::from_millis(300));
    let err = FlySim::start(slow, Launch::command("sh", ["-c", "sleep 30"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_proxies_until_sigterm_and_prints_the_report() {
    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flysim"))
        .args([
            "--machines",
            "2",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--child-output",
            "null",
            "--",
        ])
        .arg(exe)
        .args(child_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut front = None;
    let mut admin = None;
    let mut machines = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("flysim: Machine ") {
                machines.push(rest.split(' ').next().unwrap().to_owned());
            } else if let Some(url) = line.strip_prefix("flysim: front ") {
                front = Some(url.to_owned());
            } else if let Some(url) = line.strip_prefix("flysim: admin ") {
                admin = Some(url.to_owned());
                break;
            }
        }
    })
    .await
    .expect("flysim prints its URLs");
    let front = front.expect("front URL");
    let admin = admin.expect("admin URL");
    assert_eq!(machines.len(), 2);
    for _ in 0..4 {
        let resp = get(&front).await;
        assert_eq!(resp.status, 200);
        assert!(machines.contains(&field(&parse(&resp.text()), "machine")));
    }
    let list = get(&format!("{admin}/machines")).await;
    let list: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("flysim exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert!(rest.contains("replays received"), "{rest}");
    for id in &machines {
        let row = rest
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("{rest}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[2], "2", "{rest}");
    }
}

/// A suspended child process is frozen (it accepts connections but answers
/// nothing) and resumes, the same process, when a request is routed to it;
/// a suspended one can still be stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_process_is_frozen_and_resumes_with_its_memory() {
    let cfg = config()
        .machines(2)
        .child_output(ChildOutput::Null)
        .kill_signal(Some(Signal::Term))
        .kill_timeout(Duration::from_secs(5));
    let sim = FlySim::start(cfg, child_launch()).await.unwrap();
    let ids = sim.machine_ids();
    let addr = sim.machine(&ids[0]).unwrap().addr.unwrap();
    sim.suspend_machine(&ids[0]).await.unwrap();
    assert_eq!(sim.machine(&ids[0]).unwrap().state, MachineState::Suspended);
    // Frozen: the kernel still accepts a connection, the process answers
    // nothing.
    let direct = tokio::time::timeout(
        Duration::from_millis(500),
        get(&format!("http://{addr}/inflight")),
    )
    .await;
    assert!(direct.is_err(), "a frozen process answered");
    // Balanced requests go to the other Machine.
    for _ in 0..3 {
        let resp = get(&sim.url()).await;
        assert_eq!(field(&parse(&resp.text()), "machine"), ids[1]);
    }
    // A request named for it resumes it: the same process (same port), and
    // the slow request finishes.
    let resp = get_with(&sim.url(), &[("fly-force-instance-id", &ids[0])]).await;
    assert_eq!(field(&parse(&resp.text()), "machine"), ids[0]);
    assert_eq!(sim.machine(&ids[0]).unwrap().addr, Some(addr));
    assert_eq!(sim.machine(&ids[0]).unwrap().starts, 2);
    // Suspended again, it can be stopped: its process gets SIGTERM and exits.
    sim.suspend_machine(&ids[0]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), sim.stop_machine(&ids[0]))
        .await
        .expect("a suspended Machine stops")
        .unwrap();
    assert_eq!(sim.machine(&ids[0]).unwrap().state, MachineState::Stopped);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_the_lifecycle_options_and_refuses_bad_ones() {
    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flysim"))
        .args([
            "--machines",
            "1",
            "--port",
            "0",
            "--child-output",
            "null",
            "--auto-stop",
            "suspend",
            "--idle-stop-ms",
            "60000",
            "--min-machines-running",
            "1",
            "--cold-start-ms",
            "40",
            "--resume-ms",
            "7",
            "--health-check-path",
            "/inflight",
            "--health-interval-ms",
            "5000",
            "--response-timeout-ms",
            "1234",
            "--",
        ])
        .arg(&exe)
        .args(child_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let admin = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("flysim: admin ") {
                return url.to_owned();
            }
        }
        panic!("flysim printed no admin URL");
    })
    .await
    .expect("flysim prints its URLs");
    let config: serde_json::Value =
        serde_json::from_slice(&get(&format!("{admin}/config")).await.body).unwrap();
    assert_eq!(config["auto_stop_machines"], "suspend");
    assert_eq!(config["idle_stop_ms"], 60000);
    assert_eq!(config["min_machines_running"], 1);
    assert_eq!(config["cold_start_ms"], 40);
    assert_eq!(config["resume_ms"], 7);
    assert_eq!(config["response_timeout_ms"], 1234);
    assert_eq!(config["health_check"]["path"], "/inflight");
    assert_eq!(config["health_check"]["interval_ms"], 5000);
    child.kill().await.unwrap();

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_flysim"))
        .args(["--auto-stop", "sometimes", "--", "true"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("auto_stop_machines"), "{stderr}");
}
