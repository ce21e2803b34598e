//! The "done when" of both punch paths, with the real binary in the NAT lab
//! (root only; skips loudly elsewhere): a relay and a coordinator on public
//! hosts, `bitpunch node` behind one home NAT, `bitpunch connect` behind
//! another, 20 ms on each NAT's link.

mod common;
use common::{lines, wait_for};

use std::time::Duration;

use bitpunch::lab::{Lab, LinkShape};

const BIN: &str = env!("CARGO_BIN_EXE_bitpunch");

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn both_paths_end_in_direct_bip324_sessions_between_two_home_nats() {
    require_lab!();
    let home = "home".parse().unwrap();
    let (mut lab, t) = Lab::two_nats(home, home, LinkShape::delay_ms(20)).unwrap();
    let (relay_host, coord_host, alice, bob, nat_b) =
        (t.relay, t.coordinator, t.alice, t.bob, t.nat_bob);
    let data = std::env::temp_dir().join(format!("bitpunch-cli-lab-{}", std::process::id()));
    let dir = |name: &str| data.join(name).to_string_lossy().into_owned();

    let listen = format!("/ip4/{}/tcp/4001", relay_host.ip);
    let relay_dir = dir("relay");
    let relay = lines(
        lab.spawn(
            &relay_host,
            BIN,
            &["relay", "--listen", &listen, "--data-dir", &relay_dir, "-q"],
        )
        .unwrap(),
    );
    let relay_addr = wait_for(&relay, "relay listening ");
    let coord_dir = dir("coordinator");
    let coordinator = lines(
        lab.spawn(
            &coord_host,
            BIN,
            &[
                "coordinator",
                "--port",
                "18555",
                "--network",
                "regtest",
                "--data-dir",
                &coord_dir,
                "-q",
            ],
        )
        .unwrap(),
    );
    let coord_id = wait_for(&coordinator, "coordinator id ");
    wait_for(&coordinator, "coordinator listening ");
    let coord_addr = format!("{coord_id}@{}:18555", coord_host.ip);

    let bob_dir = dir("bob");
    let bob_out = lines(
        lab.spawn(
            &bob,
            BIN,
            &[
                "node",
                "--port",
                "18444",
                "--network",
                "regtest",
                "--relay",
                &relay_addr,
                "--coordinator",
                &coord_addr,
                "--data-dir",
                &bob_dir,
                "-q",
            ],
        )
        .unwrap(),
    );
    let mut circuit = None;
    let mut native = None;
    while circuit.is_none() || native.is_none() {
        let line = bob_out
            .recv_timeout(Duration::from_secs(20))
            .expect("bob's addresses");
        if let Some(addr) = line.strip_prefix("reachable as ") {
            if addr.starts_with('/') {
                circuit = Some(addr.to_string());
            } else {
                native = Some(addr.to_string());
            }
        }
    }

    for (address, path) in [(circuit.unwrap(), "libp2p"), (native.unwrap(), "native")] {
        let alice_dir = dir("alice");
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &alice.ns,
                BIN,
                "connect",
                &address,
                "--network",
                "regtest",
                "--json",
                "--data-dir",
                &alice_dir,
                "-q",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{path}: {stdout}");
        let record: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(record["path"], path);
        assert_eq!(record["ok"], true);
        assert_eq!(record["transport"], "v2");
        assert_eq!(record["session_id"].as_str().map(str::len), Some(64));
        assert!(record["t_ms"]["pong"].as_f64().is_some());
        // Direct: the far end is Bob's NAT, not the relay or the coordinator.
        assert_eq!(
            record["remote"],
            format!("{}:18444", nat_b.public_ip).as_str(),
            "{path}"
        );
    }
    drop(lab);
    let _ = std::fs::remove_dir_all(&data);
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn demo_between_two_home_nats_punches_on_every_path() {
    require_lab!();
    let out = std::process::Command::new(BIN)
        .args(["demo", "--nat", "--json", "-q"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{stdout}");
    for r in &records {
        assert_eq!(r["ok"], true, "{r}");
        // Bob is behind the second NAT: 203.0.113.6 (the lab's second router).
        assert!(
            r["remote"].as_str().unwrap().starts_with("203.0.113."),
            "{r}"
        );
    }
    assert!(out.status.success());
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn a_small_lab_run_writes_records_a_matching_summary_and_plots() {
    require_lab!();
    let out = std::env::temp_dir().join(format!("bitpunch-lab-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = std::process::Command::new(BIN)
        .args([
            "lab",
            "run",
            "--alice",
            "home",
            "--bob",
            "home",
            "--bob",
            "full-cone",
            "--tries",
            "2",
            "-q",
        ])
        .args(["--path", "native", "--path", "libp2p"])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let records = bitpunch::matrix::read_jsonl(&out.join("records.jsonl")).expect("records parse");
    // 2 cells x 2 paths x 2 tries
    assert_eq!(records.len(), 8);
    assert!(records.iter().all(|r| r.lab.is_some()));
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    // Each row's count k/n adds up to the records of that cell.
    let mut counted = 0;
    let mut ok_counted = 0;
    for line in summary.lines().filter(|l| l.starts_with("| eim")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (ok, n) = cells[4].split(' ').next().unwrap().split_once('/').unwrap();
        counted += n.parse::<usize>().unwrap();
        ok_counted += ok.parse::<usize>().unwrap();
    }
    assert_eq!(counted, records.len(), "{summary}");
    assert_eq!(
        ok_counted,
        records.iter().filter(|r| r.ok).count(),
        "{summary}"
    );
    for plot in ["success.svg", "latency.svg"] {
        let svg = std::fs::read_to_string(out.join(plot)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{plot}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// The cells and conditions added for issue 15, end to end through the
/// CLI: one router for both nodes, a carrier NAT, asymmetric delays, IPv6.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn lab_run_takes_same_router_carrier_asymmetric_ipv6_and_dual_stack_cells() {
    require_lab!();
    let run = |args: &[&str]| {
        let out = std::env::temp_dir().join(format!(
            "bitpunch-lab-cells-{}-{}",
            std::process::id(),
            args.join("_").replace('/', "-")
        ));
        let _ = std::fs::remove_dir_all(&out);
        let status = std::process::Command::new(BIN)
            .args(["lab", "run", "--tries", "1", "--path", "native", "-q"])
            .args(args)
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}");
        let records =
            bitpunch::matrix::read_jsonl(&out.join("records.jsonl")).expect("records parse");
        let _ = std::fs::remove_dir_all(&out);
        records
    };
    let same = run(&["--same-router", "home"]);
    assert_eq!(same.len(), 1);
    let lab = same[0].lab.clone().unwrap();
    assert!(same[0].ok, "{}", same[0].to_json());
    assert_eq!(lab.nat_bob, bitpunch::matrix::SAME_ROUTER);

    let carrier = run(&["--alice", "cgn", "--bob", "home", "--bob-delay-ms", "5"]);
    assert_eq!(carrier.len(), 1);
    let lab = carrier[0].lab.clone().unwrap();
    assert!(carrier[0].ok, "{}", carrier[0].to_json());
    assert_eq!(lab.nat_alice, "eim/apdf/drop/cgn");
    assert_eq!(lab.bob_delay_ms, Some(5.0));

    let v6 = run(&["--alice", "home", "--bob", "home-rst", "--ipv6"]);
    assert_eq!(v6.len(), 1);
    let lab = v6[0].lab.clone().unwrap();
    assert!(v6[0].ok, "{}", v6[0].to_json());
    assert!(lab.ipv6 && lab.nat_alice.ends_with("(IPv6)"));
    assert!(v6[0].remote.clone().unwrap_or_default().starts_with('['));

    let dual = run(&["--alice", "home", "--bob", "home", "--dual-stack"]);
    assert_eq!(dual.len(), 1);
    let lab = dual[0].lab.clone().unwrap();
    assert!(dual[0].ok, "{}", dual[0].to_json());
    assert!(lab.dual_stack && !lab.ipv6 && lab.nat_bob.ends_with("(dual stack)"));
    // Bob's public IPv4 endpoint and his IPv6 one, raced.
    assert_eq!(dual[0].candidates.len(), 2, "{}", dual[0].to_json());
}
