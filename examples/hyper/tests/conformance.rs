//! The shared conformance suite against example-hyper, in process.

use std::future::Future;
use std::io;
use std::pin::Pin;

use conformance::{App, Instance};
use sticky_core::Sticky;

struct Hyper;

impl App for Hyper {
    fn framework(&self) -> &'static str {
        "hyper"
    }

    fn start(&self, sticky: Sticky) -> Pin<Box<dyn Future<Output = io::Result<Instance>> + Send>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(example_hyper::serve(listener, sticky, async move {
                let _ = stopped.await;
            }));
            Ok(Instance::new(addr, move || {
                let _ = stop.send(());
            }))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let report = conformance::run_in_process(Hyper).await;
    println!("{report}");
    report.assert_passed();
    // Then with flysim speaking h2c to the Machines (`h2_backend`) and the
    // h2c client scenarios, after the HTTP/1.1 run rather than beside it.
    // h2c comes from hyper-util's auto connection builder.
    let report = conformance::run_in_process_over(Hyper, conformance::Backend::H2c).await;
    println!("{report}");
    report.assert_passed();
}

/// The binary's own engine (what `cargo xtask conformance` runs) leaves
/// `/health` and `/metrics` alone, as the suite's engine does.
#[test]
fn own_engine_never_sticks_health_or_metrics() {
    let sticky = example_hyper::sticky(sticky_core::Env::machine("148ed599c14189")).unwrap();
    conformance::check_never_sticky(&sticky).unwrap();
}
