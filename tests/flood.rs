//! Floods on loopback against the real binaries: 5,000 idle connections
//! from a thousand 127.x source addresses in a hundred netgroups, plus 500
//! that announce a 4 MB v1 message and stall. A well-behaved peer that
//! arrives during the flood completes its session, and the target's
//! resident memory stays under a generous ceiling. The figures are printed
//! (docs/results.md records them).

mod common;
use common::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bitpunch::net::SharedPort;
use bitpunch::wire::{self, Network, Transport};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

const IDLE: usize = 5_000;
const STALLERS: usize = 500;
/// Generous on purpose: the point is "megabytes, not gigabytes".
const RSS_CEILING_KIB: u64 = 200 * 1024;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> (Killed, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitpunch"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bitpunch");
    let rx = lines(&mut child);
    (Killed(child), rx)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Source address number `i` of a flood: 127.(1 + i % 100).(i / 100 % 250).(2 + i / 25000)
/// — one of a hundred /16 netgroups.
fn source(i: usize, salt: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (i % 100) as u8,
        (i / 100 % 250) as u8,
        salt,
    ))
}

async fn connect_from(ip: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(target).await
}

/// One flood at a time: each holds 5,500 descriptors in this process.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Opens the flood and returns its connections (kept open by the caller).
async fn flood(target: SocketAddr) -> (Vec<TcpStream>, usize) {
    bitpunch::net::raise_fd_limit().expect("raise the open-file limit");
    let mut held = Vec::with_capacity(IDLE + STALLERS);
    let mut failed = 0;
    // Five connections per source address: 1,000 addresses.
    for batch in (0..IDLE).collect::<Vec<_>>().chunks(500) {
        let opened = futures::future::join_all(
            batch
                .iter()
                .map(|&i| connect_from(source(i / 5, 2), target)),
        )
        .await;
        for c in opened {
            match c {
                Ok(s) => held.push(s),
                Err(_) => failed += 1,
            }
        }
    }
    // A v1 header announcing the largest payload, and then nothing.
    let mut header = Network::Regtest.magic().to_bytes().to_vec();
    header.extend_from_slice(b"version\0\0\0\0\0");
    header.extend_from_slice(&4_000_000u32.to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    let stallers = futures::future::join_all((0..STALLERS).map(|i| {
        let header = header.clone();
        async move {
            let mut s = connect_from(source(i, 3), target).await?;
            s.write_all(&header).await?;
            Ok::<_, std::io::Error>(s)
        }
    }))
    .await;
    for s in stallers {
        match s {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    (held, failed)
}

/// Starts `bitpunch ARGS`, reads where it listens from the line after
/// `prefix` (`to_target` turns it into an address), floods it, runs `good`
/// (the well-behaved peer, given that line) while the flood is held open,
/// and checks the target's resident memory. Returns what `good` returned.
async fn under_flood<T, Fut>(
    label: &str,
    args: &[&str],
    prefix: &str,
    to_target: impl Fn(&str) -> SocketAddr,
    good: impl FnOnce(String) -> Fut,
) -> T
where
    Fut: std::future::Future<Output = T>,
{
    let _serial = ONE_AT_A_TIME.lock().await;
    let (child, rx) = spawn(args);
    let listening = wait_for(&rx, prefix);
    let target = to_target(&listening);
    let pid = child.0.id();
    let before = rss_kib(pid);
    let (held, failed) = flood(target).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(pid);
    let result = good(listening).await;
    let peak = rss_kib(pid).max(during);
    eprintln!(
        "{label} flood: {} connections held by the flooder ({failed} refused at connect), RSS {before} KiB before, {peak} KiB during",
        held.len()
    );
    assert!(
        peak < RSS_CEILING_KIB,
        "{label} RSS {peak} KiB under the flood"
    );
    drop(held);
    result
}

const LOOPBACK_REGTEST: [&str; 6] = ["--port", "0", "--bind", "127.0.0.1", "--network", "regtest"];

fn socket(line: &str) -> SocketAddr {
    line.parse().expect("ip:port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_a_connection_flood_serves_a_good_peer_in_bounded_memory() {
    let dir = std::env::temp_dir().join(format!("bitpunch-flood-node-{}", std::process::id()));
    let dir_arg = dir.to_str().unwrap().to_string();
    let args = [
        &["node", "-q", "--data-dir", &dir_arg][..],
        &LOOPBACK_REGTEST,
    ]
    .concat();
    let report = under_flood("node", &args, "listening", socket, |line| async move {
        // A good peer from a netgroup the flood does not use.
        let port = SharedPort::bind(Some("127.250.0.9".parse().unwrap()), 0).unwrap();
        let outcome = wire::connect(socket(&line), &session(), Some(&port), Instant::now()).await;
        outcome
            .result
            .expect("the good peer's session during the flood")
            .report
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report.transport, Transport::V2);
    assert!(report.rtt_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_under_a_connection_flood_registers_a_good_client_in_bounded_memory() {
    let dir = std::env::temp_dir().join(format!("bitpunch-flood-coord-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_str().unwrap().to_string();
    let args = [
        &["coordinator", "-q", "--data-dir", &dir_arg][..],
        &LOOPBACK_REGTEST,
    ]
    .concat();
    let key = bitpunch::identity::NodeKey::generate();
    let coordinator_dir = dir.clone();
    let id = under_flood(
        "coordinator",
        &args,
        "coordinator listening",
        socket,
        |line| {
            let key = key.clone();
            async move {
                // A node registers through its own shared port during the flood.
                let mut config = bitpunch::node::NodeConfig::new(session());
                config.bind_ip = Some("127.251.0.9".parse().unwrap());
                config.port = 0;
                let node = bitpunch::node::Node::start(config).unwrap();
                let link_config = bitpunch::native::client::LinkConfig {
                    session: session(),
                    client: Default::default(),
                    ping_interval: bitpunch::native::client::LINK_PING_INTERVAL,
                    refusals: None,
                };
                // The coordinator made its key on start; the address names it.
                let coordinator = bitpunch::native::client::CoordinatorEndpoint {
                    id: bitpunch::identity::NodeKey::load_or_create(&coordinator_dir)
                        .unwrap()
                        .id(),
                    addr: socket(&line),
                };
                let link = bitpunch::native::register(&node, coordinator, &key, link_config)
                    .await
                    .expect("registration during the flood");
                link.id
            }
        },
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(id, key.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_under_a_connection_flood_gives_a_good_node_its_reservation_in_bounded_memory() {
    let dir = std::env::temp_dir().join(format!("bitpunch-flood-relay-{}", std::process::id()));
    let key = dir.join("relay.key");
    let args = [
        "relay",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--key",
        key.to_str().unwrap(),
        "-q",
    ];
    let relay_target = |line: &str| {
        let addr: libp2p::Multiaddr = line.parse().expect("a multiaddr");
        bitpunch::libp2p::transport::socket_addr(&addr).expect("a TCP relay address")
    };
    let data = dir.join("node");
    let reachable = under_flood(
        "relay",
        &args,
        "relay listening",
        relay_target,
        |relay| async move {
            // A node from an uncrowded netgroup reserves a slot while the flood
            // is held open; its back-off retries if the first attempt finds the
            // pending slots full.
            let (_node, node_rx) = spawn(&[
                "node",
                "--relay",
                &relay,
                "--port",
                "0",
                "--bind",
                "127.252.0.9",
                "--network",
                "regtest",
                "--data-dir",
                data.to_str().unwrap(),
                "-q",
            ]);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match node_rx.recv_timeout(left) {
                    Ok(line) if line.starts_with("reachable as ") => break line,
                    Ok(_) => continue,
                    Err(_) => panic!("no reservation within 60 s of the flood"),
                }
            }
        },
    )
    .await;
    assert!(reachable.contains("/p2p-circuit"), "{reachable}");
    let _ = std::fs::remove_dir_all(&dir);
}
