//! What NAT a node is behind, as the node itself can tell: from the
//! endpoints a coordinator observes for its connections (docs/native-
//! protocol.md, "NAT probes"). A coordinator that announces feature bit 1
//! answers on its port + 1 with one line, the connection's source as it
//! sees it (`IP:PORT\n`), and closes. The node compares:
//!
//! - its link's observed endpoint with the one its shared port gets toward
//!   the probe port (same address, another port): equal means the mapping
//!   does not depend on the destination port, different means it depends
//!   on address and port ("symmetric");
//! - the observed port with its own: port preservation;
//! - three probes from fresh ports: the external ports they get show the
//!   allocation, preserved, sequential with a step, or random.
//!
//! With one coordinator the node cannot tell an endpoint-independent
//! mapping from an address-dependent one (that needs a second observer at
//! another address); it says so.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::net::dial_from;

/// A line longer than this is not an endpoint.
const MAX_LINE: usize = 64;

/// Where a bitpunch coordinator or relay at `server` answers NAT probes:
/// its port + 1, on the same address.
pub fn probe_server(server: SocketAddr) -> Option<SocketAddr> {
    Some(SocketAddr::new(server.ip(), server.port().checked_add(1)?))
}

/// Serves NAT probes on `listener` until the task is dropped: each
/// connection gets its source endpoint as one line and is closed.
pub async fn serve_probes(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((mut stream, from)) => {
                tokio::spawn(async move {
                    let reply = format!("{from}\n");
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        let _ = stream.write_all(reply.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    })
                    .await;
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "NAT probe: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Connects from `local` to a probe server and returns the endpoint it
/// saw: our NAT's mapping toward it.
pub async fn observe(
    local: SocketAddr,
    server: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    let stream = tokio::time::timeout(timeout, dial_from(local, server))
        .await
        .with_context(|| format!("NAT probe {server} did not answer"))?
        .with_context(|| format!("connecting to NAT probe {server}"))?;
    let mut line = String::new();
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64);
    tokio::time::timeout(timeout, reader.read_line(&mut line))
        .await
        .context("NAT probe reply timed out")??;
    line.trim()
        .parse()
        .with_context(|| format!("NAT probe answered {line:?}"))
}

/// How the mapping depends on the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingBehaviour {
    /// The same external endpoint toward every port of one address; with
    /// one observer, address-dependent mappings look the same.
    EndpointIndependent,
    /// A new external port for each destination address and port
    /// ("symmetric").
    AddressAndPortDependent,
    /// No NAT: the node is where the coordinator sees it.
    None,
}

/// How new mappings get their external ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "step")]
pub enum Allocation {
    /// External port = internal port.
    Preserving,
    /// Each new mapping the last one's port plus `step`.
    Sequential(i32),
    Random,
}

/// A node's last classification, shared by its control interface (which
/// makes it) and its punches (which predict ports from it).
pub type NatMemory = std::sync::Arc<std::sync::Mutex<Option<NatClass>>>;

/// What `bitpunch nat` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatClass {
    pub mapping: MappingBehaviour,
    /// The shared port keeps its number outside.
    pub port_preserving: bool,
    pub allocation: Allocation,
    /// Our shared port, and where the coordinator saw it: on its main port
    /// and on its probe port.
    pub local_port: u16,
    pub observed: Vec<SocketAddr>,
    /// Fresh local ports and the external ports they got, in order.
    pub fresh: Vec<(u16, u16)>,
    /// What one observer cannot tell.
    pub caveat: Option<String>,
}

impl NatClass {
    /// In the lab's terms, to check the node against the lab's own NATs.
    pub fn lab_mapping(&self) -> Option<crate::lab::nat::Mapping> {
        use crate::lab::nat::Mapping;
        match (self.mapping, self.allocation) {
            (MappingBehaviour::EndpointIndependent, Allocation::Preserving) => {
                Some(Mapping::EimPreserving)
            }
            (MappingBehaviour::EndpointIndependent, _) => Some(Mapping::EimRandomPort),
            (MappingBehaviour::AddressAndPortDependent, Allocation::Sequential(_)) => {
                Some(Mapping::SymmetricSequential)
            }
            (MappingBehaviour::AddressAndPortDependent, Allocation::Random) => {
                Some(Mapping::SymmetricRandom)
            }
            _ => None,
        }
    }
}

/// What a node tells its peers about its NAT (through its coordinator) and
/// what records carry: the class without the observations behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatBrief {
    pub mapping: MappingBehaviour,
    pub port_preserving: bool,
    pub allocation: Allocation,
}

impl NatClass {
    pub fn brief(&self) -> NatBrief {
        NatBrief {
            mapping: self.mapping,
            port_preserving: self.port_preserving,
            allocation: self.allocation,
        }
    }
}

/// The brief of what `memory` holds, if the node has classified its NAT.
pub fn brief_of(memory: &NatMemory) -> Option<NatBrief> {
    crate::clock::lock(memory).as_ref().map(NatClass::brief)
}

/// Classifies the NAT in front of `local` (the shared port's address)
/// from `link_observed` (where the coordinator sees our link) and the
/// coordinator's probe server `probe` (on the coordinator's address).
pub async fn classify(
    local: SocketAddr,
    link_observed: SocketAddr,
    probe: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<NatClass> {
    let via_probe = observe(local, probe, timeout).await?;
    let any: IpAddr = match local {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let source_ip = if local.ip().is_unspecified() {
        crate::net::source_toward(probe.ip()).unwrap_or(any)
    } else {
        local.ip()
    };
    let mut fresh = Vec::new();
    for _ in 0..3 {
        // A fresh port the kernel picks: bind first, then dial from it.
        let socket = std::net::TcpListener::bind(SocketAddr::new(any, 0))?;
        let port = socket.local_addr()?.port();
        drop(socket);
        let seen = observe(SocketAddr::new(any, port), probe, timeout).await?;
        fresh.push((port, seen.port()));
    }
    Ok(judge(
        SocketAddr::new(source_ip, local.port()),
        link_observed,
        via_probe,
        fresh,
    ))
}

/// The verdict from the observations, without I/O.
pub fn judge(
    local: SocketAddr,
    link_observed: SocketAddr,
    via_probe: SocketAddr,
    fresh: Vec<(u16, u16)>,
) -> NatClass {
    let no_nat = link_observed.ip() == local.ip();
    let mapping = if no_nat {
        MappingBehaviour::None
    } else if link_observed.port() == via_probe.port() {
        MappingBehaviour::EndpointIndependent
    } else {
        MappingBehaviour::AddressAndPortDependent
    };
    let allocation = if fresh.iter().all(|(l, e)| l == e) {
        Allocation::Preserving
    } else {
        let steps: Vec<i32> = fresh
            .windows(2)
            .filter_map(|w| match w {
                [(_, a), (_, b)] => Some(i32::from(*b).wrapping_sub(i32::from(*a))),
                _ => None,
            })
            .collect();
        match steps.first() {
            Some(&step) if step != 0 && step.abs() <= 64 && steps.iter().all(|s| *s == step) => {
                Allocation::Sequential(step)
            }
            _ => Allocation::Random,
        }
    };
    let caveat = (mapping == MappingBehaviour::EndpointIndependent).then(|| {
        "one coordinator observed it: an address-dependent mapping would look the same (a second coordinator at another address tells them apart)".to_string()
    });
    NatClass {
        mapping,
        port_preserving: link_observed.port() == local.port(),
        allocation,
        local_port: local.port(),
        observed: vec![link_observed, via_probe],
        fresh,
        caveat,
    }
}

/// `bitpunch nat` for people.
pub fn render(class: &NatClass) -> String {
    let mapping = match class.mapping {
        MappingBehaviour::EndpointIndependent => "endpoint-independent",
        MappingBehaviour::AddressAndPortDependent => "address-and-port-dependent (symmetric)",
        MappingBehaviour::None => "none (no NAT: the coordinator sees this host's own address)",
    };
    let allocation = match class.allocation {
        Allocation::Preserving => "port-preserving".to_string(),
        Allocation::Sequential(step) => format!("sequential, step {step}"),
        Allocation::Random => "random".to_string(),
    };
    let mut out = format!(
        "mapping:     {mapping}\nshared port: {} ({})\nnew ports:   {allocation}\nobserved:    {}\n",
        class.local_port,
        if class.port_preserving { "kept outside" } else { "changed outside" },
        class
            .observed
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(caveat) = &class.caveat {
        out.push_str(&format!("note:        {caveat}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn verdicts_for_the_lab_mappings() {
        let local = a("10.1.0.10:18444");
        let home = judge(
            local,
            a("203.0.113.2:18444"),
            a("203.0.113.2:18444"),
            vec![(40000, 40000), (40100, 40100), (40200, 40200)],
        );
        assert_eq!(
            home.lab_mapping(),
            Some(crate::lab::nat::Mapping::EimPreserving)
        );
        assert!(home.port_preserving && home.caveat.is_some());
        let seq = judge(
            local,
            a("203.0.113.2:1025"),
            a("203.0.113.2:1026"),
            vec![(40000, 1027), (40100, 1028), (40200, 1029)],
        );
        assert_eq!(seq.allocation, Allocation::Sequential(1));
        assert_eq!(
            seq.lab_mapping(),
            Some(crate::lab::nat::Mapping::SymmetricSequential)
        );
        let random = judge(
            local,
            a("203.0.113.2:31000"),
            a("203.0.113.2:50007"),
            vec![(40000, 2222), (40100, 61000), (40200, 9000)],
        );
        assert_eq!(
            random.lab_mapping(),
            Some(crate::lab::nat::Mapping::SymmetricRandom)
        );
        let none = judge(local, local, local, vec![(1, 1), (2, 2), (3, 3)]);
        assert_eq!(none.mapping, MappingBehaviour::None);
    }
}
