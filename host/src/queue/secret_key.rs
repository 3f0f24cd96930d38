//! How secrets are held at rest: sealed with XChaCha20-Poly1305 under the
//! operator's key (`TASKFLOW_SECRET_KEY`), bound to their queue and name so
//! a sealed value moved to another row does not open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use super::settings::SecretValue;

/// Bytes of key material `TASKFLOW_SECRET_KEY` must decode to.
pub const SECRET_KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

/// The key secrets are sealed with. Its [`id`](Self::id) is stored beside
/// each sealed value, so a server started with another key can say so at
/// once instead of failing on the first job that needs a secret.
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
    id: String,
}

/// A secret as stored: which key sealed it, the nonce and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// [`SecretKey::id`] of the key that sealed it.
    pub key_id: String,
    /// Random per sealing.
    pub nonce: Vec<u8>,
    /// The value with its authentication tag.
    pub ciphertext: Vec<u8>,
}

/// `TASKFLOW_SECRET_KEY` is not a key.
#[derive(Debug, thiserror::Error)]
#[error(
    "TASKFLOW_SECRET_KEY must be {SECRET_KEY_BYTES} random bytes in base64 (for example the \
     output of `openssl rand -base64 32`)"
)]
pub struct MalformedSecretKey;

/// A sealed secret did not open under this key.
#[derive(Debug, thiserror::Error)]
#[error(
    "secret {name:?} of queue {queue:?} was sealed with key {sealed_with}, not with this \
     server's TASKFLOW_SECRET_KEY ({current})"
)]
pub struct WrongSecretKey {
    /// The secret's queue.
    pub queue: String,
    /// The secret's name.
    pub name: String,
    /// Id of the key it was sealed with.
    pub sealed_with: String,
    /// Id of the key tried.
    pub current: String,
}

impl SecretKey {
    /// Decodes a base64 key of [`SECRET_KEY_BYTES`] bytes.
    ///
    /// # Errors
    ///
    /// If it is not base64 or not that long; the error does not repeat it.
    pub fn parse(text: &str) -> Result<Self, MalformedSecretKey> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| MalformedSecretKey)?;
        if bytes.len() != SECRET_KEY_BYTES {
            return Err(MalformedSecretKey);
        }
        let digest = Sha256::new()
            .chain_update(b"taskflow secret key id\0")
            .chain_update(&bytes)
            .finalize();
        Ok(Self {
            cipher: XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| MalformedSecretKey)?,
            id: hex::encode(&digest[..8]),
        })
    }

    /// A public fingerprint of the key (not enough to recover it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `value` as secret `name` of `queue`.
    pub fn seal(&self, queue: &str, name: &str, value: &SecretValue) -> SealedSecret {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).expect("the operating system provides randomness");
        let payload = Payload {
            msg: value.expose().as_bytes(),
            aad: &associated_data(queue, name),
        };
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .expect("XChaCha20-Poly1305 seals any value under 256 GiB");
        SealedSecret {
            key_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Opens secret `name` of `queue`.
    ///
    /// # Errors
    ///
    /// If it was sealed under another key, for another queue or name, or
    /// has been tampered with.
    pub fn open(
        &self,
        queue: &str,
        name: &str,
        sealed: &SealedSecret,
    ) -> Result<SecretValue, WrongSecretKey> {
        let wrong = || WrongSecretKey {
            queue: queue.to_owned(),
            name: name.to_owned(),
            sealed_with: sealed.key_id.clone(),
            current: self.id.clone(),
        };
        if sealed.nonce.len() != NONCE_BYTES {
            return Err(wrong());
        }
        let payload = Payload {
            msg: &sealed.ciphertext,
            aad: &associated_data(queue, name),
        };
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(&sealed.nonce), payload)
            .map_err(|_| wrong())?;
        String::from_utf8(plain)
            .map(SecretValue::new)
            .map_err(|_| wrong())
    }
}

/// Keys are the same when their ids are: the id is a hash of the key.
impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for SecretKey {}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish()
    }
}

/// Binds a sealed value to its row: queue and name, NUL-separated (neither
/// may contain NUL).
fn associated_data(queue: &str, name: &str) -> Vec<u8> {
    [
        b"taskflow-secret\0",
        queue.as_bytes(),
        b"\0",
        name.as_bytes(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const OTHER_KEY: &str = "HwECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn a_sealed_secret_opens_only_under_its_key_queue_and_name() {
        let key = SecretKey::parse(KEY).unwrap();
        let value = SecretValue::new("hunter2".into());
        let sealed = key.seal("payments", "token", &value);
        assert_eq!(sealed.key_id, key.id());
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            key.open("payments", "token", &sealed).unwrap().expose(),
            "hunter2"
        );
        assert!(key.open("payments", "other", &sealed).is_err());
        assert!(key.open("mail", "token", &sealed).is_err());
        let other = SecretKey::parse(OTHER_KEY).unwrap();
        assert_ne!(other.id(), key.id());
        let error = other.open("payments", "token", &sealed).unwrap_err();
        assert!(!error.to_string().contains("hunter2"));
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(key.open("payments", "token", &tampered).is_err());
        assert_ne!(key.seal("payments", "token", &value).nonce, sealed.nonce);
    }

    #[test]
    fn a_malformed_key_is_refused_without_echoing_it() {
        for text in ["", "not base64!", "AAEC", &format!("{KEY}AAAA")] {
            let error = SecretKey::parse(text).unwrap_err().to_string();
            assert!(text.is_empty() || !error.contains(text), "{error}");
        }
        assert!(!format!("{:?}", SecretKey::parse(KEY).unwrap()).contains(KEY));
    }
}
