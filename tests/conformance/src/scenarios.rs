//! The scenarios. Each has a name, a one-line purpose, and a body that
//! returns `Err(what went wrong)`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flysim::{Config, FlySim, FlyToml, Launch, ReplayCacheRule, ReplayCacheStats};
use sticky_core::{Env, Peer, PeerSet};

use crate::TENANT_HEADER;

use crate::client::{
    Client, Request, Response, get_keep_alive, send, upload_then_reuse, websocket_echo,
};
use crate::deploy::{Deploy, Drain};

/// Another Machine's ID, used to pin requests elsewhere in direct scenarios.
pub(crate) const OTHER: &str = "90801679a10038";

/// Where a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Against one Machine directly: exact statuses, headers and handler runs.
    Direct,
    /// Through flysim with 3 Machines, run without and with the replay cache.
    Cluster,
    /// Through flysim with 3 Machines and the replay cache on: what the
    /// cache changes (hits, invalidations, the hops saved).
    Cache,
}

type Fut<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) purpose: &'static str,
    pub(crate) kind: Kind,
    pub(crate) run: for<'a> fn(&'a Env0) -> Fut<'a>,
}

/// What a scenario gets: a way to start Machines, and whether flysim runs
/// with the replay cache rules of `examples/fly.toml`.
pub(crate) struct Env0 {
    pub(crate) deploy: Arc<dyn Deploy>,
    pub(crate) replay_cache: bool,
    /// flysim speaks h2c to the Machines (`h2_backend`).
    pub(crate) h2_backend: bool,
}

/// The deploy kit: the cache runs use exactly its `replay_cache` rules (the
/// pin cookie on `/`, the tenant header on `/api/tenant`).
const FLY_TOML: &str = include_str!("../../../examples/fly.toml");

fn cache_rules() -> Result<Vec<ReplayCacheRule>, String> {
    let file = FlyToml::parse(FLY_TOML, "examples/fly.toml").map_err(|e| e.to_string())?;
    Ok(file.replay_cache)
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

macro_rules! scenario {
    ($name:literal, $kind:ident, $purpose:literal, |$ctx:ident| $body:block) => {
        Scenario {
            name: $name,
            purpose: $purpose,
            kind: Kind::$kind,
            run: |$ctx| Box::pin(async move $body),
        }
    };
}

mod cache;
pub(crate) mod h2;
pub(crate) mod metrics;

/// A running cluster with drain switches per Machine.
pub(crate) struct Cluster {
    pub(crate) sim: FlySim,
    drains: Arc<Mutex<HashMap<String, Drain>>>,
}

impl Cluster {
    async fn start(ctx: &Env0, machines: usize, on_fly: bool) -> Result<Cluster, String> {
        let drains: Arc<Mutex<HashMap<String, Drain>>> = Arc::default();
        let deploy = ctx.deploy.clone();
        let registry = drains.clone();
        let launch = Launch::in_process(move |m: flysim::MachineEnv| {
            let deploy = deploy.clone();
            let registry = registry.clone();
            async move {
                let env = if on_fly {
                    Env::machine(m.machine_id.clone())
                        .with_app(m.app_name)
                        .with_region(m.region)
                } else {
                    Env::default()
                };
                let (instance, drain) = deploy.launch(env, m.dns_server).await?;
                registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(m.machine_id, drain);
                Ok(instance)
            }
        });
        let mut config = Config::default()
            .machines(machines)
            .admin_addr(None)
            .quiet(true)
            .dead_target_delay(Duration::from_millis(300))
            .ready_timeout(Duration::from_secs(30))
            .h2_backend(ctx.h2_backend);
        if ctx.replay_cache {
            for rule in cache_rules()? {
                config = config.replay_cache(rule);
            }
        }
        let sim = FlySim::start(config, launch)
            .await
            .map_err(|e| format!("flysim did not start: {e}"))?;
        Ok(Cluster { sim, drains })
    }

    /// One Machine on Fly, for direct scenarios: its address and ID.
    async fn single(ctx: &Env0) -> Result<(Cluster, SocketAddr, String), String> {
        let cluster = Cluster::start(ctx, 1, true).await?;
        let info = cluster
            .sim
            .machines()
            .into_iter()
            .next()
            .ok_or("no Machine")?;
        let addr = info.addr.ok_or("the Machine has no address")?;
        Ok((cluster, addr, info.id))
    }

    fn front(&self) -> SocketAddr {
        self.sim.front_addr()
    }

    /// Replays the apps answered, over every Machine.
    fn replays(&self) -> u64 {
        self.sim.machines().iter().map(|m| m.replays_sent).sum()
    }

    fn cache(&self) -> ReplayCacheStats {
        self.sim.replay_cache_stats()
    }

    fn drain(&self, id: &str) -> Result<(), String> {
        let drain = self
            .drains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| format!("no drain switch for {id}"))?;
        drain();
        Ok(())
    }

    /// Fails if the proxy logged an error (PA02, PA03, a failed replay...).
    fn no_proxy_errors(&self) -> Result<(), String> {
        let errors: Vec<String> = self
            .sim
            .events()
            .into_iter()
            .filter(|e| e.is_error())
            .map(|e| format!("{e:?}"))
            .collect();
        ensure!(
            errors.is_empty(),
            "the proxy reported errors: {}",
            errors.join("; ")
        );
        Ok(())
    }

    async fn stop(self) {
        self.sim.shutdown().await;
    }
}

/// Runs `body` against one fresh Machine, then shuts it down.
async fn with_single<F>(ctx: &Env0, body: F) -> Result<(), String>
where
    F: for<'a> FnOnce(
        &'a Cluster,
        SocketAddr,
        &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>,
{
    let (cluster, addr, me) = Cluster::single(ctx).await?;
    let result = body(&cluster, addr, &me).await;
    cluster.stop().await;
    result
}

async fn with_cluster<F>(ctx: &Env0, body: F) -> Result<(), String>
where
    F: for<'a> FnOnce(&'a Cluster) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>,
{
    let cluster = Cluster::start(ctx, 3, true).await?;
    let result = match body(&cluster).await {
        Ok(()) => cluster.no_proxy_errors(),
        Err(e) => Err(e),
    };
    cluster.stop().await;
    result
}

/// Sends `GET /api/tenant` for each tenant until every one is served by its
/// owner in `live` (the Machines' DNS refresh is asynchronous); every answer
/// must be a 200 meanwhile.
async fn tenants_settle(c: &Cluster, live: &[String], tenants: &[String]) -> Result<(), String> {
    let set = PeerSet::new(live.iter().cloned().map(Peer::new));
    let mut wrong = Vec::new();
    for _ in 0..100 {
        wrong.clear();
        for tenant in tenants {
            let owner = set
                .pick(tenant.as_bytes(), None)
                .map(|p| p.id().to_owned())
                .unwrap_or_default();
            let res = send(
                c.front(),
                &Request::get("/api/tenant").header(TENANT_HEADER, tenant),
            )
            .await?;
            ensure!(res.status == 200, "tenant {tenant}: {}", res.summary());
            ensure!(
                res.text().ends_with(&format!(" tenant={tenant}")),
                "tenant {tenant}: {}",
                res.summary()
            );
            if res.machine().as_deref() != Some(owner.as_str()) {
                wrong.push(format!("{tenant} on {:?}, owner {owner}", res.machine()));
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "tenants never settled on their owners: {}",
        wrong.join("; ")
    ))
}

/// `GET /` with our cookie: the handler count now.
async fn handled(addr: SocketAddr, me: &str) -> Result<u64, String> {
    let res = send(addr, &Request::get("/").cookie(me)).await?;
    res.handled()
        .ok_or_else(|| format!("GET / did not report handled=: {}", res.summary()))
}

fn expect_served_pinned(res: &Response, me: &str, what: &str) -> Result<(), String> {
    ensure!(
        res.status == 200,
        "{what}: expected 200, got {}",
        res.summary()
    );
    ensure!(
        res.one("fly-replay").is_none(),
        "{what}: must not replay: {}",
        res.summary()
    );
    ensure!(
        res.pinned_to().as_deref() == Some(me),
        "{what}: expected a re-pin to {me}: {}",
        res.summary()
    );
    Ok(())
}

fn expect_replay(res: &Response, value: &str, what: &str) -> Result<(), String> {
    ensure!(
        res.status == 307,
        "{what}: expected 307, got {}",
        res.summary()
    );
    ensure!(
        res.one("fly-replay") == Some(value),
        "{what}: expected fly-replay: {value}: {}",
        res.summary()
    );
    ensure!(
        res.one("set-cookie").is_none(),
        "{what}: a replay must not set a cookie: {}",
        res.summary()
    );
    ensure!(
        res.body.is_empty(),
        "{what}: a replay has an empty body: {}",
        res.summary()
    );
    Ok(())
}

/// Sends `req`; the app must serve it here and re-pin to `me`, without replaying.
async fn refused_target(
    addr: SocketAddr,
    me: &str,
    req: Request,
    what: &str,
) -> Result<(), String> {
    let res = send(addr, &req).await?;
    expect_served_pinned(&res, me, what)
}

const WS: &str = "upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13";

fn ws_request(path: &str) -> Request {
    WS.split("\r\n").fold(Request::get(path), |req, line| {
        let (n, v) = line.split_once(": ").unwrap_or((line, ""));
        req.header(n, v)
    })
}

pub(crate) fn all() -> Vec<Scenario> {
    let mut all = uncached();
    all.extend(metrics::all());
    all.extend(cache::all());
    all
}

fn uncached() -> Vec<Scenario> {
    vec![
        scenario!(
            "first-visit-pins",
            Direct,
            "a request without a cookie is served here and pinned with the documented cookie attributes",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let res = send(addr, &Request::get("/")).await?;
                        ensure!(
                            res.status == 200 && res.machine().as_deref() == Some(me),
                            "expected 200 from {me}: {}",
                            res.summary()
                        );
                        let cookie = res
                            .one("set-cookie")
                            .ok_or("no Set-Cookie on a first visit")?;
                        let parts: Vec<&str> = cookie.split(';').map(str::trim).collect();
                        for want in [
                            &format!("fly-machine-id={me}") as &str,
                            "HttpOnly",
                            "SameSite=Lax",
                            "Path=/",
                            "Max-Age=518400",
                        ] {
                            ensure!(parts.contains(&want), "Set-Cookie lacks {want}: {cookie}");
                        }
                        ensure!(
                            !parts.contains(&"Secure"),
                            "no Secure over plain http: {cookie}"
                        );
                        ensure!(
                            res.all("set-cookie").len() == 1,
                            "one Set-Cookie: {}",
                            res.summary()
                        );
                        ensure!(
                            res.all("cache-control") == ["private"],
                            "Cache-Control: private expected: {}",
                            res.summary()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "secure-behind-https",
            Direct,
            "X-Forwarded-Proto: https (Fly's TLS edge) adds Secure to the cookie",
            |ctx| {
                with_single(ctx, |_, addr, _| {
                    Box::pin(async move {
                        let res = send(
                            addr,
                            &Request::get("/").header("x-forwarded-proto", "https"),
                        )
                        .await?;
                        let cookie = res.one("set-cookie").ok_or("no Set-Cookie")?;
                        ensure!(
                            cookie.split(';').any(|p| p.trim() == "Secure"),
                            "Secure expected: {cookie}"
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "pinned-here-sticks",
            Direct,
            "a cookie naming this Machine is served, the handler runs, nothing is added",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let first = handled(addr, me).await?;
                        let res = send(addr, &Request::get("/").cookie(me)).await?;
                        ensure!(
                            res.status == 200 && res.handled() == Some(first + 1),
                            "handler must run once: {}",
                            res.summary()
                        );
                        ensure!(
                            res.one("set-cookie").is_none() && res.one("fly-replay").is_none(),
                            "nothing added: {}",
                            res.summary()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "pinned-elsewhere-replays",
            Direct,
            "a cookie naming another Machine gets 307 + fly-replay: prefer_instance and the handler does not run",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let before = handled(addr, me).await?;
                        let res = send(
                            addr,
                            &Request::get("/").header(
                                "cookie",
                                format!("theme=dark; fly-machine-id={OTHER}; lang=en"),
                            ),
                        )
                        .await?;
                        expect_replay(&res, &format!("prefer_instance={OTHER}"), "GET /")?;
                        ensure!(
                            handled(addr, me).await? == before + 1,
                            "the replayed request ran the handler"
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "head-replayed",
            Direct,
            "a HEAD request pinned elsewhere is replayed like a GET",
            |ctx| {
                with_single(ctx, |_, addr, _| {
                    Box::pin(async move {
                        let res = send(addr, &Request::new("HEAD", "/").cookie(OTHER)).await?;
                        ensure!(
                            res.status == 307
                                && res.one("fly-replay")
                                    == Some(&format!("prefer_instance={OTHER}") as &str),
                            "{}",
                            res.summary()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "upload-replayed-unread",
            Direct,
            "a small POST pinned elsewhere is replayed without running the handler",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let before = handled(addr, me).await?;
                        let res = send(
                            addr,
                            &Request::new("POST", "/upload")
                                .cookie(OTHER)
                                .body(vec![b'a'; 1000]),
                        )
                        .await?;
                        expect_replay(&res, &format!("prefer_instance={OTHER}"), "POST /upload")?;
                        ensure!(
                            handled(addr, me).await? == before + 1,
                            "the replayed upload ran the handler"
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "upload-replay-reads-the-body",
            Direct,
            "a POST pinned elsewhere is answered once its body is read: the connection stays usable, so a proxy gets the replay",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let before = handled(addr, me).await?;
                        let cookie = format!("{}={OTHER}", sticky_core::DEFAULT_COOKIE_NAME);
                        let (first, second) =
                            upload_then_reuse(addr, &[("cookie", &cookie)], 256 * 1024).await?;
                        expect_replay(
                            &first,
                            &format!("prefer_instance={OTHER}"),
                            "POST /upload, 256 KiB",
                        )?;
                        ensure!(
                            second.status == 200 && second.text() == "ok",
                            "the next request on the connection: {}",
                            second.summary()
                        );
                        ensure!(
                            handled(addr, me).await? == before + 1,
                            "the replayed upload ran the handler"
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "large-upload-served-here",
            Direct,
            "a 2 MB upload pinned elsewhere cannot be replayed: it is served here, not re-pinned",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let res = send(
                            addr,
                            &Request::new("POST", "/upload")
                                .cookie(OTHER)
                                .body(vec![b'x'; 2_000_000]),
                        )
                        .await?;
                        ensure!(
                            res.status == 200
                                && res.text() == format!("machine={me} bytes=2000000"),
                            "{}",
                            res.summary()
                        );
                        ensure!(
                            res.one("fly-replay").is_none() && res.pinned_to().is_none(),
                            "served without replay or re-pin: {}",
                            res.summary()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "chunked-upload-served-here",
            Direct,
            "an upload of unknown length (chunked) pinned elsewhere is served here",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let chunks = vec![vec![b'a'; 3000], vec![b'b'; 5000]];
                        let res = send(
                            addr,
                            &Request::new("POST", "/upload")
                                .cookie(OTHER)
                                .chunked(chunks),
                        )
                        .await?;
                        ensure!(
                            res.status == 200 && res.text() == format!("machine={me} bytes=8000"),
                            "{}",
                            res.summary()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "websocket-replayed-not-upgraded",
            Direct,
            "a WebSocket handshake pinned elsewhere by cookie gets the replay status, never 101",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let before = handled(addr, me).await?;
                        let res = send(addr, &ws_request("/ws").cookie(OTHER)).await?;
                        expect_replay(
                            &res,
                            &format!("prefer_instance={OTHER}"),
                            "WebSocket handshake",
                        )?;
                        ensure!(
                            handled(addr, me).await? == before + 1,
                            "the WebSocket handler ran"
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "websocket-query-replayed",
            Direct,
            "a WebSocket handshake with fly_instance_id naming another Machine is replayed",
            |ctx| {
                with_single(ctx, |_, addr, _| {
                    Box::pin(async move {
                        let res = send(addr, &ws_request(&format!("/ws?fly_instance_id={OTHER}")))
                            .await?;
                        expect_replay(
                            &res,
                            &format!("prefer_instance={OTHER}"),
                            "WebSocket handshake",
                        )
                    })
                })
                .await
            }
        ),
        scenario!(
            "websocket-home-echoes",
            Direct,
            "a WebSocket handshake pinned here upgrades and echoes <id>:<message>",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let echo = websocket_echo(
                            addr,
                            &format!("/ws?fly_instance_id={me}"),
                            Some(me),
                            "hello",
                        )
                        .await?;
                        match echo {
                            Ok(text) => ensure!(text == format!("{me}:hello"), "echo was {text:?}"),
                            Err(res) => return Err(format!("upgrade refused: {}", res.summary())),
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "health-never-sticky",
            Direct,
            "/health is excluded: served with nothing added even when pinned elsewhere",
            |ctx| {
                with_single(ctx, |_, addr, _| {
                    Box::pin(async move {
                        for req in [
                            Request::get("/health"),
                            Request::get("/health").cookie(OTHER),
                        ] {
                            let res = send(addr, &req).await?;
                            ensure!(res.status == 200 && res.text() == "ok", "{}", res.summary());
                            ensure!(
                                res.one("set-cookie").is_none() && res.one("fly-replay").is_none(),
                                "{}",
                                res.summary()
                            );
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "replayed-request-repins",
            Direct,
            "a request that already went through a replay (fly-replay-src) is served here and re-pinned, never replayed again",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let req = Request::get("/")
                            .cookie(OTHER)
                            .header("fly-replay-src", format!("instance={OTHER};region=iad;t=1"));
                        refused_target(addr, me, req, "fly-replay-src").await
                    })
                })
                .await
            }
        ),
        scenario!(
            "fallback-request-repins",
            Direct,
            "fly-replay-failed and fly-preferred-instance-unavailable: served here and re-pinned",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let failed = Request::get("/").cookie(OTHER).header(
                            "fly-replay-failed",
                            format!("instance={OTHER};reason=timeout"),
                        );
                        refused_target(addr, me, failed, "fly-replay-failed").await?;
                        let gone = Request::get("/")
                            .cookie(OTHER)
                            .header("fly-preferred-instance-unavailable", OTHER);
                        refused_target(addr, me, gone, "fly-preferred-instance-unavailable").await
                    })
                })
                .await
            }
        ),
        scenario!(
            "drain-moves-requests",
            Direct,
            "while draining, requests pinned here and new ones get fly-replay: elsewhere=true; excluded paths still serve",
            |ctx| {
                with_single(ctx, |cluster, addr, me| {
                    Box::pin(async move {
                        cluster.drain(me)?;
                        // A process drains on SIGTERM: give it a moment to see the signal.
                        let mut res = send(addr, &Request::get("/").cookie(me)).await?;
                        for _ in 0..50 {
                            if res.status == 307 {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            res = send(addr, &Request::get("/").cookie(me)).await?;
                        }
                        expect_replay(&res, "elsewhere=true", "pinned here while draining")?;
                        expect_replay(
                            &send(addr, &Request::get("/")).await?,
                            "elsewhere=true",
                            "new visitor while draining",
                        )?;
                        let health = send(addr, &Request::get("/health")).await?;
                        ensure!(
                            health.status == 200,
                            "/health while draining: {}",
                            health.summary()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "drain-closes-connections",
            Direct,
            "while draining, every answer (replays and served requests) closes its kept-alive connection; before, connections stay open",
            |ctx| {
                with_single(ctx, |cluster, addr, me| {
                    Box::pin(async move {
                        let cookie = format!("{}={me}", sticky_core::DEFAULT_COOKIE_NAME);
                        let (res, closed) = get_keep_alive(addr, "/", &[("cookie", &cookie)]).await?;
                        ensure!(
                            res.status == 200 && !closed,
                            "before draining, a served request keeps its connection: {} (closed: {closed})",
                            res.summary()
                        );
                        cluster.drain(me)?;
                        // A process drains on SIGTERM: give it a moment to see the signal.
                        for _ in 0..50 {
                            if send(addr, &Request::get("/").cookie(me)).await?.status == 307 {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        for (target, headers, status) in [
                            ("/", vec![("cookie", cookie.as_str())], 307),
                            ("/", Vec::new(), 307),
                            ("/health", Vec::new(), 200),
                        ] {
                            let (res, closed) = get_keep_alive(addr, target, &headers).await?;
                            ensure!(
                                res.status == status,
                                "GET {target} while draining: {}",
                                res.summary()
                            );
                            ensure!(
                                closed && res.one("connection") == Some("close"),
                                "GET {target} while draining: the connection stays open: {}",
                                res.summary()
                            );
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "not-on-fly-does-nothing",
            Direct,
            "without FLY_MACHINE_ID nothing is added and nothing is replayed",
            |ctx| {
                let cluster = Cluster::start(ctx, 1, false).await?;
                let addr = cluster
                    .sim
                    .machines()
                    .first()
                    .and_then(|m| m.addr)
                    .ok_or("no Machine address")?;
                let result = async {
                    let res = send(addr, &Request::get("/").cookie(OTHER)).await?;
                    ensure!(
                        res.status == 200 && res.machine().as_deref() == Some("local"),
                        "{}",
                        res.summary()
                    );
                    ensure!(
                        res.one("set-cookie").is_none()
                            && res.one("fly-replay").is_none()
                            && res.one("cache-control").is_none(),
                        "{}",
                        res.summary()
                    );
                    Ok(())
                }
                .await;
                cluster.stop().await;
                result
            }
        ),
        // Adversarial inputs.
        scenario!(
            "encoded-injection-refused",
            Direct,
            "a percent-encoded field injection (90801679a10038%3Bapp%3Dx) is not decoded: no replay, re-pinned here",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        refused_target(
                            addr,
                            me,
                            Request::get("/").cookie(&format!("{OTHER}%3Bapp%3Dx")),
                            "cookie",
                        )
                        .await?;
                        refused_target(
                            addr,
                            me,
                            Request::get(format!("/?fly_instance_id={OTHER}%3Bapp%3Dx")),
                            "query",
                        )
                        .await?;
                        refused_target(
                            addr,
                            me,
                            Request::get(format!("/?fly_instance_id={OTHER}%2Capp%3Dx")),
                            "query comma",
                        )
                        .await
                    })
                })
                .await
            }
        ),
        scenario!(
            "raw-injection-refused",
            Direct,
            "raw separators in a target (`,app=`, `;app=` in the query, spaces) never reach fly-replay",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        refused_target(
                            addr,
                            me,
                            Request::get("/").cookie(&format!("{OTHER},app=x")),
                            "cookie comma",
                        )
                        .await?;
                        refused_target(
                            addr,
                            me,
                            Request::get("/").cookie(&format!("{OTHER}=app")),
                            "cookie equals",
                        )
                        .await?;
                        refused_target(
                            addr,
                            me,
                            Request::get(format!("/?fly_instance_id={OTHER};app=x")),
                            "query semicolon",
                        )
                        .await
                    })
                })
                .await
            }
        ),
        scenario!(
            "malformed-ids-refused",
            Direct,
            "quoted, upper-case, short, long and empty IDs are refused and the user re-pinned",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        for bad in [
                            format!("\"{OTHER}\""),
                            OTHER.to_uppercase(),
                            OTHER[..13].to_owned(),
                            format!("{OTHER}0"),
                            String::new(),
                        ] {
                            refused_target(
                                addr,
                                me,
                                Request::get("/").cookie(&bad),
                                &format!("cookie {bad:?}"),
                            )
                            .await?;
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "oversized-cookie-refused",
            Direct,
            "a 6 KB cookie value is refused without error",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        refused_target(
                            addr,
                            me,
                            Request::get("/").cookie(&"9".repeat(6000)),
                            "6 KB cookie",
                        )
                        .await
                    })
                })
                .await
            }
        ),
        scenario!(
            "duplicate-cookies-prefer-this-machine",
            Direct,
            "duplicate cookie names (cookie tossing): a value naming this Machine wins",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let res = send(
                            addr,
                            &Request::get("/").header(
                                "cookie",
                                format!("fly-machine-id={OTHER}; fly-machine-id={me}"),
                            ),
                        )
                        .await?;
                        ensure!(
                            res.status == 200 && res.one("set-cookie").is_none(),
                            "{}",
                            res.summary()
                        );
                        let res = send(
                            addr,
                            &Request::get("/").header(
                                "cookie",
                                format!("fly-machine-id=junk; fly-machine-id={OTHER}"),
                            ),
                        )
                        .await?;
                        expect_replay(
                            &res,
                            &format!("prefer_instance={OTHER}"),
                            "first valid value",
                        )
                    })
                })
                .await
            }
        ),
        scenario!(
            "several-cookie-fields",
            Direct,
            "the cookie is found in any of several Cookie header fields",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let res = send(
                            addr,
                            &Request::get("/")
                                .header("cookie", "a=1; b=2")
                                .header("cookie", format!("fly-machine-id={me}")),
                        )
                        .await?;
                        ensure!(
                            res.status == 200 && res.one("set-cookie").is_none(),
                            "{}",
                            res.summary()
                        );
                        let res = send(
                            addr,
                            &Request::get("/")
                                .header("cookie", "a=1")
                                .header("cookie", format!("fly-machine-id={OTHER}")),
                        )
                        .await?;
                        expect_replay(
                            &res,
                            &format!("prefer_instance={OTHER}"),
                            "second Cookie field",
                        )
                    })
                })
                .await
            }
        ),
        scenario!(
            "lookalike-cookies-ignored",
            Direct,
            "other cookies whose names or values contain our name are not our cookie",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let req = Request::get("/").header(
                            "cookie",
                            format!("xfly-machine-id={OTHER}; note=fly-machine-id={OTHER}"),
                        );
                        let res = send(addr, &req).await?;
                        expect_served_pinned(&res, me, "lookalikes")
                    })
                })
                .await
            }
        ),
        scenario!(
            "garbage-cookie-header",
            Direct,
            "a malformed Cookie header (`;;=;==`, bare names) is served and pinned, never an error",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        for junk in [
                            ";;;=;==;",
                            "fly-machine-id",
                            "=fly-machine-id=1",
                            "fly-machine-id=;fly-machine-id=",
                        ] {
                            refused_target(
                                addr,
                                me,
                                Request::get("/").header("cookie", junk),
                                &format!("{junk:?}"),
                            )
                            .await?;
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "non-utf8-cookie",
            Direct,
            "non-UTF-8 bytes in the Cookie header never cause a replay or a server error",
            |ctx| {
                with_single(ctx, |_, addr, _| {
                    Box::pin(async move {
                        let mut value = b"fly-machine-id=".to_vec();
                        value.extend_from_slice(&[0xff, 0xfe, b'a', 0x80]);
                        let res = send(addr, &Request::get("/").header("cookie", value)).await?;
                        ensure!(
                            res.status == 200 && res.one("fly-replay").is_none(),
                            "{}",
                            res.summary()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "spoofed-fly-headers-harmless",
            Direct,
            "client-sent Fly headers can only make a request be served here",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let req = Request::get("/")
                            .cookie(me)
                            .header("fly-replay-src", "instance=00000000000000;state=x")
                            .header("fly-force-instance-id", OTHER)
                            .header("fly-replay-cache-status", "hit");
                        let res = send(addr, &req).await?;
                        ensure!(
                            res.status == 200
                                && res.one("fly-replay").is_none()
                                && res.one("set-cookie").is_none(),
                            "{}",
                            res.summary()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        // Through flysim, 3 Machines.
        scenario!(
            "cluster-first-visit-pins",
            Cluster,
            "a first visit through the proxy is pinned to the Machine that served it",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        for _ in 0..3 {
                            let mut client = Client::default();
                            let res = client.send(c.front(), Request::get("/")).await?;
                            ensure!(res.status == 200, "{}", res.summary());
                            ensure!(
                                res.pinned_to() == res.machine() && res.machine().is_some(),
                                "pinned to the serving Machine: {}",
                                res.summary()
                            );
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cluster-client-stays-home",
            Cluster,
            "a cookie-holding client is served by one Machine across 30 requests, via replays",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let mut client = Client::default();
                        let home = client
                            .send(c.front(), Request::get("/"))
                            .await?
                            .machine()
                            .ok_or("no machine")?;
                        for i in 0..30 {
                            let res = client.send(c.front(), Request::get("/")).await?;
                            ensure!(
                                res.machine().as_deref() == Some(&home as &str),
                                "request {i} left home {home}: {}",
                                res.summary()
                            );
                            ensure!(
                                res.one("set-cookie").is_none(),
                                "request {i} re-pinned: {}",
                                res.summary()
                            );
                        }
                        let replays: u64 = c.sim.machines().iter().map(|m| m.replays_sent).sum();
                        ensure!(
                            replays > 0,
                            "round-robin over 3 Machines must have caused replays"
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cluster-websocket-reconnect-home",
            Cluster,
            "WebSocket reconnects with fly_instance_id (no cookie) land on the page's Machine",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let mut client = Client::default();
                        let home = client
                            .send(c.front(), Request::get("/"))
                            .await?
                            .machine()
                            .ok_or("no machine")?;
                        for i in 0..6 {
                            let echo = websocket_echo(
                                c.front(),
                                &format!("/ws?fly_instance_id={home}"),
                                None,
                                &format!("m{i}"),
                            )
                            .await?;
                            match echo {
                                Ok(text) => ensure!(
                                    text == format!("{home}:m{i}"),
                                    "reconnect {i} landed elsewhere: {text:?}"
                                ),
                                Err(res) => {
                                    return Err(format!(
                                        "reconnect {i} refused: {}",
                                        res.summary()
                                    ));
                                }
                            }
                        }
                        let echo =
                            websocket_echo(c.front(), "/ws", client.cookie.as_deref(), "c").await?;
                        ensure!(
                            echo.as_deref().ok() == Some(&format!("{home}:c") as &str),
                            "cookie-pinned socket: {echo:?}"
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cluster-upload-over-1mb-served",
            Cluster,
            "uploads over 1 MB through the proxy are served, not failed",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let mut client = Client::default();
                        client.send(c.front(), Request::get("/")).await?;
                        for i in 0..4 {
                            let res = client
                                .send(
                                    c.front(),
                                    Request::new("POST", "/upload").body(vec![b'u'; 1_500_000]),
                                )
                                .await?;
                            ensure!(
                                res.status == 200 && res.text().ends_with("bytes=1500000"),
                                "upload {i}: {}",
                                res.summary()
                            );
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cluster-destroyed-machine-repins",
            Cluster,
            "clients of a destroyed Machine are re-pinned on their next request, with no error",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let mut client = Client::default();
                        let home = client
                            .send(c.front(), Request::get("/"))
                            .await?
                            .machine()
                            .ok_or("no machine")?;
                        c.sim
                            .destroy_machine(&home)
                            .await
                            .map_err(|e| format!("destroy: {e}"))?;
                        let res = client.send(c.front(), Request::get("/")).await?;
                        ensure!(
                            res.status == 200,
                            "next request after destroy failed: {}",
                            res.summary()
                        );
                        let new_home = res.machine().ok_or("no machine")?;
                        ensure!(new_home != home, "served by the destroyed Machine");
                        ensure!(
                            res.pinned_to().as_deref() == Some(&new_home as &str),
                            "not re-pinned: {}",
                            res.summary()
                        );
                        for i in 0..10 {
                            let res = client.send(c.front(), Request::get("/")).await?;
                            ensure!(
                                res.machine().as_deref() == Some(&new_home as &str),
                                "request {i} left the new home: {}",
                                res.summary()
                            );
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cluster-stopped-machine-keeps-clients",
            Cluster,
            "a stopped Machine is started again by its clients' next request and keeps them",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let mut client = Client::default();
                        let home = client
                            .send(c.front(), Request::get("/"))
                            .await?
                            .machine()
                            .ok_or("no machine")?;
                        c.sim
                            .stop_machine(&home)
                            .await
                            .map_err(|e| format!("stop: {e}"))?;
                        for i in 0..5 {
                            let res = client.send(c.front(), Request::get("/")).await?;
                            ensure!(
                                res.status == 200
                                    && res.machine().as_deref() == Some(&home as &str),
                                "request {i}: {}",
                                res.summary()
                            );
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cluster-drain-moves-clients",
            Cluster,
            "draining a Machine moves its clients to another Machine, re-pinned, with no error",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let mut client = Client::default();
                        let home = client
                            .send(c.front(), Request::get("/"))
                            .await?
                            .machine()
                            .ok_or("no machine")?;
                        c.drain(&home)?;
                        let mut moved = None;
                        for _ in 0..50 {
                            let res = client.send(c.front(), Request::get("/")).await?;
                            ensure!(
                                res.status == 200,
                                "request while draining failed: {}",
                                res.summary()
                            );
                            if res.machine().as_deref() != Some(&home as &str) {
                                moved = Some(res);
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let res = moved.ok_or("the client never left the draining Machine")?;
                        let new_home = res.machine().ok_or("no machine")?;
                        ensure!(
                            res.pinned_to().as_deref() == Some(&new_home as &str),
                            "not re-pinned: {}",
                            res.summary()
                        );
                        for i in 0..10 {
                            let res = client.send(c.front(), Request::get("/")).await?;
                            ensure!(
                                res.machine().as_deref() == Some(&new_home as &str),
                                "request {i} went back: {}",
                                res.summary()
                            );
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cluster-key-pins-tenant",
            Cluster,
            "requests with x-tenant-id are served by the Machine the tenant hashes to, whatever cookie they carry",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let ids = c.sim.machine_ids();
                        let tenants: Vec<String> = (0..12).map(|t| format!("tenant-{t}")).collect();
                        tenants_settle(c, &ids, &tenants).await?;
                        let set = PeerSet::new(ids.iter().cloned().map(Peer::new));
                        let mut owners = std::collections::HashSet::new();
                        for (i, tenant) in tenants.iter().enumerate() {
                            let owner = set
                                .pick(tenant.as_bytes(), None)
                                .map(|p| p.id().to_owned())
                                .unwrap_or_default();
                            owners.insert(owner.clone());
                            // A cookie naming another Machine does not move a tenant.
                            let req = Request::get("/api/tenant")
                                .header(TENANT_HEADER, tenant)
                                .cookie(&ids[i % ids.len()]);
                            let res = send(c.front(), &req).await?;
                            ensure!(
                                res.status == 200
                                    && res.machine().as_deref() == Some(owner.as_str()),
                                "{tenant}: {}",
                                res.summary()
                            );
                            ensure!(
                                res.pinned_to().is_none(),
                                "a key-pinned answer sets no cookie: {}",
                                res.summary()
                            );
                        }
                        ensure!(owners.len() >= 2, "12 tenants all hashed to one Machine");
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cluster-key-machine-leaves-and-joins",
            Cluster,
            "when a Machine leaves or joins, only the tenants it held or wins move, with no error",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let ids = c.sim.machine_ids();
                        let tenants: Vec<String> = (0..24).map(|t| format!("t{t}")).collect();
                        tenants_settle(c, &ids, &tenants).await?;
                        c.sim
                            .destroy_machine(&ids[0])
                            .await
                            .map_err(|e| format!("destroy: {e}"))?;
                        let live: Vec<String> = ids[1..].to_vec();
                        tenants_settle(c, &live, &tenants).await?;
                        let added = c.sim.add_machine().await.map_err(|e| format!("add: {e}"))?;
                        let mut grown = live.clone();
                        grown.push(added.clone());
                        tenants_settle(c, &grown, &tenants).await?;
                        // Rendezvous hashing: only the newcomer's tenants moved.
                        let before = PeerSet::new(live.iter().cloned().map(Peer::new));
                        let after = PeerSet::new(grown.iter().cloned().map(Peer::new));
                        for t in &tenants {
                            let (b, a) = (
                                before.pick(t.as_bytes(), None).map(Peer::id),
                                after.pick(t.as_bytes(), None).map(Peer::id),
                            );
                            ensure!(
                                a == b || a == Some(added.as_str()),
                                "{t} moved from {b:?} to {a:?}"
                            );
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "cluster-spoofed-replay-src",
            Cluster,
            "a client spoofing fly-replay-src is served wherever it lands and re-pinned there",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        for _ in 0..3 {
                            let req = Request::get("/")
                                .cookie(OTHER)
                                .header("fly-replay-src", "instance=x");
                            let res = send(c.front(), &req).await?;
                            ensure!(
                                res.status == 200 && res.pinned_to() == res.machine(),
                                "{}",
                                res.summary()
                            );
                        }
                        Ok(())
                    })
                })
                .await
            }
        ),
    ]
}
