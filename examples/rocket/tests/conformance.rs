//! The shared conformance suite, run against the Rocket example app (the
//! scenarios that every adapter passes; `sticky-rocket`'s own tests cover
//! only what is particular to Rocket).

use std::future::Future;
use std::pin::Pin;

use conformance::{App, Instance};

struct RocketApp;

impl App for RocketApp {
    fn framework(&self) -> &'static str {
        "rocket"
    }

    fn start(
        &self,
        sticky: sticky_rocket::sticky_core::Sticky,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Instance>> + Send>> {
        Box::pin(async move {
            let running = example_rocket::start(sticky, example_rocket::test_config()).await?;
            let shutdown = running.shutdown_handle();
            // `notify` only trips Rocket's shutdown switch: it never blocks.
            Ok(Instance::new(running.local_addr(), move || {
                shutdown.notify()
            }))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    conformance::run_in_process(RocketApp).await.assert_passed();
    // Then with flysim speaking h2c to the Machines (`h2_backend`) and the
    // h2c client scenarios, after the HTTP/1.1 run rather than beside it.
    // h2c comes from its `http2` feature (hyper-util's auto builder).
    let report = conformance::run_in_process_over(RocketApp, conformance::Backend::H2c).await;
    println!("{report}");
    report.assert_passed();
}

/// The binary's own engine (what `cargo xtask conformance` runs) leaves
/// `/health` and `/metrics` alone, as the suite's engine does.
#[test]
fn own_engine_never_sticks_health_or_metrics() {
    let sticky =
        example_rocket::engine(sticky_rocket::sticky_core::Env::machine("148ed599c14189")).unwrap();
    conformance::check_never_sticky(&sticky).unwrap();
}
