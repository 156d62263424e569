//! The admin interface: a small HTTP/1.1 API on its own loopback port, and
//! the dashboard page over it. Its endpoints are listed in the crate docs
//! ("The admin interface").

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::body::{self, ProxyBody};
use crate::faults::{FaultKind, parse_ms};
use crate::sim::Shared;
use crate::{MachineInfo, MachineState, Signal, Strategy};

/// The dashboard served at `GET /`: plain HTML, CSS and JavaScript that
/// polls the JSON endpoints of this module.
const DASHBOARD: &str = include_str!("dashboard.html");

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, front: SocketAddr) {
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
                async move { Ok::<_, Infallible>(handle(&shared, front, req).await) }
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
    let status = match e.kind() {
        io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        io::ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        _ => StatusCode::CONFLICT,
    };
    error(status, e.to_string())
}

/// The value of `name` in a query string, if given.
fn param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// `POST /machines/<id>/fault?kind=..&ms=..&for_ms=..`.
fn fault(shared: &Arc<Shared>, id: &str, query: Option<&str>) -> Response<ProxyBody> {
    let Some(kind) = param(query, "kind") else {
        return error(
            StatusCode::BAD_REQUEST,
            "a fault needs kind=reset, kind=delay (with ms=) or kind=blackhole".to_owned(),
        );
    };
    let kind = match FaultKind::parse(kind, param(query, "ms")) {
        Ok(kind) => kind,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let lasting = match param(query, "for_ms").map(|v| parse_ms("for_ms", v)) {
        Some(Ok(d)) => d,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "a fault needs for_ms=<how long it lasts, in milliseconds>".to_owned(),
            );
        }
    };
    match shared.set_fault(id, kind, lasting) {
        Ok(()) => machine_json(shared, id),
        Err(e) => io_error(&e),
    }
}

fn machine_json(shared: &Shared, id: &str) -> Response<ProxyBody> {
    match shared.fleet.machines().into_iter().find(|m| m.id == id) {
        Some(m) => json_response(StatusCode::OK, &json!(m)),
        None => error(StatusCode::NOT_FOUND, format!("no Machine {id:?}")),
    }
}

/// Why `action` cannot be done to `m` now, if it cannot (the admin API
/// refuses it rather than doing nothing quietly).
fn refusal(m: &MachineInfo, action: &str) -> Option<String> {
    let id = &m.id;
    match (action, m.state) {
        ("stop" | "drain", MachineState::Stopped) => {
            Some(format!("Machine {id} is not running (it is stopped)"))
        }
        ("start", MachineState::Started) => Some(format!("Machine {id} is already started")),
        ("suspend", MachineState::Stopped | MachineState::Suspended) => {
            Some(format!("Machine {id} is not started (it is {})", m.state))
        }
        ("drain", MachineState::Suspended) => {
            Some(format!("Machine {id} is not running (it is suspended)"))
        }
        ("drain", MachineState::Started) if m.draining => {
            Some(format!("Machine {id} is already draining"))
        }
        (_, MachineState::Destroyed) => Some(format!("Machine {id} is destroyed")),
        _ => None,
    }
}

/// `last=N` from a query string.
fn last_n(query: Option<&str>) -> Result<Option<usize>, String> {
    let Some(value) = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("last="))
    else {
        return Ok(None);
    };
    value
        .parse()
        .map(Some)
        .map_err(|_| format!("last={value:?} is not a number"))
}

async fn handle(
    shared: &Arc<Shared>,
    front: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, []) => {
            let mut resp = respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                DASHBOARD.to_owned(),
            );
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            resp
        }
        (&Method::GET, ["machines"]) => {
            json_response(StatusCode::OK, &json!(shared.fleet.machines()))
        }
        (&Method::POST, ["machines"]) => match shared.fleet.add_machine().await {
            Ok(id) => json_response(StatusCode::OK, &json!({ "id": id })),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (&Method::GET, ["machines", id]) => machine_json(shared, id),
        (&Method::POST, ["machines", id, "fault"]) => fault(shared, id, req.uri().query()),
        (&Method::DELETE, ["machines", id, "fault"]) => match shared.clear_fault(id) {
            Ok(cleared) => json_response(StatusCode::OK, &json!({ "cleared": cleared })),
            Err(e) => io_error(&e),
        },
        (&Method::GET, ["deploy"]) => match shared.operations.status() {
            Some(status) => json_response(StatusCode::OK, &json!(status)),
            None => json_response(StatusCode::OK, &json!({ "state": "none" })),
        },
        (&Method::POST, ["deploy"]) => {
            // Fly's default strategy is rolling.
            let strategy = match param(req.uri().query(), "strategy")
                .unwrap_or("rolling")
                .parse::<Strategy>()
            {
                Ok(s) => s,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            match shared.begin_deploy(strategy) {
                Ok(number) => json_response(
                    StatusCode::ACCEPTED,
                    &json!({ "number": number, "strategy": strategy.as_str(), "state": "running" }),
                ),
                Err(e) => io_error(&e),
            }
        }
        (&Method::POST, ["scale"]) => {
            let count = match param(req.uri().query(), "count").map(str::parse::<usize>) {
                Some(Ok(n)) => n,
                Some(Err(_)) | None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("scale needs count=<Machines, 1 to {}>", crate::MAX_MACHINES),
                    );
                }
            };
            match shared.scale(count).await {
                Ok(outcome) => json_response(StatusCode::OK, &json!(outcome)),
                Err(e) => io_error(&e),
            }
        }
        (&Method::POST, ["machines", id, action]) => {
            if ["stop", "start", "destroy", "drain", "suspend"].contains(action) {
                let Some(m) = shared.fleet.machines().into_iter().find(|m| m.id == *id) else {
                    return error(StatusCode::NOT_FOUND, format!("no Machine {id:?}"));
                };
                if let Some(why) = refusal(&m, action) {
                    return error(StatusCode::CONFLICT, why);
                }
            }
            let result = match *action {
                "stop" => shared.fleet.stop_machine(id).await,
                "start" => shared.fleet.start_machine(id).await,
                "destroy" => shared.fleet.destroy_machine(id).await,
                "drain" => shared.fleet.signal_machine(id, Signal::Term).await,
                "suspend" => shared.fleet.suspend_machine(id).await,
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
                        format!(
                            "unknown action {action:?} (stop, start, destroy, drain, suspend, signal or fault)"
                        ),
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
        (&Method::GET, ["events"]) => match last_n(req.uri().query()) {
            Ok(last) => {
                let mut events = shared.events.snapshot();
                if let Some(n) = last {
                    events.drain(..events.len().saturating_sub(n));
                }
                json_response(StatusCode::OK, &json!(events))
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
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
                    "auto_stop_machines": c.auto_stop.as_str(),
                    "auto_start_machines": c.auto_start,
                    "min_machines_running": c.min_machines_running,
                    "idle_stop_ms": c.idle_stop.as_millis() as u64,
                    "cold_start_ms": c.cold_start.as_millis() as u64,
                    "resume_ms": c.resume_delay().as_millis() as u64,
                    "response_timeout_ms": c.response_timeout.as_millis() as u64,
                    "health_check": c.health_check.as_ref().map(|h| json!({
                        "path": h.path,
                        "interval_ms": h.interval.as_millis() as u64,
                        "timeout_ms": h.timeout.as_millis() as u64,
                        "grace_period_ms": h.grace_period.as_millis() as u64,
                    })),
                    "replay_cache": c.replay_cache.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "front": front.to_string(),
                }),
            )
        }
        (
            _,
            ["machines", ..]
            | ["events"]
            | ["report"]
            | ["replay-cache"]
            | ["config"]
            | ["deploy"]
            | ["scale"],
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {method} {path}"),
        ),
    }
}
