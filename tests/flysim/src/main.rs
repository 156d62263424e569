//! `flysim`: run a command as N simulated Fly Machines behind a local Fly proxy.
//!
//! ```text
//! flysim --machines 3 --port 8080 -- ./target/debug/my-app --some-flag
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use flysim::{
    AutoStop, Balance, ChildOutput, Config, FlySim, FlyToml, Launch, ReplayCacheRule, Signal,
};

/// Run a command as N simulated Fly.io Machines behind a local imitation of Fly's
/// HTTP proxy (fly-replay, autostart, per-Machine counts).
#[derive(Debug, Parser)]
#[command(name = "flysim", version)]
struct Args {
    /// Number of Machines to start.
    #[arg(long, default_value_t = 3)]
    machines: usize,
    /// Front (proxy) port; 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address the front port listens on (the admin port is always on 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Region of every Machine (FLY_REGION) and of the edge (Fly-Region).
    #[arg(long, default_value = "iad")]
    region: String,
    /// App name (FLY_APP_NAME).
    #[arg(long, default_value = "flysim-app")]
    app: String,
    /// Load-balancing strategy.
    #[arg(long, value_enum, default_value_t = BalanceArg::RoundRobin)]
    balance: BalanceArg,
    /// Admin interface port; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    admin_port: u16,
    /// Disable the admin interface.
    #[arg(long)]
    no_admin: bool,
    /// Delay before a Machine flysim starts on its own (autostart, deploy,
    /// scale) is launched, in milliseconds (Fly: ~1300).
    #[arg(long, default_value_t = 0)]
    cold_start_ms: u64,
    /// How long a suspended Machine takes to resume, in milliseconds
    /// [default: a quarter of --cold-start-ms].
    #[arg(long)]
    resume_ms: Option<u64>,
    /// Stop or suspend idle Machines (fly.toml's auto_stop_machines)
    /// [default: off, or the fly.toml's].
    #[arg(long, value_parser = parse_auto_stop)]
    auto_stop: Option<AutoStop>,
    /// Do not start stopped Machines for requests (auto_start_machines = false).
    #[arg(long)]
    no_auto_start: bool,
    /// Autostop leaves at least this many Machines started (fly.toml's
    /// min_machines_running) [default: 0, or the fly.toml's].
    #[arg(long)]
    min_machines_running: Option<usize>,
    /// How long a Machine must be idle (nothing in flight) before autostop
    /// takes it down, in milliseconds.
    #[arg(long, default_value_t = flysim::DEFAULT_IDLE_STOP.as_millis() as u64)]
    idle_stop_ms: u64,
    /// Check every started Machine with GET on this path, leaving failing
    /// ones out of the rotation (fly.toml's [[http_service.checks]] path).
    #[arg(long)]
    health_check_path: Option<String>,
    /// How often health checks run, in milliseconds [default: 1000, or the
    /// fly.toml check's interval].
    #[arg(long)]
    health_interval_ms: Option<u64>,
    /// How long a health check may take, in milliseconds [default: 2000, or
    /// the fly.toml check's timeout].
    #[arg(long)]
    health_timeout_ms: Option<u64>,
    /// How long a deploy waits for a Machine to pass its health check, in
    /// milliseconds.
    #[arg(long, default_value_t = 60_000)]
    deploy_check_timeout_ms: u64,
    /// How long the proxy waits for a Machine's answer before a 502, in
    /// milliseconds.
    #[arg(long, default_value_t = flysim::DEFAULT_RESPONSE_TIMEOUT.as_millis() as u64)]
    response_timeout_ms: u64,
    /// How long a strict replay to a destroyed Machine takes to fail, in milliseconds.
    #[arg(long, default_value_t = 7500)]
    dead_target_delay_ms: u64,
    /// How long each child may take to accept connections, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    ready_timeout_ms: u64,
    /// Signal a stopped or destroyed Machine's process gets before it is killed
    /// (Fly's kill_signal, e.g. SIGINT or SIGTERM); without it, it is killed at
    /// once (with --fly-toml: the file's kill_signal, or Fly's default SIGINT).
    #[arg(long)]
    kill_signal: Option<Signal>,
    /// How long a signalled process may take to exit before it is killed, in
    /// milliseconds (Fly's kill_timeout) [default: 5000, or the fly.toml's].
    #[arg(long)]
    kill_timeout_ms: Option<u64>,
    /// A session-based replay cache rule, as in fly.toml:
    /// 'path_prefix=/,ttl_seconds=300,type=cookie,name=fly-machine-id[,allow_bypass=true]'
    /// (type=header for a request header). Repeatable; the longest matching
    /// path_prefix wins.
    #[arg(long = "replay-cache", value_name = "RULE", value_parser = ReplayCacheRule::parse)]
    replay_cache: Vec<ReplayCacheRule>,
    /// Read replay_cache rules, kill_signal, kill_timeout, internal_port,
    /// h2_backend, autostop, the first check and [env] (set in every Machine
    /// but PORT and FLY_*) from this fly.toml (command-line flags given as well win; --replay-cache
    /// rules are added to the file's).
    #[arg(long, value_name = "FILE")]
    fly_toml: Option<PathBuf>,
    /// Speak h2c (HTTP/2 with prior knowledge) to the Machines, like Fly with
    /// fly.toml's http_options.h2_backend = true (gRPC needs it); the app
    /// must then serve h2c on its port (also read from --fly-toml).
    #[arg(long)]
    h2_backend: bool,
    /// X-Forwarded-Proto sent to the Machines.
    #[arg(long, default_value = "https")]
    forwarded_proto: String,
    /// What to do with the children's stdout/stderr.
    #[arg(long, value_enum, default_value_t = OutputArg::Prefixed)]
    child_output: OutputArg,
    /// Log one line per request.
    #[arg(long)]
    log_requests: bool,
    /// The command to run for every Machine (after `--`).
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BalanceArg {
    RoundRobin,
    Random,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputArg {
    Prefixed,
    Inherit,
    Null,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("flysim=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();

    let fly_toml = match args.fly_toml.as_deref().map(FlyToml::read).transpose() {
        Ok(file) => file,
        Err(e) => {
            eprintln!("flysim: could not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = Config::default();
    if let Some(file) = &fly_toml {
        config = config.fly_toml(file);
    }
    if args.kill_signal.is_some() {
        config = config.kill_signal(args.kill_signal);
    }
    if let Some(ms) = args.kill_timeout_ms {
        config = config.kill_timeout(Duration::from_millis(ms));
    }
    for rule in &args.replay_cache {
        config = config.replay_cache(rule.clone());
    }
    if args.h2_backend {
        config = config.h2_backend(true);
    }
    if let Some(mode) = args.auto_stop {
        config = config.auto_stop(mode);
    }
    if args.no_auto_start {
        config = config.auto_start(false);
    }
    if let Some(n) = args.min_machines_running {
        config = config.min_machines_running(n);
    }
    if let Some(ms) = args.resume_ms {
        config = config.resume(Duration::from_millis(ms));
    }
    let file_check = fly_toml.as_ref().and_then(|f| f.health_check.clone());
    if args.health_check_path.is_some()
        || args.health_interval_ms.is_some()
        || args.health_timeout_ms.is_some()
        || file_check.is_some()
    {
        let mut check = file_check.unwrap_or_default();
        if let Some(path) = &args.health_check_path {
            check.path = path.clone();
        }
        if let Some(ms) = args.health_interval_ms {
            check.interval = Duration::from_millis(ms);
        }
        if let Some(ms) = args.health_timeout_ms {
            check.timeout = Duration::from_millis(ms);
        }
        config = config.health_check(Some(check));
    }
    let config = config
        .machines(args.machines)
        .front_addr(SocketAddr::new(args.host, args.port))
        .admin_addr((!args.no_admin).then(|| SocketAddr::from(([127, 0, 0, 1], args.admin_port))))
        .app_name(args.app.clone())
        .region(args.region.clone())
        .balance(match args.balance {
            BalanceArg::RoundRobin => Balance::RoundRobin,
            BalanceArg::Random => Balance::Random,
        })
        .forwarded_proto(args.forwarded_proto.clone())
        .cold_start(Duration::from_millis(args.cold_start_ms))
        .dead_target_delay(Duration::from_millis(args.dead_target_delay_ms))
        .ready_timeout(Duration::from_millis(args.ready_timeout_ms))
        .idle_stop(Duration::from_millis(args.idle_stop_ms))
        .deploy_check_timeout(Duration::from_millis(args.deploy_check_timeout_ms))
        .response_timeout(Duration::from_millis(args.response_timeout_ms))
        // Errors are reported through tracing below.
        .quiet(true)
        .log_requests(args.log_requests)
        .child_output(match args.child_output {
            OutputArg::Prefixed => ChildOutput::Prefixed,
            OutputArg::Inherit => ChildOutput::Inherit,
            OutputArg::Null => ChildOutput::Null,
        });
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let mut launch = Launch::command(program.clone(), rest.to_vec());
    if let Some(file) = &fly_toml {
        launch = launch.fly_toml_env(file);
    }

    let sim = match FlySim::start(config, launch).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("flysim: could not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "flysim: app {} in region {}, {} Machines",
        args.app,
        args.region,
        sim.machines().len()
    );
    for m in sim.machines() {
        if let Some(addr) = m.addr {
            println!("flysim: Machine {} at {addr}", m.id);
        }
    }
    if let (Some(file), Some(path)) = (&fly_toml, &args.fly_toml) {
        let port = file
            .internal_port
            .map_or_else(|| "none".to_owned(), |p| p.to_string());
        let signal = args.kill_signal.or(file.kill_signal).unwrap_or(Signal::Int);
        let timeout = args
            .kill_timeout_ms
            .map(Duration::from_millis)
            .or(file.kill_timeout)
            .unwrap_or(Duration::from_secs(5));
        let env: Vec<&str> = file.env.iter().map(|(k, _)| k.as_str()).collect();
        println!(
            "flysim: fly.toml {}: internal_port {port} (each Machine still gets a free PORT), kill_signal {signal}, kill_timeout {timeout:?}, [env] {}",
            path.display(),
            if env.is_empty() {
                "none".to_owned()
            } else {
                env.join(", ")
            }
        );
    }
    for rule in fly_toml
        .iter()
        .flat_map(|f| f.replay_cache.iter())
        .chain(&args.replay_cache)
    {
        println!("flysim: replay cache rule {rule}");
    }
    println!("flysim: front {}", sim.url());
    println!(
        "flysim: protocols: HTTP/1.1 and h2c from clients, {} to the Machines",
        if sim.config().h2_backend_on() {
            "h2c (h2_backend)"
        } else {
            "HTTP/1.1"
        }
    );
    let c = sim.config();
    println!(
        "flysim: autostop {} (idle {:?}, min {} running), autostart {}, cold start {:?}, resume {:?}, response timeout {:?}",
        c.auto_stop_mode(),
        c.idle_stop_time(),
        c.min_running(),
        if c.auto_start_on() { "on" } else { "off" },
        c.cold_start_time(),
        c.resume_time(),
        c.response_timeout_time(),
    );
    if let Some(check) = c.health_check_settings() {
        println!(
            "flysim: health check GET {} every {:?} (timeout {:?})",
            check.path, check.interval, check.timeout
        );
    }
    if let Some(admin) = sim.admin_addr() {
        println!("flysim: admin http://{admin}");
    }
    if let Some(dns) = sim.dns_addr() {
        println!(
            "flysim: dns {dns} (vms.{}.internal TXT; FLY_DNS_SERVER)",
            args.app
        );
    }

    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            eprintln!("flysim: interrupted, stopping");
            ExitCode::SUCCESS
        }
        _ = sigterm() => {
            eprintln!("flysim: terminated, stopping");
            ExitCode::SUCCESS
        }
        _ = sim.all_exited() => {
            eprintln!("flysim: every Machine's process exited, stopping");
            ExitCode::FAILURE
        }
    };
    let report = sim.report();
    sim.shutdown().await;
    print!("{report}");
    code
}

fn parse_auto_stop(s: &str) -> Result<AutoStop, String> {
    s.parse()
}

#[cfg(unix)]
async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn sigterm() {
    std::future::pending().await
}
