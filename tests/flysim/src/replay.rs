//! Strict parsing of replay instructions: the `fly-replay` response header and the
//! `application/vnd.fly.replay+json` response body.
//!
//! Fly's proxy rejects an invalid instruction with error PA03 ("Invalid fly-replay").
//! flysim is deliberately strict so that a middleware that emits a sloppy header is
//! caught locally: fields are `key=value` joined by `;`, with no whitespace anywhere,
//! known keys only, no duplicates, no empty values, and a comma only inside a
//! double-quoted value. The functions here are public so that other test code can
//! check a header exactly the way the simulated proxy will.
//!
//! ```
//! use flysim::replay::{parse_header, Fallback};
//!
//! let d = parse_header("instance=148ed599c14189;timeout=800ms;fallback=prefer_self").unwrap();
//! assert_eq!(d.instance.as_deref(), Some("148ed599c14189"));
//! assert_eq!(d.fallback, Some(Fallback::PreferSelf));
//!
//! let err = parse_header("instance=148ed599c14189; state=x").unwrap_err();
//! assert!(err.to_string().contains("whitespace"));
//! ```

use std::fmt;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use serde_json::Value;

/// The content type that marks a response body as a JSON replay instruction.
pub const JSON_CONTENT_TYPE: &str = "application/vnd.fly.replay+json";

/// A parsed, validated replay instruction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayDirective {
    /// `region=`: region codes or aliases, in the order given.
    pub region: Option<Vec<String>>,
    /// `instance=`: strict target Machine.
    pub instance: Option<String>,
    /// `prefer_instance=`: preferred target Machine.
    pub prefer_instance: Option<String>,
    /// `app=`: target app.
    pub app: Option<String>,
    /// `state=`: opaque string echoed in `fly-replay-src`.
    pub state: Option<String>,
    /// `elsewhere=true`: leave the replaying Machine out of the next pick.
    pub elsewhere: bool,
    /// `timeout=`: how long to try to reach the target.
    pub timeout: Option<Duration>,
    /// `fallback=`: where the request goes if the replay fails.
    pub fallback: Option<Fallback>,
    /// JSON form only: changes applied to the replayed request.
    pub transform: Option<Transform>,
}

/// The `fallback` field of a replay instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `force_self`: back to the replaying Machine, or an error if it is gone.
    ForceSelf,
    /// `prefer_self`: back to the replaying Machine, or to any Machine of the app.
    PreferSelf,
}

impl Fallback {
    /// The wire spelling (`force_self` / `prefer_self`).
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::ForceSelf => "force_self",
            Fallback::PreferSelf => "prefer_self",
        }
    }
}

/// The `transform` object of the JSON form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transform {
    /// New path and query for the replayed request.
    pub path: Option<PathAndQuery>,
    /// Request headers removed before replaying.
    pub delete_headers: Vec<HeaderName>,
    /// Request headers set (overwriting any of the same name) before replaying.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Transform {
    /// Applies the header part of the transform to `headers`: deletions first, then sets.
    pub fn apply_headers(&self, headers: &mut http::HeaderMap) {
        for name in &self.delete_headers {
            headers.remove(name);
        }
        for (name, value) in &self.set_headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Why a replay instruction was rejected (the text after "Invalid fly-replay: ").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayError {
    problem: String,
}

impl ReplayError {
    pub(crate) fn new(problem: impl Into<String>) -> Self {
        ReplayError {
            problem: problem.into(),
        }
    }

    /// The problem, e.g. `unknown field "foo"`.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem)
    }
}

impl std::error::Error for ReplayError {}

/// Whether `s` is a valid Machine ID: exactly 14 lowercase hex characters.
pub fn is_machine_id(s: &str) -> bool {
    s.len() == 14 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `s` looks like a Fly app name: lowercase letters, digits and dashes, not
/// starting with a dash, at most 63 characters.
pub fn is_app_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses a duration as Fly documents it (`800ms`, `10s`), also accepting minutes
/// (`1m`) and a bare integer meaning milliseconds (`1500`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let digits_end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    if digits_end == 0 {
        return None;
    }
    let n: u64 = s[..digits_end].parse().ok()?;
    match &s[digits_end..] {
        "" | "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

/// Parses the value of a `fly-replay` response header.
pub fn parse_header(value: &str) -> Result<ReplayDirective, ReplayError> {
    parse_header_bytes(value.as_bytes())
}

/// Parses the raw bytes of a `fly-replay` response header.
pub fn parse_header_bytes(raw: &[u8]) -> Result<ReplayDirective, ReplayError> {
    if raw.is_empty() {
        return Err(ReplayError::new("empty header"));
    }
    if let Some(b) = raw
        .iter()
        .find(|b| **b >= 0x7f || (**b < 0x20 && **b != b'\t'))
    {
        return Err(ReplayError::new(format!(
            "control or non-ASCII byte 0x{b:02x} is not allowed"
        )));
    }
    // Only ASCII from here on.
    let s = std::str::from_utf8(raw).map_err(|_| ReplayError::new("not valid ASCII"))?;
    let fields = tokenize(s)?;
    let mut seen: Vec<&str> = Vec::new();
    let mut d = ReplayDirective::default();
    for (key, value) in fields {
        if seen.contains(&key) {
            return Err(ReplayError::new(format!("duplicate field \"{key}\"")));
        }
        seen.push(key);
        apply_field(&mut d, key, value)?;
    }
    check_combination(&d)?;
    Ok(d)
}

/// Splits the header into `(key, value)` pairs, enforcing the lexical rules.
fn tokenize(s: &str) -> Result<Vec<(&str, &str)>, ReplayError> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        // key
        let key_start = pos;
        while pos < bytes.len() && !matches!(bytes[pos], b'=' | b';') {
            check_unquoted_byte(bytes[pos])?;
            pos += 1;
        }
        let key = &s[key_start..pos];
        if pos == bytes.len() || bytes[pos] == b';' {
            if key.is_empty() {
                return Err(ReplayError::new(if out.is_empty() && pos == bytes.len() {
                    "empty header".to_owned()
                } else if pos == bytes.len() {
                    "empty field after a trailing ';'".to_owned()
                } else {
                    "empty field between ';' separators".to_owned()
                }));
            }
            return Err(ReplayError::new(format!(
                "field \"{key}\" has no value (expected key=value)"
            )));
        }
        if key.is_empty() {
            return Err(ReplayError::new("a field has an empty name"));
        }
        pos += 1; // '='
        // value
        let value;
        if pos < bytes.len() && bytes[pos] == b'"' {
            let open = pos;
            pos += 1;
            let content_start = pos;
            while pos < bytes.len() && bytes[pos] != b'"' {
                if matches!(bytes[pos], b' ' | b'\t') {
                    return Err(ReplayError::new("whitespace is not allowed"));
                }
                pos += 1;
            }
            if pos == bytes.len() {
                return Err(ReplayError::new(format!(
                    "unterminated quoted value in field \"{key}\" (opened at byte {open})"
                )));
            }
            value = &s[content_start..pos];
            pos += 1; // closing quote
            if pos < bytes.len() && bytes[pos] != b';' {
                return Err(ReplayError::new(format!(
                    "unexpected character '{}' after the quoted value of field \"{key}\"",
                    bytes[pos] as char
                )));
            }
        } else {
            let start = pos;
            while pos < bytes.len() && bytes[pos] != b';' {
                check_unquoted_byte(bytes[pos])?;
                pos += 1;
            }
            value = &s[start..pos];
        }
        if value.is_empty() {
            return Err(ReplayError::new(format!(
                "field \"{key}\" has an empty value"
            )));
        }
        out.push((key, value));
        if pos == bytes.len() {
            return Ok(out);
        }
        pos += 1; // ';'
        if pos == bytes.len() {
            return Err(ReplayError::new("empty field after a trailing ';'"));
        }
    }
}

fn check_unquoted_byte(b: u8) -> Result<(), ReplayError> {
    match b {
        b' ' | b'\t' => Err(ReplayError::new("whitespace is not allowed")),
        b',' => Err(ReplayError::new(
            "a comma is only allowed inside a double-quoted value",
        )),
        b'"' => Err(ReplayError::new(
            "a double quote may only enclose a whole value",
        )),
        _ => Ok(()),
    }
}

/// Validates one field and stores it in `d`. Shared by the header and JSON forms
/// for the string-valued fields.
fn apply_field(d: &mut ReplayDirective, key: &str, value: &str) -> Result<(), ReplayError> {
    match key {
        "region" => d.region = Some(parse_regions(value)?),
        "instance" => d.instance = Some(machine_id_field(key, value)?),
        "prefer_instance" => d.prefer_instance = Some(machine_id_field(key, value)?),
        "app" => {
            if !is_app_name(value) {
                return Err(ReplayError::new(format!(
                    "invalid app name \"{value}\" in field \"app\""
                )));
            }
            d.app = Some(value.to_owned());
        }
        "state" => {
            if value.is_empty() {
                return Err(ReplayError::new("field \"state\" has an empty value"));
            }
            d.state = Some(value.to_owned());
        }
        "elsewhere" => {
            d.elsewhere = match value {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ReplayError::new(format!(
                        "field \"elsewhere\" must be true or false, not \"{value}\""
                    )));
                }
            }
        }
        "timeout" => {
            d.timeout = Some(parse_duration(value).ok_or_else(|| {
                ReplayError::new(format!(
                    "invalid duration \"{value}\" in field \"timeout\" (expected e.g. 800ms or 10s)"
                ))
            })?)
        }
        "fallback" => {
            d.fallback = Some(match value {
                "force_self" => Fallback::ForceSelf,
                "prefer_self" => Fallback::PreferSelf,
                _ => {
                    return Err(ReplayError::new(format!(
                        "field \"fallback\" must be force_self or prefer_self, not \"{value}\""
                    )));
                }
            })
        }
        _ => return Err(ReplayError::new(format!("unknown field \"{key}\""))),
    }
    Ok(())
}

fn machine_id_field(key: &str, value: &str) -> Result<String, ReplayError> {
    if is_machine_id(value) {
        Ok(value.to_owned())
    } else {
        Err(ReplayError::new(format!(
            "invalid Machine ID \"{value}\" in field \"{key}\" (expected 14 lowercase hex characters)"
        )))
    }
}

fn parse_regions(value: &str) -> Result<Vec<String>, ReplayError> {
    value
        .split(',')
        .map(|r| {
            if crate::regions::is_valid(r) {
                Ok(r.to_owned())
            } else if r.is_empty() {
                Err(ReplayError::new("empty region in field \"region\""))
            } else {
                Err(ReplayError::new(format!(
                    "invalid region \"{r}\" in field \"region\" (expected a 3-letter code or an alias such as any)"
                )))
            }
        })
        .collect()
}

fn check_combination(d: &ReplayDirective) -> Result<(), ReplayError> {
    if d.instance.is_some() && d.prefer_instance.is_some() {
        return Err(ReplayError::new(
            "fields \"instance\" and \"prefer_instance\" cannot be combined",
        ));
    }
    Ok(())
}

/// Parses the body of an `application/vnd.fly.replay+json` response.
pub fn parse_json(body: &[u8]) -> Result<ReplayDirective, ReplayError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ReplayError::new(format!("malformed JSON ({e})")))?;
    let Value::Object(map) = value else {
        return Err(ReplayError::new("the JSON body must be an object"));
    };
    let mut d = ReplayDirective::default();
    for (key, v) in &map {
        match key.as_str() {
            "region" | "instance" | "prefer_instance" | "app" | "state" | "fallback" => {
                let s = json_str(key, v)?;
                if s.is_empty() {
                    return Err(ReplayError::new(format!(
                        "field \"{key}\" has an empty value"
                    )));
                }
                if key != "state" {
                    // Same lexical rules as the header, except that a region list
                    // needs no quotes in JSON.
                    if let Some(c) = s
                        .chars()
                        .find(|c| c.is_whitespace() || c.is_control() || *c == '"' || *c == ';')
                    {
                        return Err(ReplayError::new(format!(
                            "character {c:?} is not allowed in field \"{key}\""
                        )));
                    }
                }
                apply_field(&mut d, key, s)?;
            }
            "elsewhere" => match v {
                Value::Bool(b) => d.elsewhere = *b,
                _ => return Err(type_error(key, "a boolean")),
            },
            "timeout" => match v {
                Value::String(s) => apply_field(&mut d, key, s)?,
                Value::Number(n) => {
                    let ms = n.as_u64().ok_or_else(|| type_error(key, "a duration"))?;
                    d.timeout = Some(Duration::from_millis(ms));
                }
                _ => return Err(type_error(key, "a duration string such as \"10s\"")),
            },
            "transform" => d.transform = Some(parse_transform(v)?),
            "cache" => check_cache(v)?,
            "allow_bypass" => {
                if !v.is_boolean() {
                    return Err(type_error(key, "a boolean"));
                }
            }
            _ => return Err(ReplayError::new(format!("unknown field \"{key}\""))),
        }
    }
    check_combination(&d)?;
    Ok(d)
}

fn json_str<'a>(key: &str, v: &'a Value) -> Result<&'a str, ReplayError> {
    v.as_str().ok_or_else(|| type_error(key, "a string"))
}

fn type_error(key: &str, expected: &str) -> ReplayError {
    ReplayError::new(format!("field \"{key}\" must be {expected}"))
}

fn parse_transform(v: &Value) -> Result<Transform, ReplayError> {
    let Value::Object(map) = v else {
        return Err(type_error("transform", "an object"));
    };
    let mut t = Transform::default();
    for (key, v) in map {
        match key.as_str() {
            "path" => {
                let s = json_str("transform.path", v)?;
                let pq = s
                    .parse::<PathAndQuery>()
                    .ok()
                    .filter(|_| s.starts_with('/'))
                    .ok_or_else(|| {
                        ReplayError::new(format!(
                            "invalid path \"{s}\" in field \"transform.path\" (expected /path?query)"
                        ))
                    })?;
                t.path = Some(pq);
            }
            "delete_headers" => {
                let Value::Array(items) = v else {
                    return Err(type_error(
                        "transform.delete_headers",
                        "an array of strings",
                    ));
                };
                for item in items {
                    let name = json_str("transform.delete_headers", item)?;
                    t.delete_headers.push(header_name(name)?);
                }
            }
            "set_headers" => {
                let Value::Array(items) = v else {
                    return Err(type_error("transform.set_headers", "an array of objects"));
                };
                for item in items {
                    let Value::Object(entry) = item else {
                        return Err(type_error(
                            "transform.set_headers",
                            "an array of {\"name\", \"value\"} objects",
                        ));
                    };
                    if let Some(k) = entry.keys().find(|k| *k != "name" && *k != "value") {
                        return Err(ReplayError::new(format!(
                            "unknown field \"{k}\" in transform.set_headers"
                        )));
                    }
                    let name = entry
                        .get("name")
                        .ok_or_else(|| {
                            ReplayError::new("transform.set_headers entry without \"name\"")
                        })
                        .and_then(|n| json_str("transform.set_headers.name", n))?;
                    let value = entry
                        .get("value")
                        .ok_or_else(|| {
                            ReplayError::new("transform.set_headers entry without \"value\"")
                        })
                        .and_then(|n| json_str("transform.set_headers.value", n))?;
                    let value = HeaderValue::from_str(value).map_err(|_| {
                        ReplayError::new(format!(
                            "invalid header value {value:?} in transform.set_headers"
                        ))
                    })?;
                    t.set_headers.push((header_name(name)?, value));
                }
            }
            _ => {
                return Err(ReplayError::new(format!(
                    "unknown field \"{key}\" in transform"
                )));
            }
        }
    }
    Ok(t)
}

fn header_name(name: &str) -> Result<HeaderName, ReplayError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| ReplayError::new(format!("invalid header name {name:?} in transform")))
}

fn check_cache(v: &Value) -> Result<(), ReplayError> {
    let Value::Object(map) = v else {
        return Err(type_error("cache", "an object"));
    };
    for (key, v) in map {
        let ok = match key.as_str() {
            "prefix" => v.is_string(),
            "ttl" => v.is_u64(),
            "invalidate" | "allow_bypass" => v.is_boolean(),
            _ => {
                return Err(ReplayError::new(format!(
                    "unknown field \"{key}\" in cache"
                )));
            }
        };
        if !ok {
            return Err(ReplayError::new(format!(
                "field \"cache.{key}\" has the wrong type"
            )));
        }
    }
    Ok(())
}

/// Quotes a header value for an error message: printable ASCII as is, anything else
/// escaped, and long values shortened.
pub(crate) fn quote_for_message(raw: &[u8]) -> String {
    const MAX: usize = 300;
    let mut out = String::with_capacity(raw.len().min(MAX) + 2);
    out.push('"');
    for &b in raw.iter().take(MAX) {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if raw.len() > MAX {
        out.push_str("...");
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "148ed599c14189";

    #[test]
    fn accepts_documented_forms() {
        let d = parse_header(&format!("instance={ID}")).unwrap();
        assert_eq!(d.instance.as_deref(), Some(ID));
        let d = parse_header("region=\"sjc,any\";app=target-app").unwrap();
        assert_eq!(d.region, Some(vec!["sjc".to_owned(), "any".to_owned()]));
        assert_eq!(d.app.as_deref(), Some("target-app"));
        let d = parse_header("app=my-worker;timeout=10s;fallback=force_self").unwrap();
        assert_eq!(d.timeout, Some(Duration::from_secs(10)));
        assert_eq!(d.fallback, Some(Fallback::ForceSelf));
        let d = parse_header("elsewhere=true").unwrap();
        assert!(d.elsewhere);
        let d = parse_header(&format!("prefer_instance={ID};state=abc=;timeout=1500")).unwrap();
        assert_eq!(d.state.as_deref(), Some("abc="));
        assert_eq!(d.timeout, Some(Duration::from_millis(1500)));
        let d = parse_header("state=\"a,b\"").unwrap();
        assert_eq!(d.state.as_deref(), Some("a,b"));
    }

    #[test]
    fn rejects_malformed_headers() {
        let cases: &[(&str, &str)] = &[
            ("", "empty header"),
            ("instance=148ed599c14189;", "trailing ';'"),
            ("instance=148ed599c14189;;state=a", "empty field"),
            ("instance=148ed599c14189; state=a", "whitespace"),
            ("instance = 148ed599c14189", "whitespace"),
            ("instance=148ed599c14189,state=a", "comma"),
            ("region=sjc,any", "comma"),
            ("foo=1", "unknown field \"foo\""),
            ("Instance=148ed599c14189", "unknown field \"Instance\""),
            ("instance", "has no value"),
            ("instance=", "empty value"),
            ("=abc", "empty name"),
            ("instance=148ED599C14189", "invalid Machine ID"),
            ("instance=148ed599c1418", "invalid Machine ID"),
            ("prefer_instance=x;app=other", "invalid Machine ID"),
            ("state=a;state=b", "duplicate field \"state\""),
            ("elsewhere=yes", "true or false"),
            ("timeout=10 s", "whitespace"),
            ("timeout=1.5s", "invalid duration"),
            ("timeout=10h", "invalid duration"),
            ("fallback=self", "force_self or prefer_self"),
            ("region=\"sjc,any", "unterminated"),
            ("region=\"sjc\"x", "after the quoted value"),
            ("state=a\"b", "double quote"),
            ("region=SJC", "invalid region"),
            ("region=\"sjc,,any\"", "empty region"),
            ("app=Bad_App", "invalid app name"),
            (
                "instance=148ed599c14189;prefer_instance=148ed599c14189",
                "cannot be combined",
            ),
        ];
        for (header, needle) in cases {
            let err = parse_header(header).expect_err(header);
            assert!(
                err.problem().contains(needle),
                "{header:?}: {err} does not contain {needle:?}"
            );
        }
        assert!(parse_header_bytes(b"state=\xff").is_err());
        assert!(parse_header_bytes(b"state=a\x01").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("800ms"), Some(Duration::from_millis(800)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("99999999999999999999999s"), None);
    }

    #[test]
    fn json_form() {
        let d = parse_json(
            br#"{"instance":"148ed599c14189","timeout":"30s","fallback":"force_self",
                "transform":{"path":"/new?x=1","delete_headers":["cookie"],
                "set_headers":[{"name":"x-a","value":"b"}]},"cache":{"ttl":10}}"#,
        )
        .unwrap();
        assert_eq!(d.instance.as_deref(), Some(ID));
        let t = d.transform.unwrap();
        assert_eq!(t.path.unwrap().as_str(), "/new?x=1");
        assert_eq!(t.delete_headers, vec![HeaderName::from_static("cookie")]);
        let d = parse_json(br#"{"region":"iad,us","elsewhere":true,"timeout":500}"#).unwrap();
        assert_eq!(d.region.unwrap().len(), 2);
        assert_eq!(d.timeout, Some(Duration::from_millis(500)));

        for (body, needle) in [
            (&b"{"[..], "malformed JSON"),
            (b"[]", "must be an object"),
            (br#"{"foo":1}"#, "unknown field \"foo\""),
            (br#"{"instance":5}"#, "must be a string"),
            (br#"{"instance":"zz"}"#, "invalid Machine ID"),
            (br#"{"elsewhere":"true"}"#, "boolean"),
            (br#"{"transform":{"path":"nope"}}"#, "invalid path"),
            (
                br#"{"transform":{"set_headers":[{"name":"a b","value":"c"}]}}"#,
                "header name",
            ),
            (br#"{"cache":{"ttl":"x"}}"#, "wrong type"),
        ] {
            let err = parse_json(body).expect_err(std::str::from_utf8(body).unwrap());
            assert!(err.problem().contains(needle), "{err} !~ {needle}");
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let alphabet: &[u8] =
            b"=;,\" \t\x00\xffinstance_prefer0123456789abcdefregionstatetimeoutfallbackms";
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let _ = parse_header_bytes(&bytes);
            let _ = parse_json(&bytes);
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_for_message(b"a\"b\x01"), "\"a\\\"b\\x01\"");
    }
}
