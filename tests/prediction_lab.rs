//! Port prediction in the NAT lab (root only; skips loudly elsewhere). A
//! `symmetric-seq` router gives every new destination the next port of a
//! counter, so the endpoint the coordinator saw is useless to the peer,
//! which sits behind a port-filtering `home` router: without prediction
//! this pair never punched (0 of 5 in every matrix). The symmetric side
//! asks the coordinator's probe port where its latest connection appears
//! and tells the peer the next ports (`hpports`); the peer dials each once.

mod common;

use bitpunch::lab::LinkShape;
use bitpunch::scenario::{InLab, PathKind};

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_sequential_symmetric_nat_predicts_its_port_for_the_native_punch() {
    require_lab!();
    let (symmetric, home) = ("symmetric-seq".parse().unwrap(), "home".parse().unwrap());

    // Alice (the requester) behind the symmetric NAT: she predicts.
    let lab = InLab::start(symmetric, home, LinkShape::delay_ms(20))
        .await
        .unwrap();
    for _ in 0..2 {
        let record = lab.try_path(PathKind::Native).await;
        let json = record.to_json();
        assert!(record.ok, "{json}");
        assert_eq!(record.predicted_ports.len(), 8, "{json}");
        // Bob's NAT keeps its port: the order's endpoint is the way in.
        assert_eq!(record.candidates.len(), 1, "{json}");
    }
    drop(lab);

    // Bob (the responder) behind it: Alice dials the ports he predicted.
    let lab = InLab::start(home, symmetric, LinkShape::delay_ms(20))
        .await
        .unwrap();
    for _ in 0..2 {
        let record = lab.try_path(PathKind::Native).await;
        let json = record.to_json();
        assert!(record.ok, "{json}");
        assert!(record.predicted_ports.is_empty(), "{json}");
        // The order's endpoint and the eight predicted ports; the session
        // runs on one of those Bob predicted.
        assert_eq!(record.candidates.len(), 9, "{json}");
        let remote = record.remote.clone().unwrap_or_default();
        assert!(record.candidates[1..].contains(&remote), "{json}");
        assert!(record.syns >= 9, "{json}");
    }
}
