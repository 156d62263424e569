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
use crate::seen::{PathOnce, Seen, Slot};
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
/// Keys are hashed onto a fixed ring of 65,536 buckets, and each bucket
/// belongs to the Machine with the highest rendezvous score for it (a
/// weighted score when weights differ; only the Machines of the preferred
/// region when it has any). The owners are computed into a table when the
/// set is built, off the request path, so [`pick`](Self::pick) is one hash
/// of the key and one table read, whatever the number of Machines. The
/// properties of rendezvous hashing hold bucket by bucket: when a Machine
/// leaves only its keys move, and one that joins takes about 1/(N+1) of
/// them, all from the others.
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
#[derive(Clone, Default)]
pub struct PeerSet {
    peers: Vec<Peer>,
    weighted: bool,
    /// The owner of every bucket: among all Machines (`region: None`), and
    /// among those of each indexed region that has any.
    tables: Vec<Table>,
}

impl PartialEq for PeerSet {
    /// The same Machines (the tables follow from them).
    fn eq(&self, other: &Self) -> bool {
        self.peers == other.peers
    }
}

impl Eq for PeerSet {}

impl fmt::Debug for PeerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSet")
            .field("peers", &self.peers)
            .field("weighted", &self.weighted)
            .field(
                "tables",
                &self
                    .tables
                    .iter()
                    .map(|t| t.region.as_deref())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Owners of the buckets among one list of candidates.
#[derive(Clone)]
struct Table {
    /// `None`: every Machine; else the Machines of this region.
    region: Option<Box<str>>,
    /// For each bucket, the index of its owner in `PeerSet::peers`.
    owners: Arc<[u16]>,
}

const KEY_SEED: u64 = 0xcbf2_9ce4_8422_2325;
const PEER_SEED: u64 = 0x8422_2325_cbf2_9ce4;
const BUCKET_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Keys hash onto `2^BUCKET_BITS` buckets. With 1,000 Machines each still
/// owns about 65, so shares stay close to their weights; a table is
/// 128 KiB.
const BUCKET_BITS: u32 = 16;
const BUCKETS: usize = 1 << BUCKET_BITS;

/// Sets with more Machines than a `u16` can index keep no table: their
/// picks are computed bucket by bucket, with the same result.
const MAX_TABLE_PEERS: usize = u16::MAX as usize + 1;

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

/// The bucket of a key.
#[inline]
fn bucket_of(key: &[u8]) -> usize {
    (mix(fnv1a(KEY_SEED, key)) >> (64 - BUCKET_BITS)) as usize
}

/// The hash a bucket is scored with against each Machine.
#[inline]
fn bucket_hash(bucket: usize) -> u64 {
    mix(BUCKET_SEED ^ bucket as u64)
}

/// `w / -ln(u)`, u uniform in (0, 1) from the score: the weighted
/// rendezvous score (Schindelhauer and Schomaker's logarithmic method).
fn weighted_score(bucket_hash: u64, peer_hash: u64, weight: u32) -> f64 {
    let bits = mix(bucket_hash ^ peer_hash) >> 11;
    let u = (bits as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

/// A candidate's score for a bucket. Candidates are compared by score, then
/// the one with the smaller ID (the lower index: peers are sorted) wins.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Score {
    Plain(u64),
    Weighted(f64),
}

impl PeerSet {
    /// A set of Machines. Duplicate IDs keep their first entry; weight-0
    /// Machines are dropped. Builds the table of every bucket's owner among
    /// all Machines (see [`pick`](Self::pick)).
    pub fn new(peers: impl IntoIterator<Item = Peer>) -> Self {
        Self::indexed(peers, None, None)
    }

    /// A set with tables for all Machines and for `region` (when it has
    /// Machines), reusing the tables of `previous` where the Machines that
    /// stayed allow it (the result is the same as building anew).
    pub(crate) fn indexed(
        peers: impl IntoIterator<Item = Peer>,
        region: Option<&str>,
        previous: Option<&PeerSet>,
    ) -> Self {
        Self::with_tables(Self::list(peers), region, previous)
    }

    /// The Machines as a set keeps them: weight 0 dropped, sorted by ID,
    /// the first entry of an ID kept.
    fn list(peers: impl IntoIterator<Item = Peer>) -> Vec<Peer> {
        let mut list: Vec<Peer> = peers.into_iter().filter(|p| p.weight > 0).collect();
        // Stable: of equal IDs the first entry comes first, and stays.
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list.dedup_by(|later, first| later.id == first.id);
        list
    }

    fn with_tables(list: Vec<Peer>, region: Option<&str>, previous: Option<&PeerSet>) -> Self {
        let weighted = list.windows(2).any(|w| w[0].weight != w[1].weight);
        let mut set = Self {
            peers: list,
            weighted,
            tables: Vec::new(),
        };
        if set.peers.is_empty() || set.peers.len() > MAX_TABLE_PEERS {
            return set;
        }
        let regions = std::iter::once(None).chain(region.map(Some));
        for region in regions {
            let candidates = set.candidates(region);
            if candidates.is_empty() {
                continue;
            }
            let old = previous.and_then(|p| p.table(region).map(|t| (p, t)));
            let owners = match old {
                Some((old_set, old_table)) => set
                    .update(old_set, old_table, region, &candidates)
                    .unwrap_or_else(|| set.build(&candidates)),
                None => set.build(&candidates),
            };
            set.tables.push(Table {
                region: region.map(Box::from),
                owners,
            });
        }
        set
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
        self.peers.binary_search_by(|p| (*p.id).cmp(id)).is_ok()
    }

    /// The Machine that owns `key`: the owner of the key's bucket among the
    /// Machines of `region` when it has any, else among all. One hash and
    /// one table read for all Machines and for the region the engine
    /// prefers (its tables are built with the set); another region's owner
    /// is computed over its Machines, with the same result.
    pub fn pick(&self, key: &[u8], region: Option<&str>) -> Option<&Peer> {
        let bucket = bucket_of(key);
        let owner = match self.table(region) {
            Some(table) => usize::from(table.owners[bucket]),
            None => {
                let mut candidates = self.candidates(region);
                if candidates.is_empty() {
                    if let Some(table) = self.table(None) {
                        return self.peers.get(usize::from(table.owners[bucket]));
                    }
                    candidates = (0..self.peers.len()).collect();
                }
                self.owner(bucket_hash(bucket), &candidates)?
            }
        };
        self.peers.get(owner)
    }

    /// The table of `region` (`None`: of all Machines), if built.
    fn table(&self, region: Option<&str>) -> Option<&Table> {
        self.tables.iter().find(|t| t.region.as_deref() == region)
    }

    /// The indexes of the Machines of `region` (all for `None`).
    fn candidates(&self, region: Option<&str>) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|&i| region.is_none() || self.peers[i].region() == region)
            .collect()
    }

    fn score(&self, bucket_hash: u64, i: usize) -> Score {
        let p = &self.peers[i];
        if self.weighted {
            Score::Weighted(weighted_score(bucket_hash, p.hash, p.weight))
        } else {
            Score::Plain(mix(bucket_hash ^ p.hash))
        }
    }

    /// The owner of a bucket among `candidates` (ascending indexes): the
    /// highest score, the first on a tie.
    fn owner(&self, bucket_hash: u64, candidates: &[usize]) -> Option<usize> {
        let (&first, rest) = candidates.split_first()?;
        let mut best = (first, self.score(bucket_hash, first));
        for &i in rest {
            let s = self.score(bucket_hash, i);
            if s > best.1 {
                best = (i, s);
            }
        }
        Some(best.0)
    }

    /// Every bucket's owner among `candidates` (not empty, at most
    /// [`MAX_TABLE_PEERS`]).
    fn build(&self, candidates: &[usize]) -> Arc<[u16]> {
        if !self.weighted {
            // The common case, kept tight: contiguous hashes, no branches
            // but the comparison.
            let hashes: Vec<u64> = candidates.iter().map(|&i| self.peers[i].hash).collect();
            return (0..BUCKETS)
                .map(|b| {
                    let h = bucket_hash(b);
                    let mut best = (0, mix(h ^ hashes[0]));
                    for (j, &ph) in hashes.iter().enumerate().skip(1) {
                        let s = mix(h ^ ph);
                        if s > best.1 {
                            best = (j, s);
                        }
                    }
                    index(candidates[best.0])
                })
                .collect();
        }
        (0..BUCKETS)
            .map(|b| index(self.owner(bucket_hash(b), candidates).unwrap_or(0)))
            .collect()
    }

    /// `old_table` brought up to date for the Machines of this set, when
    /// few changed: a bucket whose owner stayed keeps it unless a newcomer
    /// beats it (the owner beat every other Machine that stayed), and only
    /// the buckets of Machines that left are scored anew. `None` when
    /// building anew is as cheap, or the scores changed (weights).
    fn update(
        &self,
        old_set: &PeerSet,
        old_table: &Table,
        region: Option<&str>,
        candidates: &[usize],
    ) -> Option<Arc<[u16]>> {
        if old_set.weighted != self.weighted {
            return None;
        }
        // Old index -> new index, for the Machines that stayed as they were.
        let mut kept: Vec<Option<u16>> = vec![None; old_set.peers.len()];
        let mut stayed = vec![false; self.peers.len()];
        let (mut i, mut j) = (0, 0);
        while i < old_set.peers.len() && j < self.peers.len() {
            let (a, b) = (&old_set.peers[i], &self.peers[j]);
            match a.id.cmp(&b.id) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    if a.weight != b.weight {
                        return None;
                    }
                    let in_region = region.is_none_or(|r| a.region() == Some(r))
                        && region.is_none_or(|r| b.region() == Some(r));
                    if in_region {
                        kept[i] = Some(index(j));
                        stayed[j] = true;
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        let added: Vec<usize> = candidates.iter().copied().filter(|&c| !stayed[c]).collect();
        let stayed_count = candidates.len() - added.len();
        let old_count = old_set.candidates(region).len();
        let left = old_count - stayed_count;
        if 2 * (added.len() + left) > candidates.len() {
            return None;
        }
        let owners = old_table
            .owners
            .iter()
            .enumerate()
            .map(|(b, &old)| {
                let h = bucket_hash(b);
                match kept.get(usize::from(old)).copied().flatten() {
                    Some(owner) => {
                        let mut best = (usize::from(owner), self.score(h, usize::from(owner)));
                        for &a in &added {
                            let s = self.score(h, a);
                            if s > best.1 || (s == best.1 && a < best.0) {
                                best = (a, s);
                            }
                        }
                        index(best.0)
                    }
                    None => index(self.owner(h, candidates).unwrap_or(0)),
                }
            })
            .collect();
        Some(owners)
    }
}

/// A peer index as stored in a table (sets larger than
/// [`MAX_TABLE_PEERS`] keep no table).
fn index(i: usize) -> u16 {
    u16::try_from(i).unwrap_or(u16::MAX)
}

/// Finds the key for a request from one source.
#[inline]
pub(crate) fn key_of<'a, V: RequestView>(
    source: &'a CompiledKey,
    req: &'a V,
    path: &PathOnce<'_, V>,
    seen: &Seen<'a>,
    cookie: Slot,
    each: &mut dyn FnMut(&[u8]) -> bool,
) -> bool {
    match source {
        CompiledKey::Header(name, slot) => {
            let v = seen
                .first(req, *slot, name)
                .map(crate::target::header_value);
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
            seen.each(req, cookie, "cookie", &mut |field| {
                scanner.scan(field, b"", &mut |v| {
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
        CompiledKey::ClientIp(slot) => {
            let v = seen
                .first(req, *slot, "fly-client-ip")
                .map(crate::target::header_value);
            v.is_some_and(|v| !v.is_empty() && each(v))
        }
        CompiledKey::PathSegment(prefix) => {
            // Most paths are under no key prefix: rule them out here.
            let path = path.get();
            path.starts_with(prefix.as_str())
                && path_key(path, prefix).is_some_and(|(_, key)| each(key.as_bytes()))
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
#[inline]
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
    Header(String, Slot),
    Query(String),
    Cookie(Box<crate::target::CookieScanner>),
    ClientIp(Slot),
    PathSegment(String),
    Custom(KeyFn),
}

/// The live set, as the engine keeps it (replaced whole, read per key).
impl Sticky {
    /// The Machine a request's key maps to, from the first key source that
    /// yields a key, when the live set is not empty.
    pub(crate) fn key_target<'a, V: RequestView>(
        &self,
        req: &'a V,
        path: &PathOnce<'a, V>,
        seen: &Seen<'a>,
    ) -> Option<Target<'a>> {
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
            if key_of(source, req, path, seen, inner.cookie_slot, &mut |key| {
                let set = peers.get_or_insert_with(|| self.peers());
                id = set.pick(key, region).and_then(|p| Id::peer(p.id()));
                id.is_some()
            }) {
                let room = match source {
                    CompiledKey::PathSegment(prefix) => {
                        path_key(path.get(), prefix).map(|(room, _)| room)
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
        let list = PeerSet::list(peers.into_iter().filter(|p| format.accepts(p.id())));
        let kept = list.len();
        let previous = self.peers();
        if list == previous.peers {
            // Unchanged (a provider refreshes the same list every few
            // seconds): keep the tables readers already have.
            return kept;
        }
        // The tables are built here, on the provider's thread, from the
        // previous ones where few Machines changed: never on a request.
        let set = PeerSet::with_tables(list, self.inner.key_region.as_deref(), Some(&previous));
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

    /// Random sets: IDs from a small alphabet, weights 1 to 3 (or all 1),
    /// some regions.
    fn peer_list() -> impl proptest::strategy::Strategy<Value = Vec<Peer>> {
        use proptest::prelude::*;
        prop::collection::vec(
            (
                0u16..400,
                1u32..4,
                prop::option::of(prop::sample::select(vec!["iad", "ord"])),
            ),
            0..24,
        )
        .prop_map(|v| {
            v.into_iter()
                .map(|(n, w, r)| {
                    let p = Peer::new(format!("m{n:03}")).with_weight(w);
                    match r {
                        Some(r) => p.with_region(r),
                        None => p,
                    }
                })
                .collect()
        })
    }

    fn assert_tables_are_exact(set: &PeerSet) {
        for table in &set.tables {
            let candidates = set.candidates(table.region.as_deref());
            for (b, &owner) in table.owners.iter().enumerate() {
                let direct = set.owner(bucket_hash(b), &candidates);
                assert_eq!(Some(usize::from(owner)), direct, "bucket {b}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

        /// A table brought up to date from the previous one (few changes)
        /// holds exactly what building anew holds, and both hold every
        /// bucket's rendezvous owner.
        #[test]
        fn updated_tables_equal_rebuilt_ones(
            before in peer_list(),
            leave in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..3),
            join in peer_list(),
            uniform in proptest::prelude::any::<bool>(),
        ) {
            let flat = |v: Vec<Peer>| -> Vec<Peer> {
                if uniform { v.into_iter().map(|p| p.with_weight(1)).collect() } else { v }
            };
            let before = flat(before);
            let old = PeerSet::indexed(before.clone(), Some("iad"), None);
            let mut after = before.clone();
            for i in &leave {
                if !after.is_empty() {
                    let id = i.get(&after).id.clone();
                    after.retain(|p| p.id != id);
                }
            }
            after.extend(flat(join).into_iter().take(3));
            let updated = PeerSet::indexed(after.clone(), Some("iad"), Some(&old));
            let rebuilt = PeerSet::indexed(after, Some("iad"), None);
            proptest::prop_assert_eq!(updated.tables.len(), rebuilt.tables.len());
            for (u, r) in updated.tables.iter().zip(&rebuilt.tables) {
                proptest::prop_assert_eq!(&u.region, &r.region);
                proptest::prop_assert!(u.owners == r.owners, "tables differ for {:?}", u.region);
            }
            assert_tables_are_exact(&updated);
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
