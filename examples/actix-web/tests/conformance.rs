//! The shared conformance suite against example-actix-web, in process (the
//! scenarios that every adapter passes; `sticky-actix-web`'s own tests
//! cover only what is particular to actix-web).
//!
//! actix-web runs on its own (non-`Send`) runtime, so each instance's
//! `HttpServer` runs on a dedicated thread with its own actix `System`; the
//! stop hook sends a graceful stop through the server's handle.

use std::future::Future;
use std::io;
use std::pin::Pin;

use conformance::{App, Instance};
use sticky_actix_web::sticky_core::Sticky;

struct ActixWeb;

impl App for ActixWeb {
    fn framework(&self) -> &'static str {
        "actix-web"
    }

    fn start(&self, sticky: Sticky) -> Pin<Box<dyn Future<Output = io::Result<Instance>> + Send>> {
        Box::pin(async move {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let server = example_actix_web::server(listener, sticky)?;
            let handle = example_actix_web::run_on_thread(server)?;
            Ok(Instance::new(addr, move || {
                // The command is sent now; the returned future only waits
                // for completion, which the stop hook must not block on.
                drop(handle.stop(true));
            }))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let report = conformance::run_in_process(ActixWeb).await;
    println!("{report}");
    report.assert_passed();
    // Then with flysim speaking h2c to the Machines (`h2_backend`) and the
    // h2c client scenarios, after the HTTP/1.1 run rather than beside it.
    // h2c comes from `HttpServer::listen_auto_h2c` (`http2` feature).
    let report = conformance::run_in_process_over(ActixWeb, conformance::Backend::H2c).await;
    println!("{report}");
    report.assert_passed();
}

/// The binary's own engine (what `cargo xtask conformance` runs) leaves
/// `/health` and `/metrics` alone, as the suite's engine does.
#[test]
fn own_engine_never_sticks_health_or_metrics() {
    let sticky = example_actix_web::sticky(sticky_actix_web::sticky_core::Env::machine(
        "148ed599c14189",
    ))
    .unwrap();
    conformance::check_never_sticky(&sticky).unwrap();
}
