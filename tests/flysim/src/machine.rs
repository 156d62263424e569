//! Machines: their environment, their running instances and how they are launched.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The environment Fly gives a Machine (the part flysim simulates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineEnv {
    /// `FLY_MACHINE_ID` (and `FLY_ALLOC_ID`): 14 lowercase hex characters.
    pub machine_id: String,
    /// `FLY_APP_NAME`.
    pub app_name: String,
    /// `FLY_REGION` (and `PRIMARY_REGION`).
    pub region: String,
    /// `FLY_DNS_SERVER`: flysim's loopback DNS server, which answers
    /// `vms.<app>.internal` TXT like Fly's internal DNS (`None` when off).
    pub dns_server: Option<std::net::SocketAddr>,
    /// `PORT`: the port to listen on. `0` for in-process launches: bind
    /// `127.0.0.1:0` and report the address in the returned [`Instance`].
    pub port: u16,
}

impl MachineEnv {
    /// The environment variables of this Machine: `FLY_MACHINE_ID`, `FLY_ALLOC_ID`,
    /// `FLY_APP_NAME`, `FLY_REGION`, `PRIMARY_REGION`, `PORT` and, when
    /// flysim serves DNS, `FLY_DNS_SERVER`.
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            ("FLY_MACHINE_ID".to_owned(), self.machine_id.clone()),
            ("FLY_ALLOC_ID".to_owned(), self.machine_id.clone()),
            ("FLY_APP_NAME".to_owned(), self.app_name.clone()),
            ("FLY_REGION".to_owned(), self.region.clone()),
            ("PRIMARY_REGION".to_owned(), self.region.clone()),
            ("PORT".to_owned(), self.port.to_string()),
        ];
        if let Some(dns) = self.dns_server {
            vars.push(("FLY_DNS_SERVER".to_owned(), dns.to_string()));
        }
        vars
    }
}

/// The lifecycle state of a Machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    /// Running and picked by the load balancer.
    Started,
    /// Not running; started again by a request routed to it (autostart).
    Stopped,
    /// Suspended by autostop (`auto_stop_machines = "suspend"`): out of the
    /// rotation, its process frozen (`SIGSTOP`; an in-process instance just
    /// gets no requests) with its memory kept; a request routed to it
    /// resumes it, faster than a cold start.
    Suspended,
    /// Gone for good: its ID is unknown to routing.
    Destroyed,
}

impl MachineState {
    /// Lowercase name (`started`, `stopped`, `suspended`, `destroyed`).
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Started => "started",
            MachineState::Stopped => "stopped",
            MachineState::Suspended => "suspended",
            MachineState::Destroyed => "destroyed",
        }
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one Machine and its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineInfo {
    /// Machine ID.
    pub id: String,
    /// Lifecycle state.
    pub state: MachineState,
    /// Started and sent `SIGTERM` (a drain, e.g. by the admin
    /// `POST /machines/<id>/drain`) since it last started: it stays in the
    /// rotation until its process exits or it is stopped.
    pub draining: bool,
    /// Address of the running instance (`None` unless started).
    pub addr: Option<SocketAddr>,
    /// Final responses produced by this Machine (replay responses not included).
    pub served: u64,
    /// Responses from this Machine that carried a replay instruction (valid or not).
    pub replays_sent: u64,
    /// Requests delivered to this Machine because of a replay.
    pub replays_received: u64,
    /// Fallback requests (after a failed replay) delivered to this Machine.
    pub fallbacks_received: u64,
    /// How many times this Machine has been started (initial start included).
    pub starts: u64,
    /// Idempotent requests sent again on a new connection because a kept-alive
    /// connection to this Machine closed before any answer (see the proxy docs).
    pub retries: u64,
    /// The app version it runs: 1 at first, the deploy's number after a
    /// deploy updated or created it.
    pub version: u64,
    /// Being updated or replaced by a deploy: out of the rotation, and not
    /// autostarted.
    pub updating: bool,
    /// Its last health check: `None` before any (or with no checks), then
    /// whether it passed. A failing Machine is left out of the rotation.
    pub healthy: Option<bool>,
    /// Requests (and WebSocket tunnels) in flight to it now.
    pub in_flight: u64,
    /// Its network fault, while one lasts.
    pub fault: Option<crate::faults::FaultInfo>,
    /// The OS process ID of its running child process ([`Launch::command`]),
    /// for tools that watch it (`/proc/<pid>`); `None` when it is not
    /// running, has exited, or runs in-process. A restart gives a new one.
    pub pid: Option<u32>,
}

/// A Unix signal flysim can send to a Machine (Fly's Machines API
/// `POST /machines/<id>/signal`, and the `kill_signal` of a stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Signal {
    /// `SIGHUP`.
    Hup,
    /// `SIGINT`: Fly's default `kill_signal`.
    Int,
    /// `SIGQUIT`.
    Quit,
    /// `SIGTERM`: what most servers treat as "shut down gracefully".
    Term,
    /// `SIGUSR1`.
    Usr1,
    /// `SIGUSR2`.
    Usr2,
    /// `SIGKILL`.
    Kill,
}

impl Signal {
    /// The conventional name, e.g. `SIGTERM`.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Hup => "SIGHUP",
            Signal::Int => "SIGINT",
            Signal::Quit => "SIGQUIT",
            Signal::Term => "SIGTERM",
            Signal::Usr1 => "SIGUSR1",
            Signal::Usr2 => "SIGUSR2",
            Signal::Kill => "SIGKILL",
        }
    }

    const ALL: [Signal; 7] = [
        Signal::Hup,
        Signal::Int,
        Signal::Quit,
        Signal::Term,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Kill,
    ];
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Signal {
    type Err = String;

    /// `SIGTERM`, `TERM` or `term` (and the same for the other signals).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        Signal::ALL
            .into_iter()
            .find(|sig| &sig.as_str()[3..] == name)
            .ok_or_else(|| {
                format!("unknown signal {s:?} (SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2 or SIGKILL)")
            })
    }
}

/// The hook an in-process instance gets signals with.
type SignalHook = Arc<dyn Fn(Signal) + Send + Sync>;

enum Stopper {
    Hook(Box<dyn FnOnce() + Send>),
    Child {
        kill: oneshot::Sender<()>,
        done: oneshot::Receiver<()>,
    },
}

/// How a signal reaches a running instance.
#[derive(Clone)]
pub(crate) enum Signaller {
    /// An in-process instance's hook.
    Hook(SignalHook),
    /// A child process, unless it has exited.
    Process { pid: u32, exited: Arc<AtomicBool> },
    /// An in-process instance without a hook.
    Unsupported,
}

impl Signaller {
    /// Delivers `signal`.
    pub(crate) async fn send(&self, signal: Signal) -> io::Result<()> {
        match self {
            Signaller::Hook(hook) => {
                hook(signal);
                Ok(())
            }
            Signaller::Process { pid, exited } => kill(*pid, exited, &signal.as_str()[3..]).await,
            Signaller::Unsupported => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this in-process instance takes no signals (see Instance::on_signal)",
            )),
        }
    }

    /// Freezes (`freeze`) or thaws a child process (`SIGSTOP`/`SIGCONT`), for
    /// a suspend; an in-process instance is left running (it simply gets no
    /// requests while suspended).
    pub(crate) async fn freeze(&self, freeze: bool) -> io::Result<()> {
        match self {
            Signaller::Process { pid, exited } => {
                kill(*pid, exited, if freeze { "STOP" } else { "CONT" }).await
            }
            Signaller::Hook(_) | Signaller::Unsupported => Ok(()),
        }
    }
}

/// `kill -s <name> <pid>`, unless the process has exited.
async fn kill(pid: u32, exited: &AtomicBool, name: &str) -> io::Result<()> {
    if exited.load(Ordering::SeqCst) {
        return Err(io::Error::other(format!("process {pid} has exited")));
    }
    // `kill` rather than libc: no unsafe code in this crate.
    let status = tokio::process::Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "kill -s {name} {pid} failed ({status})"
        )))
    }
}

/// A running app instance: one Machine's process or in-process server.
pub struct Instance {
    addr: SocketAddr,
    stopper: Option<Stopper>,
    signaller: Signaller,
}

impl Instance {
    /// An instance listening on `addr`; `stop` is called once when the Machine is
    /// stopped or destroyed (or the simulator shuts down) and should stop serving.
    pub fn new(addr: SocketAddr, stop: impl FnOnce() + Send + 'static) -> Self {
        Instance {
            addr,
            stopper: Some(Stopper::Hook(Box::new(stop))),
            signaller: Signaller::Unsupported,
        }
    }

    /// Lets [`FlySim::signal_machine`](crate::FlySim::signal_machine) reach this
    /// in-process instance: `hook` is called with each signal sent to it (a child
    /// process gets real signals without this).
    pub fn on_signal(mut self, hook: impl Fn(Signal) + Send + Sync + 'static) -> Self {
        self.signaller = Signaller::Hook(Arc::new(hook));
        self
    }

    /// The address the instance listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The child process's ID, unless it has exited (`None` in-process).
    pub fn pid(&self) -> Option<u32> {
        match &self.signaller {
            Signaller::Process { pid, exited } if !exited.load(Ordering::SeqCst) => Some(*pid),
            _ => None,
        }
    }

    /// How signals reach this instance.
    pub(crate) fn signaller(&self) -> Signaller {
        self.signaller.clone()
    }

    /// Stops the instance and waits for a child process to be gone.
    pub(crate) async fn stop(mut self) {
        match self.stopper.take() {
            Some(Stopper::Hook(f)) => f(),
            Some(Stopper::Child { kill, done }) => {
                let _ = kill.send(());
                let _ = done.await;
            }
            None => {}
        }
    }

    /// Stops the instance as Fly stops a Machine: a child process gets `signal`
    /// and `timeout` to exit before it is killed. In-process instances are
    /// stopped with their stop hook, as by [`Instance::stop`].
    pub(crate) async fn stop_gracefully(mut self, signal: Signal, timeout: Duration) {
        let signaller = self.signaller();
        match self.stopper.take() {
            Some(Stopper::Child { kill, mut done }) => {
                if signaller.send(signal).await.is_ok()
                    && tokio::time::timeout(timeout, &mut done).await.is_ok()
                {
                    return;
                }
                let _ = kill.send(());
                let _ = done.await;
            }
            other => {
                self.stopper = other;
                self.stop().await;
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        match self.stopper.take() {
            Some(Stopper::Hook(f)) => f(),
            Some(Stopper::Child { kill, .. }) => {
                let _ = kill.send(());
            }
            None => {}
        }
    }
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("addr", &self.addr)
            .field(
                "signals",
                &!matches!(self.signaller, Signaller::Unsupported),
            )
            .finish()
    }
}

/// The boxed future an in-process launcher returns.
pub type LaunchFuture = Pin<Box<dyn Future<Output = io::Result<Instance>> + Send>>;

/// An in-process launcher.
pub type LaunchFn = Arc<dyn Fn(MachineEnv) -> LaunchFuture + Send + Sync>;

/// How Machines are started.
#[derive(Clone)]
pub enum Launch {
    /// Child processes: `program` with `args`; the environment gets
    /// [`MachineEnv::vars`]. flysim picks a free loopback port for `PORT` and waits
    /// until `127.0.0.1:PORT` accepts TCP connections.
    Command {
        /// Program to run.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// Extra environment variables (see [`Launch::env`]).
        env: Vec<(String, String)>,
    },
    /// In-process: the closure gets the [`MachineEnv`] (with `port = 0`: bind
    /// `127.0.0.1:0` yourself) and returns the running [`Instance`].
    InProcess(LaunchFn),
}

impl Launch {
    /// An in-process launcher from an async closure.
    pub fn in_process<F, Fut>(f: F) -> Self
    where
        F: Fn(MachineEnv) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<Instance>> + Send + 'static,
    {
        Launch::InProcess(Arc::new(move |env| Box::pin(f(env)) as LaunchFuture))
    }

    /// A child-process launcher.
    pub fn command(
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Launch::Command {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
        }
    }

    /// Adds an environment variable for every child process of a command
    /// launcher (e.g. an app's own settings); in-process launchers ignore it.
    /// `FLY_MACHINE_ID`, `PORT` and the other [`MachineEnv::vars`] cannot be
    /// overridden this way.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        if let Launch::Command { env, .. } = &mut self {
            env.push((key.into(), value.into()));
        }
        self
    }
}

impl Launch {
    /// Sets a fly.toml's `[env]` ([`FlyToml::env`](crate::FlyToml::env))
    /// for every child process of a command launcher, as Fly sets it in
    /// every Machine; in-process launchers ignore it. Variables added with
    /// [`Launch::env`] win over the file's, and `PORT` and the other
    /// [`MachineEnv::vars`] stay flysim's (named assumption 37).
    pub fn fly_toml_env(mut self, file: &crate::FlyToml) -> Self {
        if let Launch::Command { env, .. } = &mut self {
            env.splice(0..0, file.env.iter().cloned());
        }
        self
    }
}

impl fmt::Debug for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Launch::Command { program, args, env } => f
                .debug_struct("Command")
                .field("program", program)
                .field("args", args)
                .field("env", env)
                .finish(),
            Launch::InProcess(_) => f.write_str("InProcess(..)"),
        }
    }
}

/// What happens to the stdout/stderr of child processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChildOutput {
    /// Each line is passed through prefixed with `[<machine id>] `.
    #[default]
    Prefixed,
    /// The children share flysim's stdout/stderr.
    Inherit,
    /// Discarded.
    Null,
}

/// A new random Machine ID (14 lowercase hex characters) not in `taken`.
pub(crate) fn new_machine_id(taken: &[String]) -> String {
    let mut rng = rand::rng();
    loop {
        let n: u64 = rng.random::<u64>() & ((1u64 << 56) - 1);
        let id = format!("{n:014x}");
        if !taken.contains(&id) {
            return id;
        }
    }
}

/// Called by a child supervisor when the child exited on its own.
pub(crate) type ExitCallback = Box<dyn FnOnce(String) + Send>;

/// Starts `program` as a Machine and waits until it accepts connections.
pub(crate) async fn spawn_command(
    program: &str,
    args: &[String],
    extra_env: &[(String, String)],
    mut env: MachineEnv,
    output: ChildOutput,
    ready_timeout: Duration,
    on_exit: ExitCallback,
) -> io::Result<Instance> {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        l.local_addr()?.port()
    };
    env.port = port;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .envs(env.vars())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match output {
        ChildOutput::Prefixed => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        ChildOutput::Inherit => {
            cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        }
        ChildOutput::Null => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {program:?}: {e}")))?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(prefix_lines(
            out,
            tokio::io::stdout(),
            env.machine_id.clone(),
        ));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(prefix_lines(
            err,
            tokio::io::stderr(),
            env.machine_id.clone(),
        ));
    }

    let pid = child.id();
    let exited = Arc::new(AtomicBool::new(false));
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let (exit_tx, mut exit_rx) = oneshot::channel::<String>();
    let exited_flag = exited.clone();
    tokio::spawn(async move {
        tokio::select! {
            status = child.wait() => {
                exited_flag.store(true, Ordering::SeqCst);
                let text = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                // During start-up the waiter below reports the exit; afterwards the
                // simulator is told.
                if let Err(text) = exit_tx.send(text) {
                    on_exit(text);
                }
            }
            _ = kill_rx => {
                let _ = child.kill().await;
                exited_flag.store(true, Ordering::SeqCst);
            }
        }
        let _ = done_tx.send(());
    });
    let instance = Instance {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        stopper: Some(Stopper::Child {
            kill: kill_tx,
            done: done_rx,
        }),
        signaller: match pid {
            Some(pid) => Signaller::Process { pid, exited },
            None => Signaller::Unsupported,
        },
    };

    let deadline = tokio::time::Instant::now() + ready_timeout;
    loop {
        if let Ok(status) = exit_rx.try_recv() {
            return Err(io::Error::other(format!(
                "{program:?} exited before accepting connections on port {port} ({status})"
            )));
        }
        if TcpStream::connect(instance.addr).await.is_ok() {
            // From now on an exit is reported through `on_exit`.
            exit_rx.close();
            if let Ok(status) = exit_rx.try_recv() {
                return Err(io::Error::other(format!(
                    "{program:?} exited right after start-up ({status})"
                )));
            }
            return Ok(instance);
        }
        if tokio::time::Instant::now() >= deadline {
            instance.stop().await;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{program:?} did not accept connections on port {port} within {ready_timeout:?}"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn prefix_lines<R, W>(reader: R, mut writer: W, id: String)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let text = format!("[{id}] {line}\n");
        if writer.write_all(text.as_bytes()).await.is_err() {
            break;
        }
        let _ = writer.flush().await;
    }
}
