//! The libp2p path: circuit relay v2 and a DCUtR-style exchange coordinate
//! the punch; the punched TCP connection becomes a BIP324 Bitcoin session.

pub mod caps;
pub mod exchange;
pub mod ip_admission;
pub mod punch;
pub mod relay;
pub mod stock;
pub mod swarm;
pub mod transport;

use std::time::Duration;

use ::libp2p::multiaddr::Protocol;
use ::libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::report::Outcome;
use crate::wire::{SessionRole, Stage};
use punch::{Libp2pOutcome, Libp2pPunchContext};
use swarm::Libp2pEvent;

/// The relay's own id in a relay address (`…/p2p/<relay id>`, before any
/// `/p2p-circuit`).
pub fn relay_peer(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter()
        .take_while(|p| !matches!(p, Protocol::P2pCircuit))
        .filter_map(|p| match p {
            Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .last()
}

/// The relay's own TCP endpoint in a relay or circuit address (what
/// comes before any `/p2p-circuit`).
pub fn relay_endpoint(addr: &Multiaddr) -> Option<std::net::SocketAddr> {
    let relay: Multiaddr = addr
        .iter()
        .take_while(|p| !matches!(p, Protocol::P2pCircuit))
        .collect();
    transport::socket_addr(&relay)
}

/// The peer id at the end of a circuit address
/// (`<relay>/p2p-circuit/p2p/<peer>`), if it is one.
pub fn circuit_peer(addr: &Multiaddr) -> Option<PeerId> {
    let mut saw_circuit = false;
    let mut peer = None;
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => saw_circuit = true,
            Protocol::P2p(id) if saw_circuit => peer = Some(id),
            _ => {}
        }
    }
    peer
}

/// The requester's side: dial `circuit` through its relay, answer the
/// peer's exchange, punch, and run BIP324 as initiator.
pub async fn connect_circuit(ctx: &Libp2pPunchContext, circuit: Multiaddr) -> Libp2pOutcome {
    let asked = Instant::now();
    let role = SessionRole::Initiator;
    let fail = |stage, error: String| {
        let mut record = Outcome::failed(crate::report::Path::Libp2p, role, stage, error);
        record.via = Some(circuit.to_string());
        Libp2pOutcome {
            record,
            session: None,
            spliced: None,
        }
    };
    let Some(peer) = circuit_peer(&circuit) else {
        return fail(
            Stage::Coordination,
            format!("{circuit} is not a /p2p-circuit/p2p/<peer> address"),
        );
    };
    let bytes_before = ctx.libp2p.counters.total();
    // Our offer (behind a symmetric NAT, a NAT probe through the relay)
    // is made while the circuit is set up: the peer's CONNECT comes a
    // round trip after the circuit, sooner than two probes take. The
    // circuit opens no mapping of its own, so the probe's prediction holds.
    let offer = punch::start_offer(ctx, &circuit);
    let _offer_ends_with_us = crate::native::AbortOnDrop(offer.abort_handle());
    let exchange = ctx.libp2p.await_exchange(peer);
    if let Err(e) = tokio::time::timeout(
        ctx.session.handshake_timeout,
        ctx.libp2p.dial(circuit.clone(), peer),
    )
    .await
    .unwrap_or_else(|_| Err("timed out".into()))
    {
        return fail(
            Stage::Coordination,
            format!("reaching {peer} through the relay: {e}"),
        );
    }
    let stream = match tokio::time::timeout(ctx.session.handshake_timeout, exchange).await {
        Ok(Ok(stream)) => stream,
        _ => {
            ctx.libp2p.disconnect(peer).await;
            return fail(
                Stage::Coordination,
                format!("{peer} did not start the exchange"),
            );
        }
    };
    let mut out = punch::punch_as_a(ctx, peer, circuit, asked, stream, offer).await;
    // Everything libp2p carried for this connection: relay, identify, exchange.
    out.record.bytes.coordination = ctx.libp2p.counters.total().saturating_sub(bytes_before);
    out
}

/// The reachable side: for everyone who reaches us through a relay, run the
/// exchange and the punch (as BIP324 responder), then serve the session.
/// Each record goes to `records` when given.
pub async fn serve_relayed(
    ctx: Libp2pPunchContext,
    idle: Duration,
    records: Option<mpsc::Sender<Outcome>>,
) {
    let mut events = ctx.libp2p.events();
    let mut punches = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(Libp2pEvent::RelayedInbound { peer, via }) => {
                    let ctx = ctx.clone();
                    let records = records.clone();
                    punches.spawn(async move {
                        let out = punch::punch_as_b(&ctx, peer, via).await;
                        match &out.session {
                            Some(_) => tracing::info!(%peer, record = %out.record.to_json(), "punched session established"),
                            None => tracing::warn!(%peer, record = %out.record.to_json(), "punch failed"),
                        }
                        if let Some(tx) = records {
                            let _ = tx.send(out.record).await;
                        }
                        // The session belongs to the node from here: it
                        // outlives the relay and shows in `bitpunch peers`.
                        if let Some(session) = out.session {
                            ctx.owner.adopt_session(crate::node::SessionPath::Libp2p, session, idle, None).await;
                        }
                        if let Some(spliced) = out.spliced {
                            ctx.owner.adopt(spliced.info, spliced.task).await;
                        }
                    });
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => tracing::warn!(n, "missed libp2p events"),
                Err(_) => return,
            },
            Some(_) = punches.join_next(), if !punches.is_empty() => {}
        }
    }
}

/// Keeps a reservation on `relay` (with `/p2p/<id>`): reserves, reports the
/// circuit address through `on_reserved`, and after a loss tries again with
/// back-off (1 s doubling to 60 s).
pub async fn keep_reservation(
    node: std::sync::Arc<swarm::Libp2pNode>,
    relay: Multiaddr,
    on_reserved: impl Fn(&Multiaddr),
) {
    keep_reservation_reporting(node, relay, on_reserved, || {}).await
}

/// [`keep_reservation`] that also reports each loss (`on_lost`), for whoever
/// shows what the node holds (`bitpunch status`).
pub async fn keep_reservation_reporting(
    node: std::sync::Arc<swarm::Libp2pNode>,
    relay: Multiaddr,
    on_reserved: impl Fn(&Multiaddr),
    on_lost: impl Fn(),
) {
    let listen = relay.clone().with(Protocol::P2pCircuit);
    let mut backoff = crate::clock::Backoff::default();
    let mut events = node.events();
    loop {
        if let Err(e) = node.listen(listen.clone()).await {
            tracing::warn!(%relay, error = %e, retry_in = ?backoff.next(), "cannot ask for a reservation");
        } else {
            let mut held = false;
            loop {
                match events.recv().await {
                    Ok(Libp2pEvent::Reserved {
                        circuit, renewal, ..
                    }) if circuit.to_string().starts_with(&listen.to_string()) => {
                        if !renewal {
                            on_reserved(&circuit);
                        }
                        tracing::info!(%circuit, renewal, "reservation held");
                        held = true;
                        backoff.reset();
                    }
                    Ok(Libp2pEvent::ReservationLost { relay_addr, reason })
                        if relay_addr == listen =>
                    {
                        if held {
                            on_lost();
                            tracing::warn!(%relay, %reason, retry_in = ?backoff.next(), "reservation lost");
                        } else {
                            tracing::warn!(%relay, %reason, retry_in = ?backoff.next(), "no reservation");
                        }
                        break;
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        }
        backoff.wait().await;
    }
}
