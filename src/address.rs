//! Addresses as users type them on the command line.
//!
//! Today: `HOST:PORT`, `[IPv6]:PORT`, `HOST` (the network's default port), and a
//! bare IPv6 literal. The libp2p path adds `/…/p2p-circuit/p2p/<id>`
//! multiaddrs and the native path `NODE_ID@COORDINATOR_ID@HOST:PORT`, which
//! names the coordinator by the id of its key so that nobody else can play
//! it (docs/native-protocol.md).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::identity::NodeId;

pub const ACCEPTED_FORMS: &str =
    "accepted forms: HOST:PORT (127.0.0.1:8333, node.example.org:8333), [IPv6]:PORT ([::1]:8333), \
     HOST (uses the network's default port), a bare IPv6 address (::1), \
     NODE_ID@COORDINATOR_ID@HOST:PORT (a node behind a NAT: its 24-hex-digit id, then its \
     coordinator's id and address in any of the forms before), or a circuit multiaddr \
     /ip4/R/tcp/P/p2p/RELAY_ID/p2p-circuit/p2p/PEER_ID";

/// The forms `--coordinator` accepts.
pub const COORDINATOR_FORMS: &str = "a coordinator is COORDINATOR_ID@HOST:PORT (the 24-hex-digit \
     id it prints at start, `coordinator id ...`, then HOST:PORT, [IPv6]:PORT or HOST)";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A place to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddress {
    /// A reachable host; `port` is `None` when the network's default applies.
    Direct { host: Host, port: Option<u16> },
    /// A node behind a NAT, reached through a libp2p relay and punched to:
    /// `<relay>/p2p/<relay id>/p2p-circuit/p2p/<peer id>`.
    Circuit(::libp2p::Multiaddr),
    /// A node behind a NAT, reached by a punch that `coordinator` arranges.
    Coordinated {
        peer: NodeId,
        coordinator: CoordinatorAddress,
    },
}

/// A coordinator as nodes name it: the id of its key, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorAddress {
    pub id: NodeId,
    pub host: Host,
    pub port: Option<u16>,
}

impl fmt::Display for CoordinatorAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid coordinator {input:?}: {problem}; {COORDINATOR_FORMS}")]
pub struct CoordinatorAddressError {
    pub input: String,
    pub problem: String,
}

impl CoordinatorAddress {
    /// Resolves to socket addresses, with `default_port` where none was given.
    pub async fn resolve(&self, default_port: u16) -> std::io::Result<Vec<SocketAddr>> {
        PeerAddress::Direct {
            host: self.host.clone(),
            port: self.port,
        }
        .resolve(default_port)
        .await
    }

    fn parse_parts(s: &str) -> Result<CoordinatorAddress, String> {
        let Some((id, place)) = s.split_once('@') else {
            return Err("the coordinator's id is missing (ID@HOST:PORT)".into());
        };
        let id: NodeId = id
            .parse()
            .map_err(|e: String| format!("coordinator id: {e}"))?;
        if place.contains('@') || place.starts_with('/') {
            return Err("after the coordinator's id comes HOST:PORT, once".into());
        }
        match place.parse::<PeerAddress>() {
            Ok(PeerAddress::Direct { host, port }) => Ok(CoordinatorAddress { id, host, port }),
            Ok(_) => Err("after the coordinator's id comes HOST:PORT, once".into()),
            Err(e) => Err(format!("the coordinator's address: {}", e.problem)),
        }
    }
}

impl FromStr for CoordinatorAddress {
    type Err = CoordinatorAddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        CoordinatorAddress::parse_parts(input.trim()).map_err(|problem| CoordinatorAddressError {
            input: input.to_string(),
            problem,
        })
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddress::Direct {
                host,
                port: Some(p),
            } => write!(f, "{host}:{p}"),
            PeerAddress::Direct { host, port: None } => write!(f, "{host}"),
            PeerAddress::Coordinated { peer, coordinator } => write!(f, "{peer}@{coordinator}"),
            PeerAddress::Circuit(addr) => write!(f, "{addr}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {input:?}: {problem}; {ACCEPTED_FORMS}")]
pub struct AddressError {
    pub input: String,
    pub problem: String,
}

impl PeerAddress {
    /// Resolves to socket addresses, with `default_port` where none was given.
    pub async fn resolve(&self, default_port: u16) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            PeerAddress::Direct { host, port } => {
                let port = port.unwrap_or(default_port);
                match host {
                    Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
                    Host::Name(name) => Ok(tokio::net::lookup_host((name.as_str(), port))
                        .await?
                        .collect()),
                }
            }
            PeerAddress::Coordinated { coordinator, .. } => {
                Box::pin(coordinator.resolve(default_port)).await
            }
            PeerAddress::Circuit(addr) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{addr} is reached through its relay, not resolved"),
            )),
        }
    }
}

impl FromStr for PeerAddress {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |problem: &str| AddressError {
            input: input.to_string(),
            problem: problem.to_string(),
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(fail("the address is empty"));
        }
        if s.starts_with('/') {
            let addr: ::libp2p::Multiaddr = s
                .parse()
                .map_err(|e| fail(&format!("not a valid multiaddr ({e})")))?;
            if crate::libp2p::circuit_peer(&addr).is_none() {
                return Err(fail(
                    "a multiaddr must be a circuit address ending in /p2p-circuit/p2p/<peer id>",
                ));
            }
            let relay_part = addr
                .iter()
                .take_while(|p| *p != ::libp2p::multiaddr::Protocol::P2pCircuit);
            if !relay_part
                .into_iter()
                .any(|p| matches!(p, ::libp2p::multiaddr::Protocol::P2p(_)))
            {
                return Err(fail(
                    "the relay part of a circuit address needs its /p2p/<relay id>",
                ));
            }
            return Ok(PeerAddress::Circuit(addr));
        }
        if let Some((peer, coordinator)) = s.split_once('@') {
            let peer: NodeId = peer
                .parse()
                .map_err(|e: String| fail(&format!("in NODE_ID@COORDINATOR_ID@HOST:PORT, {e}")))?;
            if !coordinator.contains('@') {
                return Err(fail(
                    "NODE_ID@HOST:PORT names no coordinator id: write NODE_ID@COORDINATOR_ID@HOST:PORT \
                     (the coordinator prints its id at start), so that nobody else can play the coordinator",
                ));
            }
            let coordinator = CoordinatorAddress::parse_parts(coordinator)
                .map_err(|e| fail(&format!("in NODE_ID@COORDINATOR_ID@HOST:PORT, {e}")))?;
            return Ok(PeerAddress::Coordinated { peer, coordinator });
        }
        if s.contains("://") {
            return Err(fail("a URL scheme is not part of an address"));
        }
        if let Some(rest) = s.strip_prefix('[') {
            let Some((inside, after)) = rest.split_once(']') else {
                return Err(fail("'[' without a closing ']'"));
            };
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| fail(&format!("{inside:?} inside [] is not an IPv6 address")))?;
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(p) => Some(parse_port(p).map_err(|e| fail(&e))?),
                    None => return Err(fail(&format!("unexpected {after:?} after ']'"))),
                },
            };
            return Ok(PeerAddress::Direct {
                host: Host::Ip(IpAddr::V6(ip)),
                port,
            });
        }
        match s.matches(':').count() {
            0 => Ok(PeerAddress::Direct {
                host: parse_host(s).map_err(|e| fail(&e))?,
                port: None,
            }),
            1 => {
                let (host, port) = s.split_once(':').expect("one colon");
                if host.is_empty() {
                    return Err(fail("the host is missing before ':'"));
                }
                Ok(PeerAddress::Direct {
                    host: parse_host(host).map_err(|e| fail(&e))?,
                    port: Some(parse_port(port).map_err(|e| fail(&e))?),
                })
            }
            // Several colons without brackets: only a whole IPv6 address makes
            // sense (as in Bitcoin Core); a port needs the [] form.
            _ => s.parse::<Ipv6Addr>().map(|ip| PeerAddress::Direct {
                host: Host::Ip(IpAddr::V6(ip)),
                port: None,
            }).map_err(|_| {
                fail("several ':' but not an IPv6 address (write an IPv6 address with a port as [IPv6]:PORT)")
            }),
        }
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() {
        return Err("the port is missing after ':'".into());
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {p:?} is not a number"));
    }
    match p.parse::<u32>() {
        Ok(0) => Err("port 0 cannot be connected to".into()),
        Ok(n) if n <= u16::MAX as u32 => Ok(n as u16),
        _ => Err(format!("port {p} is out of range (1-65535)")),
    }
}

fn parse_host(h: &str) -> Result<Host, String> {
    if let Ok(ip) = h.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    // Digits and dots only, yet not an IPv4 address: a typo, not a name.
    if h.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{h:?} is not a valid IPv4 address"));
    }
    if h.len() > 253 {
        return Err("the host name is longer than 253 characters".into());
    }
    for label in h.trim_end_matches('.').split('.') {
        if label.is_empty() {
            return Err(format!("host name {h:?} has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("host name {h:?} has a label over 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("host name {h:?} contains {c:?}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "host name {h:?} has a label starting or ending with '-'"
            ));
        }
    }
    Ok(Host::Name(h.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> PeerAddress {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(
            ok("127.0.0.1:18444"),
            PeerAddress::Direct {
                host: Host::Ip("127.0.0.1".parse().unwrap()),
                port: Some(18444)
            }
        );
        assert_eq!(
            ok("[::1]:8333"),
            PeerAddress::Direct {
                host: Host::Ip("::1".parse().unwrap()),
                port: Some(8333)
            }
        );
        assert_eq!(
            ok("::1"),
            PeerAddress::Direct {
                host: Host::Ip("::1".parse().unwrap()),
                port: None
            }
        );
        assert_eq!(
            ok("[2001:db8::1]"),
            PeerAddress::Direct {
                host: Host::Ip("2001:db8::1".parse().unwrap()),
                port: None
            }
        );
        assert_eq!(
            ok("seed.example.org"),
            PeerAddress::Direct {
                host: Host::Name("seed.example.org".into()),
                port: None
            }
        );
        assert_eq!(ok("localhost:1").to_string(), "localhost:1");
        let circuit = "/ip4/203.0.113.1/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
        assert!(matches!(ok(circuit), PeerAddress::Circuit(_)));
        assert_eq!(ok(circuit).to_string(), circuit);
        let coordinated = ok("00112233445566778899aabb@ffeeddccbbaa998877665544@[::1]:9000");
        assert_eq!(
            coordinated.to_string(),
            "00112233445566778899aabb@ffeeddccbbaa998877665544@[::1]:9000"
        );
        let PeerAddress::Coordinated { peer, coordinator } = coordinated else {
            panic!("not coordinated")
        };
        assert_eq!(peer.to_string(), "00112233445566778899aabb");
        assert_eq!(coordinator.id.to_string(), "ffeeddccbbaa998877665544");
        assert_eq!(coordinator.port, Some(9000));
        let c: CoordinatorAddress = "ffeeddccbbaa998877665544@coord.example.org"
            .parse()
            .unwrap();
        assert_eq!(c.to_string(), "ffeeddccbbaa998877665544@coord.example.org");
        assert_eq!(c.port, None);
        assert_eq!(ok("[::1]:2").to_string(), "[::1]:2");
    }

    #[test]
    fn every_malformed_form_names_its_problem() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            ("127.0.0.1:", "port is missing"),
            (":8333", "host is missing"),
            ("127.0.0.1:abc", "not a number"),
            ("127.0.0.1:-1", "not a number"),
            ("127.0.0.1:0", "port 0"),
            ("127.0.0.1:65536", "out of range"),
            ("127.0.0.1:99999999999", "out of range"),
            ("256.1.1.1:8333", "not a valid IPv4"),
            ("1.2.3:8333", "not a valid IPv4"),
            ("[::1:8333", "closing"),
            ("[::1]8333", "after ']'"),
            ("[1.2.3.4]:8333", "not an IPv6"),
            ("[::1]:", "port is missing"),
            ("2001:db8::1:8333:x", "several ':'"),
            ("host name:8333", "contains ' '"),
            ("bad..name", "empty label"),
            ("-bad.example", "'-'"),
            ("/ip4/1.2.3.4/tcp/1/p2p-circuit", "circuit address"),
            ("/ip4/1.2.3.4/tcp/1", "circuit address"),
            ("/ip4/1.2.3.4/tcpx/1", "not a valid multiaddr"),
            ("/ip4/1.2.3.4/tcp/1/p2p-circuit/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA", "relay id"),
            ("alice@ffeeddccbbaa998877665544@127.0.0.1:9000", "not hex"),
            ("00112233445566778899aabb@", "names no coordinator id"),
            ("00112233445566778899aabb@127.0.0.1:9000", "names no coordinator id"),
            ("00112233445566778899aabb@ffeeddccbbaa998877665544@127.0.0.1:0", "port 0"),
            ("00112233445566778899aabb@ffeeddccbbaa998877665544@", "empty"),
            ("0011@ffeeddccbbaa998877665544@127.0.0.1:9000", "wrong length"),
            ("00112233445566778899aabb@ffee@127.0.0.1:9000", "coordinator id"),
            ("00112233445566778899aabb@ffeeddccbbaa998877665544@a@b", "HOST:PORT, once"),
            ("tcp://127.0.0.1:1", "URL scheme"),
        ];
        for (input, needle) in cases {
            let err = input.parse::<PeerAddress>().expect_err(input);
            let msg = err.to_string();
            assert!(msg.contains(needle), "{input:?}: {msg}");
            assert!(msg.contains("accepted forms"), "{input:?}: {msg}");
        }
    }

    #[test]
    fn a_coordinator_needs_its_id() {
        let cases = [
            ("127.0.0.1:9000", "id is missing"),
            ("xyz@127.0.0.1:9000", "not hex"),
            ("ffeeddccbbaa998877665544@127.0.0.1:0", "port 0"),
            ("ffeeddccbbaa998877665544@a@b:1", "once"),
        ];
        for (input, needle) in cases {
            let msg = input
                .parse::<CoordinatorAddress>()
                .expect_err(input)
                .to_string();
            assert!(msg.contains(needle), "{input:?}: {msg}");
            assert!(msg.contains("COORDINATOR_ID@HOST:PORT"), "{input:?}: {msg}");
        }
    }
}
