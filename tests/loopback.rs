//! Sessions between real sockets on loopback: a bitpunch node serving inbound
//! peers, and the outbound `connect` of the CLI.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bitpunch::node::{Node, NodeConfig, NodeEvent};
use bitpunch::wire::{self, Network, SessionConfig, Transport, TransportPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio::time::Instant;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn session(policy: TransportPolicy, timeout: Duration) -> SessionConfig {
    let mut c = SessionConfig::new(Network::Regtest);
    c.transport = policy;
    c.handshake_timeout = timeout;
    c
}

fn start_node(policy: TransportPolicy, timeout: Duration) -> (Node, SocketAddr) {
    let mut config = NodeConfig::new(session(policy, timeout));
    config.bind_ip = Some(LOOPBACK);
    config.port = 0;
    config.sniff_timeout = timeout;
    let node = Node::start(config).expect("bind loopback");
    let addr = SocketAddr::new(LOOPBACK, node.port());
    (node, addr)
}

/// The next event about `remote`, skipping events about other connections.
async fn event_for(events: &mut broadcast::Receiver<NodeEvent>, remote: SocketAddr) -> NodeEvent {
    let wait = async {
        loop {
            let event = events.recv().await.expect("node event stream");
            let about = match &event {
                NodeEvent::Established(r) => r.remote,
                NodeEvent::Failed { remote, .. } | NodeEvent::Closed { remote, .. } => *remote,
            };
            if about == remote {
                return event;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("an event for this connection")
}

#[tokio::test]
async fn v2_initiator_and_v2_responder_agree_on_the_session() {
    let (node, addr) = start_node(TransportPolicy::V2, Duration::from_secs(10));
    let mut events = node.events();
    let config = session(TransportPolicy::V2, Duration::from_secs(10));
    let outcome = wire::connect(addr, &config, None, Instant::now()).await;
    let session = outcome.result.expect("v2 session");
    let ours = &session.report;
    assert_eq!(ours.transport, Transport::V2);
    assert_eq!(outcome.attempts, 1);
    let id = ours.session_id.clone().expect("v2 has a session id");
    assert_eq!(id.len(), 64);
    assert_eq!(ours.peer.user_agent, wire::session::user_agent());
    assert_eq!(ours.peer.version, wire::session::PROTOCOL_VERSION);
    // The node tells us where it sees us; on loopback that is our own socket.
    assert_eq!(ours.peer.sees_us_at, Some(ours.local));
    assert!(ours.rtt_ms.is_some());
    let t = &ours.t_ms;
    assert!(t.tcp <= t.handshake && t.handshake <= t.verack && t.verack <= t.pong);
    assert!(ours.bytes_sent > 64 && ours.bytes_received > 64);

    let NodeEvent::Established(theirs) = event_for(&mut events, ours.local).await else {
        panic!("node did not establish the session");
    };
    assert_eq!(theirs.transport, Transport::V2);
    // Both ends derived the same BIP324 session id from the key exchange.
    assert_eq!(theirs.session_id.as_deref(), Some(id.as_str()));
    assert_eq!(theirs.peer.sees_us_at, Some(addr));
}

#[tokio::test]
async fn v1_initiator_and_v1_responder() {
    let (node, addr) = start_node(TransportPolicy::V1, Duration::from_secs(10));
    let mut events = node.events();
    let config = session(TransportPolicy::V1, Duration::from_secs(10));
    let outcome = wire::connect(addr, &config, None, Instant::now()).await;
    let session = outcome.result.expect("v1 session");
    assert_eq!(session.report.transport, Transport::V1);
    assert_eq!(session.report.session_id, None);
    let NodeEvent::Established(theirs) = event_for(&mut events, session.report.local).await else {
        panic!("node did not establish the session");
    };
    assert_eq!(theirs.transport, Transport::V1);
}

#[tokio::test]
async fn auto_falls_back_to_v1_against_a_v1_only_responder() {
    let (_node, addr) = start_node(TransportPolicy::V1, Duration::from_secs(10));
    let config = session(TransportPolicy::Auto, Duration::from_secs(10));
    let outcome = wire::connect(addr, &config, None, Instant::now()).await;
    let session = outcome.result.expect("fallback session");
    assert_eq!(session.report.transport, Transport::V1);
    assert_eq!(outcome.attempts, 2);
    let why = outcome.fell_back.expect("the v2 failure is kept");
    assert!(why.peer_may_be_v1, "{why}");
    // Bytes of the failed v2 try count too: our 64-byte key at least.
    assert!(outcome.bytes_total >= session.report.bytes_sent + session.report.bytes_received + 64);
}

#[tokio::test]
async fn v2_only_against_a_v1_only_responder_fails_clearly() {
    let (_node, addr) = start_node(TransportPolicy::V1, Duration::from_secs(10));
    let config = session(TransportPolicy::V2, Duration::from_secs(10));
    let outcome = wire::connect(addr, &config, None, Instant::now()).await;
    let err = outcome.result.err().expect("v2-only must not fall back");
    assert_eq!(outcome.attempts, 1);
    assert_eq!(err.stage, wire::Stage::Bip324KeyExchange);
    let msg = err.to_string();
    assert!(msg.contains("may only speak v1"), "{msg}");
}

#[tokio::test]
async fn auto_responder_serves_both_transports_on_one_port() {
    let (_node, addr) = start_node(TransportPolicy::Auto, Duration::from_secs(10));
    for (policy, expected) in [
        (TransportPolicy::V1, Transport::V1),
        (TransportPolicy::V2, Transport::V2),
        (TransportPolicy::Auto, Transport::V2),
    ] {
        let outcome = wire::connect(
            addr,
            &session(policy, Duration::from_secs(10)),
            None,
            Instant::now(),
        )
        .await;
        assert_eq!(outcome.result.expect("session").report.transport, expected);
    }
}

#[tokio::test]
async fn outbound_connections_leave_from_the_shared_port() {
    // Two peers at once from one port: each 4-tuple is distinct, so the
    // kernel allows it. (The same peer twice in a row would not be: the first
    // connection's tuple sits in TIME_WAIT on our side.)
    let (_a, addr_a) = start_node(TransportPolicy::Auto, Duration::from_secs(10));
    let (_b, addr_b) = start_node(TransportPolicy::Auto, Duration::from_secs(10));
    let mut port = bitpunch::net::SharedPort::bind(Some(LOOPBACK), 0).expect("bind");
    let config = session(TransportPolicy::V2, Duration::from_secs(10));
    let mut held = Vec::new();
    for addr in [addr_a, addr_b] {
        let outcome = wire::connect(addr, &config, Some(&port), Instant::now()).await;
        let session = outcome.result.expect("session");
        assert_eq!(session.report.local.port(), port.port());
        assert_eq!(
            session.report.peer.sees_us_at.map(|a| a.port()),
            Some(port.port())
        );
        held.push(session);
    }
    // And the port still accepts inbound connections while they are open.
    let router =
        bitpunch::net::Router::new(Network::Regtest.magic().to_bytes(), Duration::from_secs(5));
    let mut bitcoin = router.subscribe(bitpunch::net::Route::Bitcoin, 1);
    let accept = port.spawn_accept_loop(router);
    let mut peer = TcpStream::connect(held[0].report.local).await.unwrap();
    peer.write_all(&[0u8; 16]).await.unwrap();
    let inbound = tokio::time::timeout(Duration::from_secs(5), bitcoin.recv())
        .await
        .expect("routed in time")
        .expect("inbound");
    assert_eq!(inbound.remote, peer.local_addr().unwrap());
    // The bytes read for routing are handed on, not lost.
    let replay = inbound.stream.pending_prefix();
    assert!(
        !replay.is_empty() && replay.iter().all(|&b| b == 0),
        "{replay:?}"
    );
    accept.abort();
}

/// Reads until the node closes the connection; returns how long that took.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "node kept a bad connection open for {limit:?}"
    );
    start.elapsed()
}

#[tokio::test]
async fn hostile_peers_are_closed_with_a_reason_while_a_good_peer_is_served() {
    let timeout = Duration::from_secs(2);
    let (node, addr) = start_node(TransportPolicy::Auto, timeout);
    let mut events = node.events();
    let config = session(TransportPolicy::V2, Duration::from_secs(10));

    let mut good = wire::connect(addr, &config, None, Instant::now())
        .await
        .result
        .expect("well-behaved peer");

    // 10 KB of random bytes: taken for a BIP324 key, then no garbage terminator.
    let mut random = TcpStream::connect(addr).await.unwrap();
    let mut noise = vec![0u8; 10 * 1024];
    rand::Rng::fill(&mut rand::thread_rng(), &mut noise[..]);
    noise[0] = 0x00; // not the regtest magic, so certainly not v1
    let _ = random.write_all(&noise).await; // the node may reset before all is read

    // A valid v1 header announcing a payload far over the 4 MB limit.
    let mut oversized = TcpStream::connect(addr).await.unwrap();
    let mut header = Network::Regtest.magic().to_bytes().to_vec();
    header.extend_from_slice(b"version\0\0\0\0\0");
    header.extend_from_slice(&0x7fff_ffffu32.to_le_bytes());
    header.extend_from_slice(&[0u8; 4]);
    oversized.write_all(&header).await.unwrap();

    // Half a BIP324 key, then silence.
    let mut staller = TcpStream::connect(addr).await.unwrap();
    staller.write_all(&noise[..30]).await.unwrap();

    // Connects and never says anything.
    let mut mute = TcpStream::connect(addr).await.unwrap();

    let remotes = [
        random.local_addr().unwrap(),
        oversized.local_addr().unwrap(),
        staller.local_addr().unwrap(),
    ];
    let limit = timeout * 3;
    until_closed(&mut random, limit).await;
    until_closed(&mut oversized, limit).await;
    let stalled_for = until_closed(&mut staller, limit).await;
    assert!(
        stalled_for >= timeout / 2,
        "staller closed before its timeout: {stalled_for:?}"
    );
    until_closed(&mut mute, limit).await;

    let expected_reasons = ["garbage terminator", "exceeds the limit", "no progress"];
    for (remote, reason) in remotes.into_iter().zip(expected_reasons) {
        match event_for(&mut events, remote).await {
            NodeEvent::Failed { reason: got, .. } => {
                assert!(
                    got.contains(reason),
                    "{remote}: expected {reason:?} in {got:?}"
                )
            }
            other => panic!("{remote}: expected a failure, got {other:?}"),
        }
    }

    // The peer that was connected all along still gets answers...
    good.measure_rtt(Duration::from_secs(5))
        .await
        .expect("good peer still served");
    // ...and new peers are still welcome.
    wire::connect(addr, &config, None, Instant::now())
        .await
        .result
        .expect("new peer after the hostile ones");
}
