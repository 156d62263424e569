//! The borrowed request view the engine decides on.

use std::ops::ControlFlow;

/// A borrowed view of an HTTP request: method, path, query and header values.
///
/// Adapters implement it over their framework's request type without copying
/// the header map. Header names are asked for in lowercase; an implementation
/// must look them up case-insensitively and yield every value of a repeated
/// header in order (several `Cookie` fields are legal).
///
/// The trait is dyn-compatible, so predicates can take `&dyn RequestView`.
/// [On request types of your own](crate#on-request-types-of-your-own) maps a
/// whole decision onto a request and response type of one's own.
///
/// ```
/// use std::ops::ControlFlow;
/// use sticky_core::RequestView;
///
/// struct Plain<'a> { path: &'a str, cookie: &'a str }
///
/// impl RequestView for Plain<'_> {
///     fn method(&self) -> &str { "GET" }
///     fn path(&self) -> &str { self.path }
///     fn query(&self) -> Option<&str> { None }
///     fn header_values<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>) {
///         if name == "cookie" {
///             let _ = each(self.cookie.as_bytes());
///         }
///     }
/// }
///
/// let req = Plain { path: "/", cookie: "a=1" };
/// assert_eq!(req.header("cookie"), Some(&b"a=1"[..]));
/// assert!(req.header("x-other").is_none());
/// ```
pub trait RequestView {
    /// The request method, e.g. `GET` (as sent, upper case for standard methods).
    fn method(&self) -> &str;
    /// The path of the request target, without the query (e.g. `/a/b`).
    fn path(&self) -> &str;
    /// The raw query string without the `?`, if any.
    fn query(&self) -> Option<&str>;
    /// Calls `each` with every value of the header `name` (lowercase), in
    /// order, until it returns [`ControlFlow::Break`].
    fn header_values<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>);

    /// The first value of the header `name`, if present.
    fn header(&self, name: &str) -> Option<&[u8]> {
        let mut first = None;
        self.header_values(name, &mut |v| {
            first = Some(v);
            ControlFlow::Break(())
        });
        first
    }

    /// Whether the header `name` is present at all.
    fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// Calls `each(i, value)` with every value of every header named in
    /// `names`, `i` being the name's index there, in the order received for
    /// each name, until it returns [`ControlFlow::Break`].
    ///
    /// The engine asks for the few headers it reads on every request this
    /// way, once per request. The default asks [`header_values`] name by
    /// name; a view over a header list does better with one pass over it,
    /// matching each field with [`HeaderNames::position`].
    ///
    /// [`header_values`]: RequestView::header_values
    fn header_values_of<'a>(
        &'a self,
        names: &HeaderNames,
        each: &mut dyn FnMut(usize, &'a [u8]) -> ControlFlow<()>,
    ) {
        for (i, name) in names.iter().enumerate() {
            let mut stop = false;
            self.header_values(name, &mut |v| {
                let flow = each(i, v);
                stop = flow.is_break();
                flow
            });
            if stop {
                return;
            }
        }
    }
}

/// The header names an engine reads on every request, fixed when it is
/// built, for [`RequestView::header_values_of`].
///
/// ```
/// use sticky_core::HeaderNames;
///
/// let names = HeaderNames::new(["cookie", "x-tenant-id"]);
/// assert_eq!(names.position("X-Tenant-ID"), Some(1));
/// assert_eq!(names.position("accept"), None);
/// assert_eq!(names.iter().collect::<Vec<_>>(), ["cookie", "x-tenant-id"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderNames {
    names: Vec<Box<str>>,
    /// The same names parsed for `http` maps, whose fields compare with a
    /// parsed name in a few instructions (a standard header is one byte).
    /// Empty when one of the names is no valid header name.
    #[cfg(feature = "http")]
    parsed: Vec<http::HeaderName>,
    /// Bit `n` (`n` < 63): a name is `n` bytes long; bit 63: one is longer.
    /// Most fields of a request are then passed over in one test.
    lengths: u64,
}

/// The bit of [`HeaderNames::lengths`] for a name of `len` bytes.
#[inline]
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

impl HeaderNames {
    /// The names, lowercased, in this order (a repeated one is kept once).
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<Box<str>> = Vec::new();
        for name in names {
            let name = name.as_ref().to_ascii_lowercase();
            if !out.iter().any(|n| **n == *name) {
                out.push(name.into_boxed_str());
            }
        }
        Self {
            #[cfg(feature = "http")]
            parsed: out
                .iter()
                .map(|n| http::HeaderName::from_bytes(n.as_bytes()))
                .collect::<Result<_, _>>()
                .unwrap_or_default(),
            lengths: out.iter().fold(0, |bits, n| bits | length_bit(n.len())),
            names: out,
        }
    }

    /// The index of a header field named `field` (any case), if it is one
    /// of these names.
    #[inline]
    pub fn position(&self, field: &str) -> Option<usize> {
        let field = field.as_bytes();
        // Lengths and first bytes rule out almost every field a request
        // carries before any full comparison.
        if self.lengths & length_bit(field.len()) == 0 {
            return None;
        }
        self.names.iter().position(|name| {
            let name = name.as_bytes();
            name.len() == field.len()
                && name.first().map(u8::to_ascii_lowercase)
                    == field.first().map(u8::to_ascii_lowercase)
                && (crate::target::same_bytes(name, field) || name.eq_ignore_ascii_case(field))
        })
    }

    /// The names, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// The number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name at `index`.
    pub fn get(&self, index: usize) -> Option<&str> {
        self.names.get(index).map(|n| &**n)
    }
}

impl<T: RequestView + ?Sized> RequestView for &T {
    fn method(&self) -> &str {
        (**self).method()
    }
    fn path(&self) -> &str {
        (**self).path()
    }
    fn query(&self) -> Option<&str> {
        (**self).query()
    }
    fn header_values<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>) {
        (**self).header_values(name, each)
    }
    fn header_values_of<'a>(
        &'a self,
        names: &HeaderNames,
        each: &mut dyn FnMut(usize, &'a [u8]) -> ControlFlow<()>,
    ) {
        (**self).header_values_of(names, each)
    }
}

#[cfg(feature = "http")]
mod http_impls {
    use super::*;

    use http::HeaderName;

    use crate::READ_HEADERS;

    /// Up to this many distinct names, [`each_value`] walks the map rather
    /// than looking the name up (measured in instructions: the walk is
    /// cheaper below it).
    const SCAN_MAX_FIELDS: usize = 12;

    /// [`READ_HEADERS`], parsed once.
    static KNOWN: [HeaderName; READ_HEADERS.len()] = [
        HeaderName::from_static(READ_HEADERS[0]),
        HeaderName::from_static(READ_HEADERS[1]),
        HeaderName::from_static(READ_HEADERS[2]),
        HeaderName::from_static(READ_HEADERS[3]),
        HeaderName::from_static(READ_HEADERS[4]),
        HeaderName::from_static(READ_HEADERS[5]),
        HeaderName::from_static(READ_HEADERS[6]),
        HeaderName::from_static(READ_HEADERS[7]),
        HeaderName::from_static(READ_HEADERS[8]),
        HeaderName::from_static(READ_HEADERS[9]),
    ];

    /// Calls `each` with every value of the header `name` (lowercase) in an
    /// `http` 1.x header map, in order, until it breaks: the lookup behind
    /// every `http` view here, for views of one's own that keep the header
    /// map apart from the method and path (as warp's filters do).
    ///
    /// Looking a header up by `&str` makes `http` validate and lowercase the
    /// name on every call, a quarter of the Stick path; the engine's own
    /// headers are looked up by their parsed name instead.
    ///
    /// ```
    /// let mut headers = http::HeaderMap::new();
    /// headers.append("cookie", "a=1".parse().unwrap());
    /// headers.append("cookie", "b=2".parse().unwrap());
    /// let mut seen = Vec::new();
    /// sticky_core::http_header_values(&headers, "cookie", &mut |v| {
    ///     seen.push(v);
    ///     std::ops::ControlFlow::Continue(())
    /// });
    /// assert_eq!(seen, [&b"a=1"[..], b"b=2"]);
    /// ```
    pub fn each_value<'a>(
        map: &'a http::HeaderMap,
        name: &str,
        each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>,
    ) {
        // One of the engine's own names (most lookups) is used parsed.
        let known = READ_HEADERS
            .iter()
            .position(|h| crate::target::same_bytes(h.as_bytes(), name.as_bytes()));
        // A request of a few headers (most are) is walked in order: a name
        // comparison per field costs less than hashing `name`, let alone
        // parsing it (which `get_all(&str)` does every time).
        if map.keys_len() <= SCAN_MAX_FIELDS {
            // Parsed names compare in a word (a standard field against a
            // custom name, or two standard ones), with no `as_str` per field.
            if let Some(known) = known.and_then(|i| KNOWN.get(i)) {
                for (field, value) in map {
                    if field == known && each(value.as_bytes()).is_break() {
                        return;
                    }
                }
                return;
            }
            // Names of another length are passed over at once; the names in
            // the map are lowercase, so an equal one matches at the first
            // comparison, and case is ignored only when that fails.
            let name = name.as_bytes();
            let first = name.first().map(u8::to_ascii_lowercase);
            for (field, value) in map {
                let field = field.as_str().as_bytes();
                if field.len() == name.len()
                    && field.first().copied() == first
                    && (crate::target::same_bytes(field, name) || field.eq_ignore_ascii_case(name))
                    && each(value.as_bytes()).is_break()
                {
                    return;
                }
            }
            return;
        }
        let values = match known.and_then(|i| KNOWN.get(i)) {
            Some(known) => map.get_all(known),
            None => map.get_all(name),
        };
        for value in values {
            if each(value.as_bytes()).is_break() {
                break;
            }
        }
    }

    /// [`RequestView::header_values_of`] over an `http` 1.x header map: one
    /// pass over its fields, whatever the number of names.
    ///
    /// ```
    /// let mut headers = http::HeaderMap::new();
    /// headers.append("cookie", "a=1".parse().unwrap());
    /// headers.append("x-tenant-id", "acme".parse().unwrap());
    /// headers.append("cookie", "b=2".parse().unwrap());
    /// let names = sticky_core::HeaderNames::new(["cookie", "x-tenant-id"]);
    /// let mut seen = Vec::new();
    /// sticky_core::http_header_values_of(&headers, &names, &mut |i, v| {
    ///     seen.push((i, v));
    ///     std::ops::ControlFlow::Continue(())
    /// });
    /// assert_eq!(seen, [(0, &b"a=1"[..]), (0, b"b=2"), (1, b"acme")]);
    /// ```
    pub fn each_value_of<'a>(
        map: &'a http::HeaderMap,
        names: &HeaderNames,
        each: &mut dyn FnMut(usize, &'a [u8]) -> ControlFlow<()>,
    ) {
        if names.parsed.len() != names.len() {
            for (field, value) in map {
                if let Some(i) = names.position(field.as_str())
                    && each(i, value.as_bytes()).is_break()
                {
                    return;
                }
            }
            return;
        }
        for (field, value) in map {
            if names.lengths & length_bit(field.as_str().len()) != 0
                && let Some(i) = names.parsed.iter().position(|n| n == field)
                && each(i, value.as_bytes()).is_break()
            {
                return;
            }
        }
    }

    /// Views an `http` 1.x request (any body type).
    impl<B> RequestView for http::Request<B> {
        fn method(&self) -> &str {
            self.method().as_str()
        }
        fn path(&self) -> &str {
            self.uri().path()
        }
        fn query(&self) -> Option<&str> {
            self.uri().query()
        }
        fn header_values<'a>(
            &'a self,
            name: &str,
            each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>,
        ) {
            each_value(self.headers(), name, each)
        }
        fn header_values_of<'a>(
            &'a self,
            names: &HeaderNames,
            each: &mut dyn FnMut(usize, &'a [u8]) -> ControlFlow<()>,
        ) {
            each_value_of(self.headers(), names, each)
        }
    }

    /// Views the head of an `http` 1.x request.
    impl RequestView for http::request::Parts {
        fn method(&self) -> &str {
            self.method.as_str()
        }
        fn path(&self) -> &str {
            self.uri.path()
        }
        fn query(&self) -> Option<&str> {
            self.uri.query()
        }
        fn header_values<'a>(
            &'a self,
            name: &str,
            each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>,
        ) {
            each_value(&self.headers, name, each)
        }
        fn header_values_of<'a>(
            &'a self,
            names: &HeaderNames,
            each: &mut dyn FnMut(usize, &'a [u8]) -> ControlFlow<()>,
        ) {
            each_value_of(&self.headers, names, each)
        }
    }

    /// A view over borrowed `http` 1.x parts, for frameworks that keep the
    /// original URI apart from the routed one (poem's `original_uri()`).
    ///
    /// ```
    /// use sticky_core::{HttpView, RequestView};
    ///
    /// let uri: http::Uri = "/app/ws?fly_instance_id=148ed599c14189".parse().unwrap();
    /// let headers = http::HeaderMap::new();
    /// let view = HttpView { method: &http::Method::GET, uri: &uri, headers: &headers };
    /// assert_eq!(view.path(), "/app/ws");
    /// assert_eq!(view.query(), Some("fly_instance_id=148ed599c14189"));
    /// ```
    #[derive(Clone, Copy, Debug)]
    pub struct HttpView<'r> {
        /// The request method.
        pub method: &'r http::Method,
        /// The request target to decide on.
        pub uri: &'r http::Uri,
        /// The request headers.
        pub headers: &'r http::HeaderMap,
    }

    impl RequestView for HttpView<'_> {
        fn method(&self) -> &str {
            self.method.as_str()
        }
        fn path(&self) -> &str {
            self.uri.path()
        }
        fn query(&self) -> Option<&str> {
            self.uri.query()
        }
        fn header_values<'a>(
            &'a self,
            name: &str,
            each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>,
        ) {
            each_value(self.headers, name, each)
        }
        fn header_values_of<'a>(
            &'a self,
            names: &HeaderNames,
            each: &mut dyn FnMut(usize, &'a [u8]) -> ControlFlow<()>,
        ) {
            each_value_of(self.headers, names, each)
        }
    }
}

#[cfg(feature = "http")]
pub use http_impls::{
    HttpView, each_value as http_header_values, each_value_of as http_header_values_of,
};
