//! Key affinity at 3, 20, 100 and 1,000 Machines (criterion,
//! `sticky-core/benches/keys.rs`): one key lookup, `decide` on a keyed
//! request, and the cost of a change of the live set (a table built anew,
//! or brought up to date when one Machine leaves or joins).

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::SystemTime;

use super::Plan;
use super::micro::{CoreBench, find, read_estimates};
use crate::{cargo, run as run_step, target_dir};

/// Budget: one key lookup at 1,000 Machines.
pub(crate) const LOOKUP_BUDGET_NS: f64 = 100.0;

const SIZES: [usize; 4] = [3, 20, 100, 1_000];

/// Runs the bench and reads its medians.
pub(crate) fn criterion(plan: &Plan) -> Result<Vec<CoreBench>, String> {
    let home = target_dir().join("criterion");
    let started = SystemTime::now();
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "sticky-core", "--bench", "keys", "--"])
        .args(&plan.criterion_args)
        .env("CRITERION_HOME", &home)
        .stdin(Stdio::null());
    run_step(
        &format!(
            "cargo bench -p sticky-core --bench keys -- {}",
            plan.criterion_args.join(" ")
        ),
        cmd,
    )?;
    read_estimates(&home.join("keys"), started)
}

fn ns(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.2} ms", v / 1_000_000.0)
    } else if v >= 1000.0 {
        format!("{:.1} µs", v / 1000.0)
    } else {
        format!("{v:.1} ns")
    }
}

/// The section (no heading).
pub(crate) fn markdown(benches: &[CoreBench], plan: &Plan) -> String {
    let mut md = format!(
        "`cargo bench -p sticky-core --bench keys -- {}` (`sticky-core/benches/keys.rs`, \
         criterion's medians). Keys hash onto 65,536 buckets; each bucket belongs to its \
         rendezvous winner among the live Machines, computed into a table when the set \
         changes, so a lookup is one hash and one table read whatever N. **lookup**: \
         `PeerSet::pick` over 4,096 keys in turn; **decide**: `decide` on `GET /api/tenant` \
         with an `x-tenant-id` key (Stick or Replay, as the key falls); **rebuild**: \
         `PeerSet::new`, the whole table; **one change**: `Sticky::set_peers` after one \
         Machine left or joined, the tables brought up to date from the previous ones \
         (what a provider pays on its own thread; never a request).\n\n\
         | Machines | lookup | decide | rebuild | one change |\n|---:|---:|---:|---:|---:|\n",
        plan.criterion_args.join(" ")
    );
    for n in SIZES {
        let cell = |what: &str| {
            find(benches, &format!("{what}/{n}-machines")).map_or_else(|| "-".to_owned(), ns)
        };
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} |",
            cell("pick"),
            cell("decide"),
            cell("rebuild"),
            cell("update")
        );
    }
    md.push('\n');
    md
}

/// The budget row.
pub(crate) fn budget_rows(benches: &[CoreBench]) -> String {
    match find(benches, "pick/1000-machines") {
        Some(v) => format!(
            "| key affinity: one key lookup at 1,000 Machines at most {LOOKUP_BUDGET_NS:.0} ns | {} | {} |\n",
            ns(v),
            if v <= LOOKUP_BUDGET_NS {
                "**met**"
            } else {
                "**missed**"
            }
        ),
        None => String::new(),
    }
}
