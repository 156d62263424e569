//! How a contract app is started: in-process through an adapter's [`App`],
//! or as a real process of an example binary.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flysim::Instance;
use sticky_core::{Env, Sticky};

use crate::App;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// Turns drain on for one Machine.
pub(crate) type Drain = Arc<dyn Fn() + Send + Sync>;

/// Something that can start the contract app for an `Env`.
pub(crate) trait Deploy: Send + Sync + 'static {
    /// Starts one Machine; `dns` is flysim's DNS server for its live set.
    fn launch(&self, env: Env, dns: Option<SocketAddr>)
    -> BoxFuture<io::Result<(Instance, Drain)>>;
}

/// How often Machines under test refresh their live set.
pub(crate) const PEERS_REFRESH: Duration = Duration::from_millis(100);

pub(crate) struct InProcess<A>(pub(crate) Arc<A>);

impl<A: App> Deploy for InProcess<A> {
    fn launch(
        &self,
        env: Env,
        dns: Option<SocketAddr>,
    ) -> BoxFuture<io::Result<(Instance, Drain)>> {
        let app = self.0.clone();
        Box::pin(async move {
            let app_name = env.app_name.clone();
            let sticky: Sticky = crate::contract_sticky(env).map_err(io::Error::other)?;
            // The live set, as a real Machine gets it: from (flysim's) DNS.
            let provider = match (dns, app_name, sticky.is_enabled()) {
                (Some(server), Some(app), true) => {
                    let config = sticky_peers::DnsConfig {
                        server,
                        app,
                        refresh: PEERS_REFRESH,
                        timeout: Duration::from_secs(1),
                    };
                    let engine = sticky.clone();
                    let provider = tokio::task::spawn_blocking(move || {
                        sticky_peers::Provider::dns(&engine, config)
                    })
                    .await
                    .map_err(io::Error::other)?
                    .map_err(io::Error::other)?;
                    Some(provider)
                }
                _ => None,
            };
            let instance = app.start(sticky.clone()).await?;
            let addr = instance.addr();
            let drain: Drain = Arc::new(move || sticky.drain());
            // The provider lives as long as the Machine.
            let instance = Instance::new(addr, move || {
                drop(provider);
                drop(instance);
            });
            Ok((instance, drain))
        })
    }
}

/// A release binary of an example, started as a child process per Machine.
/// Drain is SIGTERM (the examples drain, then keep serving for
/// `DRAIN_SECONDS`).
pub(crate) struct Process {
    pub(crate) binary: PathBuf,
}

impl Deploy for Process {
    fn launch(
        &self,
        env: Env,
        dns: Option<SocketAddr>,
    ) -> BoxFuture<io::Result<(Instance, Drain)>> {
        let binary = self.binary.clone();
        Box::pin(async move {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut cmd = tokio::process::Command::new(&binary);
            cmd.env_remove("FLY_MACHINE_ID")
                .env("PORT", port.to_string())
                .env("DRAIN_SECONDS", "120")
                .env(
                    "STICKY_PEERS_REFRESH_MS",
                    PEERS_REFRESH.as_millis().to_string(),
                )
                .env_remove("STICKY_PEERS")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            for (name, value) in [
                ("FLY_MACHINE_ID", &env.machine_id),
                ("FLY_APP_NAME", &env.app_name),
                ("FLY_REGION", &env.region),
            ] {
                if let Some(value) = value {
                    cmd.env(name, value);
                }
            }
            if let Some(dns) = dns {
                cmd.env("FLY_DNS_SERVER", dns.to_string());
            }
            let mut child = cmd.spawn()?;
            let pid = child
                .id()
                .ok_or_else(|| io::Error::other("child has no pid"))?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if let Err(err) = wait_ready(addr).await {
                let _ = child.start_kill();
                return Err(err);
            }
            let drain: Drain = Arc::new(move || {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            });
            let instance = Instance::new(addr, move || {
                let _ = child.start_kill();
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
            });
            Ok((instance, drain))
        })
    }
}

async fn wait_ready(addr: SocketAddr) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("app never listened on {addr}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
