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
        // A request of a few headers (most are) is walked in order: a name
        // comparison per field costs less than hashing `name`, let alone
        // parsing it (which `get_all(&str)` does every time). Names of
        // another length are passed over at once; the names in the map are
        // lowercase, as the engine's are, so an equal one matches at the
        // first comparison, and case is ignored only when that fails.
        if map.keys_len() <= SCAN_MAX_FIELDS {
            for (field, value) in map {
                let field = field.as_str();
                if field.len() == name.len()
                    && (field == name || field.eq_ignore_ascii_case(name))
                    && each(value.as_bytes()).is_break()
                {
                    return;
                }
            }
            return;
        }
        let values = match READ_HEADERS.iter().position(|h| *h == name) {
            Some(i) => map.get_all(&KNOWN[i]),
            None => map.get_all(name),
        };
        for value in values {
            if each(value.as_bytes()).is_break() {
                break;
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
    }
}

#[cfg(feature = "http")]
pub use http_impls::{HttpView, each_value as http_header_values};
