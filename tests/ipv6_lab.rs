//! Both paths over IPv6 (root only; skips loudly elsewhere). Home IPv6 has
//! no NAT but a stateful firewall that lets replies in and drops or refuses
//! (RST) an unsolicited SYN: the same simultaneous open gets through it.
//! The lab gives every host an IPv6 address and every router such a
//! firewall (`NatProfile::firewall6`); here every role listens and dials
//! on IPv6 only.

mod common;

use bitpunch::lab::LinkShape;
use bitpunch::scenario::{Family, InLab, PathKind};

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_punch_through_ipv6_firewalls_that_drop_or_refuse() {
    require_lab!();
    for profile in ["home", "home-rst"] {
        let firewall = profile.parse().unwrap();
        let shape = LinkShape::delay_ms(20);
        let lab = InLab::start_shaped(firewall, firewall, (shape, shape), Family::Ipv6)
            .await
            .unwrap();
        let bob = lab.topology.bob.ip6.expect("Bob has an IPv6 address");
        for _ in 0..2 {
            for path in [PathKind::Native, PathKind::Libp2p] {
                let record = lab.try_path(path).await;
                let json = record.to_json();
                assert!(record.ok, "{profile}: {json}");
                // The session runs between the hosts' own addresses: no
                // NAT in between.
                let remote = record.remote.clone().unwrap_or_default();
                assert_eq!(remote, format!("[{bob}]:18444"), "{profile}: {json}");
            }
        }
    }
}

/// Behind a carrier (IPv4 double NAT, IPv6 routed through the carrier to
/// the home router's firewall), and two hosts behind one router (one /64:
/// the session runs on the LAN, no firewall in between).
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_punch_over_ipv6_behind_a_carrier_and_behind_one_router() {
    require_lab!();
    let shape = LinkShape::delay_ms(20);
    let (cgn, home) = ("cgn".parse().unwrap(), "home".parse().unwrap());
    let lab = InLab::start_shaped(cgn, home, (shape, shape), Family::Ipv6)
        .await
        .unwrap();
    punch_once_per_path_to_bobs_own_address(&lab, "cgn").await;
    drop(lab);
    let lab = InLab::start_behind_one_router(home, shape, Family::Ipv6)
        .await
        .unwrap();
    punch_once_per_path_to_bobs_own_address(&lab, "one router").await;
}

/// One try per path; each punches, and its session runs to Bob's own
/// global address (no NAT on IPv6).
async fn punch_once_per_path_to_bobs_own_address(lab: &InLab, cell: &str) {
    let bob = lab.topology.bob.ip6.expect("Bob has an IPv6 address");
    for path in [PathKind::Native, PathKind::Libp2p] {
        let record = lab.try_path(path).await;
        let json = record.to_json();
        assert!(record.ok, "{cell}: {json}");
        let remote = record.remote.clone().unwrap_or_default();
        assert_eq!(remote, format!("[{bob}]:18444"), "{cell}: {json}");
    }
}
