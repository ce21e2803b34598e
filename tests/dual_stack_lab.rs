//! Dual-stack nodes (root only; skips loudly elsewhere): the relay and the
//! coordinator listen on both families and are named by their IPv4
//! address; each node learns its IPv6 address by itself (libp2p: a second
//! connection to the relay's IPv6 listen address; native: a second
//! registration of its key over the coordinator's IPv6 address) and the
//! punch races both families. Two random symmetric NATs never meet over
//! IPv4 (0 of 20 in docs/results.md); their IPv6 firewalls let the
//! simultaneous open through.

mod common;

use bitpunch::lab::LinkShape;
use bitpunch::scenario::{Family, InLab, PathKind};

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_random_symmetric_nats_meet_over_the_other_family_on_both_paths() {
    require_lab!();
    let symmetric = "symmetric".parse().unwrap();
    let shape = LinkShape::delay_ms(20);
    let lab = InLab::start_shaped(symmetric, symmetric, (shape, shape), Family::DualStack)
        .await
        .unwrap();
    let bob_v4 = lab.topology.nat_bob.public_ip;
    let bob_v6 = lab.topology.bob.ip6.expect("Bob has an IPv6 address");
    for _ in 0..2 {
        for path in [PathKind::Native, PathKind::Libp2p] {
            let record = lab.try_path(path).await;
            let json = record.to_json();
            assert!(record.ok, "{json}");
            // Both families were raced: Bob's public IPv4 endpoint and his
            // own IPv6 address; the IPv6 one carried the session.
            let has = |ip: String| record.candidates.iter().any(|c| c.starts_with(&ip));
            assert!(has(bob_v4.to_string()), "{json}");
            assert!(has(format!("[{bob_v6}]")), "{json}");
            let remote = record.remote.clone().unwrap_or_default();
            assert_eq!(remote, format!("[{bob_v6}]:18444"), "{json}");
            // No birthday beside a family that punches with one SYN. The
            // libp2p path still dials the 8 candidates of the peer's offer
            // (the first of its guesses among them) once.
            assert_eq!(record.birthday_ports, 0, "{json}");
            let most = match path {
                PathKind::Libp2p => bitpunch::libp2p::exchange::MAX_CANDIDATES,
                _ => 4,
            };
            assert!(record.syns as usize <= most, "{json}");
        }
    }
}

/// Nothing that worked gets worse: two home routers, dual stack, punch
/// on both paths (whichever family wins).
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_home_routers_punch_dual_stack_on_both_paths() {
    require_lab!();
    let home = "home".parse().unwrap();
    let shape = LinkShape::delay_ms(20);
    let lab = InLab::start_shaped(home, home, (shape, shape), Family::DualStack)
        .await
        .unwrap();
    for path in [PathKind::Native, PathKind::Libp2p] {
        let record = lab.try_path(path).await;
        let json = record.to_json();
        assert!(record.ok, "{json}");
        assert_eq!(record.candidates.len(), 2, "{json}");
    }
}
