//! bitpunch as a sidecar for an unmodified Bitcoin node, on loopback: a
//! stand-in Bitcoin node (a separate `bitpunch node`) behind one sidecar is
//! reached by another stand-in through the other sidecar's SOCKS5 proxy,
//! exactly as Bitcoin Core with `-proxy` would ask. The NAT-lab version is
//! in tests/sidecar_lab.rs.

mod common;
use common::{bitpunch, line_starting, Running};

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fresh_dir(name: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("bitpunch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Dir(dir)
}

/// A `bitpunch` child on loopback with `args`, and its stdout.
fn spawn(
    args: &[&str],
    data: &Path,
    log: &Path,
) -> (Running, BufReader<std::process::ChildStdout>) {
    let mut child = Running(
        bitpunch()
            .args(args)
            .args(["--network", "regtest", "--data-dir"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    let out = BufReader::new(child.0.stdout.take().unwrap());
    (child, out)
}

/// A coordinator on loopback with its data under `data`: the child and
/// its address (`ID@IP:PORT`).
fn coordinator(data: &Path) -> (Running, String) {
    let (child, mut out) = spawn(
        &["coordinator", "--port", "0", "--bind", "127.0.0.1", "-q"],
        &data.join("coordinator"),
        &data.join("coordinator.log"),
    );
    let address = format!(
        "{}@{}",
        line_starting(&mut out, "coordinator id "),
        line_starting(&mut out, "coordinator listening ")
    );
    (child, address)
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The next outcome record a `--json` node prints.
fn record_line(out: &mut BufReader<std::process::ChildStdout>) -> serde_json::Value {
    let line = line_starting(out, "{");
    serde_json::from_str(&format!("{{{line}")).unwrap()
}

fn connect_through(proxy: &str, address: &str) -> serde_json::Value {
    let out = bitpunch()
        .args(["connect", "--proxy", proxy, address])
        .args(["--network", "regtest", "--json", "-q", "--timeout", "5"])
        .output()
        .unwrap();
    json(&out)
}

/// Polls `f` for up to 10 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(t) = f() {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within 10 s");
}

#[test]
fn a_stand_in_reaches_another_through_both_sidecars_and_their_bip324_is_end_to_end() {
    let data = fresh_dir("sidecar");
    let dir = |n: &str| data.0.join(n);
    let (_coordinator, coord) = coordinator(&data.0);
    // A's Bitcoin node, listening on loopback only, as Core would behind
    // its sidecar.
    let (_standin_a, mut out) = spawn(
        &["node", "--port", "0", "--bind", "127.0.0.1"],
        &dir("standin-a"),
        &dir("standin-a.log"),
    );
    let standin_a = line_starting(&mut out, "listening ");
    let (_sidecar_a, mut out) = spawn(
        &[
            "node",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--allow-private-addrs",
            "--coordinator",
            &coord,
            "--bitcoind",
            &standin_a,
            "--json",
        ],
        &dir("sidecar-a"),
        &dir("sidecar-a.log"),
    );
    let sidecar_a = line_starting(&mut out, "listening ");
    let node_a = line_starting(&mut out, "reachable as ");
    let mut out_a = out;
    let node_a_id = node_a.split('@').next().unwrap().to_string();
    let (_sidecar_b, mut out) = spawn(
        &[
            "node",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--allow-private-addrs",
            "--coordinator",
            &coord,
            "--socks5",
            "127.0.0.1:0",
            "--json",
        ],
        &dir("sidecar-b"),
        &dir("sidecar-b.log"),
    );
    let sidecar_b = line_starting(&mut out, "listening ");
    let socks = line_starting(&mut out, "socks5 listening ");
    line_starting(&mut out, "reachable as ");
    let mut out_b = out;

    // B's stand-in asks for A by name, as Core does with `addnode
    // NODE_ID.punch:18444 onetry` and -proxy.
    let record = connect_through(&socks, &format!("{node_a_id}.punch:18444"));
    assert_eq!(record["ok"], true, "{record}");
    assert_eq!(record["transport"], "v2", "{record}");
    let session_id = record["session_id"].as_str().unwrap().to_string();
    assert_eq!(session_id.len(), 64);

    // A's stand-in had the same BIP324 session: the sidecars spliced it,
    // they did not terminate it.
    eventually("A's stand-in logs the session", || {
        let log = std::fs::read_to_string(dir("standin-a.log")).unwrap();
        log.lines()
            .any(|l| l.contains("session established") && l.contains(&session_id))
            .then_some(())
    });
    // Each sidecar's record: the punched connection ran between the two
    // shared ports and was spliced to the Bitcoin node, with no session id
    // of the sidecar's own.
    let on_a = record_line(&mut out_a);
    assert_eq!(on_a["ok"], true, "{on_a}");
    assert_eq!(on_a["spliced_to"], standin_a.as_str());
    assert_eq!(on_a["remote"], sidecar_b.as_str());
    assert_eq!(on_a["role"], "responder");
    assert_eq!(on_a["session_id"], serde_json::Value::Null);
    let on_b = record_line(&mut out_b);
    assert_eq!(on_b["ok"], true, "{on_b}");
    assert_eq!(on_b["remote"], sidecar_a.as_str());
    assert_eq!(on_b["local"], sidecar_b.as_str());
    assert_eq!(on_b["role"], "initiator");
    assert_eq!(on_b["transport"], "v2");

    // Pass-through: an ordinary reachable node, by address and by name.
    let direct = connect_through(&socks, &standin_a);
    assert_eq!(direct["ok"], true, "{direct}");
    let port = standin_a.rsplit(':').next().unwrap();
    let by_name = connect_through(&socks, &format!("localhost:{port}"));
    assert_eq!(by_name["ok"], true, "{by_name}");

    // An ordinary inbound peer of sidecar A's shared port reaches A's
    // Bitcoin node (the shared port is its public port).
    let out = bitpunch()
        .args([
            "connect",
            &sidecar_a,
            "--network",
            "regtest",
            "--json",
            "-q",
        ])
        .output()
        .unwrap();
    let forwarded = json(&out);
    assert_eq!(forwarded["ok"], true, "{forwarded}");
    let forwarded_id = forwarded["session_id"].as_str().unwrap().to_string();
    eventually("A's stand-in logs the forwarded peer", || {
        let log = std::fs::read_to_string(dir("standin-a.log")).unwrap();
        log.contains(&forwarded_id).then_some(())
    });

    // Failures reach the client as SOCKS replies and the proxy keeps
    // serving: a node nobody registered ...
    let unknown = connect_through(&socks, "00112233445566778899aabb.punch:18444");
    assert_eq!(unknown["ok"], false);
    let error = unknown["error"].as_str().unwrap().to_lowercase();
    assert!(error.contains("host unreachable"), "{error}");
    // ... a name that is not one ...
    let bad = connect_through(&socks, "not-an-id.punch:18444");
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("host unreachable"),
        "{bad}"
    );
    // ... and the proxy still punches.
    let again = connect_through(&socks, &format!("{node_a_id}.punch:18444"));
    assert_eq!(again["ok"], true, "{again}");
    assert_ne!(again["session_id"], record["session_id"]);
    let log = std::fs::read_to_string(dir("sidecar-b.log")).unwrap();
    assert!(log.contains("SOCKS5 proxy: punch failed"), "{log}");
}

/// The punch budget and a refused order come back as distinct SOCKS
/// errors ("connection not allowed", "network unreachable").
#[test]
fn budget_and_refusal_reach_the_socks_client_as_their_own_errors() {
    let data = fresh_dir("sidecar-errors");
    let dir = |n: &str| data.0.join(n);
    let (_coordinator, coord) = coordinator(&data.0);
    // A sidecar that follows no orders: nobody dials back.
    let (_refuser, mut out) = spawn(
        &[
            "node",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--allow-private-addrs",
            "--coordinator",
            &coord,
            "--bitcoind",
            "127.0.0.1:9",
            "--orders-per-minute",
            "0",
        ],
        &dir("refuser"),
        &dir("refuser.log"),
    );
    let refuser = line_starting(&mut out, "reachable as ");
    let refuser_id = refuser.split('@').next().unwrap();
    // A sidecar with no SYNs to spend.
    let (_broke, mut out) = spawn(
        &[
            "node",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--allow-private-addrs",
            "--coordinator",
            &coord,
            "--socks5",
            "127.0.0.1:0",
            "--punch-syns-per-minute",
            "0",
        ],
        &dir("broke"),
        &dir("broke.log"),
    );
    let broke_socks = line_starting(&mut out, "socks5 listening ");
    line_starting(&mut out, "reachable as ");
    let (_asker, mut out) = spawn(
        &[
            "node",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--allow-private-addrs",
            "--coordinator",
            &coord,
            "--socks5",
            "127.0.0.1:0",
            "--punch-syns-per-minute",
            "0",
        ],
        &dir("asker"),
        &dir("asker.log"),
    );
    let socks = line_starting(&mut out, "socks5 listening ");
    let asker = line_starting(&mut out, "reachable as ");
    let asker_id = asker.split('@').next().unwrap();

    let refused = connect_through(&socks, &format!("{refuser_id}.punch:18444"));
    let error = refused["error"].as_str().unwrap().to_lowercase();
    assert!(error.contains("network unreachable"), "{refused}");

    // Neither side may send a SYN (on loopback one side's SYN always
    // gets through): no connection, and the budget says why.
    let budget = connect_through(&broke_socks, &format!("{asker_id}.punch:18444"));
    let error = budget["error"].as_str().unwrap().to_lowercase();
    assert!(
        error.contains("not allowed"),
        "{budget}\n{}",
        std::fs::read_to_string(dir("broke.log")).unwrap()
    );
}

/// What the proxy says to requests Bitcoin Core never makes: methods
/// without "no authentication", BIND.
#[test]
fn the_proxy_answers_unsupported_requests_with_socks_errors() {
    let data = fresh_dir("sidecar-socks");
    let (_node, mut out) = spawn(
        &[
            "node",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--socks5",
            "127.0.0.1:0",
            "-q",
        ],
        &data.0.join("node"),
        &data.0.join("node.log"),
    );
    let socks = line_starting(&mut out, "socks5 listening ");
    let exchange = |send: &[u8], expect: usize| {
        let mut s = TcpStream::connect(&socks).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(send).unwrap();
        let mut got = vec![0u8; expect];
        s.read_exact(&mut got).unwrap();
        got
    };
    // Username/password only: no acceptable method.
    assert_eq!(exchange(&[5, 1, 2], 2), [5, 0xff]);
    // Core offers both; we pick "no authentication", then BIND is refused.
    let reply = exchange(&[5, 2, 0, 2, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80], 4);
    assert_eq!(
        reply,
        [5, 0, 5, 7],
        "method 0, then 'command not supported'"
    );
}
