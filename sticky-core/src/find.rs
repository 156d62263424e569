//! Where a request names its Machine: the configured sources in order,
//! each value validated (format, signature) before it is used.

use std::cell::OnceCell;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::decision::Rejected;
use crate::engine::Sticky;
use crate::keys::PeerSet;
use crate::seen::{PathOnce, Seen};
use crate::target::{self, Source};
use crate::view::RequestView;

/// A target found in the request.
pub(crate) enum Found<'a> {
    Nothing,
    Refused(Source, Rejected),
    Target(Target<'a>),
}

#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    /// Borrowed from the request, or from the live set (a key's).
    pub(crate) id: &'a [u8],
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
    /// A key's target borrows its ID from `live`.
    pub(crate) fn find_target<'a, 'p: 'a, V: RequestView>(
        &self,
        req: &'a V,
        path: &PathOnce<'p, V>,
        seen: &Seen<'a>,
        live: &'a OnceCell<Arc<PeerSet>>,
        me: &str,
        now: u64,
    ) -> Found<'a> {
        let mut refused = None;
        for &source in &self.inner.sources {
            // A key is found, or not, without `consider`: kept apart, a key
            // source before the cookie sets up neither of its locals.
            if source == Source::Key {
                if let Some(t) = self.key_target(req, path, seen, live) {
                    return Found::Target(t);
                }
                continue;
            }
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
                    // The common request, settled without the scan's
                    // machinery: one `Cookie` field, our pin at an end of
                    // it naming this Machine (which settles duplicates).
                    if let Some(pin) = &self.inner.pin_pair
                        && let Some(field) = seen.single(self.inner.cookie_slot)
                        && let Some(id) = pin.at_an_end(field)
                    {
                        return Found::Target(Target {
                            id,
                            source,
                            stamps: None,
                            room: None,
                        });
                    }
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
                // Tried above, before `consider`.
                Source::Key => {}
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
                    id: v.id,
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
                id: raw,
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
