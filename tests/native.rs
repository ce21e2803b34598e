//! The native path on loopback: a coordinator and two nodes on 127.0.0.1,
//! each node on its own shared port. The punched connection must be direct
//! between the two node ports, not through the coordinator.

mod common;
use common::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bitpunch::identity::NodeKey;
use bitpunch::native::client::{CoordinatorEndpoint, LinkConfig};
use bitpunch::native::coordinator::{CoordinatorServer, CoordinatorServerConfig};
use bitpunch::native::machine::ClientConfig;
use bitpunch::native::{self};
use bitpunch::node::{Node, NodeConfig};
use bitpunch::report::Outcome;
use bitpunch::wire::Transport;
use tokio::sync::mpsc;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn node() -> Node {
    let mut config = NodeConfig::new(session());
    config.bind_ip = Some(LOOPBACK);
    config.port = 0;
    Node::start(config).unwrap()
}

fn link_config() -> LinkConfig {
    LinkConfig {
        session: session(),
        // Everything here is on 127.0.0.1.
        client: ClientConfig {
            allow_private: true,
            ..Default::default()
        },
        ping_interval: bitpunch::native::client::LINK_PING_INTERVAL,
        refusals: None,
    }
}

/// Bob registers and serves orders; returns his id, his node, and where his
/// punch records arrive.
async fn responder(
    coordinator: CoordinatorEndpoint,
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
    let (server, coord) = coordinator_on_loopback();
    let mut events = server.events();
    let (bob_id, bob, mut bob_records) = responder(coord).await;

    let alice = node();
    let alice_key = Arc::new(NodeKey::generate());
    let link = native::register(&alice, coord, &alice_key, link_config())
        .await
        .unwrap();
    let outcome = native::connect_via(
        &alice,
        &link,
        alice_key.clone(),
        session(),
        bob_id,
        tokio::time::Instant::now(),
    )
    .await;
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
        t.coordination.is_some() && t.coordination <= t.tcp && t.tcp <= t.verack,
        "{t:?}"
    );
    // Bob's SYN may be accepted before Alice's own first dial is due (a
    // loaded machine delays her schedule): then she never sent one.
    match t.first_syn {
        Some(_) => assert!(
            t.coordination <= t.first_syn && t.first_syn <= t.tcp,
            "{t:?}"
        ),
        None => assert_eq!(
            record.won_by.map(|w| format!("{w:?}")),
            Some("Accept".to_string()),
            "no SYN of ours, yet not won by accepting: {}",
            record.to_json()
        ),
    }

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
    let mut config = CoordinatorServerConfig::new(session(), NodeKey::generate());
    config.bind_ip = Some(LOOPBACK);
    config.port = 0;
    config.filter = Some(Arc::new(move |_conn, msg: &mut NativeMessage| {
        if let NativeMessage::Punch {
            role,
            peer,
            peer_key,
            request,
            ..
        } = msg
        {
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
    let coord = CoordinatorEndpoint {
        id: server.id(),
        addr: server.local_addrs()[0],
    };
    let (bob_id, _bob, _records) = responder(coord).await;

    let alice = node();
    let alice_key = Arc::new(NodeKey::generate());
    let alice_public = alice_key.public();
    let link = native::register(&alice, coord, &alice_key, link_config())
        .await
        .unwrap();
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
                ending: Default::default(),
                prediction: None,
                known_nat: Default::default(),
                early_probe: None,
            };
            let order = native::machine::PunchOrder {
                request,
                role: PunchRole::Responder,
                peer_key: alice_public,
                peer: alice_at,
                // On the same schedule as everyone: the coordinator's margin.
                delay: Duration::from_millis(20),
                local: vec![],
                other_family: None,
                peer_nat: None,
            };
            let now = tokio::time::Instant::now();
            let (_no_prediction, predicted) = tokio::sync::oneshot::channel();
            native::punch::execute(&ctx, order, predicted, now, now).await
        })
    };
    let record = native::connect_via(
        &alice,
        &link,
        alice_key,
        session(),
        bob_id,
        tokio::time::Instant::now(),
    )
    .await
    .record;
    if !substitute_key {
        // Mallory did get a BIP324 session with Alice (and, knowing Alice's
        // key from the coordinator, accepts her); only Bob's key, which she
        // does not hold, gives her away.
        let mallory_side = mallory_task.await.unwrap();
        assert_eq!(
            mallory_side.record.transport,
            Some(Transport::V2),
            "{}",
            mallory_side.record.to_json()
        );
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
    assert!(
        error.contains("could not prove it holds the key"),
        "{error}"
    );
    assert!(error.contains("in the middle"), "{error}");
}

#[tokio::test]
async fn a_coordinator_that_swaps_the_key_is_refused_before_any_syn() {
    let record = man_in_the_middle(true).await;
    assert!(!record.ok);
    assert_eq!(
        record.failed_at,
        Some(Stage::Coordination),
        "{}",
        record.to_json()
    );
    assert!(record.error.unwrap().contains("does not hash to that id"));
    assert_eq!(record.t_ms.first_syn, None);
}

use bitcoin::p2p::message::{CommandString, NetworkMessage};
use bitpunch::identity::NodeId as Id;
use bitpunch::net::stream::Counted;
use bitpunch::wire::{Session, SessionRole, StreamContext};

type CoordinatorSession = Session<Counted<tokio::net::TcpStream>>;

/// How a scripted coordinator answers `hphello`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proof {
    /// With the key its address names, over this session.
    Honest,
    /// With another key: an impostor that does not hold the named key.
    WrongKey,
    /// With the named key but over another session id: an on-path relay
    /// of the real coordinator's proof.
    OtherSession,
}

/// A coordinator written by hand from the wire pieces: it registers the one
/// client that connects, then hands the session to `script`.
async fn scripted_coordinator<F, Fut>(script: F) -> CoordinatorEndpoint
where
    F: FnOnce(CoordinatorSession) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    scripted_coordinator_proving(Proof::Honest, script).await
}

async fn scripted_coordinator_proving<F, Fut>(proof: Proof, script: F) -> CoordinatorEndpoint
where
    F: FnOnce(CoordinatorSession) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let named = NodeKey::generate();
    let endpoint = CoordinatorEndpoint {
        id: named.id(),
        addr,
    };
    tokio::spawn(async move {
        let (stream, remote) = listener.accept().await.unwrap();
        let now = tokio::time::Instant::now();
        let counted = Counted::new(stream);
        let ctx = StreamContext {
            local: addr,
            remote,
            started: now,
            tcp_at: now,
            counters: counted.counters(),
        };
        let mut config = session();
        config.services |= native::messages::node_punch_coordinator();
        let mut s =
            Session::establish(counted, ctx, SessionRole::Responder, Transport::V2, &config)
                .await
                .unwrap();
        let mut key = None;
        loop {
            let Ok(msg) = s.recv_message(Duration::from_secs(10)).await else {
                return;
            };
            match NativeMessage::from_network(&msg).unwrap() {
                Some(NativeMessage::Hello { .. }) => {
                    let (signer, session_id) = match proof {
                        Proof::Honest => (named.clone(), s.session_id().unwrap()),
                        Proof::WrongKey => (NodeKey::generate(), s.session_id().unwrap()),
                        Proof::OtherSession => (named.clone(), [0xee; 32]),
                    };
                    let data = native::messages::coordinator_proof_data(&session_id, 1, 0);
                    let answer = NativeMessage::Coordinator {
                        version: 1,
                        features: 0,
                        key: signer.public().serialize(),
                        signature: signer.sign(native::messages::COORDINATOR_TAG, &[&data]),
                    };
                    s.send_message(&answer.to_network()).await.unwrap();
                }
                Some(NativeMessage::Register { key: k }) => {
                    key = Some(k);
                    s.send_message(&NativeMessage::Challenge { nonce: [7; 32] }.to_network())
                        .await
                        .unwrap();
                }
                Some(NativeMessage::Prove { .. }) => {
                    let k = bitpunch::identity::parse_public(&key.unwrap()).unwrap();
                    let registered = NativeMessage::Registered {
                        id: Id::of(&k),
                        observed: remote,
                    };
                    s.send_message(&registered.to_network()).await.unwrap();
                    break;
                }
                _ => {}
            }
        }
        script(s).await;
    });
    endpoint
}

/// The coordinator's id in the address is what the node checks before it
/// registers: an impostor with another key, or someone who relays the
/// real coordinator's proof from another session, is refused with the
/// reason, and nothing of ours reaches them after the hello.
#[tokio::test]
async fn a_coordinator_that_cannot_prove_the_named_key_is_refused() {
    for (proof, expected) in [
        (Proof::WrongKey, "but its address names"),
        (
            Proof::OtherSession,
            "does not verify over this BIP324 session",
        ),
    ] {
        let coord = scripted_coordinator_proving(proof, |_s| async {}).await;
        let bob = node();
        let err = native::register(&bob, coord, &NodeKey::generate(), link_config())
            .await
            .map(|_| ())
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains(expected), "{err}");
    }
}

/// A coordinator that speaks only plaintext v1 (every node before BIP324)
/// is refused: the link is BIP324 only.
#[tokio::test]
async fn a_v1_only_coordinator_is_refused() {
    let mut config = CoordinatorServerConfig::new(session(), NodeKey::generate());
    config.session.transport = bitpunch::wire::TransportPolicy::V1;
    config.bind_ip = Some(LOOPBACK);
    config.port = 0;
    let server = CoordinatorServer::start(config).unwrap();
    let coord = CoordinatorEndpoint {
        id: server.id(),
        addr: server.local_addrs()[0],
    };
    let bob = node();
    let err = native::register(&bob, coord, &NodeKey::generate(), link_config())
        .await
        .map(|_| ())
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("BIP324 only"), "{err}");
    assert_eq!(server.registered(), 0);
}

/// A client that skips the hello, or says it on a v1 session, is closed
/// by the coordinator with the reason.
#[tokio::test]
async fn the_coordinator_requires_hello_on_a_bip324_session() {
    let (server, coord) = coordinator_on_loopback();
    let mut events = server.events();
    let mut v1 = session();
    v1.transport = bitpunch::wire::TransportPolicy::V1;
    let cases = [
        (
            session(),
            NativeMessage::Register {
                key: NodeKey::generate().public().serialize(),
            },
            "hpregister before hphello",
        ),
        (
            v1,
            NativeMessage::Hello {
                version: 1,
                features: 0,
            },
            "hphello on a v1 session",
        ),
    ];
    for (config, msg, expected) in cases {
        let mut s = bitpunch::wire::connect(coord.addr, &config, None, tokio::time::Instant::now())
            .await
            .result
            .unwrap();
        s.send_message(&msg.to_network()).await.unwrap();
        let reason = loop {
            match tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .unwrap()
                .unwrap()
            {
                native::coordinator::CoordinatorEvent::Closed { remote, reason, .. }
                    if remote == s.report.local =>
                {
                    break reason
                }
                _ => {}
            }
        };
        assert!(reason.contains(expected), "{reason}");
    }
}

#[tokio::test]
async fn a_flood_of_punch_orders_is_limited_per_target_address() {
    // Twenty "victims" on one address; the node may punch it 3 times a minute.
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut victims = Vec::new();
    for _ in 0..20 {
        let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        victims.push(listener.local_addr().unwrap());
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s);
            }
        });
    }
    let (refusals_tx, mut refusals) = mpsc::unbounded_channel();
    let someone = NodeKey::generate().public().serialize();
    let coord = scripted_coordinator(move |mut s| async move {
        for (i, victim) in victims.into_iter().enumerate() {
            let order = NativeMessage::Punch {
                request: i as u64,
                role: PunchRole::Responder,
                peer_key: someone,
                peer: victim,
                delay_ms: 0,
            };
            s.send_message(&order.to_network()).await.unwrap();
        }
        while let Ok(msg) = s.recv_message(Duration::from_secs(5)).await {
            if let Ok(Some(NativeMessage::Result {
                result: native::messages::PunchResult::Refused,
                ..
            })) = NativeMessage::from_network(&msg)
            {
                let _ = refusals_tx.send(());
            }
        }
    })
    .await;

    let bob = Arc::new(node());
    let key = NodeKey::generate();
    let mut config = link_config();
    config.client.orders_per_target_per_minute = 3;
    let mut link = native::register(&bob, coord, &key, config).await.unwrap();
    let serving = bob.clone();
    tokio::spawn(async move {
        native::serve_orders(
            &serving,
            &mut link,
            Arc::new(key),
            session(),
            Duration::from_secs(5),
            None,
        )
        .await;
    });
    let mut refused = 0;
    while refused < 17 {
        tokio::time::timeout(Duration::from_secs(10), refusals.recv())
            .await
            .expect("17 refusals")
            .unwrap();
        refused += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "SYNs that reached the victims' address"
    );
}

#[tokio::test]
async fn malformed_messages_close_only_that_connection_at_the_coordinator_on_loopback() {
    let (server, coord) = coordinator_on_loopback();
    let mut events = server.events();
    // A well-behaved client, registered before and alive after.
    let good = node();
    let good_key = NodeKey::generate();
    let good_link = native::register(&good, coord, &good_key, link_config())
        .await
        .unwrap();

    let command = |c: &'static str| CommandString::try_from_static(c).unwrap();
    let mut rng_payload = vec![0u8; 40];
    rand::Rng::fill(&mut rand::thread_rng(), &mut rng_payload[..]);
    let valid = NativeMessage::Connect {
        request: 1,
        target: good_key.id(),
    }
    .encode();
    let cases: Vec<(&str, NetworkMessage)> = vec![
        (
            "random",
            NetworkMessage::Unknown {
                command: command("hpconnect"),
                payload: rng_payload.clone(),
            },
        ),
        (
            "truncated",
            NetworkMessage::Unknown {
                command: command("hpconnect"),
                payload: valid[..valid.len() - 1].to_vec(),
            },
        ),
        (
            "oversize",
            NetworkMessage::Unknown {
                command: command("hpregister"),
                payload: vec![1; 5000],
            },
        ),
        (
            "unknown",
            NetworkMessage::Unknown {
                command: command("hpbogus"),
                payload: vec![],
            },
        ),
        (
            "wrong direction",
            NativeMessage::Challenge { nonce: [0; 32] }.to_network(),
        ),
        (
            "bad key",
            NativeMessage::Register { key: [0; 32] }.to_network(),
        ),
    ];
    for (what, msg) in cases {
        let mut s =
            bitpunch::wire::connect(coord.addr, &session(), None, tokio::time::Instant::now())
                .await
                .result
                .unwrap();
        s.send_message(&msg).await.unwrap();
        let closed = s.recv_message(Duration::from_secs(5)).await;
        assert!(closed.is_err(), "{what}: still open");
        let reason = loop {
            match tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .unwrap()
                .unwrap()
            {
                native::coordinator::CoordinatorEvent::Closed { remote, reason, .. }
                    if remote == s.report.local =>
                {
                    break reason
                }
                _ => {}
            }
        };
        eprintln!("{what}: {reason}");
        assert!(!reason.is_empty());
    }
    assert!(good_link.is_alive());
    // And the coordinator still answers the good client.
    let err = good_link
        .request(NodeKey::generate().id(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownPeer"), "{err}");
}

#[tokio::test]
async fn a_malformed_coordinator_ends_the_link_not_the_node() {
    let coord = scripted_coordinator(|mut s| async move {
        let garbage = NetworkMessage::Unknown {
            command: CommandString::try_from_static("hppunch").unwrap(),
            payload: vec![0xff; 7],
        };
        s.send_message(&garbage).await.unwrap();
        let _ = s.recv_message(Duration::from_secs(5)).await;
    })
    .await;
    let bob = node();
    let key = NodeKey::generate();
    let mut link = native::register(&bob, coord, &key, link_config())
        .await
        .unwrap();
    let why = tokio::time::timeout(Duration::from_secs(5), link.closed())
        .await
        .unwrap();
    assert!(
        why.contains("malformed message from the coordinator"),
        "{why}"
    );
    // The node itself keeps serving peers.
    let bob_addr = SocketAddr::new(LOOPBACK, bob.port());
    bitpunch::wire::connect(bob_addr, &session(), None, tokio::time::Instant::now())
        .await
        .result
        .expect("node still serves after its coordinator misbehaved");
}

/// A coordinator that vanishes without FIN or RST (here: it keeps the
/// socket but never reads or answers again) is noticed by the link's ping
/// timeout, two ping intervals at most.
#[tokio::test]
async fn a_silent_coordinator_is_noticed_by_the_ping_timeout() {
    let (hold, mut release) = tokio::sync::oneshot::channel::<()>();
    let coord = scripted_coordinator(|s| async move {
        // Holds the session open and says nothing until the test ends.
        let _session = s;
        let _ = (&mut release).await;
    })
    .await;
    let bob = node();
    let key = NodeKey::generate();
    let mut config = link_config();
    config.ping_interval = Duration::from_millis(500);
    let mut link = native::register(&bob, coord, &key, config).await.unwrap();
    let started = tokio::time::Instant::now();
    let why = tokio::time::timeout(Duration::from_secs(10), link.closed())
        .await
        .expect("the link notices the silent coordinator");
    assert!(why.contains("did not answer a ping"), "{why}");
    // One interval to send the ping, one to find it unanswered.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    drop(hold);
}

/// Punched sessions belong to the node, not to the coordinator link that
/// set them up: they keep answering pings after the coordinator is gone.
#[tokio::test]
async fn punched_sessions_outlive_their_coordinator_on_loopback() {
    let (server, coord) = coordinator_on_loopback();
    let (bob_id, _bob, mut bob_records) = responder(coord).await;
    let alice = node();
    let alice_key = Arc::new(NodeKey::generate());
    let link = native::register(&alice, coord, &alice_key, link_config())
        .await
        .unwrap();
    let outcome = native::connect_via(
        &alice,
        &link,
        alice_key.clone(),
        session(),
        bob_id,
        tokio::time::Instant::now(),
    )
    .await;
    assert!(outcome.record.ok, "{}", outcome.record.to_json());
    let mut alices_session = outcome.session.expect("a punched session");
    // Bob's side of the session is up (his record arrived) before the
    // coordinator goes.
    tokio::time::timeout(Duration::from_secs(10), bob_records.recv())
        .await
        .unwrap()
        .unwrap();
    drop(server);
    drop(link);
    // Bob's link notices and his order loop ends; his session must not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        alices_session
            .measure_rtt(Duration::from_secs(5))
            .await
            .expect("Bob's session still answers pings without the coordinator");
    }
}

/// The budget burn: ten requesters from one netgroup (127.1/16) ask for Bob
/// over and over, enough to spend his 30 orders a minute five times over.
/// The coordinator lets their netgroup cause 3 orders to Bob a minute, so a
/// requester from another netgroup (127.2/16) still gets its order and a
/// direct session with him.
#[tokio::test]
async fn a_budget_burn_from_one_netgroup_leaves_a_legitimate_requester_its_punch() {
    let (_server, coord) = coordinator_on_loopback();
    let (bob_id, _bob, _records) = responder(coord).await;
    let mut granted = 0;
    let mut refused = 0;
    let mut attackers = Vec::new();
    for i in 1..=10u8 {
        let node = node_on(IpAddr::V4(Ipv4Addr::new(127, 1, 0, i)), 0);
        let link = native::register(&node, coord, &NodeKey::generate(), link_config())
            .await
            .unwrap();
        for _ in 0..15 {
            match link.request(bob_id, Duration::from_secs(5)).await {
                Ok(_) => granted += 1,
                Err(native::client::RequestError::Refused(
                    native::messages::FailReason::RateLimited,
                )) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        attackers.push((node, link));
    }
    eprintln!("attack: {granted} orders granted, {refused} refused");
    assert_eq!(
        granted, 3,
        "one netgroup got {granted} orders to Bob in a minute"
    );

    let alice = node_on(IpAddr::V4(Ipv4Addr::new(127, 2, 0, 1)), 0);
    let key = Arc::new(NodeKey::generate());
    let link = native::register(&alice, coord, &key, link_config())
        .await
        .unwrap();
    let outcome = native::connect_via(
        &alice,
        &link,
        key,
        session(),
        bob_id,
        tokio::time::Instant::now(),
    )
    .await;
    assert!(outcome.record.ok, "{}", outcome.record.to_json());
}
