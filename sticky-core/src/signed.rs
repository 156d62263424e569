//! Signed cookies: `<mac><id>.<issued>.<seen>`, where `<mac>` is the `cookie`
//! crate's base64 HMAC-SHA256 of the rest, checked in constant time.

use cookie::{Cookie, CookieJar, Key};

use crate::config::ConfigError;
use crate::decision::Rejected;

/// How far in the future a timestamp may be before it is distrusted.
const MAX_SKEW_SECS: u64 = 24 * 3600;

/// Length of the base64 MAC the `cookie` crate puts before the value.
const MAC_LEN: usize = 44;

pub(crate) struct Signer {
    name: String,
    /// Newest first: the first signs, all verify.
    keys: Vec<Key>,
    max_lifetime: Option<u64>,
    idle_timeout: Option<u64>,
}

/// A cookie whose signature and lifetimes checked out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verified<'a> {
    pub(crate) id: &'a [u8],
    pub(crate) issued: u64,
    pub(crate) seen: u64,
}

impl Signer {
    pub(crate) fn new(
        name: &str,
        keys: &[Vec<u8>],
        max_lifetime: Option<u64>,
        idle_timeout: Option<u64>,
    ) -> Result<Self, ConfigError> {
        let keys = keys
            .iter()
            .map(|k| match k.len() {
                0 => Err(ConfigError::EmptySigningKey),
                n if n < 32 => Err(ConfigError::SigningKeyTooShort(n)),
                _ => Ok(Key::derive_from(k)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.to_owned(),
            keys,
            max_lifetime,
            idle_timeout,
        })
    }

    /// The signed cookie value for `id`.
    pub(crate) fn sign(&self, id: &str, issued: u64, seen: u64) -> String {
        let mut jar = CookieJar::new();
        let plain = format!("{id}.{issued}.{seen}");
        jar.signed_mut(&self.keys[0])
            .add(Cookie::new(self.name.clone(), plain));
        jar.get(&self.name)
            .map(|c| c.value().to_owned())
            .unwrap_or_default()
    }

    /// Checks a raw cookie value: signature by any key, then lifetimes.
    pub(crate) fn verify<'a>(&self, raw: &'a [u8], now: u64) -> Result<Verified<'a>, Rejected> {
        // Cheap shape checks first, so garbage costs no HMAC.
        if raw.len() <= MAC_LEN + 4 || raw.len() > MAC_LEN + 128 {
            return Err(Rejected::Signature);
        }
        let text = std::str::from_utf8(raw).map_err(|_| Rejected::Signature)?;
        let (id, issued, seen) = parse_plain(&raw[MAC_LEN..]).ok_or(Rejected::Signature)?;
        let genuine = self.keys.iter().any(|key| {
            CookieJar::new()
                .signed(key)
                .verify(Cookie::new(self.name.clone(), text.to_owned()))
                .is_some()
        });
        if !genuine {
            return Err(Rejected::Signature);
        }
        if issued > seen || seen > now.saturating_add(MAX_SKEW_SECS) {
            return Err(Rejected::Expired);
        }
        if self
            .max_lifetime
            .is_some_and(|max| now.saturating_sub(issued) > max)
            || self
                .idle_timeout
                .is_some_and(|idle| now.saturating_sub(seen) > idle)
        {
            return Err(Rejected::Expired);
        }
        Ok(Verified { id, issued, seen })
    }
}

/// Splits `id.issued.seen`.
fn parse_plain(plain: &[u8]) -> Option<(&[u8], u64, u64)> {
    let mut parts = plain.rsplitn(3, |&b| b == b'.');
    let seen = parse_u64(parts.next()?)?;
    let issued = parse_u64(parts.next()?)?;
    let id = parts.next()?;
    Some((id, issued, seen))
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-test-key";

    #[test]
    fn round_trip_and_rotation() {
        let old = Signer::new("c", &[KEY.to_vec()], None, None).unwrap();
        let value = old.sign("148ed599c14189", 10, 20);
        let v = old.verify(value.as_bytes(), 30).unwrap();
        assert_eq!((v.id, v.issued, v.seen), (&b"148ed599c14189"[..], 10, 20));

        let newer = vec![
            b"another key, at least thirty-two bytes long".to_vec(),
            KEY.to_vec(),
        ];
        let rotated = Signer::new("c", &newer, None, None).unwrap();
        assert!(
            rotated.verify(value.as_bytes(), 30).is_ok(),
            "old key still verifies"
        );
        let only_new = Signer::new("c", &newer[..1], None, None).unwrap();
        assert_eq!(
            only_new.verify(value.as_bytes(), 30).unwrap_err(),
            Rejected::Signature
        );
    }

    #[test]
    fn lifetimes() {
        let s = Signer::new("c", &[KEY.to_vec()], Some(100), Some(10)).unwrap();
        let value = s.sign("148ed599c14189", 1000, 1050);
        assert!(s.verify(value.as_bytes(), 1055).is_ok());
        assert_eq!(
            s.verify(value.as_bytes(), 1061).unwrap_err(),
            Rejected::Expired,
            "idle"
        );
        let value = s.sign("148ed599c14189", 1000, 1099);
        assert_eq!(
            s.verify(value.as_bytes(), 1101).unwrap_err(),
            Rejected::Expired,
            "max lifetime"
        );
        let future = s.sign("148ed599c14189", 1000, 1000 + MAX_SKEW_SECS + 10);
        assert_eq!(
            s.verify(future.as_bytes(), 1000).unwrap_err(),
            Rejected::Expired
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(matches!(
            Signer::new("c", &[vec![]], None, None),
            Err(ConfigError::EmptySigningKey)
        ));
        assert!(matches!(
            Signer::new("c", &[vec![1; 31]], None, None),
            Err(ConfigError::SigningKeyTooShort(31))
        ));
    }
}
