//! The node's WireGuard key pair.
//!
//! The private key is made on the node, kept in one file there (mode 0600,
//! base64 as `wg genkey` writes it) and read back at every start, so a
//! restart keeps the node's identity; it never leaves the node. Only the
//! public key is published ([`NodeKey::public_key`], base64), and peers
//! learn it through the mesh.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::{Error, Result};

/// A WireGuard public key in base64 (44 characters), as `wg` prints it.
pub type PublicKeyText = String;

/// The node's key pair.
pub struct NodeKey {
    secret: StaticSecret,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// The key stored at `path`, or a new one written there (0600) when the
    /// file does not exist yet. A file that is there but unreadable or not
    /// a key is an error, never silently replaced: peers know its public
    /// half.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(text.trim()).map_err(|why| Error::WireguardKey {
                action: format!(
                    "read the WireGuard private key {}: {why}; remove the file to make a new key",
                    path.display()
                ),
                source: None,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                key.write(path)?;
                Ok(key)
            }
            Err(e) => Err(Error::WireguardKey {
                action: format!("read the WireGuard private key {}", path.display()),
                source: Some(e),
            }),
        }
    }

    /// A new key from the kernel's random source.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .map_err(|e| Error::WireguardKey {
                action: "read /dev/urandom for a WireGuard key".to_owned(),
                source: Some(e),
            })?;
        Ok(Self {
            secret: StaticSecret::from(bytes),
        })
    }

    /// A key from its base64 text.
    pub fn from_base64(text: &str) -> std::result::Result<Self, String> {
        let bytes: [u8; 32] = STANDARD
            .decode(text)
            .map_err(|e| format!("not base64 ({e})"))?
            .try_into()
            .map_err(|b: Vec<u8>| format!("{} bytes, a key has 32", b.len()))?;
        Ok(Self {
            secret: StaticSecret::from(bytes),
        })
    }

    /// The public key, base64.
    pub fn public_key(&self) -> PublicKeyText {
        STANDARD.encode(PublicKey::from(&self.secret).as_bytes())
    }

    /// The private key in hex, as the configuration protocol takes it.
    pub(crate) fn private_hex(&self) -> String {
        hex(self.secret.as_bytes())
    }

    /// Writes the key to `path` (0600), whole or not at all.
    pub fn write(&self, path: &Path) -> Result<()> {
        let failed = |e| Error::WireguardKey {
            action: format!("write the WireGuard private key {}", path.display()),
            source: Some(e),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let partial = path.with_extension("partial");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(failed)?;
        writeln!(file, "{}", STANDARD.encode(self.secret.as_bytes())).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        std::fs::rename(&partial, path).map_err(failed)
    }
}

/// A base64 public key as the 32 bytes' hex, as the configuration
/// protocol takes it; `None` unless it is exactly a key.
pub fn public_key_hex(text: &str) -> Option<String> {
    let bytes = STANDARD.decode(text).ok()?;
    (bytes.len() == 32).then(|| hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_key_is_made_once_kept_private_and_read_back_the_same() {
        let dir = knit_testkit::process::TempDir::new("wg-key");
        let path = dir.path().join("state/wireguard.key");
        let made = NodeKey::load_or_create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = NodeKey::load_or_create(&path).expect("load");
        assert_eq!(made.public_key(), again.public_key());
        assert_eq!(made.public_key().len(), 44);
        assert_ne!(made.public_key(), NodeKey::generate().expect("new").public_key());
        assert!(!format!("{made:?}").contains(&made.private_hex()));
    }

    #[test]
    fn a_damaged_key_file_is_an_error_naming_the_file_and_the_fix() {
        let dir = knit_testkit::process::TempDir::new("wg-key");
        let path = dir.path().join("wireguard.key");
        std::fs::write(&path, "not a key\n").expect("write");
        let err = NodeKey::load_or_create(&path).expect_err("damaged");
        let text = err.to_string();
        assert!(
            text.contains("wireguard.key") && text.contains("remove the file"),
            "{text}"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "not a key\n");
    }

    #[test]
    fn the_public_key_matches_wireguards_own_derivation() {
        // RFC 7748 section 6.1: Alice's private key and public key.
        let private = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&private[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        let key = NodeKey::from_base64(&STANDARD.encode(&bytes)).expect("key");
        assert_eq!(
            public_key_hex(&key.public_key()).expect("hex"),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert_eq!(public_key_hex("c2hvcnQ="), None);
    }
}
