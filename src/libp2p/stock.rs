//! Stock DCUtR, the yardstick: rust-libp2p's own `/libp2p/dcutr` upgrades
//! the relayed connection to a direct libp2p one (TCP + Noise + Yamux). We
//! only watch and time it. It runs only in `--stock-dcutr` mode, where our
//! own exchange does not run, so it never touches a connection our punch
//! uses.

use std::collections::HashMap;
use std::time::Duration;

use ::libp2p::Multiaddr;
use tokio::time::Instant;

use super::swarm::{Libp2pEvent, Libp2pNode};
use super::transport::socket_addr;
use crate::clock::Later;
use crate::report::{ms_since, Outcome, Path};
use crate::wire::{SessionRole, Stage, Transport};

/// Dials `circuit` and waits for DCUtR's direct connection and the first
/// ping on it (the first application bytes). `t_ms.tcp` and `handshake` are
/// the direct libp2p connection up (TCP, Noise and Yamux done), `pong` the
/// first ping answered on it; `bytes.coordination` is all libp2p traffic
/// until then (relay, identify, DCUtR, and the direct connection's set-up).
pub async fn connect(node: &Libp2pNode, circuit: Multiaddr, timeout: Duration) -> Outcome {
    let asked = Instant::now();
    let role = SessionRole::Initiator;
    let mut record = Outcome::failed(Path::StockDcutr, role, Stage::Coordination, String::new());
    record.via = Some(circuit.to_string());
    let Some(peer) = super::circuit_peer(&circuit) else {
        record.error = Some(format!("{circuit} is not a circuit address"));
        return record;
    };
    let bytes_before = node.counters.total();
    let mut events = node.events();
    if let Err(e) = tokio::time::timeout(timeout, node.dial(circuit.clone(), peer))
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
    {
        record.error = Some(format!("reaching {peer} through the relay: {e}"));
        return record;
    }
    let deadline = asked.later(timeout);
    // Direct connections to the peer, by id: when they came up and where to.
    let mut direct: HashMap<::libp2p::swarm::ConnectionId, (Instant, Multiaddr)> = HashMap::new();
    let mut chosen = None;
    loop {
        let event = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) => e,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) | Err(_) => {
                let none = chosen.is_none() && direct.is_empty();
                record.error = Some(match none {
                    true => "stock DCUtR gave no direct connection in time".into(),
                    false => "no ping on the direct connection in time".into(),
                });
                record.failed_at = Some(if none { Stage::Punch } else { Stage::Ping });
                return record;
            }
        };
        match event {
            Libp2pEvent::Connected {
                peer: p,
                connection,
                remote,
                relayed: false,
            } if p == peer => {
                direct.insert(connection, (Instant::now(), remote));
            }
            Libp2pEvent::Dcutr { peer: p, result } if p == peer => match result {
                Ok(connection) => chosen = Some(connection),
                // Our own dials may fail while the peer's reached us (a
                // js-libp2p peer dials from a fresh port, or upgrades
                // unilaterally): a direct connection is what counts.
                Err(e) if direct.is_empty() => {
                    record.error = Some(e);
                    record.failed_at = Some(Stage::Punch);
                    return record;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "DCUtR failed, a direct connection exists")
                }
            },
            Libp2pEvent::Pinged {
                peer: p,
                connection,
                rtt,
            } if p == peer && (Some(connection) == chosen || direct.contains_key(&connection)) => {
                let now = Instant::now();
                let (up, remote) = direct
                    .get(&connection)
                    .cloned()
                    .unwrap_or((now, Multiaddr::empty()));
                record.ok = true;
                record.error = None;
                record.failed_at = None;
                record.transport = Some(Transport::Libp2p);
                record.remote = socket_addr(&remote)
                    .map(|a| a.to_string())
                    .or(Some(remote.to_string()));
                record.t_ms.tcp = Some(ms_since(asked, up));
                record.t_ms.handshake = Some(ms_since(asked, up));
                record.t_ms.pong = Some(ms_since(asked, now));
                record.rtt_ms = Some(rtt.as_micros() as f64 / 1000.0);
                record.bytes.coordination = node.counters.total().saturating_sub(bytes_before);
                return record;
            }
            _ => {}
        }
    }
}
