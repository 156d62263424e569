//! The shared conformance suite, run against the example app (`example-poem`)
//! in this process (the scenarios that every adapter passes; `sticky-poem`'s
//! own tests cover only what is particular to poem).

use std::future::Future;
use std::io;
use std::pin::Pin;

use conformance::{App, Instance};
use sticky_poem::sticky_core::Sticky;

/// Starts `example_poem`'s contract app on 127.0.0.1:0.
struct PoemApp;

impl App for PoemApp {
    fn framework(&self) -> &'static str {
        "poem"
    }

    fn start(&self, sticky: Sticky) -> Pin<Box<dyn Future<Output = io::Result<Instance>> + Send>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(example_poem::serve(listener, sticky, async {
                let _ = stopped.await;
            }));
            // Stopping only signals: the server stops accepting at once and
            // finishes in the background.
            Ok(Instance::new(addr, move || {
                let _ = stop.send(());
            }))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    conformance::run_in_process(PoemApp).await.assert_passed();
    // Then with flysim speaking h2c to the Machines (`h2_backend`) and the
    // h2c client scenarios, after the HTTP/1.1 run rather than beside it.
    // h2c comes from poem's `Server` (hyper-util's auto builder).
    let report = conformance::run_in_process_over(PoemApp, conformance::Backend::H2c).await;
    println!("{report}");
    report.assert_passed();
}

/// The binary's own engine (what `cargo xtask conformance` runs) leaves
/// `/health` and `/metrics` alone, as the suite's engine does.
#[test]
fn own_engine_never_sticks_health_or_metrics() {
    let sticky =
        example_poem::configure(sticky_poem::sticky_core::Env::machine("148ed599c14189")).unwrap();
    conformance::check_never_sticky(&sticky).unwrap();
}
