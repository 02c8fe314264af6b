//! ed25519 keys (ed25519-dalek): the build signs the manifest with a
//! private key kept outside the repository and the image; the appliance
//! holds only the public key (`/etc/nodows/update.pub`).
//!
//! Files: a private key is 64 hex digits (the 32-byte seed) on one line,
//! mode 0600; a public key is `ed25519 HEX`; a signature is
//! `ed25519 KEY-ID HEX` where KEY-ID is the first 16 hex digits of the
//! sha256 of the public key.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use ed25519_dalek::{Signer as _, Verifier as _};
use sha2::{Digest as _, Sha256};

use crate::{hex, io_error, unhex, Error, Result};

pub struct SigningKey(ed25519_dalek::SigningKey);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl SigningKey {
    pub fn from_seed(seed: [u8; 32]) -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// Reads a private key file (64 hex digits).
    pub fn read(path: &Path) -> Result<SigningKey> {
        let text = std::fs::read_to_string(path).map_err(io_error(path.display()))?;
        let seed: [u8; 32] = unhex(text.trim())
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| {
                Error::Refused(format!(
                    "{}: not a private key (64 hex digits on one line)",
                    path.display()
                ))
            })?;
        Ok(SigningKey::from_seed(seed))
    }

    /// Makes a new key from /dev/urandom and writes it to `path` (0600,
    /// never over an existing file).
    pub fn generate(path: &Path) -> Result<SigningKey> {
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut random| random.read_exact(&mut seed))
            .map_err(io_error("/dev/urandom"))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error(path.display()))?;
        file.write_all(format!("{}\n", hex(&seed)).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error(path.display()))?;
        Ok(SigningKey::from_seed(seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The signature file's text for `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        let signature = self.0.sign(message);
        format!(
            "ed25519 {} {}\n",
            self.public().key_id(),
            hex(&signature.to_bytes())
        )
    }
}

impl PublicKey {
    pub const PATH: &'static str = "/etc/nodows/update.pub";

    pub fn to_text(&self) -> String {
        format!("ed25519 {}\n", hex(self.0.as_bytes()))
    }

    pub fn parse(text: &str, origin: &str) -> Result<PublicKey> {
        let bytes: [u8; 32] = text
            .trim()
            .strip_prefix("ed25519 ")
            .and_then(|key| unhex(key.trim()))
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| Error::System(format!("{origin}: not a public key (`ed25519 HEX`)")))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| Error::System(format!("{origin}: not a valid ed25519 public key")))
    }

    pub fn read(path: &Path) -> Result<PublicKey> {
        let text = std::fs::read_to_string(path).map_err(io_error(path.display()))?;
        PublicKey::parse(&text, &path.display().to_string())
    }

    /// The first 16 hex digits of the sha256 of the key's bytes.
    pub fn key_id(&self) -> String {
        hex(&Sha256::digest(self.0.as_bytes()))[..16].to_string()
    }

    /// Checks a signature file's text against `message`.
    pub fn verify(&self, message: &[u8], signature_text: &str) -> Result<()> {
        let mut words = signature_text.split_whitespace();
        let (Some("ed25519"), Some(key_id), Some(signature), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(Error::Refused(
                "the manifest's signature is not `ed25519 KEY-ID HEX`".to_string(),
            ));
        };
        if key_id != self.key_id() {
            return Err(Error::Refused(format!(
                "the manifest is signed by key {key_id}, not by this appliance's update key {}",
                self.key_id()
            )));
        }
        let bytes: [u8; 64] = unhex(signature)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| Error::Refused("the signature is not 64 bytes of hex".to_string()))?;
        self.0
            .verify(message, &ed25519_dalek::Signature::from_bytes(&bytes))
            .map_err(|_| {
                Error::Refused(format!(
                    "the manifest's signature does not verify with this appliance's update key {}",
                    self.key_id()
                ))
            })
    }
}
