//! flysim's internal DNS: `vms.<app>.internal` and `all.vms.<app>.internal` TXT.

mod common;

use std::net::SocketAddr;

use common::{App, config, start};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

/// Asks `server` for the TXT records of `name`; returns the response code and
/// each record's character-strings concatenated.
async fn txt(server: SocketAddr, name: &str) -> (ResponseCode, Vec<String>) {
    let mut query = Message::new(7, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(
        Name::from_ascii(name).unwrap(),
        RecordType::TXT,
    ));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&query.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let (n, _) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.recv_from(&mut buf),
    )
    .await
    .expect("a DNS answer")
    .unwrap();
    let res = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(res.metadata.id, 7);
    let texts = res
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect();
    (res.metadata.response_code, texts)
}

fn ids_of(texts: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = texts
        .iter()
        .flat_map(|t| t.split(','))
        .map(|pair| pair.split_whitespace().next().unwrap_or("").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn vms_txt_lists_started_machines() {
    let app = App::echo();
    let sim = start(config().region("ord"), &app).await;
    let dns = sim.dns_addr().expect("DNS is on by default");
    let mut ids = sim.machine_ids();
    ids.sort();
    let (code, texts) = txt(dns, "vms.flysim-app.internal.").await;
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(ids_of(&texts), ids);
    assert!(
        texts[0].split(',').all(|p| p.ends_with(" ord")),
        "{texts:?}"
    );

    sim.stop_machine(&ids[0]).await.unwrap();
    assert_eq!(
        ids_of(&txt(dns, "vms.flysim-app.internal").await.1),
        ids[1..]
    );
    assert_eq!(
        ids_of(&txt(dns, "all.vms.flysim-app.internal").await.1),
        ids,
        "all.vms includes stopped"
    );
    sim.destroy_machine(&ids[1]).await.unwrap();
    assert_eq!(
        ids_of(&txt(dns, "vms.flysim-app.internal").await.1),
        ids[2..]
    );
    assert_eq!(
        ids_of(&txt(dns, "ALL.vms.flysim-app.internal").await.1),
        [ids[0].clone(), ids[2].clone()]
    );
    let added = sim.add_machine().await.unwrap();
    assert!(ids_of(&txt(dns, "vms.flysim-app.internal").await.1).contains(&added));

    assert_eq!(
        txt(dns, "vms.other-app.internal").await.0,
        ResponseCode::NXDomain
    );
    assert_eq!(txt(dns, "example.com").await.0, ResponseCode::NXDomain);
    sim.shutdown().await;
}

#[tokio::test]
async fn long_lists_span_several_strings() {
    let app = App::echo();
    let sim = start(config().machines(20), &app).await;
    let mut ids = sim.machine_ids();
    ids.sort();
    let (_, texts) = txt(sim.dns_addr().unwrap(), "vms.flysim-app.internal").await;
    assert_eq!(ids_of(&texts), ids);
    sim.shutdown().await;
}

#[tokio::test]
async fn machines_get_fly_dns_server() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let envs = app.envs();
    assert!(envs.iter().all(|e| e.dns_server == sim.dns_addr()));
    sim.shutdown().await;
    let sim = start(config().dns_addr(None), &app).await;
    assert!(sim.dns_addr().is_none());
    sim.shutdown().await;
}
