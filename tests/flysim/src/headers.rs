//! The headers Fly's proxy reads and adds: names, the forwarded headers of
//! every delivery, hop-by-hop stripping and request IDs.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use rand::Rng;

use crate::Config;

/// The replay instruction a Machine answers with.
pub(crate) const FLY_REPLAY: &str = "fly-replay";
/// Added to a replayed request: who replayed it, when, and its `state`.
pub(crate) const FLY_REPLAY_SRC: HeaderName = HeaderName::from_static("fly-replay-src");
/// Added to the fallback request after a failed replay.
pub(crate) const FLY_REPLAY_FAILED: HeaderName = HeaderName::from_static("fly-replay-failed");
/// Added when a preferred Machine could not be used.
pub(crate) const PREFERRED_UNAVAILABLE: HeaderName =
    HeaderName::from_static("fly-preferred-instance-unavailable");
/// Client routing header: exactly this Machine.
pub(crate) const FORCE_INSTANCE: &str = "fly-force-instance-id";
/// Client routing header: this Machine if possible.
pub(crate) const PREFER_INSTANCE: &str = "fly-prefer-instance-id";
/// The error code on the proxy's own error responses.
pub(crate) const FLY_ERROR: HeaderName = HeaderName::from_static("fly-error");
/// The request ID, on the request and on its response.
pub(crate) const FLY_REQUEST_ID: HeaderName = HeaderName::from_static("fly-request-id");

/// What the front server knows about a client connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) local_port: u16,
}

/// A header value from text (`invalid` if it cannot be one).
pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_bytes(s.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Now, in microseconds since the Unix epoch (the `t` of `fly-replay-src`).
pub(crate) fn micros_since_epoch() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// A Fly-style request ID: 26 characters of a ULID, a dash, the edge region.
pub(crate) fn new_request_id(region: &str) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut out = String::with_capacity(27 + region.len());
    for i in (0..10).rev() {
        out.push(ALPHABET[((ms >> (i * 5)) & 31) as usize] as char);
    }
    let mut rng = rand::rng();
    for _ in 0..16 {
        out.push(ALPHABET[rng.random_range(0..32)] as char);
    }
    out.push('-');
    out.push_str(region);
    out
}

/// Whether the header value list of `name` contains `token` (comma-separated,
/// case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the request asks for a protocol upgrade (a WebSocket handshake).
pub(crate) fn is_upgrade_request(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && has_token(headers, header::CONNECTION, "upgrade")
}

/// Removes hop-by-hop headers (the standard ones and those named in `Connection`).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Joins several `Cookie` fields into one with `; `, as a request from an
/// HTTP/2 client must be before it is sent on over HTTP/1.1 (RFC 9113,
/// 8.2.3). One field, or none, is left as it is.
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, v) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// The headers every delivery of this request carries: the client's (without
/// hop-by-hop ones) plus the ones Fly's proxy adds.
pub(crate) fn forwarded_headers(
    parts: &http::request::Parts,
    conn: &ConnInfo,
    request_id: &str,
    cfg: &Config,
    is_upgrade: bool,
) -> HeaderMap {
    let mut h = parts.headers.clone();
    let upgrade = if is_upgrade {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    };
    let te_trailers = cfg.h2_backend && has_token(&h, header::TE, "trailers");
    strip_hop_by_hop(&mut h);
    if te_trailers {
        // The one TE value HTTP/2 allows (RFC 9113, 8.2.2); gRPC servers
        // may insist on it.
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if !cfg.h2_backend && parts.version == Version::HTTP_2 {
        join_cookies(&mut h);
    }
    if let Some(upgrade) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, upgrade);
    }
    h.remove(header::EXPECT);
    if !h.contains_key(header::HOST) {
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| format!("127.0.0.1:{}", conn.local_port));
        h.insert(header::HOST, header_value(&host));
    }
    let ip = conn.peer.ip().to_canonical().to_string();
    let port = cfg.forwarded_port.unwrap_or(conn.local_port).to_string();
    h.insert("fly-client-ip", header_value(&ip));
    h.insert("fly-region", header_value(&cfg.region));
    h.insert(FLY_REQUEST_ID, header_value(request_id));
    h.insert("fly-forwarded-port", header_value(&port));
    let prior: Vec<String> = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let xff = if prior.is_empty() {
        ip
    } else {
        format!("{}, {ip}", prior.join(", "))
    };
    h.insert("x-forwarded-for", header_value(&xff));
    h.insert("x-forwarded-proto", header_value(&cfg.forwarded_proto));
    h.insert("x-forwarded-port", header_value(&port));
    let ssl = if cfg.forwarded_proto.eq_ignore_ascii_case("https") {
        "on"
    } else {
        "off"
    };
    h.insert("x-forwarded-ssl", HeaderValue::from_static(ssl));
    let via = if parts.version == Version::HTTP_2 {
        "2 fly.io"
    } else {
        "1.1 fly.io"
    };
    h.append(header::VIA, HeaderValue::from_static(via));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_fly_ones() {
        let id = new_request_id("iad");
        assert_eq!(id.len(), 30);
        assert!(id.ends_with("-iad"));
        assert!(
            id[..26]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
