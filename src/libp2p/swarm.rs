//! A node's libp2p side: a swarm on the shared-port transport with the relay
//! client, identify, ping and `libp2p-stream` (for the exchange), run by one
//! task that others talk to through a handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::libp2p::core::upgrade::Version;
use ::libp2p::core::{ConnectedPoint, Transport};
use ::libp2p::multiaddr::Protocol;
use ::libp2p::swarm::behaviour::toggle::Toggle;
use ::libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use ::libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use ::libp2p::{
    dcutr, identify, identity, noise, ping, relay, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder,
};
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::transport::SharedPortTransport;
use crate::net::stream::ByteCounters;
use crate::net::{Route, Router, SharedPort};

pub const AGENT: &str = concat!("bitpunch/", env!("CARGO_PKG_VERSION"));

/// libp2p pings on every connection (rust-libp2p's defaults, stated), and
/// the first failure it reports closes the connection; the reservation is
/// then taken again. rust-libp2p's ping handler keeps a connection's first
/// failure to itself, and after a timeout the next ping fails when its
/// stream negotiation times out (the swarm's 10 s upgrade timeout), so a
/// dead relay is noticed within (15 + 20) + 15 + 10 = 60 s. Waiting for a
/// second reported failure took a black-holed relay's loss from 13 s to
/// 23 s in `tests/third_parties_lab.rs` (1 s pings): 85 s in use.
const PING_INTERVAL: Duration = Duration::from_secs(15);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
const PING_FAILURES_TO_CLOSE: u32 = 1;

/// How a node's swarm runs.
#[derive(Clone)]
pub struct Libp2pOptions {
    /// Run rust-libp2p's DCUtR instead of leaving relayed connections to
    /// our exchange (the yardstick).
    pub stock_dcutr: bool,
    /// libp2p ping on every connection; two failures in a row close it.
    /// Shorter in tests that black-hole a relay.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// rust-libp2p's own metrics (swarm, identify, ping, DCUtR), recorded
    /// into the node's registry (`--metrics`).
    pub metrics: Option<Arc<::libp2p::metrics::Metrics>>,
}

impl Default for Libp2pOptions {
    fn default() -> Self {
        Libp2pOptions {
            stock_dcutr: false,
            ping_interval: PING_INTERVAL,
            ping_timeout: PING_TIMEOUT,
            metrics: None,
        }
    }
}

impl Libp2pOptions {
    pub fn stock_dcutr(stock_dcutr: bool) -> Self {
        Libp2pOptions {
            stock_dcutr,
            ..Default::default()
        }
    }
}

#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    limits: ::libp2p::connection_limits::Behaviour,
    memory: ::libp2p::memory_connection_limits::Behaviour,
    relay_client: relay::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
    /// rust-libp2p's own DCUtR, only in `--stock-dcutr` mode: the yardstick.
    /// It upgrades relayed connections to direct libp2p ones by itself, so
    /// it never runs beside our exchange.
    dcutr: Toggle<dcutr::Behaviour>,
}

#[derive(Debug, Clone)]
pub enum Libp2pEvent {
    /// A relay holds a slot for us; others reach us at `circuit`.
    Reserved {
        relay: PeerId,
        circuit: Multiaddr,
        renewal: bool,
    },
    /// A relay refused or dropped our reservation, or the connection to it
    /// went away.
    ReservationLost {
        relay_addr: Multiaddr,
        reason: String,
    },
    /// Someone reached us through a relay: the moment to start an exchange.
    RelayedInbound { peer: PeerId, via: Multiaddr },
    /// A relay (or anyone) told us where it sees us.
    Observed { addr: Multiaddr },
    /// A connection made to learn our address in the other family failed
    /// before telling it.
    SecondFamilySettled,
    /// Any libp2p connection came up (stock DCUtR mode watches for the
    /// direct one).
    Connected {
        peer: PeerId,
        connection: ConnectionId,
        remote: Multiaddr,
        relayed: bool,
    },
    /// Stock DCUtR finished, with the direct connection or an error.
    Dcutr {
        peer: PeerId,
        result: Result<ConnectionId, String>,
    },
    /// A ping round trip on one connection.
    Pinged {
        peer: PeerId,
        connection: ConnectionId,
        rtt: Duration,
    },
}

enum Command {
    Dial {
        addr: Multiaddr,
        peer: PeerId,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Listen {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Disconnect(PeerId),
}

#[derive(Default)]
struct Shared {
    observed: Vec<Multiaddr>,
    /// Connections opened to learn how the other family sees us (dual
    /// stack) whose identify has not come yet: an offer made now would
    /// lack that family.
    second_family_pending: std::collections::HashSet<ConnectionId>,
    /// Exchanges we wait for, by the peer that should open them.
    awaited: HashMap<PeerId, oneshot::Sender<::libp2p::Stream>>,
}

/// The handle to the swarm task; dropping it stops the task.
pub struct Libp2pNode {
    pub peer_id: PeerId,
    pub keypair: identity::Keypair,
    commands: mpsc::Sender<Command>,
    pub control: libp2p_stream::Control,
    events: broadcast::Sender<Libp2pEvent>,
    shared: Arc<Mutex<Shared>>,
    /// Every byte of every libp2p connection (relay traffic, mostly).
    pub counters: Arc<ByteCounters>,
    task: JoinHandle<()>,
}

impl Drop for Libp2pNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Libp2pNode {
    /// Starts the swarm on `port`; inbound libp2p connections come from
    /// `router`'s libp2p route.
    pub fn start(
        keypair: identity::Keypair,
        port: Arc<SharedPort>,
        router: &Arc<Router>,
    ) -> anyhow::Result<Libp2pNode> {
        Self::start_with(keypair, port, router, Libp2pOptions::default())
    }

    pub fn start_with(
        keypair: identity::Keypair,
        port: Arc<SharedPort>,
        router: &Arc<Router>,
        options: Libp2pOptions,
    ) -> anyhow::Result<Libp2pNode> {
        let stock_dcutr = options.stock_dcutr;
        // Stock DCUtR mode stays what rust-libp2p does by itself: it learns
        // only the family it reached the relay over.
        let families = match stock_dcutr {
            true => Families::default(),
            false => Families::of(port.local_addrs().iter().map(|a| a.is_ipv6())),
        };
        let metrics = options.metrics.clone();
        let counters: Arc<ByteCounters> = Arc::default();
        let inbound = router.subscribe(Route::Libp2p, 64);
        let transport = SharedPortTransport::new(port.clone(), inbound, counters.clone());
        let mut swarm: Swarm<NodeBehaviour> = SwarmBuilder::with_existing_identity(keypair.clone())
            .with_tokio()
            .with_other_transport(|key| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    transport
                        .upgrade(Version::V1Lazy)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default()),
                )
            })?
            .with_relay_client(noise::Config::new, yamux::Config::default)?
            .with_behaviour(|key, relay_client| NodeBehaviour {
                limits: super::caps::ConnectionCaps::NODE.connection_limits(),
                memory: super::caps::ConnectionCaps::NODE.memory_limits(),
                relay_client,
                identify: identify::Behaviour::new(
                    identify::Config::new("/ipfs/id/1.0.0".into(), key.public())
                        .with_agent_version(AGENT.into()),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(options.ping_interval)
                        .with_timeout(options.ping_timeout),
                ),
                stream: libp2p_stream::Behaviour::new(),
                dcutr: Toggle::from(
                    stock_dcutr.then(|| dcutr::Behaviour::new(key.public().to_peer_id())),
                ),
            })?
            .with_swarm_config(|c| {
                let c = c.with_idle_connection_timeout(Duration::from_secs(120));
                // Our streams each speak one protocol: proposing it and
                // writing at once (multistream-select's lazy mode) saves the
                // round trip of waiting for the confirmation on the HOP
                // stream and on the DCUtR exchange's stream, two of them
                // before the punch. Stock mode keeps rust-libp2p's default,
                // the yardstick being what it does out of the box.
                match stock_dcutr {
                    true => c,
                    false => c.with_substream_upgrade_protocol_override(Version::V1Lazy),
                }
            })
            .build();
        let listen = super::transport::multiaddr(std::net::SocketAddr::new(
            std::net::Ipv4Addr::UNSPECIFIED.into(),
            port.port(),
        ));
        swarm.listen_on(listen)?;
        let peer_id = *swarm.local_peer_id();
        let control = swarm.behaviour().stream.new_control();
        let (commands, command_rx) = mpsc::channel(16);
        let (events, _) = broadcast::channel(256);
        let shared: Arc<Mutex<Shared>> = Arc::default();
        let (events_for_task, shared_for_task) = (events.clone(), shared.clone());
        let mut incoming = control
            .clone()
            .accept(super::exchange::PROTOCOL)
            .map_err(|e| anyhow::anyhow!("registering the exchange protocol: {e}"))?;
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            let accept = async move {
                while let Some((peer, stream)) = incoming.next().await {
                    let waiter = crate::clock::lock(&accept_shared).awaited.remove(&peer);
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(stream);
                        }
                        // Only the side that dialed through the relay answers
                        // an exchange, and only with the peer it dialed.
                        None => tracing::info!(%peer, "refusing an exchange nobody here asked for"),
                    }
                }
            };
            tokio::join!(
                drive(
                    swarm,
                    command_rx,
                    events_for_task,
                    shared_for_task,
                    metrics,
                    families
                ),
                accept
            );
        });
        Ok(Libp2pNode {
            peer_id,
            keypair,
            commands,
            control,
            events,
            shared,
            counters,
            task,
        })
    }

    /// The next exchange stream `peer` opens to us (after we dialed it
    /// through a relay: the peer that was dialed opens the exchange).
    pub fn await_exchange(&self, peer: PeerId) -> oneshot::Receiver<::libp2p::Stream> {
        let (tx, rx) = oneshot::channel();
        crate::clock::lock(&self.shared).awaited.insert(peer, tx);
        rx
    }

    pub fn events(&self) -> broadcast::Receiver<Libp2pEvent> {
        self.events.subscribe()
    }

    /// Whether a connection made to learn our address in the other family
    /// has not told it yet.
    pub fn second_family_pending(&self) -> bool {
        !crate::clock::lock(&self.shared)
            .second_family_pending
            .is_empty()
    }

    /// The addresses identify has reported for us, newest first.
    pub fn observed(&self) -> Vec<Multiaddr> {
        crate::clock::lock(&self.shared).observed.clone()
    }

    /// Dials `addr` (a relay, or a peer through a circuit) and waits until a
    /// connection to `peer` is up.
    pub async fn dial(&self, addr: Multiaddr, peer: PeerId) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Dial { addr, peer, reply })
            .await
            .map_err(|_| "libp2p task stopped".to_string())?;
        answer
            .await
            .map_err(|_| "libp2p task stopped".to_string())?
    }

    /// Listens on `addr`: for `<relay>/p2p-circuit`, asks the relay for a
    /// reservation (see `Libp2pEvent::Reserved`).
    pub async fn listen(&self, addr: Multiaddr) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Listen { addr, reply })
            .await
            .map_err(|_| "libp2p task stopped".to_string())?;
        answer
            .await
            .map_err(|_| "libp2p task stopped".to_string())?
    }

    pub async fn disconnect(&self, peer: PeerId) {
        let _ = self.commands.send(Command::Disconnect(peer)).await;
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

async fn drive(
    mut swarm: Swarm<NodeBehaviour>,
    mut commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Libp2pEvent>,
    shared: Arc<Mutex<Shared>>,
    metrics: Option<Arc<::libp2p::metrics::Metrics>>,
    ours: Families,
) {
    let mut dials: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>> = HashMap::new();
    // Consecutive ping failures per connection: libp2p's ping reports them
    // but closes nothing, so a relay that vanished without FIN or RST would
    // hold our reservation's connection (and our belief that we are
    // reachable) forever.
    let mut ping_failures: HashMap<ConnectionId, u32> = HashMap::new();
    // Peers we dialed a second time, over the family we lacked (dual stack).
    let mut second_family_dialed: std::collections::HashSet<(PeerId, bool)> =
        std::collections::HashSet::new();
    // Relay listeners: listener id -> the address we listened on.
    let mut relay_listeners: HashMap<::libp2p::core::transport::ListenerId, Multiaddr> =
        HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Dial { addr, peer, reply }) => {
                    if swarm.is_connected(&peer) && !is_relayed(&addr) {
                        let _ = reply.send(Ok(()));
                        continue;
                    }
                    match swarm.dial(addr.clone()) {
                        Ok(()) => dials.entry(peer).or_default().push(reply),
                        Err(e) => { let _ = reply.send(Err(format!("cannot dial {addr}: {e}"))); }
                    }
                }
                Some(Command::Listen { addr, reply }) => {
                    let result = swarm.listen_on(addr.clone()).map_err(|e| format!("cannot listen on {addr}: {e}"));
                    if let Ok(id) = &result {
                        if is_relayed(&addr) {
                            relay_listeners.insert(*id, addr);
                        }
                    }
                    let _ = reply.send(result.map(|_| ()));
                }
                Some(Command::Disconnect(peer)) => { let _ = swarm.disconnect_peer_id(peer); }
            },
            event = swarm.select_next_some() => {
                if let Some(m) = &metrics {
                    record_metrics(m, &event);
                }
                match event {
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, connection_id, .. } => {
                    let relayed = is_relayed(endpoint.get_remote_address()) || match &endpoint {
                        ConnectedPoint::Listener { local_addr, .. } => is_relayed(local_addr),
                        ConnectedPoint::Dialer { .. } => false,
                    };
                    tracing::debug!(%peer_id, relayed, remote = %endpoint.get_remote_address(), "libp2p connection established");
                    let _ = events.send(Libp2pEvent::Connected {
                        peer: peer_id,
                        connection: connection_id,
                        remote: endpoint.get_remote_address().clone(),
                        relayed,
                    });
                    // A dial through a circuit waits for the relayed connection.
                    let wanted = match &endpoint {
                        ConnectedPoint::Dialer { address, .. } => !is_relayed(address) || relayed,
                        ConnectedPoint::Listener { .. } => true,
                    };
                    if wanted {
                        for reply in dials.remove(&peer_id).unwrap_or_default() {
                            let _ = reply.send(Ok(()));
                        }
                    }
                    if let ConnectedPoint::Listener { local_addr, .. } = &endpoint {
                        if relayed {
                            let _ = events.send(Libp2pEvent::RelayedInbound { peer: peer_id, via: local_addr.clone() });
                        }
                    }
                }
                SwarmEvent::OutgoingConnectionError { connection_id, error, .. }
                    if settle_second_family(&shared, connection_id) =>
                {
                    tracing::debug!(error = %error, "no second-family connection");
                    let _ = events.send(Libp2pEvent::SecondFamilySettled);
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                    for reply in dials.remove(&peer).unwrap_or_default() {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
                SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                    if let Some(addr) = relay_listeners.remove(&listener_id) {
                        let reason = match reason { Ok(()) => "closed".to_string(), Err(e) => error_chain(&e) };
                        let _ = events.send(Libp2pEvent::ReservationLost { relay_addr: addr, reason });
                    }
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    if let Some(addr) = relay_listeners.get(&listener_id) {
                        tracing::warn!(relay = %addr, %error, "relay listener error");
                    }
                }
                SwarmEvent::Behaviour(NodeBehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal, .. })) => {
                    let base = relay_listeners
                        .values()
                        .find(|a| a.iter().any(|p| p == Protocol::P2p(relay_peer_id)))
                        .cloned();
                    if let Some(base) = base {
                        let circuit = base.with(Protocol::P2p(*swarm.local_peer_id()));
                        let _ = events.send(Libp2pEvent::Reserved { relay: relay_peer_id, circuit, renewal });
                    }
                }
                SwarmEvent::Behaviour(NodeBehaviourEvent::Identify(identify::Event::Received { connection_id, peer_id, info })) => {
                    tracing::debug!(%peer_id, observed = %info.observed_addr, agent = %info.agent_version, "identify");
                    let mut s = crate::clock::lock(&shared);
                    s.observed.retain(|a| a != &info.observed_addr);
                    s.observed.insert(0, info.observed_addr.clone());
                    s.observed.truncate(8);
                    s.second_family_pending.remove(&connection_id);
                    let missing = ours.without(Families::of(
                        s.observed.iter().filter(|a| !is_relayed(a)).map(addr_is_ipv6),
                    ));
                    // Dual stack: a peer we reach directly over one family
                    // that listens in the other tells us, over a second
                    // connection, how that family sees us too: the offer
                    // then carries both and the punch races them. Once per
                    // peer and family.
                    let second = (!is_relayed(&info.observed_addr))
                        .then(|| other_family_listen_addr(&info, missing))
                        .flatten()
                        .filter(|addr| second_family_dialed.insert((peer_id, addr_is_ipv6(addr))));
                    if let Some(addr) = second {
                        let opts = DialOpts::peer_id(peer_id)
                            .addresses(vec![addr.clone()])
                            .condition(PeerCondition::Always)
                            .build();
                        let connection = opts.connection_id();
                        match swarm.dial(opts) {
                            Ok(()) => {
                                tracing::debug!(%peer_id, %addr, "learning our address in the other family");
                                s.second_family_pending.insert(connection);
                            }
                            Err(e) => tracing::debug!(%peer_id, %addr, error = %e, "no second-family connection"),
                        }
                    }
                    drop(s);
                    let _ = events.send(Libp2pEvent::Observed { addr: info.observed_addr });
                }
                SwarmEvent::Behaviour(NodeBehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result })) => {
                    let _ = events.send(Libp2pEvent::Dcutr { peer: remote_peer_id, result: result.map_err(|e| e.to_string()) });
                }
                SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(ping::Event { peer, connection, result: Ok(rtt) })) => {
                    ping_failures.remove(&connection);
                    let _ = events.send(Libp2pEvent::Pinged { peer, connection, rtt });
                }
                // A peer that does not speak ping says so once: that is no
                // sign of a dead connection (a minimal relay may not run it).
                SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(ping::Event { result: Err(ping::Failure::Unsupported), .. })) => {}
                SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(ping::Event { peer, connection, result: Err(e) })) => {
                    let failures = ping_failures.entry(connection).or_insert(0);
                    *failures = failures.saturating_add(1);
                    if *failures >= PING_FAILURES_TO_CLOSE {
                        tracing::warn!(%peer, error = %e, failures = *failures, "closing a connection that stopped answering pings");
                        swarm.close_connection(connection);
                        ping_failures.remove(&connection);
                    }
                }
                SwarmEvent::ConnectionClosed { connection_id, .. } => {
                    ping_failures.remove(&connection_id);
                    if settle_second_family(&shared, connection_id) {
                        let _ = events.send(Libp2pEvent::SecondFamilySettled);
                    }
                }
                _ => {}
            }
            }
        }
    }
}

/// Feeds rust-libp2p's own metrics: the swarm's events, and those of the
/// behaviours it has recorders for.
fn record_metrics(metrics: &::libp2p::metrics::Metrics, event: &SwarmEvent<NodeBehaviourEvent>) {
    use ::libp2p::metrics::Recorder;
    match event {
        SwarmEvent::Behaviour(NodeBehaviourEvent::Identify(e)) => metrics.record(e),
        SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(e)) => metrics.record(e),
        SwarmEvent::Behaviour(NodeBehaviourEvent::Dcutr(e)) => metrics.record(e),
        _ => {}
    }
    metrics.record(event);
}

/// An error with its causes, `outer: inner: innermost`: rust-libp2p's relay
/// client says only "Failed to get Reservation" at the top, and why (refused,
/// resource limit exceeded, ...) one or two levels down.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string().trim_end_matches('.').to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string().trim_end_matches('.').to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// Which address families (IPv4, IPv6) a set of addresses covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    fn of(is_ipv6: impl Iterator<Item = bool>) -> Families {
        is_ipv6.fold(Families::default(), |f, v6| Families {
            v4: f.v4 || !v6,
            v6: f.v6 || v6,
        })
    }

    /// The families in `self` that `other` lacks.
    fn without(self, other: Families) -> Families {
        Families {
            v4: self.v4 && !other.v4,
            v6: self.v6 && !other.v6,
        }
    }
}

pub(crate) fn addr_is_ipv6(addr: &Multiaddr) -> bool {
    matches!(addr.iter().next(), Some(Protocol::Ip6(_)))
}

/// A routable TCP listen address of the peer in a family `missing` holds
/// (one our shared port has and no observed address of ours covers).
fn other_family_listen_addr(info: &identify::Info, missing: Families) -> Option<Multiaddr> {
    info.listen_addrs
        .iter()
        .filter(|a| !is_relayed(a))
        .filter(|a| {
            if addr_is_ipv6(a) {
                missing.v6
            } else {
                missing.v4
            }
        })
        .find(|a| super::exchange::punchable(a, false).is_some())
        .cloned()
}

/// Forgets a second-family connection that failed; whether it was one.
fn settle_second_family(shared: &Mutex<Shared>, connection: ConnectionId) -> bool {
    crate::clock::lock(shared)
        .second_family_pending
        .remove(&connection)
}
