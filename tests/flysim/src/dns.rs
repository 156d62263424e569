//! A loopback DNS server answering what Fly's internal DNS answers about an
//! app's Machines: `vms.<app>.internal` (started Machines) and
//! `all.vms.<app>.internal` (every Machine not destroyed), as TXT records of
//! comma-separated `<id> <region>` pairs. Everything else is NXDOMAIN.

use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::machine::MachineState;
use crate::sim::Shared;

/// Longest character-string in a TXT record.
const MAX_STRING: usize = 255;

pub(crate) async fn serve(shared: Arc<Shared>, socket: UdpSocket) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut buf = [0u8; 1500];
    loop {
        let (len, from) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        if let Ok(bytes) = answer(&shared, &query).to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

fn answer(shared: &Shared, query: &Message) -> Message {
    let mut res = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    res.metadata.authoritative = true;
    res.metadata.recursion_desired = query.metadata.recursion_desired;
    res.add_queries(query.queries.iter().cloned());
    let app = &shared.config.app_name;
    let mut found = false;
    for q in &query.queries {
        let name = q.name().to_lowercase().to_ascii();
        let name = name.trim_end_matches('.');
        let started_only = if name == format!("vms.{app}.internal") {
            true
        } else if name == format!("all.vms.{app}.internal") {
            false
        } else {
            continue;
        };
        found = true;
        if !matches!(q.query_type(), RecordType::TXT | RecordType::ANY) {
            continue;
        }
        let region = &shared.config.region;
        let pairs: Vec<String> = shared
            .fleet
            .machines()
            .into_iter()
            .filter(|m| match m.state {
                MachineState::Started => true,
                MachineState::Stopped | MachineState::Suspended => !started_only,
                MachineState::Destroyed => false,
            })
            .map(|m| format!("{} {region}", m.id))
            .collect();
        let text = pairs.join(",");
        // Long lists span several character-strings of one record; readers
        // concatenate them.
        let strings: Vec<String> = text
            .as_bytes()
            .chunks(MAX_STRING)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        res.add_answer(Record::from_rdata(
            q.name().clone(),
            5,
            RData::TXT(TXT::new(strings)),
        ));
    }
    if !found {
        res.metadata.response_code = ResponseCode::NXDomain;
    }
    res
}
