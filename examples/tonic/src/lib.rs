//! gRPC with tonic behind sticky: the tower layer of `sticky-axum`
//! ([`StickyLayer`]) in a tonic server, pinning calls to a Machine by key
//! affinity on the `x-room-id` metadata header.
//!
//! gRPC clients carry no cookies, so the pin cookie is not a source here:
//! each call names its room in `x-room-id`, and the engine maps the room to
//! one live Machine by rendezvous hashing (the live set comes from
//! `sticky-peers`: `STICKY_PEERS`, or Fly's internal DNS). A call that lands
//! on another Machine is answered with `fly-replay` before the service
//! runs, and Fly's proxy (or flysim) sends it to the room's Machine. A call
//! without `x-room-id` has no key: it is served wherever it lands.
//!
//! Every gRPC call is an HTTP/2 `POST` without `content-length`, a body of
//! unknown length that the engine by default refuses to replay (decision
//! row 6); [`sticky`] turns on
//! [`replay_unknown_length`](sticky_axum::sticky_core::Builder::replay_unknown_length),
//! trusting the proxy to buffer the call's body (at most 1 MB) to replay it.
//!
//! The service, as a `.proto` (the messages below are these, written as
//! `prost` structs; `build.rs` generates the service code without `protoc`):
//!
//! ```proto
//! syntax = "proto3";
//! package rooms.v1;
//!
//! service Rooms {
//!   // Joins the room named by x-room-id.
//!   rpc Join(JoinRequest) returns (JoinReply);
//!   // Streams `count` events of the room named by x-room-id.
//!   rpc Watch(WatchRequest) returns (stream RoomEvent);
//! }
//!
//! message JoinRequest { string name = 1; }
//! message JoinReply { string machine = 1; string room = 2; uint64 members = 3; string name = 4; }
//! message WatchRequest { uint32 count = 1; }
//! message RoomEvent { string machine = 1; string room = 2; uint64 seq = 3; uint64 members = 4; }
//! ```

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use sticky_axum::StickyLayer;
use sticky_axum::sticky_core::{ConfigError, Env, KeySource, Source, Sticky};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// The generated service code (`rooms.v1.Rooms`): `rooms_server` and
/// `rooms_client`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/rooms.v1.Rooms.rs"));
}

pub use generated::rooms_client::RoomsClient;
pub use generated::rooms_server::{Rooms, RoomsServer};

/// The metadata header that names a call's room: its key.
pub const ROOM_HEADER: &str = "x-room-id";

/// The most events one `Watch` call streams.
pub const MAX_WATCH: u32 = 10_000;

/// `Join`'s request.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct JoinRequest {
    /// Who joins (echoed back).
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `Join`'s answer.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct JoinReply {
    /// The Machine that served the call.
    #[prost(string, tag = "1")]
    pub machine: String,
    /// The room (`x-room-id`), empty when the call named none.
    #[prost(string, tag = "2")]
    pub room: String,
    /// How many joins this room has had on this Machine (0 without a room).
    #[prost(uint64, tag = "3")]
    pub members: u64,
    /// The request's `name`.
    #[prost(string, tag = "4")]
    pub name: String,
}

/// `Watch`'s request.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct WatchRequest {
    /// How many events to stream (at most [`MAX_WATCH`]).
    #[prost(uint32, tag = "1")]
    pub count: u32,
}

/// One event of `Watch`'s stream.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct RoomEvent {
    /// The Machine that served the call.
    #[prost(string, tag = "1")]
    pub machine: String,
    /// The room (`x-room-id`), empty when the call named none.
    #[prost(string, tag = "2")]
    pub room: String,
    /// 1, 2, ... within this stream.
    #[prost(uint64, tag = "3")]
    pub seq: u64,
    /// The room's joins on this Machine when the call began.
    #[prost(uint64, tag = "4")]
    pub members: u64,
}

/// The room named by a call's metadata (empty for none, or for a value
/// that is not visible ASCII).
pub fn room_of(metadata: &MetadataMap) -> String {
    metadata
        .get(ROOM_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// `message` as a request for `room` (sets `x-room-id`); fails for a room
/// that cannot be a header value.
pub fn in_room<T>(room: &str, message: T) -> Result<Request<T>, Status> {
    let mut req = Request::new(message);
    let value = room
        .parse()
        .map_err(|_| Status::invalid_argument(format!("room {room:?} is not a header value")))?;
    req.metadata_mut().insert(ROOM_HEADER, value);
    Ok(req)
}

/// The rooms service: every room's joins, in this Machine's memory (the
/// state that makes pinning matter).
#[derive(Clone, Debug)]
pub struct RoomsService {
    machine: Arc<str>,
    rooms: Arc<Mutex<HashMap<String, u64>>>,
}

impl RoomsService {
    /// The service of Machine `machine`.
    pub fn new(machine: &str) -> Self {
        RoomsService {
            machine: machine.into(),
            rooms: Arc::default(),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `Watch`'s stream.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<RoomEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Rooms for RoomsService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let room = room_of(request.metadata());
        let members = if room.is_empty() {
            0
        } else {
            let mut rooms = self.rooms();
            let n = rooms.entry(room.clone()).or_insert(0);
            *n += 1;
            *n
        };
        Ok(Response::new(JoinReply {
            machine: self.machine.to_string(),
            room,
            members,
            name: request.into_inner().name,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let room = room_of(request.metadata());
        let count = request.get_ref().count;
        if count > MAX_WATCH {
            return Err(Status::invalid_argument(format!(
                "count {count} is above {MAX_WATCH}"
            )));
        }
        let members = self.rooms().get(&room).copied().unwrap_or(0);
        let machine = self.machine.to_string();
        let events = (1..=u64::from(count)).map(move |seq| {
            Ok(RoomEvent {
                machine: machine.clone(),
                room: room.clone(),
                seq,
                members,
            })
        });
        Ok(Response::new(Box::pin(futures_util::stream::iter(events))))
    }
}

/// The engine with this example's settings: the room key (`x-room-id`) is
/// the only source (gRPC clients keep no cookie), and bodies of unknown
/// length may be replayed (every gRPC call has one).
pub fn sticky(env: Env) -> Result<Sticky, ConfigError> {
    Sticky::builder()
        .sources([Source::Key])
        .key_source(KeySource::Header(ROOM_HEADER.into()))
        .replay_unknown_length(true)
        .build(env)
}

/// Serves the rooms service behind the sticky layer on `listener` (h2c:
/// HTTP/2 with prior knowledge, as Fly's proxy speaks with `h2_backend`)
/// until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sticky: Sticky,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = RoomsService::new(sticky.machine_id().unwrap_or("local"));
    tonic::transport::Server::builder()
        .layer(StickyLayer::new(sticky))
        .add_service(RoomsServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}

/// Resolves on Ctrl-C at once, or on SIGTERM after draining for `grace`
/// (new calls for rooms held here are replayed elsewhere meanwhile).
pub async fn shutdown_signal(sticky: Sticky, grace: Duration) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        #[cfg(unix)]
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
            sticky.drain();
            tokio::time::sleep(grace).await;
            return;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
