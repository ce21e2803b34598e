//! Connection caps for both swarms (the relay's and the node's): libp2p's
//! `connection_limits` (pending and established inbound connections, per
//! peer) and `memory_connection_limits` (no new connection while the
//! process is above a memory ceiling). The node's inbound libp2p
//! connections pass the router's admission control first; the relay owns
//! its listener, so these caps are its only admission control.

use ::libp2p::{connection_limits, memory_connection_limits};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionCaps {
    /// Inbound connections still negotiating (TCP up, Noise/Yamux not yet).
    pub max_pending_incoming: u32,
    pub max_established_incoming: u32,
    /// Established connections to one peer id, both directions.
    pub max_established_per_peer: u32,
    /// No new connections while the process's resident memory is above this.
    pub max_memory_mib: usize,
}

impl ConnectionCaps {
    /// A relay: rust-libp2p's relay holds 128 reservations and 16 circuits
    /// by default; a few times that in connections leaves room for peers
    /// that only identify or ping.
    pub const RELAY: ConnectionCaps = ConnectionCaps {
        max_pending_incoming: 128,
        max_established_incoming: 1024,
        max_established_per_peer: 4,
        max_memory_mib: 1024,
    };
    /// A node's swarm: relays it reserves on and the peers that reach it
    /// through them.
    pub const NODE: ConnectionCaps = ConnectionCaps {
        max_pending_incoming: 64,
        max_established_incoming: 256,
        max_established_per_peer: 4,
        max_memory_mib: 1024,
    };

    pub fn connection_limits(&self) -> connection_limits::Behaviour {
        connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(self.max_pending_incoming))
                .with_max_established_incoming(Some(self.max_established_incoming))
                .with_max_established_per_peer(Some(self.max_established_per_peer)),
        )
    }

    pub fn memory_limits(&self) -> memory_connection_limits::Behaviour {
        memory_connection_limits::Behaviour::with_max_bytes(
            self.max_memory_mib.saturating_mul(1 << 20),
        )
    }
}
