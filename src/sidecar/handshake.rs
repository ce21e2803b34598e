//! The splice handshake, without I/O: what the two sidecars send on a
//! punched connection before the first Bitcoin byte, and what each signs.
//! Spec: docs/native-protocol.md, "The splice handshake".
//!
//! Each side sends `hello` (magic, version, role, a fresh nonce) as soon as
//! the connection is up. The connector (whose Bitcoin node dialed through
//! the SOCKS5 proxy) then signs the nonces and the first 64 bytes its
//! Bitcoin node sent; the listener signs the same and the first 64 bytes its
//! own Bitcoin node answered. Over BIP324 those 64 bytes are the two
//! ElligatorSwift keys, so the signatures bind the Bitcoin nodes' own
//! BIP324 session to the sidecars' keys: whoever sits between the sidecars
//! can neither pose as the peer nor swap a key to read the session.

use bitcoin::hashes::{sha256, Hash, HashEngine};

pub const MAGIC: &[u8; 8] = b"BPSPLICE";
pub const VERSION: u8 = 1;
pub const HELLO_LEN: usize = 8 + 1 + 1 + 32;
/// What each Bitcoin node's first flight contributes to the transcript:
/// the ElligatorSwift key under BIP324, the start of `version` under v1.
pub const FIRST_FLIGHT: usize = 64;
/// A signature frame longer than this is refused before it is read (a
/// Schnorr signature is 64 bytes; a libp2p proof with its key under 200).
pub const MAX_PROOF: usize = 512;
const TRANSCRIPT_TAG: &str = "bitpunch/splice/v1";

/// Which end of the Bitcoin connection a sidecar serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceRole {
    /// Its Bitcoin node made the connection (through the SOCKS5 proxy).
    Connector = 0,
    /// It hands the connection to its Bitcoin node's P2P port.
    Listener = 1,
}

impl SpliceRole {
    pub fn peer(self) -> SpliceRole {
        match self {
            SpliceRole::Connector => SpliceRole::Listener,
            SpliceRole::Listener => SpliceRole::Connector,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub role: SpliceRole,
    pub nonce: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("the peer does not speak the splice handshake (first bytes {0}): is it a bitpunch sidecar (--bitcoind / --socks5)?")]
    NotSplice(String),
    #[error("the peer speaks splice handshake version {0}, we speak {VERSION}")]
    Version(u8),
    #[error("the peer says its role is {0}, which is no role")]
    BadRole(u8),
    #[error("both sides claim the {0:?} role")]
    SameRole(SpliceRole),
    #[error("a proof of {0} bytes is announced; at most {MAX_PROOF} are accepted")]
    ProofTooLong(usize),
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        let (magic, rest) = out.split_at_mut(MAGIC.len());
        magic.copy_from_slice(MAGIC);
        let (version, rest) = rest.split_at_mut(1);
        version.copy_from_slice(&[VERSION]);
        let (role, nonce) = rest.split_at_mut(1);
        role.copy_from_slice(&[self.role as u8]);
        nonce.copy_from_slice(&self.nonce);
        out
    }

    /// Parses the peer's hello and checks it plays the other role.
    pub fn decode(bytes: &[u8; HELLO_LEN], ours: SpliceRole) -> Result<Hello, HandshakeError> {
        let (magic, rest) = bytes.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(HandshakeError::NotSplice(hex::encode(magic)));
        }
        let [version, role, nonce @ ..] = rest else {
            return Err(HandshakeError::NotSplice(hex::encode(bytes)));
        };
        if *version != VERSION {
            return Err(HandshakeError::Version(*version));
        }
        let role = match role {
            0 => SpliceRole::Connector,
            1 => SpliceRole::Listener,
            other => return Err(HandshakeError::BadRole(*other)),
        };
        if role == ours {
            return Err(HandshakeError::SameRole(role));
        }
        let nonce: [u8; 32] = nonce
            .try_into()
            .map_err(|_| HandshakeError::NotSplice(hex::encode(bytes)))?;
        Ok(Hello { role, nonce })
    }
}

/// The length prefix of a proof frame (u16 little-endian), checked before
/// anything is allocated for it.
pub fn proof_len(prefix: [u8; 2]) -> Result<usize, HandshakeError> {
    let len = usize::from(u16::from_le_bytes(prefix));
    if len > MAX_PROOF {
        return Err(HandshakeError::ProofTooLong(len));
    }
    Ok(len)
}

/// `len ‖ proof`, for the wire. Proofs come from our own signer and are
/// never longer than [`MAX_PROOF`].
pub fn proof_frame(proof: &[u8]) -> Vec<u8> {
    let len = u16::try_from(proof.len()).unwrap_or(u16::MAX);
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(proof);
    out
}

/// What one side signs. The connector signs before its peer's Bitcoin node
/// has said anything (`listener_first` is `None`); the listener signs both
/// first flights. The role letter keeps one signature from passing as the
/// other.
pub fn transcript(
    signer: SpliceRole,
    connector_nonce: &[u8; 32],
    listener_nonce: &[u8; 32],
    connector_first: &[u8; FIRST_FLIGHT],
    listener_first: Option<&[u8; FIRST_FLIGHT]>,
) -> [u8; 32] {
    let tag = sha256::Hash::hash(TRANSCRIPT_TAG.as_bytes());
    let mut engine = sha256::Hash::engine();
    engine.input(tag.as_ref());
    engine.input(tag.as_ref());
    engine.input(match signer {
        SpliceRole::Connector => b"C",
        SpliceRole::Listener => b"L",
    });
    engine.input(connector_nonce);
    engine.input(listener_nonce);
    engine.input(connector_first);
    if let Some(first) = listener_first {
        engine.input(first);
    }
    sha256::Hash::from_engine(engine).to_byte_array()
}

/// Which transport the Bitcoin nodes speak, from the connector's first
/// flight: v1 starts with the network magic and `version`; anything else
/// is a BIP324 key (Bitcoin Core never sends a key that looks like v1).
pub fn is_v1(first: &[u8; FIRST_FLIGHT]) -> bool {
    first.get(4..16) == Some(b"version\0\0\0\0\0".as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_checks_role_and_version() {
        let hello = Hello {
            role: SpliceRole::Connector,
            nonce: [7; 32],
        };
        let bytes = hello.encode();
        assert_eq!(Hello::decode(&bytes, SpliceRole::Listener).unwrap(), hello);
        assert_eq!(
            Hello::decode(&bytes, SpliceRole::Connector),
            Err(HandshakeError::SameRole(SpliceRole::Connector))
        );
        let mut other = bytes;
        other[8] = 2;
        assert_eq!(
            Hello::decode(&other, SpliceRole::Listener),
            Err(HandshakeError::Version(2))
        );
        let mut other = bytes;
        other[9] = 9;
        assert_eq!(
            Hello::decode(&other, SpliceRole::Listener),
            Err(HandshakeError::BadRole(9))
        );
        // A BIP324 key or a v1 version where a hello should be is named.
        let mut bip324 = [0u8; HELLO_LEN];
        bip324[0] = 0xf9;
        let e = Hello::decode(&bip324, SpliceRole::Listener).unwrap_err();
        assert!(e.to_string().contains("sidecar"), "{e}");
    }

    #[test]
    fn proof_lengths_are_capped_before_reading() {
        assert_eq!(proof_len(64u16.to_le_bytes()), Ok(64));
        assert_eq!(
            proof_len(u16::MAX.to_le_bytes()),
            Err(HandshakeError::ProofTooLong(65535))
        );
        assert_eq!(&proof_frame(&[1, 2, 3])[..], &[3, 0, 1, 2, 3]);
    }

    #[test]
    fn transcripts_differ_by_signer_nonce_and_every_first_flight_byte() {
        let (c, l) = ([1u8; 32], [2u8; 32]);
        let first_c = [3u8; 64];
        let first_l = [4u8; 64];
        let base = transcript(SpliceRole::Listener, &c, &l, &first_c, Some(&first_l));
        assert_ne!(
            base,
            transcript(SpliceRole::Connector, &c, &l, &first_c, Some(&first_l))
        );
        assert_ne!(
            base,
            transcript(SpliceRole::Listener, &l, &c, &first_c, Some(&first_l))
        );
        for i in 0..64 {
            let mut swapped = first_c;
            swapped[i] ^= 1;
            assert_ne!(
                base,
                transcript(SpliceRole::Listener, &c, &l, &swapped, Some(&first_l))
            );
            let mut swapped = first_l;
            swapped[i] ^= 1;
            assert_ne!(
                base,
                transcript(SpliceRole::Listener, &c, &l, &first_c, Some(&swapped))
            );
        }
    }

    #[test]
    fn v1_is_told_from_a_bip324_key() {
        let mut v1 = [0u8; 64];
        v1[..4].copy_from_slice(&[0xf9, 0xbe, 0xb4, 0xd9]);
        v1[4..16].copy_from_slice(b"version\0\0\0\0\0");
        assert!(is_v1(&v1));
        assert!(!is_v1(&[0x5a; 64]));
    }
}
