//! Port prediction in the NAT lab (root only; skips loudly elsewhere). A
//! `symmetric-seq` router gives every new destination the next port of a
//! counter, so the endpoint the coordinator saw is useless to the peer,
//! which sits behind a port-filtering `home` router: without prediction
//! this pair never punched (0 of 5 in every matrix). The symmetric side
//! asks a probe server where its latest connection appears and tells the
//! peer the next ports: native through the coordinator (`hpports`, probes
//! on the coordinator's port + 1), libp2p in its DCUtR CONNECT (probes on
//! the relay's port + 1). The peer dials each of them.

mod common;

use bitpunch::lab::LinkShape;
use bitpunch::scenario::{InLab, PathKind};

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_sequential_symmetric_nat_predicts_its_port_on_both_paths() {
    require_lab!();
    let (symmetric, home) = ("symmetric-seq".parse().unwrap(), "home".parse().unwrap());

    // Alice (the requester) behind the symmetric NAT: she predicts. Bob's
    // NAT keeps its port: his observed endpoint is the way in.
    let lab = InLab::start(symmetric, home, LinkShape::delay_ms(20))
        .await
        .unwrap();
    alice_predicts_and_punches(&lab, 1).await;
    drop(lab);

    // Bob (the responder) behind it: Alice dials the ports he predicted.
    let lab = InLab::start(home, symmetric, LinkShape::delay_ms(20))
        .await
        .unwrap();
    for _ in 0..2 {
        // Native: the order's endpoint and the eight predicted ports.
        // libp2p: Bob's CONNECT, his observed address and seven predicted
        // ones dialed every round, the eighth once.
        for (path, candidates) in [(PathKind::Native, 9), (PathKind::Libp2p, 9)] {
            let record = lab.try_path(path).await;
            let json = record.to_json();
            assert!(record.ok, "{json}");
            assert!(record.predicted_ports.is_empty(), "{json}");
            assert_eq!(record.candidates.len(), candidates, "{json}");
            // The session runs on one of the ports Bob predicted.
            let remote = record.remote.clone().unwrap_or_default();
            assert!(record.candidates[1..].contains(&remote), "{json}");
            assert!(record.syns >= candidates as u32, "{json}");
        }
    }

    drop(lab);

    // Both behind one: each dials the other's observed endpoint first, then
    // the other's list in order, and the k-th connections of the two sides
    // meet (before the list began at its second port: 0 of 20).
    let lab = InLab::start(symmetric, symmetric, LinkShape::delay_ms(20))
        .await
        .unwrap();
    alice_predicts_and_punches(&lab, 9).await;
}

/// Two tries per path: each punches, Alice predicted her eight ports, and
/// dialed `candidates` endpoints of Bob's.
async fn alice_predicts_and_punches(lab: &InLab, candidates: usize) {
    for _ in 0..2 {
        for path in [PathKind::Native, PathKind::Libp2p] {
            let record = lab.try_path(path).await;
            let json = record.to_json();
            assert!(record.ok, "{json}");
            assert_eq!(record.predicted_ports.len(), 8, "{json}");
            assert_eq!(record.candidates.len(), candidates, "{json}");
        }
    }
}

/// A relay whose NAT-probe port drops SYNs (a firewall, or a relay that is
/// not bitpunch's) must not hold back Alice's reply to Bob's CONNECT: Bob
/// times his dial by how long the reply took, so a reply a probe's timeout
/// (1 s) late skews the round (seen as a 5-8 s second round). Alice sits
/// behind a NAT that changes her port, so she probes before she offers.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_server_that_drops_syns_does_not_hold_back_the_libp2p_reply() {
    require_lab!();
    let lab = InLab::start(
        "port-restricted-rp".parse().unwrap(),
        "home".parse().unwrap(),
        LinkShape::delay_ms(20),
    )
    .await
    .unwrap();
    let before = lab.try_path(PathKind::Libp2p).await;
    assert!(before.ok && before.attempts == 1, "{}", before.to_json());
    // The relay's probe port (4002) drops every SYN from now on. The rule
    // goes with the relay's namespace when the lab ends.
    let rules = "table inet bitpunch_test_probe_drop {\n  chain input { type filter hook input priority filter; policy accept;\n    tcp dport 4002 drop\n  }\n}\n";
    let mut nft = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.topology.relay.ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    nft.stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success());
    let after = lab.try_path(PathKind::Libp2p).await;
    let json = after.to_json();
    assert!(after.ok && after.attempts == 1, "{json}");
    let (c0, c1) = (
        before.t_ms.coordination.unwrap_or_default(),
        after.t_ms.coordination.unwrap_or_default(),
    );
    // Waiting out the probe would add its whole second; the reply waits
    // 100 ms past the CONNECT at most.
    assert!(
        c1 < c0 + 600.0,
        "{c0} ms before, {c1} ms with the probe dropped: {json}"
    );
}
