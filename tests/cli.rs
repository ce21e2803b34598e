//! The `bitpunch` binary as a user runs it.

mod common;
use common::{bitpunch, line_starting, Running};

use std::io::{BufRead, BufReader};
use std::process::Stdio;

#[test]
fn malformed_addresses_get_one_clear_line_and_a_nonzero_exit() {
    let cases = [
        ("", "empty"),
        ("127.0.0.1:", "port is missing"),
        ("127.0.0.1:99999", "out of range"),
        ("127.0.0.1:http", "not a number"),
        ("[::1", "closing"),
        ("[::1]x", "after ']'"),
        ("[127.0.0.1]:8333", "not an IPv6"),
        ("300.1.2.3", "not a valid IPv4"),
        ("a b", "contains"),
        ("1:2:3", "several ':'"),
        ("/ip4/203.0.113.1/tcp/4001/p2p-circuit", "circuit address"),
        ("peer@203.0.113.1:8333", "NODE_ID@COORDINATOR"),
    ];
    for (address, needle) in cases {
        let out = bitpunch()
            .args(["connect", address, "--network", "regtest", "-q"])
            .output()
            .expect("run bitpunch");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{address:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{address:?}: stdout not empty");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{address:?}: one line expected, got {stderr}"
        );
        assert!(lines[0].contains(needle), "{address:?}: {stderr}");
        assert!(lines[0].contains("accepted forms"), "{address:?}: {stderr}");
    }
}

#[test]
fn node_and_connect_print_a_v2_outcome_record() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-v2-{}", std::process::id()));
    let mut node = Running(
        bitpunch()
            .args([
                "node",
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--network",
                "regtest",
                "-q",
            ])
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start node"),
    );
    let mut first = String::new();
    BufReader::new(node.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .trim()
        .to_string();

    let out = bitpunch()
        .args([
            "connect",
            &addr,
            "--network",
            "regtest",
            "--json",
            "--timeout",
            "10",
            "-q",
        ])
        .output()
        .expect("run connect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON record");
    assert_eq!(record["path"], "direct");
    assert_eq!(record["ok"], true);
    assert_eq!(record["transport"], "v2");
    assert_eq!(record["role"], "initiator");
    assert_eq!(record["remote"], addr.as_str());
    assert_eq!(record["session_id"].as_str().map(str::len), Some(64));
    assert!(record["peer_user_agent"]
        .as_str()
        .unwrap()
        .starts_with("/bitpunch:"));
    for phase in ["tcp", "handshake", "verack", "pong"] {
        assert!(
            record["t_ms"][phase].as_f64().is_some(),
            "t_ms.{phase} missing"
        );
    }
    assert!(record["bytes"]["direct"].as_u64().unwrap() > 0);

    // The human summary of the same exchange, in v1.
    let out = bitpunch()
        .args([
            "connect",
            &addr,
            "--network",
            "regtest",
            "--transport",
            "v1",
            "-q",
        ])
        .output()
        .expect("run connect");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("transport   v1"), "{stdout}");
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn connect_to_a_closed_port_fails_with_a_record() {
    // Bind and release a port so that nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = bitpunch()
        .args([
            "connect",
            &format!("127.0.0.1:{port}"),
            "--network",
            "regtest",
            "--json",
        ])
        .args(["--timeout", "5", "-q"])
        .output()
        .expect("run connect");
    assert_eq!(out.status.code(), Some(1));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON record");
    assert_eq!(record["ok"], false);
    assert_eq!(record["failed_at"], "connect");
    assert!(
        record["error"].as_str().unwrap().contains("refused"),
        "{record}"
    );
}

#[test]
fn connect_node_id_at_coordinator_punches_and_prints_a_native_record() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut coordinator = Running(
        bitpunch()
            .args([
                "coordinator",
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--network",
                "regtest",
                "-q",
            ])
            .arg("--data-dir")
            .arg(data.join("coordinator"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(coordinator.0.stdout.take().unwrap());
    let coord_id = line_starting(&mut out, "coordinator id ");
    let coord = line_starting(&mut out, "coordinator listening ");
    let coord_address = format!("{coord_id}@{coord}");

    let bob_dir = data.join("bob");
    let mut bob = Running(
        bitpunch()
            .args([
                "node",
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--network",
                "regtest",
                "-q",
            ])
            .args([
                "--coordinator",
                &coord_address,
                "--data-dir",
                bob_dir.to_str().unwrap(),
                "--json",
                // All on 127.0.0.1, which is not punched otherwise.
                "--allow-private-addrs",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut bob_out = BufReader::new(bob.0.stdout.take().unwrap());
    let bob_listens = line_starting(&mut bob_out, "listening ");
    let address = line_starting(&mut bob_out, "reachable as ");
    assert!(address.ends_with(&format!("@{coord_address}")), "{address}");
    // The key stays: a second start would have the same id.
    assert!(bob_dir.join("node.key").exists());

    let out = bitpunch()
        .args(["connect", &address, "--network", "regtest", "--json", "-q"])
        .args([
            "--allow-private-addrs",
            "--data-dir",
            data.join("alice").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["path"], "native");
    assert_eq!(record["ok"], true);
    assert_eq!(record["transport"], "v2");
    assert_eq!(record["via"], coord_address.as_str());
    assert_eq!(
        record["remote"],
        bob_listens.as_str(),
        "direct to Bob's port"
    );
    assert!(record["bytes"]["coordination"].as_u64().unwrap() > 0);
    // Bob's record of the same punch (--json): the same BIP324 session.
    let bob_line = format!("{{{}", line_starting(&mut bob_out, "{"));
    let bob_record: serde_json::Value = serde_json::from_str(&bob_line).unwrap();
    assert_eq!(bob_record["path"], "native");
    assert_eq!(bob_record["role"], "responder");
    assert_eq!(bob_record["session_id"], record["session_id"]);
    drop(bob);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_node_with_no_orders_left_refuses_the_punch_and_says_why() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-refuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut coordinator = Running(
        bitpunch()
            .args(["coordinator", "--port", "0", "--bind", "127.0.0.1"])
            .args(["--network", "regtest", "-q", "--data-dir"])
            .arg(data.join("coordinator"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(coordinator.0.stdout.take().unwrap());
    let coord_id = line_starting(&mut out, "coordinator id ");
    let coord = line_starting(&mut out, "coordinator listening ");
    let coord_address = format!("{coord_id}@{coord}");
    // Bob follows no orders at all; his log (stderr) says why.
    let log = data.join("bob.log");
    std::fs::create_dir_all(&data).unwrap();
    let mut bob = Running(
        bitpunch()
            .args(["node", "--port", "0", "--bind", "127.0.0.1"])
            .args(["--network", "regtest", "--orders-per-minute", "0"])
            .args(["--metrics", "127.0.0.1:0"])
            .args([
                "--allow-private-addrs",
                "--coordinator",
                &coord_address,
                "--data-dir",
            ])
            .arg(data.join("bob"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut bob_out = BufReader::new(bob.0.stdout.take().unwrap());
    let bob_metrics = line_starting(&mut bob_out, "metrics listening ");
    let address = line_starting(&mut bob_out, "reachable as ");
    let out = bitpunch()
        .args(["connect", &address, "--network", "regtest", "--json", "-q"])
        .args(["--allow-private-addrs", "--data-dir"])
        .arg(data.join("alice"))
        .output()
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{record}");
    assert_eq!(record["ok"], false, "{record}");
    // Bob tells the coordinator before he logs: Alice may be done first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("refused a punch order")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Counted by reason in Bob's metrics.
    let text = scrape(&bob_metrics);
    assert_eq!(
        sample_sum(
            &text,
            "bitpunch_orders_refused_total",
            &["reason=\"global_limit\""]
        ),
        1.0,
        "{text}"
    );
    drop(bob);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("refused a punch order") && log.contains("rate limit: 0 punches"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn demo_json_shows_both_paths_and_the_yardstick_succeeding() {
    let out = bitpunch()
        .args(["demo", "--json", "-q"])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one record per line"))
        .collect();
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["libp2p", "native", "stock-dcutr"], "{stdout}");
    for r in &records {
        assert_eq!(r["ok"], true, "{r}");
    }
    assert!(out.status.success());
}

#[test]
fn lab_scale_measures_a_coordinator_under_registered_clients() {
    let out = bitpunch()
        .args([
            "lab",
            "scale",
            "--clients",
            "40",
            "--seconds",
            "1",
            "--json",
            "-q",
        ])
        .output()
        .expect("run lab scale");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON record");
    assert_eq!(record["clients"], 40);
    // Every registration held a session, and requests were answered.
    assert!(record["rss_loaded_kib"].as_u64().unwrap() >= record["rss_idle_kib"].as_u64().unwrap());
    assert!(record["coordinations"].as_u64().unwrap() > 0, "{record}");
}

#[test]
fn lab_scale_relay_holds_every_reservation_and_relays_circuits() {
    let out = bitpunch()
        .args([
            "lab",
            "scale",
            "--relay",
            "--clients",
            "20",
            "--seconds",
            "1",
            "--json",
            "-q",
        ])
        .output()
        .expect("run lab scale --relay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON record");
    assert_eq!(record["reservations"], 20);
    // Ten dialers, one circuit at a time each, through our relay.
    assert!(record["circuits"].as_u64().unwrap() > 0, "{record}");
    assert_eq!(record["circuit_failures"], 0, "{record}");
}

#[test]
fn a_second_process_on_the_same_shared_port_is_refused_with_a_clear_error() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-port-{}", std::process::id()));
    let mut first = Running(
        bitpunch()
            .args([
                "node",
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--network",
                "regtest",
                "-q",
            ])
            .arg("--data-dir")
            .arg(data.join("first"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start node"),
    );
    let mut line = String::new();
    BufReader::new(first.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().rsplit(':').next().unwrap().to_string();
    for role in ["node", "coordinator"] {
        let out = bitpunch()
            .args([
                role,
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--network",
                "regtest",
            ])
            .arg("--data-dir")
            .arg(data.join(role))
            .output()
            .expect("run the second process");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{role} bound a port another bitpunch listens on"
        );
        assert!(
            stderr.contains("already in use by another listener") && stderr.contains(&port),
            "{role}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&data);
}

/// One identity, one process: a second node on the same data directory
/// stops before it binds anything, naming the directory and the holder.
#[test]
fn a_second_node_on_the_same_data_dir_is_refused_with_a_clear_error() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut coordinator = Running(
        bitpunch()
            .args(["coordinator", "--port", "0", "--bind", "127.0.0.1"])
            .args(["--network", "regtest", "-q", "--data-dir"])
            .arg(data.join("coordinator"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(coordinator.0.stdout.take().unwrap());
    let coord_id = line_starting(&mut out, "coordinator id ");
    let coord = line_starting(&mut out, "coordinator listening ");
    let coord_address = format!("{coord_id}@{coord}");
    let node = |extra: &[&str]| {
        let mut command = bitpunch();
        command
            .args(["node", "--port", "0", "--bind", "127.0.0.1"])
            .args(["--network", "regtest", "-q", "--allow-private-addrs"])
            .args(["--coordinator", &coord_address, "--data-dir"])
            .arg(data.join("bob"))
            .args(extra);
        command
    };
    let mut first = Running(node(&[]).stdout(Stdio::piped()).spawn().unwrap());
    let mut first_out = BufReader::new(first.0.stdout.take().unwrap());
    line_starting(&mut first_out, "reachable as ");
    let second = node(&[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is in use by bitpunch process")
            && stderr.contains(&first.0.id().to_string())
            && stderr.contains(data.join("bob").to_str().unwrap()),
        "{stderr}"
    );
    drop(first);
    drop(coordinator);
    let _ = std::fs::remove_dir_all(&data);
}

/// A coordinator on loopback with its own data directory under `data`
/// and its metrics on: the child, the address nodes give it (`ID@IP:PORT`),
/// and where its metrics are served.
fn coordinator_with_metrics(data: &std::path::Path) -> (Running, String, String) {
    let mut coordinator = Running(
        bitpunch()
            .args(["coordinator", "--port", "0", "--bind", "127.0.0.1"])
            .args(["--network", "regtest", "-q", "--metrics", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.join("coordinator"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(coordinator.0.stdout.take().unwrap());
    let id = line_starting(&mut out, "coordinator id ");
    let addr = line_starting(&mut out, "coordinator listening ");
    let metrics = line_starting(&mut out, "metrics listening ");
    (coordinator, format!("{id}@{addr}"), metrics)
}

/// The same without caring for its metrics.
fn coordinator_in(data: &std::path::Path) -> (Running, String) {
    let (coordinator, address, _) = coordinator_with_metrics(data);
    (coordinator, address)
}

/// A node registered at `coordinator` with data directory `dir`, logging
/// to `log`: the child and its address.
fn registered_node(
    coordinator: &str,
    dir: &std::path::Path,
    log: &std::path::Path,
) -> (Running, String) {
    let mut node = Running(
        bitpunch()
            .args(["node", "--port", "0", "--bind", "127.0.0.1"])
            .args(["--network", "regtest", "--allow-private-addrs"])
            .args(["--coordinator", coordinator, "--data-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(node.0.stdout.take().unwrap());
    let address = line_starting(&mut out, "reachable as ");
    (node, address)
}

fn connect(address: &str, extra: &[&std::ffi::OsStr]) -> std::process::Output {
    bitpunch()
        .args(["connect", address, "--network", "regtest", "--json", "-q"])
        .arg("--allow-private-addrs")
        .args(extra)
        .output()
        .unwrap()
}

/// The same machine, the same user: `connect` while a node runs does not
/// take the node's identity (it uses a fresh one, or is refused the locked
/// directory), so the node stays reachable for everyone else.
#[test]
fn connect_beside_a_running_node_leaves_it_reachable() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-beside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let (_coordinator, coord) = coordinator_in(&data);
    let (_bob, bob) = registered_node(&coord, &data.join("bob"), &data.join("bob.log"));
    let (_carol, carol) = registered_node(&coord, &data.join("carol"), &data.join("carol.log"));

    // From Bob's machine, with no --data-dir: a fresh identity.
    let out = connect(&carol, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // With Bob's directory: through Bob's node, which keeps its key.
    let out = connect(
        &carol,
        &["--data-dir".as_ref(), data.join("bob").as_os_str()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A third party still reaches Bob.
    let out = connect(&bob, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&data);
}

/// The same key in two data directories (a copied key): the later
/// registration displaces the earlier one, which is told why, says so, and
/// does not register again; the later node stays reachable.
#[test]
fn a_node_displaced_by_its_own_key_says_why_and_does_not_fight_back() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-displaced-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let (_coordinator, coord) = coordinator_in(&data);
    let (_first, address) = registered_node(&coord, &data.join("first"), &data.join("first.log"));
    std::fs::create_dir_all(data.join("second")).unwrap();
    std::fs::copy(data.join("first/node.key"), data.join("second/node.key")).unwrap();
    let (_second, again) = registered_node(&coord, &data.join("second"), &data.join("second.log"));
    assert_eq!(address, again, "the same key, the same address");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let first_log = loop {
        let log = std::fs::read_to_string(data.join("first.log")).unwrap_or_default();
        if log.contains("not registering again") || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(first_log.contains("displaced"), "{first_log}");
    assert!(first_log.contains("not registering again"), "{first_log}");
    // Some seconds later the second still holds the registration: reachable.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = connect(&address, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let second_log = std::fs::read_to_string(data.join("second.log")).unwrap();
    assert!(!second_log.contains("displaced"), "{second_log}");
    let _ = std::fs::remove_dir_all(&data);
}

/// One scrape of a Prometheus endpoint.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bitpunch\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The sum of every sample of `metric` whose labels contain all of `with`.
fn sample_sum(text: &str, metric: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter(|l| matches!(l.as_bytes().get(metric.len()), Some(b'{') | Some(b' ')))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// After three punches, the node's and the coordinator's metrics say what
/// the node's own records (--json) say.
#[test]
fn metrics_count_what_the_records_say() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (coordinator, coord_address, coord_metrics) = coordinator_with_metrics(&data);

    let mut bob = Running(
        bitpunch()
            .args(["node", "--port", "0", "--bind", "127.0.0.1"])
            .args([
                "--network",
                "regtest",
                "-q",
                "--json",
                "--allow-private-addrs",
            ])
            .args(["--metrics", "127.0.0.1:0", "--coordinator", &coord_address])
            .arg("--data-dir")
            .arg(data.join("bob"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut bob_out = BufReader::new(bob.0.stdout.take().unwrap());
    let bob_metrics = line_starting(&mut bob_out, "metrics listening ");
    let address = line_starting(&mut bob_out, "reachable as ");
    assert_eq!(
        sample_sum(&scrape(&bob_metrics), "bitpunch_registrations_held", &[]),
        1.0
    );

    for _ in 0..3 {
        let out = connect(&address, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Bob's three records, as he printed them.
    let mut ok = 0;
    for _ in 0..3 {
        let line = format!("{{{}", line_starting(&mut bob_out, "{"));
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(record["path"], "native");
        if record["ok"] == true {
            ok += 1;
        }
    }
    let text = scrape(&bob_metrics);
    assert_eq!(
        sample_sum(&text, "bitpunch_punches_total", &["path=\"native\""]),
        3.0,
        "{text}"
    );
    assert_eq!(
        sample_sum(
            &text,
            "bitpunch_punches_total",
            &["path=\"native\"", "result=\"ok\""]
        ),
        f64::from(ok),
        "{text}"
    );
    assert_eq!(
        sample_sum(&text, "bitpunch_time_to_verack_seconds_count", &["native"]),
        f64::from(ok),
        "{text}"
    );
    // Every punch our own SYN won cost at least that SYN (one the peer's
    // SYN won may have cost none).
    assert!(
        sample_sum(&text, "bitpunch_punch_syns_total", &["sent"])
            >= sample_sum(&text, "bitpunch_punches_total", &["won_by=\"connect\""]),
        "{text}"
    );
    let text = scrape(&coord_metrics);
    assert_eq!(
        sample_sum(&text, "bitpunch_coordinator_coordinations_total", &[]),
        3.0,
        "{text}"
    );
    assert_eq!(
        sample_sum(&text, "bitpunch_coordinator_registered", &[]),
        1.0,
        "{text}"
    );
    drop(bob);
    drop(coordinator);
    let _ = std::fs::remove_dir_all(&data);
}

/// SIGTERM (what systemd sends) stops a node cleanly, exit 0, and its
/// registration goes with it at once: the coordinator counts none.
#[test]
fn sigterm_stops_a_node_and_leaves_no_registration_behind() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-term-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (coordinator, coord_address, coord_metrics) = coordinator_with_metrics(&data);
    let (mut bob, _) = registered_node(&coord_address, &data.join("bob"), &data.join("bob.log"));
    let registered = || {
        sample_sum(
            &scrape(&coord_metrics),
            "bitpunch_coordinator_registered",
            &[],
        )
    };
    assert_eq!(registered(), 1.0);
    // SAFETY: a signal to our own child, whose pid we hold.
    assert_eq!(unsafe { libc::kill(bob.0.id() as i32, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = bob.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(data.join("bob.log")).unwrap();
    assert!(
        log.contains("signal=\"SIGTERM\"") || log.contains("signal=SIGTERM"),
        "{log}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while registered() != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the registration outlived the node"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(coordinator);
    let _ = std::fs::remove_dir_all(&data);
}

/// `<data-dir>/bitpunch.toml` holds the node's flags; a flag on the command
/// line wins over the file; a bad setting is named with the file.
#[test]
fn the_settings_file_is_honoured_and_flags_win() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(data.join("bob")).unwrap();
    let (_coordinator, coord) = coordinator_in(&data);
    // mainnet in the file, regtest on the command line: only a regtest
    // node can register with this regtest coordinator.
    std::fs::write(
        data.join("bob/bitpunch.toml"),
        format!(
            "network = \"mainnet\"\nbind = \"127.0.0.1\"\nport = 0\ncoordinator = [\"{coord}\"]\nallow_private_addrs = true\n"
        ),
    )
    .unwrap();
    let mut bob = Running(
        bitpunch()
            .args(["node", "--network", "regtest", "-q", "--data-dir"])
            .arg(data.join("bob"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(bob.0.stdout.take().unwrap());
    let listening = line_starting(&mut out, "listening ");
    assert!(listening.starts_with("127.0.0.1:"), "{listening}");
    let address = line_starting(&mut out, "reachable as ");
    assert!(address.ends_with(&coord), "{address}");
    drop(bob);

    std::fs::write(data.join("bob/bitpunch.toml"), "prot = 8333\n").unwrap();
    let out = bitpunch()
        .args(["node", "--network", "regtest", "--data-dir"])
        .arg(data.join("bob"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bitpunch.toml") && stderr.contains("unknown setting `prot`"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&data);
}

/// `connect` with a running node's data directory goes through the node:
/// from its shared port, one request on its open coordinator session, and
/// the session stays with the node (`peers` lists it).
#[test]
fn connect_through_a_running_node_is_one_request_and_the_node_keeps_the_session() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-through-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let (_coordinator, coord) = coordinator_in(&data);
    let (_bob, bob) = registered_node(&coord, &data.join("bob"), &data.join("bob.log"));
    let mut alice = Running(
        bitpunch()
            .args(["node", "--port", "0", "--bind", "127.0.0.1"])
            .args(["--network", "regtest", "-q", "--allow-private-addrs"])
            .args(["--coordinator", &coord, "--data-dir"])
            .arg(data.join("alice"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut alice_out = BufReader::new(alice.0.stdout.take().unwrap());
    let alice_listens = line_starting(&mut alice_out, "listening ");
    line_starting(&mut alice_out, "reachable as ");
    // Both know their NAT (here: none), and tell the coordinator, which
    // tells each side of an order the other's, for the records.
    for node in ["alice", "bob"] {
        let nat = bitpunch()
            .args(["nat", "--data-dir"])
            .arg(data.join(node))
            .output()
            .unwrap();
        assert!(nat.status.success(), "{node}: {nat:?}");
    }

    let through = connect(
        &bob,
        &["--data-dir".as_ref(), data.join("alice").as_os_str()],
    );
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    let through: serde_json::Value = serde_json::from_slice(&through.stdout).unwrap();
    assert_eq!(through["path"], "native");
    for side in ["nat_ours", "nat_peer"] {
        assert_eq!(through[side]["mapping"], "none", "{side}: {through}");
        assert_eq!(
            through[side]["allocation"]["kind"], "preserving",
            "{through}"
        );
    }
    assert_eq!(
        through["local"],
        alice_listens.as_str(),
        "from the node's port"
    );
    // The same punch standalone opens, sets up and registers a session of
    // its own first.
    let alone = connect(&bob, &[]);
    assert!(
        alone.status.success(),
        "{}",
        String::from_utf8_lossy(&alone.stdout)
    );
    let alone: serde_json::Value = serde_json::from_slice(&alone.stdout).unwrap();
    let (through_bytes, alone_bytes) = (
        through["bytes"]["coordination"].as_u64().unwrap(),
        alone["bytes"]["coordination"].as_u64().unwrap(),
    );
    eprintln!(
        "coordination through the node: {through_bytes} bytes, {} ms; standalone: {alone_bytes} bytes, {} ms",
        through["t_ms"]["coordination"], alone["t_ms"]["coordination"]
    );
    assert!(
        through_bytes > 0 && through_bytes * 3 < alone_bytes,
        "{through_bytes} vs {alone_bytes}"
    );

    let peers = bitpunch()
        .args(["peers", "--json", "--data-dir"])
        .arg(data.join("alice"))
        .output()
        .unwrap();
    let peers: serde_json::Value = serde_json::from_slice(&peers.stdout).unwrap();
    let native: Vec<&serde_json::Value> = peers
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["path"] == "native")
        .collect();
    assert_eq!(native.len(), 1, "{peers}");
    assert_eq!(native[0]["session_id"], through["session_id"]);
    assert_eq!(native[0]["role"], "initiator");
    drop(alice);
    let _ = std::fs::remove_dir_all(&data);
}

/// A circuit address through a running node: the node's own swarm runs the
/// exchange and the punch from its shared port, and keeps the session.
#[test]
fn connect_through_a_running_node_punches_circuits_with_its_swarm() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-circuit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut relay = Running(
        bitpunch()
            .args(["relay", "--listen", "/ip4/127.0.0.1/tcp/0", "-q"])
            .args(["--metrics", "127.0.0.1:0", "--data-dir"])
            .arg(data.join("relay"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut relay_out = BufReader::new(relay.0.stdout.take().unwrap());
    let relay_addr = line_starting(&mut relay_out, "relay listening ");
    let relay_metrics = line_starting(&mut relay_out, "metrics listening ");
    let node = |name: &str| {
        let mut node = Running(
            bitpunch()
                .args(["node", "--port", "0", "--bind", "127.0.0.1"])
                .args(["--network", "regtest", "-q", "--allow-private-addrs"])
                .args(["--relay", &relay_addr, "--metrics", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(data.join(name))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut out = BufReader::new(node.0.stdout.take().unwrap());
        let listens = line_starting(&mut out, "listening ");
        let metrics = line_starting(&mut out, "metrics listening ");
        let circuit = line_starting(&mut out, "reachable as ");
        (node, listens, metrics, circuit)
    };
    let (_bob, _, _, bob_circuit) = node("bob");
    let (_alice, alice_listens, alice_metrics, _) = node("alice");
    // `status` shows the reservation the node printed.
    let status = bitpunch()
        .args(["status", "--json", "--data-dir"])
        .arg(data.join("bob"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["relays"][relay_addr.as_str()]["address"],
        bob_circuit.as_str(),
        "{status}"
    );

    let out = connect(
        &bob_circuit,
        &["--data-dir".as_ref(), data.join("alice").as_os_str()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["path"], "libp2p");
    assert_eq!(
        record["local"],
        alice_listens.as_str(),
        "from the node's port"
    );
    let peers = bitpunch()
        .args(["peers", "--json", "--data-dir"])
        .arg(data.join("alice"))
        .output()
        .unwrap();
    let peers: serde_json::Value = serde_json::from_slice(&peers.stdout).unwrap();
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["path"] == "libp2p" && p["session_id"] == record["session_id"]),
        "{peers}"
    );
    // The punch counts in Alice's metrics; rust-libp2p's own metrics come
    // with the swarms (the relay accepted both reservations).
    let text = scrape(&alice_metrics);
    assert_eq!(
        sample_sum(
            &text,
            "bitpunch_punches_total",
            &["path=\"libp2p\"", "result=\"ok\""]
        ),
        1.0,
        "{text}"
    );
    assert!(
        sample_sum(
            &text,
            "bitpunch_libp2p_swarm_connections_established_total",
            &[]
        ) >= 1.0,
        "{text}"
    );
    let text = scrape(&relay_metrics);
    assert!(
        sample_sum(
            &text,
            "bitpunch_libp2p_relay_events_total",
            &["ReservationReqAccepted"]
        ) >= 2.0,
        "{text}"
    );
    drop(relay);
    let _ = std::fs::remove_dir_all(&data);
}

/// `bitpunch nat` asks the running node, which asks its coordinator's NAT
/// probes; on loopback there is no NAT, and `status` then shows the verdict.
#[test]
fn nat_tells_a_node_on_loopback_that_it_is_behind_no_nat() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-nat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let (_coordinator, coord) = coordinator_in(&data);
    let (_bob, _) = registered_node(&coord, &data.join("bob"), &data.join("bob.log"));
    let out = bitpunch()
        .args(["nat", "--json", "--data-dir"])
        .arg(data.join("bob"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let class: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(class["mapping"], "none", "{class}");
    assert_eq!(class["port_preserving"], true, "{class}");
    let text = bitpunch()
        .args(["nat", "--data-dir"])
        .arg(data.join("bob"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("mapping:     none"));
    let status = bitpunch()
        .args(["status", "--json", "--data-dir"])
        .arg(data.join("bob"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["nat"]["mapping"], "none", "{status}");
    let _ = std::fs::remove_dir_all(&data);
}

/// A dual-stack node: one coordinator named once per family registers
/// the node's key over both, the second without displacing the first, and
/// `status` shows both registrations. The same coordinator named twice in
/// one family is refused before anything binds.
#[test]
fn a_node_registers_over_both_families_with_a_coordinator_named_once_per_family() {
    let data = std::env::temp_dir().join(format!("bitpunch-cli-dual-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    // Without --bind the coordinator listens on both loopbacks.
    let mut coordinator = Running(
        bitpunch()
            .args(["coordinator", "--port", "0", "--network", "regtest", "-q"])
            .arg("--data-dir")
            .arg(data.join("coordinator"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(coordinator.0.stdout.take().unwrap());
    let id = line_starting(&mut out, "coordinator id ");
    let port = line_starting(&mut out, "coordinator listening ")
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let (v4, v6) = (
        format!("{id}@127.0.0.1:{port}"),
        format!("{id}@[::1]:{port}"),
    );

    let twice = bitpunch()
        .args(["node", "--port", "0", "--network", "regtest", "-q"])
        .args(["--coordinator", &v4, "--coordinator", &v4, "--data-dir"])
        .arg(data.join("twice"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&twice.stderr);
    assert!(!twice.status.success(), "{stderr}");
    assert!(stderr.contains("is named twice"), "{stderr}");

    let mut node = Running(
        bitpunch()
            .args([
                "node",
                "--port",
                "0",
                "--network",
                "regtest",
                "--allow-private-addrs",
            ])
            .args(["--coordinator", &v4, "--coordinator", &v6, "--data-dir"])
            .arg(data.join("node"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(data.join("node.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    // The two registrations race: their lines come in either order.
    let lines = common::lines(&mut node.0);
    let (mut address, mut seen6) = (None, None);
    while address.is_none() || seen6.is_none() {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("both registrations within 20 s");
        if let Some(rest) = line.strip_prefix("reachable as ") {
            address = Some(rest.to_string());
        }
        if let Some(rest) = line.strip_prefix("reachable over IPv6 too, seen at ") {
            seen6 = Some(rest.to_string());
        }
    }
    let (address, seen6) = (address.unwrap(), seen6.unwrap());
    assert!(seen6.starts_with("[::1]:"), "{seen6}");
    let status = bitpunch()
        .args(["status", "--json", "--data-dir"])
        .arg(data.join("node"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["coordinators"][v4.as_str()]["address"],
        address.as_str(),
        "{status}"
    );
    let over6 = format!("{v4} over IPv6");
    assert_eq!(
        status["coordinators"][over6.as_str()]["address"],
        address.as_str(),
        "{status}"
    );
    // Neither registration displaced the other.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let log = std::fs::read_to_string(data.join("node.log")).unwrap();
    assert!(!log.contains("displaced"), "{log}");
    drop(node);
    drop(coordinator);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_seednode_that_is_not_a_direct_address_is_refused_with_the_accepted_forms() {
    let data = std::env::temp_dir().join(format!("bitpunch-seed-{}", std::process::id()));
    for (seed, says) in [
        ("not an address!", "accepted forms"),
        (
            "0123456789abcdef01234567@0123456789abcdef01234567@192.0.2.1:8333",
            "a seed is connected to directly",
        ),
    ] {
        let out = bitpunch()
            .args([
                "node",
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--seednode",
                seed,
            ])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{seed}: {stderr}");
        assert!(stderr.contains("--seednode"), "{seed}: {stderr}");
        assert!(stderr.contains(says), "{seed}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&data);
}
