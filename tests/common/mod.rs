//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Duration;

use bitpunch::node::{Node, NodeConfig};
use bitpunch::wire::{Network, SessionConfig};

/// Tests that need the NAT lab run where it can (root, tools installed:
/// CI); elsewhere they return early and say so loudly.
#[macro_export]
macro_rules! require_lab {
    () => {
        if let Some(why) = bitpunch::lab::unavailable_reason() {
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
