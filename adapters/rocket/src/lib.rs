//! Session affinity for [Rocket](https://rocket.rs) 0.5 apps on
//! [Fly.io](https://fly.io) with several Machines.
//!
//! [`StickyFairing`] is a Rocket [fairing](rocket::fairing::Fairing). For every request it
//! asks the [`sticky_core`] engine what to do and then:
//!
//! - runs your handler untouched (`Stick`);
//! - runs your handler, then appends `Set-Cookie` (and `Cache-Control:
//!   private` when your response has no `Cache-Control`) to its response
//!   (`SetCookie`);
//! - or answers with the engine's short-circuit (a `307` carrying
//!   `fly-replay: prefer_instance=<id>` by default, empty body) **without
//!   running your handler**, so Fly's proxy replays the request to the Machine
//!   the user is pinned to (`Replay`, `Refuse`).
//!
//! All decisions are taken by `sticky-core`; this crate only translates.
//!
//! # Quickstart
//!
//! Build the engine once, then attach the fairing. `sticky_core` is
//! re-exported, so this crate is the only dependency you need besides Rocket.
//!
//! ```
//! use rocket::local::blocking::Client;
//! use rocket::{get, routes};
//! use sticky_rocket::sticky_core::{self, Env};
//!
//! #[get("/")]
//! fn index() -> &'static str {
//!     "hello"
//! }
//!
//! // On a real Machine: `Env::from_process()` (reads FLY_MACHINE_ID & co).
//! let engine = sticky_core::Sticky::builder()
//!     .exclude(["/health"])
//!     .build(Env::machine("148ed599c14189"))?;
//!
//! let rocket = rocket::build()
//!     .mount("/", routes![index])
//!     .attach(sticky_rocket::StickyFairing::new(engine));
//!
//! let client = Client::tracked(rocket).expect("valid rocket");
//!
//! // A first visit is served here and pinned to this Machine.
//! let res = client.get("/").dispatch();
//! assert_eq!(res.status().code, 200);
//! let cookie = res.headers().get_one("Set-Cookie").unwrap();
//! assert!(cookie.starts_with("fly-machine-id=148ed599c14189;"));
//!
//! // A user pinned to another Machine is replayed there; `index` never runs.
//! let res = client
//!     .get("/")
//!     .header(rocket::http::Header::new("Cookie", "fly-machine-id=90801679a10038"))
//!     .dispatch();
//! assert_eq!(res.status().code, 307);
//! assert_eq!(
//!     res.headers().get_one("fly-replay"),
//!     Some("prefer_instance=90801679a10038"),
//! );
//! # Ok::<(), sticky_core::ConfigError>(())
//! ```
//!
//! # How it works, and what you can observe
//!
//! A Rocket fairing cannot answer a request early, and changing the response
//! in `on_response` would come too late (the handler, and its writes, would
//! already have run). So:
//!
//! 1. `on_ignite` mounts one internal route per HTTP method at
//!    [`SHORT_CIRCUIT_PATH`] (`/__sticky/short-circuit`), with the lowest
//!    possible rank so that it is always tried first for that path.
//! 2. `on_request` decides, stores the decision in the request-local cache
//!    (a private type, invisible to your code) and, for a short-circuit,
//!    rewrites the request URI to that internal route. The **method is kept**,
//!    so Rocket still strips the body of a `HEAD` response.
//! 3. The internal route answers the stored short-circuit. A request that
//!    reaches that path on its own (nothing stored for it) is forwarded, so it
//!    gets Rocket's `404` unless your app routes that path itself.
//! 4. `on_response` appends the engine's headers for a `SetCookie` decision
//!    with [`Response::adjoin_header`](rocket::Response::adjoin_header): your
//!    own `Set-Cookie` headers are kept and your `Cache-Control` wins.
//!
//! Consequences worth knowing:
//!
//! - **Attach it after your other request fairings.** Request fairings run in
//!   attach order: one attached later would see the URI
//!   `/__sticky/short-circuit` instead of the original, and one that rewrites
//!   URIs could move the request away from the internal route. Rocket's logs
//!   show the rewritten URI for short-circuited requests.
//! - The fairing is a singleton: attaching it twice keeps only the last one.
//! - WebSocket upgrades (e.g. with `rocket_ws`) that must move get the ordinary
//!   replay status, never `101`: the upgrade handler never runs.
//! - Rocket applies the `_method` override of HTML forms (a `POST` form with a
//!   `_method=put` field becomes a `PUT`) **before** any fairing runs, so the
//!   engine sees the overridden method.
//! - Rocket **drops header values that are not valid UTF-8** before fairings
//!   run. A `Cookie` header with such bytes is therefore invisible to the
//!   engine: the request counts as carrying no cookie, is served here and
//!   pinned here.
//! - Rocket's own data limits still apply to handlers; the engine never reads
//!   a body (it only looks at `Content-Length` and `Transfer-Encoding`).
//! - The [adapter contract](sticky_core#the-adapter-contract) holds here as
//!   everywhere: the internal route reads the body a replay names before
//!   answering, and while draining every answer closes its connection.
//!
//! # Draining on shutdown
//!
//! When Fly stops a Machine it sends a signal first. Call
//! [`sticky_core::Sticky::drain`] then: pinned-here and new requests are
//! replayed with `fly-replay: elsewhere=true` (and re-pinned by the Machine
//! that receives them), while requests that cannot move are still served.
//! Keep serving for a grace period, then shut Rocket down gracefully with
//! [`Shutdown::notify`](rocket::Shutdown::notify).
//!
//! Rocket shuts down at once on `SIGTERM` by default, so take that signal away
//! from it (`shutdown.signals`) and handle it yourself:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use rocket::config::Shutdown as ShutdownConfig;
//! use rocket::fairing::AdHoc;
//! use rocket::tokio::{self, signal::unix::{signal, SignalKind}};
//! use sticky_rocket::sticky_core::{self, Env};
//!
//! #[rocket::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let engine = sticky_core::Sticky::builder().build(Env::from_process())?;
//!     let grace = Duration::from_secs(5);
//!
//!     let config = rocket::Config {
//!         // Ctrl-C (SIGINT) still stops at once; SIGTERM is ours.
//!         shutdown: ShutdownConfig {
//!             ctrlc: true,
//!             signals: Default::default(),
//!             ..Default::default()
//!         },
//!         ..rocket::Config::default()
//!     };
//!
//!     let drain = engine.clone();
//!     let _ = rocket::custom(config)
//!         .attach(sticky_rocket::StickyFairing::new(engine))
//!         .attach(AdHoc::on_liftoff("drain on SIGTERM", move |rocket| {
//!             let shutdown = rocket.shutdown();
//!             Box::pin(async move {
//!                 let Ok(mut term) = signal(SignalKind::terminate()) else { return };
//!                 tokio::spawn(async move {
//!                     term.recv().await;
//!                     drain.drain(); // from now on, requests move elsewhere
//!                     tokio::time::sleep(grace).await;
//!                     shutdown.notify(); // graceful: Rocket's grace + mercy apply
//!                 });
//!             })
//!         }))
//!         .launch()
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! What draining does, and the `fly.toml` settings it needs, are in
//! [`sticky_core`'s docs](sticky_core#draining-on-shutdown).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::ops::ControlFlow;

use rocket::fairing::{self, Fairing, Info, Kind};
use rocket::http::uri::Origin;
use rocket::http::{Header, Method, Status};
use rocket::route::{Handler, Outcome};
use rocket::{Build, Data, Request, Response, Rocket, Route};
use sticky_core::{Action, Answer, HeaderNames, RequestView};

pub use sticky_core;

/// The base path under which the fairing mounts its internal route.
pub const BASE: &str = "/__sticky";

/// The path of the internal route that answers short-circuits
/// (`/__sticky/short-circuit`).
///
/// Requests that must not run your handler are rewritten to this path. A
/// request sent to it directly is forwarded (Rocket answers `404` unless your
/// app has a route for it): it never produces a replay on its own.
pub const SHORT_CIRCUIT_PATH: &str = "/__sticky/short-circuit";

/// The rank of the internal route: the lowest possible, so it is always tried
/// before any of the app's routes for [`SHORT_CIRCUIT_PATH`].
const RANK: isize = isize::MIN;

/// Every method Rocket knows; the internal route is mounted for each so that
/// a rewritten request keeps its method (`HEAD` responses stay body-less).
const METHODS: [Method; 9] = [
    Method::Get,
    Method::Put,
    Method::Post,
    Method::Delete,
    Method::Options,
    Method::Head,
    Method::Trace,
    Method::Connect,
    Method::Patch,
];

/// The sticky-session fairing: attach it with
/// `rocket.attach(sticky_rocket::StickyFairing::new(engine))`.
///
/// See the [crate docs](crate) for what it does and a complete example.
#[derive(Clone, Debug)]
pub struct StickyFairing {
    sticky: sticky_core::Sticky,
}

impl StickyFairing {
    /// Wraps an engine built with [`sticky_core::Sticky::builder`].
    ///
    /// Keep a clone of `sticky` to call [`drain`](sticky_core::Sticky::drain)
    /// on shutdown: clones share the drain switch.
    pub fn new(sticky: sticky_core::Sticky) -> Self {
        Self { sticky }
    }

    /// The engine this fairing decides with.
    pub fn sticky(&self) -> &sticky_core::Sticky {
        &self.sticky
    }
}

impl From<sticky_core::Sticky> for StickyFairing {
    fn from(sticky: sticky_core::Sticky) -> Self {
        Self::new(sticky)
    }
}

/// What to do with one request, kept in Rocket's request-local cache.
/// Private: nothing outside this crate can store or read it.
struct Stash(Option<Action>);

impl Stash {
    fn get<'r>(req: &'r Request<'_>) -> Option<&'r Action> {
        req.local_cache(|| Stash(None)).0.as_ref()
    }
}

/// A borrowed view of a Rocket request for the engine: no header copies.
struct View<'v, 'r>(&'v Request<'r>);

impl RequestView for View<'_, '_> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }

    fn path(&self) -> &str {
        self.0.uri().path().as_str()
    }

    fn query(&self) -> Option<&str> {
        self.0.uri().query().map(|q| q.as_str())
    }

    fn header_values<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>) {
        // Rocket's header map is keyed case-insensitively and keeps every
        // value of a repeated header in order.
        for value in self.0.headers().get(name) {
            if each(value.as_bytes()).is_break() {
                break;
            }
        }
    }

    fn header_values_of<'a>(
        &'a self,
        names: &HeaderNames,
        each: &mut dyn FnMut(usize, &'a [u8]) -> ControlFlow<()>,
    ) {
        // One pass over the fields, no hashing: Rocket's `get` hashes each
        // name case-insensitively. Its iterator lends every value borrowed
        // from the map; a value it ever lent owned (it does not) would be
        // read with `get`, for a name none of whose values came yet.
        let headers = self.0.headers();
        // Bit i: a value of names[i] came (`started`), or all of them were
        // read with `get` (`fetched`, so later fields of it are passed over).
        let (mut started, mut fetched) = (0u64, 0u64);
        for header in headers.iter() {
            let Some(i) = names.position(header.name().as_str()) else {
                continue;
            };
            let bit = u32::try_from(i)
                .ok()
                .and_then(|i| 1u64.checked_shl(i))
                .unwrap_or(0);
            if fetched & bit != 0 {
                continue;
            }
            match header.value {
                std::borrow::Cow::Borrowed(value) => {
                    started |= bit;
                    if each(i, value.as_bytes()).is_break() {
                        return;
                    }
                }
                std::borrow::Cow::Owned(_) if started & bit == 0 && bit != 0 => {
                    fetched |= bit;
                    for value in headers.get(header.name().as_str()) {
                        if each(i, value.as_bytes()).is_break() {
                            return;
                        }
                    }
                }
                std::borrow::Cow::Owned(_) => {}
            }
        }
    }
}

#[rocket::async_trait]
impl Fairing for StickyFairing {
    fn info(&self) -> Info {
        Info {
            name: "sticky (Fly.io session affinity)",
            kind: Kind::Ignite | Kind::Request | Kind::Response | Kind::Singleton,
        }
    }

    async fn on_ignite(&self, rocket: Rocket<Build>) -> fairing::Result {
        let routes: Vec<Route> = METHODS
            .into_iter()
            .map(|method| Route::ranked(RANK, method, "/short-circuit", ShortCircuitRoute))
            .collect();
        Ok(rocket.mount(BASE, routes))
    }

    async fn on_request(&self, req: &mut Request<'_>, _data: &mut Data<'_>) {
        let action = self.sticky.decide(&View(req)).into_action();
        // The first value stored wins; act on what is stored.
        let answers = matches!(
            req.local_cache(|| Stash(Some(action))).0,
            Some(Action::Answer(_))
        );
        if answers {
            req.set_uri(Origin::path_only(SHORT_CIRCUIT_PATH));
        }
    }

    async fn on_response<'r>(&self, req: &'r Request<'_>, res: &mut Response<'r>) {
        let Some(Action::Run(finish)) = Stash::get(req) else {
            return;
        };
        let has_cache_control = res.headers().contains("Cache-Control");
        for (name, value) in finish.headers(res.status().code, has_cache_control) {
            add_header(res, name, value);
        }
    }
}

/// The handler of the internal route: answers the stashed short-circuit, or
/// forwards when there is none (the path was requested directly).
#[derive(Clone, Copy)]
struct ShortCircuitRoute;

#[rocket::async_trait]
impl Handler for ShortCircuitRoute {
    async fn handle<'r>(&self, req: &'r Request<'_>, data: Data<'r>) -> Outcome<'r> {
        let Some(Action::Answer(answer)) = Stash::get(req) else {
            return Outcome::forward(data, Status::NotFound);
        };
        if answer.body_to_read() > 0 {
            let _ = data
                .open(rocket::data::ByteUnit::from(answer.body_to_read()))
                .stream_to(rocket::tokio::io::sink())
                .await;
        }
        Outcome::Success(respond(answer))
    }
}

/// The short-circuit as a Rocket response: status, headers, empty body.
fn respond<'r>(answer: &Answer) -> Response<'r> {
    let mut res = Response::new();
    res.set_status(Status::new(answer.status()));
    for (name, value) in answer.headers() {
        add_header(&mut res, name, value);
    }
    res
}

/// Adds a header the core yields: `connection` replaces, others are
/// adjoined (the app's own `Set-Cookie` headers are kept).
fn add_header(res: &mut Response<'_>, name: &'static str, value: &[u8]) {
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    if name == "connection" {
        res.set_raw_header(name, value.to_owned());
    } else {
        res.adjoin_header(Header::new(name, value.to_owned()));
    }
}
