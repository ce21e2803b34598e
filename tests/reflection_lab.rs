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
use bitpunch::punch::predict::BIRTHDAY_PORTS;
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

/// The victim saw SYNs (the attack ran), no more than the per-address
/// budget and one birthday's guesses (the offer's ports at the victim's
/// address beyond the candidates look like one: paid whole from its own
/// allowance, one a minute), and the budget refused some (it was what
/// held).
fn within_budget(at_victim: u64, refused: u64) {
    let limits = BudgetConfig::default();
    let budget = (limits.per_address + limits.birthdays * BIRTHDAY_PORTS) as u64;
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
    // identity. Unbudgeted, that would be 3 × (3 rounds × 8 candidates +
    // 256 guesses in the first round) = 840 SYNs at the victim.
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
    eprintln!(
        "victim saw {at_victim} SYNs; Bob's budget paid {spent} and refused {refused}; {to_loopback} to loopback"
    );
    within_budget(at_victim, refused);
    assert_eq!(to_loopback, 0, "a loopback candidate was dialed");
}

/// A hostile coordinator (a real one with a filter that rewrites orders)
/// sends Bob, on behalf of 40 requests, orders to punch ports of one victim
/// host. Bob was configured to follow up to 1,000 orders per target, so
/// the order limits do not stop it: the punch budget must. The victim sees
/// at most the per-address budget.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_aims_orders_at_a_victim_costs_it_at_most_the_budget() {
    use bitpunch::identity::NodeKey;
    use bitpunch::native::client::{CoordinatorEndpoint, LinkConfig};
    use bitpunch::native::coordinator::{CoordinatorServer, CoordinatorServerConfig};
    use bitpunch::native::machine::ClientConfig;
    use bitpunch::native::messages::{NativeMessage, PunchRole};
    use std::net::SocketAddr;

    require_lab!();
    let profile: NatProfile = "home".parse().unwrap();
    let (mut lab, t) = Lab::two_nats(profile, profile, LinkShape::default()).unwrap();
    let victim = lab.add_public_host("victim").unwrap();
    lab.nft(&victim.ns, &syn_counter(VICTIM_TABLE, "syns", "input", ""))
        .unwrap();

    let coord_rt = lab.runtime(&t.coordinator).unwrap();
    let coordinator_key = NodeKey::generate();
    let coordinator = CoordinatorEndpoint {
        id: coordinator_key.id(),
        addr: SocketAddr::new(t.coordinator.ip.into(), 18555),
    };
    let victim_ip = victim.ip;
    coord_rt.spawn(async move {
        let mut config = CoordinatorServerConfig::new(session(), coordinator_key);
        config.port = 18555;
        // It serves the attack, not its nodes.
        config.machine.requests_per_minute = usize::MAX;
        config.machine.requests_per_netgroup_per_minute = usize::MAX;
        config.machine.orders_per_netgroup_per_target = usize::MAX;
        config.filter = Some(Arc::new(move |_conn, msg: &mut NativeMessage| {
            if let NativeMessage::Punch {
                role: PunchRole::Responder,
                peer,
                request,
                ..
            } = msg
            {
                let port = 10_000 + (*request % 1_000) as u16;
                *peer = SocketAddr::new(victim_ip.into(), port);
            }
        }));
        let server = CoordinatorServer::start(config).unwrap();
        std::future::pending::<()>().await;
        drop(server);
    });

    let bob_rt = lab.runtime(&t.bob).unwrap();
    let (id_tx, id_rx) = tokio::sync::oneshot::channel();
    let (spent_tx, spent_rx) = tokio::sync::oneshot::channel::<(u64, u64)>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    bob_rt.spawn(async move {
        let mut config = NodeConfig::new(session());
        config.bind_ip = Some(std::net::Ipv4Addr::UNSPECIFIED.into());
        config.port = 18444;
        let node = Node::start(config).unwrap();
        let key = NodeKey::generate();
        // A user who lifted the order limits: only the budget is left.
        let link_config = LinkConfig {
            session: session(),
            client: ClientConfig {
                orders_per_target_per_minute: 1_000,
                orders_per_minute: 1_000,
                ..Default::default()
            },
            ping_interval: bitpunch::native::client::LINK_PING_INTERVAL,
            refusals: None,
        };
        let mut link = loop {
            match bitpunch::native::register(&node, coordinator, &key, link_config.clone()).await {
                Ok(link) => break link,
                // The coordinator may still be starting.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let _ = id_tx.send(link.id);
        tokio::select! {
            _ = bitpunch::native::serve_orders(&node, &mut link, Arc::new(key), session(), Duration::from_secs(30), None) => {}
            _ = done_rx => {}
        }
        let _ = spent_tx.send(node.shared_port().punch_syns());
    });
    let bob_id = tokio::time::timeout(Duration::from_secs(20), id_rx)
        .await
        .expect("Bob registers")
        .unwrap();

    // The requests: one requester, 40 asks. Its own orders (to Bob) are
    // not followed; only Bob's rewritten ones matter.
    let alice_rt = lab.runtime(&t.alice).unwrap();
    let answered = alice_rt
        .run(async move {
            let mut config = NodeConfig::new(session());
            config.bind_ip = Some(std::net::Ipv4Addr::UNSPECIFIED.into());
            config.port = 0;
            let node = Node::start(config).unwrap();
            let link = bitpunch::native::register(
                &node,
                coordinator,
                &NodeKey::generate(),
                LinkConfig {
                    session: session(),
                    // Its own orders all name Bob: lift its reflection limit
                    // so that every request is answered with an order.
                    client: ClientConfig {
                        orders_per_target_per_minute: 1_000,
                        orders_per_minute: 1_000,
                        ..Default::default()
                    },
                    ping_interval: bitpunch::native::client::LINK_PING_INTERVAL,
                    refusals: None,
                },
            )
            .await
            .unwrap();
            let mut answered = 0;
            for _ in 0..40 {
                if link.request(bob_id, Duration::from_secs(5)).await.is_ok() {
                    answered += 1;
                }
            }
            answered
        })
        .await;
    // Bob's punches (3 attempts each) end within a few seconds.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let _ = done_tx.send(());
    let (spent, refused) = spent_rx.await.unwrap();
    let at_victim = lab.nft_counter(&victim.ns, VICTIM_TABLE, "syns").unwrap();
    eprintln!(
        "{answered} orders sent; victim saw {at_victim} SYNs; Bob's budget paid {spent} and refused {refused}"
    );
    assert_eq!(answered, 40, "the coordinator did not send every order");
    within_budget(at_victim, refused);
}
