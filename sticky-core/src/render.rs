//! The headers the engine writes: the pin cookie (rendered once at start-up
//! where it can be) and the `fly-replay` value.

use crate::config::{ReplayCache, SameSite, Secure};
use crate::decision::{CacheHeader, SetCookie, ShortCircuit, Text};
use crate::engine::Sticky;
use crate::find::Target;
use crate::target;
use crate::view::RequestView;

pub(crate) struct CookieAttrs {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) max_age: i64,
    pub(crate) secure: Secure,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
}

impl CookieAttrs {
    pub(crate) fn render(&self, value: &str, secure: bool) -> String {
        let same_site = match self.same_site {
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::None => cookie::SameSite::None,
        };
        let mut c = cookie::Cookie::build((self.name.as_str(), value))
            .path(self.path.as_str())
            .max_age(cookie::time::Duration::seconds(self.max_age))
            .http_only(self.http_only)
            .same_site(same_site);
        if secure {
            c = c.secure(true);
        }
        if let Some(domain) = &self.domain {
            c = c.domain(domain.as_str());
        }
        c.build().to_string()
    }
}

impl Sticky {
    /// A cookie naming this Machine. `issued` keeps a signed cookie's first
    /// issue time across refreshes.
    pub(crate) fn pin_here<V: RequestView>(
        &self,
        req: &V,
        now: u64,
        issued: Option<u64>,
    ) -> SetCookie {
        let inner = &*self.inner;
        let secure = match inner.cookie.secure {
            Secure::Always => true,
            Secure::Never => false,
            Secure::Auto => is_https(req),
        };
        #[cfg(feature = "signed")]
        if let (Some(signer), Some(me)) = (&inner.signer, &inner.me) {
            let value = signer.sign(me, issued.unwrap_or(now), now);
            return SetCookie {
                value: Text::Owned(inner.cookie.render(&value, secure).into()),
                cache_private: inner.cache_private,
            };
        }
        let _ = (now, issued);
        SetCookie {
            value: Text::Shared(inner.pin[usize::from(secure)].clone()),
            cache_private: inner.cache_private,
        }
    }

    /// Row 7: the replay response for a validated target.
    pub(crate) fn replay_to(
        &self,
        id: &[u8],
        body_to_read: u64,
        cache: CacheHeader,
    ) -> ShortCircuit {
        let inner = &*self.inner;
        // `id` passed the target format, so it is ASCII without separators.
        let id = std::str::from_utf8(id).unwrap_or_default();
        let mut value =
            String::with_capacity(inner.replay_prefix.len() + id.len() + inner.replay_suffix.len());
        value.push_str(&inner.replay_prefix);
        value.push_str(id);
        value.push_str(&inner.replay_suffix);
        ShortCircuit {
            status: inner.replay_status,
            fly_replay: Some(Text::Owned(value.into_boxed_str())),
            body_to_read,
            cache,
        }
    }

    /// The drain replay (row 8): `elsewhere=true`, rendered once.
    pub(crate) fn drain_replay(&self, body_to_read: u64) -> ShortCircuit {
        ShortCircuit {
            status: self.inner.replay_status,
            fly_replay: Some(Text::Shared(self.inner.drain_replay.clone())),
            body_to_read,
            cache: CacheHeader::None,
        }
    }

    /// What a row-7 replay tells Fly's cache: that the entry which routed
    /// this request here is wrong, or the room pattern a path-cached replay
    /// names. An entry that sends a request to a Machine it is not pinned
    /// to is wrong whatever pinned it: a key that moved, or a pin-cookie
    /// entry made by a replay the cookie did not decide (a key's, under a
    /// cookie rule that covers the key's path). Kept, it would cost every
    /// later request of that key one more hop until its TTL ran out.
    pub(crate) fn cache_header(&self, target: &Target<'_>, routed_by_cache: bool) -> CacheHeader {
        let inner = &*self.inner;
        if routed_by_cache && inner.replay_cache != ReplayCache::Off {
            return CacheHeader::Invalidate;
        }
        match (&inner.cache_ttl, target.room) {
            (Some(ttl), Some(room)) => {
                let mut pattern = String::with_capacity(room.len() + 2);
                pattern.push_str(room);
                pattern.push_str("/*");
                CacheHeader::Path {
                    pattern: pattern.into_boxed_str(),
                    ttl: ttl.clone(),
                }
            }
            _ => CacheHeader::None,
        }
    }
}

pub(crate) fn refusal(status: u16) -> ShortCircuit {
    ShortCircuit {
        status,
        fly_replay: None,
        body_to_read: 0,
        cache: CacheHeader::None,
    }
}

fn is_https<V: RequestView>(req: &V) -> bool {
    req.header("x-forwarded-proto").is_some_and(|v| {
        // As Fly's proxy sends it; anything else is parsed.
        if target::same_bytes(v, b"https") {
            return true;
        }
        let first = v.split(|&b| b == b',').next().unwrap_or_default();
        target::header_value(first).eq_ignore_ascii_case(b"https")
    })
}
