//! The app's Machines: their slots, states and counters, and their lifecycle
//! (create, start and autostart, stop, destroy, signal, exit), as Fly's
//! Machines API would change them.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use tokio::sync::Notify;

use crate::Config;
use crate::balance::Candidate;
use crate::events::{EventKind, EventLog};
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
                draining: s.draining,
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

    /// The Machines as the balancer sees them.
    pub(crate) fn candidates(&self) -> Vec<Candidate> {
        lock(&self.slots)
            .iter()
            .map(|s| Candidate {
                id: s.id.clone(),
                state: s.state,
                addr: s.addr,
            })
            .collect()
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

    pub(crate) async fn start_inner(&self, id: &str, autostart: bool) -> io::Result<SocketAddr> {
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
            slot.draining = false;
            slot.addr = None;
            (slot.instance.take(), was)
        };
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
        match self.start_inner(&id, false).await {
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

    /// Synchronous best-effort version of [`Fleet::stop_all`], for `Drop`.
    pub(crate) fn stop_all_now(&self) {
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
