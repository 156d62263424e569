//! `Builder::build`: every setting checked (a [`ConfigError`] naming the
//! setting), then compiled into the engine's tables once.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{
    Builder, ConfigError, MAX_REPLAY_BODY, Refresh, ReplayCache, SameSite, Secure,
};
use crate::engine::{Inner, ROUTING, Sticky};
use crate::env::Env;
use crate::filter::glob_set;
use crate::keys::{self, CompiledKey, KeySource};
use crate::metrics::Counters;
use crate::render::CookieAttrs;
use crate::seen::Slot;
#[cfg(feature = "signed")]
use crate::signed::Signer;
use crate::target::{self, CookieScanner, PinPair, Source};
use crate::view::HeaderNames;

/// A query parameter name we can match raw.
fn is_query_name(q: &str) -> bool {
    !q.is_empty()
        && q.len() <= 64
        && q.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'&' | b'=' | b'#' | b'%' | b'+'))
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

impl Builder {
    /// Checks every setting and builds the engine for `env`.
    pub fn build(self, env: Env) -> Result<Sticky, ConfigError> {
        let name = &self.cookie_name;
        if !target::is_token(name) {
            return Err(ConfigError::InvalidCookieName(name.clone()));
        }
        let path = &self.cookie_path;
        if !path.starts_with('/')
            || path.len() > 1024
            || path
                .bytes()
                .any(|b| b == b';' || b == b',' || !(0x21..=0x7e).contains(&b))
        {
            return Err(ConfigError::InvalidCookiePath(path.clone()));
        }
        if let Some(domain) = &self.cookie_domain {
            let d = domain.strip_prefix('.').unwrap_or(domain);
            if d.is_empty()
                || d.len() > 253
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(ConfigError::InvalidCookieDomain(domain.clone()));
            }
        }
        if self.max_age.is_zero() || self.max_age > Duration::from_secs(400 * 24 * 3600) {
            return Err(ConfigError::InvalidMaxAge(self.max_age));
        }
        let mut secure = self.secure;
        let host_prefix = name.starts_with("__Host-");
        if host_prefix || name.starts_with("__Secure-") {
            if secure == Secure::Never {
                return Err(ConfigError::PrefixWithoutSecure(name.clone()));
            }
            secure = Secure::Always;
        }
        if host_prefix && self.cookie_domain.is_some() {
            return Err(ConfigError::HostPrefixWithDomain(name.clone()));
        }
        if host_prefix && path != "/" {
            return Err(ConfigError::HostPrefixWithPath(name.clone()));
        }
        if self.same_site == SameSite::None && secure != Secure::Always {
            return Err(ConfigError::SameSiteNoneWithoutSecure);
        }
        let q = &self.query_param;
        if !is_query_name(q) {
            return Err(ConfigError::InvalidQueryParam(q.clone()));
        }
        let header_source = match &self.header_source {
            Some(h) if !target::is_token(h) => {
                return Err(ConfigError::InvalidHeaderName(h.clone()));
            }
            Some(h) => Some(h.to_ascii_lowercase()),
            None => None,
        };
        if self.sources.is_empty() {
            return Err(ConfigError::InvalidSources(
                "at least one source is required",
            ));
        }
        for (i, s) in self.sources.iter().enumerate() {
            if self.sources[..i].contains(s) {
                return Err(ConfigError::InvalidSources("a source is listed twice"));
            }
        }
        if self.sources.contains(&Source::Key) && self.key_sources.is_empty() {
            return Err(ConfigError::InvalidSources(
                "the key source needs key_source(..)",
            ));
        }
        // The headers read on every request, in one pass (`seen`): the
        // sticky cookie's first, as the most common.
        let mut read = Vec::new();
        let cookie_slot = Slot::of(&mut read, "cookie");
        let mut keys = Vec::with_capacity(self.key_sources.len());
        for source in &self.key_sources {
            keys.push(match source {
                KeySource::Header(h) if target::is_token(h) => {
                    let h = h.to_ascii_lowercase();
                    let slot = Slot::of(&mut read, &h);
                    CompiledKey::Header(h, slot)
                }
                KeySource::Query(q) if is_query_name(q) => CompiledKey::Query(q.clone()),
                KeySource::Cookie(c) if target::is_token(c) => {
                    CompiledKey::Cookie(Box::new(CookieScanner::new(c)))
                }
                KeySource::ClientIp => CompiledKey::ClientIp(Slot::of(&mut read, "fly-client-ip")),
                KeySource::PathSegment(prefix) if keys::is_path_prefix(prefix) => {
                    CompiledKey::PathSegment(prefix.clone())
                }
                KeySource::PathSegment(prefix) => {
                    return Err(ConfigError::InvalidPathPrefix(prefix.clone()));
                }
                KeySource::Custom(f) => CompiledKey::Custom(f.clone()),
                KeySource::Header(name) | KeySource::Query(name) | KeySource::Cookie(name) => {
                    return Err(ConfigError::InvalidKeySource(name.clone()));
                }
            });
        }
        let header_slot = header_source
            .as_deref()
            .map_or(Slot::NONE, |h| Slot::of(&mut read, h));
        // The cookie alone is read as fast by name as in a pass.
        let cookie_slot = if read.len() > 1 {
            cookie_slot
        } else {
            Slot::NONE
        };
        if self.sources.contains(&Source::Header) && header_source.is_none() {
            return Err(ConfigError::InvalidSources(
                "the header source needs header_source(name)",
            ));
        }
        if !(200..=599).contains(&self.replay_status) {
            return Err(ConfigError::InvalidReplayStatus(self.replay_status));
        }
        if let Some(state) = &self.replay_state
            && !target::is_safe_token(state.as_bytes())
        {
            return Err(ConfigError::InvalidReplayState(state.clone()));
        }
        let (replay_prefix, replay_suffix) = self.replay.render(self.replay_state.as_deref())?;
        self.replay_cache
            .check(&self.replay, self.replay_state.as_deref())?;
        let cache_ttl = match self.replay_cache {
            ReplayCache::Path { ttl } => Some(Arc::from(ttl.as_secs().to_string())),
            ReplayCache::Off | ReplayCache::Session => None,
        };
        if self.body_limit > MAX_REPLAY_BODY {
            return Err(ConfigError::BodyLimitTooLarge(self.body_limit));
        }
        let include = glob_set("include", &self.include)?;
        let exclude = glob_set("exclude", &self.exclude)?;
        for m in &self.skip_methods {
            if !target::is_token(m) {
                return Err(ConfigError::InvalidMethod(m.clone()));
            }
        }
        for (setting, value) in [
            ("max_lifetime", self.max_lifetime),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_some_and(|d| d.as_secs() == 0) {
                return Err(ConfigError::InvalidLifetime(setting));
            }
        }
        let signed = !self.signing_keys.is_empty();
        if !signed {
            if self.max_lifetime.is_some() {
                return Err(ConfigError::NeedsSigning("max_lifetime"));
            }
            if self.idle_timeout.is_some() {
                return Err(ConfigError::NeedsSigning("idle_timeout"));
            }
            if matches!(self.refresh, Some(Refresh::After(_))) {
                return Err(ConfigError::NeedsSigning("refresh(Refresh::After)"));
            }
        }
        let refresh = match (self.refresh, self.idle_timeout) {
            (Some(r), _) => r,
            (None, Some(idle)) => Refresh::After(idle / 2),
            (None, None) => Refresh::Never,
        };
        let pins_cookie = self.sources.contains(&Source::Cookie);
        let me = match env.machine_id.clone() {
            Some(id) if !self.target_format.accepts(&id) => {
                return Err(ConfigError::InvalidMachineId(id));
            }
            id => id.map(String::into_boxed_str),
        };
        #[cfg(feature = "signed")]
        let signer = if signed {
            Some(Signer::new(
                name,
                &self.signing_keys,
                self.max_lifetime.map(secs),
                self.idle_timeout.map(secs),
            )?)
        } else {
            None
        };
        let cookie = CookieAttrs {
            name: name.clone(),
            path: path.clone(),
            domain: self.cookie_domain.clone(),
            max_age: i64::try_from(secs(self.max_age)).unwrap_or(i64::MAX),
            secure,
            http_only: self.http_only,
            same_site: self.same_site,
        };
        let id = me.as_deref().unwrap_or_default();
        let pin = [
            Arc::from(cookie.render(id, false)),
            Arc::from(cookie.render(id, true)),
        ];
        let mut drain_replay = String::from("elsewhere=true");
        if let Some(state) = &self.replay_state {
            drain_replay.push_str(";state=");
            drain_replay.push_str(state);
        }
        // A signed cookie is never the bare ID: nothing to look for.
        let pin_pair = me
            .as_deref()
            .filter(|_| !signed)
            .map(|id| PinPair::new(name, id));
        let initial_peers = self.peers;
        let sticky = Sticky {
            inner: Arc::new(Inner {
                me,
                draining: AtomicBool::new(false),
                scanner: CookieScanner::new(name),
                pin_pair,
                sources: self.sources,
                query_param: self.query_param,
                header_source,
                read_headers: if read.len() > 1 {
                    HeaderNames::new(&read)
                } else {
                    HeaderNames::default()
                },
                routing_headers: HeaderNames::new(ROUTING),
                cookie_slot,
                header_slot,
                format: self.target_format,
                cookie,
                pin,
                cache_private: self.cache_private,
                replay_prefix,
                replay_suffix,
                drain_replay: Arc::from(drain_replay),
                replay_status: self.replay_status,
                replay_cache: self.replay_cache,
                cache_ttl,
                unavailable: self.unavailable,
                large_body: self.large_body,
                body_limit: self.body_limit,
                replay_unknown_length: self.replay_unknown_length,
                include,
                exclude,
                skip_methods: self.skip_methods,
                skip_preflight: self.skip_preflight,
                skip_if: self.skip_if,
                refresh,
                #[cfg(feature = "signed")]
                signer,
                keys,
                peers: RwLock::default(),
                key_region: if self.prefer_region {
                    env.region.clone()
                } else {
                    None
                },
                pins_cookie,
                counters: self.count_decisions.then(Counters::new),
            }),
        };
        sticky.set_peers(initial_peers);
        Ok(sticky)
    }
}
