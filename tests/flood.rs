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

/// A good peer from a netgroup the flood does not use.
async fn good_session(target: SocketAddr) -> wire::SessionReport {
    let port = SharedPort::bind(Some("127.250.0.9".parse().unwrap()), 0).unwrap();
    let outcome = wire::connect(target, &session(), Some(&port), Instant::now()).await;
    let session = outcome
        .result
        .expect("the good peer's session during the flood");
    session.report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_a_connection_flood_serves_a_good_peer_in_bounded_memory() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (child, rx) = spawn(&[
        "node",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--network",
        "regtest",
        "-q",
    ]);
    let target: SocketAddr = wait_for(&rx, "listening").parse().unwrap();
    let pid = child.0.id();
    let before = rss_kib(pid);
    let (held, failed) = flood(target).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = good_session(target).await;
    let peak = rss_kib(pid);
    eprintln!(
        "node flood: {} connections held by the flooder ({failed} refused at connect), RSS {before} KiB before, {peak} KiB during",
        held.len()
    );
    assert_eq!(report.transport, Transport::V2);
    assert!(report.rtt_ms.is_some());
    assert!(
        peak < RSS_CEILING_KIB,
        "node RSS {peak} KiB under the flood"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_under_a_connection_flood_registers_a_good_client_in_bounded_memory() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (child, rx) = spawn(&[
        "coordinator",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--network",
        "regtest",
        "-q",
    ]);
    let target: SocketAddr = wait_for(&rx, "coordinator listening").parse().unwrap();
    let pid = child.0.id();
    let before = rss_kib(pid);
    let (held, failed) = flood(target).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A node registers through its own shared port during the flood.
    let mut config = bitpunch::node::NodeConfig::new(session());
    config.bind_ip = Some("127.251.0.9".parse().unwrap());
    config.port = 0;
    let node = bitpunch::node::Node::start(config).unwrap();
    let key = bitpunch::identity::NodeKey::generate();
    let link = bitpunch::native::register(
        &node,
        target,
        &key,
        bitpunch::native::client::LinkConfig {
            session: session(),
            client: Default::default(),
            ping_interval: bitpunch::native::client::LINK_PING_INTERVAL,
        },
    )
    .await
    .expect("registration during the flood");
    let peak = rss_kib(pid);
    eprintln!(
        "coordinator flood: {} connections held by the flooder ({failed} refused at connect), RSS {before} KiB before, {peak} KiB during",
        held.len()
    );
    assert_eq!(link.id, key.id());
    assert!(
        peak < RSS_CEILING_KIB,
        "coordinator RSS {peak} KiB under the flood"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_under_a_connection_flood_gives_a_good_node_its_reservation_in_bounded_memory() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = std::env::temp_dir().join(format!("bitpunch-flood-relay-{}", std::process::id()));
    let key = dir.join("relay.key");
    let (child, rx) = spawn(&[
        "relay",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--key",
        key.to_str().unwrap(),
        "-q",
    ]);
    let relay = wait_for(&rx, "relay listening");
    let pid = child.0.id();
    let addr: libp2p::Multiaddr = relay.parse().unwrap();
    let target = bitpunch::libp2p::transport::socket_addr(&addr).expect("a TCP relay address");
    let before = rss_kib(pid);
    let (held, failed) = flood(target).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(pid);
    // A node from an uncrowded netgroup reserves a slot while the flood is
    // held open; its back-off retries if the first attempt finds the
    // pending slots full.
    let data = dir.join("node");
    let (node, node_rx) = spawn(&[
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
    let reachable = {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match node_rx.recv_timeout(left) {
                Ok(line) if line.starts_with("reachable as ") => break line,
                Ok(_) => continue,
                Err(_) => panic!("no reservation within 60 s of the flood"),
            }
        }
    };
    let peak = rss_kib(pid).max(during);
    eprintln!(
        "relay flood: {} connections held by the flooder ({failed} refused at connect), RSS {before} KiB before, {peak} KiB during",
        held.len()
    );
    assert!(reachable.contains("/p2p-circuit"), "{reachable}");
    assert!(
        peak < RSS_CEILING_KIB,
        "relay RSS {peak} KiB under the flood"
    );
    drop(node);
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}
