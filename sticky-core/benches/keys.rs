//! Key affinity at 3, 20, 100 and 1,000 Machines: one key lookup
//! (`PeerSet::pick`, budget: at most 100 ns at 1,000 Machines, whatever
//! N), `decide` on a keyed request, and what a change of the live set
//! costs off the request path: building the table anew (`PeerSet::new`) and
//! bringing the engine's tables up to date when one Machine leaves or
//! joins (`Sticky::set_peers`).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sticky_core::{Env, KeySource, Outcome, Peer, PeerSet, Source, Sticky};

const SIZES: [usize; 4] = [3, 20, 100, 1_000];

fn ids(n: usize) -> Vec<String> {
    (0..n as u64)
        .map(|i| format!("{:014x}", 0x9080_1679_a100 + i * 7919))
        .collect()
}

fn bench(c: &mut Criterion) {
    // Lookups walk 4,096 keys, so the table is read at many places.
    let keys: Vec<String> = (0..4_096).map(|k| format!("tenant-{k}")).collect();
    let mut g = c.benchmark_group("keys");
    for n in SIZES {
        let ids = ids(n);
        let set = PeerSet::new(ids.iter().cloned().map(Peer::new));
        let mut i = 0usize;
        g.bench_function(format!("pick/{n}-machines"), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                black_box(
                    set.pick(black_box(keys[i & 4_095].as_bytes()), None)
                        .is_some(),
                )
            })
        });

        let sticky = Sticky::builder()
            .sources([Source::Key, Source::Cookie])
            .key_source(KeySource::Header("x-tenant-id".into()))
            .peers(ids.iter().cloned().map(Peer::new))
            .build(Env::machine("148ed599c14189"))
            .unwrap();
        let requests: Vec<http::Request<()>> = keys[..256]
            .iter()
            .map(|k| {
                http::Request::get("/api/tenant")
                    .header("x-tenant-id", k.as_str())
                    .body(())
                    .unwrap()
            })
            .collect();
        assert!(matches!(
            sticky.decide(&requests[0]).outcome(),
            Outcome::Replay(..) | Outcome::Stick(_)
        ));
        let mut j = 0usize;
        g.bench_function(format!("decide/{n}-machines"), |b| {
            b.iter(|| {
                j = j.wrapping_add(1);
                black_box(sticky.decide(black_box(&requests[j & 255])))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("keys");
    g.sample_size(10);
    for n in SIZES {
        let ids = ids(n);
        g.bench_function(format!("rebuild/{n}-machines"), |b| {
            b.iter(|| PeerSet::new(black_box(&ids).iter().cloned().map(Peer::new)))
        });
        let sticky = Sticky::builder()
            .sources([Source::Key])
            .key_source(KeySource::Header("x-tenant-id".into()))
            .peers(ids.iter().cloned().map(Peer::new))
            .build(Env::machine("148ed599c14189"))
            .unwrap();
        // Alternately one Machine fewer and all of them again: each call
        // is one Machine leaving or joining.
        let fewer: Vec<Peer> = ids[1..].iter().cloned().map(Peer::new).collect();
        let all: Vec<Peer> = ids.iter().cloned().map(Peer::new).collect();
        let mut leave = true;
        g.bench_function(format!("update/{n}-machines"), |b| {
            b.iter(|| {
                let next = if leave { &fewer } else { &all };
                leave = !leave;
                sticky.set_peers(next.iter().cloned())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
