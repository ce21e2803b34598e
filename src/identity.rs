//! A node's long-term key (secp256k1, BIP340 Schnorr) and the short id
//! derived from it. Registration with a coordinator proves ownership of the
//! key; after a punch, each side signs the BIP324 session id with it, so a
//! coordinator that put itself in the middle is caught (DESIGN.md decision 5).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::secp256k1::{schnorr, Keypair, Message, Secp256k1, SecretKey, XOnlyPublicKey};

pub const ID_LEN: usize = 12;

/// The first 12 bytes of SHA256 of the x-only public key: short enough to
/// type, long enough (96 bits) that a coordinator cannot find another key
/// with the same id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; ID_LEN]);

impl NodeId {
    pub fn of(key: &XOnlyPublicKey) -> NodeId {
        let digest = sha256::Hash::hash(&key.serialize());
        NodeId(digest[..ID_LEN].try_into().expect("12 of 32 bytes"))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|_| format!("node id {s:?} is not hex"))?;
        let id: [u8; ID_LEN] = bytes.try_into().map_err(|_| {
            format!(
                "node id {s:?} has the wrong length: {} hex digits expected",
                ID_LEN * 2
            )
        })?;
        Ok(NodeId(id))
    }
}

/// BIP340-style tagged hash, so a signature for one purpose can never be
/// replayed as one for another.
fn tagged_hash(tag: &str, data: &[&[u8]]) -> [u8; 32] {
    let tag = sha256::Hash::hash(tag.as_bytes());
    let mut engine = sha256::Hash::engine();
    engine.input(tag.as_ref());
    engine.input(tag.as_ref());
    for part in data {
        engine.input(part);
    }
    sha256::Hash::from_engine(engine).to_byte_array()
}

#[derive(Clone)]
pub struct NodeKey {
    keypair: Keypair,
}

impl NodeKey {
    pub fn generate() -> NodeKey {
        let secp = Secp256k1::new();
        let secret = SecretKey::new(&mut rand::thread_rng());
        NodeKey {
            keypair: Keypair::from_secret_key(&secp, &secret),
        }
    }

    /// A key from its 32 secret bytes (tests and fuzzers want fixed keys).
    pub fn from_secret(bytes: &[u8; 32]) -> Result<NodeKey> {
        let secret = SecretKey::from_slice(bytes).context("not a valid secp256k1 secret key")?;
        Ok(NodeKey {
            keypair: Keypair::from_secret_key(&Secp256k1::new(), &secret),
        })
    }

    pub fn key_path(data_dir: &Path) -> PathBuf {
        data_dir.join("node.key")
    }

    /// The key in `data_dir/node.key` (hex), created on first use with
    /// permissions 0600.
    pub fn load_or_create(data_dir: &Path) -> Result<NodeKey> {
        let path = Self::key_path(data_dir);
        if !path.exists() {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let key = NodeKey::generate();
            match write_private(&path, hex::encode(key.keypair.secret_bytes()).as_bytes()) {
                Ok(()) => return Ok(key),
                // Another process (a node and a coordinator started
                // together) made it first: theirs is the identity.
                Err(e) if path.exists() => tracing::debug!(error = %e, "key created concurrently"),
                Err(e) => return Err(e),
            }
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let bytes = hex::decode(text.trim())
            .with_context(|| format!("{} is not a hex key", path.display()))?;
        let secret = SecretKey::from_slice(&bytes)
            .with_context(|| format!("{} is not a valid secp256k1 key", path.display()))?;
        Ok(NodeKey {
            keypair: Keypair::from_secret_key(&Secp256k1::new(), &secret),
        })
    }

    pub fn public(&self) -> XOnlyPublicKey {
        self.keypair.x_only_public_key().0
    }

    pub fn id(&self) -> NodeId {
        NodeId::of(&self.public())
    }

    pub fn sign(&self, tag: &str, data: &[&[u8]]) -> [u8; 64] {
        let msg = Message::from_digest(tagged_hash(tag, data));
        Secp256k1::signing_only()
            .sign_schnorr_no_aux_rand(&msg, &self.keypair)
            .serialize()
    }
}

impl fmt::Debug for NodeKey {
    /// Never the secret: the id only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.id())
    }
}

pub fn verify(key: &XOnlyPublicKey, tag: &str, data: &[&[u8]], signature: &[u8; 64]) -> bool {
    let Ok(sig) = schnorr::Signature::from_slice(signature) else {
        return false;
    };
    let msg = Message::from_digest(tagged_hash(tag, data));
    Secp256k1::verification_only()
        .verify_schnorr(&sig, &msg, key)
        .is_ok()
}

#[cfg(unix)]
/// Creates `path` (it must not exist) readable by its owner only: for keys.
///
/// Written to a private temporary file and linked into place, so that a
/// process that races us reads either no file or the whole key, never a
/// half-written one.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let written = (|| -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("creating {}", temporary.display()))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::hard_link(&temporary, path).with_context(|| format!("creating {}", path.display()))
    })();
    let _ = std::fs::remove_file(&temporary);
    written
}

#[cfg(not(unix))]
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("creating {}", path.display()))
}

pub fn parse_public(bytes: &[u8; 32]) -> Result<XOnlyPublicKey> {
    match XOnlyPublicKey::from_slice(bytes) {
        Ok(k) => Ok(k),
        Err(e) => bail!("invalid public key: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_key_tag_and_data() {
        let a = NodeKey::generate();
        let b = NodeKey::generate();
        let sig = a.sign("bitpunch/test", &[b"one", b"two"]);
        assert!(verify(
            &a.public(),
            "bitpunch/test",
            &[b"one", b"two"],
            &sig
        ));
        assert!(!verify(
            &b.public(),
            "bitpunch/test",
            &[b"one", b"two"],
            &sig
        ));
        assert!(!verify(
            &a.public(),
            "bitpunch/other",
            &[b"one", b"two"],
            &sig
        ));
        assert!(!verify(
            &a.public(),
            "bitpunch/test",
            &[b"one", b"three"],
            &sig
        ));
        assert!(!verify(
            &a.public(),
            "bitpunch/test",
            &[b"one", b"two"],
            &[0u8; 64]
        ));
    }

    #[test]
    fn key_file_round_trips_and_ids_parse() {
        let dir = std::env::temp_dir().join(format!("bitpunch-key-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = NodeKey::load_or_create(&dir).unwrap();
        let again = NodeKey::load_or_create(&dir).unwrap();
        assert_eq!(first.public(), again.public());
        let id = first.id();
        assert_eq!(id.to_string().len(), 24);
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert!("abc".parse::<NodeId>().is_err());
        assert!("zz".repeat(12).parse::<NodeId>().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
