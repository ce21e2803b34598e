//! "Node K is reachable via coordinator C": the record a node behind a NAT
//! hands its peers so that nodes it never met can connect to it through C,
//! as they would to an ordinary address (docs/native-protocol.md,
//! "Reachability records").
//!
//! A record is signed by K, so nobody can attribute K to a coordinator K
//! does not use, and it says when it was made, so that it dies on its own:
//! a record is relayed and used for [`REACH_LIFETIME`] and then forgotten,
//! unlike an ordinary address that Bitcoin Core keeps for a month. A
//! coordinator can still mint any number of keys of its own and sign
//! records for them; that is why everything reachable via one coordinator
//! counts as one address group ([`crate::addrman`]).

use std::net::SocketAddr;

use bitcoin::secp256k1::XOnlyPublicKey;

use crate::identity::{self, NodeId, NodeKey};
use crate::net::routable::routable_target;

/// What a node key signs for a reachability record.
pub const REACH_TAG: &str = "bitpunch/reach/v1";

/// How long a record is relayed and used after it was made. Its node
/// makes a fresh one every [`REACH_REFRESH`] while it stays registered.
pub const REACH_LIFETIME_SECS: u64 = 60 * 60;
/// How often a registered node signs and sends a fresh record.
pub const REACH_REFRESH_SECS: u64 = 20 * 60;
/// A record made this far in its verifier's future is still accepted (the
/// two clocks differ); further is refused.
pub const REACH_CLOCK_SKEW_SECS: u64 = 10 * 60;

/// Records in one `hpreach` message.
pub const MAX_REACH_RECORDS: usize = 8;

/// x-only key (32) ‖ coordinator id (12) ‖ coordinator endpoint (addrv2 +
/// port, at most 20) ‖ since (u64 LE, unix seconds) ‖ signature (64).
pub const MAX_REACH_RECORD_LEN: usize = 32 + 12 + 20 + 8 + 64;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReachRecord {
    /// The node's key (x-only, 32 bytes); its id follows from it.
    pub key: [u8; 32],
    pub coordinator: NodeId,
    /// Where the coordinator listens.
    pub coordinator_at: SocketAddr,
    /// Unix seconds when the node signed it.
    pub since: u64,
    pub signature: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReachError {
    #[error("the key is not a valid x-only public key")]
    BadKey,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("made {0} s in the future")]
    FromTheFuture(u64),
    #[error("expired {0} s ago")]
    Expired(u64),
    #[error("the coordinator's address {addr} is not usable: {why}")]
    Unroutable { addr: SocketAddr, why: &'static str },
    #[error("a node cannot be its own coordinator")]
    OwnCoordinator,
}

impl ReachRecord {
    /// `key`'s record: reachable via `coordinator` at `coordinator_at`,
    /// made at `now` (unix seconds).
    pub fn sign(key: &NodeKey, coordinator: NodeId, coordinator_at: SocketAddr, now: u64) -> Self {
        let public = key.public().serialize();
        let data = signed_data(&public, &coordinator, &coordinator_at, now);
        let signature = key.sign(REACH_TAG, &[&data]);
        ReachRecord {
            key: public,
            coordinator,
            coordinator_at,
            since: now,
            signature,
        }
    }

    /// The node's id. Not checked against anything until [`Self::verify`].
    pub fn node(&self) -> Result<NodeId, ReachError> {
        Ok(NodeId::of(&self.public()?))
    }

    fn public(&self) -> Result<XOnlyPublicKey, ReachError> {
        identity::parse_public(&self.key).map_err(|_| ReachError::BadKey)
    }

    /// Unix seconds after which the record is dead.
    pub fn expires(&self) -> u64 {
        self.since.saturating_add(REACH_LIFETIME_SECS)
    }

    /// Whether a node should store, use and relay the record at `now`:
    /// signed by its key, alive, and naming a coordinator a node may dial
    /// (a globally routable address unless `allow_private`, for labs on
    /// private networks).
    pub fn verify(&self, now: u64, allow_private: bool) -> Result<NodeId, ReachError> {
        if let Some(ahead) = self.since.checked_sub(now) {
            if ahead > REACH_CLOCK_SKEW_SECS {
                return Err(ReachError::FromTheFuture(ahead));
            }
        }
        if let Some(late) = now.checked_sub(self.expires()) {
            if late > 0 {
                return Err(ReachError::Expired(late));
            }
        }
        if !allow_private {
            if let Err(why) = routable_target(self.coordinator_at) {
                return Err(ReachError::Unroutable {
                    addr: self.coordinator_at,
                    why,
                });
            }
        } else if self.coordinator_at.port() == 0 || self.coordinator_at.ip().is_unspecified() {
            return Err(ReachError::Unroutable {
                addr: self.coordinator_at,
                why: "unspecified address or port 0",
            });
        }
        let public = self.public()?;
        let node = NodeId::of(&public);
        if node == self.coordinator {
            return Err(ReachError::OwnCoordinator);
        }
        let data = signed_data(
            &self.key,
            &self.coordinator,
            &self.coordinator_at,
            self.since,
        );
        if !identity::verify(&public, REACH_TAG, &[&data], &self.signature) {
            return Err(ReachError::BadSignature);
        }
        Ok(node)
    }

    /// The address a user would type for it: `NODE_ID@COORDINATOR_ID@HOST:PORT`.
    pub fn address(&self) -> Result<String, ReachError> {
        Ok(format!(
            "{}@{}@{}",
            self.node()?,
            self.coordinator,
            self.coordinator_at
        ))
    }
}

/// The signed data: everything in the record but the signature, the
/// endpoint as ip octets and port big-endian.
fn signed_data(key: &[u8; 32], coordinator: &NodeId, at: &SocketAddr, since: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(MAX_REACH_RECORD_LEN);
    data.extend_from_slice(key);
    data.extend_from_slice(&coordinator.0);
    match at.ip() {
        std::net::IpAddr::V4(v4) => data.extend_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => data.extend_from_slice(&v6.octets()),
    }
    data.extend_from_slice(&at.port().to_be_bytes());
    data.extend_from_slice(&since.to_le_bytes());
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn record(at: &str) -> (NodeKey, ReachRecord) {
        let key = NodeKey::from_secret(&[7; 32]).unwrap();
        let coordinator = NodeKey::from_secret(&[8; 32]).unwrap().id();
        let record = ReachRecord::sign(&key, coordinator, at.parse().unwrap(), NOW);
        (key, record)
    }

    #[test]
    fn a_fresh_record_verifies_as_its_signers_id() {
        let (key, r) = record("203.0.113.5:8333");
        assert_eq!(r.verify(NOW, false), Ok(key.id()));
        assert_eq!(r.verify(NOW + REACH_LIFETIME_SECS, false), Ok(key.id()));
        assert_eq!(
            r.address().unwrap(),
            format!("{}@{}@203.0.113.5:8333", key.id(), r.coordinator)
        );
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let (_, r) = record("203.0.113.5:8333");
        let mut later = r.clone();
        later.since += 1;
        let mut elsewhere = r.clone();
        elsewhere.coordinator_at = "203.0.113.6:8333".parse().unwrap();
        let mut other_port = r.clone();
        other_port.coordinator_at.set_port(8334);
        let mut other_coordinator = r.clone();
        other_coordinator.coordinator.0[0] ^= 1;
        for bad in [later, elsewhere, other_port, other_coordinator] {
            assert_eq!(bad.verify(NOW, false), Err(ReachError::BadSignature));
        }
        let mut other_key = r.clone();
        other_key.key = NodeKey::from_secret(&[9; 32]).unwrap().public().serialize();
        assert_eq!(other_key.verify(NOW, false), Err(ReachError::BadSignature));
        let mut no_key = r;
        no_key.key = [0xff; 32];
        assert_eq!(no_key.verify(NOW, false), Err(ReachError::BadKey));
    }

    #[test]
    fn a_record_lives_its_lifetime_and_no_longer() {
        let (_, r) = record("203.0.113.5:8333");
        assert_eq!(
            r.verify(NOW + REACH_LIFETIME_SECS + 1, false),
            Err(ReachError::Expired(1))
        );
        assert!(r.verify(NOW - REACH_CLOCK_SKEW_SECS, false).is_ok());
        assert_eq!(
            r.verify(NOW - REACH_CLOCK_SKEW_SECS - 1, false),
            Err(ReachError::FromTheFuture(REACH_CLOCK_SKEW_SECS + 1))
        );
    }

    #[test]
    fn a_coordinator_on_a_private_network_is_refused_outside_labs() {
        let (_, r) = record("10.0.0.1:8333");
        assert!(matches!(
            r.verify(NOW, false),
            Err(ReachError::Unroutable { .. })
        ));
        assert!(r.verify(NOW, true).is_ok());
        let (_, zero) = record("0.0.0.0:8333");
        assert!(zero.verify(NOW, true).is_err());
    }

    #[test]
    fn a_node_cannot_name_itself_its_coordinator() {
        let key = NodeKey::from_secret(&[7; 32]).unwrap();
        let r = ReachRecord::sign(&key, key.id(), "203.0.113.5:8333".parse().unwrap(), NOW);
        assert_eq!(r.verify(NOW, false), Err(ReachError::OwnCoordinator));
    }
}
