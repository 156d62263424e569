//! The balancer: which Machine takes a request that names none.
//!
//! It sees a snapshot of the Machines ([`Candidate`]s, in creation order) and
//! never touches sockets or locks, so strategies (and later health checks or
//! deploy-time weights, which narrow the candidates) are tested on plain data.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use crate::machine::MachineState;

/// How the proxy picks a Machine for a request that names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each started Machine in turn.
    #[default]
    RoundRobin,
    /// A started Machine at random.
    Random,
}

/// One Machine as the balancer sees it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) id: String,
    pub(crate) state: MachineState,
    /// Where it listens, when started.
    pub(crate) addr: Option<SocketAddr>,
    /// Neither being updated by a deploy nor failing its health check.
    pub(crate) routable: bool,
}

/// The balancer's choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pick {
    /// This started Machine, listening there.
    Started(String, SocketAddr),
    /// Nothing is started: this stopped (or suspended) Machine should be
    /// autostarted.
    Start(String),
    /// No Machine can take the request.
    None,
}

/// A balancing strategy with its state (the round-robin position).
#[derive(Debug)]
pub(crate) struct Balancer {
    strategy: Balance,
    next: AtomicUsize,
}

impl Balancer {
    pub(crate) fn new(strategy: Balance) -> Self {
        Balancer {
            strategy,
            next: AtomicUsize::new(0),
        }
    }

    /// A routable started Machine not in `exclude`; failing that, the first
    /// suspended one, else the first stopped one, not in `exclude` nor being
    /// updated (as Fly autostarts a Machine when none runs; a suspended one
    /// resumes faster).
    pub(crate) fn pick(&self, machines: &[Candidate], exclude: &[String]) -> Pick {
        let started: Vec<(&str, SocketAddr)> = machines
            .iter()
            .filter(|m| m.state == MachineState::Started && m.routable && !exclude.contains(&m.id))
            .filter_map(|m| m.addr.map(|a| (m.id.as_str(), a)))
            .collect();
        if !started.is_empty() {
            let i = match self.strategy {
                Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % started.len(),
                Balance::Random => rand::rng().random_range(0..started.len()),
            };
            let (id, addr) = started[i];
            return Pick::Started(id.to_owned(), addr);
        }
        let startable = |state: MachineState| {
            machines
                .iter()
                .find(|m| m.state == state && m.routable && !exclude.contains(&m.id))
        };
        startable(MachineState::Suspended)
            .or_else(|| startable(MachineState::Stopped))
            .map_or(Pick::None, |m| Pick::Start(m.id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: &str, state: MachineState, port: u16) -> Candidate {
        Candidate {
            id: id.to_owned(),
            state,
            addr: (state == MachineState::Started)
                .then(|| SocketAddr::from(([127, 0, 0, 1], port))),
            routable: true,
        }
    }

    fn started_id(pick: Pick) -> String {
        match pick {
            Pick::Started(id, _) => id,
            other => panic!("expected a started Machine, got {other:?}"),
        }
    }

    #[test]
    fn round_robin_takes_each_started_machine_in_turn() {
        let b = Balancer::new(Balance::RoundRobin);
        let ms = [
            machine("a", MachineState::Started, 1),
            machine("b", MachineState::Stopped, 2),
            machine("c", MachineState::Started, 3),
        ];
        let picks: Vec<String> = (0..4).map(|_| started_id(b.pick(&ms, &[]))).collect();
        assert_eq!(picks, ["a", "c", "a", "c"]);
    }

    #[test]
    fn excluded_machines_are_left_out() {
        let b = Balancer::new(Balance::Random);
        let ms = [
            machine("a", MachineState::Started, 1),
            machine("b", MachineState::Started, 2),
        ];
        for _ in 0..20 {
            assert_eq!(started_id(b.pick(&ms, &["a".to_owned()])), "b");
        }
    }

    #[test]
    fn a_stopped_machine_is_started_only_when_none_runs() {
        let b = Balancer::new(Balance::RoundRobin);
        let ms = [
            machine("a", MachineState::Destroyed, 1),
            machine("b", MachineState::Stopped, 2),
            machine("c", MachineState::Started, 3),
        ];
        assert_eq!(started_id(b.pick(&ms, &[])), "c");
        assert_eq!(b.pick(&ms, &["c".to_owned()]), Pick::Start("b".to_owned()));
        assert_eq!(b.pick(&ms, &["b".to_owned(), "c".to_owned()]), Pick::None);
    }

    #[test]
    fn unroutable_machines_are_left_out_and_suspended_ones_resume_first() {
        let b = Balancer::new(Balance::RoundRobin);
        let mut unhealthy = machine("a", MachineState::Started, 1);
        unhealthy.routable = false;
        let ms = [
            unhealthy,
            machine("b", MachineState::Started, 2),
            machine("c", MachineState::Stopped, 3),
            machine("d", MachineState::Suspended, 4),
        ];
        for _ in 0..4 {
            assert_eq!(started_id(b.pick(&ms, &[])), "b");
        }
        assert_eq!(b.pick(&ms, &["b".to_owned()]), Pick::Start("d".to_owned()));
        let mut updating = machine("e", MachineState::Stopped, 5);
        updating.routable = false;
        assert_eq!(b.pick(&[updating], &[]), Pick::None);
    }
}
