//! Live Machine sets for sticky's key affinity.
//!
//! `sticky-core` maps keys onto a live set of Machines it is given; this
//! crate finds that set and keeps it fresh:
//!
//! - a static list (`STICKY_PEERS=148ed599c14189,90801679a10038`), or
//! - Fly's internal DNS: the TXT record `vms.<app>.internal` lists the
//!   started Machines as `<id> <region>` pairs. [`Provider::dns`] looks it up
//!   in the background (default every 5 s) and keeps the last good set when a
//!   lookup fails or comes back empty.
//!
//! The provider feeds the [`Sticky`] engine the app already holds, so it
//! works with every adapter: give it a clone of the engine you attach.
//!
//! ```no_run
//! use sticky_core::{Env, KeySource, Source, Sticky};
//!
//! let sticky = Sticky::builder()
//!     .sources([Source::Key, Source::Cookie, Source::Query])
//!     .key_source(KeySource::Header("x-tenant-id".into()))
//!     .build(Env::from_process())?;
//! // STICKY_PEERS if set, else Fly's DNS (FLY_DNS_SERVER, default [fdaa::3]:53).
//! let _provider = sticky_peers::Provider::from_env(&sticky)?;
//! // ... attach `sticky` with any adapter; keep `_provider` alive.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
pub use sticky_core::Peer;
use sticky_core::Sticky;

/// Fly's internal DNS server.
pub const FLY_DNS: SocketAddr =
    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfdaa, 0, 0, 0, 0, 0, 0, 3)), 53);

/// What can go wrong finding the live set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeersError {
    /// An environment variable could not be used.
    #[error("{name}={value:?}: {problem}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The DNS lookup failed.
    #[error("DNS lookup of {name} at {server} failed: {message}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The server asked.
        server: SocketAddr,
        /// The resolver's message.
        message: String,
    },
    /// The answer listed no Machine.
    #[error("{name} lists no Machine")]
    Empty {
        /// The name looked up.
        name: String,
    },
}

/// Parses a list of Machines: comma-separated entries of an ID and an
/// optional region, as in `STICKY_PEERS` or Fly's `vms` TXT record
/// (`148ed599c14189 iad,90801679a10038 ord`). Whitespace is tolerated and
/// empty entries are skipped; IDs are checked later by the engine.
///
/// ```
/// let peers = sticky_peers::parse_list(" 148ed599c14189 iad , 90801679a10038,, ");
/// assert_eq!(peers.len(), 2);
/// assert_eq!(peers[0].region(), Some("iad"));
/// assert_eq!(peers[1].id(), "90801679a10038");
/// ```
pub fn parse_list(list: &str) -> Vec<Peer> {
    list.split(',')
        .filter_map(|entry| {
            let mut parts = entry.split_whitespace();
            let id = parts.next()?;
            let peer = Peer::new(id);
            Some(match parts.next() {
                Some(region) => peer.with_region(region),
                None => peer,
            })
        })
        .collect()
}

/// Where and how often to look up the live set.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The DNS server (default [`FLY_DNS`], `[fdaa::3]:53`).
    pub server: SocketAddr,
    /// The app whose Machines are listed (`FLY_APP_NAME`).
    pub app: String,
    /// Time between lookups (default 5 s).
    pub refresh: Duration,
    /// Time allowed for one lookup (default 2 s).
    pub timeout: Duration,
}

impl DnsConfig {
    /// Fly's internal DNS for `app`, with the defaults.
    pub fn fly(app: impl Into<String>) -> Self {
        Self {
            server: FLY_DNS,
            app: app.into(),
            refresh: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }

    /// The name looked up: `vms.<app>.internal.`.
    pub fn name(&self) -> String {
        format!("vms.{}.internal.", self.app)
    }

    fn resolver(&self) -> Result<TokioResolver, PeersError> {
        let mut udp = ConnectionConfig::udp();
        udp.port = self.server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = self.server.port();
        let server = NameServerConfig::new(self.server.ip(), true, vec![udp, tcp]);
        let mut builder = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![server]),
            TokioRuntimeProvider::default(),
        );
        let opts = builder.options_mut();
        opts.timeout = self.timeout;
        opts.attempts = 1;
        // Every refresh must ask the server: the set changes.
        opts.cache_size = 0;
        builder
            .build()
            .map_err(|e| self.lookup_error(e.to_string()))
    }

    fn lookup_error(&self, message: String) -> PeersError {
        PeersError::Lookup {
            name: self.name(),
            server: self.server,
            message,
        }
    }
}

/// Looks up the live set once.
pub async fn lookup(config: &DnsConfig) -> Result<Vec<Peer>, PeersError> {
    lookup_with(&config.resolver()?, config).await
}

async fn lookup_with(
    resolver: &TokioResolver,
    config: &DnsConfig,
) -> Result<Vec<Peer>, PeersError> {
    let answer = resolver
        .txt_lookup(config.name())
        .await
        .map_err(|e| config.lookup_error(e.to_string()))?;
    let mut peers = Vec::new();
    for record in answer.answers() {
        if let RData::TXT(txt) = &record.data {
            // One record may be split into several character-strings.
            let text: String = txt
                .txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s))
                .collect();
            peers.extend(parse_list(&text));
        }
    }
    if peers.is_empty() {
        return Err(PeersError::Empty {
            name: config.name(),
        });
    }
    Ok(peers)
}

/// Counters of a running provider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lookups that updated the live set.
    pub updates: u64,
    /// Lookups that failed (the last good set was kept).
    pub failures: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Machines in the live set now.
    pub machines: usize,
}

#[derive(Default)]
struct State {
    updates: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Keeps a [`Sticky`] engine's live set up to date. Dropping it stops the
/// background refresh; the engine keeps the last set.
pub struct Provider {
    sticky: Sticky,
    state: Arc<State>,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Provider {
    /// A fixed list: sets it once.
    pub fn fixed(sticky: &Sticky, peers: impl IntoIterator<Item = Peer>) -> Self {
        let state = State::default();
        sticky.set_peers(peers);
        state.updates.store(1, Ordering::Relaxed);
        Self {
            sticky: sticky.clone(),
            state: Arc::new(state),
            stop: None,
        }
    }

    /// Looks the set up in DNS now and then every `config.refresh`, on a
    /// thread of its own (so it works under any framework's runtime).
    /// Blocks until the first lookup is done, successful or not (at most
    /// `config.timeout`); call it at start-up or from a blocking task.
    pub fn dns(sticky: &Sticky, config: DnsConfig) -> Result<Self, PeersError> {
        let state = Arc::new(State::default());
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let engine = sticky.clone();
        let shared = state.clone();
        let fail = move |shared: &State, e: PeersError| {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            *shared
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
        };
        // Everything async runs on this thread's own runtime, so the caller
        // may be inside any (or no) runtime.
        std::thread::Builder::new()
            .name("sticky-peers".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        return fail(
                            &shared,
                            config.lookup_error(format!("cannot start a runtime: {e}")),
                        );
                    }
                };
                let resolver = match runtime.block_on(async { config.resolver() }) {
                    Ok(r) => r,
                    Err(e) => return fail(&shared, e),
                };
                loop {
                    match runtime.block_on(lookup_with(&resolver, &config)) {
                        Ok(peers) => {
                            engine.set_peers(peers);
                            shared.updates.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => fail(&shared, e),
                    }
                    let _ = first_tx.send(());
                    match stopped.recv_timeout(config.refresh) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })
            .map_err(|e| PeersError::Lookup {
                name: String::new(),
                server: FLY_DNS,
                message: format!("cannot start the refresh thread: {e}"),
            })?;
        // Returns once the first lookup is done (or the thread gave up).
        let _ = first_rx.recv();
        Ok(Self {
            sticky: sticky.clone(),
            state,
            stop: Some(stop),
        })
    }

    /// The app contract: `STICKY_PEERS` (a [`parse_list`] list) when set,
    /// otherwise Fly's internal DNS for `FLY_APP_NAME` at `FLY_DNS_SERVER`
    /// (`host:port`, or an IP for port 53; default `[fdaa::3]:53`),
    /// refreshed every `STICKY_PEERS_REFRESH_MS` (default 5000).
    pub fn from_env(sticky: &Sticky) -> Result<Self, PeersError> {
        Self::from_lookup(sticky, |name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any variable lookup.
    pub fn from_lookup(
        sticky: &Sticky,
        mut var: impl FnMut(&str) -> Option<String>,
    ) -> Result<Self, PeersError> {
        if let Some(list) = var("STICKY_PEERS").filter(|l| !l.trim().is_empty()) {
            return Ok(Self::fixed(sticky, parse_list(&list)));
        }
        let app = var("FLY_APP_NAME")
            .filter(|a| !a.trim().is_empty())
            .ok_or(PeersError::Env {
                name: "FLY_APP_NAME",
                value: String::new(),
                problem: "needed to look up vms.<app>.internal (or set STICKY_PEERS)",
            })?;
        let mut config = DnsConfig::fly(app.trim());
        if let Some(server) = var("FLY_DNS_SERVER").filter(|s| !s.trim().is_empty()) {
            config.server = parse_server(server.trim()).ok_or(PeersError::Env {
                name: "FLY_DNS_SERVER",
                value: server.clone(),
                problem: "expected an IP address, optionally with a port ([fdaa::3]:53, 127.0.0.1:5353)",
            })?;
        }
        if let Some(ms) = var("STICKY_PEERS_REFRESH_MS") {
            let ms: u64 = ms
                .trim()
                .parse()
                .ok()
                .filter(|&n| n >= 10)
                .ok_or(PeersError::Env {
                    name: "STICKY_PEERS_REFRESH_MS",
                    value: ms.clone(),
                    problem: "expected milliseconds, at least 10",
                })?;
            config.refresh = Duration::from_millis(ms);
        }
        Self::dns(sticky, config)
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        Stats {
            updates: self.state.updates.load(Ordering::Relaxed),
            failures: self.state.failures.load(Ordering::Relaxed),
            last_error: self
                .state
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            machines: self.sticky.peers().len(),
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn parse_server(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers() {
        assert_eq!(parse_server("[fdaa::3]:53"), Some(FLY_DNS));
        assert_eq!(parse_server("fdaa::3"), Some(FLY_DNS));
        assert_eq!(parse_server("[fdaa::3]"), Some(FLY_DNS));
        assert_eq!(
            parse_server("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(parse_server("dns.example"), None);
    }

    #[test]
    fn lists() {
        assert!(parse_list("").is_empty());
        assert!(parse_list(" , ,").is_empty());
        let p = parse_list("a iad extra,b");
        assert_eq!((p[0].id(), p[0].region()), ("a", Some("iad")));
        assert_eq!((p[1].id(), p[1].region()), ("b", None));
    }
}
