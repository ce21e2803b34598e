//! The libp2p path on loopback: a relay and two nodes on 127.0.0.1. The
//! punched connection must be direct between the two nodes' shared ports.

mod common;
use common::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bitpunch::libp2p::punch::Libp2pPunchContext;
use bitpunch::libp2p::relay::{RelayLimits, RelayServer};
use bitpunch::libp2p::swarm::Libp2pNode;
use bitpunch::libp2p::{self as path};
use bitpunch::node::{Node, NodeConfig};
use bitpunch::report::{Outcome, Path};
use bitpunch::wire::Transport;
use libp2p::{identity, Multiaddr};
use tokio::sync::mpsc;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

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
    Libp2pPunchContext::for_node(node, Arc::new(libp2p), session(), true)
}

async fn relay() -> RelayServer {
    RelayServer::start(
        identity::Keypair::generate_ed25519(),
        &["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
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

use bitpunch::libp2p::exchange::{self, HolePunch};
use futures::AsyncWriteExt;
use prost::Message;

#[tokio::test]
async fn malformed_exchange_messages_close_that_stream_and_the_node_serves_the_next_peer() {
    let relay = relay().await;
    let (bob_node, circuit, mut bob_records) = bob(&relay.address).await;
    let bob_peer = path::circuit_peer(&circuit).unwrap();

    let wrong_type = HolePunch {
        r#type: Some(200),
        obs_addrs: vec![],
    }
    .encode_to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "oversize",
            unsigned_varint::encode::usize(
                exchange::MAX_MESSAGE + 1,
                &mut unsigned_varint::encode::usize_buffer(),
            )
            .to_vec(),
            "limit",
        ),
        (
            "wrong type",
            [vec![wrong_type.len() as u8], wrong_type].concat(),
            "unknown type",
        ),
        ("truncated", vec![10, 8], "i/o"),
    ];
    for (what, bytes, expected) in cases {
        let mallory = node();
        let ctx = context(&mallory);
        let exchange = ctx.libp2p.await_exchange(bob_peer);
        ctx.libp2p.dial(circuit.clone(), bob_peer).await.unwrap();
        let mut stream = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .unwrap()
            .unwrap();
        // Bob's CONNECT, then garbage instead of ours.
        exchange::read_message(&mut stream).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        stream.close().await.unwrap();
        let record = tokio::time::timeout(Duration::from_secs(15), bob_records.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!record.ok, "{what}");
        let error = record.error.unwrap();
        assert!(error.contains(expected), "{what}: {error}");
    }

    // Bob still holds his reservation and punches with the next peer.
    let alice = node();
    let out = path::connect_circuit(&context(&alice), circuit).await;
    assert!(out.record.ok, "{}", out.record.to_json());
    assert_eq!(
        out.record.remote.as_deref(),
        Some(
            SocketAddr::new(LOOPBACK, bob_node.port())
                .to_string()
                .as_str()
        )
    );
}

#[tokio::test]
async fn a_node_re_reserves_when_its_relay_comes_back() {
    let key = identity::Keypair::generate_ed25519();
    let port = std::net::TcpListener::bind((LOOPBACK, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let listen = [listen];
    let start_relay = || RelayServer::start(key.clone(), &listen, None, RelayLimits::default());
    let relay = start_relay().await.unwrap();

    let bob = node();
    let ctx = context(&bob);
    let mut events = ctx.libp2p.events();
    let (tx, mut reserved) = mpsc::unbounded_channel();
    tokio::spawn(path::keep_reservation(
        ctx.libp2p.clone(),
        relay.address.clone(),
        move |c| {
            let _ = tx.send(c.clone());
        },
    ));
    tokio::spawn(path::serve_relayed(ctx, Duration::from_secs(30), None));
    let circuit = tokio::time::timeout(Duration::from_secs(10), reserved.recv())
        .await
        .unwrap()
        .unwrap();

    drop(relay);
    let lost = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(bitpunch::libp2p::swarm::Libp2pEvent::ReservationLost { reason, .. }) =
                events.recv().await
            {
                return reason;
            }
        }
    })
    .await
    .expect("the node notices the relay is gone");
    eprintln!("reservation lost: {lost}");

    // During the outage, connect fails, and says why.
    let alice = node();
    let out = path::connect_circuit(&context(&alice), circuit.clone()).await;
    assert!(!out.record.ok);
    let error = out.record.error.unwrap();
    assert!(error.contains("through the relay"), "{error}");

    let _relay = start_relay().await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(30), reserved.recv())
        .await
        .expect("re-reserved")
        .unwrap();
    assert_eq!(again, circuit, "same relay, same node: same address");
    let alice = node();
    let out = path::connect_circuit(&context(&alice), circuit).await;
    assert!(out.record.ok, "{}", out.record.to_json());
}

use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::Transport as _;

/// A TCP transport that reports every inbound connection as coming from
/// `lie`: a relay built on it tells everyone, through identify, that they
/// are at `lie`.
struct Lying {
    inner: libp2p::tcp::tokio::Transport,
    lie: Multiaddr,
}

impl libp2p::core::Transport for Lying {
    type Output = <libp2p::tcp::tokio::Transport as libp2p::core::Transport>::Output;
    type Error = <libp2p::tcp::tokio::Transport as libp2p::core::Transport>::Error;
    type ListenerUpgrade =
        <libp2p::tcp::tokio::Transport as libp2p::core::Transport>::ListenerUpgrade;
    type Dial = <libp2p::tcp::tokio::Transport as libp2p::core::Transport>::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }
    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }
    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        self.inner.dial(addr, opts)
    }
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let lie = self.lie.clone();
        std::pin::Pin::new(&mut self.inner)
            .poll(cx)
            .map(|event| match event {
                TransportEvent::Incoming {
                    listener_id,
                    upgrade,
                    local_addr,
                    ..
                } => TransportEvent::Incoming {
                    listener_id,
                    upgrade,
                    local_addr,
                    send_back_addr: lie,
                },
                other => other,
            })
    }
}

#[derive(libp2p::swarm::NetworkBehaviour)]
struct LyingRelay {
    relay: libp2p::relay::Behaviour,
    identify: libp2p::identify::Behaviour,
}

#[tokio::test]
async fn a_relay_that_lies_about_observed_addresses_never_yields_a_session_with_the_wrong_peer() {
    use futures::StreamExt;
    // Mallory: an ordinary node where the lie points.
    let mallory = node();
    let lie: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", mallory.port())
        .parse()
        .unwrap();
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                Lying {
                    inner: libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default()),
                    lie: lie.clone(),
                }
                .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                .authenticate(libp2p::noise::Config::new(key)?)
                .multiplex(libp2p::yamux::Config::default()),
            )
        })
        .unwrap()
        .with_behaviour(|key| LyingRelay {
            relay: libp2p::relay::Behaviour::new(key.public().to_peer_id(), Default::default()),
            identify: libp2p::identify::Behaviour::new(libp2p::identify::Config::new(
                "/ipfs/id/1.0.0".into(),
                key.public(),
            )),
        })
        .unwrap()
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let bound = loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
            swarm.select_next_some().await
        {
            break address;
        }
    };
    swarm.add_external_address(bound.clone());
    let relay_addr = bound.with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id()));
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });

    let mut short = session();
    short.handshake_timeout = Duration::from_secs(3);
    let bob_node = node();
    let mut bob_ctx = context(&bob_node);
    bob_ctx.session = short.clone();
    let (tx, mut rx) = mpsc::channel(1);
    let (records_tx, mut bob_records) = mpsc::channel(4);
    tokio::spawn(path::keep_reservation(
        bob_ctx.libp2p.clone(),
        relay_addr,
        move |c| {
            let _ = tx.try_send(c.clone());
        },
    ));
    tokio::spawn(path::serve_relayed(
        bob_ctx,
        Duration::from_secs(30),
        Some(records_tx),
    ));
    let circuit = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();

    let alice = node();
    let mut ctx = context(&alice);
    ctx.session = short;
    let out = path::connect_circuit(&ctx, circuit).await;
    assert!(out.session.is_none());
    let record = out.record;
    assert!(!record.ok, "{}", record.to_json());
    // Both were sent to Mallory's port instead of each other.
    assert_eq!(
        record.candidates,
        vec![SocketAddr::new(LOOPBACK, mallory.port()).to_string()]
    );
    let bobs = tokio::time::timeout(Duration::from_secs(30), bob_records.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(!bobs.ok, "{}", bobs.to_json());
    eprintln!(
        "alice: {}\nbob: {}",
        record.error.unwrap_or_default(),
        bobs.error.unwrap_or_default()
    );
}
