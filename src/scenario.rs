//! One comparison scenario: a relay and a coordinator on public hosts, a
//! reachable-through-them node (Bob) and a connecting node (Alice), either
//! all on loopback (the demo) or each in its own namespace of the NAT lab.
//! It runs the three paths — libp2p, native, stock DCUtR — and returns their
//! outcome records. `bitpunch demo` and `bitpunch lab run` are built on it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ::libp2p::{identity, Multiaddr};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::identity::{NodeId, NodeKey};
use crate::lab::NsRuntime;
use crate::libp2p::punch::Libp2pPunchContext;
use crate::libp2p::relay::{RelayLimits, RelayServer};
use crate::libp2p::swarm::Libp2pNode;
use crate::native::client::LinkConfig;
use crate::native::coordinator::{CoordinatorServer, CoordinatorServerConfig};
use crate::native::machine::ClientConfig;
use crate::node::{Node, NodeConfig};
use crate::report::Outcome;
use crate::wire::{Network, SessionConfig};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    Libp2p,
    Native,
    StockDcutr,
}

impl PathKind {
    pub const ALL: [PathKind; 3] = [PathKind::Libp2p, PathKind::Native, PathKind::StockDcutr];

    /// The record path of this kind.
    pub fn record_path(self) -> crate::report::Path {
        match self {
            PathKind::Libp2p => crate::report::Path::Libp2p,
            PathKind::Native => crate::report::Path::Native,
            PathKind::StockDcutr => crate::report::Path::StockDcutr,
        }
    }

    /// The kind of a record's path (`direct` records count as none of them
    /// and are reported under libp2p; the matrix never makes them).
    pub fn of(record: &Outcome) -> PathKind {
        match record.path {
            crate::report::Path::Native => PathKind::Native,
            crate::report::Path::StockDcutr => PathKind::StockDcutr,
            _ => PathKind::Libp2p,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PathKind::Libp2p => "libp2p",
            PathKind::Native => "native",
            PathKind::StockDcutr => "stock-dcutr",
        }
    }
}

/// Where a role runs: here (loopback), or in a lab namespace.
#[derive(Clone, Copy)]
pub enum Place<'a> {
    Here,
    In(&'a NsRuntime),
}

impl Place<'_> {
    async fn run<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Place::Here => tokio::spawn(fut).await.expect("scenario task panicked"),
            Place::In(rt) => rt.run(fut).await,
        }
    }

    fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match self {
            Place::Here => tokio::spawn(fut),
            Place::In(rt) => rt.spawn(fut),
        }
    }
}

/// Which address families a scenario's roles speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    #[default]
    Ipv4,
    /// Every role listens and dials on its IPv6 address.
    Ipv6,
    /// The relay and the coordinator listen on both families and are named
    /// by their IPv4 address, as a user would give them; the nodes bind
    /// both families and learn their IPv6 address themselves.
    DualStack,
}

pub struct Places<'a> {
    /// Where the relay runs and the address nodes are given; with
    /// `also`, its address in the other family (a dual-stack scenario:
    /// it listens on both).
    pub relay: (Place<'a>, IpAddr),
    pub coordinator: (Place<'a>, IpAddr),
    /// Bob's bind address: `None` binds both families.
    pub bob: (Place<'a>, Option<IpAddr>),
    pub alice: Place<'a>,
    /// The relay's and the coordinator's addresses in the other family,
    /// for a dual-stack scenario.
    pub also: Option<OtherFamily>,
    /// Offer loopback and private addresses (the loopback demo).
    pub allow_private: bool,
    pub ports: Ports,
}

#[derive(Debug, Clone, Copy)]
pub struct OtherFamily {
    pub relay: IpAddr,
    pub coordinator: IpAddr,
}

#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub relay: u16,
    pub coordinator: u16,
    pub bob: u16,
    pub bob_stock: u16,
}

impl Ports {
    /// The lab: each role has its own address, so fixed ports are fine.
    pub const FIXED: Ports = Ports {
        relay: 4001,
        coordinator: 18555,
        bob: 18444,
        bob_stock: 18445,
    };
    /// Loopback: whatever is free.
    pub const ANY: Ports = Ports {
        relay: 0,
        coordinator: 0,
        bob: 0,
        bob_stock: 0,
    };
}

fn session() -> SessionConfig {
    let mut s = SessionConfig::new(Network::Regtest);
    s.handshake_timeout = Duration::from_secs(10);
    s
}

/// A node on `port` of `ip`, or of both families' wildcards.
fn node(ip: Option<IpAddr>, port: u16) -> Result<Node> {
    let mut config = NodeConfig::new(session());
    config.bind_ip = ip;
    config.port = port;
    // One peer is punched many times a minute: the budget would refuse.
    config.punch_budget = crate::punch::budget::BudgetConfig::UNLIMITED;
    Node::start(config).with_context(|| match ip {
        Some(ip) => format!("binding {ip}:{port}"),
        None => format!("binding port {port} on both families"),
    })
}

/// The running infrastructure: the addresses Alice uses, and the tasks that
/// keep everything alive (stopped on drop).
pub struct Running {
    pub circuit: Multiaddr,
    pub stock_circuit: Multiaddr,
    pub coordinator: crate::native::client::CoordinatorEndpoint,
    /// The coordinator's address in the other family (dual stack).
    pub coordinator_also: Option<SocketAddr>,
    pub bob_id: NodeId,
    allow_private: bool,
    /// What Alice binds: the family the others listen on, or both.
    alice_bind: Option<IpAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the relay, the coordinator and Bob (one node serving both paths,
/// and one in stock-DCUtR mode), and waits until Bob is reachable.
pub async fn start(places: &Places<'_>) -> Result<Running> {
    let mut tasks = Vec::new();
    let ports = places.ports;
    let (relay_place, relay_ip) = places.relay;
    let relay_also = places.also.map(|a| a.relay);
    let (relay_tx, relay_rx) = tokio::sync::oneshot::channel();
    tasks.push(relay_place.spawn(async move {
        let at =
            |ip: IpAddr| Multiaddr::from(ip).with(::libp2p::multiaddr::Protocol::Tcp(ports.relay));
        let mut listen = vec![at(relay_ip)];
        listen.extend(relay_also.map(at));
        // Named by the first family's address; the other is only listed.
        let external = relay_also.map(|_| at(relay_ip));
        match RelayServer::start(
            identity::Keypair::generate_ed25519(),
            &listen,
            external,
            RelayLimits {
                // Nodes behind symmetric NATs predict their ports with the
                // probes.
                nat_probe: true,
                ..RelayLimits::default()
            },
        )
        .await
        {
            Ok(server) => {
                let _ = relay_tx.send(Ok(server.address.clone()));
                std::future::pending::<()>().await;
                drop(server);
            }
            Err(e) => {
                let _ = relay_tx.send(Err(e));
            }
        }
    }));
    let relay = relay_rx.await.context("relay task died")??;

    let (coord_place, coord_ip) = places.coordinator;
    let coordinator_bind = match places.also {
        Some(_) => None,
        None => Some(coord_ip),
    };
    let (coord_tx, coord_rx) = tokio::sync::oneshot::channel();
    tasks.push(coord_place.spawn(async move {
        let mut config = CoordinatorServerConfig::new(session(), NodeKey::generate());
        // Alice asks for Bob many times a minute from one address.
        config.machine.requests_per_netgroup_per_minute = usize::MAX;
        config.machine.orders_per_netgroup_per_target = usize::MAX;
        // Dual stack: both wildcards.
        config.bind_ip = coordinator_bind;
        config.port = ports.coordinator;
        // Nodes behind symmetric NATs predict their ports with the probes.
        config.nat_probe = true;
        match CoordinatorServer::start(config) {
            Ok(server) => {
                let _ = coord_tx.send(Ok(crate::native::client::CoordinatorEndpoint {
                    id: server.id(),
                    addr: SocketAddr::new(
                        coord_ip,
                        server
                            .local_addrs()
                            .first()
                            .map_or(ports.coordinator, |a| a.port()),
                    ),
                }));
                std::future::pending::<()>().await;
                drop(server);
            }
            Err(e) => {
                let _ = coord_tx.send(Err(anyhow::Error::from(e)));
            }
        }
    }));
    let coordinator = coord_rx.await.context("coordinator task died")??;
    let coordinator_also = places
        .also
        .map(|a| SocketAddr::new(a.coordinator, coordinator.addr.port()));

    let (bob_place, bob_ip) = places.bob;
    let dual_stack = places.also.is_some();
    let allow_private = places.allow_private;
    let (bob_tx, bob_rx) = tokio::sync::oneshot::channel::<Result<(Multiaddr, NodeId)>>();
    let relay_for_bob = relay.clone();
    tasks.push(bob_place.spawn(async move {
        let started = async {
            let bob = node(bob_ip, ports.bob)?;
            let libp2p = Arc::new(Libp2pNode::start(
                identity::Keypair::generate_ed25519(),
                bob.shared_port().clone(),
                bob.router(),
            )?);
            let ctx = Libp2pPunchContext::for_node(&bob, libp2p.clone(), session(), allow_private);
            let key = NodeKey::generate();
            // Many tries come from one address: lift the reflection limit.
            let link_config = LinkConfig {
                session: session(),
                client: ClientConfig {
                    orders_per_target_per_minute: 10_000,
                    orders_per_minute: 10_000,
                    allow_private,
                    ..Default::default()
                },
                ping_interval: crate::native::client::LINK_PING_INTERVAL,
                refusals: None,
            };
            let link =
                crate::native::register(&bob, coordinator, &key, link_config.clone()).await?;
            // Dual stack: the same key over the other family, beside it.
            let second = match crate::native::other_family_of(&bob, coordinator, coordinator_also) {
                Some(addr) => {
                    let endpoint = crate::native::client::CoordinatorEndpoint {
                        addr,
                        ..coordinator
                    };
                    let mut config = link_config;
                    config.client.second_family = true;
                    Some(crate::native::register(&bob, endpoint, &key, config).await?)
                }
                None => None,
            };
            anyhow::Ok((bob, libp2p, ctx, key, link, second))
        };
        let (bob, libp2p, ctx, key, mut link, second) = match started.await {
            Ok(s) => s,
            Err(e) => {
                let _ = bob_tx.send(Err(e));
                return;
            }
        };
        let id = link.id;
        let (circuit_tx, mut circuit_rx) = tokio::sync::mpsc::channel(1);
        let bob_libp2p = libp2p.clone();
        let keep = tokio::spawn(crate::libp2p::keep_reservation(
            libp2p,
            relay_for_bob,
            move |c| {
                let _ = circuit_tx.try_send(c.clone());
            },
        ));
        match tokio::time::timeout(Duration::from_secs(20), circuit_rx.recv()).await {
            Ok(Some(circuit)) => {
                // A dual-stack Bob is ready once it knows its address in
                // both families, as a node that has been up a while does
                // (a fresh lab's first IPv6 connection takes a second).
                if dual_stack && !learned_ipv6(&bob_libp2p).await {
                    let _ = bob_tx.send(Err(anyhow::anyhow!(
                        "dual-stack Bob learned no IPv6 address from the relay"
                    )));
                    return;
                }
                let _ = bob_tx.send(Ok((circuit, id)));
            }
            _ => {
                let _ = bob_tx.send(Err(anyhow::anyhow!("no reservation on the relay")));
                return;
            }
        }
        let idle = Duration::from_secs(60);
        let key = Arc::new(key);
        // Orders come over the first registration; the second takes its
        // place should the first go.
        let serve_second = async {
            if let Some(mut second) = second {
                crate::native::serve_orders(&bob, &mut second, key.clone(), session(), idle, None)
                    .await;
            }
        };
        tokio::join!(
            crate::libp2p::serve_relayed(ctx, idle, None),
            crate::native::serve_orders(&bob, &mut link, key.clone(), session(), idle, None),
            serve_second,
        );
        keep.abort();
    }));
    let (circuit, bob_id) = bob_rx.await.context("Bob's task died")??;

    let (stock_tx, stock_rx) = tokio::sync::oneshot::channel::<Result<Multiaddr>>();
    let relay_for_stock = relay.clone();
    tasks.push(bob_place.spawn(async move {
        let started = async {
            let bob = node(bob_ip, ports.bob_stock)?;
            let libp2p = Arc::new(Libp2pNode::start_with(
                identity::Keypair::generate_ed25519(),
                bob.shared_port().clone(),
                bob.router(),
                crate::libp2p::swarm::Libp2pOptions::stock_dcutr(true),
            )?);
            anyhow::Ok((bob, libp2p))
        };
        let (_bob, libp2p) = match started.await {
            Ok(s) => s,
            Err(e) => {
                let _ = stock_tx.send(Err(e));
                return;
            }
        };
        let stock_tx = std::sync::Mutex::new(Some(stock_tx));
        crate::libp2p::keep_reservation(libp2p, relay_for_stock, move |c| {
            if let Some(tx) = crate::clock::lock(&stock_tx).take() {
                let _ = tx.send(Ok(c.clone()));
            }
        })
        .await;
    }));
    let stock_circuit = tokio::time::timeout(Duration::from_secs(20), stock_rx)
        .await
        .context("no stock-DCUtR reservation in time")?
        .context("stock Bob's task died")??;
    Ok(Running {
        circuit,
        stock_circuit,
        coordinator,
        coordinator_also,
        bob_id,
        allow_private,
        alice_bind: match places.also {
            Some(_) => None,
            None if places.relay.1.is_ipv6() => Some(std::net::Ipv6Addr::UNSPECIFIED.into()),
            None => Some(Ipv4Addr::UNSPECIFIED.into()),
        },
        tasks,
    })
}

/// Waits up to 10 s for identify to tell `libp2p` an IPv6 address of its.
async fn learned_ipv6(libp2p: &Libp2pNode) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if libp2p
            .observed()
            .iter()
            .any(crate::libp2p::swarm::addr_is_ipv6)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// One try of `path` from Alice, from a fresh port, as `bitpunch connect`
/// does it.
pub async fn try_path(running: &Running, alice: Place<'_>, path: PathKind) -> Outcome {
    let allow_private = running.allow_private;
    let any = running.alice_bind;
    let circuit = running.circuit.clone();
    let stock_circuit = running.stock_circuit.clone();
    let (coordinator, bob_id) = (running.coordinator, running.bob_id);
    let coordinator_also = running.coordinator_also;
    alice
        .run(async move {
            let alice = match node(any, 0) {
                Ok(n) => n,
                Err(e) => {
                    return Outcome::failed(
                        path.record_path(),
                        crate::wire::SessionRole::Initiator,
                        crate::wire::Stage::Connect,
                        format!("{e:#}"),
                    )
                }
            };
            match path {
                PathKind::Libp2p | PathKind::StockDcutr => {
                    let stock = path == PathKind::StockDcutr;
                    let libp2p = match Libp2pNode::start_with(
                        identity::Keypair::generate_ed25519(),
                        alice.shared_port().clone(),
                        alice.router(),
                        crate::libp2p::swarm::Libp2pOptions::stock_dcutr(stock),
                    ) {
                        Ok(n) => Arc::new(n),
                        Err(e) => {
                            return Outcome::failed(
                                path.record_path(),
                                crate::wire::SessionRole::Initiator,
                                crate::wire::Stage::Connect,
                                format!("{e:#}"),
                            )
                        }
                    };
                    if stock {
                        return crate::libp2p::stock::connect(
                            &libp2p,
                            stock_circuit,
                            // DCUtR gives up by itself well within this.
                            Duration::from_secs(15),
                        )
                        .await;
                    }
                    let ctx =
                        Libp2pPunchContext::for_node(&alice, libp2p, session(), allow_private);
                    crate::libp2p::connect_circuit(&ctx, circuit).await.record
                }
                PathKind::Native => {
                    let key = Arc::new(NodeKey::generate());
                    crate::native::connect(
                        &alice,
                        (coordinator, coordinator_also),
                        key,
                        session(),
                        bob_id,
                        allow_private,
                    )
                    .await
                }
            }
        })
        .await
}

/// The whole scenario in the NAT lab: the `TwoNats` topology, a runtime in
/// each host, and the running infrastructure. Fields drop in order: the
/// tasks, then the runtimes (whose threads hold the namespaces), then the
/// lab.
pub struct InLab {
    pub running: Running,
    alice_rt: NsRuntime,
    _bob_rt: NsRuntime,
    _coordinator_rt: NsRuntime,
    _relay_rt: NsRuntime,
    pub topology: crate::lab::TwoNats,
    _lab: crate::lab::Lab,
}

impl InLab {
    pub async fn start(
        nat_alice: crate::lab::NatProfile,
        nat_bob: crate::lab::NatProfile,
        shape: crate::lab::LinkShape,
    ) -> Result<InLab> {
        let (lab, t) = crate::lab::Lab::two_nats(nat_alice, nat_bob, shape)?;
        Self::start_family(lab, t, Family::Ipv4)
            .await
            .with_context(|| format!("starting the scenario for {nat_alice} vs {nat_bob}"))
    }

    /// Each NAT's link shaped on its own, over `family` (over IPv6 every
    /// role listens and dials on its IPv6 address, and the routers are
    /// stateful firewalls, not NATs: `NatProfile::firewall6`).
    pub async fn start_shaped(
        nat_alice: crate::lab::NatProfile,
        nat_bob: crate::lab::NatProfile,
        (shape_alice, shape_bob): (crate::lab::LinkShape, crate::lab::LinkShape),
        family: Family,
    ) -> Result<InLab> {
        let (lab, t) =
            crate::lab::Lab::two_nats_shaped(nat_alice, nat_bob, shape_alice, shape_bob)?;
        Self::start_family(lab, t, family).await.with_context(|| {
            format!("starting the {family:?} scenario for {nat_alice} vs {nat_bob}")
        })
    }

    /// Alice and Bob behind one NAT ([`crate::lab::Lab::one_nat`]).
    pub async fn start_behind_one_nat(
        nat: crate::lab::NatProfile,
        shape: crate::lab::LinkShape,
    ) -> Result<InLab> {
        Self::start_behind_one_router(nat, shape, Family::Ipv4).await
    }

    /// Alice and Bob behind one router, over IPv4 (its NAT) or IPv6 (its
    /// firewall; both hosts in one /64).
    pub async fn start_behind_one_router(
        nat: crate::lab::NatProfile,
        shape: crate::lab::LinkShape,
        family: Family,
    ) -> Result<InLab> {
        let (lab, t) = crate::lab::Lab::one_nat(nat, shape)?;
        Self::start_family(lab, t, family)
            .await
            .with_context(|| format!("starting the {family:?} scenario behind one {nat}"))
    }

    async fn start_family(
        lab: crate::lab::Lab,
        t: crate::lab::TwoNats,
        family: Family,
    ) -> Result<InLab> {
        let ip6_of = |host: &crate::lab::Host| -> Result<IpAddr> {
            host.ip6.map(IpAddr::from).with_context(|| {
                format!("{} has no IPv6 address (behind a carrier NAT?)", host.name)
            })
        };
        let ip_of = |host: &crate::lab::Host| -> Result<IpAddr> {
            match family {
                Family::Ipv6 => ip6_of(host),
                Family::Ipv4 | Family::DualStack => Ok(host.ip.into()),
            }
        };
        let bind: Option<IpAddr> = match family {
            Family::Ipv4 => Some(Ipv4Addr::UNSPECIFIED.into()),
            Family::Ipv6 => Some(std::net::Ipv6Addr::UNSPECIFIED.into()),
            Family::DualStack => None,
        };
        if family != Family::Ipv4 {
            ip6_of(&t.alice)?;
            ip6_of(&t.bob)?;
        }
        let also = match family {
            Family::DualStack => Some(OtherFamily {
                relay: ip6_of(&t.relay)?,
                coordinator: ip6_of(&t.coordinator)?,
            }),
            Family::Ipv4 | Family::Ipv6 => None,
        };
        let (relay_rt, coordinator_rt, bob_rt, alice_rt) = (
            lab.runtime(&t.relay)?,
            lab.runtime(&t.coordinator)?,
            lab.runtime(&t.bob)?,
            lab.runtime(&t.alice)?,
        );
        let places = Places {
            relay: (Place::In(&relay_rt), ip_of(&t.relay)?),
            coordinator: (Place::In(&coordinator_rt), ip_of(&t.coordinator)?),
            bob: (Place::In(&bob_rt), bind),
            alice: Place::In(&alice_rt),
            also,
            allow_private: false,
            ports: Ports::FIXED,
        };
        let running = start(&places).await?;
        Ok(InLab {
            running,
            alice_rt,
            _bob_rt: bob_rt,
            _coordinator_rt: coordinator_rt,
            _relay_rt: relay_rt,
            topology: t,
            _lab: lab,
        })
    }

    pub fn alice(&self) -> Place<'_> {
        Place::In(&self.alice_rt)
    }

    pub async fn try_path(&self, path: PathKind) -> Outcome {
        try_path(&self.running, self.alice(), path).await
    }
}
