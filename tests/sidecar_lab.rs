//! The sidecar between two home NATs, both paths (root only; skips loudly
//! elsewhere): each Bitcoin node is a stand-in `bitpunch node` on its
//! host's 127.0.0.1 behind its sidecar, Alice's stand-in dials Bob's
//! `ID.punch` through her sidecar's SOCKS5 proxy with a domain-name CONNECT,
//! as Bitcoin Core does with `-proxy`.

mod common;

use bitpunch::lab::{Lab, LinkShape};
use bitpunch::sidecar::demo::{self, Site};

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn stand_ins_behind_two_home_nats_share_one_bip324_session_through_their_sidecars() {
    require_lab!();
    let home = "home".parse().unwrap();
    let (mut lab, t) = Lab::two_nats(home, home, LinkShape::delay_ms(20)).unwrap();
    let (nat_a, nat_b) = (t.nat_alice.public_ip, t.nat_bob.public_ip);
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_bitpunch"));
    let tries = demo::run(exe, Site::Lab(&mut lab, &t), 2, |_| {}).unwrap();
    assert_eq!(tries.len(), 4);
    for t in &tries {
        let json = serde_json::to_string(t).unwrap();
        assert!(t.ok, "{json}");
        // Both Bitcoin nodes had the same BIP324 session: not terminated.
        assert!(t.same_session_at_both_ends, "{json}");
        assert_eq!(
            t.standin.transport.map(|t| t.to_string()).as_deref(),
            Some("v2")
        );
        // The punched connection ran between the two NATs, not through
        // the relay or the coordinator.
        let connector = t.connector.as_ref().expect("Alice's sidecar's record");
        assert_eq!(
            connector.remote.as_deref(),
            Some(format!("{nat_b}:18444").as_str()),
            "{json}"
        );
        let listener = t.listener.as_ref().expect("Bob's sidecar's record");
        assert_eq!(
            listener.remote.as_deref(),
            Some(format!("{nat_a}:18444").as_str()),
            "{json}"
        );
        assert!(
            listener
                .spliced_to
                .as_deref()
                .is_some_and(|s| s.starts_with("127.0.0.1:")),
            "{json}"
        );
    }
    let paths: Vec<&str> = tries.iter().map(|t| t.path).collect();
    assert_eq!(paths, ["native", "libp2p", "native", "libp2p"]);
}
