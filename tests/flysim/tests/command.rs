//! `Launch::Command` (child processes) and the `flysim` binary.
//!
//! The child app is this test executable itself, re-run with the ignored test
//! `child_app` selected: it serves HTTP on `$PORT` when `FLY_MACHINE_ID` is set.

mod common;

use std::convert::Infallible;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use common::{config, get, get_with};
use flysim::{ChildOutput, FlySim, Launch, MachineState};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The child app (only does something when run by flysim).
#[test]
#[ignore = "helper: the child process that the command tests run as a Machine"]
fn child_app() {
    let Ok(machine) = std::env::var("FLY_MACHINE_ID") else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let text = format!(
        "machine={machine} alloc={} app={} region={} port={}",
        env("FLY_ALLOC_ID"),
        env("FLY_APP_NAME"),
        env("FLY_REGION"),
        env("PORT")
    );
    let port: u16 = env("PORT").parse().expect("PORT");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let text = text.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let text = text.clone();
                    async move {
                        if req.uri().path() == "/exit" {
                            tokio::spawn(async {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                std::process::exit(0);
                            });
                            return Ok::<_, Infallible>(http::Response::new(Full::new(
                                Bytes::from("bye"),
                            )));
                        }
                        Ok(http::Response::new(Full::new(Bytes::from(text))))
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

    // Stopping kills the process; a request forced to it starts a new one.
    let old = sim.machine(&ids[0]).unwrap().addr.unwrap();
    sim.stop_machine(&ids[0]).await.unwrap();
    assert!(tokio::net::TcpStream::connect(old).await.is_err());
    let resp = get_with(&sim.url(), &[("fly-force-instance-id", &ids[0])]).await;
    assert_eq!(field(&parse(&resp.text()), "machine"), ids[0]);
    assert_eq!(sim.machine(&ids[0]).unwrap().state, MachineState::Started);

    let addrs: Vec<_> = sim.machines().iter().filter_map(|m| m.addr).collect();
    sim.shutdown().await;
    for addr in addrs {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still up"
        );
    }
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
