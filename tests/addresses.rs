//! Address relay between real nodes on loopback: `getaddr` answers,
//! reachability records passed on, and peers that send garbage or floods
//! closed or throttled while the node keeps serving the others.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::ServiceFlags;
use bitpunch::addrman::{AddrKey, AddrMan, Netgroup, PeerAddr};
use bitpunch::clock::unix_now;
use bitpunch::identity::NodeKey;
use bitpunch::native::messages::{NativeMessage, NODE_PUNCH_HANDOFF_BIT, NODE_PUNCH_REACH_BIT};
use bitpunch::native::reach::ReachRecord;
use bitpunch::node::{Node, NodeConfig, SessionPath};
use bitpunch::peers::PeerBook;
use bitpunch::wire::{self, Network, SessionConfig};
use tokio::time::Instant;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn session(relays_records: bool) -> SessionConfig {
    let mut c = SessionConfig::new(Network::Regtest);
    if relays_records {
        c.services = ServiceFlags::from(NODE_PUNCH_REACH_BIT | NODE_PUNCH_HANDOFF_BIT);
    }
    c
}

struct Peer {
    node: Node,
    book: Arc<PeerBook>,
    key: NodeKey,
    addr: SocketAddr,
}

fn peer() -> Peer {
    peer_with_slots(None)
}

fn peer_with_slots(inbound_slots: Option<usize>) -> Peer {
    let key = NodeKey::generate();
    // Loopback is no internet: the book must be told to take it.
    let book = Arc::new(PeerBook::new(key.id(), AddrMan::new(), true));
    let mut config = NodeConfig::new(session(true));
    config.bind_ip = Some(LOOPBACK);
    config.port = 0;
    config.addresses = Some(book.clone());
    config.inbound_slots = inbound_slots;
    let node = Node::start(config).expect("bind loopback");
    let addr = SocketAddr::new(LOOPBACK, node.port());
    Peer {
        node,
        book,
        key,
        addr,
    }
}

/// `from` connects to `to` from its shared port and serves the session.
async fn connect(from: &Peer, to: &Peer) {
    // The shared port's last connection to the same peer may still be
    // closing (the 4-tuple is taken until it is gone).
    let mut tries = 0;
    let s = loop {
        let outcome = wire::connect(
            to.addr,
            &session(true),
            Some(from.node.shared_port()),
            Instant::now(),
        )
        .await;
        match outcome.result {
            Ok(s) => break s,
            Err(e) if tries < 50 => {
                tries += 1;
                tracing::debug!(%e, "retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("session: {e:?}"),
        }
    };
    assert!(
        from.node
            .session_owner()
            .adopt_session(SessionPath::Outbound, s, Duration::from_secs(60), None)
            .await
    );
}

fn record(coordinator_at: &str) -> (NodeKey, ReachRecord) {
    let key = NodeKey::generate();
    let coordinator = NodeKey::generate().id();
    let r = ReachRecord::sign(
        &key,
        coordinator,
        coordinator_at.parse().unwrap(),
        unix_now(),
    );
    (key, r)
}

fn holds(book: &PeerBook, key: &AddrKey) -> bool {
    book.with_addrman(|m| m.get(key).is_some())
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn via_key(r: &ReachRecord) -> AddrKey {
    PeerAddr::Via(r.clone()).key().unwrap()
}

#[tokio::test]
async fn a_new_peer_learns_addresses_and_records_from_its_getaddr() {
    let seeded = peer();
    let direct: SocketAddr = "203.0.113.40:8333".parse().unwrap();
    seeded.book.seed(direct);
    let (_, theirs) = record("192.0.2.9:8333");
    seeded.book.with_addrman(|m| {
        m.add(
            PeerAddr::Via(theirs.clone()),
            Netgroup::ipv4([198, 51]),
            unix_now(),
        )
    });
    // The seeded node is reachable via a coordinator of its own, too.
    let coordinator = NodeKey::generate().id();
    seeded.book.advertise(
        &seeded.key,
        coordinator,
        Some("192.0.2.10:8333".parse().unwrap()),
    );
    let own = seeded.book.own_records().pop().unwrap();

    let newcomer = peer();
    connect(&newcomer, &seeded).await;
    eventually("the newcomer holds what the seeded node knows", || {
        holds(&newcomer.book, &AddrKey::Direct(direct))
            && holds(&newcomer.book, &via_key(&theirs))
            && holds(&newcomer.book, &via_key(&own))
    })
    .await;
    // What it learned came from the seeded node's group.
    newcomer.book.with_addrman(|m| {
        let entry = m.get(&via_key(&theirs)).unwrap();
        assert_eq!(entry.source, Netgroup::Local);
        assert!(!entry.tried);
    });
}

#[tokio::test]
async fn a_fresh_record_travels_on_and_a_bad_one_does_not() {
    let (hub, left, right) = (peer(), peer(), peer());
    connect(&left, &hub).await;
    connect(&right, &hub).await;
    eventually("both sessions serve", || {
        hub.node.handle().peers().len() == 2
    })
    .await;

    // `left` becomes reachable via a coordinator: the hub hears it and
    // passes it on to `right`, who never talked to `left`.
    let coordinator = NodeKey::generate().id();
    left.book.advertise(
        &left.key,
        coordinator,
        Some("192.0.2.11:8333".parse().unwrap()),
    );
    let own = left.book.own_records().pop().unwrap();
    eventually("right learns left's record through the hub", || {
        holds(&right.book, &via_key(&own))
    })
    .await;

    // A forged record (someone else's key, left's id claimed through a
    // changed coordinator) is stored by nobody.
    let mut forged = own.clone();
    forged.coordinator_at = "192.0.2.66:8333".parse().unwrap();
    let raw = raw_session(hub.addr).await;
    let mut raw = raw;
    raw.send_message(
        &NativeMessage::Reach {
            records: vec![forged.clone()],
        }
        .to_network(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The forged endpoint was not taken anywhere (the key of the entry is
    // the same pair; the stored record is still the genuine one).
    for book in [&hub.book, &right.book] {
        book.with_addrman(|m| {
            assert_eq!(
                m.get(&via_key(&own)).unwrap().addr,
                PeerAddr::Via(own.clone())
            );
        });
    }
}

/// A session from no node at all: a test's hand on the wire.
async fn raw_session(
    to: SocketAddr,
) -> wire::Session<bitpunch::net::stream::Counted<tokio::net::TcpStream>> {
    wire::connect(to, &session(true), None, Instant::now())
        .await
        .result
        .expect("raw session")
}

#[tokio::test]
async fn a_peer_that_sends_a_broken_hpreach_is_closed_and_the_others_are_served() {
    let node = peer();
    let mut hostile = raw_session(node.addr).await;
    // A flood of records that do not verify is throttled and refused,
    // and costs the node nothing it keeps.
    let (_, genuine) = record("192.0.2.9:8333");
    let mut bad = genuine.clone();
    bad.signature[0] ^= 1;
    for _ in 0..20 {
        hostile
            .send_message(
                &NativeMessage::Reach {
                    records: vec![bad.clone(); 8],
                }
                .to_network(),
            )
            .await
            .unwrap();
    }
    // Then bytes that claim to be hpreach and are not.
    hostile
        .send_message(&NetworkMessage::Unknown {
            command: bitcoin::p2p::message::CommandString::try_from_static("hpreach").unwrap(),
            payload: vec![9, 1, 2, 3],
        })
        .await
        .unwrap();
    let closed = hostile.recv_message(Duration::from_secs(10)).await;
    assert!(closed.is_err(), "the node should close it: {closed:?}");
    assert!(node.book.with_addrman(|m| m.is_empty()));
    // Someone else is served as before.
    let mut friend = raw_session(node.addr).await;
    friend.send_message(&NetworkMessage::Ping(7)).await.unwrap();
    assert_eq!(
        friend.recv_message(Duration::from_secs(10)).await.unwrap(),
        NetworkMessage::Pong(7)
    );
}

#[tokio::test]
async fn a_full_node_hands_newcomers_to_an_inbound_peer_within_its_limits() {
    let full = peer_with_slots(Some(1));
    let inside = peer();
    // The inbound peer is reachable via a coordinator and says so first.
    inside.book.advertise(
        &inside.key,
        NodeKey::generate().id(),
        Some("192.0.2.12:8333".parse().unwrap()),
    );
    let inside_record = inside.book.own_records().pop().unwrap();
    connect(&inside, &full).await;
    eventually("the full node knows how to reach its inbound peer", || {
        holds(&full.book, &via_key(&inside_record))
    })
    .await;

    // A bitpunch newcomer is sent on to the inbound peer, and closed.
    let newcomer = peer();
    let mut handoffs = newcomer.book.take_handoffs();
    connect(&newcomer, &full).await;
    let handed = tokio::time::timeout(Duration::from_secs(10), handoffs.recv())
        .await
        .expect("a handoff within 10 s")
        .unwrap();
    assert_eq!(handed.record, inside_record);
    assert_eq!(handed.from, full.addr);
    eventually("the newcomer's session to the full node ends", || {
        newcomer.node.handle().peers().is_empty()
    })
    .await;
    assert_eq!(full.book.status().handoffs_given, 1);
    assert_eq!(full.book.status().inbound_sessions, 1);

    // A peer that does not speak hphandoff is just closed; so is the
    // newcomer once it used up its handoffs for the minute (2).
    let mut plain = wire::connect(
        full.addr,
        &SessionConfig::new(Network::Regtest),
        None,
        Instant::now(),
    )
    .await
    .result
    .expect("session");
    assert!(plain.recv_message(Duration::from_secs(10)).await.is_err());
    let mut events = full.node.events();
    for (handoffs, why) in [(2, "handed off to"), (2, "nobody to hand off to")] {
        connect(&newcomer, &full).await;
        let reason = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(bitpunch::node::NodeEvent::Closed { reason, .. }) = events.recv().await {
                    return reason;
                }
            }
        })
        .await
        .expect("the full node closes the newcomer");
        assert!(reason.contains(why), "{reason}");
        assert_eq!(full.book.status().handoffs_given, handoffs);
    }
    assert_eq!(newcomer.book.status().handoffs_received, 2);
}
