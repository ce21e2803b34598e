//! Two nodes behind the same home router (root only; skips loudly
//! elsewhere). Without hairpinning, which many routers lack, their public
//! candidate (the router's own address) leads nowhere; the native path
//! then races the own-network endpoints the coordinator passes between
//! nodes it sees at the same public address (`hplocal` / `hpcands`).

mod common;

use bitpunch::lab::LinkShape;
use bitpunch::scenario::{InLab, PathKind};

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_punches_between_two_nodes_behind_one_router_without_hairpinning() {
    require_lab!();
    // `home`: endpoint-independent mapping, port-dependent filtering, no
    // hairpinning.
    let lab = InLab::start_behind_one_nat("home".parse().unwrap(), LinkShape::delay_ms(20))
        .await
        .unwrap();
    let bob_lan = lab.topology.bob.ip;
    for _ in 0..3 {
        let record = lab.try_path(PathKind::Native).await;
        let json = record.to_json();
        assert!(record.ok, "{json}");
        // Public candidate first, then Bob's endpoint on the LAN.
        assert_eq!(record.candidates.len(), 2, "{json}");
        assert!(
            record.candidates[1].starts_with(&format!("{bob_lan}:")),
            "{json}"
        );
        // The session runs on the LAN, not through the router.
        let remote = record.remote.clone().unwrap_or_default();
        assert!(remote.starts_with(&format!("{bob_lan}:")), "{json}");
    }
}
