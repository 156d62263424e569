//! The simulator: Machines, their lifecycle, the balancer, events and the servers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::body::ProxyBody;
use crate::events::{Event, EventKind};
use crate::machine::{self, Instance, Launch, MachineEnv, MachineInfo, MachineState, Signal};
use crate::proxy::ConnInfo;
use crate::{Balance, Config};

/// Events kept in memory; older ones are dropped.
const MAX_EVENTS: usize = 10_000;

#[derive(Default)]
struct Counters {
    served: u64,
    replays_sent: u64,
    replays_received: u64,
    fallbacks_received: u64,
    starts: u64,
    retries: u64,
}

struct Slot {
    id: String,
    state: MachineState,
    addr: Option<SocketAddr>,
    instance: Option<Instance>,
    generation: u64,
    lifecycle: Arc<tokio::sync::Mutex<()>>,
    counters: Counters,
}

/// Which counter to bump.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Served,
    ReplaySent,
    ReplayReceived,
    FallbackReceived,
    Retry,
}

/// Where a Machine stands, for routing.
pub(crate) enum Lookup {
    Started,
    Stopped,
    /// Destroyed or never existed.
    Gone,
}

/// The balancer's choice.
pub(crate) enum Pick {
    Started(String, SocketAddr),
    /// Nothing started: this stopped Machine should be autostarted.
    Start(String),
    None,
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    launch: Launch,
    slots: Mutex<Vec<Slot>>,
    events: Mutex<VecDeque<Event>>,
    pub(crate) client: Client<HttpConnector, ProxyBody>,
    rr: AtomicUsize,
    closing: AtomicBool,
    exits: AtomicUsize,
    exited: Notify,
    pub(crate) shutdown: watch::Sender<bool>,
    weak: Weak<Shared>,
    /// The DNS server's address, set once at start-up.
    dns_addr: std::sync::OnceLock<Option<SocketAddr>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn not_found(id: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no Machine {id:?}"))
}

fn destroyed(id: &str) -> io::Error {
    io::Error::other(format!("Machine {id} is destroyed"))
}

impl Shared {
    fn new(config: Config, launch: Launch) -> Arc<Shared> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let (shutdown, _) = watch::channel(false);
        Arc::new_cyclic(|weak| Shared {
            config,
            launch,
            slots: Mutex::new(Vec::new()),
            events: Mutex::new(VecDeque::new()),
            client,
            rr: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            exits: AtomicUsize::new(0),
            exited: Notify::new(),
            shutdown,
            weak: weak.clone(),
            dns_addr: std::sync::OnceLock::new(),
        })
    }

    // ----- events -----

    pub(crate) fn record(
        &self,
        kind: EventKind,
        code: Option<&str>,
        request_id: Option<&str>,
        machine: Option<&str>,
        message: String,
    ) {
        let event = Event {
            kind,
            code: code.map(str::to_owned),
            request_id: request_id.map(str::to_owned),
            machine: machine.map(str::to_owned),
            message,
            at: SystemTime::now(),
        };
        if event.is_error() {
            tracing::warn!(code = ?event.code, request_id = ?event.request_id, "{}", event.message);
            if !self.config.quiet {
                eprintln!("flysim: {}", event.message);
            }
        } else {
            tracing::info!("{}", event.message);
        }
        let mut events = lock(&self.events);
        if events.len() == MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(event);
    }

    pub(crate) fn events(&self) -> Vec<Event> {
        lock(&self.events).iter().cloned().collect()
    }

    // ----- state queries -----

    pub(crate) fn count(&self, id: &str, counter: Counter) {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.iter_mut().find(|s| s.id == id) {
            let c = &mut slot.counters;
            match counter {
                Counter::Served => c.served += 1,
                Counter::ReplaySent => c.replays_sent += 1,
                Counter::ReplayReceived => c.replays_received += 1,
                Counter::FallbackReceived => c.fallbacks_received += 1,
                Counter::Retry => c.retries += 1,
            }
        }
    }

    /// The started Machine listening on `addr`, if any.
    pub(crate) fn id_at(&self, addr: SocketAddr) -> Option<String> {
        lock(&self.slots)
            .iter()
            .find(|s| s.addr == Some(addr))
            .map(|s| s.id.clone())
    }

    pub(crate) fn lookup(&self, id: &str) -> Lookup {
        match lock(&self.slots)
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.state)
        {
            Some(MachineState::Started) => Lookup::Started,
            Some(MachineState::Stopped) => Lookup::Stopped,
            Some(MachineState::Destroyed) | None => Lookup::Gone,
        }
    }

    pub(crate) fn machines(&self) -> Vec<MachineInfo> {
        lock(&self.slots)
            .iter()
            .map(|s| MachineInfo {
                id: s.id.clone(),
                state: s.state,
                addr: s.addr,
                served: s.counters.served,
                replays_sent: s.counters.replays_sent,
                replays_received: s.counters.replays_received,
                fallbacks_received: s.counters.fallbacks_received,
                starts: s.counters.starts,
                retries: s.counters.retries,
            })
            .collect()
    }

    pub(crate) fn report(&self) -> String {
        let machines = self.machines();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<14}  {:<9}  {:>8}  {:>12}  {:>16}",
            "machine", "state", "served", "replays sent", "replays received"
        );
        let (mut served, mut sent, mut received) = (0, 0, 0);
        for m in &machines {
            served += m.served;
            sent += m.replays_sent;
            received += m.replays_received;
            let _ = writeln!(
                out,
                "{:<14}  {:<9}  {:>8}  {:>12}  {:>16}",
                m.id, m.state, m.served, m.replays_sent, m.replays_received
            );
        }
        let _ = writeln!(
            out,
            "{:<14}  {:<9}  {:>8}  {:>12}  {:>16}",
            "total", "", served, sent, received
        );
        out
    }

    /// The balancer: a started Machine not in `exclude`, or a stopped one to start.
    pub(crate) fn pick(&self, exclude: &[String]) -> Pick {
        let slots = lock(&self.slots);
        let candidates: Vec<(&str, SocketAddr)> = slots
            .iter()
            .filter(|s| s.state == MachineState::Started && !exclude.contains(&s.id))
            .filter_map(|s| s.addr.map(|a| (s.id.as_str(), a)))
            .collect();
        if !candidates.is_empty() {
            let i = match self.config.balance {
                Balance::RoundRobin => self.rr.fetch_add(1, Ordering::Relaxed) % candidates.len(),
                Balance::Random => rand::rng().random_range(0..candidates.len()),
            };
            let (id, addr) = candidates[i];
            return Pick::Started(id.to_owned(), addr);
        }
        slots
            .iter()
            .find(|s| s.state == MachineState::Stopped && !exclude.contains(&s.id))
            .map_or(Pick::None, |s| Pick::Start(s.id.clone()))
    }

    // ----- lifecycle -----

    fn create_slot(&self) -> String {
        let mut slots = lock(&self.slots);
        let taken: Vec<String> = slots.iter().map(|s| s.id.clone()).collect();
        let id = machine::new_machine_id(&taken);
        slots.push(Slot {
            id: id.clone(),
            state: MachineState::Stopped,
            addr: None,
            instance: None,
            generation: 0,
            lifecycle: Arc::new(tokio::sync::Mutex::new(())),
            counters: Counters::default(),
        });
        id
    }

    fn lifecycle_lock(&self, id: &str) -> io::Result<Arc<tokio::sync::Mutex<()>>> {
        lock(&self.slots)
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.lifecycle.clone())
            .ok_or_else(|| not_found(id))
    }

    /// Starts a stopped Machine because a request was routed to it (after the cold
    /// start delay), or returns the address of a started one. The start runs in its
    /// own task, so it completes even if the caller gives up waiting.
    pub(crate) async fn ensure_started(&self, id: &str) -> io::Result<SocketAddr> {
        {
            let slots = lock(&self.slots);
            match slots.iter().find(|s| s.id == id) {
                None => return Err(not_found(id)),
                Some(s) if s.state == MachineState::Destroyed => return Err(destroyed(id)),
                Some(s) if s.state == MachineState::Started => {
                    if let Some(addr) = s.addr {
                        return Ok(addr);
                    }
                }
                Some(_) => {}
            }
        }
        let me = self
            .weak
            .upgrade()
            .ok_or_else(|| io::Error::other("flysim is shut down"))?;
        let id = id.to_owned();
        tokio::spawn(async move { me.start_inner(&id, true).await })
            .await
            .map_err(io::Error::other)?
    }

    async fn start_inner(&self, id: &str, autostart: bool) -> io::Result<SocketAddr> {
        let lifecycle = self.lifecycle_lock(id)?;
        let _guard = lifecycle.lock().await;
        if self.closing.load(Ordering::SeqCst) {
            return Err(io::Error::other("flysim is shutting down"));
        }
        let generation = {
            let mut slots = lock(&self.slots);
            let slot = slots
                .iter_mut()
                .find(|s| s.id == id)
                .ok_or_else(|| not_found(id))?;
            match slot.state {
                MachineState::Destroyed => return Err(destroyed(id)),
                MachineState::Started => {
                    if let Some(addr) = slot.addr {
                        return Ok(addr);
                    }
                }
                MachineState::Stopped => {}
            }
            slot.generation += 1;
            slot.generation
        };
        if autostart && !self.config.cold_start.is_zero() {
            tokio::time::sleep(self.config.cold_start).await;
        }
        let env = MachineEnv {
            machine_id: id.to_owned(),
            app_name: self.config.app_name.clone(),
            region: self.config.region.clone(),
            dns_server: *self.dns_addr.get().unwrap_or(&None),
            port: 0,
        };
        let launched = match &self.launch {
            Launch::InProcess(f) => f(env).await,
            Launch::Command {
                program,
                args,
                env: extra_env,
            } => {
                let weak = self.weak.clone();
                let exit_id = id.to_owned();
                let on_exit: machine::ExitCallback = Box::new(move |status| {
                    if let Some(shared) = weak.upgrade() {
                        shared.machine_exited(&exit_id, generation, &status);
                    }
                });
                machine::spawn_command(
                    program,
                    args,
                    extra_env,
                    env,
                    self.config.child_output,
                    self.config.ready_timeout,
                    on_exit,
                )
                .await
            }
        };
        let instance = match launched {
            Ok(instance) => instance,
            Err(e) => {
                self.record(
                    EventKind::Lifecycle,
                    None,
                    None,
                    Some(id),
                    format!("Machine {id} failed to start: {e}"),
                );
                return Err(e);
            }
        };
        if self.closing.load(Ordering::SeqCst) {
            instance.stop().await;
            return Err(io::Error::other("flysim is shutting down"));
        }
        let addr = instance.addr();
        {
            let mut slots = lock(&self.slots);
            if let Some(slot) = slots.iter_mut().find(|s| s.id == id) {
                slot.state = MachineState::Started;
                slot.addr = Some(addr);
                slot.instance = Some(instance);
                slot.counters.starts += 1;
            }
        }
        if autostart {
            self.record(
                EventKind::Autostart,
                None,
                None,
                Some(id),
                format!("Machine {id} autostarted at {addr}"),
            );
        } else {
            self.record(
                EventKind::Lifecycle,
                None,
                None,
                Some(id),
                format!("Machine {id} started at {addr}"),
            );
        }
        Ok(addr)
    }

    fn machine_exited(&self, id: &str, generation: u64, status: &str) {
        let instance = {
            let mut slots = lock(&self.slots);
            let Some(slot) = slots.iter_mut().find(|s| s.id == id) else {
                return;
            };
            if slot.generation != generation || slot.state != MachineState::Started {
                return;
            }
            slot.state = MachineState::Stopped;
            slot.addr = None;
            slot.instance.take()
        };
        drop(instance);
        self.exits.fetch_add(1, Ordering::SeqCst);
        self.record(
            EventKind::Lifecycle,
            None,
            None,
            Some(id),
            format!("Machine {id} exited ({status}); it is now stopped"),
        );
        self.exited.notify_waiters();
    }

    pub(crate) async fn start_machine(&self, id: &str) -> io::Result<()> {
        self.start_inner(id, false).await.map(|_| ())
    }

    pub(crate) async fn stop_machine(&self, id: &str) -> io::Result<()> {
        self.take_down(id, MachineState::Stopped).await
    }

    pub(crate) async fn destroy_machine(&self, id: &str) -> io::Result<()> {
        self.take_down(id, MachineState::Destroyed).await
    }

    async fn take_down(&self, id: &str, to: MachineState) -> io::Result<()> {
        let lifecycle = self.lifecycle_lock(id)?;
        let _guard = lifecycle.lock().await;
        let (instance, was) = {
            let mut slots = lock(&self.slots);
            let slot = slots
                .iter_mut()
                .find(|s| s.id == id)
                .ok_or_else(|| not_found(id))?;
            let was = slot.state;
            if was == MachineState::Destroyed {
                return Err(destroyed(id));
            }
            slot.state = to;
            slot.addr = None;
            (slot.instance.take(), was)
        };
        if let Some(instance) = instance {
            match self.config.kill_signal {
                Some(signal) => {
                    self.record(
                        EventKind::Lifecycle,
                        None,
                        None,
                        Some(id),
                        format!(
                            "Machine {id} is stopping: {signal}, killed if still running after {:?}",
                            self.config.kill_timeout
                        ),
                    );
                    instance
                        .stop_gracefully(signal, self.config.kill_timeout)
                        .await;
                }
                None => instance.stop().await,
            }
        }
        if was != to {
            let verb = if to == MachineState::Destroyed {
                "destroyed"
            } else {
                "stopped"
            };
            self.record(
                EventKind::Lifecycle,
                None,
                None,
                Some(id),
                format!("Machine {id} {verb}"),
            );
        }
        Ok(())
    }

    pub(crate) async fn signal_machine(&self, id: &str, signal: Signal) -> io::Result<()> {
        let signaller = {
            let slots = lock(&self.slots);
            let slot = slots
                .iter()
                .find(|s| s.id == id)
                .ok_or_else(|| not_found(id))?;
            match (&slot.instance, slot.state) {
                (Some(instance), MachineState::Started) => instance.signaller(),
                (_, MachineState::Destroyed) => return Err(destroyed(id)),
                _ => return Err(io::Error::other(format!("Machine {id} is not running"))),
            }
        };
        signaller.send(signal).await?;
        self.record(
            EventKind::Lifecycle,
            None,
            None,
            Some(id),
            format!("Machine {id} was sent {signal}"),
        );
        Ok(())
    }

    pub(crate) async fn add_machine(&self) -> io::Result<String> {
        let id = self.create_slot();
        self.record(
            EventKind::Lifecycle,
            None,
            None,
            Some(&id),
            format!("Machine {id} added"),
        );
        match self.start_inner(&id, false).await {
            Ok(_) => Ok(id),
            Err(e) => Err(e),
        }
    }

    /// Stops every instance (waiting for child processes) and refuses new starts.
    async fn stop_all(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let locks: Vec<Arc<tokio::sync::Mutex<()>>> = lock(&self.slots)
            .iter()
            .map(|s| s.lifecycle.clone())
            .collect();
        for lifecycle in locks {
            let _guard = lifecycle.lock().await;
        }
        let instances: Vec<Instance> = {
            let mut slots = lock(&self.slots);
            slots
                .iter_mut()
                .filter_map(|s| {
                    if s.state == MachineState::Started {
                        s.state = MachineState::Stopped;
                    }
                    s.addr = None;
                    s.instance.take()
                })
                .collect()
        };
        for instance in instances {
            instance.stop().await;
        }
    }

    /// Synchronous best-effort version of [`Shared::stop_all`], for `Drop`.
    fn stop_all_now(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let instances: Vec<Instance> = {
            let mut slots = lock(&self.slots);
            slots
                .iter_mut()
                .filter_map(|s| {
                    if s.state == MachineState::Started {
                        s.state = MachineState::Stopped;
                    }
                    s.addr = None;
                    s.instance.take()
                })
                .collect()
        };
        drop(instances);
    }

    fn has_started(&self) -> bool {
        lock(&self.slots)
            .iter()
            .any(|s| s.state == MachineState::Started)
    }
}

/// A running simulator: Machines, the front (proxy) port and the admin port.
///
/// Dropping it stops the servers and the Machines (child processes are killed);
/// [`FlySim::shutdown`] does the same and waits for everything to be gone.
pub struct FlySim {
    shared: Arc<Shared>,
    front_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for FlySim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlySim")
            .field("front_addr", &self.front_addr)
            .field("admin_addr", &self.admin_addr)
            .field("machines", &self.shared.machines())
            .finish()
    }
}

impl FlySim {
    /// Binds the front and admin ports, starts `config.machines` Machines with
    /// `launch` and begins proxying. Fails if a port cannot be bound or a Machine
    /// cannot be started (the ones already started are stopped again).
    pub async fn start(config: Config, launch: Launch) -> io::Result<FlySim> {
        validate(&config)?;
        let front = TcpListener::bind(config.front_addr).await?;
        let admin = match config.admin_addr {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let dns = match config.dns_addr {
            Some(addr) => Some(tokio::net::UdpSocket::bind(addr).await?),
            None => None,
        };
        let front_addr = front.local_addr()?;
        let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
        let dns_addr = dns
            .as_ref()
            .map(tokio::net::UdpSocket::local_addr)
            .transpose()?;
        let n = config.machines;
        let shared = Shared::new(config, launch);
        let _ = shared.dns_addr.set(dns_addr);
        // DNS answers from the start: booting Machines look their peers up.
        let dns_task = dns.map(|dns| tokio::spawn(crate::dns::serve(shared.clone(), dns)));
        let ids: Vec<String> = (0..n).map(|_| shared.create_slot()).collect();
        let starts = ids.iter().map(|id| shared.start_inner(id, false));
        let results = futures_util::future::join_all(starts).await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            if let Some(task) = &dns_task {
                task.abort();
            }
            shared.stop_all().await;
            return Err(e);
        }
        let mut tasks = vec![tokio::spawn(serve_front(shared.clone(), front))];
        tasks.extend(dns_task);
        if let Some(admin) = admin {
            tasks.push(tokio::spawn(crate::admin::serve(shared.clone(), admin)));
        }
        Ok(FlySim {
            shared,
            front_addr,
            admin_addr,
            tasks,
        })
    }

    /// The loopback DNS server answering `vms.<app>.internal` TXT, if on.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        *self.shared.dns_addr.get().unwrap_or(&None)
    }

    /// The front URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.front_addr)
    }

    /// The front (proxy) address.
    pub fn front_addr(&self) -> SocketAddr {
        self.front_addr
    }

    /// The admin interface address, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The settings this simulator runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Every Machine (destroyed ones included), in creation order.
    pub fn machines(&self) -> Vec<MachineInfo> {
        self.shared.machines()
    }

    /// One Machine by ID.
    pub fn machine(&self, id: &str) -> Option<MachineInfo> {
        self.shared.machines().into_iter().find(|m| m.id == id)
    }

    /// Every Machine ID (destroyed ones included), in creation order.
    pub fn machine_ids(&self) -> Vec<String> {
        self.shared.machines().into_iter().map(|m| m.id).collect()
    }

    /// Stops a Machine: it leaves the proxy's rotation at once and its instance
    /// is stopped (stop hook called; a child is killed, or with
    /// [`Config::kill_signal`] sent that signal and given
    /// [`Config::kill_timeout`] to exit, and this waits for it); it keeps its
    /// ID and is started again by a request routed to it or by
    /// [`FlySim::start_machine`]. Stopping a stopped Machine does nothing.
    pub async fn stop_machine(&self, id: &str) -> io::Result<()> {
        self.shared.stop_machine(id).await
    }

    /// Starts a stopped Machine (no cold-start delay). Starting a started Machine does
    /// nothing; a destroyed one cannot be started.
    pub async fn start_machine(&self, id: &str) -> io::Result<()> {
        self.shared.start_machine(id).await
    }

    /// Destroys a Machine: routing treats its ID as unknown at once, its instance
    /// is stopped as by [`FlySim::stop_machine`], and it is never started again.
    pub async fn destroy_machine(&self, id: &str) -> io::Result<()> {
        self.shared.destroy_machine(id).await
    }

    /// Sends `signal` to a started Machine's process (or to the hook an
    /// in-process instance set with [`Instance::on_signal`]), like Fly's
    /// `POST /machines/<id>/signal`. The Machine's state does not change: it
    /// stays in the proxy's rotation; if the process then exits on its own,
    /// the Machine becomes stopped (and is autostarted by the next request
    /// routed to it). Use it to trigger an app's drain (`SIGTERM`).
    pub async fn signal_machine(&self, id: &str, signal: Signal) -> io::Result<()> {
        self.shared.signal_machine(id, signal).await
    }

    /// Adds a new Machine (new random ID), starts it and returns its ID.
    pub async fn add_machine(&self) -> io::Result<String> {
        self.shared.add_machine().await
    }

    /// Everything recorded so far (the newest 10,000 events).
    pub fn events(&self) -> Vec<Event> {
        self.shared.events()
    }

    /// Forgets the recorded events.
    pub fn clear_events(&self) {
        lock(&self.shared.events).clear();
    }

    /// The per-Machine table: machine, state, served, replays sent, replays received.
    pub fn report(&self) -> String {
        self.shared.report()
    }

    /// Resolves once no Machine is running and at least one child process exited on
    /// its own (used by the binary to quit when the app exits).
    pub async fn all_exited(&self) {
        loop {
            let notified = self.shared.exited.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let any_exit = self.shared.exits.load(Ordering::SeqCst) > 0;
            if any_exit && !self.shared.has_started() {
                return;
            }
            notified.await;
        }
    }

    /// Stops the servers and every Machine, waiting for child processes to exit.
    pub async fn shutdown(mut self) {
        let _ = self.shared.shutdown.send(true);
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.shared.stop_all().await;
    }
}

impl Drop for FlySim {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        for task in &self.tasks {
            task.abort();
        }
        self.shared.stop_all_now();
    }
}

/// Refuses settings that would produce invalid headers or environments.
fn validate(config: &Config) -> io::Result<()> {
    let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    if !(config.region.len() == 3 && config.region.bytes().all(|b| b.is_ascii_lowercase())) {
        return invalid(format!(
            "region {:?} is not a 3-letter lowercase region code",
            config.region
        ));
    }
    if !crate::replay::is_app_name(&config.app_name) {
        return invalid(format!(
            "app name {:?} is not a valid Fly app name (lowercase letters, digits, dashes)",
            config.app_name
        ));
    }
    if config.forwarded_proto.is_empty()
        || !config
            .forwarded_proto
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
    {
        return invalid(format!(
            "forwarded_proto {:?} is not a URI scheme",
            config.forwarded_proto
        ));
    }
    Ok(())
}

async fn serve_front(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("flysim: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local_port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
        let conn = ConnInfo { peer, local_port };
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(shared.handle(req, conn).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}
