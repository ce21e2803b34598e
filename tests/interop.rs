//! Interop with libp2p implementations we did not write: js-libp2p's and
//! py-libp2p's circuit relay v2 servers, js-libp2p peers on our relay, and
//! js-libp2p's DCUtR against rust-libp2p's in our `--stock-dcutr` mode — in
//! the NAT lab (root only; skips loudly elsewhere) — and the js and py relays
//! under `lab scale`'s load on loopback. The js and py packages are installed
//! by `bash interop/run install` (scripts/setup runs it); without them these
//! tests fail and say how to install them.

mod common;
use common::{lines, wait_for};

use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bitpunch::lab::{Host, Lab, LinkShape, TwoNats};

const BIN: &str = env!("CARGO_BIN_EXE_bitpunch");

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// Node 22 from the interop package (js-libp2p needs it; the machine's Node
/// may be older).
fn node_bin() -> String {
    installed(interop_dir().join("js/node_modules/.bin/node"))
}

fn python_bin() -> String {
    installed(interop_dir().join("py/.venv/bin/python"))
}

fn script(path: &str) -> String {
    interop_dir().join(path).to_string_lossy().into_owned()
}

fn installed(path: PathBuf) -> String {
    assert!(
        path.exists(),
        "{} is missing: run `bash interop/run install` (needs the npm registry and PyPI)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// A scratch data directory for one bitpunch process, removed on drop.
struct DataDirs(PathBuf);

impl DataDirs {
    fn new(test: &str) -> DataDirs {
        let dir =
            std::env::temp_dir().join(format!("bitpunch-interop-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        DataDirs(dir)
    }

    fn get(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for DataDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a relay on `host`'s port 4001 and returns its address with
/// `/p2p/<id>`, as the relay printed it.
fn start_relay(lab: &mut Lab, host: &Host, which: Relay, dirs: &DataDirs) -> String {
    let listen = format!("/ip4/{}/tcp/4001", host.ip);
    let child = match which {
        Relay::Js { max_reservations } => {
            let limit = format!("RELAY_MAX_RESERVATIONS={max_reservations}");
            let (node, relay) = (node_bin(), script("js/relay.mjs"));
            lab.spawn(host, "env", &[&limit, &node, &relay, &listen])
        }
        Relay::Py => {
            let (python, relay) = (python_bin(), script("py/relay.py"));
            lab.spawn(host, &python, &[&relay, &listen])
        }
        Relay::Bitpunch => {
            let dir = dirs.get("relay");
            lab.spawn(
                host,
                BIN,
                &["relay", "--listen", &listen, "--data-dir", &dir, "-q"],
            )
        }
    }
    .unwrap();
    let out = lines(child);
    let addr = wait_for(&out, "relay listening ");
    assert!(addr.starts_with(&listen), "{addr}");
    addr
}

#[derive(Clone, Copy)]
enum Relay {
    Js { max_reservations: u32 },
    Py,
    Bitpunch,
}

/// `bitpunch node --relay RELAY --json` on `host`; its stdout lines, and
/// with `log` its log (stderr, warnings and up) mixed in.
fn spawn_node(
    lab: &mut Lab,
    host: &Host,
    relay: &str,
    extra: &[&str],
    dirs: &DataDirs,
    log: bool,
) -> mpsc::Receiver<String> {
    let dir = dirs.get(&host.name);
    let mut args = vec![
        BIN,
        "node",
        "--port",
        "18444",
        "--network",
        "regtest",
        "--relay",
        relay,
        "--json",
        "--data-dir",
        &dir,
        "-q",
    ];
    args.extend_from_slice(extra);
    if log {
        args.retain(|a| *a != "-q");
        let mut wrapped = vec!["-c", "exec \"$@\" 2>&1", "sh"];
        wrapped.extend_from_slice(&args);
        return lines(lab.spawn(host, "sh", &wrapped).unwrap());
    }
    lines(lab.spawn(host, BIN, &args[1..]).unwrap())
}

/// `bitpunch node` behind a NAT holding a reservation on `relay`; returns
/// its stdout lines and its circuit address.
fn bitpunch_node(
    lab: &mut Lab,
    host: &Host,
    relay: &str,
    extra: &[&str],
    dirs: &DataDirs,
) -> (mpsc::Receiver<String>, String) {
    let out = spawn_node(lab, host, relay, extra, dirs, false);
    let circuit = wait_for(&out, "reachable as ");
    assert!(circuit.starts_with(relay), "{circuit} is not on {relay}");
    (out, circuit)
}

/// Runs a command inside `host`'s namespace to the end; its stdout.
fn run_in(host: &Host, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &host.ns, program])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!(
            "{program} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.success(), stdout)
}

/// `bitpunch connect ADDRESS --json` from `host`, to the end: whether it
/// succeeded, and its outcome record.
fn connect_from(
    host: &Host,
    address: &str,
    extra: &[&str],
    dirs: &DataDirs,
) -> (bool, serde_json::Value) {
    // Not the host's node directory: a node there may still be running
    // with that key.
    let dir = dirs.get(&format!("{}-connect", host.name));
    let mut args = vec![
        "connect",
        address,
        "--network",
        "regtest",
        "--json",
        "--data-dir",
        &dir,
        "-q",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout) = run_in(host, BIN, &args);
    (ok, json_line(&stdout))
}

fn json_line(text: &str) -> serde_json::Value {
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in {text:?}"));
    serde_json::from_str(line).unwrap()
}

/// Tests 1 and 2: two bitpunch nodes behind home NATs meet through a relay
/// someone else wrote, and our libp2p path punches a direct BIP324 session.
fn libp2p_path_through_a_foreign_relay(which: Relay, test: &str) {
    let home = "home".parse().unwrap();
    let (mut lab, t) = Lab::two_nats(home, home, LinkShape::delay_ms(20)).unwrap();
    let TwoNats {
        relay: relay_host,
        nat_alice,
        nat_bob,
        alice,
        bob,
        ..
    } = t;
    let dirs = DataDirs::new(test);
    let relay = start_relay(&mut lab, &relay_host, which, &dirs);
    let (bob_out, circuit) = bitpunch_node(&mut lab, &bob, &relay, &[], &dirs);

    let (ok, alice_record) = connect_from(&alice, &circuit, &[], &dirs);
    assert!(ok, "{alice_record}");
    assert_eq!(alice_record["path"], "libp2p");
    assert_eq!(alice_record["ok"], true, "{alice_record}");
    assert_eq!(alice_record["transport"], "v2");
    assert_eq!(alice_record["via"], circuit.as_str());
    // Direct: Alice's far end is Bob's NAT, not the relay.
    assert_eq!(
        alice_record["remote"],
        format!("{}:18444", nat_bob.public_ip).as_str()
    );

    // Bob's side of the same session: same BIP324 session id, and his far
    // end is Alice's NAT.
    let bob_line = std::iter::from_fn(|| bob_out.recv_timeout(Duration::from_secs(20)).ok())
        .find(|l| l.starts_with('{'))
        .expect("Bob's record of the punch");
    let bob_record: serde_json::Value = serde_json::from_str(&bob_line).unwrap();
    assert_eq!(bob_record["ok"], true, "{bob_record}");
    assert_eq!(bob_record["path"], "libp2p");
    assert_eq!(bob_record["session_id"], alice_record["session_id"]);
    assert_eq!(alice_record["session_id"].as_str().map(str::len), Some(64));
    let bob_remote = bob_record["remote"].as_str().unwrap();
    assert!(
        bob_remote.starts_with(&format!("{}:", nat_alice.public_ip)),
        "{bob_remote}"
    );
    drop(lab);
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn bitpunch_nodes_punch_through_a_js_libp2p_relay() {
    require_lab!();
    libp2p_path_through_a_foreign_relay(
        Relay::Js {
            max_reservations: 15,
        },
        "js-relay",
    );
}

#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn bitpunch_nodes_punch_through_a_py_libp2p_relay() {
    require_lab!();
    libp2p_path_through_a_foreign_relay(Relay::Py, "py-relay");
}

/// Test 3: js-libp2p peers use our relay: one reserves, the other reaches it
/// through the circuit and pings it.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn js_libp2p_peers_reach_each_other_through_our_relay() {
    require_lab!();
    let home = "home".parse().unwrap();
    let (mut lab, t) = Lab::two_nats(home, home, LinkShape::delay_ms(20)).unwrap();
    let dirs = DataDirs::new("our-relay");
    let relay = start_relay(&mut lab, &t.relay, Relay::Bitpunch, &dirs);
    let (node, peer) = (node_bin(), script("js/peer.mjs"));
    let bob_out = lines(
        lab.spawn(&t.bob, &node, &[&peer, "--relay", &relay, "--no-dcutr"])
            .unwrap(),
    );
    let bob_id = wait_for(&bob_out, "peer id ");
    let circuit = wait_for(&bob_out, "reachable as ");
    assert!(circuit.starts_with(&relay), "{circuit}");
    assert!(
        circuit.ends_with(&format!("/p2p-circuit/p2p/{bob_id}")),
        "{circuit}"
    );

    let (ok, stdout) = run_in(&t.alice, &node, &[&peer, "--dial", &circuit, "--no-dcutr"]);
    let result = json_line(&stdout);
    assert!(ok, "{result}");
    assert_eq!(result["peer"], bob_id.as_str());
    // One ping answered over the circuit: 2 x 20 ms per NAT link, twice.
    let rtt = result["relayed_rtt_ms"].as_f64().expect("a relayed ping");
    assert!(
        rtt >= 80.0,
        "a relayed round trip crosses both NAT links twice: {rtt} ms"
    );
    // The relayed connection, as the dialing peer saw it open.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("connection relayed outbound ")
                && l.contains(&bob_id)
                && l.contains(&relay)),
        "{stdout}"
    );
    drop(lab);
}

/// Test 4: js-libp2p's DCUtR against rust-libp2p's, both behind NATs. The
/// js peer runs with the lab's test-only public ranges (interop/js/
/// lab-public-ranges.mjs). Our node is behind a full-cone NAT: js-libp2p's
/// TCP dials from fresh ports and never learns its own TCP mapping, so the
/// direct connection is the js peer's SYN reaching our shared port, which
/// only an endpoint-independent filter admits (docs/interop.md).
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn js_dcutr_and_our_stock_dcutr_reach_a_direct_connection_both_ways() {
    require_lab!();
    let (js_nat, our_nat) = ("home".parse().unwrap(), "full-cone".parse().unwrap());
    let (mut lab, t) = Lab::two_nats(js_nat, our_nat, LinkShape::delay_ms(20)).unwrap();
    let TwoNats {
        relay: relay_host,
        nat_alice: nat_js,
        nat_bob: nat_us,
        alice: js_host,
        bob: our_host,
        ..
    } = t;
    let dirs = DataDirs::new("dcutr");
    let relay = start_relay(&mut lab, &relay_host, Relay::Bitpunch, &dirs);
    let (node, peer) = (node_bin(), script("js/peer.mjs"));
    let js_nat_ip = format!("/ip4/{}/tcp/", nat_js.public_ip);
    let our_nat_ip = format!("/ip4/{}/tcp/", nat_us.public_ip);

    // js dials us through the relay: our node is the relayed listener.
    let (our_out, circuit) = bitpunch_node(&mut lab, &our_host, &relay, &["--stock-dcutr"], &dirs);
    // Without the lab switch js-libp2p drops every lab address as private:
    // the relayed connection works, DCUtR gives nothing.
    let (_, stdout) = run_in(
        &js_host,
        &node,
        &[&peer, "--dial", &circuit, "--wait-ms", "6000"],
    );
    let result = json_line(&stdout);
    assert_eq!(result["direct"], false, "the switch is needed: {result}");
    assert!(result["relayed_rtt_ms"].as_f64().is_some(), "{result}");
    let (_, stdout) = run_in(
        &js_host,
        &node,
        &[&peer, "--dial", &circuit, "--lab-public-ranges"],
    );
    let result = json_line(&stdout);
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["direct"], true, "{result}");
    let remote = result["remote_addr"].as_str().unwrap();
    assert!(
        remote.starts_with(&format!("{our_nat_ip}18444/p2p/")),
        "js's direct connection ends at our NAT's shared-port mapping: {remote}"
    );
    assert!(result["rtt_ms"].as_f64().is_some(), "{result}");
    let js_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peer id "))
        .expect("js prints its id")
        .to_string();
    let ours = wait_for(&our_out, &format!("direct connection {js_id} "));
    assert!(ours.starts_with(&js_nat_ip), "we see js at its NAT: {ours}");

    // We dial js through the relay: the js peer is the relayed listener.
    let js_out = lines(
        lab.spawn(
            &js_host,
            &node,
            &[&peer, "--relay", &relay, "--lab-public-ranges"],
        )
        .unwrap(),
    );
    let js_id = wait_for(&js_out, "peer id ");
    let js_circuit = wait_for(&js_out, "reachable as ");
    let (ok, record) = connect_from(&our_host, &js_circuit, &["--stock-dcutr"], &dirs);
    assert!(ok, "{record}");
    assert_eq!(record["path"], "stock-dcutr");
    assert_eq!(record["ok"], true, "{record}");
    assert!(
        record["rtt_ms"].as_f64().is_some(),
        "a ping on the direct connection: {record}"
    );
    let remote = record["remote"].as_str().unwrap();
    assert!(
        remote.starts_with(&format!("{}:", nat_js.public_ip)),
        "direct to js's NAT: {record}"
    );
    // js saw the same connection arrive directly from our NAT.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let found = loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break false;
        };
        match js_out.recv_timeout(left) {
            Ok(line) => {
                // js upgrades unilaterally when we advertise a public
                // address (its DCUtR's first step), so it may be outbound.
                if line.starts_with("connection direct ") && line.contains(&our_nat_ip) {
                    break true;
                }
                seen.push(line);
            }
            Err(_) => break false,
        }
    };
    assert!(
        found,
        "js never saw a direct connection from our NAT: {seen:?}"
    );
    assert!(
        js_circuit.ends_with(&format!("/p2p/{js_id}")),
        "{js_circuit}"
    );
    drop(lab);
}

/// Test 5: a relay that is full refuses our reservation; our node says so
/// clearly and retries with growing back-off instead of spinning.
#[cfg_attr(
    bitpunch_no_lab,
    ignore = "needs root and the NAT lab tools (scripts/setup); CI runs it"
)]
#[test]
fn a_full_relay_refuses_and_we_back_off() {
    require_lab!();
    let home = "home".parse().unwrap();
    let (mut lab, t) = Lab::two_nats(home, home, LinkShape::delay_ms(20)).unwrap();
    let dirs = DataDirs::new("full-relay");
    let relay = start_relay(
        &mut lab,
        &t.relay,
        Relay::Js {
            max_reservations: 1,
        },
        &dirs,
    );
    // Alice takes the one slot.
    let _alice = bitpunch_node(&mut lab, &t.alice, &relay, &[], &dirs);

    // The refusal is a log line: Bob's log is mixed into what we read.
    let out = spawn_node(&mut lab, &t.bob, &relay, &[], &dirs, true);
    let watch = Duration::from_secs(9);
    let started = Instant::now();
    let mut refusals = Vec::new();
    while let Some(left) = watch.checked_sub(started.elapsed()) {
        let Ok(line) = out.recv_timeout(left) else {
            break;
        };
        assert!(
            !line.starts_with("reachable as "),
            "a full relay gave us a slot: {line}"
        );
        if line.contains("no reservation") {
            refusals.push(line);
        }
    }
    assert!(!refusals.is_empty(), "no refusal logged within {watch:?}");
    for line in &refusals {
        assert!(
            line.contains("Reservation refused"),
            "the reason is named: {line}"
        );
        assert!(line.contains(&relay), "the relay is named: {line}");
    }
    // Tries at 0, 1, 3 and 7 s: at most 4 fit in 9 s; a spinning client
    // would have made hundreds.
    let waits: Vec<&str> = refusals
        .iter()
        .filter_map(|l| l.split("retry_in=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!((2..=4).contains(&refusals.len()), "{refusals:#?}");
    assert_eq!(
        waits,
        ["1s", "2s", "4s", "8s"][..waits.len()],
        "{refusals:#?}"
    );
    drop(lab);
}

/// The js and py relays under `bitpunch lab scale`'s load (loopback, no lab
/// needed): every reservation is held and circuits go through. The figures
/// themselves are in docs/interop.md, not asserted.
#[test]
fn js_and_py_relays_hold_reservations_and_relay_circuits_under_load() {
    for command in [
        format!("{} {}", node_bin(), script("js/relay.mjs")),
        format!("{} {}", python_bin(), script("py/relay.py")),
    ] {
        let out = Command::new(BIN)
            .args(["lab", "scale", "--relay-command", &command])
            .args(["--clients", "20", "--seconds", "1", "--json", "-q"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(record["reservations"], 20, "{command}");
        assert!(
            record["circuits"].as_u64().unwrap() > 0,
            "{command}: {record}"
        );
    }
}
