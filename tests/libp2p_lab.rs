//! The libp2p path between hosts behind emulated NATs (root only; skips
//! loudly elsewhere): a relay on a public host, two NATs with 20 ms on each
//! internet link.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bitpunch::lab::{Lab, LinkShape, NatProfile, NsRuntime};
use bitpunch::libp2p::punch::Libp2pPunchContext;
use bitpunch::libp2p::swarm::Libp2pNode;
use bitpunch::libp2p::{self as path};
use bitpunch::node::{Node, NodeConfig};
use bitpunch::report::Outcome;
use bitpunch::wire::Transport;
use libp2p::{identity, Multiaddr};

fn node(port: u16) -> Node {
    let mut config = NodeConfig::new(session());
    config.bind_ip = Some(std::net::Ipv4Addr::UNSPECIFIED.into());
    config.port = port;
    // Twenty tries at one peer in a minute: past the punch budget.
    config.punch_budget = bitpunch::punch::budget::BudgetConfig::UNLIMITED;
    Node::start(config).unwrap()
}

fn context(node: &Node) -> Libp2pPunchContext {
    let libp2p = Libp2pNode::start(
        identity::Keypair::generate_ed25519(),
        node.shared_port().clone(),
        node.router(),
    )
    .unwrap();
    Libp2pPunchContext::for_node(node, Arc::new(libp2p), session(), false)
}

struct Scenario {
    alice_rt: NsRuntime,
    _bob_rt: NsRuntime,
    _relay_rt: NsRuntime,
    relay_ip: std::net::IpAddr,
    circuit: Multiaddr,
    _lab: Lab,
}

async fn scenario(profile: &str) -> Scenario {
    let profile: NatProfile = profile.parse().unwrap();
    let (lab, t) = Lab::two_nats(profile, profile, LinkShape::delay_ms(20)).unwrap();
    let (public, alice, bob) = (t.relay, t.alice, t.bob);
    let relay_rt = lab.runtime(&public).unwrap();
    let relay_addr = start_relay(&relay_rt, public.ip).await;

    let bob_rt = lab.runtime(&bob).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    bob_rt.spawn(async move {
        let node = node(18444);
        let ctx = context(&node);
        let tx = std::sync::Mutex::new(Some(tx));
        tokio::spawn(path::keep_reservation(
            ctx.libp2p.clone(),
            relay_addr,
            move |circuit| {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(circuit.clone());
                }
            },
        ));
        path::serve_relayed(ctx, Duration::from_secs(30), None).await;
        drop(node);
    });
    let circuit = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("reservation in time")
        .unwrap();
    Scenario {
        alice_rt: lab.runtime(&alice).unwrap(),
        _bob_rt: bob_rt,
        _relay_rt: relay_rt,
        relay_ip: public.ip.into(),
        circuit,
        _lab: lab,
    }
}

/// One `connect <circuit>` from Alice, from a fresh port, as the CLI does.
async fn alice_connects(s: &Scenario) -> Outcome {
    alice_connects_late(s, Duration::ZERO).await
}

/// The same, with Alice's SYNs leaving `late` after the exchange says.
async fn alice_connects_late(s: &Scenario, late: Duration) -> Outcome {
    let circuit = s.circuit.clone();
    s.alice_rt
        .run(async move {
            let node = node(0);
            let mut ctx = context(&node);
            ctx.dial_delay = late;
            path::connect_circuit(&ctx, circuit).await.record
        })
        .await
}

async fn twenty_tries(profile: &str) {
    let s = scenario(profile).await;
    let mut ok = 0;
    for i in 0..20 {
        let record = alice_connects(&s).await;
        if record.ok {
            ok += 1;
            assert_eq!(record.transport, Some(Transport::V2));
            let remote: SocketAddr = record.remote.as_deref().unwrap().parse().unwrap();
            assert_ne!(remote.ip(), s.relay_ip, "relayed, not direct");
            assert!(
                remote.ip().to_string().starts_with("203.0.113."),
                "{remote}"
            );
        } else {
            eprintln!("{profile} try {i} failed: {}", record.to_json());
        }
    }
    eprintln!("{profile}: {ok}/20");
    assert!(ok >= 19, "{profile}: only {ok} of 20 punches worked");
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punches_through_eim_apdf_nats_that_drop() {
    require_lab!();
    twenty_tries("home").await;
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punches_through_eim_apdf_nats_that_reset() {
    require_lab!();
    twenty_tries("home-rst").await;
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punches_through_full_cone_nats_that_drop() {
    require_lab!();
    twenty_tries("full-cone").await;
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punches_through_full_cone_nats_that_reset() {
    require_lab!();
    twenty_tries("eim/eif/rst").await;
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_nats_fail_cleanly_after_three_rounds() {
    require_lab!();
    let s = scenario("symmetric").await;
    let record = tokio::time::timeout(Duration::from_secs(60), alice_connects(&s))
        .await
        .expect("a failing punch must not hang");
    assert!(!record.ok);
    let error = record.error.clone().unwrap();
    assert!(
        error.contains("no direct connection after 3 rounds"),
        "{}",
        record.to_json()
    );
    assert_eq!(record.attempts, 3);
}

/// DESIGN.md's race: Bob's SYN arrives before Alice dials (her NAT lets it
/// in). The accept loop hands it to Alice's punch, and the roles still come
/// from the exchange: Alice, who asked, is the BIP324 initiator.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peers_syn_first_still_gives_one_session_with_the_right_roles() {
    require_lab!();
    let s = scenario("full-cone").await;
    for _ in 0..3 {
        let record = alice_connects_late(&s, Duration::from_millis(300)).await;
        assert!(record.ok, "{}", record.to_json());
        assert_eq!(
            record.won_by,
            Some(bitpunch::report::WonBy::Accept),
            "{}",
            record.to_json()
        );
        assert_eq!(record.role, bitpunch::wire::SessionRole::Initiator);
        assert_eq!(record.transport, Some(Transport::V2));
    }
}

/// rust-libp2p's own DCUtR between the same NATs: the yardstick.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_dcutr_reaches_a_direct_libp2p_connection() {
    require_lab!();
    let home: NatProfile = "home".parse().unwrap();
    let (lab, t) = Lab::two_nats(home, home, LinkShape::delay_ms(20)).unwrap();
    let (public, alice, bob) = (t.relay, t.alice, t.bob);
    let relay_rt = lab.runtime(&public).unwrap();
    let relay_addr = start_relay(&relay_rt, public.ip).await;
    let stock = |n: &Node| {
        Arc::new(
            Libp2pNode::start_with(
                identity::Keypair::generate_ed25519(),
                n.shared_port().clone(),
                n.router(),
                bitpunch::libp2p::swarm::Libp2pOptions::stock_dcutr(true),
            )
            .unwrap(),
        )
    };
    let bob_rt = lab.runtime(&bob).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    bob_rt.spawn(async move {
        let node = node(18444);
        let libp2p = stock(&node);
        let tx = std::sync::Mutex::new(Some(tx));
        path::keep_reservation(libp2p, relay_addr, move |c| {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(c.clone());
            }
        })
        .await;
        drop(node);
    });
    let circuit = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .unwrap()
        .unwrap();
    let alice_rt = lab.runtime(&alice).unwrap();
    let mut ok = 0;
    for i in 0..5 {
        let circuit = circuit.clone();
        let record = alice_rt
            .run(async move {
                let node = node(0);
                let libp2p = stock(&node);
                bitpunch::libp2p::stock::connect(&libp2p, circuit, Duration::from_secs(30)).await
            })
            .await;
        if record.ok {
            ok += 1;
            assert_eq!(record.transport, Some(Transport::Libp2p));
            assert!(
                record.remote.as_deref().unwrap().starts_with("203.0.113."),
                "{}",
                record.to_json()
            );
        } else {
            eprintln!("stock try {i}: {}", record.to_json());
        }
    }
    eprintln!("stock DCUtR: {ok}/5");
    assert!(ok >= 4, "stock DCUtR: {ok}/5");
    drop(alice_rt);
    drop(bob_rt);
    drop(relay_rt);
}

/// Alice behind a symmetric NAT, Bob behind a full cone: Alice's SYN leaves
/// from a new port, not the one the relay saw, but Bob's NAT lets it in; the
/// accept loop gives it to Bob's punch by its address.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_alice_reaches_a_full_cone_bob() {
    require_lab!();
    let lab = bitpunch::scenario::InLab::start(
        "symmetric".parse().unwrap(),
        "full-cone".parse().unwrap(),
        LinkShape::delay_ms(20),
    )
    .await
    .unwrap();
    for path in [
        bitpunch::scenario::PathKind::Libp2p,
        bitpunch::scenario::PathKind::Native,
    ] {
        let record = lab.try_path(path).await;
        assert!(record.ok, "{}", record.to_json());
        assert_eq!(record.transport, Some(Transport::V2));
    }
}
