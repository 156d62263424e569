//! Reading what flysim simulates from a user's real `fly.toml`.
//!
//! Read: `[[http_service.http_options.replay_cache]]` and
//! `[[services.ports.http_options.replay_cache]]` (every field checked, an
//! unknown one refused), the top-level `kill_signal` and `kill_timeout`, and
//! `internal_port` (of `[http_service]`, else of the first `[[services]]`),
//! and `h2_backend` (`[http_service.http_options]`, or any
//! `[[services.ports]]`' `http_options`), and `[http_service]`'s
//! `auto_stop_machines`, `auto_start_machines`, `min_machines_running` and
//! first `[[http_service.checks]]` (`path`, `interval`, `timeout`,
//! `grace_period`), and `[env]` (see [`FlyToml::env`]).
//! Every other key a fly.toml may have (`app`, `primary_region`, `[build]`,
//! `[[vm]]`, `[checks]`, `[metrics]`, the rest of `[http_service]`,
//! ...) is tolerated and ignored. Errors name the file, the line and the field.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::cache::{ReplayCacheRule, RuleError};
use crate::{AutoStop, HealthCheck, Signal};

/// What flysim takes from a fly.toml; apply it with
/// [`Config::fly_toml`](crate::Config::fly_toml).
///
/// ```
/// let file = flysim::FlyToml::parse(
///     r#"
/// app = "my-app"
/// kill_signal = "SIGTERM"
/// kill_timeout = "30s"
///
/// [http_service]
///   internal_port = 8080
///
/// [[http_service.http_options.replay_cache]]
///   path_prefix = "/"
///   ttl_seconds = 300
///   type = "cookie"
///   name = "fly-machine-id"
/// "#,
///     "fly.toml",
/// )
/// .unwrap();
/// assert_eq!(file.replay_cache.len(), 1);
/// assert_eq!(file.internal_port, Some(8080));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlyToml {
    /// The replay cache rules, `[http_service]`'s first, in file order.
    pub replay_cache: Vec<ReplayCacheRule>,
    /// `kill_signal`, if given.
    pub kill_signal: Option<Signal>,
    /// `kill_timeout` (seconds, or a duration such as `"30s"`), if given.
    pub kill_timeout: Option<Duration>,
    /// `internal_port`, if given.
    pub internal_port: Option<u16>,
    /// `http_options.h2_backend = true`: speak h2c to the Machines.
    pub h2_backend: bool,
    /// `[http_service]`'s `auto_stop_machines`, if given.
    pub auto_stop: Option<AutoStop>,
    /// `[http_service]`'s `auto_start_machines`, if given.
    pub auto_start: Option<bool>,
    /// `[http_service]`'s `min_machines_running`, if given.
    pub min_machines_running: Option<usize>,
    /// The first `[[http_service.checks]]`, if any (its `path`, default
    /// `/health`; `interval`, `timeout` and `grace_period`, defaults
    /// [`HealthCheck::default`]'s).
    pub health_check: Option<HealthCheck>,
    /// `[env]`, in key order: each Machine a command starts gets these
    /// variables (see [`Launch::fly_toml_env`](crate::Launch::fly_toml_env)
    /// and named assumption 37).
    pub env: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct RawFile {
    env: Option<toml::Table>,
    kill_signal: Option<Spanned<String>>,
    kill_timeout: Option<Spanned<toml::Value>>,
    http_service: Option<RawService>,
    #[serde(default)]
    services: Vec<RawServices>,
}

#[derive(Deserialize)]
struct RawService {
    internal_port: Option<Spanned<i64>>,
    http_options: Option<RawHttpOptions>,
    auto_stop_machines: Option<Spanned<toml::Value>>,
    auto_start_machines: Option<Spanned<bool>>,
    min_machines_running: Option<Spanned<i64>>,
    #[serde(default)]
    checks: Vec<RawCheck>,
}

#[derive(Deserialize)]
struct RawCheck {
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    grace_period: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawServices {
    internal_port: Option<Spanned<i64>>,
    #[serde(default)]
    ports: Vec<RawPort>,
}

#[derive(Deserialize)]
struct RawPort {
    http_options: Option<RawHttpOptions>,
}

#[derive(Deserialize)]
struct RawHttpOptions {
    #[serde(default)]
    replay_cache: Vec<RawRule>,
    #[serde(default)]
    h2_backend: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    path_prefix: Spanned<String>,
    ttl_seconds: Spanned<i64>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    name: Spanned<String>,
    #[serde(default)]
    allow_bypass: bool,
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

impl FlyToml {
    /// Reads and parses the fly.toml at `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<FlyToml, RuleError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            RuleError::new(None, format!("{}: cannot be read: {e}", path.display()))
        })?;
        FlyToml::parse(&text, &path.display().to_string())
    }

    /// Parses fly.toml text; `file` names it in error messages
    /// (`fly.toml:12: field "ttl_seconds": ...`).
    pub fn parse(text: &str, file: &str) -> Result<FlyToml, RuleError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(":{}", line_of(text, s.start)))
                .unwrap_or_default();
            let message = e.message().trim().replace('`', "\"");
            // serde names the offending field between backticks.
            let field = e.message().split('`').nth(1).map(str::to_owned);
            RuleError::new(field.as_deref(), format!("{file}{at}: {message}"))
        })?;
        let at = |offset: usize| format!("{file}:{}", line_of(text, offset));
        let mut out = FlyToml::default();
        let mut tables: Vec<&RawRule> = Vec::new();
        if let Some(opts) = raw
            .http_service
            .as_ref()
            .and_then(|s| s.http_options.as_ref())
        {
            tables.extend(&opts.replay_cache);
            out.h2_backend |= opts.h2_backend;
        }
        for service in &raw.services {
            for port in &service.ports {
                if let Some(opts) = &port.http_options {
                    tables.extend(&opts.replay_cache);
                    out.h2_backend |= opts.h2_backend;
                }
            }
        }
        for r in tables {
            out.replay_cache.push(rule(r).map_err(|(offset, e)| {
                RuleError::new(e.field(), format!("{}: replay_cache: {e}", at(offset)))
            })?);
        }
        if let Some(sig) = &raw.kill_signal {
            out.kill_signal = Some(sig.get_ref().parse().map_err(|e: String| {
                RuleError::new(
                    Some("kill_signal"),
                    format!("{}: field \"kill_signal\": {e}", at(sig.span().start)),
                )
            })?);
        }
        if let Some(t) = &raw.kill_timeout {
            let d = match t.get_ref() {
                toml::Value::Integer(n) if *n >= 0 => Some(Duration::from_secs(*n as u64)),
                toml::Value::String(s) if s.ends_with(['s', 'm']) => {
                    crate::replay::parse_duration(s)
                }
                _ => None,
            };
            out.kill_timeout = Some(d.ok_or_else(|| {
                RuleError::new(
                    Some("kill_timeout"),
                    format!(
                        "{}: field \"kill_timeout\": expected seconds (5) or a duration (\"5s\", \"2m\")",
                        at(t.span().start)
                    ),
                )
            })?);
        }
        if let Some(service) = &raw.http_service {
            read_service(service, &mut out, &at)?;
        }
        for (key, value) in raw.env.iter().flatten() {
            let value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(RuleError::new(
                        Some("env"),
                        format!(
                            "{file}: [env] {key}: expected a string (an environment variable's value), found {}",
                            other.type_str()
                        ),
                    ));
                }
            };
            out.env.push((key.clone(), value));
        }
        let port = raw
            .http_service
            .as_ref()
            .and_then(|s| s.internal_port.as_ref())
            .or_else(|| raw.services.iter().find_map(|s| s.internal_port.as_ref()));
        if let Some(p) = port {
            out.internal_port = Some(
                u16::try_from(*p.get_ref())
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        RuleError::new(
                            Some("internal_port"),
                            format!(
                                "{}: field \"internal_port\": {} is not a port (1-65535)",
                                at(p.span().start),
                                p.get_ref()
                            ),
                        )
                    })?,
            );
        }
        Ok(out)
    }
}

/// `[http_service]`'s autostop settings and first check.
fn read_service(
    service: &RawService,
    out: &mut FlyToml,
    at: &dyn Fn(usize) -> String,
) -> Result<(), RuleError> {
    let bad = |field: &'static str, offset: usize, why: String| {
        RuleError::new(
            Some(field),
            format!("{}: field \"{field}\": {why}", at(offset)),
        )
    };
    if let Some(v) = &service.auto_stop_machines {
        let mode = match v.get_ref() {
            toml::Value::String(s) => s.parse::<AutoStop>(),
            toml::Value::Boolean(b) => Ok(if *b { AutoStop::Stop } else { AutoStop::Off }),
            other => Err(format!(
                "{} is not \"off\", \"stop\" or \"suspend\"",
                other.type_str()
            )),
        };
        out.auto_stop = Some(mode.map_err(|e| bad("auto_stop_machines", v.span().start, e))?);
    }
    if let Some(v) = &service.auto_start_machines {
        out.auto_start = Some(*v.get_ref());
    }
    if let Some(v) = &service.min_machines_running {
        out.min_machines_running = Some(
            usize::try_from(*v.get_ref())
                .ok()
                .filter(|n| *n <= crate::MAX_MACHINES)
                .ok_or_else(|| {
                    bad(
                        "min_machines_running",
                        v.span().start,
                        format!(
                            "{} is not a count of Machines (0 to {})",
                            v.get_ref(),
                            crate::MAX_MACHINES
                        ),
                    )
                })?,
        );
    }
    if let Some(c) = service.checks.first() {
        let mut check = HealthCheck::default();
        let duration = |field: &'static str, v: &Option<Spanned<String>>| {
            v.as_ref()
                .map(|v| {
                    crate::replay::parse_duration(v.get_ref())
                        .filter(|d| !d.is_zero() || field == "grace_period")
                        .ok_or_else(|| {
                            bad(
                                field,
                                v.span().start,
                                format!("{:?} is not a duration (\"15s\", \"500ms\")", v.get_ref()),
                            )
                        })
                })
                .transpose()
        };
        if let Some(d) = duration("interval", &c.interval)? {
            check.interval = d;
        }
        if let Some(d) = duration("timeout", &c.timeout)? {
            check.timeout = d;
        }
        if let Some(d) = duration("grace_period", &c.grace_period)? {
            check.grace_period = d;
        }
        if let Some(p) = &c.path {
            check.path = p.get_ref().clone();
            check
                .validate()
                .map_err(|e| bad("path", p.span().start, e))?;
        }
        out.health_check = Some(check);
    }
    Ok(())
}

/// One replay_cache table as a rule, or the offset of the field at fault.
fn rule(r: &RawRule) -> Result<ReplayCacheRule, (usize, RuleError)> {
    let ttl = *r.ttl_seconds.get_ref();
    let secs = u64::try_from(ttl).map_err(|_| {
        (
            r.ttl_seconds.span().start,
            RuleError::new(
                Some("ttl_seconds"),
                format!("field \"ttl_seconds\": {ttl} is not a number of seconds"),
            ),
        )
    })?;
    let kind = r
        .kind
        .get_ref()
        .parse()
        .map_err(|e| (r.kind.span().start, e))?;
    let built = match kind {
        crate::CacheKeyKind::Cookie => ReplayCacheRule::cookie(
            r.path_prefix.get_ref(),
            r.name.get_ref(),
            Duration::from_secs(secs),
        ),
        crate::CacheKeyKind::Header => ReplayCacheRule::header(
            r.path_prefix.get_ref(),
            r.name.get_ref(),
            Duration::from_secs(secs),
        ),
    };
    built
        .map(|rule| rule.with_allow_bypass(r.allow_bypass))
        .map_err(|e| {
            let offset = match e.field() {
                Some("path_prefix") => r.path_prefix.span().start,
                Some("name") => r.name.span().start,
                _ => r.ttl_seconds.span().start,
            };
            (offset, e)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = r#"
# fly.toml app configuration file generated for my-app
app = "my-app"
primary_region = "iad"
kill_signal = "SIGTERM"
kill_timeout = 30
swap_size_mb = 512

[build]
  dockerfile = "Dockerfile"

[env]
  RUST_LOG = "info"

[http_service]
  internal_port = 8080
  force_https = true
  auto_stop_machines = "stop"
  auto_start_machines = true
  min_machines_running = 0
  processes = ["app"]

  [http_service.concurrency]
    type = "requests"
    soft_limit = 200

  [http_service.http_options]
    h2_backend = false

  [[http_service.http_options.replay_cache]]
    path_prefix = "/"
    ttl_seconds = 300
    type = "cookie"
    name = "fly-machine-id"

  [[http_service.http_options.replay_cache]]
    path_prefix = "/api"
    ttl_seconds = 60
    type = "header"
    name = "x-tenant-id"
    allow_bypass = true

  [[http_service.checks]]
    grace_period = "10s"
    interval = "30s"
    method = "GET"
    path = "/health"
    timeout = "5s"

[[services]]
  protocol = "tcp"
  internal_port = 9090

  [[services.ports]]
    port = 8443
    handlers = ["tls", "http"]

    [[services.ports.http_options.replay_cache]]
      path_prefix = "ws.example.com/socket"
      ttl_seconds = 10
      type = "cookie"
      name = "sid"

[[vm]]
  memory = "1gb"
  cpu_kind = "shared"
  cpus = 1

[checks]
  [checks.alive]
    type = "tcp"
    port = 8080

[metrics]
  port = 9091
  path = "/metrics"

[mounts]
  source = "data"
  destination = "/data"
"#;

    #[test]
    fn a_real_fly_toml_is_read_and_the_rest_tolerated() {
        let f = FlyToml::parse(REAL, "fly.toml").unwrap();
        assert_eq!(f.kill_signal, Some(Signal::Term));
        assert_eq!(f.kill_timeout, Some(Duration::from_secs(30)));
        assert_eq!(f.internal_port, Some(8080));
        let rules: Vec<String> = f.replay_cache.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            rules,
            [
                "path_prefix=/,ttl_seconds=300,type=cookie,name=fly-machine-id",
                "path_prefix=/api,ttl_seconds=60,type=header,name=x-tenant-id,allow_bypass=true",
                "path_prefix=ws.example.com/socket,ttl_seconds=10,type=cookie,name=sid",
            ]
        );
        let f = FlyToml::parse("app = \"x\"\nkill_timeout = \"2m\"\n", "f").unwrap();
        assert_eq!(f.kill_timeout, Some(Duration::from_secs(120)));
        assert!(f.replay_cache.is_empty());
        assert_eq!(f.internal_port, None);
        assert!(f.env.is_empty());
    }

    #[test]
    fn env_is_read_in_key_order_and_a_table_refused() {
        let f = FlyToml::parse(REAL, "fly.toml").unwrap();
        assert_eq!(f.env, [("RUST_LOG".to_owned(), "info".to_owned())]);
        let f = FlyToml::parse(
            "[env]
  PORT = \"8080\"
  MALLOC_MMAP_THRESHOLD_ = 131072
  DEBUG = true
",
            "fly.toml",
        )
        .unwrap();
        let env: Vec<(&str, &str)> = f.env.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(
            env,
            [
                ("DEBUG", "true"),
                ("MALLOC_MMAP_THRESHOLD_", "131072"),
                ("PORT", "8080")
            ]
        );
        let e = refused("[env]\n  LIST = [\"a\"]\n");
        assert_eq!(e.field(), Some("env"));
        assert!(
            e.to_string().contains("[env] LIST: expected a string"),
            "{e}"
        );
    }

    fn refused(text: &str) -> RuleError {
        FlyToml::parse(text, "fly.toml").expect_err(text)
    }

    const RULE: &str = "[[http_service.http_options.replay_cache]]\n";

    #[test]
    fn errors_name_the_line_and_the_field() {
        let e = refused(&format!(
            "app = \"x\"\n{RULE}path_prefix = \"/\"\nttl_seconds = 5\ntype = \"cookie\"\nname = \"a\"\n"
        ));
        assert_eq!(e.field(), Some("ttl_seconds"));
        assert!(
            e.to_string()
                .starts_with("fly.toml:4: replay_cache: field \"ttl_seconds\""),
            "{e}"
        );

        let e = refused(&format!(
            "{RULE}path_prefix = \"/\"\nttl_seconds = 50\ntype = \"cookie\"\nname = \"a\"\ncolor = \"red\"\n"
        ));
        assert_eq!(e.field(), Some("color"), "{e}");
        assert!(e.to_string().contains("unknown field \"color\""), "{e}");
        assert!(e.to_string().starts_with("fly.toml:"), "{e}");

        let e = refused(&format!(
            "{RULE}path_prefix = \"/\"\nttl_seconds = 50\ntype = \"cookie\"\n"
        ));
        assert!(e.to_string().contains("missing field \"name\""), "{e}");

        let e = refused(&format!(
            "{RULE}path_prefix = \"/\"\nttl_seconds = 50\ntype = \"query\"\nname = \"a\"\n"
        ));
        assert_eq!(e.field(), Some("type"));
        assert!(e.to_string().starts_with("fly.toml:4:"), "{e}");

        let e = refused("app = \"x\"\n\n[http_service\ninternal_port = 1\n");
        assert!(e.to_string().starts_with("fly.toml:3:"), "{e}");

        let e = refused("kill_signal = \"SIGFOO\"\n");
        assert_eq!(e.field(), Some("kill_signal"));
        assert!(e.to_string().starts_with("fly.toml:1:"), "{e}");

        let e = refused("[http_service]\ninternal_port = 70000\n");
        assert_eq!(e.field(), Some("internal_port"));
        assert!(e.to_string().starts_with("fly.toml:2:"), "{e}");
    }
}
