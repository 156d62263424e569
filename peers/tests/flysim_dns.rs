//! The DNS provider end to end against flysim's `vms.<app>.internal` TXT.

use std::time::Duration;

use flysim::{Config, FlySim, Instance, Launch};
use sticky_core::{Env, KeySource, Source, Sticky};
use sticky_peers::{DnsConfig, Provider};

async fn cluster(machines: usize) -> FlySim {
    let launch = Launch::in_process(|_env| async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        Ok(Instance::new(addr, move || task.abort()))
    });
    let config = Config::default()
        .machines(machines)
        .admin_addr(None)
        .quiet(true);
    FlySim::start(config, launch).await.unwrap()
}

fn engine() -> Sticky {
    Sticky::builder()
        .sources([Source::Key])
        .key_source(KeySource::Header("x-tenant-id".into()))
        .build(Env::machine("148ed599c14189"))
        .unwrap()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_machines_leaving_and_joining_and_keeps_the_last_good_set() {
    let sim = cluster(3).await;
    let sticky = engine();
    let config = DnsConfig {
        server: sim.dns_addr().unwrap(),
        app: "flysim-app".into(),
        refresh: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
    };
    let provider = tokio::task::spawn_blocking({
        let sticky = sticky.clone();
        move || Provider::dns(&sticky, config)
    })
    .await
    .unwrap()
    .unwrap();
    let live = |s: &Sticky| sorted(s.peers().iter().map(|p| p.id().to_owned()).collect());
    assert_eq!(
        live(&sticky),
        sorted(sim.machine_ids()),
        "the first lookup is done before dns() returns"
    );
    assert_eq!(sticky.peers().iter().next().unwrap().region(), Some("iad"));

    let ids = sim.machine_ids();
    sim.destroy_machine(&ids[0]).await.unwrap();
    eventually("the destroyed Machine to leave", || {
        !sticky.peers().contains(&ids[0])
    })
    .await;
    assert_eq!(sticky.peers().len(), 2);
    let added = sim.add_machine().await.unwrap();
    eventually("the new Machine to join", || {
        sticky.peers().contains(&added)
    })
    .await;

    // The DNS server goes away: lookups fail, the last good set stays.
    let before = live(&sticky);
    sim.shutdown().await;
    let failures = provider.stats().failures;
    eventually("a failed lookup", || provider.stats().failures > failures).await;
    assert_eq!(live(&sticky), before);
    let stats = provider.stats();
    assert!(
        stats.updates >= 3 && stats.last_error.is_some() && stats.machines == 3,
        "{stats:?}"
    );
}

#[test]
fn an_unreachable_server_fails_without_a_set() {
    let sticky = engine();
    // A port nobody answers on.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = DnsConfig {
        server: socket.local_addr().unwrap(),
        app: "app".into(),
        refresh: Duration::from_secs(60),
        timeout: Duration::from_millis(200),
    };
    drop(socket);
    let provider = Provider::dns(&sticky, config).unwrap();
    let stats = provider.stats();
    assert_eq!((stats.updates, stats.failures, stats.machines), (0, 1, 0));
}

#[test]
fn from_env_prefers_sticky_peers() {
    let sticky = engine();
    let vars = |name: &str| match name {
        "STICKY_PEERS" => Some("148ed599c14189 iad,90801679a10038 ord,bogus".to_owned()),
        _ => None,
    };
    let provider = Provider::from_lookup(&sticky, vars).unwrap();
    assert_eq!(
        provider.stats().machines,
        2,
        "IDs failing the format are dropped"
    );
    let err = Provider::from_lookup(&sticky, |_| None).unwrap_err();
    assert!(err.to_string().contains("FLY_APP_NAME"));
    let err = Provider::from_lookup(&sticky, |n| match n {
        "FLY_APP_NAME" => Some("a".into()),
        "FLY_DNS_SERVER" => Some("dns.example".into()),
        _ => None,
    })
    .unwrap_err();
    assert!(err.to_string().contains("FLY_DNS_SERVER"));
}
