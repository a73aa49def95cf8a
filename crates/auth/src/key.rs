//! The API key format, generation, and hashing.
//!
//! A key reads `cairn_<id>_<secret><checksum>`, modelled on GitHub's tokens:
//! - `cairn_`: a fixed prefix, so secret scanners and people recognise a key;
//! - `<id>`: 12 base62 characters, the public key id used for lookup (safe to
//!   log, shown by `cairn keys list`);
//! - `<secret>`: 30 base62 characters from the OS-seeded CSPRNG (≈178 bits);
//! - `<checksum>`: CRC32 of everything before it, as 6 base62 characters, so a
//!   mistyped or truncated key is rejected offline, without a database lookup.
//!
//! Only `SHA-256("cairn-key-v1:" id ":" secret)` is stored. A fast hash is right
//! for high-entropy secrets: there is nothing to brute-force.

use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts with this.
pub const PREFIX: &str = "cairn_";
/// Length of the public key id.
pub const ID_LEN: usize = 12;
const SECRET_LEN: usize = 30;
const CHECKSUM_LEN: usize = 6;
/// Length of a whole key.
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key split into its parts; the secret never leaves this module's callers'
/// stack frames and is never logged (`Debug` shows only the id).
pub struct ParsedKey<'a> {
    /// The public key id.
    pub id: &'a str,
    secret: &'a str,
}

impl std::fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ParsedKey<'_> {
    /// The hash stored for this key.
    pub fn hash(&self) -> String {
        hash(self.id, self.secret)
    }

    /// Whether this key's secret hashes to `stored` (constant time).
    pub fn matches(&self, stored: &str) -> bool {
        self.hash().as_bytes().ct_eq(stored.as_bytes()).into()
    }
}

/// A newly generated key: the full text (to show once) and what to store.
pub struct NewKey {
    /// The public key id.
    pub id: String,
    /// The full key to hand to the user, once.
    pub text: String,
    /// The hash to store.
    pub hash: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("id", &self.id).finish_non_exhaustive()
    }
}

fn random_base62(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n).map(|_| BASE62[rng.random_range(0..62)] as char).collect()
}

fn checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes()) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hash(id: &str, secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"cairn-key-v1:")
        .chain_update(id.as_bytes())
        .chain_update(b":")
        .chain_update(secret.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hash no key has, to compare against when the id is unknown so that a
/// miss costs the same as a mismatch.
pub fn decoy_hash() -> String {
    hash("", "")
}

/// Generates a fresh key.
pub fn generate() -> NewKey {
    let id = random_base62(ID_LEN);
    let secret = random_base62(SECRET_LEN);
    let body = format!("{PREFIX}{id}_{secret}");
    let text = format!("{body}{}", checksum(&body));
    NewKey {
        hash: hash(&id, &secret),
        id,
        text,
    }
}

fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Whether `id` has the shape of a key id.
pub fn is_key_id(id: &str) -> bool {
    id.len() == ID_LEN && is_base62(id)
}

/// Splits and checks a key offline. `None` for anything that is not a
/// well-formed key with a valid checksum.
pub fn parse(text: &str) -> Option<ParsedKey<'_>> {
    if text.len() != KEY_LEN || !text.is_ascii() {
        return None;
    }
    let rest = text.strip_prefix(PREFIX)?;
    let (id, rest) = rest.split_at(ID_LEN);
    let rest = rest.strip_prefix('_')?;
    let (secret, sum) = rest.split_at(SECRET_LEN);
    if !is_key_id(id) || !is_base62(secret) || !is_base62(sum) {
        return None;
    }
    let body = &text[..text.len() - CHECKSUM_LEN];
    if checksum(body).as_bytes().ct_eq(sum.as_bytes()).into() {
        Some(ParsedKey { id, secret })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_keys_parse_and_match_their_hash() {
        let key = generate();
        assert_eq!(key.text.len(), KEY_LEN);
        assert!(key.text.starts_with(PREFIX));
        let parsed = parse(&key.text).unwrap();
        assert_eq!(parsed.id, key.id);
        assert!(parsed.matches(&key.hash));
        assert!(!parsed.matches(&generate().hash));
        assert!(!format!("{parsed:?}").contains(&key.text[PREFIX.len() + ID_LEN + 1..]));
    }

    #[test]
    fn every_single_character_change_is_caught_offline() {
        let key = generate();
        let bytes = key.text.as_bytes();
        for i in 0..bytes.len() {
            for replacement in [b'0', b'z', b'_', b'A'] {
                if bytes[i] == replacement {
                    continue;
                }
                let mut changed = bytes.to_vec();
                changed[i] = replacement;
                let changed = String::from_utf8(changed).unwrap();
                assert!(parse(&changed).is_none(), "position {i} -> {}", replacement as char);
            }
        }
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let key = generate().text;
        for bad in [
            String::new(),
            key[..key.len() - 1].to_owned(),
            format!("{key}x"),
            key.replacen("cairn_", "cairx_", 1),
            key.replacen('_', "-", 2),
            "é".repeat(KEY_LEN / 2),
        ] {
            assert!(parse(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_unique_and_secrets_are_long() {
        let a = generate();
        let b = generate();
        assert_ne!(a.id, b.id);
        assert_ne!(a.hash, b.hash);
        // 30 base62 characters carry log2(62^30) ≈ 178 bits.
        assert!((SECRET_LEN as f64) * 62f64.log2() >= 128.0);
    }
}
