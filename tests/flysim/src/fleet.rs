//! The app's Machines: their slots, states and counters, and their lifecycle
//! (create, start and autostart, stop, destroy, signal, exit), as Fly's
//! Machines API would change them.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::Config;
use crate::balance::Candidate;
use crate::events::{EventKind, EventLog};
use crate::faults::{FaultInfo, FaultKind};
use crate::machine::{self, Instance, Launch, MachineEnv, MachineInfo, MachineState, Signal};

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
    /// Sent `SIGTERM` while started (see `MachineInfo::draining`).
    draining: bool,
    addr: Option<SocketAddr>,
    instance: Option<Instance>,
    generation: u64,
    lifecycle: Arc<tokio::sync::Mutex<()>>,
    counters: Counters,
    /// The app version it runs (see `MachineInfo::version`).
    version: u64,
    /// Being updated or replaced by a deploy.
    updating: bool,
    /// Its last health check verdict.
    healthy: Option<bool>,
    /// When it last started (for a health check's grace period).
    started_at: Option<Instant>,
    /// Requests and tunnels in flight to it.
    in_flight: u64,
    /// When the last of them ended (or it started): autostop's idle clock.
    last_active: Instant,
    fault: Option<ActiveFault>,
    /// Bumped when a reset fault begins: its WebSocket tunnels close.
    resets: watch::Sender<u64>,
}

/// A network fault while it lasts.
#[derive(Debug, Clone, Copy)]
struct ActiveFault {
    kind: FaultKind,
    until: Instant,
    /// Which fault this is (a later one replaces it).
    number: u64,
}

impl ActiveFault {
    fn live(&self, now: Instant) -> bool {
        now < self.until
    }
}

/// Why a Machine is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartKind {
    /// At start-up, or by the API's start: at once.
    Direct,
    /// By a request routed to it (after the cold start, or the resume delay).
    Auto,
    /// By a deploy or a scale-up (after the cold start).
    Managed,
}

/// One Machine's activity, for autostop.
#[derive(Debug, Clone)]
pub(crate) struct Activity {
    pub(crate) id: String,
    pub(crate) state: MachineState,
    /// Updating, or draining: never autostopped.
    pub(crate) busy: bool,
    pub(crate) in_flight: u64,
    pub(crate) idle_for: Duration,
}

/// A request or tunnel in flight to a Machine; dropping it ends it.
pub(crate) struct Busy {
    fleet: Weak<Fleet>,
    id: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(fleet) = self.fleet.upgrade() {
            let mut slots = lock(&fleet.slots);
            if let Some(slot) = slots.iter_mut().find(|s| s.id == self.id) {
                slot.in_flight = slot.in_flight.saturating_sub(1);
                slot.last_active = Instant::now();
            }
        }
    }
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
    /// Started, but failing its health check or being updated by a deploy.
    Unroutable,
    /// Stopped or suspended.
    Stopped,
    /// Destroyed or never existed.
    Gone,
}

/// Every Machine of the app, destroyed ones included, in creation order.
pub(crate) struct Fleet {
    config: Config,
    launch: Launch,
    slots: Mutex<Vec<Slot>>,
    events: Arc<EventLog>,
    closing: AtomicBool,
    exits: AtomicUsize,
    exited: Notify,
    weak: Weak<Fleet>,
    /// The DNS server's address (given to Machines), set once at start-up.
    dns_addr: OnceLock<Option<SocketAddr>>,
    /// The app version new Machines get.
    version: AtomicU64,
    /// Numbers faults.
    faults: AtomicU64,
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

impl Fleet {
    pub(crate) fn new(config: Config, launch: Launch, events: Arc<EventLog>) -> Arc<Fleet> {
        Arc::new_cyclic(|weak| Fleet {
            config,
            launch,
            slots: Mutex::new(Vec::new()),
            events,
            closing: AtomicBool::new(false),
            exits: AtomicUsize::new(0),
            exited: Notify::new(),
            weak: weak.clone(),
            dns_addr: OnceLock::new(),
            version: AtomicU64::new(1),
            faults: AtomicU64::new(0),
        })
    }

    fn record(&self, kind: EventKind, machine: &str, message: String) {
        self.events.record(kind, None, None, Some(machine), message);
    }

    /// Sets the DNS server address Machines get as `FLY_DNS_SERVER`.
    pub(crate) fn set_dns_addr(&self, addr: Option<SocketAddr>) {
        let _ = self.dns_addr.set(addr);
    }

    /// The DNS server address, if one runs.
    pub(crate) fn dns_addr(&self) -> Option<SocketAddr> {
        *self.dns_addr.get().unwrap_or(&None)
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
            .map(|s| (s.state, !s.updating && s.healthy != Some(false)))
        {
            Some((MachineState::Started, false)) => Lookup::Unroutable,
            Some((MachineState::Started, true)) => Lookup::Started,
            Some((MachineState::Stopped | MachineState::Suspended, _)) => Lookup::Stopped,
            Some((MachineState::Destroyed, _)) | None => Lookup::Gone,
        }
    }

    pub(crate) fn machines(&self) -> Vec<MachineInfo> {
        let now = Instant::now();
        lock(&self.slots)
            .iter()
            .map(|s| MachineInfo {
                id: s.id.clone(),
                state: s.state,
                draining: s.draining,
                addr: s.addr,
                served: s.counters.served,
                replays_sent: s.counters.replays_sent,
                replays_received: s.counters.replays_received,
                fallbacks_received: s.counters.fallbacks_received,
                starts: s.counters.starts,
                retries: s.counters.retries,
                version: s.version,
                updating: s.updating,
                healthy: s.healthy,
                in_flight: s.in_flight,
                fault: s.fault.filter(|f| f.live(now)).map(|f| FaultInfo {
                    kind: f.kind.name(),
                    delay_ms: match f.kind {
                        FaultKind::Delay(d) => Some(d.as_millis() as u64),
                        _ => None,
                    },
                    remaining_ms: f.until.saturating_duration_since(now).as_millis() as u64,
                }),
                pid: s.instance.as_ref().and_then(Instance::pid),
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

    /// The Machines as the balancer sees them.
    pub(crate) fn candidates(&self) -> Vec<Candidate> {
        lock(&self.slots)
            .iter()
            .map(|s| Candidate {
                id: s.id.clone(),
                state: s.state,
                addr: s.addr,
                routable: !s.updating && s.healthy != Some(false),
            })
            .collect()
    }

    /// Every Machine's activity now.
    pub(crate) fn activity(&self) -> Vec<Activity> {
        let now = Instant::now();
        lock(&self.slots)
            .iter()
            .map(|s| Activity {
                id: s.id.clone(),
                state: s.state,
                busy: s.updating || s.draining,
                in_flight: s.in_flight,
                idle_for: now.saturating_duration_since(s.last_active),
            })
            .collect()
    }

    /// Marks a request or tunnel in flight to `id` until the guard is dropped.
    pub(crate) fn busy(&self, id: &str) -> Busy {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.iter_mut().find(|s| s.id == id) {
            slot.in_flight += 1;
            slot.last_active = Instant::now();
        }
        Busy {
            fleet: self.weak.clone(),
            id: id.to_owned(),
        }
    }

    // ----- health, versions, deploys -----

    /// Records a health check verdict; whether it changed.
    pub(crate) fn set_healthy(&self, id: &str, healthy: bool) -> bool {
        let mut slots = lock(&self.slots);
        match slots
            .iter_mut()
            .find(|s| s.id == id && s.state == MachineState::Started)
        {
            Some(slot) if slot.healthy != Some(healthy) => {
                slot.healthy = Some(healthy);
                true
            }
            _ => false,
        }
    }

    /// Whether `id` started less than `grace` ago.
    pub(crate) fn in_grace(&self, id: &str, grace: Duration) -> bool {
        lock(&self.slots)
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.started_at)
            .is_some_and(|t| t.elapsed() < grace)
    }

    /// Marks `id` as being updated by a deploy (or not).
    pub(crate) fn set_updating(&self, id: &str, on: bool) {
        if let Some(slot) = lock(&self.slots).iter_mut().find(|s| s.id == id) {
            slot.updating = on;
        }
    }

    /// Sets the version `id` runs.
    pub(crate) fn set_version(&self, id: &str, version: u64) {
        if let Some(slot) = lock(&self.slots).iter_mut().find(|s| s.id == id) {
            slot.version = version;
        }
    }

    /// The version new Machines get.
    pub(crate) fn current_version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Sets the version new Machines get.
    pub(crate) fn set_current_version(&self, version: u64) {
        self.version.store(version, Ordering::SeqCst);
    }

    // ----- faults -----

    /// `id`'s network fault, while it lasts.
    pub(crate) fn fault(&self, id: &str) -> Option<FaultKind> {
        let now = Instant::now();
        lock(&self.slots)
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.fault)
            .filter(|f| f.live(now))
            .map(|f| f.kind)
    }

    /// Gives `id` a fault for `lasting` (replacing any); its number. A reset
    /// closes the Machine's WebSocket tunnels at once.
    pub(crate) fn set_fault(
        &self,
        id: &str,
        kind: FaultKind,
        lasting: Duration,
    ) -> io::Result<u64> {
        let number = self.faults.fetch_add(1, Ordering::SeqCst) + 1;
        let mut slots = lock(&self.slots);
        let slot = slots
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| not_found(id))?;
        if slot.state == MachineState::Destroyed {
            return Err(destroyed(id));
        }
        slot.fault = Some(ActiveFault {
            kind,
            until: Instant::now() + lasting,
            number,
        });
        if kind == FaultKind::Reset {
            slot.resets.send_modify(|n| *n += 1);
        }
        Ok(number)
    }

    /// Ends `id`'s fault: fault `number` only, or any with `None`; whether
    /// one was ended.
    pub(crate) fn clear_fault(&self, id: &str, number: Option<u64>) -> bool {
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.iter_mut().find(|s| s.id == id) else {
            return false;
        };
        match slot.fault {
            Some(f) if number.is_none_or(|n| n == f.number) => {
                slot.fault = None;
                true
            }
            _ => false,
        }
    }

    /// Changes when a reset fault begins on `id` (its tunnels close).
    pub(crate) fn resets(&self, id: &str) -> Option<watch::Receiver<u64>> {
        lock(&self.slots)
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.resets.subscribe())
    }

    // ----- lifecycle -----

    pub(crate) fn create_slot(&self) -> String {
        let mut slots = lock(&self.slots);
        let taken: Vec<String> = slots.iter().map(|s| s.id.clone()).collect();
        let id = machine::new_machine_id(&taken);
        slots.push(Slot {
            id: id.clone(),
            state: MachineState::Stopped,
            draining: false,
            addr: None,
            instance: None,
            generation: 0,
            lifecycle: Arc::new(tokio::sync::Mutex::new(())),
            counters: Counters::default(),
            version: self.current_version(),
            updating: false,
            healthy: None,
            started_at: None,
            in_flight: 0,
            last_active: Instant::now(),
            fault: None,
            resets: watch::Sender::new(0),
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
                Some(s) if s.updating => {
                    return Err(io::Error::other(format!(
                        "Machine {id} is being updated by a deploy"
                    )));
                }
                Some(_) if !self.config.auto_start => {
                    return Err(io::Error::other(format!(
                        "Machine {id} is not started and auto_start_machines is off"
                    )));
                }
                Some(_) => {}
            }
        }
        let me = self
            .weak
            .upgrade()
            .ok_or_else(|| io::Error::other("flysim is shut down"))?;
        let id = id.to_owned();
        tokio::spawn(async move { me.start_inner(&id, StartKind::Auto).await })
            .await
            .map_err(io::Error::other)?
    }

    pub(crate) async fn start_inner(&self, id: &str, kind: StartKind) -> io::Result<SocketAddr> {
        let lifecycle = self.lifecycle_lock(id)?;
        let _guard = lifecycle.lock().await;
        if self.closing.load(Ordering::SeqCst) {
            return Err(io::Error::other("flysim is shutting down"));
        }
        let autostart = kind == StartKind::Auto;
        let generation = {
            let mut slots = lock(&self.slots);
            let slot = slots
                .iter_mut()
                .find(|s| s.id == id)
                .ok_or_else(|| not_found(id))?;
            match slot.state {
                MachineState::Destroyed => return Err(destroyed(id)),
                MachineState::Started => match slot.addr {
                    Some(addr) => return Ok(addr),
                    None => Err(None),
                },
                MachineState::Suspended => {
                    Err(Some(slot.instance.as_ref().map(Instance::signaller)))
                }
                MachineState::Stopped if autostart && slot.updating => {
                    return Err(io::Error::other(format!(
                        "Machine {id} is being updated by a deploy"
                    )));
                }
                MachineState::Stopped => {
                    slot.generation += 1;
                    Ok(slot.generation)
                }
            }
        };
        let generation = match generation {
            Ok(generation) => generation,
            Err(Some(signaller)) => return self.resume(id, kind, signaller).await,
            Err(None) => {
                let mut slots = lock(&self.slots);
                let slot = slots
                    .iter_mut()
                    .find(|s| s.id == id)
                    .ok_or_else(|| not_found(id))?;
                slot.generation += 1;
                slot.generation
            }
        };
        if kind != StartKind::Direct && !self.config.cold_start.is_zero() {
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
                    if let Some(fleet) = weak.upgrade() {
                        fleet.machine_exited(&exit_id, generation, &status);
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
                    id,
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
                slot.draining = false;
                slot.addr = Some(addr);
                slot.instance = Some(instance);
                slot.counters.starts += 1;
                slot.healthy = None;
                slot.started_at = Some(Instant::now());
                slot.last_active = Instant::now();
            }
        }
        if autostart {
            self.record(
                EventKind::Autostart,
                id,
                format!("Machine {id} autostarted at {addr}"),
            );
        } else {
            self.record(
                EventKind::Lifecycle,
                id,
                format!("Machine {id} started at {addr}"),
            );
        }
        Ok(addr)
    }

    /// Resumes a suspended Machine (under its lifecycle lock).
    async fn resume(
        &self,
        id: &str,
        kind: StartKind,
        signaller: Option<machine::Signaller>,
    ) -> io::Result<SocketAddr> {
        let delay = self.config.resume_delay();
        if kind != StartKind::Direct && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(signaller) = signaller {
            signaller.freeze(false).await?;
        }
        let addr = {
            let mut slots = lock(&self.slots);
            let slot = slots
                .iter_mut()
                .find(|s| s.id == id)
                .ok_or_else(|| not_found(id))?;
            slot.state = MachineState::Started;
            slot.last_active = Instant::now();
            slot.started_at = Some(Instant::now());
            slot.counters.starts += 1;
            slot.addr
                .ok_or_else(|| io::Error::other(format!("Machine {id} has no address")))?
        };
        let kind = if kind == StartKind::Auto {
            EventKind::Autostart
        } else {
            EventKind::Lifecycle
        };
        self.record(kind, id, format!("Machine {id} resumed at {addr}"));
        Ok(addr)
    }

    /// Suspends a started Machine (autostop's `suspend`): out of the
    /// rotation, its process frozen, its memory kept.
    pub(crate) async fn suspend_machine(&self, id: &str) -> io::Result<()> {
        let lifecycle = self.lifecycle_lock(id)?;
        let _guard = lifecycle.lock().await;
        let signaller = {
            let mut slots = lock(&self.slots);
            let slot = slots
                .iter_mut()
                .find(|s| s.id == id)
                .ok_or_else(|| not_found(id))?;
            if slot.state != MachineState::Started {
                return Err(io::Error::other(format!("Machine {id} is not started")));
            }
            slot.state = MachineState::Suspended;
            slot.healthy = None;
            slot.instance.as_ref().map(Instance::signaller)
        };
        if let Some(signaller) = signaller {
            // A process that will not freeze is still out of the rotation.
            let _ = signaller.freeze(true).await;
        }
        self.record(EventKind::Autostop, id, format!("Machine {id} suspended"));
        Ok(())
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
            slot.draining = false;
            slot.addr = None;
            slot.instance.take()
        };
        drop(instance);
        self.exits.fetch_add(1, Ordering::SeqCst);
        self.record(
            EventKind::Lifecycle,
            id,
            format!("Machine {id} exited ({status}); it is now stopped"),
        );
        self.exited.notify_waiters();
    }

    pub(crate) async fn start_machine(&self, id: &str) -> io::Result<()> {
        self.start_inner(id, StartKind::Direct).await.map(|_| ())
    }

    /// Starts a Machine for a deploy or a scale-up (after the cold start).
    pub(crate) async fn start_managed(&self, id: &str) -> io::Result<()> {
        self.start_inner(id, StartKind::Managed).await.map(|_| ())
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
            slot.draining = false;
            slot.addr = None;
            slot.healthy = None;
            (slot.instance.take(), was)
        };
        if let Some(instance) = &instance
            && was == MachineState::Suspended
        {
            let _ = instance.signaller().freeze(false).await;
        }
        if let Some(instance) = instance {
            match self.config.kill_signal {
                Some(signal) => {
                    self.record(EventKind::Lifecycle, id, format!(
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
            self.record(EventKind::Lifecycle, id, format!("Machine {id} {verb}"));
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
        if signal == Signal::Term {
            let mut slots = lock(&self.slots);
            if let Some(slot) = slots
                .iter_mut()
                .find(|s| s.id == id && s.state == MachineState::Started)
            {
                slot.draining = true;
            }
        }
        self.record(
            EventKind::Lifecycle,
            id,
            format!("Machine {id} was sent {signal}"),
        );
        Ok(())
    }

    pub(crate) async fn add_machine(&self) -> io::Result<String> {
        let id = self.create_slot();
        self.record(EventKind::Lifecycle, &id, format!("Machine {id} added"));
        match self.start_inner(&id, StartKind::Direct).await {
            Ok(_) => Ok(id),
            Err(e) => Err(e),
        }
    }

    /// Stops every instance (waiting for child processes) and refuses new starts.
    pub(crate) async fn stop_all(&self) {
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
                    if matches!(s.state, MachineState::Started | MachineState::Suspended) {
                        s.state = MachineState::Stopped;
                    }
                    s.addr = None;
                    s.instance.take()
                })
                .collect()
        };
        for instance in instances {
            // A frozen process is killed all the same; thawing it first
            // lets it see the kill at once.
            let _ = instance.signaller().freeze(false).await;
            instance.stop().await;
        }
    }

    /// Synchronous best-effort version of [`Fleet::stop_all`], for `Drop`.
    pub(crate) fn stop_all_now(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let instances: Vec<Instance> = {
            let mut slots = lock(&self.slots);
            slots
                .iter_mut()
                .filter_map(|s| {
                    if matches!(s.state, MachineState::Started | MachineState::Suspended) {
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

    /// Resolves once no Machine is running and at least one child process
    /// exited on its own.
    pub(crate) async fn all_exited(&self) {
        loop {
            let notified = self.exited.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let any_exit = self.exits.load(Ordering::SeqCst) > 0;
            if any_exit && !self.has_started() {
                return;
            }
            notified.await;
        }
    }
}
