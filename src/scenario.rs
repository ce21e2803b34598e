//! One comparison scenario: a relay and a coordinator on public hosts, a
//! reachable-through-them node (Bob) and a connecting node (Alice), either
//! all on loopback (the demo) or each in its own namespace of the NAT lab.
//! It runs the three paths — libp2p, native, stock DCUtR — and returns their
//! outcome records. `bitpunch demo` and `bitpunch lab run` are built on it.

use std::net::{IpAddr, Ipv4Addr};
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

pub struct Places<'a> {
    pub relay: (Place<'a>, IpAddr),
    pub coordinator: (Place<'a>, IpAddr),
    pub bob: (Place<'a>, IpAddr),
    pub alice: Place<'a>,
    /// Offer loopback and private addresses (the loopback demo).
    pub allow_private: bool,
    pub ports: Ports,
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

fn node(ip: IpAddr, port: u16) -> Result<Node> {
    let mut config = NodeConfig::new(session());
    config.bind_ip = Some(ip);
    config.port = port;
    // One peer is punched many times a minute: the budget would refuse.
    config.punch_budget = crate::punch::budget::BudgetConfig::UNLIMITED;
    Node::start(config).with_context(|| format!("binding {ip}:{port}"))
}

/// The running infrastructure: the addresses Alice uses, and the tasks that
/// keep everything alive (stopped on drop).
pub struct Running {
    pub circuit: Multiaddr,
    pub stock_circuit: Multiaddr,
    pub coordinator: crate::native::client::CoordinatorEndpoint,
    pub bob_id: NodeId,
    allow_private: bool,
    /// Alice binds the family the others listen on (IPv6 in an IPv6 run).
    ipv6: bool,
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
    let (relay_tx, relay_rx) = tokio::sync::oneshot::channel();
    tasks.push(relay_place.spawn(async move {
        let listen =
            Multiaddr::from(relay_ip).with(::libp2p::multiaddr::Protocol::Tcp(ports.relay));
        match RelayServer::start(
            identity::Keypair::generate_ed25519(),
            listen,
            None,
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
    let (coord_tx, coord_rx) = tokio::sync::oneshot::channel();
    tasks.push(coord_place.spawn(async move {
        let mut config = CoordinatorServerConfig::new(session(), NodeKey::generate());
        // Alice asks for Bob many times a minute from one address.
        config.machine.requests_per_netgroup_per_minute = usize::MAX;
        config.machine.orders_per_netgroup_per_target = usize::MAX;
        config.bind_ip = Some(coord_ip);
        config.port = ports.coordinator;
        // Nodes behind symmetric NATs predict their ports with the probes.
        config.nat_probe = true;
        match CoordinatorServer::start(config) {
            Ok(server) => {
                let _ = coord_tx.send(Ok(crate::native::client::CoordinatorEndpoint {
                    id: server.id(),
                    addr: server.local_addrs()[0],
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

    let (bob_place, bob_ip) = places.bob;
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
            let link = crate::native::register(&bob, coordinator, &key, link_config).await?;
            anyhow::Ok((bob, libp2p, ctx, key, link))
        };
        let (bob, libp2p, ctx, key, mut link) = match started.await {
            Ok(s) => s,
            Err(e) => {
                let _ = bob_tx.send(Err(e));
                return;
            }
        };
        let id = link.id;
        let (circuit_tx, mut circuit_rx) = tokio::sync::mpsc::channel(1);
        let keep = tokio::spawn(crate::libp2p::keep_reservation(
            libp2p,
            relay_for_bob,
            move |c| {
                let _ = circuit_tx.try_send(c.clone());
            },
        ));
        match tokio::time::timeout(Duration::from_secs(20), circuit_rx.recv()).await {
            Ok(Some(circuit)) => {
                let _ = bob_tx.send(Ok((circuit, id)));
            }
            _ => {
                let _ = bob_tx.send(Err(anyhow::anyhow!("no reservation on the relay")));
                return;
            }
        }
        let idle = Duration::from_secs(60);
        tokio::join!(
            crate::libp2p::serve_relayed(ctx, idle, None),
            crate::native::serve_orders(&bob, &mut link, Arc::new(key), session(), idle, None),
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
            if let Some(tx) = stock_tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
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
        bob_id,
        allow_private,
        ipv6: places.relay.1.is_ipv6(),
        tasks,
    })
}

/// One try of `path` from Alice, from a fresh port, as `bitpunch connect`
/// does it.
pub async fn try_path(running: &Running, alice: Place<'_>, path: PathKind) -> Outcome {
    let allow_private = running.allow_private;
    let any: IpAddr = if running.ipv6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let circuit = running.circuit.clone();
    let stock_circuit = running.stock_circuit.clone();
    let (coordinator, bob_id) = (running.coordinator, running.bob_id);
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
                        coordinator,
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
        Self::start_family(lab, t, false)
            .await
            .with_context(|| format!("starting the scenario for {nat_alice} vs {nat_bob}"))
    }

    /// Each NAT's link shaped on its own; over IPv6 when `ipv6` (every
    /// role listens and dials on its IPv6 address, and the routers are
    /// stateful firewalls, not NATs: `NatProfile::firewall6`).
    pub async fn start_shaped(
        nat_alice: crate::lab::NatProfile,
        nat_bob: crate::lab::NatProfile,
        (shape_alice, shape_bob): (crate::lab::LinkShape, crate::lab::LinkShape),
        ipv6: bool,
    ) -> Result<InLab> {
        let (lab, t) =
            crate::lab::Lab::two_nats_shaped(nat_alice, nat_bob, shape_alice, shape_bob)?;
        let family = if ipv6 { "IPv6" } else { "IPv4" };
        Self::start_family(lab, t, ipv6)
            .await
            .with_context(|| format!("starting the {family} scenario for {nat_alice} vs {nat_bob}"))
    }

    /// Alice and Bob behind one NAT ([`crate::lab::Lab::one_nat`]).
    pub async fn start_behind_one_nat(
        nat: crate::lab::NatProfile,
        shape: crate::lab::LinkShape,
    ) -> Result<InLab> {
        Self::start_behind_one_router(nat, shape, false).await
    }

    /// Alice and Bob behind one router, over IPv4 (its NAT) or IPv6 (its
    /// firewall; both hosts in one /64).
    pub async fn start_behind_one_router(
        nat: crate::lab::NatProfile,
        shape: crate::lab::LinkShape,
        ipv6: bool,
    ) -> Result<InLab> {
        let (lab, t) = crate::lab::Lab::one_nat(nat, shape)?;
        let family = if ipv6 { "IPv6" } else { "IPv4" };
        Self::start_family(lab, t, ipv6)
            .await
            .with_context(|| format!("starting the {family} scenario behind one {nat}"))
    }

    async fn start_family(
        lab: crate::lab::Lab,
        t: crate::lab::TwoNats,
        ipv6: bool,
    ) -> Result<InLab> {
        let ip_of = |host: &crate::lab::Host| -> Result<IpAddr> {
            if !ipv6 {
                return Ok(host.ip.into());
            }
            host.ip6.map(IpAddr::from).with_context(|| {
                format!("{} has no IPv6 address (behind a carrier NAT?)", host.name)
            })
        };
        let any: IpAddr = if ipv6 {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        ip_of(&t.alice)?;
        ip_of(&t.bob)?;
        let (relay_rt, coordinator_rt, bob_rt, alice_rt) = (
            lab.runtime(&t.relay)?,
            lab.runtime(&t.coordinator)?,
            lab.runtime(&t.bob)?,
            lab.runtime(&t.alice)?,
        );
        let places = Places {
            relay: (Place::In(&relay_rt), ip_of(&t.relay)?),
            coordinator: (Place::In(&coordinator_rt), ip_of(&t.coordinator)?),
            bob: (Place::In(&bob_rt), any),
            alice: Place::In(&alice_rt),
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
