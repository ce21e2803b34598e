//! Hostile clients written against the spec, on loopback: the sequences
//! that once crashed or bloated a coordinator or node, and the deadlines
//! that free what a stalled peer holds.

mod common;
use common::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bip324::Role;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Address, ServiceFlags};
use bitpunch::identity::NodeKey;
use bitpunch::native::client::CoordinatorEndpoint;
use bitpunch::native::machine::{Client, ClientConfig, ClientEvent, ExpectedCoordinator};
use bitpunch::native::messages::{FailReason, NativeMessage};
use bitpunch::node::{Node, NodeConfig, NodeEvent};
use bitpunch::wire::{self, Channel, Network, Session, WireError};
use tokio::net::TcpStream;
use tokio::time::Instant;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

type ClientSession = Session<bitpunch::net::stream::Counted<TcpStream>>;

async fn open(addr: SocketAddr) -> ClientSession {
    wire::connect(addr, &session(), None, Instant::now())
        .await
        .result
        .expect("a session with the coordinator")
}

async fn send(s: &mut ClientSession, msg: NativeMessage) {
    s.send_message(&msg.to_network()).await.unwrap();
}

async fn recv(s: &mut ClientSession) -> NativeMessage {
    loop {
        let msg = s.recv_message(Duration::from_secs(10)).await.unwrap();
        if let Ok(Some(native)) = NativeMessage::from_network(&msg) {
            return native;
        }
    }
}

/// Registers `key` on `s` with `coordinator` through the real client machine.
async fn register(s: &mut ClientSession, coordinator: CoordinatorEndpoint, key: &NodeKey) {
    let expected = ExpectedCoordinator {
        id: coordinator.id,
        session_id: s.session_id().expect("a BIP324 session"),
    };
    let mut client = Client::new(ClientConfig::default(), key.clone(), expected);
    for msg in client.start() {
        send(s, msg).await;
    }
    loop {
        let msg = recv(s).await;
        for event in client.handle(std::time::Instant::now(), msg) {
            match event {
                ClientEvent::Send(m) => send(s, m).await,
                ClientEvent::CoordinatorVerified { .. } => {}
                ClientEvent::Registered { .. } => return,
                other => panic!("registration: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_re_registration_then_disconnect_is_answered_unknown_peer_and_the_coordinator_keeps_serving(
) {
    let (server, coordinator) = coordinator_on_loopback();
    let addr = coordinator.addr;
    let victim_key = NodeKey::generate();
    let mut victim = open(addr).await;
    register(&mut victim, coordinator, &victim_key).await;
    // Registers again (the state leaves Registered), then vanishes.
    send(
        &mut victim,
        NativeMessage::Register {
            key: victim_key.public().serialize(),
        },
    )
    .await;
    assert!(matches!(
        recv(&mut victim).await,
        NativeMessage::Challenge { .. }
    ));
    drop(victim);

    let mut asker = open(addr).await;
    register(&mut asker, coordinator, &NodeKey::generate()).await;
    // Give the coordinator a moment to see the victim's connection close;
    // the answer must be the same whichever it sees first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(
        &mut asker,
        NativeMessage::Connect {
            request: 1,
            target: victim_key.id(),
        },
    )
    .await;
    assert_eq!(
        recv(&mut asker).await,
        NativeMessage::Fail {
            request: 1,
            reason: FailReason::UnknownPeer
        }
    );
    // Still serving: a newcomer registers, and the asker's link is alive.
    let mut newcomer = open(addr).await;
    register(&mut newcomer, coordinator, &NodeKey::generate()).await;
    assert_eq!(server.registered(), 2);
    assert!(asker.measure_rtt(Duration::from_secs(5)).await.is_ok());
}

/// What Bitcoin Core does: its first message follows verack at once, before
/// our side's set-up ping has been answered.
#[tokio::test]
async fn a_client_that_speaks_right_after_verack_is_answered() {
    let (_server, coordinator) = coordinator_on_loopback();
    let addr = coordinator.addr;
    let stream = TcpStream::connect(addr).await.unwrap();
    let magic = Network::Regtest.magic();
    let mut channel = Channel::v2(stream, magic, Role::Initiator, None)
        .await
        .unwrap();
    let me: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut version = VersionMessage::new(
        ServiceFlags::NONE,
        0,
        Address::new(&addr, ServiceFlags::NONE),
        Address::new(&me, ServiceFlags::NONE),
        7,
        "/hostile:0/".into(),
        0,
    );
    version.version = 70016;
    channel
        .send(&NetworkMessage::Version(version))
        .await
        .unwrap();
    let key = NodeKey::generate();
    let expected = ExpectedCoordinator {
        id: coordinator.id,
        session_id: channel.session_id().expect("a BIP324 session"),
    };
    let mut client = Client::new(ClientConfig::default(), key, expected);
    let mut sent_hello = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, channel.recv())
            .await
            .expect("the coordinator answers hphello")
            .unwrap();
        match msg {
            Some(NetworkMessage::Version(_)) => {}
            Some(NetworkMessage::Verack) if !sent_hello => {
                // verack, hphello and hpregister in one go.
                channel.send(&NetworkMessage::Verack).await.unwrap();
                for msg in client.start() {
                    channel.send(&msg.to_network()).await.unwrap();
                }
                sent_hello = true;
            }
            Some(NetworkMessage::Ping(n)) => {
                channel.send(&NetworkMessage::Pong(n)).await.unwrap();
            }
            Some(other) => {
                match NativeMessage::from_network(&other) {
                    Ok(Some(native @ NativeMessage::Coordinator { .. })) => {
                        // The coordinator's proof verifies over this
                        // session; our registration went out already.
                        let events = client.handle(std::time::Instant::now(), native);
                        assert!(
                            matches!(&events[..], [ClientEvent::CoordinatorVerified { .. }]),
                            "{events:?}"
                        );
                    }
                    Ok(Some(native @ NativeMessage::Challenge { .. })) => {
                        // The registration that rode with hphello is
                        // answered in order, after the proof.
                        let events = client.handle(std::time::Instant::now(), native);
                        assert!(
                            matches!(
                                &events[..],
                                [ClientEvent::Send(NativeMessage::Prove { .. })]
                            ),
                            "{events:?}"
                        );
                        return;
                    }
                    Ok(Some(native)) => panic!("unexpected {native:?}"),
                    _ => {}
                }
            }
            None => {}
        }
    }
}

#[tokio::test]
async fn a_peer_that_pings_and_never_reads_is_closed_within_the_write_deadline() {
    let mut config = NodeConfig::new(session());
    config.bind_ip = Some(LOOPBACK);
    config.port = 0;
    config.session.write_timeout = Duration::from_secs(1);
    let node = Node::start(config).unwrap();
    let mut events = node.events();
    let target = SocketAddr::new(LOOPBACK, node.port());
    let peer = open(target).await;
    let (_reader, mut writer, _) = peer.into_parts();
    // Pings until the node's pongs fill both socket buffers and its write
    // stalls; the reader half is never polled.
    let pinger = tokio::spawn(async move {
        let mut sent = 0u64;
        while writer.send(&NetworkMessage::Ping(sent)).await.is_ok() {
            sent += 1;
        }
        sent
    });
    let started = Instant::now();
    let reason = loop {
        let event = tokio::time::timeout(Duration::from_secs(180), events.recv())
            .await
            .expect("the node closes the peer")
            .unwrap();
        if let NodeEvent::Closed { reason, .. } = event {
            break reason;
        }
    };
    pinger.abort();
    assert!(
        reason.contains(&WireError::Timeout(Duration::from_secs(1)).to_string()),
        "closed for another reason: {reason}"
    );
    // Generous: filling loopback buffers (megabytes of pongs, each one
    // encrypted by a debug build) took 40 s on a busy 2-core machine.
    assert!(started.elapsed() < Duration::from_secs(150));
}

/// A hostile peer's 8 candidates × 3 attempts at one address: the driver
/// pays for each SYN before it dials, and fires no more than the budget.
#[tokio::test]
async fn the_punch_driver_fires_no_syn_past_the_budget() {
    use bitpunch::punch::budget::BudgetConfig;
    use bitpunch::punch::{self, PunchPlan, ScheduleConfig};
    let port = bitpunch::net::SharedPort::bind(Some(LOOPBACK), 0).unwrap();
    port.set_punch_budget(BudgetConfig {
        per_address: 4,
        ..BudgetConfig::default()
    });
    // Closed ports on loopback: every SYN is answered with an RST at once,
    // so every attempt dials every candidate it is allowed to.
    let mut candidates = Vec::new();
    for _ in 0..8 {
        let l = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
        candidates.push(l.local_addr().unwrap());
    }
    let router =
        bitpunch::net::Router::new(Network::Regtest.magic().to_bytes(), Duration::from_secs(5));
    let plan = PunchPlan {
        candidates,
        start: Instant::now(),
        config: ScheduleConfig {
            attempts: 3,
            interval: Duration::from_millis(100),
        },
        requester: "libp2p:mallory".into(),
        late: None,
        birthday_mappings: false,
        pick_where_peer_speaks: false,
    };
    let err = punch::punch(&port, &router, plan).await.unwrap_err();
    // 4 paid in the first attempt; refused: its other 4 candidates, the 4
    // re-dials its resets asked for, and both later attempts' 16.
    assert_eq!(port.punch_syns(), (4, 24), "SYNs paid and refused");
    assert!(
        err.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("punch budget"),
        "{err}"
    );
}

/// A birthday (hundreds of SYNs to one address) is paid whole from its own
/// allowance, one a minute: a peer that tells 300 ports gets 256 dialed
/// once each, and a second birthday in the same minute, from either side,
/// is refused whole without a single SYN.
#[tokio::test]
async fn a_birthday_is_paid_whole_and_refused_whole_past_its_allowance() {
    use bitpunch::punch::predict::BIRTHDAY_PORTS;
    use bitpunch::punch::{self, LateCandidates, PunchPlan, ScheduleConfig};
    let port = bitpunch::net::SharedPort::bind(Some(LOOPBACK), 0).unwrap();
    let router =
        bitpunch::net::Router::new(Network::Regtest.magic().to_bytes(), Duration::from_secs(5));
    // Closed ports on loopback: each SYN is answered with an RST at once.
    let closed: Vec<std::net::SocketAddr> = {
        let listeners: Vec<std::net::TcpListener> = (0..301)
            .map(|_| std::net::TcpListener::bind((LOOPBACK, 0)).unwrap())
            .collect();
        listeners.iter().map(|l| l.local_addr().unwrap()).collect()
    };
    let plan = |birthday_mappings: bool, told: Vec<std::net::SocketAddr>| {
        let (tell, endpoints) = tokio::sync::oneshot::channel();
        tell.send(told).unwrap();
        PunchPlan {
            candidates: vec![closed[0]],
            start: Instant::now(),
            config: ScheduleConfig {
                attempts: 1,
                interval: Duration::from_millis(100),
            },
            requester: "native:mallory".into(),
            late: Some(LateCandidates {
                endpoints,
                router: router.clone(),
            }),
            birthday_mappings,
            pick_where_peer_speaks: false,
        }
    };
    // The peer's 300 guesses: 256 dialed, once each.
    let err = punch::punch(&port, &router, plan(false, closed[1..].to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.birthday_ports as usize, BIRTHDAY_PORTS, "{err}");
    let (paid, refused) = port.punch_syns();
    // The one candidate: a SYN and up to 4 again after its resets.
    let to_candidate = paid - BIRTHDAY_PORTS as u64;
    assert!((1..=5).contains(&to_candidate), "{paid} paid");
    assert_eq!(refused, 0);
    assert_eq!(u64::from(err.syns), paid);
    // Our own mappings in the same minute: refused whole.
    let err = punch::punch(&port, &router, plan(true, Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(err.birthday_ports, 0, "{err}");
    let (paid_again, refused) = port.punch_syns();
    assert!(paid_again - paid <= 5, "{paid_again} paid");
    assert_eq!(refused, BIRTHDAY_PORTS as u64);
}
