//! Where targets come from and what a valid one looks like.
//!
//! Everything here runs on the hot path: no allocation, no percent-decoding.

use std::fmt;
use std::sync::Arc;

/// Longest target value the engine ever accepts, whatever the format.
pub const MAX_TARGET_LEN: usize = 64;

/// Where a target Machine ID was found in the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The sticky cookie.
    Cookie,
    /// The query parameter (for WebSocket handshakes from browsers).
    Query,
    /// A request header.
    Header,
    /// A key (tenant, session, client IP...) hashed onto the live Machines.
    Key,
}

impl Source {
    /// A short lowercase name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cookie => "cookie",
            Source::Query => "query",
            Source::Header => "header",
            Source::Key => "key",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which values count as a Machine ID.
///
/// Whatever the format, a value is refused unless it is 1 to
/// [`MAX_TARGET_LEN`] visible ASCII characters without `;`, `,`, `=`, `"`,
/// `\` or `%`: no format can let a value inject a field into `fly-replay`,
/// raw or percent-encoded (`x%3Bapp%3Dother`).
///
/// ```
/// use sticky_core::TargetFormat;
///
/// let fly = TargetFormat::MachineId;
/// assert!(fly.accepts("148ed599c14189"));
/// assert!(!fly.accepts("148ED599C14189"));
/// assert!(!fly.accepts("x;app=other"));
///
/// // A custom format may narrow, but never admit separators.
/// let any = TargetFormat::custom(|_| true);
/// assert!(any.accepts("local-1"));
/// assert!(!any.accepts("local;app=x"));
/// assert!(!any.accepts("local%3Bapp%3Dx"));
/// ```
#[derive(Clone, Default)]
pub enum TargetFormat {
    /// Fly's Machine IDs: exactly 14 lowercase hex characters (`^[0-9a-f]{14}$`).
    #[default]
    MachineId,
    /// A custom check, applied after the built-in safety rule.
    Custom(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl TargetFormat {
    /// A custom format from a predicate.
    pub fn custom(check: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        TargetFormat::Custom(Arc::new(check))
    }

    /// Whether `value` is an acceptable target.
    pub fn accepts(&self, value: &str) -> bool {
        self.accepts_bytes(value.as_bytes())
    }

    #[inline]
    pub(crate) fn accepts_bytes(&self, value: &[u8]) -> bool {
        match self {
            TargetFormat::MachineId => is_machine_id(value),
            TargetFormat::Custom(check) => {
                is_safe_token(value) && std::str::from_utf8(value).is_ok_and(|s| check(s))
            }
        }
    }
}

impl fmt::Debug for TargetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetFormat::MachineId => f.write_str("MachineId"),
            TargetFormat::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// `^[0-9a-f]{14}$`.
#[inline]
pub(crate) fn is_machine_id(v: &[u8]) -> bool {
    v.len() == 14
        && v.iter()
            .all(|&b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The rule no format can relax: short, visible ASCII, and none of the bytes
/// that separate or quote `fly-replay` fields, nor `%` (so that an encoded
/// separator never reaches the proxy either, whoever decodes it).
#[inline]
pub(crate) fn is_safe_token(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_TARGET_LEN
        && v.iter().all(|&b| {
            (0x21..=0x7e).contains(&b) && !matches!(b, b';' | b',' | b'=' | b'"' | b'\\' | b'%')
        })
}

/// An RFC 9110 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An RFC 9110 token: one or more `tchar`.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

#[inline]
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

#[inline]
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if !is_ows(*first) {
            break;
        }
        v = rest;
    }
    while let [rest @ .., last] = v {
        if !is_ows(*last) {
            break;
        }
        v = rest;
    }
    v
}

/// Finds `name=` at cookie-pair boundaries in one `Cookie` header value.
///
/// Built once from the cookie name. The search itself is a SIMD substring
/// scan, then a check that the match starts a cookie pair (start of the
/// field, or `;` and optional whitespace before it), so `xname=` and a value
/// that merely contains `name=` never match.
#[derive(Clone, Debug)]
pub(crate) struct CookieScanner {
    needle: memchr::memmem::Finder<'static>,
    len: usize,
    name: String,
}

impl CookieScanner {
    pub(crate) fn new(name: &str) -> Self {
        let mut needle = name.as_bytes().to_vec();
        needle.push(b'=');
        let len = needle.len();
        Self {
            needle: memchr::memmem::Finder::new(&needle).into_owned(),
            len,
            name: name.to_owned(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Calls `each` with the raw value of every pair named like ours in
    /// `field`, in order, until it returns `true` (stop). A value that is
    /// exactly `likely` (this Machine's ID, the common case) is taken
    /// without searching for its end.
    ///
    /// `each` must stop at `likely` (it settles the scan whatever else the
    /// field holds): a pair `name=likely` at either end of the field is
    /// then offered first, before any search. User agents send cookies of
    /// one path oldest first (RFC 6265, 5.4), so a pin set on a first visit
    /// tends to lead; the other end catches a pin sent last (as in the
    /// benchmarks' request). A pin in the middle costs the search.
    #[inline]
    pub(crate) fn scan<'a>(
        &self,
        field: &'a [u8],
        likely: &[u8],
        each: &mut impl FnMut(&'a [u8]) -> bool,
    ) -> bool {
        if let Some(v) = self.likely_at_an_end(field, likely)
            && each(v)
        {
            return true;
        }
        let mut from = 0;
        while let Some(found) = self.needle.find(&field[from..]) {
            let start = from + found;
            from = start + 1;
            if !starts_pair(field, start) {
                continue;
            }
            let value_start = start + self.len;
            let rest = &field[value_start..];
            if !likely.is_empty()
                && rest.len() >= likely.len()
                && matches!(rest.get(likely.len()), None | Some(b';'))
                && same_bytes(&rest[..likely.len()], likely)
            {
                if each(&rest[..likely.len()]) {
                    return true;
                }
                from = value_start + likely.len();
                continue;
            }
            // Values are short: a plain loop beats memchr's set-up.
            let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
            if each(trim_ows(&rest[..end])) {
                return true;
            }
            from = value_start + end;
        }
        false
    }

    /// `likely`, borrowed from `field`, when `field` starts with the pair
    /// `name=likely` (then `;` or the end) or ends with it (after `;` and
    /// optional whitespace, or alone): pairs the full scan would yield with
    /// exactly this value.
    // Always: the Stick path's one call; left out of line (rocket's build
    // does), it costs twice as much.
    #[inline(always)]
    pub(crate) fn likely_at_an_end<'a>(&self, field: &'a [u8], likely: &[u8]) -> Option<&'a [u8]> {
        let n = self.len;
        let pair = n + likely.len();
        if likely.is_empty() || field.len() < pair {
            return None;
        }
        let named = |at: usize| same_prefix(&field[at..at + n], self.name.as_bytes());
        // First: `name=likely`, then `;` or the end.
        if matches!(field.get(pair), None | Some(b';'))
            && same_bytes(&field[n..pair], likely)
            && named(0)
        {
            return Some(&field[n..pair]);
        }
        // Last: `; name=likely` (a field of one pair was caught above).
        let at = field.len() - pair;
        if at > 0 && same_bytes(&field[at + n..], likely) && named(at) && starts_pair(field, at) {
            return Some(&field[at + n..]);
        }
        None
    }
}

/// The pair `name=id` naming this Machine, rendered once, for the
/// Stick path's look at both ends of a `Cookie` field: the same answer as
/// [`CookieScanner::likely_at_an_end`] with `id`, in whole-word compares.
#[derive(Clone, Debug)]
pub(crate) struct PinPair {
    pair: Box<[u8]>,
    /// Where the ID starts in `pair`.
    value_at: usize,
}

impl PinPair {
    pub(crate) fn new(name: &str, id: &str) -> Self {
        let mut pair = Vec::with_capacity(name.len() + 1 + id.len());
        pair.extend_from_slice(name.as_bytes());
        pair.push(b'=');
        pair.extend_from_slice(id.as_bytes());
        Self {
            value_at: name.len() + 1,
            pair: pair.into_boxed_slice(),
        }
    }

    /// The ID, borrowed from `field`, when `field` starts with the pair
    /// (then `;` or the end) or ends with it after a pair boundary.
    #[inline(always)]
    pub(crate) fn at_an_end<'a>(&self, field: &'a [u8]) -> Option<&'a [u8]> {
        let n = self.pair.len();
        if self.value_at == n || field.len() < n {
            return None;
        }
        let at = field.len() - n;
        // `; ` before the pair, as every user agent joins pairs, is tested
        // first; any other whitespace walks back.
        if at > 0
            && same_words(&field[at..], &self.pair)
            && (field[..at].ends_with(b"; ") || starts_pair(field, at))
        {
            return Some(&field[at + self.value_at..]);
        }
        if matches!(field.get(n), None | Some(b';')) && same_words(&field[..n], &self.pair) {
            return Some(&field[self.value_at..n]);
        }
        None
    }
}

/// `a == b` 8 bytes at a time (the last word overlapping), for the pin
/// pair of about 30 bytes.
#[inline]
fn same_words(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a == b;
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    let mut i = 0;
    while i + 8 < n {
        if word(a, i) != word(b, i) {
            return false;
        }
        i += 8;
    }
    word(a, n - 8) == word(b, n - 8)
}

/// Whether `s` is `name` followed by `=` (`s` is one byte longer).
#[inline]
fn same_prefix(s: &[u8], name: &[u8]) -> bool {
    s.len() == name.len() + 1 && s[name.len()] == b'=' && same_bytes(&s[..name.len()], name)
}

/// `a == b` for the short IDs compared on every request, without a call
/// to `memcmp`: 8 bytes at a time.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    let half = |s: &[u8], at: usize| {
        let mut w = [0; 4];
        w.copy_from_slice(&s[at..at + 4]);
        u32::from_ne_bytes(w)
    };
    match a.len() {
        // Two overlapping words cover 8 to 16 bytes (Machine IDs are 14).
        n @ 8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        // And two half words 4 to 7 (header names such as `cookie`).
        n @ 4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        17.. => same_words(a, b),
        _ => a == b,
    }
}

/// Whether position `at` in a `Cookie` field begins a cookie pair.
#[inline]
fn starts_pair(field: &[u8], at: usize) -> bool {
    let mut i = at;
    while i > 0 && is_ows(field[i - 1]) {
        i -= 1;
    }
    i == 0 || field[i - 1] == b';'
}

/// Calls `each` with the raw value of every `name=value` pair of a query
/// string, in order, until it returns `true`. No percent-decoding: an encoded
/// value simply fails validation.
#[inline]
pub(crate) fn scan_query<'a>(
    query: &'a str,
    name: &str,
    each: &mut impl FnMut(&'a [u8]) -> bool,
) -> bool {
    for pair in query.as_bytes().split(|&b| b == b'&') {
        if let Some(value) = pair
            .strip_prefix(name.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
            && each(value)
        {
            return true;
        }
    }
    false
}

/// Trims optional whitespace around a header value.
#[inline]
pub(crate) fn header_value(v: &[u8]) -> &[u8] {
    trim_ows(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(scanner: &CookieScanner, field: &str) -> Vec<String> {
        let mut out = Vec::new();
        scanner.scan(field.as_bytes(), b"", &mut |v| {
            out.push(String::from_utf8_lossy(v).into_owned());
            false
        });
        out
    }

    #[test]
    fn cookie_scan_finds_pairs_only_at_boundaries() {
        let s = CookieScanner::new("fly-machine-id");
        assert_eq!(all(&s, "fly-machine-id=abc"), ["abc"]);
        assert_eq!(all(&s, "a=1; fly-machine-id=abc; b=2"), ["abc"]);
        assert_eq!(all(&s, "a=1;fly-machine-id=abc"), ["abc"]);
        assert_eq!(all(&s, "a=1;\t fly-machine-id= abc ;b"), ["abc"]);
        assert_eq!(all(&s, "xfly-machine-id=abc"), Vec::<String>::new());
        assert_eq!(all(&s, "a=x fly-machine-id=abc"), Vec::<String>::new());
        assert_eq!(all(&s, "a=fly-machine-id=abc"), Vec::<String>::new());
        assert_eq!(all(&s, "fly-machine-id=1; fly-machine-id=2"), ["1", "2"]);
        assert_eq!(all(&s, "fly-machine-id"), Vec::<String>::new());
        assert_eq!(all(&s, "fly-machine-id="), [""]);
    }

    /// Cookie fields around this Machine's ID (`148ed599c14189`): at either
    /// end, inside, near-misses of the name, the value and the boundary.
    const FIELDS: &[&str] = &[
        "fly-machine-id=148ed599c14189",
        "a=1; fly-machine-id=148ed599c14189; b=2",
        "a=1; fly-machine-id=148ed599c14189",
        "a=1;fly-machine-id=148ed599c14189",
        "a=1;\t fly-machine-id=148ed599c14189",
        "a=1 fly-machine-id=148ed599c14189",
        "a=fly-machine-id=148ed599c14189",
        "a=1; xfly-machine-id=148ed599c14189",
        "a=1; fly-machine-id=x148ed599c14189",
        "a=1; fly-machine-iq=148ed599c14189",
        "a=1; fly-machine-id:148ed599c14189",
        "fly-machine-id=90801679a10038; fly-machine-id=148ed599c14189",
        "fly-machine-id=148ed599c14189;fly-machine-id=90801679a10038",
        "fly-machine-id=148ed599c14189x",
        "fly-machine-id=148ed599c14189 x; b=2",
        "fly-machine-id=148ed599c14189 ;b",
        "fly-machine-id=148ed599c14189;",
        "fly-machine-id=148ed599c1418",
        "fly-machine-id=148ed599c14189148ed599c14189",
        "xfly-machine-id=148ed599c14189",
        "fly-machine-id=",
        "=148ed599c14189",
        "148ed599c14189",
        "",
        "a=1; fly-machine-id=048ed599c14189",
        "a=1; fly-machine-id=148ed599c14188",
        "fly-machine-id=148ed599c14189; b=2",
        "fly-machine-id=148ed599c14189 ",
        "fly-machine-id=90801679a10038",
    ];

    /// The shortcuts for a value that is this Machine's ID (at either end
    /// of the field, or anywhere without searching for its end) settle the
    /// scan exactly when the full scan finds that value, and change nothing
    /// when it does not, on every field shape around it. `each` stops at
    /// the ID, as the engine's does.
    #[test]
    fn the_likely_value_shortcuts_agree_with_the_scan() {
        let s = CookieScanner::new("fly-machine-id");
        let me = "148ed599c14189";
        let run = |field: &str, likely: &str| {
            let mut out = Vec::new();
            let settled = s.scan(field.as_bytes(), likely.as_bytes(), &mut |v| {
                out.push(String::from_utf8_lossy(v).into_owned());
                v == me.as_bytes()
            });
            (settled, out)
        };
        for &field in FIELDS {
            let (fast_settled, fast) = run(field, me);
            let (settled, full) = run(field, "");
            assert_eq!(fast_settled, settled, "{field:?}");
            assert_eq!(settled, full.iter().any(|v| v == me), "{field:?}");
            if settled {
                assert_eq!(fast.last().map(String::as_str), Some(me), "{field:?}");
            } else {
                assert_eq!(fast, full, "{field:?}");
            }
        }
    }

    /// The rendered pair answers as the scanner's shortcut does.
    #[test]
    fn the_pin_pair_agrees_with_the_shortcut() {
        let s = CookieScanner::new("fly-machine-id");
        let me = "148ed599c14189";
        let pair = PinPair::new("fly-machine-id", me);
        for &field in FIELDS {
            assert_eq!(
                pair.at_an_end(field.as_bytes()),
                s.likely_at_an_end(field.as_bytes(), me.as_bytes()),
                "{field:?}"
            );
        }
        for (a, b) in [
            ("", ""),
            ("a", "a"),
            ("a", "b"),
            ("0123456789abcdefXYZ", "0123456789abcdefXYZ"),
            ("0123456789abcdefXYZ", "0123456789abcdeeXYZ"),
            ("0123456789abcdefXYZ", "0123456789abcdefXYY"),
        ] {
            assert_eq!(
                same_words(a.as_bytes(), b.as_bytes()),
                a == b,
                "{a:?} {b:?}"
            );
        }
    }

    #[test]
    fn same_bytes_is_equality() {
        let ids = [
            "",
            "a",
            "abc",
            "abd",
            "abcd",
            "abcx",
            "xbcd",
            "cookie",
            "cooxie",
            "cookix",
            "1234567",
            "1234x67",
            "12345678",
            "148ed599c14189",
            "148ed599c14188",
            "0123456789abcdef",
            "0123456789abcdef0",
            "0123456789abcdefx",
            "x-forwarded-proto",
            "x-forwarded-prota",
        ];
        for a in ids {
            for b in ids {
                assert_eq!(
                    same_bytes(a.as_bytes(), b.as_bytes()),
                    a == b,
                    "{a:?} {b:?}"
                );
            }
        }
        assert!(!same_bytes(b"148ed599c14189", b"048ed599c14189"));
        assert!(!same_bytes(b"148ed599c14189", b"148ed599d14189"));
    }

    #[test]
    fn query_scan_is_exact_and_raw() {
        let mut out = Vec::new();
        scan_query(
            "a=1&fly_instance_id=x%3B&xfly_instance_id=y&fly_instance_id=z",
            "fly_instance_id",
            &mut |v| {
                out.push(v.to_vec());
                false
            },
        );
        assert_eq!(out, [b"x%3B".to_vec(), b"z".to_vec()]);
    }

    #[test]
    fn safe_token_rule() {
        for bad in [
            "", "a;b", "a,b", "a=b", "a\"b", "a b", "a\tb", "a\rb", "a\\b", "é", "a%3Bb",
        ] {
            assert!(!is_safe_token(bad.as_bytes()), "{bad:?}");
        }
        assert!(!is_safe_token(&[b'a'; MAX_TARGET_LEN + 1]));
        assert!(is_safe_token(b"local-1_A.b"));
    }
}
