//! A node's links to its third parties (coordinator, relay) against a
//! hostile network, in the NAT lab (root; skips loudly elsewhere): an
//! on-path attacker that plays the coordinator, a coordinator or relay that
//! vanishes without a FIN or RST, and both dying under open sessions.

mod common;
use common::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitpunch::identity::NodeKey;
use bitpunch::lab::{Lab, LinkShape, NatProfile};
use bitpunch::native::client::{CoordinatorEndpoint, LinkConfig};
use bitpunch::native::coordinator::{CoordinatorServer, CoordinatorServerConfig};
use bitpunch::native::machine::ClientConfig;
use bitpunch::native::messages::{node_punch_coordinator, NativeMessage};
use bitpunch::native::{self, RegistrationEvent};
use bitpunch::net::stream::Counted;
use bitpunch::node::{Node, NodeConfig};
use bitpunch::wire::{self, Session, SessionRole, StreamContext, Transport};
use tokio::sync::mpsc;
use tokio::time::Instant;

const COORDINATOR_PORT: u16 = 18555;
const BOB_PORT: u16 = 18444;

fn node() -> Node {
    let mut config = NodeConfig::new(session());
    config.bind_ip = Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    config.port = BOB_PORT;
    Node::start(config).unwrap()
}

fn link_config(ping_interval: Duration) -> LinkConfig {
    let mut session = session();
    // A black-holed coordinator makes each attempt wait this long.
    session.handshake_timeout = Duration::from_secs(3);
    LinkConfig {
        session,
        client: ClientConfig::default(),
        ping_interval,
        refusals: None,
    }
}

/// A real coordinator on `host`'s runtime, pinging its clients every
/// `ping_interval`; returns how nodes name it.
fn start_coordinator(
    rt: &bitpunch::lab::NsRuntime,
    ip: Ipv4Addr,
    ping_interval: Duration,
) -> CoordinatorEndpoint {
    let key = NodeKey::generate();
    let id = key.id();
    rt.spawn(async move {
        let mut config = CoordinatorServerConfig::new(session(), key);
        config.port = COORDINATOR_PORT;
        config.ping_interval = ping_interval;
        let server = CoordinatorServer::start(config).unwrap();
        // Lives as long as the namespace's runtime.
        std::future::pending::<()>().await;
        drop(server);
    });
    CoordinatorEndpoint {
        id,
        addr: SocketAddr::new(ip.into(), COORDINATOR_PORT),
    }
}

/// An attacker in the middle: it ends the node's BIP324 session itself (as
/// a coordinator would, service bit and all), opens its own to the real
/// coordinator, and forwards every message both ways. `saw_proof` is set
/// when the real coordinator's `hpcoord` passed through it.
async fn forward_as_man_in_the_middle(real: SocketAddr, saw_proof: Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, COORDINATOR_PORT))
        .await
        .unwrap();
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            return;
        };
        let saw_proof = saw_proof.clone();
        tokio::spawn(async move {
            let now = Instant::now();
            let Ok(local) = stream.local_addr() else {
                return;
            };
            let counted = Counted::new(stream);
            let ctx = StreamContext {
                local,
                remote,
                started: now,
                tcp_at: now,
                counters: counted.counters(),
            };
            let mut config = session();
            config.services |= node_punch_coordinator();
            let Ok(with_node) =
                Session::establish(counted, ctx, SessionRole::Responder, Transport::V2, &config)
                    .await
            else {
                return;
            };
            let Ok(with_coordinator) = wire::connect(real, &session(), None, Instant::now())
                .await
                .result
            else {
                return;
            };
            let (mut from_node, mut to_node, _) = with_node.into_parts();
            let (mut from_coordinator, mut to_coordinator, _) = with_coordinator.into_parts();
            let upstream = async {
                while let Ok(next) = from_node.recv().await {
                    if let Some(msg) = next {
                        if to_coordinator.send(&msg).await.is_err() {
                            return;
                        }
                    }
                }
            };
            let downstream = async {
                while let Ok(next) = from_coordinator.recv().await {
                    if let Some(msg) = next {
                        if let Ok(Some(NativeMessage::Coordinator { .. })) =
                            NativeMessage::from_network(&msg)
                        {
                            saw_proof.store(true, Ordering::SeqCst);
                        }
                        if to_node.send(&msg).await.is_err() {
                            return;
                        }
                    }
                }
            };
            tokio::select! {
                () = upstream => {}
                () = downstream => {}
            }
        });
    }
}

/// A namespace on Bob's path (his NAT router) redirects the coordinator's
/// address to a man in the middle, which relays the real coordinator's
/// proof: Bob refuses to register and says why; the real coordinator
/// never sees his key.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_path_attacker_cannot_play_the_coordinator() {
    require_lab!();
    let profile: NatProfile = "home".parse().unwrap();
    let (mut lab, t) = Lab::two_nats(profile, profile, LinkShape::default()).unwrap();
    let mitm = lab.add_public_host("mitm").unwrap();
    let coord_rt = lab.runtime(&t.coordinator).unwrap();
    let mitm_rt = lab.runtime(&mitm).unwrap();
    let bob_rt = lab.runtime(&t.bob).unwrap();
    let coordinator = start_coordinator(&coord_rt, t.coordinator.ip, Duration::from_secs(30));
    let saw_proof = Arc::new(AtomicBool::new(false));
    mitm_rt.spawn(forward_as_man_in_the_middle(
        coordinator.addr,
        saw_proof.clone(),
    ));
    // Bob's router sends his connections to the coordinator to the attacker.
    lab.nft(
        &t.nat_bob.ns,
        &format!(
            "table ip onpath {{
               chain to_attacker {{
                 type nat hook prerouting priority dstnat - 10;
                 iifname \"lan\" ip daddr {} tcp dport {COORDINATOR_PORT} dnat to {}:{COORDINATOR_PORT};
               }}
             }}",
            t.coordinator.ip, mitm.ip
        ),
    )
    .unwrap();

    let refused = bob_rt
        .run(async move {
            let bob = node();
            let mut last = String::new();
            // The attacker may still be starting: the first tries can fail
            // to connect; the verdict is the first one it answered.
            for _ in 0..50 {
                match native::register(
                    &bob,
                    coordinator,
                    &NodeKey::generate(),
                    link_config(Duration::from_secs(30)),
                )
                .await
                {
                    Ok(link) => panic!("registered through the attacker as {}", link.id),
                    Err(e) => last = format!("{e:#}"),
                }
                if !last.contains("connecting to coordinator") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            last
        })
        .await;
    eprintln!("Bob: {refused}");
    assert!(
        refused.contains("does not verify over this BIP324 session"),
        "{refused}"
    );
    assert!(
        saw_proof.load(Ordering::SeqCst),
        "the attacker did not relay the proof: the test did not test the attack"
    );
}

type Events = mpsc::UnboundedReceiver<(Instant, RegistrationEvent)>;

async fn next(events: &mut Events) -> (Instant, RegistrationEvent) {
    tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .expect("an event within a minute")
        .expect("the node keeps going")
}

/// The coordinator's host drops every packet of the link (no FIN, no
/// RST): Bob notices within two ping intervals, keeps trying with
/// back-off, and registers again once the black hole is lifted.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_coordinator_is_noticed_and_registered_with_again() {
    require_lab!();
    let profile: NatProfile = "home".parse().unwrap();
    let (lab, t) = Lab::two_nats(profile, profile, LinkShape::default()).unwrap();
    let coord_rt = lab.runtime(&t.coordinator).unwrap();
    let bob_rt = lab.runtime(&t.bob).unwrap();
    let ping_interval = Duration::from_secs(1);
    let coordinator = start_coordinator(&coord_rt, t.coordinator.ip, ping_interval);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    bob_rt.spawn(async move {
        let bob = node();
        native::stay_registered(
            &bob,
            coordinator,
            Arc::new(NodeKey::generate()),
            link_config(ping_interval),
            Duration::from_secs(60),
            None,
            move |event| {
                let _ = events_tx.send((Instant::now(), event));
            },
        )
        .await;
    });
    // Registered (the coordinator may need a moment to start).
    loop {
        if let (_, RegistrationEvent::Registered { .. }) = next(&mut events).await {
            break;
        }
    }

    let black_hole = format!(
        "table ip blackhole {{
           chain inbound {{ type filter hook input priority -10; tcp dport {COORDINATOR_PORT} drop; }}
           chain outbound {{ type filter hook output priority -10; tcp sport {COORDINATOR_PORT} drop; }}
         }}"
    );
    lab.nft(&t.coordinator.ns, &black_hole).unwrap();
    let holed_at = Instant::now();
    let (lost_at, why) = match next(&mut events).await {
        (at, RegistrationEvent::Lost { why }) => (at, why),
        (_, other) => panic!("before the loss: {other:?}"),
    };
    let noticed = lost_at - holed_at;
    eprintln!("black hole noticed after {noticed:?}: {why}");
    assert!(why.contains("ping"), "{why}");
    // Two intervals, and generous room for a loaded machine.
    assert!(
        noticed < ping_interval * 2 + Duration::from_secs(5),
        "{noticed:?}"
    );
    // While the hole lasts, attempts fail and the node keeps trying.
    match next(&mut events).await {
        (_, RegistrationEvent::Failed { why }) => {
            eprintln!("while black-holed: {why}");
            // The dead link was reset, not left retransmitting a FIN that
            // holds our port's 4-tuple to the coordinator.
            assert!(!why.contains("os error 99"), "{why}");
        }
        (_, other) => panic!("registered through a black hole: {other:?}"),
    }

    lab.nft(&t.coordinator.ns, "delete table ip blackhole")
        .unwrap();
    let lifted_at = Instant::now();
    let back_at = loop {
        if let (at, RegistrationEvent::Registered { .. }) = next(&mut events).await {
            break at;
        }
    };
    eprintln!(
        "registered again {:?} after the black hole was lifted",
        back_at - lifted_at
    );
}

/// Alice punches to Bob on both paths; then the relay and the coordinator
/// die (their runtimes stop, closing every socket). Both punched sessions
/// keep answering pings: they belong to the nodes, not to the links that
/// set them up.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punched_sessions_outlive_their_relay_and_coordinator() {
    use bitpunch::libp2p::punch::Libp2pPunchContext;
    use bitpunch::libp2p::swarm::Libp2pNode;

    require_lab!();
    let profile: NatProfile = "home".parse().unwrap();
    let (lab, t) = Lab::two_nats(profile, profile, LinkShape::delay_ms(10)).unwrap();
    let relay_rt = lab.runtime(&t.relay).unwrap();
    let relay = start_relay(&relay_rt, t.relay.ip).await;
    let coord_rt = lab.runtime(&t.coordinator).unwrap();
    let coordinator = start_coordinator(&coord_rt, t.coordinator.ip, Duration::from_secs(30));

    // Bob: reachable on both paths, as `bitpunch node --relay R --coordinator C`.
    let bob_rt = lab.runtime(&t.bob).unwrap();
    let (circuit_tx, circuit_rx) = tokio::sync::oneshot::channel();
    let (id_tx, mut id_rx) = mpsc::unbounded_channel();
    bob_rt.spawn(async move {
        let bob = node();
        let libp2p = Arc::new(
            Libp2pNode::start(
                libp2p::identity::Keypair::generate_ed25519(),
                bob.shared_port().clone(),
                bob.router(),
            )
            .unwrap(),
        );
        let circuit_tx = std::sync::Mutex::new(Some(circuit_tx));
        tokio::spawn(bitpunch::libp2p::keep_reservation(
            libp2p.clone(),
            relay,
            move |circuit| {
                if let Some(tx) = circuit_tx.lock().unwrap().take() {
                    let _ = tx.send(circuit.clone());
                }
            },
        ));
        let ctx = Libp2pPunchContext::for_node(&bob, libp2p, session(), false);
        tokio::join!(
            bitpunch::libp2p::serve_relayed(ctx, Duration::from_secs(120), None),
            native::stay_registered(
                &bob,
                coordinator,
                Arc::new(NodeKey::generate()),
                link_config(Duration::from_secs(30)),
                Duration::from_secs(120),
                None,
                move |event| {
                    if let RegistrationEvent::Registered { id, .. } = event {
                        let _ = id_tx.send(id);
                    }
                },
            ),
        );
    });
    let circuit = tokio::time::timeout(Duration::from_secs(20), circuit_rx)
        .await
        .expect("Bob's reservation")
        .unwrap();
    let bob_id = tokio::time::timeout(Duration::from_secs(20), id_rx.recv())
        .await
        .expect("Bob's registration")
        .unwrap();

    // Alice punches on both paths and holds the sessions until told.
    let alice_rt = lab.runtime(&t.alice).unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let alice = alice_rt.spawn(async move {
        let mut config = NodeConfig::new(session());
        config.bind_ip = Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        config.port = 0;
        let node = Node::start(config).unwrap();
        let libp2p = Arc::new(
            Libp2pNode::start(
                libp2p::identity::Keypair::generate_ed25519(),
                node.shared_port().clone(),
                node.router(),
            )
            .unwrap(),
        );
        let ctx = Libp2pPunchContext::for_node(&node, libp2p, session(), false);
        let relayed = bitpunch::libp2p::connect_circuit(&ctx, circuit).await;
        // Another port for the native path: a TCP connection is its
        // 4-tuple, so two direct sessions between the same two shared
        // ports cannot exist (the second punch fails "address not
        // available").
        let mut config = NodeConfig::new(session());
        config.bind_ip = Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        config.port = 0;
        let node2 = Node::start(config).unwrap();
        let key = Arc::new(NodeKey::generate());
        let link = native::register(
            &node2,
            coordinator,
            &key,
            link_config(Duration::from_secs(30)),
        )
        .await
        .unwrap();
        let native =
            native::connect_via(&node2, &link, key, session(), bob_id, Instant::now()).await;
        let (Some(mut over_libp2p), Some(mut over_native)) = (relayed.session, native.session)
        else {
            panic!(
                "a punch failed: {} / {}",
                relayed.record.to_json(),
                native.record.to_json()
            )
        };
        let _ = ready_tx.send(());
        let _ = killed_rx.await;
        (
            over_libp2p
                .measure_rtt(Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string()),
            over_native
                .measure_rtt(Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string()),
        )
    });
    tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .expect("both punches within a minute")
        .expect("Alice's task ended early");
    // The third parties go away: every socket they held is closed.
    drop(relay_rt);
    drop(coord_rt);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = killed_tx.send(());
    let (libp2p_rtt, native_rtt) = alice.await.unwrap();
    eprintln!("after the relay and coordinator died: libp2p session {libp2p_rtt:?}, native session {native_rtt:?}");
    assert!(libp2p_rtt.is_ok(), "{libp2p_rtt:?}");
    assert!(native_rtt.is_ok(), "{native_rtt:?}");
}

/// The relay's host drops every packet of the reservation's connection:
/// Bob notices at the first failed libp2p ping that rust-libp2p reports
/// (interval and timeout 1 s here, 15 s and 20 s in use), and reserves
/// again once the drop is lifted.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_relay_is_noticed_and_reserved_with_again() {
    use bitpunch::libp2p::swarm::{Libp2pEvent, Libp2pNode, Libp2pOptions};

    require_lab!();
    let profile: NatProfile = "home".parse().unwrap();
    let (lab, t) = Lab::two_nats(profile, profile, LinkShape::default()).unwrap();
    let relay_rt = lab.runtime(&t.relay).unwrap();
    let relay = start_relay(&relay_rt, t.relay.ip).await;
    let bob_rt = lab.runtime(&t.bob).unwrap();
    let (events_tx, mut events) = mpsc::unbounded_channel::<(Instant, String)>();
    bob_rt.spawn(async move {
        let bob = node();
        let options = Libp2pOptions {
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let libp2p = Arc::new(
            Libp2pNode::start_with(
                libp2p::identity::Keypair::generate_ed25519(),
                bob.shared_port().clone(),
                bob.router(),
                options,
            )
            .unwrap(),
        );
        let mut swarm_events = libp2p.events();
        let lost_tx = events_tx.clone();
        tokio::spawn(async move {
            while let Ok(event) = swarm_events.recv().await {
                if let Libp2pEvent::ReservationLost { reason, .. } = event {
                    let _ = lost_tx.send((Instant::now(), format!("lost: {reason}")));
                }
            }
        });
        bitpunch::libp2p::keep_reservation(libp2p, relay, move |_| {
            let _ = events_tx.send((Instant::now(), "reserved".into()));
        })
        .await;
    });
    let mut first = None;
    while first.is_none() {
        let (at, what) = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("a reservation within 30 s")
            .unwrap();
        if what == "reserved" {
            first = Some(at);
        }
    }

    lab.nft(
        &t.relay.ns,
        "table ip blackhole {
           chain inbound { type filter hook input priority -10; tcp dport 4001 drop; }
           chain outbound { type filter hook output priority -10; tcp sport 4001 drop; }
         }",
    )
    .unwrap();
    let holed_at = Instant::now();
    let (lost_at, why) = tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .expect("the loss noticed within a minute")
        .unwrap();
    let noticed = lost_at - holed_at;
    eprintln!("relay black hole noticed after {noticed:?}: {why}");
    assert!(why.starts_with("lost"), "{why}");
    // rust-libp2p does not report a connection's first ping failure; the
    // second ping fails when its stream negotiation times out (10 s). So:
    // 2 × (1 s + 1 s) + 10 s, and room for a loaded machine.
    assert!(noticed < Duration::from_secs(4 + 10 + 5), "{noticed:?}");

    lab.nft(&t.relay.ns, "delete table ip blackhole").unwrap();
    let lifted_at = Instant::now();
    let back_at = loop {
        let (at, what) = tokio::time::timeout(Duration::from_secs(90), events.recv())
            .await
            .expect("reserved again within 90 s of the lift")
            .unwrap();
        if what == "reserved" {
            break at;
        }
    };
    eprintln!(
        "reserved again {:?} after the black hole was lifted",
        back_at - lifted_at
    );
}
