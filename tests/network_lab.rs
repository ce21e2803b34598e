//! The protocol's end, with the real binary in the NAT lab (root only;
//! skips loudly elsewhere): `bitpunch lab network` builds ten nodes behind
//! mixed NATs, two coordinators and a reachable node with three inbound
//! slots, each node seeded with the reachable node's address only, while a
//! hostile party floods the reachable node with 1,000 fake "reachable via
//! my coordinator" records that die 45 s later.

mod common;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bitpunch");

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn ten_nodes_find_their_outbound_peers_one_per_group_through_handoffs_and_a_flood() {
    require_lab!();
    let out = std::env::temp_dir().join(format!("bitpunch-network-{}", std::process::id()));
    let run = std::process::Command::new(BIN)
        .args(["lab", "network", "--nodes", "10", "--flood", "1000"])
        .args(["--seconds", "240", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    let records = std::fs::read_to_string(out.join("records.jsonl")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out);
    assert!(run.status.success(), "{stdout}");
    assert_eq!(summary["converged"], true, "{stdout}");

    let nodes = summary["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 10);
    let mut handed_off = 0;
    for node in nodes {
        // Every node at its target, found by itself (it was given one
        // address), and never two sessions in one group: the reachable
        // node's, or one coordinator's.
        assert_eq!(node["outbound"], node["target"], "{node}");
        assert_eq!(node["target"], 3);
        assert_eq!(node["max_per_group"], 1, "{node}");
        let sessions = node["sessions"].as_array().unwrap();
        let mut groups: Vec<&str> = sessions
            .iter()
            .map(|s| s["netgroup"].as_str().unwrap())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        assert_eq!(groups.len(), sessions.len(), "{node}");
        for s in sessions {
            if s["handed_off"] == true {
                // A handoff ends in a punched, direct session.
                handed_off += 1;
                assert_eq!(s["path"], "native", "{s}");
            }
        }
        // The flood takes no slot, and its records died with their time.
        assert!(node["flooded_sessions"].as_u64().unwrap() <= 1, "{node}");
        assert_eq!(node["flooded_addresses"], 0, "{node}");
    }
    // The reachable node was full and handed newcomers on.
    assert!(summary["handoffs"].as_u64().unwrap() >= 1, "{stdout}");
    assert!(handed_off >= 1, "{stdout}");
    // Of the 1,000 records it kept at most one bucket (they claim one
    // coordinator, from one peer), and none at the end.
    let peak = summary["reachable_flooded_addresses_peak"]
        .as_u64()
        .unwrap();
    assert!((1..=32).contains(&peak), "{stdout}");
    assert_eq!(summary["reachable_flooded_addresses"], 0);
    // The nodes' punch records went to records.jsonl, as in `lab run`.
    let punched = records
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["ok"] == true && r["path"] == "native")
        .count();
    assert!(punched >= 10, "{punched} punched records");
}
