//! Key affinity: a key taken from the request (a tenant header, the app's
//! own session cookie, the client IP...) is mapped onto the live Machines by
//! rendezvous (highest-random-weight) hashing, so that when a Machine joins
//! or leaves only the keys it wins or held move.
//!
//! Keys never leave the engine: only the chosen Machine's ID, which passed
//! the target format when the live set was given, reaches a header.

use std::fmt;
use std::sync::{Arc, PoisonError};

use crate::engine::Sticky;
use crate::find::{Id, Target};
use crate::target::Source;
use crate::view::RequestView;

/// A key taken from the request by a closure.
pub type KeyFn = Arc<dyn Fn(&dyn RequestView) -> Option<String> + Send + Sync>;

/// Where a key comes from.
#[derive(Clone)]
pub enum KeySource {
    /// The first value of a request header, e.g. `x-tenant-id`.
    Header(String),
    /// A query parameter (raw, not percent-decoded).
    Query(String),
    /// Another cookie, e.g. the app's own session cookie.
    Cookie(String),
    /// `Fly-Client-IP`, set by Fly's edge (never the client-controlled
    /// leftmost `X-Forwarded-For`).
    ClientIp,
    /// The path segment after this prefix, e.g. `"/rooms/"` gives `abc` for
    /// `/rooms/abc/chat`: rooms and documents. Only a segment of 1 to 64
    /// letters, digits, `-` and `_` is a key (anything else gives none),
    /// because with [`ReplayCache::Path`](crate::ReplayCache::Path) it
    /// reaches the `fly-replay-cache` header.
    PathSegment(String),
    /// A closure over the request.
    Custom(KeyFn),
}

impl KeySource {
    /// A key from a closure over the request.
    ///
    /// ```
    /// use sticky_core::KeySource;
    /// // The document ID in `/docs/<id>/...`.
    /// let source = KeySource::custom(|req| req.path().strip_prefix("/docs/")?.split('/').next().map(str::to_owned));
    /// # let _ = source;
    /// ```
    pub fn custom(f: impl Fn(&dyn RequestView) -> Option<String> + Send + Sync + 'static) -> Self {
        KeySource::Custom(Arc::new(f))
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Header(h) => f.debug_tuple("Header").field(h).finish(),
            KeySource::Query(q) => f.debug_tuple("Query").field(q).finish(),
            KeySource::Cookie(c) => f.debug_tuple("Cookie").field(c).finish(),
            KeySource::ClientIp => f.write_str("ClientIp"),
            KeySource::PathSegment(p) => f.debug_tuple("PathSegment").field(p).finish(),
            KeySource::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// One live Machine, as a key resolver sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    id: Box<str>,
    region: Option<Box<str>>,
    weight: u32,
    hash: u64,
}

impl Peer {
    /// A Machine with weight 1 and no region.
    pub fn new(id: impl Into<String>) -> Self {
        let id: Box<str> = id.into().into_boxed_str();
        let hash = fnv1a(PEER_SEED, id.as_bytes());
        Self {
            id,
            region: None,
            weight: 1,
            hash,
        }
    }

    /// Sets the region (for [`Builder::prefer_region`](crate::Builder::prefer_region)).
    #[must_use]
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into().into_boxed_str());
        self
    }

    /// Sets the weight: a Machine of weight 2 gets about twice the keys of
    /// one of weight 1. Weight 0 takes no keys.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The Machine ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The region, if known.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

/// The live Machines: an input to the engine, refreshed by a provider
/// (a static list, Fly's internal DNS...) outside it.
///
/// ```
/// use sticky_core::{Peer, PeerSet};
///
/// let ids = ["148ed599c14189", "90801679a10038", "e784079b449483"];
/// let peers = PeerSet::new(ids.map(Peer::new));
/// let home = peers.pick(b"tenant-42", None).unwrap().id().to_owned();
/// // Another Machine leaves: the key stays where it was.
/// let gone = ids.into_iter().find(|id| *id != home).unwrap();
/// let fewer = PeerSet::new(ids.into_iter().filter(|id| *id != gone).map(Peer::new));
/// assert_eq!(fewer.pick(b"tenant-42", None).unwrap().id(), home);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSet {
    peers: Vec<Peer>,
    weighted: bool,
}

const KEY_SEED: u64 = 0xcbf2_9ce4_8422_2325;
const PEER_SEED: u64 = 0x8422_2325_cbf2_9ce4;

/// FNV-1a: stable across builds and platforms, so every Machine maps a key
/// to the same peer whatever binary it runs.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The splitmix64 finalizer: spreads the combined hashes evenly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl PeerSet {
    /// A set of Machines. Duplicate IDs keep their first entry; weight-0
    /// Machines are dropped.
    pub fn new(peers: impl IntoIterator<Item = Peer>) -> Self {
        let mut list: Vec<Peer> = Vec::new();
        for peer in peers {
            if peer.weight > 0 && !list.iter().any(|p| p.id == peer.id) {
                list.push(peer);
            }
        }
        list.sort_by(|a, b| a.id.cmp(&b.id));
        let weighted = list.windows(2).any(|w| w[0].weight != w[1].weight);
        Self {
            peers: list,
            weighted,
        }
    }

    /// Number of Machines.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The Machines, sorted by ID.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter()
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: &str) -> bool {
        self.peers.iter().any(|p| &*p.id == id)
    }

    /// The Machine that owns `key`: the highest rendezvous score among the
    /// Machines of `region` when it has any, else among all.
    pub fn pick(&self, key: &[u8], region: Option<&str>) -> Option<&Peer> {
        let key_hash = fnv1a(KEY_SEED, key);
        let in_region = |p: &&Peer| region.is_none_or(|r| p.region() == Some(r));
        let has_region = region.is_some() && self.peers.iter().any(|p| in_region(&p));
        let candidates = self.peers.iter().filter(|p| !has_region || in_region(p));
        if self.weighted {
            candidates.max_by(|a, b| {
                weighted_score(key_hash, a)
                    .total_cmp(&weighted_score(key_hash, b))
                    .then_with(|| b.id.cmp(&a.id))
            })
        } else {
            candidates.max_by_key(|p| (mix(key_hash ^ p.hash), std::cmp::Reverse(&p.id)))
        }
    }
}

/// `w / -ln(u)`, u uniform in (0, 1) from the score: the weighted
/// rendezvous score (Schindelhauer and Schomaker's logarithmic method).
fn weighted_score(key_hash: u64, peer: &Peer) -> f64 {
    let bits = mix(key_hash ^ peer.hash) >> 11;
    let u = (bits as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(peer.weight) / -u.ln()
}

/// Finds the key for a request from one source.
pub(crate) fn key_of<'a, V: RequestView>(
    source: &'a CompiledKey,
    req: &'a V,
    each: &mut dyn FnMut(&[u8]) -> bool,
) -> bool {
    match source {
        CompiledKey::Header(name) => {
            let v = req.header(name).map(crate::target::header_value);
            v.is_some_and(|v| !v.is_empty() && each(v))
        }
        CompiledKey::Query(name) => req.query().is_some_and(|q| {
            let mut found = false;
            crate::target::scan_query(q, name, &mut |v| {
                found = !v.is_empty() && each(v);
                true
            });
            found
        }),
        CompiledKey::Cookie(scanner) => {
            let mut found = false;
            req.header_values("cookie", &mut |field| {
                scanner.scan(field, &mut |v| {
                    found = !v.is_empty() && each(v);
                    true
                });
                if found {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            });
            found
        }
        CompiledKey::ClientIp => {
            let v = req.header("fly-client-ip").map(crate::target::header_value);
            v.is_some_and(|v| !v.is_empty() && each(v))
        }
        CompiledKey::PathSegment(prefix) => {
            path_key(req.path(), prefix).is_some_and(|(_, key)| each(key.as_bytes()))
        }
        CompiledKey::Custom(f) => {
            f(req as &dyn RequestView).is_some_and(|k| !k.is_empty() && each(k.as_bytes()))
        }
    }
}

/// The longest key a path segment may be.
pub(crate) const MAX_PATH_KEY: usize = 64;

/// `(room, key)` for a path under `prefix`: the key is the next segment,
/// `room` the path up to and including it (`/rooms/abc`). Only 1 to
/// [`MAX_PATH_KEY`] letters, digits, `-` and `_` count: the room reaches
/// the `fly-replay-cache` header, so nothing that could end a field, start
/// a glob or climb a directory (`..`, `%2e`) ever does.
pub(crate) fn path_key<'a>(path: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = path.strip_prefix(prefix)?;
    let key = rest.split('/').next()?;
    let valid = (1..=MAX_PATH_KEY).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then(|| (&path[..prefix.len() + key.len()], key))
}

/// A `KeySource::PathSegment` prefix we can put into a header: a plain
/// path starting and ending with `/`.
pub(crate) fn is_path_prefix(prefix: &str) -> bool {
    prefix.len() <= 256
        && prefix.starts_with('/')
        && prefix.ends_with('/')
        && !prefix.contains("//")
        && !prefix.split('/').any(|s| s == "." || s == "..")
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
}

/// A key source, prepared at build time.
pub(crate) enum CompiledKey {
    Header(String),
    Query(String),
    Cookie(Box<crate::target::CookieScanner>),
    ClientIp,
    PathSegment(String),
    Custom(KeyFn),
}

/// The live set, as the engine keeps it (replaced whole, read per key).
impl Sticky {
    /// The Machine a request's key maps to, from the first key source that
    /// yields a key, when the live set is not empty.
    pub(crate) fn key_target<'a, V: RequestView>(&self, req: &'a V) -> Option<Target<'a>> {
        let inner = &*self.inner;
        if inner.keys.is_empty() {
            return None;
        }
        let region = inner.key_region.as_deref();
        // The live set is fetched once a key is found: requests without a
        // key (most, when keys and cookies are mixed) never touch its lock,
        // whose cache line would otherwise bounce between worker threads.
        let mut peers: Option<Arc<PeerSet>> = None;
        let mut id = None;
        for source in &inner.keys {
            if key_of(source, req, &mut |key| {
                let set = peers.get_or_insert_with(|| self.peers());
                id = set.pick(key, region).and_then(|p| Id::peer(p.id()));
                id.is_some()
            }) {
                let room = match source {
                    CompiledKey::PathSegment(prefix) => {
                        path_key(req.path(), prefix).map(|(room, _)| room)
                    }
                    _ => None,
                };
                return id.map(|id| Target {
                    id,
                    source: Source::Key,
                    stamps: None,
                    room,
                });
            }
            if peers.as_ref().is_some_and(|set| set.is_empty()) {
                return None;
            }
        }
        None
    }

    /// Replaces the live Machines used by key affinity. IDs that fail the
    /// target format are dropped (a provider's data is not trusted blindly);
    /// returns how many Machines were kept. Callable from any thread.
    pub fn set_peers(&self, peers: impl IntoIterator<Item = Peer>) -> usize {
        let format = &self.inner.format;
        let set = PeerSet::new(peers.into_iter().filter(|p| format.accepts(p.id())));
        let kept = set.len();
        *self
            .inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        kept
    }

    /// The live Machines used by key affinity.
    pub fn peers(&self) -> Arc<PeerSet> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The Machine a key maps to now, as `decide` would resolve it.
    pub fn resolve(&self, key: &[u8]) -> Option<String> {
        self.peers()
            .pick(key, self.inner.key_region.as_deref())
            .map(|p| p.id().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_stable_and_deterministic() {
        let peers = PeerSet::new(["b", "a", "c"].map(Peer::new));
        let again = PeerSet::new(["c", "b", "a"].map(Peer::new));
        for k in 0..100u32 {
            let key = k.to_string();
            assert_eq!(
                peers.pick(key.as_bytes(), None),
                again.pick(key.as_bytes(), None)
            );
        }
        assert!(PeerSet::default().pick(b"x", None).is_none());
    }

    #[test]
    fn region_preference_falls_back_to_all() {
        let peers = PeerSet::new([
            Peer::new("a").with_region("iad"),
            Peer::new("b").with_region("ord"),
            Peer::new("c").with_region("ord"),
        ]);
        for k in 0..50u32 {
            let key = k.to_string();
            assert_eq!(peers.pick(key.as_bytes(), Some("iad")).unwrap().id(), "a");
            assert_ne!(peers.pick(key.as_bytes(), Some("ord")).unwrap().id(), "a");
            assert!(peers.pick(key.as_bytes(), Some("syd")).is_some());
        }
    }

    #[test]
    fn weights_shift_the_share() {
        let peers = PeerSet::new([
            Peer::new("a").with_weight(3),
            Peer::new("b"),
            Peer::new("c").with_weight(0),
        ]);
        assert_eq!(peers.len(), 2);
        let a = (0..20_000u32)
            .filter(|k| peers.pick(k.to_string().as_bytes(), None).unwrap().id() == "a")
            .count();
        let share = a as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.02, "weight 3 of 4 got {share}");
    }
}
