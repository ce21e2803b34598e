//! The libp2p path on loopback: a relay and two nodes on 127.0.0.1. The
//! punched connection must be direct between the two nodes' shared ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bitpunch::libp2p::punch::Libp2pPunchContext;
use bitpunch::libp2p::relay::{RelayLimits, RelayServer};
use bitpunch::libp2p::swarm::Libp2pNode;
use bitpunch::libp2p::{self as path};
use bitpunch::node::{Node, NodeConfig};
use bitpunch::report::{Outcome, Path};
use bitpunch::wire::{Network, SessionConfig, Transport};
use libp2p::{identity, Multiaddr};
use tokio::sync::mpsc;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn session() -> SessionConfig {
    let mut s = SessionConfig::new(Network::Regtest);
    s.handshake_timeout = Duration::from_secs(10);
    s
}

fn node() -> Node {
    let mut config = NodeConfig::new(session());
    config.bind_ip = Some(LOOPBACK);
    config.port = 0;
    Node::start(config).unwrap()
}

fn context(node: &Node) -> Libp2pPunchContext {
    let libp2p = Libp2pNode::start(
        identity::Keypair::generate_ed25519(),
        node.shared_port().clone(),
        node.router(),
    )
    .unwrap();
    Libp2pPunchContext {
        port: node.shared_port().clone(),
        router: node.router().clone(),
        libp2p: Arc::new(libp2p),
        session: session(),
        allow_private: true,
        dial_delay: std::time::Duration::ZERO,
    }
}

async fn relay() -> RelayServer {
    RelayServer::start(
        identity::Keypair::generate_ed25519(),
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        None,
        RelayLimits::default(),
    )
    .await
    .unwrap()
}

/// Bob reserves on `relay` and serves punches; returns his circuit address.
async fn bob(relay: &Multiaddr) -> (Node, Multiaddr, mpsc::Receiver<Outcome>) {
    let bob = node();
    let ctx = context(&bob);
    let (tx, rx) = mpsc::channel(1);
    let (records_tx, records) = mpsc::channel(8);
    tokio::spawn(path::keep_reservation(
        ctx.libp2p.clone(),
        relay.clone(),
        move |circuit| {
            let _ = tx.try_send(circuit.clone());
        },
    ));
    tokio::spawn(path::serve_relayed(
        ctx,
        Duration::from_secs(30),
        Some(records_tx),
    ));
    let mut rx = rx;
    let circuit = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("reservation")
        .unwrap();
    (bob, circuit, records)
}

#[tokio::test]
async fn connect_via_circuit_punches_a_direct_bip324_session() {
    let relay = relay().await;
    let (bob, circuit, mut bob_records) = bob(&relay.address).await;
    assert!(
        circuit.to_string().contains("/p2p-circuit/p2p/"),
        "{circuit}"
    );

    let alice = node();
    let ctx = context(&alice);
    let out = path::connect_circuit(&ctx, circuit.clone()).await;
    let record = out.record;
    assert!(record.ok, "{}", record.to_json());
    assert_eq!(record.path, Path::Libp2p);
    assert_eq!(record.transport, Some(Transport::V2));
    assert_eq!(
        record.remote.as_deref(),
        Some(SocketAddr::new(LOOPBACK, bob.port()).to_string().as_str())
    );
    assert_eq!(
        record.local.as_deref(),
        Some(SocketAddr::new(LOOPBACK, alice.port()).to_string().as_str())
    );
    assert_eq!(record.via.as_deref(), Some(circuit.to_string().as_str()));
    assert!(record.bytes.coordination > 0);
    let theirs = tokio::time::timeout(Duration::from_secs(10), bob_records.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(theirs.ok, "{}", theirs.to_json());
    assert_eq!(theirs.session_id, record.session_id);
}
