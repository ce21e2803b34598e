//! The coordinator: a reachable Bitcoin node that offers hole-punch service.
//! It serves ordinary Bitcoin sessions on its port (BIP324, or v1), sets the
//! service bit, and runs the coordinator state machine over the `hp…`
//! messages of every session.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::p2p::message::NetworkMessage;
use tokio::sync::{broadcast, oneshot, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::machine::{ConnId, Coordinator, CoordinatorAction, CoordinatorConfig};
use super::messages::{node_punch_coordinator, NativeMessage, PunchResult};
use super::AbortOnDrop;
use crate::clock::lock;
use crate::identity::{NodeId, NodeKey};
use crate::net::router::Inbound;
use crate::net::{AdmissionConfig, Route, Router, SharedPort};
use crate::wire::SessionConfig;

/// Rewrites each message before it is sent. For experiments and tests that
/// play a dishonest coordinator (e.g. one that puts itself in the middle).
pub type MessageFilter = Arc<dyn Fn(ConnId, &mut NativeMessage) + Send + Sync>;

#[derive(Clone)]
pub struct CoordinatorServerConfig {
    pub bind_ip: Option<IpAddr>,
    pub port: u16,
    pub session: SessionConfig,
    pub machine: CoordinatorConfig,
    /// How often each client's RTT is measured again.
    pub ping_interval: Duration,
    pub filter: Option<MessageFilter>,
    /// Caps on inbound connections (docs/security.md).
    pub admission: AdmissionConfig,
    /// The coordinator's identity, which its clients check on every link.
    pub key: NodeKey,
    /// Answer NAT probes on port + 1 (crate::nat), and say so in `hpcoord`.
    pub nat_probe: bool,
}

impl CoordinatorServerConfig {
    pub fn new(session: SessionConfig, key: NodeKey) -> Self {
        CoordinatorServerConfig {
            key,
            bind_ip: None,
            port: session.network.default_port(),
            session,
            machine: CoordinatorConfig::default(),
            ping_interval: Duration::from_secs(30),
            filter: None,
            admission: AdmissionConfig::COORDINATOR,
            nat_probe: false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum CoordinatorEvent {
    Registered {
        conn: ConnId,
        remote: SocketAddr,
    },
    Reported {
        conn: ConnId,
        request: u64,
        result: PunchResult,
    },
    Closed {
        conn: ConnId,
        remote: SocketAddr,
        reason: String,
    },
}

/// Messages waiting to be written to one client: a queue that allocates
/// nothing while empty (a channel would allocate its first block of slots,
/// kilobytes, for every idle client), and a wake-up for the client's task.
#[derive(Default)]
struct Outbox {
    queue: Mutex<VecDeque<NetworkMessage>>,
    ready: Notify,
}

/// Messages queued for a client that does not read them; beyond, it is
/// closed.
const OUTBOX_LIMIT: usize = 64;

impl Outbox {
    /// False when the queue is full.
    #[must_use]
    fn push(&self, msg: NetworkMessage) -> bool {
        let mut queue = lock(&self.queue);
        if queue.len() >= OUTBOX_LIMIT {
            return false;
        }
        queue.push_back(msg);
        drop(queue);
        // Stores a permit if the task is busy: the wake-up is not lost.
        self.ready.notify_one();
        true
    }

    fn pop(&self) -> Option<NetworkMessage> {
        let mut queue = lock(&self.queue);
        let msg = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
        msg
    }
}

struct Conn {
    outbox: Arc<Outbox>,
    close: Option<oneshot::Sender<String>>,
}

struct Shared {
    machine: Mutex<Coordinator>,
    conns: Mutex<HashMap<ConnId, Conn>>,
    events: broadcast::Sender<CoordinatorEvent>,
    filter: Option<MessageFilter>,
    /// `hpfail`s sent, by reason, and requests answered with orders.
    refusals: Mutex<std::collections::BTreeMap<String, u64>>,
    coordinations: AtomicU64,
}

/// What a coordinator has done, for its metrics.
#[derive(Debug, Clone, Default)]
pub struct CoordinatorStats {
    pub registered: usize,
    /// `hpfail` answers by reason (`RateLimited`, `UnknownPeer`, …).
    pub refusals: Vec<(String, u64)>,
    pub coordinations: u64,
}

impl Shared {
    fn carry_out(&self, actions: Vec<CoordinatorAction>) {
        let mut conns = lock(&self.conns);
        for action in actions {
            match action {
                CoordinatorAction::Send(conn, mut msg) => {
                    match &msg {
                        NativeMessage::Fail { reason, .. } => {
                            let mut refusals = lock(&self.refusals);
                            let n = refusals.entry(format!("{reason:?}")).or_default();
                            *n = n.saturating_add(1);
                        }
                        NativeMessage::Punch {
                            role: super::messages::PunchRole::Initiator,
                            ..
                        } => {
                            self.coordinations.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    if let Some(filter) = &self.filter {
                        filter(conn, &mut msg);
                    }
                    if let Some(c) = conns.get(&conn) {
                        if !c.outbox.push(msg.to_network()) {
                            tracing::warn!(conn, "client does not read its messages; closing");
                            if let Some(close) = conns.get_mut(&conn).and_then(|c| c.close.take()) {
                                let _ = close.send("outbox full".into());
                            }
                        }
                    }
                }
                CoordinatorAction::Close(conn, reason) => {
                    if let Some(close) = conns.get_mut(&conn).and_then(|c| c.close.take()) {
                        let _ = close.send(reason);
                    }
                }
                CoordinatorAction::Reported {
                    conn,
                    request,
                    result,
                } => {
                    tracing::info!(conn, request, ?result, "punch reported");
                    let _ = self.events.send(CoordinatorEvent::Reported {
                        conn,
                        request,
                        result,
                    });
                }
            }
        }
    }
}

pub struct CoordinatorServer {
    /// NAT probe servers, stopped with the coordinator.
    _probes: Vec<AbortOnDrop>,
    id: NodeId,
    local_addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    accept: JoinHandle<()>,
}

impl Drop for CoordinatorServer {
    fn drop(&mut self) {
        self.task.abort();
        self.accept.abort();
    }
}

impl CoordinatorServer {
    pub fn start(mut config: CoordinatorServerConfig) -> std::io::Result<CoordinatorServer> {
        let mut port = SharedPort::bind(config.bind_ip, config.port)?;
        // NAT probes on the next port, on the same addresses; announced
        // only when every address has its probe listener.
        let mut probes = Vec::new();
        if config.nat_probe {
            let listeners: std::io::Result<Vec<_>> = port
                .local_addrs()
                .iter()
                .map(|addr| {
                    let probe = crate::nat::probe_server(*addr).ok_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no port after 65535")
                    })?;
                    crate::net::listen_reusable(probe)
                })
                .collect();
            match listeners {
                Ok(listeners) => {
                    for listener in listeners {
                        probes.push(AbortOnDrop(
                            tokio::spawn(crate::nat::serve_probes(listener)).abort_handle(),
                        ));
                    }
                    config.machine.features |= super::messages::FEATURE_NAT_PROBE;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no NAT probes (port + 1 is not free): nodes cannot classify their NAT here")
                }
            }
        }
        let router = Router::with_admission(
            config.session.network.magic().to_bytes(),
            config.session.handshake_timeout,
            config.admission,
        );
        let mut inbound = router.subscribe(Route::Bitcoin, 256);
        let accept = port.spawn_accept_loop(router);
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            machine: Mutex::new(Coordinator::new(config.machine.clone(), config.key.clone())),
            conns: Mutex::default(),
            events,
            filter: config.filter.clone(),
            refusals: Mutex::default(),
            coordinations: AtomicU64::new(0),
        });
        let mut session = config.session.clone();
        session.services |= node_punch_coordinator();
        // A client's first messages follow its verack at once: a ping of
        // our own here would hold them for a round trip.
        session.rtt_from_handshake = true;
        let served = shared.clone();
        let ping_interval = config.ping_interval;
        let task = tokio::spawn(async move {
            let next_conn = AtomicU64::new(1);
            let mut clients = JoinSet::new();
            loop {
                tokio::select! {
                    next = inbound.recv() => match next {
                        Some(i) => {
                            let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                            let start = Box::new(ClientStart { conn, inbound: i, config: session.clone() });
                            clients.spawn(serve_client(start, served.clone(), ping_interval));
                        }
                        None => break,
                    },
                    Some(_) = clients.join_next(), if !clients.is_empty() => {}
                }
            }
        });
        Ok(CoordinatorServer {
            _probes: probes,
            id: config.key.id(),
            local_addrs: port.local_addrs().to_vec(),
            shared,
            task,
            accept,
        })
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The id clients name in its address, `ID@HOST:PORT`.
    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn events(&self) -> broadcast::Receiver<CoordinatorEvent> {
        self.shared.events.subscribe()
    }

    pub fn registered(&self) -> usize {
        lock(&self.shared.machine).registered()
    }

    pub fn stats(&self) -> CoordinatorStats {
        CoordinatorStats {
            registered: self.registered(),
            refusals: lock(&self.shared.refusals)
                .iter()
                .map(|(reason, n)| (reason.clone(), *n))
                .collect(),
            coordinations: self.shared.coordinations.load(Ordering::Relaxed),
        }
    }
}

/// What a client's task starts from, boxed: it is consumed by the
/// handshake, and an async fn keeps its arguments' room for its whole life.
struct ClientStart {
    conn: ConnId,
    inbound: Inbound,
    config: SessionConfig,
}

/// One client from its handshake to its last message. The task lives as
/// long as the client stays registered, so what it keeps across its idle
/// wait is what a registration costs: the handshake, the configuration and
/// the session before its split are scoped or boxed so that they are not
/// kept (docs/results.md, "Benchmarks").
async fn serve_client(start: Box<ClientStart>, shared: Arc<Shared>, ping_interval: Duration) {
    let conn = start.conn;
    let remote = start.inbound.remote;
    let (mut reader, mut writer, session_id, rtt) = {
        let handshake = Box::pin(async move {
            let ClientStart {
                inbound, config, ..
            } = *start;
            crate::wire::respond(inbound, &config).await
        });
        match handshake.await {
            Ok(session) => {
                let session_id = session.session_id();
                let (reader, writer, report) = session.into_parts();
                let rtt = report.rtt_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0));
                (reader, writer, session_id, rtt)
            }
            Err(e) => {
                tracing::info!(%remote, reason = %e, "closing client connection");
                return;
            }
        }
    };
    let outbox = Arc::new(Outbox::default());
    let (close_tx, mut close) = oneshot::channel();
    lock(&shared.conns).insert(
        conn,
        Conn {
            outbox: outbox.clone(),
            close: Some(close_tx),
        },
    );
    lock(&shared.machine).connected(conn, remote, rtt, session_id);
    tracing::debug!(conn, %remote, "client connected");

    // One task per client: reads are cancellation-safe and sit in the
    // select; what is queued for the client is written between reads. A
    // client that stops reading holds up only itself, until the write
    // times out (the session's write timeout) and it is closed.
    let mut ping_timer = tokio::time::interval(ping_interval);
    ping_timer.tick().await;
    let mut ping_out: Option<(u64, Instant)> = None;
    let reason = 'serve: loop {
        tokio::select! {
            reason = &mut close => break reason.unwrap_or_else(|_| "closed".into()),
            () = outbox.ready.notified() => {
                while let Some(msg) = outbox.pop() {
                    // Boxed: a write's state is needed only while it runs,
                    // not in every idle client's task.
                    if let Err(e) = Box::pin(writer.send(&msg)).await {
                        break 'serve format!("writing: {e}");
                    }
                }
            }
            _ = ping_timer.tick() => {
                // A client that has not answered the last ping within a
                // whole interval is gone (or hostile): its slot and its
                // registration are freed.
                if ping_out.is_some() {
                    break format!("no pong within {ping_interval:?}");
                }
                lock(&shared.machine).tick(Instant::now().into_std());
                let nonce = rand::random();
                ping_out = Some((nonce, Instant::now()));
                let _ = outbox.push(NetworkMessage::Ping(nonce));
            }
            next = reader.recv() => {
                let msg = match next {
                    Ok(Some(msg)) => msg,
                    Ok(None) => continue,
                    Err(e) => break e.to_string(),
                };
                match NativeMessage::from_network(&msg) {
                    Ok(Some(native)) => {
                        let registering = matches!(native, NativeMessage::Prove { .. });
                        let actions = lock(&shared.machine).handle(Instant::now().into_std(), conn, native, rand::random());
                        if registering && actions.iter().any(|a| matches!(a, CoordinatorAction::Send(_, NativeMessage::Registered { .. }))) {
                            let _ = shared.events.send(CoordinatorEvent::Registered { conn, remote });
                        }
                        shared.carry_out(actions);
                    }
                    Ok(None) => match msg {
                        NetworkMessage::Ping(n) => {
                            let _ = outbox.push(NetworkMessage::Pong(n));
                        }
                        NetworkMessage::Pong(n) => {
                            if let Some((nonce, sent)) = ping_out {
                                if n == nonce {
                                    ping_out = None;
                                    lock(&shared.machine).rtt(conn, sent.elapsed());
                                }
                            }
                        }
                        _ => {}
                    },
                    Err(e) => break format!("malformed message: {e}"),
                }
            }
        }
    };
    tracing::info!(conn, %remote, %reason, "client connection closed");
    lock(&shared.conns).remove(&conn);
    // What was queued for the client before the close (a displaced
    // client's `hpfail`, which says why) goes out first, for a second at
    // most.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(msg) = outbox.pop() {
            if Box::pin(writer.send(&msg)).await.is_err() {
                return;
            }
        }
    })
    .await;
    lock(&shared.machine).disconnected(conn);
    let _ = shared.events.send(CoordinatorEvent::Closed {
        conn,
        remote,
        reason,
    });
}
