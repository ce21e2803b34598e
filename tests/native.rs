//! The native path on loopback: a coordinator and two nodes on 127.0.0.1,
//! each node on its own shared port. The punched connection must be direct
//! between the two node ports, not through the coordinator.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bitpunch::identity::NodeKey;
use bitpunch::native::client::LinkConfig;
use bitpunch::native::coordinator::{CoordinatorServer, CoordinatorServerConfig};
use bitpunch::native::machine::ClientConfig;
use bitpunch::native::{self};
use bitpunch::node::{Node, NodeConfig};
use bitpunch::report::Outcome;
use bitpunch::wire::{Network, SessionConfig, Transport};
use tokio::sync::mpsc;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn session() -> SessionConfig {
    let mut s = SessionConfig::new(Network::Regtest);
    s.handshake_timeout = Duration::from_secs(10);
    s
}

fn coordinator() -> (CoordinatorServer, SocketAddr) {
    let mut config = CoordinatorServerConfig::new(session());
    config.bind_ip = Some(LOOPBACK);
    config.port = 0;
    let server = CoordinatorServer::start(config).unwrap();
    let addr = server.local_addrs()[0];
    (server, addr)
}

fn node() -> Node {
    let mut config = NodeConfig::new(session());
    config.bind_ip = Some(LOOPBACK);
    config.port = 0;
    Node::start(config).unwrap()
}

fn link_config() -> LinkConfig {
    LinkConfig {
        session: session(),
        client: ClientConfig::default(),
    }
}

/// Bob registers and serves orders; returns his id, his node, and where his
/// punch records arrive.
async fn responder(
    coordinator: SocketAddr,
) -> (
    bitpunch::identity::NodeId,
    Arc<Node>,
    mpsc::Receiver<Outcome>,
) {
    let bob = Arc::new(node());
    let key = NodeKey::generate();
    let mut link = native::register(&bob, coordinator, &key, link_config())
        .await
        .unwrap();
    let id = link.id;
    assert_eq!(
        link.observed.port(),
        bob.port(),
        "registered from the shared port"
    );
    let (tx, rx) = mpsc::channel(8);
    let bob_for_task = bob.clone();
    tokio::spawn(async move {
        native::serve_orders(
            &bob_for_task,
            &mut link,
            Arc::new(key),
            session(),
            Duration::from_secs(30),
            Some(tx),
        )
        .await;
    });
    (id, bob, rx)
}

#[tokio::test]
async fn punch_over_loopback_is_direct_between_the_node_ports() {
    let (server, coord) = coordinator();
    let mut events = server.events();
    let (bob_id, bob, mut bob_records) = responder(coord).await;

    let alice = node();
    let alice_key = Arc::new(NodeKey::generate());
    let link = native::register(&alice, coord, &alice_key, link_config())
        .await
        .unwrap();
    let outcome = native::connect_via(&alice, &link, alice_key.clone(), session(), bob_id).await;
    let record = outcome.record;
    assert!(record.ok, "{}", record.to_json());
    assert_eq!(record.transport, Some(Transport::V2));
    let bob_addr = SocketAddr::new(LOOPBACK, bob.port());
    assert_eq!(
        record.remote.as_deref(),
        Some(bob_addr.to_string().as_str())
    );
    assert_eq!(
        record.local.as_deref(),
        Some(SocketAddr::new(LOOPBACK, alice.port()).to_string().as_str())
    );
    assert_eq!(record.via.as_deref(), Some(coord.to_string().as_str()));
    assert!(record.won_by.is_some());
    assert!(record.bytes.coordination > 0 && record.bytes.direct > 0);
    let t = &record.t_ms;
    assert!(
        t.coordination <= t.first_syn && t.first_syn <= t.tcp && t.tcp <= t.verack,
        "{t:?}"
    );

    let theirs = tokio::time::timeout(Duration::from_secs(10), bob_records.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(theirs.ok, "{}", theirs.to_json());
    assert_eq!(theirs.session_id, record.session_id, "one BIP324 session");
    assert_eq!(
        theirs.remote.as_deref(),
        Some(SocketAddr::new(LOOPBACK, alice.port()).to_string().as_str())
    );

    // The coordinator heard about it from both sides.
    let mut reports = 0;
    while reports < 2 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        if let native::coordinator::CoordinatorEvent::Reported { result, .. } = event {
            assert_eq!(result, native::messages::PunchResult::Connected);
            reports += 1;
        }
    }
    drop(server);
}

use bitpunch::native::messages::{NativeMessage, PunchRole};
use bitpunch::wire::Stage;
use std::sync::Mutex;

/// A coordinator that sends Alice to Mallory instead of Bob. Mallory holds
/// her own key and answers the punch like any node would.
async fn man_in_the_middle(substitute_key: bool) -> Outcome {
    let mallory = Arc::new(node());
    let mallory_key = Arc::new(NodeKey::generate());
    let mallory_addr = SocketAddr::new(LOOPBACK, mallory.port());
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let seen_tx = Mutex::new(seen_tx);
    let mallory_public = mallory_key.public().serialize();
    let mut config = CoordinatorServerConfig::new(session());
    config.bind_ip = Some(LOOPBACK);
    config.port = 0;
    config.filter = Some(Arc::new(move |_conn, msg: &mut NativeMessage| {
        if let NativeMessage::Punch { role, peer, peer_key, request, .. } = msg {
            match role {
                PunchRole::Initiator => {
                    *peer = mallory_addr;
                    if substitute_key {
                        *peer_key = mallory_public;
                    }
                }
                // Bob's order tells us where Alice is; Mallory goes there.
                PunchRole::Responder => {
                    let _ = seen_tx.lock().unwrap().send((*request, *peer));
                }
            }
        }
    }));
    let server = CoordinatorServer::start(config).unwrap();
    let coord = server.local_addrs()[0];
    let (bob_id, _bob, _records) = responder(coord).await;

    let alice = node();
    let alice_key = Arc::new(NodeKey::generate());
    let alice_public = alice_key.public();
    let link = native::register(&alice, coord, &alice_key, link_config()).await.unwrap();
    let mallory_task = {
        let mallory = mallory.clone();
        tokio::spawn(async move {
            let (request, alice_at) = seen.recv().await.unwrap();
            let ctx = native::punch::PunchContext {
                port: mallory.shared_port().clone(),
                router: mallory.router().clone(),
                key: mallory_key,
                session: session(),
                coordinator: coord,
                coordinator_rtt: Duration::ZERO,
            };
            let order = native::machine::PunchOrder {
                request,
                role: PunchRole::Responder,
                peer_key: alice_public,
                peer: alice_at,
                // On the same schedule as everyone: the coordinator's margin.
                delay: Duration::from_millis(20),
            };
            let now = tokio::time::Instant::now();
            native::punch::execute(&ctx, order, now, now).await
        })
    };
    let record = native::connect_via(&alice, &link, alice_key, session(), bob_id).await.record;
    if !substitute_key {
        // Mallory did get a BIP324 session with Alice (and, knowing Alice's
        // key from the coordinator, accepts her); only Bob's key, which she
        // does not hold, gives her away.
        let mallory_side = mallory_task.await.unwrap();
        assert_eq!(mallory_side.record.transport, Some(Transport::V2), "{}", mallory_side.record.to_json());
    }
    drop(server);
    record
}

#[tokio::test]
async fn a_coordinator_in_the_middle_is_caught_by_the_session_signature() {
    let record = man_in_the_middle(false).await;
    assert!(!record.ok);
    assert_eq!(record.failed_at, Some(Stage::Auth), "{}", record.to_json());
    let error = record.error.unwrap();
    assert!(error.contains("could not prove it holds the key"), "{error}");
    assert!(error.contains("in the middle"), "{error}");
}

#[tokio::test]
async fn a_coordinator_that_swaps_the_key_is_refused_before_any_syn() {
    let record = man_in_the_middle(true).await;
    assert!(!record.ok);
    assert_eq!(record.failed_at, Some(Stage::Coordination), "{}", record.to_json());
    assert!(record.error.unwrap().contains("does not hash to that id"));
    assert_eq!(record.t_ms.first_syn, None);
}
