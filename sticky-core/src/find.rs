//! Where a request names its Machine: the configured sources in order,
//! each value validated (format, signature) before it is used.

use std::ops::ControlFlow;

use crate::decision::Rejected;
use crate::engine::Sticky;
use crate::seen::{PathOnce, Seen};
use crate::target::{self, Source};
use crate::view::RequestView;

/// A target found in the request.
pub(crate) enum Found<'a> {
    Nothing,
    Refused(Source, Rejected),
    Target(Target<'a>),
}

/// A target ID: borrowed from the request, or copied from the live set.
#[derive(Clone, Copy)]
pub(crate) enum Id<'a> {
    Request(&'a [u8]),
    Peer([u8; target::MAX_TARGET_LEN], u8),
}

impl Id<'_> {
    pub(crate) fn peer(id: &str) -> Option<Self> {
        let mut buf = [0; target::MAX_TARGET_LEN];
        buf.get_mut(..id.len())?.copy_from_slice(id.as_bytes());
        Some(Id::Peer(buf, u8::try_from(id.len()).ok()?))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Id::Request(b) => b,
            Id::Peer(buf, len) => &buf[..usize::from(*len)],
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) id: Id<'a>,
    pub(crate) source: Source,
    /// `(issued, seen)` of a signed cookie.
    pub(crate) stamps: Option<(u64, u64)>,
    /// The path up to and including the key's segment, when the key came
    /// from a [`KeySource::PathSegment`](crate::KeySource::PathSegment):
    /// what a path-cached replay names. Validated (see `keys::path_key`).
    pub(crate) room: Option<&'a str>,
}

impl Sticky {
    /// Consults the sources in order; the first valid target wins.
    pub(crate) fn find_target<'a, V: RequestView>(
        &self,
        req: &'a V,
        path: &PathOnce<'a, V>,
        seen: &Seen<'a>,
        me: &str,
        now: u64,
    ) -> Found<'a> {
        let mut refused = None;
        for &source in &self.inner.sources {
            let mut best: Option<Target<'a>> = None;
            let mut consider = |raw: &'a [u8]| -> bool {
                match self.check(source, raw, me, now) {
                    Ok((t, mine)) => {
                        if best.is_none() || mine {
                            best = Some(t);
                        }
                        // A value naming this Machine settles duplicates.
                        mine
                    }
                    Err(why) => {
                        refused.get_or_insert((source, why));
                        false
                    }
                }
            };
            match source {
                Source::Cookie => {
                    let scanner = &self.inner.scanner;
                    // `consider` stops at this Machine's ID unless cookies
                    // are signed (a signed value is never the bare ID).
                    #[cfg(feature = "signed")]
                    let likely = if self.inner.signer.is_some() {
                        &b""[..]
                    } else {
                        me.as_bytes()
                    };
                    #[cfg(not(feature = "signed"))]
                    let likely = me.as_bytes();
                    seen.each(req, self.inner.cookie_slot, "cookie", &mut |field| {
                        if scanner.scan(field, likely, &mut consider) {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    });
                }
                Source::Query => {
                    if let Some(query) = req.query() {
                        target::scan_query(query, &self.inner.query_param, &mut consider);
                    }
                }
                Source::Key => {
                    if let Some(t) = self.key_target(req, path, seen) {
                        return Found::Target(t);
                    }
                }
                Source::Header => {
                    if let Some(name) = &self.inner.header_source {
                        seen.each(req, self.inner.header_slot, name, &mut |v| {
                            if consider(target::header_value(v)) {
                                ControlFlow::Break(())
                            } else {
                                ControlFlow::Continue(())
                            }
                        });
                    }
                }
            }
            if let Some(t) = best {
                return Found::Target(t);
            }
        }
        match refused {
            Some((source, why)) => Found::Refused(source, why),
            None => Found::Nothing,
        }
    }

    /// The target a raw value names, and whether it is this Machine.
    #[inline]
    fn check<'a>(
        &self,
        source: Source,
        raw: &'a [u8],
        me: &str,
        now: u64,
    ) -> Result<(Target<'a>, bool), Rejected> {
        #[cfg(feature = "signed")]
        if let (Source::Cookie, Some(signer)) = (source, &self.inner.signer) {
            let v = signer.verify(raw, now)?;
            return if self.inner.format.accepts_bytes(v.id) {
                let target = Target {
                    id: Id::Request(v.id),
                    source,
                    stamps: Some((v.issued, v.seen)),
                    room: None,
                };
                Ok((target, v.id == me.as_bytes()))
            } else {
                Err(Rejected::Format)
            };
        }
        let _ = now;
        // This Machine's ID passed the format when the engine was built:
        // the Stick path compares, and checks nothing more.
        let mine = target::same_bytes(raw, me.as_bytes());
        if mine || self.inner.format.accepts_bytes(raw) {
            let target = Target {
                id: Id::Request(raw),
                source,
                stamps: None,
                room: None,
            };
            Ok((target, mine))
        } else {
            Err(Rejected::Format)
        }
    }
}
