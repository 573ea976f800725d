//! Payload encryption for private jobs.
//!
//! New payloads are encrypted with NIP-44 v2. NIP-04 is still *read* (older NIP-90 clients use it)
//! and can be written for compatibility. A NIP-04 payload is recognised by its `?iv=` separator.

use nostr::nips::{nip04, nip44};
use nostr::prelude::{Keys, PublicKey};

use crate::ProtocolError;

/// How an encrypted payload is (or will be) encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encryption {
    /// NIP-44 v2 (default).
    #[default]
    Nip44,
    /// NIP-04 (legacy, read for compatibility).
    Nip04,
}

/// Encrypt `plaintext` from `keys` to `to`.
///
/// The empty string stays empty (NIP-44 cannot encrypt an empty message); an empty field reveals
/// only that it is empty.
pub fn encrypt(
    keys: &Keys,
    to: &PublicKey,
    plaintext: &str,
    scheme: Encryption,
) -> Result<String, ProtocolError> {
    if plaintext.is_empty() {
        return Ok(String::new());
    }
    match scheme {
        Encryption::Nip44 => nip44::encrypt(keys.secret_key(), to, plaintext, nip44::Version::V2)
            .map_err(|e| ProtocolError::Encryption(e.to_string())),
        Encryption::Nip04 => nip04::encrypt(keys.secret_key(), to, plaintext)
            .map_err(|e| ProtocolError::Encryption(e.to_string())),
    }
}

/// Which scheme a payload uses.
pub fn detect(payload: &str) -> Encryption {
    if payload.contains("?iv=") {
        Encryption::Nip04
    } else {
        Encryption::Nip44
    }
}

/// Decrypt `payload` sent between `keys` and `peer` (either direction), detecting the scheme.
pub fn decrypt(keys: &Keys, peer: &PublicKey, payload: &str) -> Result<String, ProtocolError> {
    if payload.is_empty() {
        return Ok(String::new());
    }
    match detect(payload) {
        Encryption::Nip44 => nip44::decrypt(keys.secret_key(), peer, payload)
            .map_err(|e| ProtocolError::Decryption(e.to_string())),
        Encryption::Nip04 => nip04::decrypt(keys.secret_key(), peer, payload)
            .map_err(|e| ProtocolError::Decryption(e.to_string())),
    }
}
