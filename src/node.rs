//! A node: the shared port, its accept loop, and the Bitcoin sessions it
//! serves. Later paths (punches, libp2p) attach to the same router.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio::task::{AbortHandle, JoinHandle};

use crate::clock::{lock, unix_now};
use crate::net::router::Inbound;
use crate::net::stream::ByteCounters;
use crate::net::{AdmissionConfig, Route, Router, SharedPort};
use crate::punch::budget::BudgetConfig;
use crate::wire::{SessionConfig, SessionError, SessionReport, SessionRole, Transport};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `None`: both wildcards, IPv4 and IPv6.
    pub bind_ip: Option<IpAddr>,
    pub port: u16,
    pub session: SessionConfig,
    /// A connected peer that sends nothing for this long is dropped.
    pub idle_timeout: Duration,
    /// A new connection must send its first bytes within this.
    pub sniff_timeout: Duration,
    /// Caps on inbound connections (docs/security.md).
    pub admission: AdmissionConfig,
    /// Limits on punch SYNs from the shared port (docs/security.md).
    pub punch_budget: BudgetConfig,
    /// Sidecar mode: the local Bitcoin node's P2P port. Connections punched
    /// for us, and ordinary inbound Bitcoin peers of the shared port, are
    /// spliced to it instead of served by us ([`crate::sidecar`]).
    pub bitcoind: Option<SocketAddr>,
    /// The address book: with one, every session the node serves trades
    /// addresses and reachability records ([`crate::peers`]); without,
    /// sessions only answer pings.
    pub addresses: Option<Arc<crate::peers::PeerBook>>,
    /// With an address book: inbound sessions served at most; a newcomer
    /// beyond is handed to an inbound peer that takes handoffs, or closed.
    pub inbound_slots: Option<usize>,
}

impl NodeConfig {
    pub fn new(session: SessionConfig) -> Self {
        Self {
            bind_ip: None,
            port: session.network.default_port(),
            session,
            idle_timeout: Duration::from_secs(20 * 60),
            sniff_timeout: Duration::from_secs(10),
            admission: AdmissionConfig::NODE,
            punch_budget: BudgetConfig::default(),
            bitcoind: None,
            addresses: None,
            inbound_slots: None,
        }
    }
}

/// What happened to an inbound connection, for logs, tests and records.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    Established(Box<SessionReport>),
    Failed { remote: SocketAddr, reason: String },
    Closed { remote: SocketAddr, reason: String },
}

/// A session's serving loop, handed to the node to own.
pub type SessionTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How a session the node serves came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionPath {
    /// Someone connected to our shared port.
    Inbound,
    /// Punched through a coordinator.
    Native,
    /// Punched after a relay's exchange.
    Libp2p,
    /// We connected to a reachable peer (`bitpunch connect HOST:PORT`).
    Outbound,
}

/// What the node knows of a session it serves, for `bitpunch peers`.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub path: SessionPath,
    pub role: SessionRole,
    pub remote: SocketAddr,
    pub transport: Transport,
    pub session_id: Option<String>,
    pub user_agent: String,
    pub counters: Arc<ByteCounters>,
    /// A sidecar's session: the local Bitcoin node it is spliced to.
    pub spliced_to: Option<SocketAddr>,
    /// The peer's node id, when a punch proved its key.
    pub node: Option<crate::identity::NodeId>,
}

impl SessionInfo {
    pub fn of(path: SessionPath, report: &SessionReport) -> SessionInfo {
        SessionInfo {
            path,
            role: report.role,
            remote: report.remote,
            transport: report.transport,
            session_id: report.session_id.clone(),
            user_agent: report.peer.user_agent.clone(),
            counters: report.counters.clone(),
            spliced_to: None,
            node: None,
        }
    }

    /// A session spliced to the local Bitcoin node at `to`: the BIP324
    /// session and the peer's user agent are that node's, not ours.
    pub fn spliced(
        path: SessionPath,
        role: SessionRole,
        remote: SocketAddr,
        transport: Transport,
        counters: Arc<ByteCounters>,
        to: SocketAddr,
    ) -> SessionInfo {
        SessionInfo {
            path,
            role,
            remote,
            transport,
            session_id: None,
            user_agent: String::new(),
            counters,
            spliced_to: Some(to),
            node: None,
        }
    }
}

/// One row of `bitpunch peers`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRow {
    /// The node's number for the session (`bitpunch disconnect N`).
    pub id: u64,
    pub path: SessionPath,
    /// Our BIP324 role: the initiator asked for the connection.
    pub role: SessionRole,
    pub remote: SocketAddr,
    pub transport: Transport,
    pub session_id: Option<String>,
    pub user_agent: String,
    /// Unix seconds.
    pub since: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// A sidecar's session: the local Bitcoin node it is spliced to (the
    /// BIP324 session is that node's; `session_id` is then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spliced_to: Option<SocketAddr>,
    /// The peer's node id, when a punch proved its key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

struct Served {
    info: SessionInfo,
    since: u64,
    abort: Option<AbortHandle>,
}

/// The sessions the node serves, by number.
#[derive(Default)]
struct SessionTable {
    next: u64,
    served: HashMap<u64, Served>,
}

/// Removes a session's row however its task ends (also when aborted).
struct RowGuard(Arc<Mutex<SessionTable>>, u64);

impl Drop for RowGuard {
    fn drop(&mut self) {
        lock(&self.0).served.remove(&self.1);
    }
}

/// Hands sessions to the node: they then live as long as the node, not as
/// long as the coordinator link or relay reservation that set them up, and
/// show in `bitpunch peers`.
#[derive(Clone)]
pub struct SessionOwner {
    adopted: mpsc::Sender<(SessionInfo, SessionTask)>,
    addresses: Option<Arc<crate::peers::PeerBook>>,
}

impl SessionOwner {
    /// `false` when the node has stopped (the session is dropped).
    pub async fn adopt(&self, info: SessionInfo, task: SessionTask) -> bool {
        self.adopted.send((info, task)).await.is_ok()
    }

    /// Adopts `session`, which came by `path` (with `node`, the peer's
    /// node id, when a punch proved it): the node serves it (answers pings,
    /// drops it after `idle` of silence) and logs why it ended.
    pub async fn adopt_session<S>(
        &self,
        path: SessionPath,
        session: crate::wire::Session<S>,
        idle: Duration,
        node: Option<crate::identity::NodeId>,
    ) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut info = SessionInfo::of(path, &session.report);
        info.node = node;
        let remote = info.remote;
        let addresses = self.addresses.clone();
        self.adopt(
            info,
            Box::pin(async move {
                let ended = serve_session(session, addresses, path, idle).await;
                tracing::info!(%remote, ?path, reason = %ended, "session closed");
            }),
        )
        .await
    }
}

/// A coordinator registration or relay reservation the node holds.
#[derive(Debug, Clone, Serialize)]
pub struct Reachable {
    /// How others reach us through it.
    pub address: String,
    /// Where the third party sees our shared port (our NAT mapping).
    pub observed: Option<SocketAddr>,
    /// Unix seconds.
    pub since: u64,
}

/// Through whom the node is reachable: coordinators and relays by their
/// address, as the user named them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reachability {
    pub coordinators: BTreeMap<String, Reachable>,
    pub relays: BTreeMap<String, Reachable>,
}

/// What `bitpunch status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub listening: Vec<SocketAddr>,
    /// Whether `connect` through this node can punch circuit addresses
    /// (it runs our libp2p exchange).
    pub punches_circuits: bool,
    pub sessions: usize,
    #[serde(flatten)]
    pub reachability: Reachability,
    pub punch_budget: BudgetStatus,
    /// What `bitpunch nat` last found.
    pub nat: Option<crate::nat::NatClass>,
    /// The sessions the node keeps by itself, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<crate::outbound::OutboundStatus>,
    /// The address book, when the node keeps one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<crate::peers::BookStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BudgetStatus {
    pub limits: BudgetConfig,
    /// SYNs paid and refused since the node started.
    pub syns_sent: u64,
    pub syns_refused: u64,
}

/// Cloneable access to a running node's state, for its control interface.
#[derive(Clone)]
pub struct NodeHandle {
    shared: Arc<SharedPort>,
    /// Open coordinator links by the coordinator's id, to ask over.
    links: Arc<Mutex<HashMap<crate::identity::NodeId, crate::native::client::LinkAccess>>>,
    /// Set by the daemon: connections through the node.
    connector: Arc<Mutex<Option<crate::connect::NodeConnector>>>,
    /// Punch orders refused, by reason, across the node's links.
    refusals: Arc<crate::native::client::OrderRefusals>,
    table: Arc<Mutex<SessionTable>>,
    reach: Arc<Mutex<Reachability>>,
    local_addrs: Vec<SocketAddr>,
    budget: BudgetConfig,
    /// The last classification of our NAT (`bitpunch nat`).
    nat: crate::nat::NatMemory,
    /// Set by the daemon when it keeps outbound sessions of its own.
    outbound: Arc<Mutex<Option<Arc<crate::outbound::OutboundState>>>>,
    addresses: Option<Arc<crate::peers::PeerBook>>,
}

impl NodeHandle {
    /// Classifies our NAT now, through the first coordinator we are
    /// registered with that answers NAT probes (crate::nat); `status` shows
    /// the result from then on.
    pub async fn nat(&self) -> anyhow::Result<crate::nat::NatClass> {
        use anyhow::Context;
        let link = self
            .links()
            .into_iter()
            .find(|l| l.features & crate::native::messages::FEATURE_NAT_PROBE != 0)
            .context(
                "no coordinator this node is registered with answers NAT probes \
                 (start the node with --coordinator; coordinators answer unless --no-nat-probe)",
            )?;
        let coordinator = link.coordinator.addr;
        let probe_port = coordinator
            .port()
            .checked_add(1)
            .context("the coordinator's port has no next port")?;
        let local = self
            .local_addrs
            .iter()
            .find(|a| a.is_ipv4() == coordinator.is_ipv4())
            .copied()
            .context("the shared port has no address of the coordinator's family")?;
        let class = crate::nat::classify(
            local,
            link.observed,
            SocketAddr::new(coordinator.ip(), probe_port),
            Duration::from_secs(5),
        )
        .await?;
        *lock(&self.nat) = Some(class.clone());
        for link in self.links() {
            link.handle.tell_nat(class.brief());
        }
        Ok(class)
    }

    /// Where the node keeps its last NAT classification.
    pub fn nat_memory(&self) -> crate::nat::NatMemory {
        self.nat.clone()
    }

    pub fn peers(&self) -> Vec<PeerRow> {
        let table = lock(&self.table);
        let mut rows: Vec<PeerRow> = table
            .served
            .iter()
            .map(|(id, s)| PeerRow {
                id: *id,
                path: s.info.path,
                role: s.info.role,
                remote: s.info.remote,
                transport: s.info.transport,
                session_id: s.info.session_id.clone(),
                user_agent: s.info.user_agent.clone(),
                since: s.since,
                bytes_sent: s.info.counters.sent(),
                bytes_received: s.info.counters.received(),
                spliced_to: s.info.spliced_to,
                node: s.info.node.map(|n| n.to_string()),
            })
            .collect();
        rows.sort_by_key(|r| r.id);
        rows
    }

    /// Ends the session numbered `id`, or every session with `remote`;
    /// returns the rows it ended.
    pub fn disconnect(&self, which: &str) -> Vec<PeerRow> {
        let ended: Vec<PeerRow> = self
            .peers()
            .into_iter()
            .filter(|r| r.id.to_string() == which || r.remote.to_string() == which)
            .collect();
        let table = lock(&self.table);
        for row in &ended {
            if let Some(abort) = table.served.get(&row.id).and_then(|s| s.abort.as_ref()) {
                tracing::info!(id = row.id, remote = %row.remote, "session closed: disconnected by the operator");
                abort.abort();
            }
        }
        ended
    }

    /// Ends every session, each logged with `reason` (a shutdown).
    pub fn close_all(&self, reason: &str) -> usize {
        let table = lock(&self.table);
        for (id, served) in &table.served {
            tracing::info!(id, remote = %served.info.remote, %reason, "session closed");
            if let Some(abort) = &served.abort {
                abort.abort();
            }
        }
        table.served.len()
    }

    pub fn status(&self) -> NodeStatus {
        let (syns_sent, syns_refused) = self.shared.punch_syns();
        NodeStatus {
            listening: self.local_addrs.clone(),
            punches_circuits: lock(&self.connector)
                .as_ref()
                .is_some_and(|c| c.libp2p.is_some()),
            sessions: lock(&self.table).served.len(),
            reachability: lock(&self.reach).clone(),
            punch_budget: BudgetStatus {
                limits: self.budget,
                syns_sent,
                syns_refused,
            },
            nat: lock(&self.nat).clone(),
            outbound: lock(&self.outbound).as_ref().map(|o| o.status()),
            addresses: self.addresses.as_ref().map(|b| b.status()),
        }
    }

    /// The outbound manager whose state `status` shows.
    pub fn set_outbound(&self, state: Arc<crate::outbound::OutboundState>) {
        *lock(&self.outbound) = Some(state);
    }

    /// Records a registration (`address`: how others reach us) at
    /// `coordinator`, or with `None` that it ended.
    pub fn set_registration(
        &self,
        coordinator: &str,
        now: Option<(String, SocketAddr, crate::native::client::LinkAccess)>,
    ) {
        let mut reach = lock(&self.reach);
        match now {
            Some((address, observed, link)) => {
                if let Some(class) = crate::nat::brief_of(&self.nat) {
                    link.handle.tell_nat(class);
                }
                lock(&self.links).insert(link.coordinator.id, link);
                reach.coordinators.insert(
                    coordinator.to_string(),
                    Reachable {
                        address,
                        observed: Some(observed),
                        since: unix_now(),
                    },
                );
            }
            None => {
                reach.coordinators.remove(coordinator);
                if let Ok(typed) = coordinator.parse::<crate::address::CoordinatorAddress>() {
                    lock(&self.links).remove(&typed.id);
                }
            }
        }
    }

    /// The node's registration over its other address family with a
    /// coordinator it is registered with (dual stack): shown beside the
    /// first, under its own `label`; requests keep going over the first.
    pub fn set_other_family_registration(&self, label: &str, now: Option<(String, SocketAddr)>) {
        let mut reach = lock(&self.reach);
        match now {
            Some((address, observed)) => {
                reach.coordinators.insert(
                    label.to_string(),
                    Reachable {
                        address,
                        observed: Some(observed),
                        since: unix_now(),
                    },
                );
            }
            None => {
                reach.coordinators.remove(label);
            }
        }
    }

    /// Where the node's coordinator links count the orders they refuse.
    pub fn order_refusals(&self) -> Arc<crate::native::client::OrderRefusals> {
        self.refusals.clone()
    }

    /// The open link to the coordinator with this id, if registered there.
    pub fn link_to(
        &self,
        coordinator: crate::identity::NodeId,
    ) -> Option<crate::native::client::LinkAccess> {
        lock(&self.links).get(&coordinator).cloned()
    }

    /// Every open coordinator link, in the order of the coordinators' ids.
    pub fn links(&self) -> Vec<crate::native::client::LinkAccess> {
        let mut links: Vec<_> = lock(&self.links).values().cloned().collect();
        links.sort_by_key(|l| l.coordinator.id);
        links
    }

    /// The relays the node holds a reservation on, as the user named them.
    pub fn relays(&self) -> Vec<String> {
        lock(&self.reach).relays.keys().cloned().collect()
    }

    pub fn set_connector(&self, connector: crate::connect::NodeConnector) {
        *lock(&self.connector) = Some(connector);
    }

    /// `bitpunch connect` through this node.
    pub async fn connect(&self, address: &str) -> anyhow::Result<crate::report::Outcome> {
        let connector = lock(&self.connector).clone();
        match connector {
            Some(c) => c.connect(address).await,
            None => anyhow::bail!("this node does not connect for others"),
        }
    }

    /// Records a reservation (`circuit`) on `relay`, or with `None` its loss.
    pub fn set_reservation(&self, relay: &str, circuit: Option<String>) {
        let mut reach = lock(&self.reach);
        match circuit {
            Some(address) => {
                reach.relays.insert(
                    relay.to_string(),
                    Reachable {
                        address,
                        observed: None,
                        since: unix_now(),
                    },
                );
            }
            None => {
                reach.relays.remove(relay);
            }
        }
    }
}

pub struct Node {
    shared: Arc<SharedPort>,
    bitcoind: Option<SocketAddr>,
    owner: SessionOwner,
    handle: NodeHandle,
    router: Arc<Router>,
    local_addrs: Vec<SocketAddr>,
    port: u16,
    events: broadcast::Sender<NodeEvent>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Node {
    pub fn start(config: NodeConfig) -> std::io::Result<Node> {
        let mut shared = SharedPort::bind(config.bind_ip, config.port)?;
        shared.set_punch_budget(config.punch_budget);
        let port = shared.port();
        let local_addrs = shared.local_addrs().to_vec();
        let router = Router::with_admission(
            config.session.network.magic().to_bytes(),
            config.sniff_timeout,
            config.admission,
        );
        let (events, _) = broadcast::channel(1024);
        let mut bitcoin = router.subscribe(Route::Bitcoin, 64);
        let (adopt_tx, mut adopted) = mpsc::channel::<(SessionInfo, SessionTask)>(64);
        let owner = SessionOwner {
            adopted: adopt_tx,
            addresses: config.addresses.clone(),
        };
        let accept = shared.spawn_accept_loop(router.clone());
        let serve_events = events.clone();
        let budget = config.punch_budget;
        let bitcoind = config.bitcoind;
        let addresses = config.addresses.clone();
        let config = Arc::new(config);
        let table: Arc<Mutex<SessionTable>> = Arc::default();
        let served = table.clone();
        let inbound_owner = owner.clone();
        let serve = tokio::spawn(async move {
            // Sessions live in this set so that stopping the node stops them.
            let mut sessions = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    inbound = bitcoin.recv() => match inbound {
                        Some(inbound) => {
                            sessions.spawn(serve_inbound(inbound, config.clone(), serve_events.clone(), inbound_owner.clone()));
                        }
                        None => break,
                    },
                    Some((info, task)) = adopted.recv() => {
                        let id = {
                            let mut table = lock(&served);
                            let id = table.next;
                            table.next = table.next.wrapping_add(1);
                            table.served.insert(id, Served { info, since: unix_now(), abort: None });
                            id
                        };
                        let row = RowGuard(served.clone(), id);
                        let abort = sessions.spawn(async move {
                            let _row = row;
                            task.await
                        });
                        if let Some(s) = lock(&served).served.get_mut(&id) {
                            s.abort = Some(abort);
                        }
                    }
                    Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                }
            }
        });
        let shared = Arc::new(shared);
        let handle = NodeHandle {
            shared: shared.clone(),
            links: Arc::default(),
            connector: Arc::default(),
            refusals: Arc::default(),
            table,
            reach: Arc::default(),
            local_addrs: local_addrs.clone(),
            budget,
            nat: Arc::default(),
            outbound: Arc::default(),
            addresses: addresses.clone(),
        };
        Ok(Node {
            bitcoind,
            owner,
            handle,
            shared,
            router,
            local_addrs,
            port,
            events,
            tasks: vec![accept, serve],
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The port everything leaves from, for outbound connections and punches.
    pub fn shared_port(&self) -> &Arc<SharedPort> {
        &self.shared
    }

    /// Where punched sessions go to outlive whatever coordinated them.
    pub fn session_owner(&self) -> SessionOwner {
        self.owner.clone()
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Its sessions, reachability and budget, for the control interface.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// What becomes of connections punched for this node: its own
    /// sessions, or in sidecar mode splices to the local Bitcoin node.
    pub fn ending(&self) -> crate::punch::upgrade::Ending {
        match self.bitcoind {
            Some(addr) => {
                crate::punch::upgrade::Ending::Splice(crate::sidecar::LocalEnd::Bitcoind(addr))
            }
            None => crate::punch::upgrade::Ending::Session,
        }
    }
}

async fn serve_inbound(
    inbound: Inbound,
    config: Arc<NodeConfig>,
    events: broadcast::Sender<NodeEvent>,
    owner: SessionOwner,
) {
    let remote = inbound.remote;
    if let Some(bitcoind) = config.bitcoind {
        return forward_inbound(inbound, bitcoind, &config, events, owner).await;
    }
    let established = crate::wire::respond(inbound, &config.session).await;
    let session = match established {
        Ok(s) => s,
        Err(e) => {
            report_failure(&events, remote, &e);
            return;
        }
    };
    let r = &session.report;
    tracing::info!(
        %remote,
        transport = %r.transport,
        session_id = r.session_id.as_deref().unwrap_or("-"),
        peer = %r.peer.user_agent,
        rtt_ms = r.rtt_ms.unwrap_or_default(),
        "session established"
    );
    let _ = events.send(NodeEvent::Established(Box::new(r.clone())));
    if let (Some(book), Some(slots)) = (&config.addresses, config.inbound_slots) {
        if book.inbound_sessions() >= slots {
            let reason = crate::peers::hand_off_or_close(session, book).await;
            tracing::info!(%remote, %reason, "session closed");
            let _ = events.send(NodeEvent::Closed { remote, reason });
            return;
        }
    }
    let info = SessionInfo::of(SessionPath::Inbound, r);
    // Served as one of the node's sessions, listed and disconnectable.
    owner
        .adopt(
            info,
            Box::pin(async move {
                let ended = serve_session(
                    session,
                    config.addresses.clone(),
                    SessionPath::Inbound,
                    config.idle_timeout,
                )
                .await;
                tracing::info!(%remote, reason = %ended, "session closed");
                let _ = events.send(NodeEvent::Closed {
                    remote,
                    reason: ended.to_string(),
                });
            }),
        )
        .await;
}

/// A sidecar's shared port is its Bitcoin node's public port: an ordinary
/// inbound peer goes to that node byte for byte (what routing read is
/// replayed), listed with the node's sessions.
async fn forward_inbound(
    inbound: Inbound,
    bitcoind: SocketAddr,
    config: &NodeConfig,
    events: broadcast::Sender<NodeEvent>,
    owner: SessionOwner,
) {
    let remote = inbound.remote;
    let bitcoin =
        match crate::sidecar::connect_bitcoind(bitcoind, config.session.handshake_timeout).await {
            Ok(b) => b,
            Err(reason) => {
                tracing::warn!(%remote, %reason, "closing inbound connection");
                let _ = events.send(NodeEvent::Failed { remote, reason });
                return;
            }
        };
    tracing::info!(%remote, %bitcoind, "inbound peer forwarded to the Bitcoin node");
    let transport = match inbound.kind {
        Some(crate::net::router::StreamKind::Bitcoin(t)) => t,
        _ => Transport::V2,
    };
    let info = SessionInfo::spliced(
        SessionPath::Inbound,
        SessionRole::Responder,
        remote,
        transport,
        inbound.counters.clone(),
        bitcoind,
    );
    owner
        .adopt(
            info,
            Box::pin(crate::sidecar::run_splice(
                inbound.stream,
                bitcoin,
                remote,
                bitcoind,
            )),
        )
        .await;
}

/// Serves a session: with the address book when the node keeps one.
async fn serve_session<S>(
    session: crate::wire::Session<S>,
    addresses: Option<Arc<crate::peers::PeerBook>>,
    path: SessionPath,
    idle: Duration,
) -> SessionError
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match addresses {
        Some(book) => crate::peers::serve(session, book, path, idle).await,
        None => session.serve(idle).await,
    }
}

fn report_failure(events: &broadcast::Sender<NodeEvent>, remote: SocketAddr, e: &SessionError) {
    tracing::warn!(%remote, reason = %e, "closing connection");
    let _ = events.send(NodeEvent::Failed {
        remote,
        reason: e.to_string(),
    });
}
