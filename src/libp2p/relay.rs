//! The relay: rust-libp2p's circuit relay v2 server, with identify and ping,
//! on libp2p's own TCP transport (a relay is reachable and punches nothing).

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use ::libp2p::multiaddr::Protocol;
use ::libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use ::libp2p::{
    identify, identity, noise, ping, relay, tcp, yamux, Multiaddr, PeerId, SwarmBuilder,
};
use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::task::JoinHandle;

pub use super::caps::ConnectionCaps;

#[derive(NetworkBehaviour)]
struct RelayBehaviour {
    per_ip: super::ip_admission::IpAdmission,
    limits: ::libp2p::connection_limits::Behaviour,
    memory: ::libp2p::memory_connection_limits::Behaviour,
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// Limits of the relay; defaults are rust-libp2p's, rate limits included.
#[derive(Clone)]
pub struct RelayLimits {
    pub max_reservations: usize,
    pub max_reservations_per_peer: usize,
    pub reservation_duration: Duration,
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    pub max_circuit_duration: Duration,
    pub max_circuit_bytes: u64,
    /// (count, per interval) per peer and per IP for reservations and for
    /// circuits; `None` turns rate limiting off (benchmarks only).
    pub rate_limits: Option<RateLimits>,
    /// Caps on connections (docs/security.md).
    pub caps: super::caps::ConnectionCaps,
    /// Caps per IP and per netgroup (the total is `caps`').
    pub admission: crate::net::AdmissionConfig,
    /// rust-libp2p's relay, swarm, identify and ping metrics (`--metrics`).
    pub metrics: Option<std::sync::Arc<::libp2p::metrics::Metrics>>,
    /// Answer NAT probes on each listen port + 1, as coordinators do
    /// (crate::nat): a node behind a symmetric NAT predicts its punch's
    /// port from them.
    pub nat_probe: bool,
}

impl std::fmt::Debug for RelayLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayLimits")
            .field("max_reservations", &self.max_reservations)
            .field("max_circuits", &self.max_circuits)
            .field("max_circuit_duration", &self.max_circuit_duration)
            .field("max_circuit_bytes", &self.max_circuit_bytes)
            .field("rate_limits", &self.rate_limits)
            .field("caps", &self.caps)
            .field("admission", &self.admission)
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct RateLimits {
    pub reservations_per_peer: (u32, Duration),
    pub reservations_per_ip: (u32, Duration),
    pub circuits_per_peer: (u32, Duration),
    pub circuits_per_ip: (u32, Duration),
}

impl Default for RelayLimits {
    fn default() -> Self {
        let d = relay::Config::default();
        RelayLimits {
            max_reservations: d.max_reservations,
            max_reservations_per_peer: d.max_reservations_per_peer,
            reservation_duration: d.reservation_duration,
            max_circuits: d.max_circuits,
            max_circuits_per_peer: d.max_circuits_per_peer,
            max_circuit_duration: d.max_circuit_duration,
            max_circuit_bytes: d.max_circuit_bytes,
            rate_limits: Some(RateLimits {
                reservations_per_peer: (30, Duration::from_secs(120)),
                reservations_per_ip: (60, Duration::from_secs(60)),
                circuits_per_peer: (30, Duration::from_secs(120)),
                circuits_per_ip: (60, Duration::from_secs(60)),
            }),
            caps: super::caps::ConnectionCaps::RELAY,
            admission: crate::net::AdmissionConfig::RELAY,
            metrics: None,
            nat_probe: false,
        }
    }
}

impl RelayLimits {
    fn config(&self) -> relay::Config {
        let mut config = relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: self.reservation_duration,
            reservation_rate_limiters: Vec::new(),
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            circuit_src_rate_limiters: Vec::new(),
        };
        if let Some(r) = &self.rate_limits {
            let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            config = config
                .reservation_rate_per_peer(nz(r.reservations_per_peer.0), r.reservations_per_peer.1)
                .reservation_rate_per_ip(nz(r.reservations_per_ip.0), r.reservations_per_ip.1)
                .circuit_src_per_peer(nz(r.circuits_per_peer.0), r.circuits_per_peer.1)
                .circuit_src_per_ip(nz(r.circuits_per_ip.0), r.circuits_per_ip.1);
        }
        config
    }
}

/// An ed25519 key kept in `path` (protobuf encoding), created on first use.
pub fn load_or_create_keypair(path: &Path) -> Result<identity::Keypair> {
    if path.exists() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return identity::Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} is not a libp2p key", path.display()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key = identity::Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().context("encoding the key")?;
    crate::identity::write_private(path, &bytes)?;
    Ok(key)
}

pub struct RelayServer {
    pub peer_id: PeerId,
    /// The relay's address with `/p2p/<id>`: what nodes are given.
    pub address: Multiaddr,
    task: JoinHandle<()>,
    _probes: Vec<crate::native::AbortOnDrop>,
}

impl Drop for RelayServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

fn is_ipv6_wildcard(addr: &Multiaddr) -> bool {
    matches!(addr.iter().next(), Some(Protocol::Ip6(ip)) if ip.is_unspecified())
}

impl RelayServer {
    /// Listens on `listen` and announces `external` (default: the listen
    /// address, which must then be a specific one). rust-libp2p's relay
    /// refuses every reservation until it has a confirmed external address.
    pub async fn start(
        keypair: identity::Keypair,
        listen: &[Multiaddr],
        external: Option<Multiaddr>,
        limits: RelayLimits,
    ) -> Result<RelayServer> {
        let mut swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|key| RelayBehaviour {
                per_ip: super::ip_admission::IpAdmission::new(limits.admission),
                limits: limits.caps.connection_limits(),
                memory: limits.caps.memory_limits(),
                relay: relay::Behaviour::new(key.public().to_peer_id(), limits.config()),
                identify: identify::Behaviour::new(
                    identify::Config::new("/ipfs/id/1.0.0".into(), key.public())
                        .with_agent_version(super::swarm::AGENT.into()),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
            })?
            .with_swarm_config(|c| {
                // The STOP stream to the reserving peer carries its request
                // with the protocol proposal: a circuit opens a round trip
                // sooner.
                c.with_idle_connection_timeout(Duration::from_secs(300))
                    .with_substream_upgrade_protocol_override(
                        libp2p::core::upgrade::Version::V1Lazy,
                    )
            })
            .build();
        // Both families where asked (the default), so that a dual-stack
        // node learns how each sees it. A host without IPv6 still relays
        // over IPv4: only the IPv6 wildcard may fail quietly.
        let mut listening = false;
        for addr in listen {
            match swarm.listen_on(addr.clone()) {
                Ok(_) => listening = true,
                Err(e) if is_ipv6_wildcard(addr) => {
                    tracing::warn!(%addr, error = %e, "relay: no IPv6 listener")
                }
                Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
            }
        }
        anyhow::ensure!(listening, "no address to listen on");
        // The actual addresses (port 0 resolved; one per interface for a
        // wildcard) come as events, all at once.
        let mut bound = Vec::new();
        loop {
            let wait = if bound.is_empty() {
                Duration::from_secs(10)
            } else {
                Duration::from_millis(200)
            };
            match tokio::time::timeout(wait, swarm.select_next_some()).await {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => bound.push(address),
                Ok(SwarmEvent::ListenerError { error, .. }) => {
                    anyhow::bail!("relay listener: {error}")
                }
                Ok(_) => {}
                Err(_) if bound.is_empty() => anyhow::bail!("no listen address within 10 s"),
                Err(_) => break,
            }
        }
        // What nodes dial: --external; else every bound address but
        // loopback (a wildcard on a host with a public interface), or
        // loopback when there is nothing else. Addresses peers observe are
        // added later (see `observed`).
        let learn = external.is_none();
        let externals: Vec<Multiaddr> = match external {
            Some(e) => vec![e],
            None => {
                let outside: Vec<Multiaddr> =
                    bound.iter().filter(|a| !is_loopback(a)).cloned().collect();
                if outside.is_empty() {
                    bound.clone()
                } else {
                    outside
                }
            }
        };
        for e in &externals {
            swarm.add_external_address(e.clone());
        }
        let mut probes = Vec::new();
        if limits.nat_probe {
            for socket in bound.iter().filter_map(super::transport::socket_addr) {
                let Some(probe) = crate::nat::probe_server(socket) else {
                    continue;
                };
                match crate::net::listen_reusable(probe) {
                    Ok(listener) => probes.push(crate::native::AbortOnDrop(
                        tokio::spawn(crate::nat::serve_probes(listener)).abort_handle(),
                    )),
                    Err(e) => {
                        tracing::warn!(port = probe.port(), error = %e, "no NAT probes (port + 1 is not free)")
                    }
                }
            }
        }
        let peer_id = *swarm.local_peer_id();
        let Some(first) = externals.first() else {
            anyhow::bail!("no address to announce");
        };
        let address = first.clone().with(Protocol::P2p(peer_id));
        let metrics = limits.metrics.clone();
        let mut observed = Observed::default();
        let task = tokio::spawn(async move {
            loop {
                let event = swarm.select_next_some().await;
                if let Some(m) = &metrics {
                    use ::libp2p::metrics::Recorder;
                    match &event {
                        SwarmEvent::Behaviour(RelayBehaviourEvent::Relay(e)) => m.record(e),
                        SwarmEvent::Behaviour(RelayBehaviourEvent::Identify(e)) => m.record(e),
                        SwarmEvent::Behaviour(RelayBehaviourEvent::Ping(e)) => m.record(e),
                        _ => {}
                    }
                    m.record(&event);
                }
                match event {
                    SwarmEvent::Behaviour(RelayBehaviourEvent::Relay(event)) => {
                        log_relay_event(&event)
                    }
                    SwarmEvent::Behaviour(RelayBehaviourEvent::Identify(
                        identify::Event::Received { peer_id, info, .. },
                    )) if learn => {
                        if let Some(confirmed) = observed.report(peer_id, info.observed_addr) {
                            tracing::info!(address = %confirmed, "two peers see the relay here: announcing it");
                            swarm.add_external_address(confirmed);
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(RelayServer {
            peer_id,
            address,
            task,
            _probes: probes,
        })
    }
}

/// Addresses peers say they see the relay at (identify), announced once two
/// different peers agree: one peer alone could make the relay advertise an
/// address of its choosing. Bounded: a few addresses, a few reporters each.
#[derive(Default)]
struct Observed {
    reports: std::collections::HashMap<Multiaddr, std::collections::HashSet<PeerId>>,
    announced: std::collections::HashSet<Multiaddr>,
}

impl Observed {
    const MAX_ADDRESSES: usize = 64;

    fn report(&mut self, peer: PeerId, observed: Multiaddr) -> Option<Multiaddr> {
        if self.announced.contains(&observed) || is_loopback(&observed) {
            return None;
        }
        if !self.reports.contains_key(&observed) && self.reports.len() >= Self::MAX_ADDRESSES {
            return None;
        }
        let peers = self.reports.entry(observed.clone()).or_default();
        if peers.len() < 2 {
            peers.insert(peer);
        }
        if peers.len() >= 2 && self.announced.len() < Self::MAX_ADDRESSES {
            self.reports.remove(&observed);
            self.announced.insert(observed.clone());
            return Some(observed);
        }
        None
    }
}

fn log_relay_event(event: &relay::Event) {
    use relay::Event::*;
    match event {
        ReservationReqAccepted {
            src_peer_id,
            renewed,
        } => {
            tracing::info!(peer = %src_peer_id, renewed, "reservation accepted")
        }
        ReservationReqDenied { src_peer_id, .. } => {
            tracing::warn!(peer = %src_peer_id, "reservation denied")
        }
        ReservationTimedOut { src_peer_id } => {
            tracing::info!(peer = %src_peer_id, "reservation timed out")
        }
        CircuitReqAccepted {
            src_peer_id,
            dst_peer_id,
        } => {
            tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "circuit opened")
        }
        CircuitReqDenied {
            src_peer_id,
            dst_peer_id,
            ..
        } => {
            tracing::warn!(src = %src_peer_id, dst = %dst_peer_id, "circuit denied")
        }
        CircuitClosed {
            src_peer_id,
            dst_peer_id,
            error,
        } => {
            tracing::info!(src = %src_peer_id, dst = %dst_peer_id, error = ?error, "circuit closed")
        }
        other => tracing::debug!(?other, "relay event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observed_address_is_announced_once_two_peers_agree() {
        let mut observed = Observed::default();
        let addr: Multiaddr = "/ip4/203.0.113.7/tcp/4001".parse().unwrap();
        let (a, b) = (PeerId::random(), PeerId::random());
        // One peer, however often, is not enough.
        assert_eq!(observed.report(a, addr.clone()), None);
        assert_eq!(observed.report(a, addr.clone()), None);
        assert_eq!(observed.report(b, addr.clone()), Some(addr.clone()));
        // Once.
        assert_eq!(observed.report(PeerId::random(), addr), None);
        // Never loopback.
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        assert_eq!(observed.report(a, lo.clone()), None);
        assert_eq!(observed.report(b, lo), None);
        // A peer naming many addresses fills a bounded table.
        for port in 0..1000u16 {
            let claimed: Multiaddr = format!("/ip4/198.51.100.1/tcp/{port}").parse().unwrap();
            observed.report(a, claimed);
        }
        assert!(observed.reports.len() <= Observed::MAX_ADDRESSES);
    }
}
