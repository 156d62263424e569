//! The headers a decision reads on every request, found in one pass.
//!
//! Each source that reads a header (the sticky cookie, a key header, the
//! header source, `fly-client-ip`) would otherwise walk the header list on
//! its own: two or three walks per request where one does. The engine
//! names these headers once, at build time ([`HeaderNames`]); per request
//! [`Seen::of`] keeps the first value of each and whether there were more.
//! A header sent several times (HTTP/2 splits `Cookie` into one field per
//! cookie) is read again from the request, in order, so nothing is lost.

use std::ops::ControlFlow;

use crate::view::{HeaderNames, RequestView};

/// The request's path, read from the view at most once, and only if a
/// rule needs it (path globs, a path key): a view may compute it per call.
pub(crate) struct PathOnce<'a, V: ?Sized> {
    req: &'a V,
    path: std::cell::Cell<Option<&'a str>>,
}

impl<'a, V: RequestView + ?Sized> PathOnce<'a, V> {
    pub(crate) fn new(req: &'a V) -> Self {
        Self {
            req,
            path: std::cell::Cell::new(None),
        }
    }

    #[inline]
    pub(crate) fn get(&self) -> &'a str {
        if let Some(path) = self.path.get() {
            return path;
        }
        let path = self.req.path();
        self.path.set(Some(path));
        path
    }
}

/// How many names one pass serves; the engine reads any further ones from
/// the request directly.
pub(crate) const SLOTS: usize = 4;

/// Where a source's header is: a slot of [`Seen`], or none (read from the
/// request by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot(u8);

impl Slot {
    pub(crate) const NONE: Slot = Slot(u8::MAX);

    /// The slot of `name` among `names`, adding it when there is room.
    pub(crate) fn of(names: &mut Vec<String>, name: &str) -> Slot {
        let i = match names.iter().position(|n| n == name) {
            Some(i) => i,
            None if names.len() < SLOTS => {
                names.push(name.to_owned());
                names.len() - 1
            }
            None => return Slot::NONE,
        };
        u8::try_from(i).map_or(Slot::NONE, Slot)
    }
}

/// The first value of each of up to `N` (at most 8) named headers, and
/// which had more than one.
pub(crate) struct Seen<'a, const N: usize = SLOTS> {
    first: [Option<&'a [u8]>; N],
    /// Bit `i`: the header of slot `i` came more than once.
    more: u8,
}

impl<'a, const N: usize> Seen<'a, N> {
    /// The slot of the `i`th name (for names fixed in the code).
    pub(crate) const fn slot(i: u8) -> Slot {
        Slot(i)
    }

    #[inline(always)]
    pub(crate) fn of<V: RequestView>(req: &'a V, names: &HeaderNames) -> Self {
        const { assert!(N <= 8, "`more` has 8 bits") };
        let mut seen = Seen {
            first: [None; N],
            more: 0,
        };
        if names.is_empty() {
            return seen;
        }
        {
            req.header_values_of(names, &mut |i, v| {
                match seen.first.get_mut(i) {
                    Some(slot @ None) => *slot = Some(v),
                    Some(Some(_)) => seen.more |= 1 << (i % 8),
                    None => {}
                }
                ControlFlow::Continue(())
            });
        }
        seen
    }

    /// The first value of the header `name` (at `slot`).
    #[inline]
    pub(crate) fn first<V: RequestView>(
        &self,
        req: &'a V,
        slot: Slot,
        name: &str,
    ) -> Option<&'a [u8]> {
        match self.first.get(usize::from(slot.0)) {
            Some(v) => *v,
            None => req.header(name),
        }
    }

    /// Whether the header `name` (at `slot`) is present.
    #[inline]
    pub(crate) fn has<V: RequestView>(&self, req: &'a V, slot: Slot, name: &str) -> bool {
        self.first(req, slot, name).is_some()
    }

    /// Calls `each` with every value of the header `name` (at `slot`), in
    /// order, until it returns [`ControlFlow::Break`].
    #[inline]
    pub(crate) fn each<V: RequestView>(
        &self,
        req: &'a V,
        slot: Slot,
        name: &str,
        each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>,
    ) {
        let i = usize::from(slot.0);
        match self.first.get(i) {
            Some(_) if self.more & (1 << (i % 8)) != 0 => req.header_values(name, each),
            Some(Some(v)) => {
                let _ = each(v);
            }
            Some(None) => {}
            None => req.header_values(name, each),
        }
    }
}

#[cfg(all(test, feature = "http"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::get("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn all<'a>(
        seen: &Seen<'a>,
        req: &'a http::Request<()>,
        slot: Slot,
        name: &str,
    ) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        seen.each(req, slot, name, &mut |v| {
            out.push(v);
            ControlFlow::Continue(())
        });
        out
    }

    #[test]
    fn one_pass_keeps_every_value_in_order() {
        let mut names = Vec::new();
        let cookie = Slot::of(&mut names, "cookie");
        let tenant = Slot::of(&mut names, "x-tenant-id");
        let ip = Slot::of(&mut names, "fly-client-ip");
        assert_eq!(Slot::of(&mut names, "cookie"), cookie);
        let names = HeaderNames::new(&names);
        let req = request(&[
            ("cookie", "a=1"),
            ("x-tenant-id", "acme"),
            ("accept", "*/*"),
            ("cookie", "b=2"),
            ("x-tenant-id", "other"),
        ]);
        let seen: Seen<'_> = Seen::of(&req, &names);
        assert_eq!(all(&seen, &req, cookie, "cookie"), [&b"a=1"[..], b"b=2"]);
        assert_eq!(seen.first(&req, tenant, "x-tenant-id"), Some(&b"acme"[..]));
        assert_eq!(
            all(&seen, &req, tenant, "x-tenant-id"),
            [&b"acme"[..], b"other"]
        );
        assert_eq!(seen.first(&req, ip, "fly-client-ip"), None);
        assert!(all(&seen, &req, ip, "fly-client-ip").is_empty());
    }

    #[test]
    fn names_beyond_the_slots_are_read_from_the_request() {
        let mut names: Vec<String> = (0..SLOTS).map(|i| format!("x-h{i}")).collect();
        let late = Slot::of(&mut names, "x-late");
        assert_eq!(late, Slot::NONE);
        let names = HeaderNames::new(&names);
        let req = request(&[("x-late", "1"), ("x-late", "2"), ("x-h3", "3")]);
        let seen: Seen<'_> = Seen::of(&req, &names);
        assert_eq!(seen.first(&req, late, "x-late"), Some(&b"1"[..]));
        assert_eq!(all(&seen, &req, late, "x-late"), [&b"1"[..], b"2"]);
        assert_eq!(seen.first(&req, Slot(3), "x-h3"), Some(&b"3"[..]));
    }

    /// A view with only the default `header_values_of` sees the same.
    #[test]
    fn the_default_pass_agrees() {
        struct Plain(Vec<(&'static str, &'static str)>);
        impl RequestView for Plain {
            fn method(&self) -> &str {
                "GET"
            }
            fn path(&self) -> &str {
                "/"
            }
            fn query(&self) -> Option<&str> {
                None
            }
            fn header_values<'a>(
                &'a self,
                name: &str,
                each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>,
            ) {
                for (k, v) in &self.0 {
                    if k.eq_ignore_ascii_case(name) && each(v.as_bytes()).is_break() {
                        return;
                    }
                }
            }
        }
        let plain = Plain(vec![
            ("Cookie", "a=1"),
            ("X-Tenant-Id", "acme"),
            ("cookie", "b=2"),
        ]);
        let names = HeaderNames::new(["cookie", "x-tenant-id"]);
        let seen: Seen<'_> = Seen::of(&plain, &names);
        let mut cookies = Vec::new();
        seen.each(&plain, Slot(0), "cookie", &mut |v| {
            cookies.push(v);
            ControlFlow::Continue(())
        });
        assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
        assert_eq!(
            seen.first(&plain, Slot(1), "x-tenant-id"),
            Some(&b"acme"[..])
        );
    }
}
