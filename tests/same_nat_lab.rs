//! Two nodes behind the same home router (root only; skips loudly
//! elsewhere). Without hairpinning, which many routers lack, their public
//! candidate (the router's own address) leads nowhere; both paths then race
//! the peer's own-network endpoints: the native coordinator passes them
//! between nodes it sees at the same public address (`hplocal` /
//! `hpcands`), the libp2p exchange carries them in CONNECT and each side
//! takes them only from a peer behind its own public address.

mod common;

use bitpunch::lab::LinkShape;
use bitpunch::scenario::{InLab, PathKind};

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_punch_between_two_nodes_behind_one_router_without_hairpinning() {
    require_lab!();
    // `home`: endpoint-independent mapping, port-dependent filtering, no
    // hairpinning.
    let lab = InLab::start_behind_one_nat("home".parse().unwrap(), LinkShape::delay_ms(20))
        .await
        .unwrap();
    let bob_lan = lab.topology.bob.ip;
    for _ in 0..3 {
        for path in [PathKind::Native, PathKind::Libp2p] {
            let record = lab.try_path(path).await;
            let json = record.to_json();
            assert!(record.ok, "{json}");
            // Bob's endpoint on the LAN was a candidate ...
            let on_lan = format!("{bob_lan}:");
            assert!(
                record.candidates.iter().any(|c| c.starts_with(&on_lan)),
                "{json}"
            );
            // ... and the session runs there, not through the router.
            let remote = record.remote.clone().unwrap_or_default();
            assert!(remote.starts_with(&on_lan), "{json}");
        }
    }
}

/// With hairpinning, more than one way leads to the peer (its LAN address,
/// and its public endpoint through the router), so more than one TCP
/// connection may come up; the responder takes the one the initiator
/// speaks on, and both sides end up on the same one.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_punch_between_two_nodes_behind_one_hairpinning_router() {
    require_lab!();
    let lab = InLab::start_behind_one_nat("home/hairpin".parse().unwrap(), LinkShape::delay_ms(20))
        .await
        .unwrap();
    for _ in 0..3 {
        for path in [PathKind::Native, PathKind::Libp2p] {
            let record = lab.try_path(path).await;
            assert!(record.ok, "{}", record.to_json());
        }
    }
}
