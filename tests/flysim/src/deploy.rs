//! Deploys and scaling, as `fly deploy --strategy ...` and `fly scale count N`
//! change an app's Machines: rolling and immediate update Machines in
//! place (same IDs), canary first boots one new Machine, blue-green replaces
//! every Machine with new ones (new IDs). Each step waits for the Machine's
//! health check ([`crate::health`]). A deploy runs in the background, one
//! at a time; a scale waits for its Machines. Phases are recorded as
//! [`EventKind::Deploy`] and [`EventKind::Scale`] events.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::MAX_MACHINES;
use crate::events::EventKind;
use crate::machine::{MachineInfo, MachineState};
use crate::sim::Shared;

/// How a deploy replaces the app's Machines (`fly deploy --strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Fly's default: each Machine updated in place (same ID: stopped with
    /// the kill signal, started again, health-checked), one at a time, or
    /// in batches of 5 when there are 6 or more.
    Rolling,
    /// Every Machine updated in place at once.
    Immediate,
    /// One new Machine first (booted and health-checked out of the
    /// rotation, then destroyed), then rolling over the others.
    Canary,
    /// As many new Machines (new IDs) started and health-checked, then
    /// every old one destroyed.
    BlueGreen,
}

impl Strategy {
    /// `rolling`, `immediate`, `canary` or `bluegreen`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::Immediate => "immediate",
            Strategy::Canary => "canary",
            Strategy::BlueGreen => "bluegreen",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rolling" => Ok(Strategy::Rolling),
            "immediate" => Ok(Strategy::Immediate),
            "canary" => Ok(Strategy::Canary),
            "bluegreen" | "blue-green" => Ok(Strategy::BlueGreen),
            other => Err(format!(
                "unknown deploy strategy {other:?} (rolling, immediate, canary or bluegreen)"
            )),
        }
    }
}

/// Where a deploy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployState {
    /// Under way.
    Running,
    /// Every Machine runs the new version.
    Succeeded,
    /// A Machine did not pass its health check (or could not be started):
    /// the deploy stopped there.
    Failed,
}

/// A deploy's progress (the admin `GET /deploy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployStatus {
    /// The deploy's number: the version it deploys (the first is 2).
    pub number: u64,
    /// `rolling`, `immediate`, `canary` or `bluegreen`.
    pub strategy: &'static str,
    /// Running, succeeded or failed.
    pub state: DeployState,
    /// What it is doing now (or last did), e.g. `batch 2 of 3`.
    pub phase: String,
    /// Machines it replaces or updates.
    pub machines: usize,
    /// Of those, how many are done.
    pub done: usize,
    /// Why it failed.
    pub error: Option<String>,
    /// Since it began (until it ended), in milliseconds.
    pub elapsed_ms: u64,
}

/// What a scale did (the admin `POST /scale`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScaleOutcome {
    /// Machines added (new IDs), started.
    pub added: Vec<String>,
    /// Machines destroyed.
    pub destroyed: Vec<String>,
}

/// What changes the app's Machines as a whole, at most one at a time.
#[derive(Debug, Default)]
pub(crate) struct Operations {
    busy: Mutex<Option<&'static str>>,
    status: Mutex<Option<(DeployStatus, Instant)>>,
    changed: tokio::sync::Notify,
}

/// Holds [`Operations`] busy until dropped.
struct Claim<'a>(&'a Operations);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn busy_error(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("a {what} is under way; wait for it to finish"),
    )
}

impl Operations {
    fn claim(&self, what: &'static str) -> io::Result<Claim<'_>> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = *busy {
            return Err(busy_error(running));
        }
        *busy = Some(what);
        Ok(Claim(self))
    }

    /// The current or last deploy.
    pub(crate) fn status(&self) -> Option<DeployStatus> {
        let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.as_ref().map(|(s, began)| {
            let mut s = s.clone();
            if s.state == DeployState::Running {
                s.elapsed_ms = began.elapsed().as_millis() as u64;
            }
            s
        })
    }

    fn update(&self, f: impl FnOnce(&mut DeployStatus)) {
        if let Some((s, began)) = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            f(s);
            if s.state != DeployState::Running {
                s.elapsed_ms = began.elapsed().as_millis() as u64;
            }
        }
        self.changed.notify_waiters();
    }

    /// Waits until no deploy is running; the last one's status.
    pub(crate) async fn wait(&self) -> Option<DeployStatus> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.status() {
                Some(s) if s.state == DeployState::Running => {}
                other => return other,
            }
            notified.await;
        }
    }
}

/// The Machines a deploy or a scale works on: every one not destroyed.
fn live(machines: &[MachineInfo]) -> Vec<MachineInfo> {
    machines
        .iter()
        .filter(|m| m.state != MachineState::Destroyed)
        .cloned()
        .collect()
}

/// The batches of an in-place update of `n` Machines: one at a time, or 5
/// at a time from 6 Machines (rolling); all at once (immediate).
pub(crate) fn batches(ids: &[String], strategy: Strategy) -> Vec<Vec<String>> {
    let size = match strategy {
        Strategy::Immediate => ids.len().max(1),
        _ if ids.len() >= 6 => 5,
        _ => 1,
    };
    ids.chunks(size).map(<[String]>::to_vec).collect()
}

/// Which Machines a scale down to `count` destroys: stopped and suspended
/// ones first, then the most recently created started ones.
pub(crate) fn victims(live: &[MachineInfo], count: usize) -> Vec<String> {
    let excess = live.len().saturating_sub(count);
    let mut order: Vec<&MachineInfo> = live
        .iter()
        .rev()
        .filter(|m| m.state != MachineState::Started)
        .collect();
    order.extend(
        live.iter()
            .rev()
            .filter(|m| m.state == MachineState::Started),
    );
    order
        .into_iter()
        .take(excess)
        .map(|m| m.id.clone())
        .collect()
}

/// A Machine count from 1 to [`MAX_MACHINES`], or why not.
pub(crate) fn check_count(count: usize) -> io::Result<()> {
    if count == 0 || count > MAX_MACHINES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("count={count} is out of range (1 to {MAX_MACHINES} Machines)"),
        ));
    }
    Ok(())
}

impl Shared {
    fn deploy_event(&self, number: u64, message: String) {
        self.events.record(
            EventKind::Deploy,
            None,
            None,
            None,
            format!("deploy {number}: {message}"),
        );
    }

    /// Begins a deploy in the background; its number. Refused while a
    /// deploy or a scale is under way, or when no Machine exists.
    pub(crate) fn begin_deploy(self: &Arc<Self>, strategy: Strategy) -> io::Result<u64> {
        let claim = self.operations.claim("deploy")?;
        let targets = live(&self.fleet.machines());
        if targets.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "there is no Machine to deploy to (scale up first)",
            ));
        }
        let number = self.fleet.current_version() + 1;
        let machines = targets.len();
        *self
            .operations
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((
            DeployStatus {
                number,
                strategy: strategy.as_str(),
                state: DeployState::Running,
                phase: "starting".to_owned(),
                machines,
                done: 0,
                error: None,
                elapsed_ms: 0,
            },
            Instant::now(),
        ));
        self.operations.changed.notify_waiters();
        self.deploy_event(
            number,
            format!("{strategy} deploy of {machines} Machine(s) to version {number} began"),
        );
        // The claim moves into the task: it is held until the deploy ends.
        std::mem::forget(claim);
        let me = self.clone();
        let ids: Vec<String> = targets.into_iter().map(|m| m.id).collect();
        tokio::spawn(async move {
            let result = me.run_deploy(strategy, number, ids).await;
            let _release = Claim(&me.operations);
            match result {
                Ok(()) => {
                    me.deploy_event(
                        number,
                        "succeeded: every Machine runs the new version".to_owned(),
                    );
                    me.operations.update(|s| {
                        s.state = DeployState::Succeeded;
                        s.phase = "done".to_owned();
                    });
                }
                Err(e) => {
                    me.deploy_event(number, format!("failed: {e}"));
                    me.operations.update(|s| {
                        s.state = DeployState::Failed;
                        s.error = Some(e);
                    });
                }
            }
        });
        Ok(number)
    }

    fn phase(&self, number: u64, phase: String) {
        self.deploy_event(number, phase.clone());
        self.operations.update(|s| s.phase = phase);
    }

    async fn run_deploy(
        &self,
        strategy: Strategy,
        number: u64,
        ids: Vec<String>,
    ) -> Result<(), String> {
        self.fleet.set_current_version(number);
        match strategy {
            Strategy::Rolling | Strategy::Immediate => {
                self.update_in_place(strategy, number, &ids).await
            }
            Strategy::Canary => {
                self.phase(number, "canary: booting one new Machine".to_owned());
                let canary = self.fleet.create_slot();
                self.fleet.set_version(&canary, number);
                // Out of the rotation from boot to destruction.
                self.fleet.set_updating(&canary, true);
                let booted = match self.fleet.start_managed(&canary).await {
                    Ok(()) => self.wait_healthy(&canary).await,
                    Err(e) => Err(format!("could not be started: {e}")),
                };
                if let Err(e) = booted {
                    let _ = self.fleet.destroy_machine(&canary).await;
                    self.fleet.set_updating(&canary, false);
                    return Err(format!("the canary Machine {canary} {e}; it was destroyed"));
                }
                self.phase(
                    number,
                    format!("canary Machine {canary} passed its health check; destroying it"),
                );
                let destroyed = self.fleet.destroy_machine(&canary).await;
                self.fleet.set_updating(&canary, false);
                destroyed.map_err(|e| {
                    format!("the canary Machine {canary} could not be destroyed: {e}")
                })?;
                self.update_in_place(Strategy::Rolling, number, &ids).await
            }
            Strategy::BlueGreen => self.blue_green(number, &ids).await,
        }
    }

    /// Waits until `id` passes its health check, up to the deploy's check
    /// timeout; marks its verdict.
    async fn wait_healthy(&self, id: &str) -> Result<(), String> {
        let check = self.config.deploy_check();
        let deadline = Instant::now() + self.config.deploy_check_timeout;
        loop {
            let last = crate::health::check_once(self, id, &check).await;
            match last {
                Ok(()) => {
                    self.fleet.set_healthy(id, true);
                    return Ok(());
                }
                Err(why) if Instant::now() >= deadline => {
                    self.fleet.set_healthy(id, false);
                    return Err(format!(
                        "did not pass its health check (GET {}) within {:?}: {why}",
                        check.path, self.config.deploy_check_timeout
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Rolling or immediate: batch by batch, each Machine stopped (kill
    /// signal, kill timeout), started again with its ID, health-checked.
    async fn update_in_place(
        &self,
        strategy: Strategy,
        number: u64,
        ids: &[String],
    ) -> Result<(), String> {
        let batches = batches(ids, strategy);
        let total = batches.len();
        for (i, batch) in batches.into_iter().enumerate() {
            self.phase(
                number,
                format!("batch {} of {total}: updating {}", i + 1, batch.join(", ")),
            );
            let updates = batch.iter().map(|id| self.update_one(id, number));
            let results = futures_util::future::join_all(updates).await;
            let done = results.iter().filter(|r| r.is_ok()).count();
            self.operations.update(|s| s.done += done);
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Updates one Machine in place. A stopped (or suspended) one is
    /// updated without being started; a destroyed one is skipped.
    async fn update_one(&self, id: &str, number: u64) -> Result<(), String> {
        let Some(m) = self.fleet.machines().into_iter().find(|m| m.id == id) else {
            return Ok(());
        };
        match m.state {
            MachineState::Destroyed => return Ok(()),
            MachineState::Stopped => {
                self.fleet.set_version(id, number);
                return Ok(());
            }
            MachineState::Started | MachineState::Suspended => {}
        }
        self.fleet.set_updating(id, true);
        let result = async {
            self.fleet
                .stop_machine(id)
                .await
                .map_err(|e| format!("Machine {id} could not be stopped: {e}"))?;
            self.fleet.set_version(id, number);
            self.fleet
                .start_managed(id)
                .await
                .map_err(|e| format!("Machine {id} could not be started again: {e}"))?;
            self.wait_healthy(id)
                .await
                .map_err(|e| format!("Machine {id} {e}"))
        }
        .await;
        self.fleet.set_updating(id, false);
        if result.is_ok() {
            self.deploy_event(number, format!("Machine {id} updated and healthy"));
        }
        result
    }

    /// Blue-green: new Machines started and health-checked (out of the
    /// rotation), then in one step the new ones join and the old ones
    /// leave, and the old ones are destroyed.
    async fn blue_green(&self, number: u64, old: &[String]) -> Result<(), String> {
        self.phase(number, format!("booting {} new Machine(s)", old.len()));
        let green: Vec<String> = old.iter().map(|_| self.fleet.create_slot()).collect();
        for id in &green {
            self.fleet.set_version(id, number);
            self.fleet.set_updating(id, true);
        }
        let boots = green.iter().map(|id| async move {
            match self.fleet.start_managed(id).await {
                Ok(()) => self
                    .wait_healthy(id)
                    .await
                    .map_err(|e| format!("new Machine {id} {e}")),
                Err(e) => Err(format!("new Machine {id} could not be started: {e}")),
            }
        });
        let results = futures_util::future::join_all(boots).await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            for id in &green {
                let _ = self.fleet.destroy_machine(id).await;
            }
            return Err(format!(
                "{e}; the new Machines were destroyed, the old ones kept"
            ));
        }
        self.phase(
            number,
            format!(
                "cutover: {} join the rotation; destroying {}",
                green.join(", "),
                old.join(", ")
            ),
        );
        for id in old {
            self.fleet.set_updating(id, true);
        }
        for id in &green {
            self.fleet.set_updating(id, false);
        }
        let destroys = old.iter().map(|id| self.fleet.destroy_machine(id));
        let results = futures_util::future::join_all(destroys).await;
        self.operations.update(|s| s.done = old.len());
        for (id, result) in old.iter().zip(results) {
            if let Err(e) = result {
                tracing::info!("blue-green: Machine {id}: {e}");
            }
        }
        Ok(())
    }

    /// Adds or destroys Machines until `count` are not destroyed. Refused
    /// while a deploy or another scale is under way.
    pub(crate) async fn scale(&self, count: usize) -> io::Result<ScaleOutcome> {
        check_count(count)?;
        let _claim = self.operations.claim("scale")?;
        let live = live(&self.fleet.machines());
        let record = |message: String| {
            self.events.record(
                EventKind::Scale,
                None,
                None,
                None,
                format!("scale: {message}"),
            );
        };
        record(format!("from {} to {count} Machine(s) began", live.len()));
        let mut outcome = ScaleOutcome {
            added: Vec::new(),
            destroyed: Vec::new(),
        };
        if count > live.len() {
            let ids: Vec<String> = (live.len()..count)
                .map(|_| self.fleet.create_slot())
                .collect();
            let starts = ids.iter().map(|id| self.fleet.start_managed(id));
            let results = futures_util::future::join_all(starts).await;
            for (id, result) in ids.into_iter().zip(results) {
                match result {
                    Ok(()) => outcome.added.push(id),
                    Err(e) => {
                        record(format!("Machine {id} could not be started: {e}"));
                        return Err(e);
                    }
                }
            }
        } else {
            let ids = victims(&live, count);
            let destroys = ids.iter().map(|id| self.fleet.destroy_machine(id));
            let results = futures_util::future::join_all(destroys).await;
            for (id, result) in ids.into_iter().zip(results) {
                if result.is_ok() {
                    outcome.destroyed.push(id);
                }
            }
        }
        record(format!(
            "to {count} Machine(s) done: added [{}], destroyed [{}]",
            outcome.added.join(", "),
            outcome.destroyed.join(", ")
        ));
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn rolling_goes_one_by_one_then_by_five() {
        let sizes = |n, s| batches(&ids(n), s).iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(3, Strategy::Rolling), [1, 1, 1]);
        assert_eq!(sizes(5, Strategy::Canary), [1, 1, 1, 1, 1]);
        assert_eq!(sizes(6, Strategy::Rolling), [5, 1]);
        assert_eq!(sizes(12, Strategy::Rolling), [5, 5, 2]);
        assert_eq!(sizes(4, Strategy::Immediate), [4]);
    }

    #[test]
    fn strategies_parse() {
        assert_eq!("bluegreen".parse(), Ok(Strategy::BlueGreen));
        assert_eq!("rolling".parse(), Ok(Strategy::Rolling));
        let e = "sideways".parse::<Strategy>().unwrap_err();
        assert!(e.contains("unknown deploy strategy"), "{e}");
    }

    #[test]
    fn counts_are_bounded() {
        assert!(check_count(0).is_err());
        assert!(check_count(1).is_ok());
        assert!(check_count(MAX_MACHINES).is_ok());
        assert!(check_count(MAX_MACHINES + 1).is_err());
    }
}
