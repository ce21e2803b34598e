//! The native path between hosts behind emulated NATs (root only; skips
//! loudly elsewhere): two home routers with 20 ms on each internet link, a
//! coordinator on a public host.

mod common;
use common::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bitpunch::identity::{NodeId, NodeKey};
use bitpunch::lab::{Lab, LinkShape, NatProfile, NsRuntime};
use bitpunch::native;
use bitpunch::native::client::{CoordinatorEndpoint, LinkConfig};
use bitpunch::native::coordinator::{CoordinatorServer, CoordinatorServerConfig};
use bitpunch::native::machine::ClientConfig;
use bitpunch::node::{Node, NodeConfig};
use bitpunch::report::Outcome;
use bitpunch::wire::Transport;

const COORDINATOR_PORT: u16 = 18555;
const BOB_PORT: u16 = 18444;

fn node(port: u16) -> Node {
    let mut config = NodeConfig::new(session());
    config.bind_ip = Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    config.port = port;
    // Twenty tries at one peer in a minute: past the punch budget.
    config.punch_budget = bitpunch::punch::budget::BudgetConfig::UNLIMITED;
    Node::start(config).unwrap()
}

fn link_config() -> LinkConfig {
    LinkConfig {
        session: session(),
        client: ClientConfig::default(),
        ping_interval: bitpunch::native::client::LINK_PING_INTERVAL,
        refusals: None,
    }
}

struct Scenario {
    // Runtimes before the lab: they hold threads inside its namespaces.
    alice_rt: NsRuntime,
    _bob_rt: NsRuntime,
    _coord_rt: NsRuntime,
    coordinator: CoordinatorEndpoint,
    bob_id: NodeId,
    _lab: Lab,
}

async fn scenario(profile: &str) -> Scenario {
    // Alice's tries all come from one public address; the default
    // reflection limit (6 per address per minute) would refuse most.
    scenario_with(profile, 100).await
}

/// Bob follows at most `orders` punch orders per minute (per address too).
async fn scenario_with(profile: &str, orders: usize) -> Scenario {
    let profile: NatProfile = profile.parse().unwrap();
    let (lab, t) = Lab::two_nats(profile, profile, LinkShape::delay_ms(20)).unwrap();
    let (public, alice, bob) = (t.coordinator, t.alice, t.bob);
    let coord_rt = lab.runtime(&public).unwrap();
    let coordinator_key = NodeKey::generate();
    let coordinator_id = coordinator_key.id();
    coord_rt.spawn(async move {
        let mut config = CoordinatorServerConfig::new(session(), coordinator_key);
        config.port = COORDINATOR_PORT;
        // Twenty tries from one Alice at one Bob in a minute.
        config.machine.requests_per_netgroup_per_minute = usize::MAX;
        config.machine.orders_per_netgroup_per_target = usize::MAX;
        let server = CoordinatorServer::start(config).unwrap();
        // Lives as long as the namespace's runtime.
        std::future::pending::<()>().await;
        drop(server);
    });
    let coordinator = CoordinatorEndpoint {
        id: coordinator_id,
        addr: SocketAddr::new(public.ip.into(), COORDINATOR_PORT),
    };

    let bob_rt = lab.runtime(&bob).unwrap();
    let (id_tx, id_rx) = tokio::sync::oneshot::channel();
    bob_rt.spawn(async move {
        let node = node(BOB_PORT);
        let key = NodeKey::generate();
        let mut link = loop {
            let mut config = link_config();
            config.client.orders_per_target_per_minute = orders;
            config.client.orders_per_minute = orders;
            match native::register(&node, coordinator, &key, config).await {
                Ok(link) => break link,
                // The coordinator may still be starting.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let _ = id_tx.send(link.id);
        native::serve_orders(
            &node,
            &mut link,
            Arc::new(key),
            session(),
            Duration::from_secs(30),
            None,
        )
        .await;
    });
    let bob_id = tokio::time::timeout(Duration::from_secs(20), id_rx)
        .await
        .unwrap()
        .unwrap();
    let alice_rt = lab.runtime(&alice).unwrap();
    Scenario {
        alice_rt,
        _bob_rt: bob_rt,
        _coord_rt: coord_rt,
        coordinator,
        bob_id,
        _lab: lab,
    }
}

/// One `connect NODE_ID@COORDINATOR` from Alice, from a fresh port, as the
/// CLI does it.
async fn alice_connects(s: &Scenario) -> Outcome {
    let (coordinator, bob_id) = (s.coordinator, s.bob_id);
    s.alice_rt
        .run(async move {
            let node = node(0);
            let key = Arc::new(NodeKey::generate());
            let asked = tokio::time::Instant::now();
            let link = native::register(&node, coordinator, &key, link_config())
                .await
                .unwrap();
            native::connect_via(&node, &link, key, session(), bob_id, asked)
                .await
                .record
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
            // Direct: the far end is Bob's NAT mapping, not the coordinator.
            let remote: SocketAddr = record.remote.as_deref().unwrap().parse().unwrap();
            assert_ne!(remote.ip(), s.coordinator.addr.ip());
            assert!(
                remote.ip().to_string().starts_with("203.0.113."),
                "{remote}"
            );
        } else {
            eprintln!("try {i} failed: {}", record.to_json());
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
async fn punches_through_home_nats_that_drop() {
    require_lab!();
    twenty_tries("home").await;
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punches_through_home_nats_that_reset() {
    require_lab!();
    twenty_tries("home-rst").await;
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_nats_fail_cleanly_after_the_attempts() {
    require_lab!();
    let s = scenario("symmetric").await;
    let record = tokio::time::timeout(Duration::from_secs(30), alice_connects(&s))
        .await
        .expect("a failing punch must not hang");
    assert!(!record.ok);
    let error = record.error.unwrap();
    assert!(
        error.contains("no direct connection after 3 attempts"),
        "{error}"
    );
    assert_eq!(record.attempts, 3);
}

/// Bob refuses his order (no orders left): the coordinator tells Alice, who
/// stops punching into a NAT that will not open instead of using up her
/// three attempts.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_order_ends_the_requesters_punch() {
    require_lab!();
    let s = scenario_with("home", 0).await;
    let record = tokio::time::timeout(Duration::from_secs(30), alice_connects(&s))
        .await
        .expect("a refused punch must not hang");
    assert!(!record.ok);
    let error = record.error.clone().unwrap();
    assert!(
        error.contains("the peer refused its order (PeerRefused)"),
        "{}",
        record.to_json()
    );
}

/// `connect` through a running node, as the node does it: Alice's node is
/// registered already, and each punch is one request on its open session.
/// Twenty punches between two home NATs with 20 ms on each link; the median
/// time to verack is printed against the bound d_a + max(d_a, d_b) + 5 D
/// (docs/results.md).
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punches_through_a_registered_node_are_one_request_each() {
    require_lab!();
    let s = scenario("home").await;
    let (coordinator, bob_id) = (s.coordinator, s.bob_id);
    let records = s
        .alice_rt
        .run(async move {
            let node = node(0);
            let key = Arc::new(NodeKey::generate());
            let mut config = link_config();
            config.client.orders_per_target_per_minute = 100;
            config.client.orders_per_minute = 100;
            let link = native::register(&node, coordinator, &key, config)
                .await
                .unwrap();
            let access = link.access();
            let ctx = native::punch::PunchContext::over(
                node.shared_port().clone(),
                node.router().clone(),
                key,
                session(),
                &access,
                node.handle().nat_memory(),
            );
            let mut records = Vec::new();
            for _ in 0..20 {
                let outcome =
                    native::connect_with(&ctx, &access, bob_id, tokio::time::Instant::now()).await;
                records.push(outcome.record);
                // The next punch leaves from the same port to the same peer.
                // Started while this session's closing handshake is still
                // under way, its first SYN does not get through (the
                // 4-tuple is still taken) and it needs a second attempt:
                // give the close half a second, as a user would.
                drop(outcome.session);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            records
        })
        .await;
    let ok: Vec<&Outcome> = records.iter().filter(|r| r.ok).collect();
    for r in records.iter().filter(|r| !r.ok) {
        eprintln!("failed: {}", r.to_json());
    }
    let mut verack: Vec<f64> = ok.iter().filter_map(|r| r.t_ms.verack).collect();
    verack.sort_by(f64::total_cmp);
    let median = verack.get(verack.len() / 2).copied().unwrap_or(f64::NAN);
    let bound = bitpunch::report::bound::native_through_node(20.0, 20.0);
    let bytes: Vec<u64> = ok.iter().map(|r| r.bytes.coordination).collect();
    let attempts: Vec<u32> = ok.iter().map(|r| r.attempts).collect();
    eprintln!(
        "first try: time to verack {:?} ms; attempts per try {attempts:?}",
        ok.first().and_then(|r| r.t_ms.verack)
    );
    eprintln!(
        "through a registered node: {}/20 ok, median time to verack {median:.1} ms against a bound of {bound} ms; coordination bytes {bytes:?}",
        ok.len()
    );
    assert!(ok.len() >= 19, "only {} of 20 punches worked", ok.len());
    // One request and its order: a few hundred bytes, never a set-up.
    assert!(bytes.iter().all(|b| *b < 600), "{bytes:?}");
}
