//! The node classifies its own NAT from a coordinator's NAT probes (root
//! only; skips loudly elsewhere): for every lab preset, a node behind it
//! registers with a coordinator on a public host and asks; the verdict must
//! be the preset's own mapping (endpoint-independent with or without port
//! preservation, symmetric sequential or random).

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bitpunch::identity::NodeKey;
use bitpunch::lab::{Lab, LinkShape};
use bitpunch::native::client::{CoordinatorEndpoint, LinkConfig};
use bitpunch::native::coordinator::{CoordinatorServer, CoordinatorServerConfig};

const COORDINATOR_PORT: u16 = 18555;

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_finds_the_mapping_of_every_preset() {
    require_lab!();
    let mut wrong = Vec::new();
    for (name, profile) in bitpunch::lab::nat::PRESETS {
        let home = "home".parse().unwrap();
        let (lab, t) = Lab::two_nats(profile, home, LinkShape::default()).unwrap();
        let coordinator_rt = lab.runtime(&t.coordinator).unwrap();
        let key = NodeKey::generate();
        let endpoint = CoordinatorEndpoint {
            id: key.id(),
            addr: SocketAddr::new(t.coordinator.ip.into(), COORDINATOR_PORT),
        };
        coordinator_rt.spawn(async move {
            let mut config = CoordinatorServerConfig::new(session(), key);
            config.port = COORDINATOR_PORT;
            config.nat_probe = true;
            let server = CoordinatorServer::start(config).unwrap();
            std::future::pending::<()>().await;
            drop(server);
        });
        let alice_rt = lab.runtime(&t.alice).unwrap();
        let class = alice_rt
            .run(async move {
                let node = node_on(std::net::Ipv4Addr::UNSPECIFIED.into(), 18444);
                let link_config = LinkConfig {
                    session: session(),
                    client: Default::default(),
                    ping_interval: bitpunch::native::client::LINK_PING_INTERVAL,
                    refusals: None,
                };
                let key = Arc::new(NodeKey::generate());
                let link = bitpunch::native::register(&node, endpoint, &key, link_config)
                    .await
                    .unwrap();
                assert_ne!(
                    link.features & bitpunch::native::messages::FEATURE_NAT_PROBE,
                    0,
                    "the coordinator announces its probes"
                );
                let local = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), node.port());
                let probe = SocketAddr::new(endpoint.addr.ip(), COORDINATOR_PORT + 1);
                bitpunch::nat::classify(local, link.observed, probe, Duration::from_secs(5)).await
            })
            .await
            .unwrap();
        eprintln!("{name}: {class:?}");
        // Behind a carrier NAT, the two NATs' mappings combined.
        if class.lab_mapping() != Some(profile.effective_mapping()) {
            wrong.push(format!("{name}: {class:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
