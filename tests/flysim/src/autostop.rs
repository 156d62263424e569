//! Autostop (fly.toml's `auto_stop_machines`): idle Machines are stopped or
//! suspended, keeping `min_machines_running` started. Autostart is the
//! other half and lives where requests are routed (a request to a stopped
//! or suspended Machine starts it, see [`Fleet::ensure_started`](crate::fleet)).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::events::EventKind;
use crate::fleet::Activity;
use crate::machine::MachineState;
use crate::sim::Shared;

/// What the proxy does with idle Machines (`auto_stop_machines`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoStop {
    /// Never (`"off"`, or `false`).
    #[default]
    Off,
    /// Stop them (`"stop"`, or `true`): the process gets the kill signal and
    /// exits; the next request starts it again after a cold start.
    Stop,
    /// Suspend them (`"suspend"`): the process is frozen with its memory
    /// kept, and resumes faster.
    Suspend,
}

impl AutoStop {
    /// `off`, `stop` or `suspend`.
    pub fn as_str(self) -> &'static str {
        match self {
            AutoStop::Off => "off",
            AutoStop::Stop => "stop",
            AutoStop::Suspend => "suspend",
        }
    }
}

impl fmt::Display for AutoStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AutoStop {
    type Err = String;

    /// `off`, `stop` or `suspend` (and `false`/`true` for `off`/`stop`, as
    /// older fly.toml files say).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "false" => Ok(AutoStop::Off),
            "stop" | "true" => Ok(AutoStop::Stop),
            "suspend" => Ok(AutoStop::Suspend),
            _ => Err(format!(
                "auto_stop_machines {s:?} is not \"off\", \"stop\" or \"suspend\""
            )),
        }
    }
}

/// The Machines to take down now: started, neither updating nor draining,
/// with nothing in flight for at least `idle`, the longest idle first,
/// leaving at least `min_running` started.
pub(crate) fn choose(machines: &[Activity], idle: Duration, min_running: usize) -> Vec<String> {
    let started = machines
        .iter()
        .filter(|m| m.state == MachineState::Started)
        .count();
    let mut idle_ones: Vec<&Activity> = machines
        .iter()
        .filter(|m| {
            m.state == MachineState::Started && !m.busy && m.in_flight == 0 && m.idle_for >= idle
        })
        .collect();
    idle_ones.sort_by_key(|m| std::cmp::Reverse(m.idle_for));
    idle_ones
        .into_iter()
        .take(started.saturating_sub(min_running))
        .map(|m| m.id.clone())
        .collect()
}

/// How often the idle Machines are looked for: a quarter of the idle time,
/// between 20 ms and 1 s.
fn period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
}

/// Takes idle Machines down as [`choose`] says, until flysim shuts down.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mode = shared.config.auto_stop;
    let idle = shared.config.idle_stop;
    let min = shared.config.min_machines_running;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(period(idle)) => {}
        }
        let chosen = choose(&shared.fleet.activity(), idle, min);
        if chosen.is_empty() {
            continue;
        }
        // All at once (a stop waits for the process to exit, up to the kill
        // timeout), each looked at again first: a request may have come.
        let downs = chosen.into_iter().map(|id| {
            let shared = &shared;
            async move {
                if !choose(&shared.fleet.activity(), idle, min).contains(&id) {
                    return;
                }
                let result = match mode {
                    AutoStop::Off => return,
                    AutoStop::Stop => {
                        shared.events.record(
                            EventKind::Autostop,
                            None,
                            None,
                            Some(&id),
                            format!("Machine {id} has been idle for {idle:?}: autostop stops it"),
                        );
                        shared.fleet.stop_machine(&id).await
                    }
                    AutoStop::Suspend => shared.fleet.suspend_machine(&id).await,
                };
                if let Err(e) = result {
                    tracing::info!("autostop of Machine {id}: {e}");
                }
            }
        });
        futures_util::future::join_all(downs).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, state: MachineState, in_flight: u64, idle_ms: u64) -> Activity {
        Activity {
            id: id.to_owned(),
            state,
            busy: false,
            in_flight,
            idle_for: Duration::from_millis(idle_ms),
        }
    }

    #[test]
    fn the_longest_idle_go_first_and_the_minimum_stays() {
        let idle = Duration::from_millis(100);
        let ms = [
            m("a", MachineState::Started, 0, 150),
            m("b", MachineState::Started, 0, 900),
            m("c", MachineState::Started, 1, 900),
            m("d", MachineState::Started, 0, 50),
            m("e", MachineState::Stopped, 0, 5000),
        ];
        assert_eq!(choose(&ms, idle, 0), ["b", "a"]);
        assert_eq!(choose(&ms, idle, 3), ["b"]);
        assert!(choose(&ms, idle, 4).is_empty());
        let mut draining = m("f", MachineState::Started, 0, 900);
        draining.busy = true;
        assert!(choose(&[draining], idle, 0).is_empty());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("stop".parse(), Ok(AutoStop::Stop));
        assert_eq!("SUSPEND".parse(), Ok(AutoStop::Suspend));
        assert_eq!("false".parse(), Ok(AutoStop::Off));
        assert!("sometimes".parse::<AutoStop>().is_err());
    }
}
