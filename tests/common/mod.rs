//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::sync::mpsc;
use std::time::Duration;

use bitpunch::node::{Node, NodeConfig};
use bitpunch::wire::{Network, SessionConfig};

/// Tests that need the NAT lab run where it can (root, tools installed:
/// CI). Built as non-root they are `#[ignore]`d (build.rs sets
/// `bitpunch_no_lab`), so the harness lists them as ignored, not passed.
/// Run anyway where the lab is missing (built as root, run as a user, or
/// tools absent), they fail under `CI=true` and otherwise return early
/// saying SKIPPED.
#[macro_export]
macro_rules! require_lab {
    () => {
        if let Some(why) = bitpunch::lab::unavailable_reason() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true, but the NAT lab cannot run here: {why}");
            }
            eprintln!("SKIPPED (NAT lab unavailable): {why}");
            return;
        }
    };
}

pub fn session() -> SessionConfig {
    let mut s = SessionConfig::new(Network::Regtest);
    s.handshake_timeout = Duration::from_secs(10);
    s
}

/// A node on `ip:port` (port 0: any free one).
pub fn node_on(ip: IpAddr, port: u16) -> Node {
    let mut config = NodeConfig::new(session());
    config.bind_ip = Some(ip);
    config.port = port;
    Node::start(config).expect("bind the node's port")
}

/// A coordinator on 127.0.0.1 (any free port) with default limits.
pub fn coordinator_on_loopback() -> (
    bitpunch::native::coordinator::CoordinatorServer,
    bitpunch::native::client::CoordinatorEndpoint,
) {
    let mut config = bitpunch::native::coordinator::CoordinatorServerConfig::new(
        session(),
        bitpunch::identity::NodeKey::generate(),
    );
    config.bind_ip = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    config.port = 0;
    let server = bitpunch::native::coordinator::CoordinatorServer::start(config).unwrap();
    let endpoint = bitpunch::native::client::CoordinatorEndpoint {
        id: server.id(),
        addr: server.local_addrs()[0],
    };
    (server, endpoint)
}

/// The `bitpunch` binary, for tests of the CLI.
pub fn bitpunch() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bitpunch"));
    // Keys a test does not place itself go under target/, never into ~.
    command.env(
        "BITPUNCH_DATA_DIR",
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-default-data"),
    );
    command
}

/// Kills the child when the test ends, also when it fails.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next line from `reader` that starts with `prefix`, without it.
pub fn line_starting(reader: &mut BufReader<std::process::ChildStdout>, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("no line starting with {prefix:?}");
        }
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim().to_string();
        }
    }
}

/// Lines of a child's stdout, readable with a timeout.
pub fn lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The rest of the first line starting with `prefix` (20 s at most).
pub fn wait_for(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no {prefix:?} line"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim().to_string();
        }
    }
}

/// A rust-libp2p relay on port 4001 of a lab host; it lives as long as `rt`.
pub async fn start_relay(
    rt: &bitpunch::lab::NsRuntime,
    ip: std::net::Ipv4Addr,
) -> libp2p::Multiaddr {
    use bitpunch::libp2p::relay::{RelayLimits, RelayServer};
    let external: libp2p::Multiaddr = format!("/ip4/{ip}/tcp/4001").parse().unwrap();
    rt.run(async move {
        let server = RelayServer::start(
            libp2p::identity::Keypair::generate_ed25519(),
            &["/ip4/0.0.0.0/tcp/4001".parse().unwrap()],
            Some(external),
            RelayLimits::default(),
        )
        .await
        .unwrap();
        let address = server.address.clone();
        tokio::spawn(async move {
            let _keep = server;
            std::future::pending::<()>().await
        });
        address
    })
    .await
}
