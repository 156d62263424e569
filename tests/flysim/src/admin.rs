//! The admin interface: a small HTTP/1.1 API on its own loopback port.
//!
//! | request | effect |
//! |---|---|
//! | `GET /machines` | JSON list of Machines with their state and counters |
//! | `GET /machines/<id>` | one Machine |
//! | `POST /machines` | add a Machine; answers `{"id": "<new id>"}` |
//! | `POST /machines/<id>/stop` | stop it |
//! | `POST /machines/<id>/start` | start it |
//! | `POST /machines/<id>/destroy` | destroy it |
//! | `POST /machines/<id>/signal?signal=SIGTERM` | send it a signal (default `SIGTERM`); it stays in the rotation |
//! | `GET /events` | JSON list of recorded events |
//! | `GET /report` | the per-Machine table as text (and the replay cache's counters when caching is in play) |
//! | `GET /replay-cache` | the replay cache: `rules`, `stats` (`entries`, `created`, `hits`, `misses`, `bypasses`, `invalidations`, `not_cached`) and the live `entries` |
//! | `GET /config` | the settings read from fly.toml or the command line: `internal_port`, `h2_backend`, `kill_signal`, `kill_timeout_ms`, `replay_cache` rules |

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::Signal;
use crate::body::{self, ProxyBody};
use crate::sim::Shared;

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    respond(status, "application/json", format!("{value}\n"))
}

fn error(status: StatusCode, message: String) -> Response<ProxyBody> {
    json_response(status, &json!({ "error": message }))
}

fn io_error(e: &io::Error) -> Response<ProxyBody> {
    let status = if e.kind() == io::ErrorKind::NotFound {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::CONFLICT
    };
    error(status, e.to_string())
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["machines"]) => {
            json_response(StatusCode::OK, &json!(shared.fleet.machines()))
        }
        (&Method::POST, ["machines"]) => match shared.fleet.add_machine().await {
            Ok(id) => json_response(StatusCode::OK, &json!({ "id": id })),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (&Method::GET, ["machines", id]) => {
            match shared.fleet.machines().into_iter().find(|m| m.id == *id) {
                Some(m) => json_response(StatusCode::OK, &json!(m)),
                None => error(StatusCode::NOT_FOUND, format!("no Machine {id:?}")),
            }
        }
        (&Method::POST, ["machines", id, action]) => {
            let result = match *action {
                "stop" => shared.fleet.stop_machine(id).await,
                "start" => shared.fleet.start_machine(id).await,
                "destroy" => shared.fleet.destroy_machine(id).await,
                "signal" => {
                    let requested = req
                        .uri()
                        .query()
                        .unwrap_or_default()
                        .split('&')
                        .find_map(|pair| pair.strip_prefix("signal="))
                        .unwrap_or("SIGTERM");
                    match requested.parse::<Signal>() {
                        Ok(signal) => shared.fleet.signal_machine(id, signal).await,
                        Err(e) => return error(StatusCode::BAD_REQUEST, e),
                    }
                }
                _ => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("unknown action {action:?} (stop, start, destroy or signal)"),
                    );
                }
            };
            match result {
                Ok(()) => match shared.fleet.machines().into_iter().find(|m| m.id == *id) {
                    Some(m) => json_response(StatusCode::OK, &json!(m)),
                    None => error(StatusCode::NOT_FOUND, format!("no Machine {id:?}")),
                },
                Err(e) => io_error(&e),
            }
        }
        (&Method::GET, ["events"]) => {
            json_response(StatusCode::OK, &json!(shared.events.snapshot()))
        }
        (&Method::GET, ["report"]) => {
            respond(StatusCode::OK, "text/plain; charset=utf-8", shared.report())
        }
        (&Method::GET, ["replay-cache"]) => {
            let now = shared.cache_now();
            let mut store = shared.cache();
            let rules: Vec<String> = store.rules().iter().map(ToString::to_string).collect();
            let entries = store.list(now);
            let stats = store.stats(now);
            json_response(
                StatusCode::OK,
                &json!({ "rules": rules, "stats": stats, "entries": entries }),
            )
        }
        (&Method::GET, ["config"]) => {
            let c = &shared.config;
            json_response(
                StatusCode::OK,
                &json!({
                    "app": c.app_name,
                    "region": c.region,
                    "internal_port": c.internal_port,
                    "h2_backend": c.h2_backend,
                    "kill_signal": c.kill_signal.map(|s| s.as_str()),
                    "kill_timeout_ms": c.kill_timeout.as_millis() as u64,
                    "replay_cache": c.replay_cache.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }),
            )
        }
        (_, ["machines", ..] | ["events"] | ["report"] | ["replay-cache"] | ["config"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {method} {path}"),
        ),
    }
}
