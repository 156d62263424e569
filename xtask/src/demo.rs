//! `cargo xtask demo [--serve] [--port N]`: three Machines of example-axum
//! (real processes) behind flysim, and a scripted client that shows the
//! stickiness as a table. `--serve` keeps the cluster up and prints two URLs
//! for a browser: the app's page (`/app`) and flysim's dashboard.

use std::net::SocketAddr;
use std::time::Duration;

use conformance::client::{Client, Request, Response, websocket_echo};
use flysim::{ChildOutput, Config, FlySim, Launch};

use crate::build_examples;

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let serve = args.iter().any(|a| a == "--serve");
    let port = match args.iter().position(|a| a == "--port") {
        Some(i) => args
            .get(i + 1)
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or("--port needs a number")?,
        None if serve => 8080,
        None => 0,
    };
    let binaries = build_examples(&["axum"])?;
    let (_, binary) = binaries
        .into_iter()
        .next()
        .ok_or("examples/axum is missing")?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio: {e}"))?;
    runtime.block_on(async move {
        let config = Config::default()
            .machines(3)
            .front_addr(SocketAddr::from(([127, 0, 0, 1], port)))
            .admin_addr(serve.then(|| SocketAddr::from(([127, 0, 0, 1], 0))))
            .app_name("sticky-demo")
            .child_output(ChildOutput::Null)
            .quiet(true);
        let program = binary.to_string_lossy().into_owned();
        let sim = FlySim::start(config, Launch::command(program, Vec::<String>::new()))
            .await
            .map_err(|e| format!("flysim: {e}"))?;
        let result = script(&sim).await;
        if result.is_ok() && serve {
            println!("\nThe cluster stays up (Ctrl-C to stop). Open in a browser:");
            println!("  the app:       {}/app", sim.url());
            if let Some(admin) = sim.admin_addr() {
                println!("  the dashboard: http://{admin}/   (stop, start, drain, destroy, add)");
            }
            let _ = tokio::signal::ctrl_c().await;
        }
        println!("\n{}", sim.report());
        sim.shutdown().await;
        result
    })
}

struct Table {
    rows: Vec<[String; 5]>,
}

impl Table {
    fn row(&mut self, who: &str, request: &str, served: String, pinned: String, note: String) {
        self.rows
            .push([who.to_owned(), request.to_owned(), served, pinned, note]);
    }

    fn print(&self) {
        let head = [
            "client",
            "request",
            "served by",
            "cookie set to",
            "what happened",
        ];
        let mut widths = head.map(str::len);
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 5]| {
            let parts: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("{}", parts.join("  ").trim_end());
        };
        line(head);
        line(widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str));
        for row in &self.rows {
            line(row.each_ref().map(String::as_str));
        }
    }
}

fn replays(sim: &FlySim) -> u64 {
    sim.machines().iter().map(|m| m.replays_sent).sum()
}

fn short(id: &str) -> String {
    id.chars().take(6).collect()
}

fn served(res: &Response) -> String {
    match (res.status, res.machine()) {
        (200, Some(m)) => short(&m),
        (status, _) => format!("HTTP {status}"),
    }
}

fn pinned(res: &Response) -> String {
    res.pinned_to()
        .map_or_else(|| "-".to_owned(), |p| short(&p))
}

async fn script(sim: &FlySim) -> Result<(), String> {
    let front = sim.front_addr();
    let ids = sim.machine_ids();
    println!("\nflysim: 3 Machines of example-axum behind {}", sim.url());
    for id in &ids {
        println!("  Machine {id} (shown as {})", short(id));
    }
    println!();
    let mut table = Table { rows: Vec::new() };
    let mut alice = Client::default();
    let mut bob = Client::default();

    let res = alice.send(front, Request::get("/")).await?;
    let home = res
        .machine()
        .ok_or_else(|| format!("unexpected answer: {}", res.summary()))?;
    table.row(
        "alice",
        "GET /",
        served(&res),
        pinned(&res),
        "first visit: served where it landed, pinned there".into(),
    );

    let res = bob.send(front, Request::get("/")).await?;
    table.row(
        "bob",
        "GET /",
        served(&res),
        pinned(&res),
        "another first visit, another Machine".into(),
    );

    let before = replays(sim);
    let mut homes = Vec::new();
    for _ in 0..6 {
        homes.push(alice.send(front, Request::get("/")).await?);
    }
    let all_home = homes
        .iter()
        .all(|r| r.machine().as_deref() == Some(home.as_str()));
    table.row(
        "alice",
        "GET / x6",
        format!(
            "{} x6",
            if all_home {
                short(&home)
            } else {
                "MIXED".into()
            }
        ),
        "-".into(),
        format!(
            "every request home; {} replayed there by the proxy",
            replays(sim) - before
        ),
    );

    let before = replays(sim);
    let echo = websocket_echo(front, &format!("/ws?fly_instance_id={home}"), None, "hello").await?;
    let echo_text = match &echo {
        Ok(text) => text.clone(),
        Err(res) => format!("refused: {}", res.status),
    };
    table.row(
        "alice",
        "WebSocket /ws?fly_instance_id=..",
        short(echo_text.split(':').next().unwrap_or("?")),
        "-".into(),
        format!(
            "reconnect lands home (echo {:?}, {} replay)",
            echo_text,
            replays(sim) - before
        ),
    );

    sim.destroy_machine(&home)
        .await
        .map_err(|e| format!("destroy: {e}"))?;
    table.row(
        "-",
        "destroy Machine",
        short(&home),
        "-".into(),
        "alice's Machine is gone".into(),
    );

    let res = alice.send(front, Request::get("/")).await?;
    let new_home = res.machine().unwrap_or_default();
    table.row(
        "alice",
        "GET /",
        served(&res),
        pinned(&res),
        "no error: served elsewhere and re-pinned".into(),
    );
    let mut stayed = 0;
    for _ in 0..3 {
        let res = alice.send(front, Request::get("/")).await?;
        stayed += usize::from(res.machine().as_deref() == Some(new_home.as_str()));
    }
    table.row(
        "alice",
        "GET / x3",
        format!("{} x{stayed}", short(&new_home)),
        "-".into(),
        "sticks to the new home".into(),
    );

    let res = bob.send(front, Request::get("/")).await?;
    table.row(
        "bob",
        "GET /",
        served(&res),
        pinned(&res),
        "other users were never affected".into(),
    );

    table.print();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ok = all_home
        && echo.as_ref().is_ok_and(|t| t == &format!("{home}:hello"))
        && stayed == 3
        && new_home != home
        && !new_home.is_empty();
    if ok {
        println!("\nstickiness held at every step");
        Ok(())
    } else {
        Err("the demo did not show stickiness: see the table".to_owned())
    }
}
