//! The key table's properties, over random live sets: the ones that make
//! rendezvous hashing worth having survive the table (a key's owner is
//! looked up in a table computed when the set changes).
//!
//! - a Machine that leaves moves only its keys;
//! - a Machine that joins takes about 1/(N+1) of the keys, all from others;
//! - weights set the shares;
//! - `prefer_region` keeps keys in the region when it has Machines, and an
//!   engine updated Machine by Machine (`set_peers`, whose tables are
//!   brought up to date rather than rebuilt) maps every key as a set built
//!   at once does.

use proptest::prelude::*;
use sticky_core::{Env, KeySource, Peer, PeerSet, Source, Sticky};

/// Keys sampled for shares (the table has 65,536 buckets).
const KEYS: usize = 6_000;

fn key(k: usize) -> String {
    format!("tenant-{k}")
}

/// N distinct Machine IDs from random numbers.
fn machine_ids(range: std::ops::Range<usize>) -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set(any::<u64>(), range)
        .prop_map(|set| {
            set.into_iter()
                .map(|n| format!("{:014x}", n >> 8))
                .collect()
        })
        .prop_filter("distinct after truncation", |ids: &Vec<String>| {
            let mut sorted = ids.clone();
            sorted.sort();
            sorted.dedup();
            sorted.len() == ids.len()
        })
}

fn owners(set: &PeerSet, region: Option<&str>) -> Vec<String> {
    (0..KEYS)
        .map(|k| set.pick(key(k).as_bytes(), region).unwrap().id().to_owned())
        .collect()
}

fn peers(ids: &[String], weights: &[u32]) -> Vec<Peer> {
    ids.iter()
        .zip(weights.iter().chain(std::iter::repeat(&1)))
        .map(|(id, w)| Peer::new(id.clone()).with_weight(*w))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// When a Machine leaves, the keys of the others stay; its keys go to
    /// the others (weights or not).
    #[test]
    fn a_leaving_machine_moves_only_its_keys(
        ids in machine_ids(2..40),
        weights in prop::collection::vec(1u32..4, 0..40),
        gone in any::<prop::sample::Index>(),
    ) {
        let all = peers(&ids, &weights);
        let gone = gone.get(&ids).clone();
        let before = owners(&PeerSet::new(all.clone()), None);
        let after = owners(&PeerSet::new(all.into_iter().filter(|p| p.id() != gone)), None);
        for (b, a) in before.iter().zip(&after) {
            if *b == gone {
                prop_assert_ne!(a, &gone);
            } else {
                prop_assert_eq!(a, b, "a key of a Machine that stayed moved");
            }
        }
    }

    /// When a Machine joins, every key that moves goes to it, and it takes
    /// about 1/(N+1) of them.
    #[test]
    fn a_joining_machine_takes_about_its_share_from_the_others(ids in machine_ids(3..60)) {
        let (newcomer, rest) = ids.split_last().unwrap();
        let n = rest.len();
        let before = owners(&PeerSet::new(rest.iter().cloned().map(Peer::new)), None);
        let after = owners(&PeerSet::new(ids.iter().cloned().map(Peer::new)), None);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if a != b {
                prop_assert_eq!(a, newcomer, "a key moved between two Machines that stayed");
                moved += 1;
            }
        }
        let share = moved as f64 / KEYS as f64;
        let expected = 1.0 / (n + 1) as f64;
        // The sampling error of 6,000 keys, 4 standard deviations, plus the
        // newcomer's own spread over 65,536 buckets.
        let tolerance = 4.0 * (expected * (1.0 - expected) / KEYS as f64).sqrt() + 0.01;
        prop_assert!(
            (share - expected).abs() <= tolerance,
            "the newcomer took {share:.4} of the keys; 1/(N+1) = {expected:.4}"
        );
    }

    /// A Machine's share of the keys follows its weight.
    #[test]
    fn shares_follow_weights(
        ids in machine_ids(2..8),
        weights in prop::collection::vec(1u32..5, 8),
    ) {
        let all = peers(&ids, &weights);
        let total: u32 = all.iter().map(Peer::weight).sum();
        let owners = owners(&PeerSet::new(all.clone()), None);
        for peer in &all {
            let got = owners.iter().filter(|o| *o == peer.id()).count() as f64 / KEYS as f64;
            let expected = f64::from(peer.weight()) / f64::from(total);
            let tolerance = 4.0 * (expected * (1.0 - expected) / KEYS as f64).sqrt() + 0.01;
            prop_assert!(
                (got - expected).abs() <= tolerance,
                "{} (weight {}) got {got:.4}, expected {expected:.4}", peer.id(), peer.weight()
            );
        }
    }

    /// With `prefer_region`, a key stays in this Machine's region when the
    /// region has Machines (else it may go anywhere, as without it); the
    /// engine's table for its region answers as `PeerSet::pick` does; and
    /// an engine whose live set changed one Machine at a time (tables
    /// brought up to date) maps every key as one built with the final set.
    #[test]
    fn keys_prefer_the_region_and_updates_equal_rebuilds(
        ids in machine_ids(2..30),
        regions in prop::collection::vec(prop::sample::select(vec!["iad", "ord", "syd"]), 30),
        here in prop::sample::select(vec!["iad", "ord", "syd", "ams"]),
        steps in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 1..6),
    ) {
        let all: Vec<Peer> = ids
            .iter()
            .zip(&regions)
            .map(|(id, r)| Peer::new(id.clone()).with_region(*r))
            .collect();
        let engine = |live: &[Peer]| {
            Sticky::builder()
                .sources([Source::Key, Source::Cookie])
                .key_source(KeySource::Header("x-tenant-id".into()))
                .prefer_region(true)
                .peers(live.iter().cloned())
                .build(Env::machine("148ed599c14189").with_region(here))
                .unwrap()
        };
        // Changes one Machine at a time, a leave or a join, from a third
        // of the Machines not yet live.
        let mut live: Vec<Peer> = all[..(all.len() * 2 / 3).max(1)].to_vec();
        let updated = engine(&live);
        for (index, leave) in &steps {
            let peer = index.get(&all).clone();
            live.retain(|p| p.id() != peer.id());
            if !leave {
                live.push(peer);
            }
            updated.set_peers(live.clone());
        }
        let fresh = engine(&live);
        let set = PeerSet::new(live.clone());
        let region_has_machines = live.iter().any(|p| p.region() == Some(here));
        for k in 0..1_000 {
            let key = key(k);
            let owner = updated.resolve(key.as_bytes());
            prop_assert_eq!(&owner, &fresh.resolve(key.as_bytes()), "an updated table differs");
            let picked = set.pick(key.as_bytes(), Some(here)).map(|p| p.id().to_owned());
            prop_assert_eq!(&owner, &picked);
            let Some(owner) = owner else {
                prop_assert!(live.is_empty());
                continue;
            };
            let region = live.iter().find(|p| p.id() == owner).and_then(Peer::region);
            if region_has_machines {
                prop_assert_eq!(region, Some(here), "a key left the preferred region");
            } else {
                let anywhere = set.pick(key.as_bytes(), None).map(|p| p.id().to_owned());
                prop_assert_eq!(Some(owner), anywhere);
            }
        }
    }
}
