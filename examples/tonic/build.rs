//! Generates the `rooms.v1.Rooms` service (server and client) with tonic's
//! manual builder: the messages are plain `prost` structs in `src/lib.rs`,
//! so the build needs no `.proto` compiler (`protoc`), only cargo. The
//! equivalent `.proto` is in the README and in `src/lib.rs`.

fn main() {
    let codec = "tonic_prost::ProstCodec";
    let rooms = tonic_build::manual::Service::builder()
        .name("Rooms")
        .package("rooms.v1")
        .comment("Rooms held in one Machine's memory; calls are pinned by the x-room-id metadata.")
        .method(
            tonic_build::manual::Method::builder()
                .name("join")
                .route_name("Join")
                .comment("Joins the room named by x-room-id (unary).")
                .input_type("crate::JoinRequest")
                .output_type("crate::JoinReply")
                .codec_path(codec)
                .build(),
        )
        .method(
            tonic_build::manual::Method::builder()
                .name("watch")
                .route_name("Watch")
                .comment(
                    "Streams `count` events of the room named by x-room-id (server streaming).",
                )
                .input_type("crate::WatchRequest")
                .output_type("crate::RoomEvent")
                .codec_path(codec)
                .server_streaming()
                .build(),
        )
        .build();
    tonic_build::manual::Builder::new().compile(&[rooms]);
    println!("cargo:rerun-if-changed=build.rs");
}
