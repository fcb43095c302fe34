//! Secrets at rest and the identifiers handed to tenants.
//!
//! Auth tokens and API-key secrets must stay usable (they sign webhooks), so they are stored
//! encrypted — AES-256-GCM with a random 96-bit nonce per value — never in plain text. The key
//! comes from the configuration or the environment, or from a key file created on first start.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand::RngCore;

/// The key that seals secrets in the store.
#[derive(Clone)]
pub struct SecretKey {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

/// A key that cannot be used, or a sealed value that does not open.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret key must be 64 hex digits (32 bytes)")]
    BadKey,
    #[error("cannot read or create the key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "a stored secret does not open with this key (wrong secret key, or the value is damaged)"
    )]
    Open,
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl SecretKey {
    /// A key from 64 hex digits.
    ///
    /// # Errors
    /// Anything but 32 bytes of hex.
    pub fn from_hex(s: &str) -> Result<Self, SecretError> {
        let b = hex_decode(s)
            .filter(|b| b.len() == 32)
            .ok_or(SecretError::BadKey)?;
        let cipher = Aes256Gcm::new_from_slice(&b).map_err(|_| SecretError::BadKey)?;
        Ok(SecretKey { cipher })
    }

    /// Reads the key file, creating it (mode 0600, a fresh random key) when it does not exist.
    ///
    /// # Errors
    /// The file cannot be read or written, or holds something other than a key.
    pub fn from_file_or_create(path: &Path) -> Result<Self, SecretError> {
        let shown = path.display().to_string();
        let err = |source| SecretError::KeyFile {
            path: shown.clone(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_hex(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let text = hex_encode(&key);
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(err)?;
                f.write_all(format!("{text}\n").as_bytes()).map_err(err)?;
                f.sync_all().map_err(err)?;
                tracing::warn!(path = %shown, "created a new secret key file; back it up with the database");
                Self::from_hex(&text)
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Encrypts `plain`: base64 of nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encryption of a short in-memory buffer cannot fail with a valid key and nonce size.
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Decrypts what [`seal`](Self::seal) produced.
    ///
    /// # Errors
    /// A value sealed with another key, or damaged.
    pub fn open(&self, sealed: &str) -> Result<String, SecretError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SecretError::Open)?;
        if raw.len() < 12 + 16 {
            return Err(SecretError::Open);
        }
        let (nonce, ct) = raw.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(plain).map_err(|_| SecretError::Open)
    }
}

/// A new SID: two-letter prefix and 32 lowercase hex digits, as Twilio's.
pub fn new_sid(prefix: &str) -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{prefix}{}", hex_encode(&b))
}

/// A new auth token or API-key secret: 32 hex digits (128 random bits).
pub fn new_token() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex_encode(&b)
}

/// Whether `s` is a well-formed SID with this prefix (anything else is not looked up at all,
/// which keeps odd bytes and path tricks away from the store).
pub fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34
        && s.starts_with(prefix)
        && s[2..]
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Equality that takes the same time wherever the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip_and_differ_each_time() {
        let k = SecretKey::from_hex(&"ab".repeat(32)).expect("valid key");
        let a = k.seal("token");
        let b = k.seal("token");
        assert_ne!(a, b, "random nonce per value");
        assert!(!a.contains("token"));
        assert_eq!(k.open(&a).expect("opens"), "token");
        let other = SecretKey::from_hex(&"cd".repeat(32)).expect("valid key");
        assert!(other.open(&a).is_err());
        assert!(k.open("not base64!").is_err());
        assert!(k.open("AAAA").is_err());
    }

    #[test]
    fn keys_must_be_32_bytes_of_hex() {
        assert!(SecretKey::from_hex("abcd").is_err());
        assert!(SecretKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(SecretKey::from_hex(&"00".repeat(33)).is_err());
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("voxedge-key-{}", new_token()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join("k");
        let a = SecretKey::from_file_or_create(&p).expect("created");
        let mode = std::fs::metadata(&p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = SecretKey::from_file_or_create(&p).expect("read back");
        assert_eq!(b.open(&a.seal("x")).expect("same key"), "x");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn sids() {
        let s = new_sid("CA");
        assert!(is_sid(&s, "CA"));
        assert!(!is_sid(&s, "AC"));
        assert!(!is_sid("CA../../etc/passwd", "CA"));
        assert!(!is_sid(&s.to_uppercase(), "CA"));
    }
}
