//! The simulator: what the servers share, the public [`FlySim`] handle and
//! the front server's accept loop.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Config;
use crate::autostop::AutoStop;
use crate::balance::{Balancer, Pick};
use crate::cache::{ReplayCacheStats, Store};
use crate::deploy::{DeployStatus, Operations, ScaleOutcome, Strategy};
use crate::events::{Event, EventKind, EventLog};
use crate::faults::{FaultKind, MAX_FAULT};
use crate::fleet::{Fleet, StartKind};
use crate::headers::ConnInfo;
use crate::machine::{Launch, MachineInfo, Signal};
use crate::upstream::{H2c, Http1, Upstream};

/// What the front, admin and DNS servers share. Each part has its own module:
/// the Machines ([`Fleet`]), the balancer, the upstream transport and the
/// event log.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) events: Arc<EventLog>,
    pub(crate) balancer: Balancer,
    /// How requests reach the Machines (HTTP/1.1, or h2c with
    /// [`Config::h2_backend`]).
    pub(crate) upstream: Box<dyn Upstream>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// The replay cache (rules, entries, counters).
    cache: Mutex<Store>,
    /// Deploys and scales (one at a time) and the last deploy's status.
    pub(crate) operations: Operations,
}

impl Shared {
    fn new(config: Config, launch: Launch) -> Arc<Shared> {
        let events = Arc::new(EventLog::new(config.quiet));
        let (shutdown, _) = watch::channel(false);
        Arc::new(Shared {
            cache: Mutex::new(Store::new(config.replay_cache.clone())),
            fleet: Fleet::new(config.clone(), launch, events.clone()),
            balancer: Balancer::new(config.balance),
            upstream: if config.h2_backend {
                Box::new(H2c::new())
            } else {
                Box::new(Http1::new())
            },
            config,
            events,
            shutdown,
            operations: Operations::default(),
        })
    }

    /// Gives Machine `id` a network fault for `lasting`, recorded as
    /// [`EventKind::Fault`] events when it begins and when it ends.
    pub(crate) fn set_fault(
        self: &Arc<Self>,
        id: &str,
        kind: FaultKind,
        lasting: Duration,
    ) -> io::Result<()> {
        if lasting.is_zero() || lasting > MAX_FAULT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a fault lasts from 1 ms to {} ms, not {} ms",
                    MAX_FAULT.as_millis(),
                    lasting.as_millis()
                ),
            ));
        }
        if let FaultKind::Delay(d) = kind
            && (d.is_zero() || d > MAX_FAULT)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a delay is from 1 ms to {} ms", MAX_FAULT.as_millis()),
            ));
        }
        let number = self.fleet.set_fault(id, kind, lasting)?;
        self.events.record(
            EventKind::Fault,
            None,
            None,
            Some(id),
            format!(
                "fault {number} on Machine {id} began: {kind} for {} ms",
                lasting.as_millis()
            ),
        );
        let me = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(lasting).await;
            if me.fleet.clear_fault(&id, Some(number)) {
                me.events.record(
                    EventKind::Fault,
                    None,
                    None,
                    Some(&id),
                    format!("fault {number} on Machine {id} ended: {kind}"),
                );
            }
        });
        Ok(())
    }

    /// Ends Machine `id`'s fault now; whether it had one.
    pub(crate) fn clear_fault(&self, id: &str) -> io::Result<bool> {
        if !self.fleet.machines().iter().any(|m| m.id == id) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no Machine {id:?}"),
            ));
        }
        let cleared = self.fleet.clear_fault(id, None);
        if cleared {
            self.events.record(
                EventKind::Fault,
                None,
                None,
                Some(id),
                format!("the fault on Machine {id} was cleared"),
            );
        }
        Ok(cleared)
    }

    /// The replay cache, locked (never held across an await).
    pub(crate) fn cache(&self) -> MutexGuard<'_, Store> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Now, by the replay cache's clock.
    pub(crate) fn cache_now(&self) -> Instant {
        self.config
            .cache_clock
            .as_ref()
            .map_or_else(Instant::now, |c| c.now())
    }

    /// The replay cache's counters now.
    pub(crate) fn cache_stats(&self) -> ReplayCacheStats {
        let now = self.cache_now();
        self.cache().stats(now)
    }

    /// The per-Machine table, and the replay cache's counters when caching
    /// is in play (a rule, or any path-based entry ever made).
    pub(crate) fn report(&self) -> String {
        let mut out = self.fleet.report();
        if self.cache().in_play() {
            let s = self.cache_stats();
            out.push_str(&format!(
                "replay cache: {} entries, {} hits, {} misses, {} bypasses, {} invalidations, {} not cached\n",
                s.entries, s.hits, s.misses, s.bypasses, s.invalidations, s.not_cached
            ));
        }
        out
    }

    /// The balancer's choice among the Machines now, leaving out `exclude`.
    pub(crate) fn pick(&self, exclude: &[String]) -> Pick {
        self.balancer.pick(&self.fleet.candidates(), exclude)
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
            .field("machines", &self.shared.fleet.machines())
            .finish()
    }
}

impl FlySim {
    /// Binds the front and admin ports, starts `config.machines` Machines with
    /// `launch` and begins proxying. Fails if a port cannot be bound or a Machine
    /// cannot be started (the ones already started are stopped again).
    pub async fn start(config: Config, launch: Launch) -> io::Result<FlySim> {
        config.validate()?;
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
        shared.fleet.set_dns_addr(dns_addr);
        // DNS answers from the start: booting Machines look their peers up.
        let dns_task = dns.map(|dns| tokio::spawn(crate::dns::serve(shared.clone(), dns)));
        let ids: Vec<String> = (0..n).map(|_| shared.fleet.create_slot()).collect();
        let starts = ids
            .iter()
            .map(|id| shared.fleet.start_inner(id, StartKind::Direct));
        let results = futures_util::future::join_all(starts).await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            if let Some(task) = &dns_task {
                task.abort();
            }
            shared.fleet.stop_all().await;
            return Err(e);
        }
        let mut tasks = vec![tokio::spawn(serve_front(shared.clone(), front))];
        tasks.extend(dns_task);
        if let Some(check) = shared.config.health_check.clone() {
            tasks.push(tokio::spawn(crate::health::run(shared.clone(), check)));
        }
        if shared.config.auto_stop != AutoStop::Off {
            tasks.push(tokio::spawn(crate::autostop::run(shared.clone())));
        }
        if let Some(admin) = admin {
            tasks.push(tokio::spawn(crate::admin::serve(
                shared.clone(),
                admin,
                front_addr,
            )));
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
        self.shared.fleet.dns_addr()
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
        self.shared.fleet.machines()
    }

    /// One Machine by ID.
    pub fn machine(&self, id: &str) -> Option<MachineInfo> {
        self.shared
            .fleet
            .machines()
            .into_iter()
            .find(|m| m.id == id)
    }

    /// Every Machine ID (destroyed ones included), in creation order.
    pub fn machine_ids(&self) -> Vec<String> {
        self.shared
            .fleet
            .machines()
            .into_iter()
            .map(|m| m.id)
            .collect()
    }

    /// Stops a Machine: it leaves the proxy's rotation at once and its instance
    /// is stopped (stop hook called; a child is killed, or with
    /// [`Config::kill_signal`] sent that signal and given
    /// [`Config::kill_timeout`] to exit, and this waits for it); it keeps its
    /// ID and is started again by a request routed to it or by
    /// [`FlySim::start_machine`]. Stopping a stopped Machine does nothing.
    pub async fn stop_machine(&self, id: &str) -> io::Result<()> {
        self.shared.fleet.stop_machine(id).await
    }

    /// Starts a stopped Machine (no cold-start delay). Starting a started Machine does
    /// nothing; a destroyed one cannot be started.
    pub async fn start_machine(&self, id: &str) -> io::Result<()> {
        self.shared.fleet.start_machine(id).await
    }

    /// Destroys a Machine: routing treats its ID as unknown at once, its instance
    /// is stopped as by [`FlySim::stop_machine`], and it is never started again.
    pub async fn destroy_machine(&self, id: &str) -> io::Result<()> {
        self.shared.fleet.destroy_machine(id).await
    }

    /// Sends `signal` to a started Machine's process (or to the hook an
    /// in-process instance set with [`Instance::on_signal`](crate::Instance::on_signal)), like Fly's
    /// `POST /machines/<id>/signal`. The Machine's state does not change: it
    /// stays in the proxy's rotation; if the process then exits on its own,
    /// the Machine becomes stopped (and is autostarted by the next request
    /// routed to it). Use it to trigger an app's drain (`SIGTERM`).
    pub async fn signal_machine(&self, id: &str, signal: Signal) -> io::Result<()> {
        self.shared.fleet.signal_machine(id, signal).await
    }

    /// Adds a new Machine (new random ID), starts it and returns its ID.
    pub async fn add_machine(&self) -> io::Result<String> {
        self.shared.fleet.add_machine().await
    }

    /// Begins a deploy with `strategy` in the background (see [`Strategy`]);
    /// returns its number (the version it deploys). Refused while a deploy
    /// or a scale is under way. Follow it with [`FlySim::deploy_status`],
    /// [`FlySim::wait_deploy`] or the [`EventKind::Deploy`] events.
    pub fn start_deploy(&self, strategy: Strategy) -> io::Result<u64> {
        self.shared.begin_deploy(strategy)
    }

    /// Deploys with `strategy` and waits for the end: the final status
    /// (which says whether it succeeded).
    pub async fn deploy(&self, strategy: Strategy) -> io::Result<DeployStatus> {
        self.shared.begin_deploy(strategy)?;
        self.wait_deploy()
            .await
            .ok_or_else(|| io::Error::other("the deploy left no status"))
    }

    /// The running or last deploy, if any.
    pub fn deploy_status(&self) -> Option<DeployStatus> {
        self.shared.operations.status()
    }

    /// Waits until no deploy runs; the last deploy's status, if any.
    pub async fn wait_deploy(&self) -> Option<DeployStatus> {
        self.shared.operations.wait().await
    }

    /// Adds Machines (new IDs, started after the cold start) or destroys
    /// some until `count` (1 to [`MAX_MACHINES`](crate::MAX_MACHINES)) are
    /// not destroyed, like `fly scale count`; stopped Machines are
    /// destroyed first, then the newest. Refused during a deploy.
    pub async fn scale(&self, count: usize) -> io::Result<ScaleOutcome> {
        self.shared.scale(count).await
    }

    /// Gives Machine `id` a network fault for `lasting` (1 ms to an hour),
    /// replacing any it has (see [`FaultKind`]).
    pub fn fault(&self, id: &str, kind: FaultKind, lasting: Duration) -> io::Result<()> {
        self.shared.set_fault(id, kind, lasting)
    }

    /// Ends Machine `id`'s fault now; whether it had one.
    pub fn clear_fault(&self, id: &str) -> io::Result<bool> {
        self.shared.clear_fault(id)
    }

    /// Suspends a started Machine, as autostop's `suspend` does: out of the
    /// rotation, its process frozen with its memory; a request routed to it
    /// resumes it after [`Config::resume`].
    pub async fn suspend_machine(&self, id: &str) -> io::Result<()> {
        self.shared.fleet.suspend_machine(id).await
    }

    /// Everything recorded so far (the newest 10,000 events).
    pub fn events(&self) -> Vec<Event> {
        self.shared.events.snapshot()
    }

    /// Forgets the recorded events.
    pub fn clear_events(&self) {
        self.shared.events.clear();
    }

    /// The per-Machine table: machine, state, served, replays sent, replays
    /// received; then, when replay caching is in play (a rule, or any
    /// path-based entry ever made), one line of replay cache counters.
    pub fn report(&self) -> String {
        self.shared.report()
    }

    /// The replay cache's counters: live entries, entries created, hits,
    /// misses, bypasses, invalidations and replays not cached.
    pub fn replay_cache_stats(&self) -> ReplayCacheStats {
        self.shared.cache_stats()
    }

    /// Resolves once no Machine is running and at least one child process exited on
    /// its own (used by the binary to quit when the app exits).
    pub async fn all_exited(&self) {
        self.shared.fleet.all_exited().await;
    }

    /// Stops the servers and every Machine, waiting for child processes to exit.
    pub async fn shutdown(mut self) {
        let _ = self.shared.shutdown.send(true);
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.shared.fleet.stop_all().await;
    }
}

impl Drop for FlySim {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        for task in &self.tasks {
            task.abort();
        }
        self.shared.fleet.stop_all_now();
    }
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
