//! SYN reflection on the libp2p path, in the NAT lab (root; skips loudly
//! elsewhere): a hostile peer reaches a node through its relay and answers
//! the exchange with a CONNECT full of addresses that point at a victim.
//! What reaches the victim is counted by nftables in the victim's own
//! namespace, not by our code.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use bitpunch::lab::{Lab, LinkShape, NatProfile};
use bitpunch::libp2p::punch::Libp2pPunchContext;
use bitpunch::libp2p::swarm::Libp2pNode;
use bitpunch::libp2p::{self as path};
use bitpunch::node::{Node, NodeConfig};
use bitpunch::punch::budget::BudgetConfig;
use libp2p::{identity, Multiaddr};

const VICTIM_TABLE: &str = "victim";

/// The victim's SYNs (from anyone), and the node's own SYNs to loopback,
/// counted where they arrive and leave.
fn syn_counter(table: &str, counter: &str, hook: &str, matching: &str) -> String {
    format!(
        "table ip {table} {{
           counter {counter} {{ }}
           chain count {{
             type filter hook {hook} priority -10;
             {matching} tcp flags & (syn | ack) == syn counter name {counter};
           }}
         }}"
    )
}

/// The hostile CONNECT: a few addresses that must never be dialed (an
/// IPv4-mapped IPv6 form of the victim, loopback, reserved, NAT64), then as
/// many of the victim's ports as fit in one 4 KB exchange message.
fn hostile_offer(victim: std::net::Ipv4Addr) -> Vec<Multiaddr> {
    let mut offer: Vec<Multiaddr> = [
        format!("/ip6/::ffff:{victim}/tcp/1"),
        "/ip4/127.0.0.1/tcp/8333".to_string(),
        "/ip4/240.0.0.1/tcp/8333".to_string(),
        "/ip4/10.1.0.1/tcp/8333".to_string(),
        format!("/ip6/64:ff9b::{victim}/tcp/1"),
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    offer.extend((0..370u16).map(|i| format!("/ip4/{victim}/tcp/{}", 10_000 + i).parse().unwrap()));
    offer
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_375_addresses_at_a_victim_cost_it_at_most_the_budget() {
    require_lab!();
    let profile: NatProfile = "home".parse().unwrap();
    let (mut lab, t) = Lab::two_nats(profile, profile, LinkShape::default()).unwrap();
    let victim = lab.add_public_host("victim").unwrap();
    lab.nft(&victim.ns, &syn_counter(VICTIM_TABLE, "syns", "input", ""))
        .unwrap();
    lab.nft(
        &t.bob.ns,
        &syn_counter("bob", "loopback", "output", "ip daddr 127.0.0.0/8"),
    )
    .unwrap();
    let relay_rt = lab.runtime(&t.relay).unwrap();
    let relay = start_relay(&relay_rt, t.relay.ip).await;

    // Bob: an ordinary node with the default punch budget, reachable
    // through the relay.
    let bob_rt = lab.runtime(&t.bob).unwrap();
    let (circuit_tx, circuit_rx) = tokio::sync::oneshot::channel();
    let (spent_tx, spent_rx) = tokio::sync::oneshot::channel::<(u64, u64)>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    bob_rt.spawn(async move {
        let mut config = NodeConfig::new(session());
        config.bind_ip = Some(std::net::Ipv4Addr::UNSPECIFIED.into());
        config.port = 18444;
        let node = Node::start(config).unwrap();
        let libp2p = Libp2pNode::start(
            identity::Keypair::generate_ed25519(),
            node.shared_port().clone(),
            node.router(),
        )
        .unwrap();
        let ctx = Libp2pPunchContext::for_node(&node, Arc::new(libp2p), session(), false);
        let circuit_tx = std::sync::Mutex::new(Some(circuit_tx));
        tokio::spawn(path::keep_reservation(
            ctx.libp2p.clone(),
            relay,
            move |circuit| {
                if let Some(tx) = circuit_tx.lock().unwrap().take() {
                    let _ = tx.send(circuit.clone());
                }
            },
        ));
        tokio::select! {
            () = path::serve_relayed(ctx, Duration::from_secs(30), None) => {}
            _ = done_rx => {}
        }
        let _ = spent_tx.send(node.shared_port().punch_syns());
    });
    let circuit = tokio::time::timeout(Duration::from_secs(20), circuit_rx)
        .await
        .expect("Bob's reservation in time")
        .unwrap();

    // Mallory dials Bob through the relay and answers his exchange with
    // the victim's addresses, every round; three times, each with a fresh
    // identity. Unbudgeted, that would be 3 × 3 rounds × 8 candidates = 72
    // SYNs at the victim.
    let mallory_rt = lab.runtime(&t.alice).unwrap();
    for _ in 0..3 {
        let offer = hostile_offer(victim.ip);
        let circuit = circuit.clone();
        let record = mallory_rt
            .run(async move {
                let mut config = NodeConfig::new(session());
                config.bind_ip = Some(std::net::Ipv4Addr::UNSPECIFIED.into());
                config.port = 0;
                let node = Node::start(config).unwrap();
                let libp2p = Libp2pNode::start(
                    identity::Keypair::generate_ed25519(),
                    node.shared_port().clone(),
                    node.router(),
                )
                .unwrap();
                let mut ctx =
                    Libp2pPunchContext::for_node(&node, Arc::new(libp2p), session(), false);
                ctx.hostile_offer = Some(offer);
                path::connect_circuit(&ctx, circuit).await.record
            })
            .await;
        eprintln!("Mallory: {:?}", record.error);
    }
    // Every round Bob may still start has ended by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = done_tx.send(());
    let (spent, refused) = spent_rx.await.unwrap();
    let at_victim = lab.nft_counter(&victim.ns, VICTIM_TABLE, "syns").unwrap();
    let to_loopback = lab.nft_counter(&t.bob.ns, "bob", "loopback").unwrap();
    let budget = BudgetConfig::default().per_address as u64;
    eprintln!(
        "victim saw {at_victim} SYNs; Bob's budget paid {spent} and refused {refused}; {to_loopback} to loopback"
    );
    assert!(
        at_victim > 0,
        "Bob never dialed the victim: the attack did not run"
    );
    assert!(
        at_victim <= budget,
        "the victim saw {at_victim} SYNs, over the per-address budget of {budget}"
    );
    assert!(
        refused > 0,
        "the budget never had to refuse: the test did not test it"
    );
    assert_eq!(to_loopback, 0, "a loopback candidate was dialed");
}
