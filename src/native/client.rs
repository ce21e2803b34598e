//! The client side of the native protocol: a node's session with its
//! coordinator, kept open from the node's shared port, so that what the
//! coordinator observes is the NAT mapping the punch will use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::ServiceFlags;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::machine::{Client, ClientConfig, ClientEvent, ExpectedCoordinator, PunchOrder};
use super::messages::{node_punch_coordinator, FailReason, NativeMessage, PunchResult};
use super::AbortOnDrop;
use crate::clock::Later;
use crate::identity::{NodeId, NodeKey};
use crate::net::stream::ByteCounters;
use crate::net::SharedPort;
use crate::wire::{self, SessionConfig, TransportPolicy};

/// A coordinator as a node names it: the id of its key and where it
/// listens (`ID@HOST:PORT`). The link is refused unless the other end
/// proves that key on the link's own BIP324 session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordinatorEndpoint {
    pub id: NodeId,
    pub addr: SocketAddr,
}

impl std::fmt::Display for CoordinatorEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub session: SessionConfig,
    pub client: ClientConfig,
    /// [`LINK_PING_INTERVAL`], shorter in tests.
    pub ping_interval: Duration,
    /// Where refused orders are counted by reason (a node's metrics).
    pub refusals: Option<Arc<OrderRefusals>>,
}

/// Punch orders this node refused, by reason, across its links.
#[derive(Debug, Default)]
pub struct OrderRefusals(std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>);

impl OrderRefusals {
    pub fn count(&self, reason: super::machine::RefusalReason) {
        let mut counts = crate::clock::lock(&self.0);
        let n = counts.entry(reason.as_str()).or_default();
        *n = n.saturating_add(1);
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        crate::clock::lock(&self.0)
            .iter()
            .map(|(r, n)| (*r, *n))
            .collect()
    }
}

/// How often the link pings its coordinator. A ping still unanswered at the
/// next one ends the link (and the node registers again), so a coordinator
/// that vanished without FIN or RST is noticed within two intervals: 60 s,
/// inside the 90 s the node promises (docs/security.md).
pub const LINK_PING_INTERVAL: Duration = Duration::from_secs(30);

/// A punch order, when it arrived (its delay counts from then), and the
/// ports the peer may still predict for it (`hpports`).
#[derive(Debug)]
pub struct ReceivedOrder {
    pub order: PunchOrder,
    pub received: Instant,
    pub predicted: oneshot::Receiver<Vec<SocketAddr>>,
}

/// The answer to our own request: our order, when it arrived, and a
/// message the coordinator may still send while we punch — the target
/// refused its order (`hpfail` with reason 6), so there is no one to meet.
#[derive(Debug)]
pub struct RequestedOrder {
    pub order: PunchOrder,
    pub received: Instant,
    pub predicted: oneshot::Receiver<Vec<SocketAddr>>,
    pub withdrawn: oneshot::Receiver<FailReason>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the coordinator refused: {0:?}")]
    Refused(FailReason),
    #[error("the coordinator connection is gone: {0}")]
    LinkDown(String),
    #[error("no answer from the coordinator within {0:?}")]
    Timeout(Duration),
}

enum Command {
    Request {
        target: NodeId,
        reply: oneshot::Sender<Result<RequestedOrder, RequestError>>,
    },
    Report {
        request: u64,
        result: PunchResult,
    },
    TellNat(crate::nat::NatBrief),
    Predict {
        request: u64,
        ip: std::net::IpAddr,
        ports: Vec<u16>,
    },
}

pub struct CoordinatorLink {
    pub id: NodeId,
    /// Where the coordinator sees us: our NAT mapping of the shared port.
    pub observed: SocketAddr,
    /// The coordinator, whose key was proven on this link.
    pub coordinator: CoordinatorEndpoint,
    /// The `hp` protocol version both sides speak.
    pub version: u32,
    /// The coordinator's feature bits (signed in its `hpcoord`).
    pub features: u64,
    pub rtt: Duration,
    counters: Arc<ByteCounters>,
    endpoint_independent: Arc<std::sync::atomic::AtomicBool>,
    /// Set when the coordinator said another connection proved our key.
    displaced: Arc<std::sync::atomic::AtomicBool>,
    commands: mpsc::Sender<Command>,
    /// Orders in which we are the responder: someone asked for us.
    pub orders: mpsc::Receiver<ReceivedOrder>,
    task: JoinHandle<Result<()>>,
}

impl Drop for CoordinatorLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a punch needs of an open coordinator link, cloneable: others (the
/// node's control interface) can ask over a link that a registration loop
/// owns.
#[derive(Clone)]
pub struct LinkAccess {
    pub handle: LinkHandle,
    pub coordinator: CoordinatorEndpoint,
    pub rtt: Duration,
    /// Where the coordinator sees this link: our shared port's mapping.
    pub observed: SocketAddr,
    pub features: u64,
    counters: Arc<ByteCounters>,
    /// Set by a punch whose NAT probe over this link showed an endpoint-
    /// independent mapping (crate::native::punch::PredictionLink).
    pub(crate) endpoint_independent: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for LinkAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkAccess({})", self.coordinator)
    }
}

impl LinkAccess {
    /// Bytes on the coordinator session so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.counters.total()
    }
}

impl CoordinatorLink {
    pub fn access(&self) -> LinkAccess {
        LinkAccess {
            handle: self.handle(),
            coordinator: self.coordinator,
            rtt: self.rtt,
            observed: self.observed,
            features: self.features,
            counters: self.counters.clone(),
            endpoint_independent: self.endpoint_independent.clone(),
        }
    }

    /// Opens a BIP324 session from `port` (a node's shared port; `None` for
    /// any free port, as load generators do), checks the service bit and
    /// the coordinator's proof of its key, registers `key`.
    pub async fn connect(
        port: Option<&SharedPort>,
        endpoint: CoordinatorEndpoint,
        key: NodeKey,
        config: LinkConfig,
    ) -> Result<CoordinatorLink> {
        let (link, _) = Self::open(port, endpoint, key, config, None, None).await?;
        Ok(link)
    }

    /// [`connect`](Self::connect), with a request for `ask` (if given)
    /// sent right behind the registration instead of after it is
    /// confirmed: the coordinator reads it registered, and the order comes
    /// a round trip sooner. `session_up` hears of the session as soon as it
    /// is set up, before the registration: what can be done meanwhile (a
    /// NAT probe) starts from there.
    pub async fn connect_asking(
        port: Option<&SharedPort>,
        endpoint: CoordinatorEndpoint,
        key: NodeKey,
        config: LinkConfig,
        ask: Option<NodeId>,
        session_up: oneshot::Sender<SessionUp>,
    ) -> Result<(CoordinatorLink, Option<AskedOrder>)> {
        Self::open(port, endpoint, key, config, ask, Some(session_up)).await
    }

    async fn open(
        port: Option<&SharedPort>,
        endpoint: CoordinatorEndpoint,
        key: NodeKey,
        config: LinkConfig,
        ask: Option<NodeId>,
        session_up: Option<oneshot::Sender<SessionUp>>,
    ) -> Result<(CoordinatorLink, Option<AskedOrder>)> {
        let coordinator = endpoint.addr;
        // Never v1: the coordinator proves its key over the BIP324 session
        // id, and a plaintext link would hand an on-path attacker the
        // coordinator's role.
        let mut session_config = config.session.clone();
        session_config.transport = TransportPolicy::V2;
        // The link ends when the coordinator goes silent; nothing is left
        // to deliver then, and a FIN would keep our port's 4-tuple to the
        // coordinator busy until it gives up retransmitting.
        session_config.close_with_reset = true;
        // Registration (and a request pipelined with it) goes out right
        // after verack; the RTT that times orders comes from the handshake.
        session_config.rtt_from_handshake = true;
        let outcome = wire::connect(coordinator, &session_config, port, Instant::now()).await;
        let session = outcome
            .result
            .with_context(|| format!("connecting to coordinator {coordinator} (BIP324 only)"))?;
        let Some(session_id) = session.session_id() else {
            bail!("the session with coordinator {coordinator} has no BIP324 session id");
        };
        let services = ServiceFlags::from(session.report.peer.services);
        if !services.has(node_punch_coordinator()) {
            bail!(
                "{coordinator} ({}) does not offer hole-punch coordination (service bit 26 unset)",
                session.report.peer.user_agent
            );
        }
        let (mut reader, mut writer, report) = session.into_parts();
        let counters = report.counters.clone();
        let rtt = Duration::from_secs_f64(report.rtt_ms.unwrap_or_default() / 1000.0);
        if let Some(tx) = session_up {
            let _ = tx.send(SessionUp {
                sees_us_at: report.peer.sees_us_at,
                rtt,
            });
        }

        let (inbound_tx, mut inbound) = mpsc::channel(64);
        let reader_task = tokio::spawn(async move {
            loop {
                let next = reader.recv().await;
                let stop = next.is_err();
                if inbound_tx.send(next).await.is_err() || stop {
                    return;
                }
            }
        });
        let (commands, mut command_rx) = mpsc::channel(64);
        let (orders_tx, orders) = mpsc::channel(64);
        let (registered_tx, registered_rx) = oneshot::channel();
        let (verified_tx, verified_rx) = oneshot::channel();
        let displaced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let displaced_in_task = displaced.clone();
        let refusals = config.refusals.clone();
        let mut client = Client::new(
            config.client,
            key,
            ExpectedCoordinator {
                id: endpoint.id,
                session_id,
            },
        );
        // Our end of this link is where the shared port is on our own
        // network: a peer behind the same NAT can reach it there.
        client.set_local(vec![report.local]);
        client.set_seen(report.peer.sees_us_at);
        let first = client.start();
        // The request is the task's first command: its `hpconnect` waits
        // in the machine for our `hpprove`.
        let asked = ask.and_then(|target| {
            let (reply, answer) = oneshot::channel();
            commands
                .try_send(Command::Request { target, reply })
                .ok()
                .map(|()| AskedOrder(answer))
        });
        let task = tokio::spawn(async move {
            let _reader = AbortOnDrop(reader_task.abort_handle());
            let mut registered_tx = Some(registered_tx);
            let mut verified_tx = Some(verified_tx);
            let mut pending: HashMap<u64, oneshot::Sender<Result<RequestedOrder, RequestError>>> =
                HashMap::new();
            // Our requests that got their order, until the punch is reported.
            let mut punching: HashMap<u64, oneshot::Sender<FailReason>> = HashMap::new();
            // Orders whose peer may still predict its ports, until it does
            // or the punch ends (its receiver dropped).
            let mut predictions: HashMap<u64, oneshot::Sender<Vec<SocketAddr>>> = HashMap::new();
            for msg in &first {
                writer.send(&msg.to_network()).await?;
            }
            let ping_interval = config.ping_interval;
            let mut ping_timer =
                tokio::time::interval_at(Instant::now().later(ping_interval), ping_interval);
            let mut ping_out: Option<u64> = None;
            loop {
                tokio::select! {
                    _ = ping_timer.tick() => {
                        if ping_out.is_some() {
                            bail!("the coordinator did not answer a ping within {ping_interval:?}");
                        }
                        let nonce = rand::random();
                        ping_out = Some(nonce);
                        writer.send(&NetworkMessage::Ping(nonce)).await?;
                    }
                    next = inbound.recv() => {
                        let msg = match next {
                            Some(Ok(Some(msg))) => msg,
                            Some(Ok(None)) => continue,
                            Some(Err(e)) => bail!("coordinator session ended: {e}"),
                            None => bail!("coordinator reader stopped"),
                        };
                        let native = match NativeMessage::from_network(&msg) {
                            Ok(Some(native)) => native,
                            Ok(None) => {
                                match msg {
                                    NetworkMessage::Ping(n) => writer.send(&NetworkMessage::Pong(n)).await?,
                                    NetworkMessage::Pong(n) if ping_out == Some(n) => ping_out = None,
                                    _ => {}
                                }
                                continue;
                            }
                            Err(e) => bail!("malformed message from the coordinator: {e}"),
                        };
                        let now = Instant::now();
                        for event in client.handle(now.into_std(), native) {
                            match event {
                                ClientEvent::Send(m) => writer.send(&m.to_network()).await?,
                                ClientEvent::CoordinatorVerified { id, version, features } => {
                                    tracing::debug!(coordinator = %id, version, features, "coordinator proved its key");
                                    if let Some(tx) = verified_tx.take() {
                                        let _ = tx.send((version, features));
                                    }
                                }
                                ClientEvent::Registered { id, observed } => {
                                    if let Some(tx) = registered_tx.take() {
                                        let _ = tx.send((id, observed));
                                    }
                                }
                                ClientEvent::Punch(order) => {
                                    let (predict, predicted) = oneshot::channel();
                                    if predictions.len() >= 64 {
                                        predictions.retain(|_, tx| !tx.is_closed());
                                    }
                                    predictions.insert(order.request, predict);
                                    if let Some(reply) = pending.remove(&order.request) {
                                        let (withdraw, withdrawn) = oneshot::channel();
                                        // Askers that never report (they dropped the
                                        // order) must not pile up here.
                                        if punching.len() >= 64 {
                                            punching.retain(|_, tx| !tx.is_closed());
                                        }
                                        punching.insert(order.request, withdraw);
                                        let _ = reply.send(Ok(RequestedOrder { order, received: now, predicted, withdrawn }));
                                    } else if orders_tx.try_send(ReceivedOrder { order, received: now, predicted }).is_err() {
                                        tracing::warn!("dropping a punch order: too many waiting");
                                    }
                                }
                                ClientEvent::Predicted { request, endpoints } => {
                                    if let Some(tx) = predictions.remove(&request) {
                                        let _ = tx.send(endpoints);
                                    }
                                }
                                ClientEvent::RequestFailed { request, reason } => {
                                    if let Some(reply) = pending.remove(&request) {
                                        let _ = reply.send(Err(RequestError::Refused(reason)));
                                    } else if let Some(withdraw) = punching.remove(&request) {
                                        let _ = withdraw.send(reason);
                                    }
                                }
                                ClientEvent::Refused { request, reason, why } => {
                                    tracing::warn!(request, reason = reason.as_str(), %why, "refused a punch order");
                                    if let Some(refusals) = &refusals {
                                        refusals.count(reason);
                                    }
                                    if let Some(reply) = pending.remove(&request) {
                                        let _ = reply.send(Err(RequestError::LinkDown(why)));
                                    }
                                }
                                ClientEvent::Displaced => {
                                    displaced_in_task.store(true, std::sync::atomic::Ordering::SeqCst);
                                    bail!("displaced: another connection proved our key to the coordinator (is this key in use by another process or machine?)");
                                }
                                ClientEvent::Close(why) => bail!("coordinator broke the protocol: {why}"),
                            }
                        }
                    }
                    command = command_rx.recv() => match command {
                        Some(Command::Request { target, reply }) => {
                            let request = rand::random();
                            // Askers that gave up (timed out) leave closed
                            // senders; the machine forgets their requests too.
                            if pending.len() >= 64 {
                                pending.retain(|_, tx| !tx.is_closed());
                            }
                            pending.insert(request, reply);
                            if let Some(ask) = client.request(Instant::now().into_std(), request, target) {
                                writer.send(&ask.to_network()).await?;
                            }
                        }
                        Some(Command::TellNat(class)) => {
                            if let Some(m) = client.set_nat(class) {
                                writer.send(&m.to_network()).await?;
                            }
                        }
                        Some(Command::Predict { request, ip, ports }) => {
                            if let Some(m) = client.predict(Instant::now().into_std(), request, ip, ports) {
                                writer.send(&m.to_network()).await?;
                            }
                        }
                        Some(Command::Report { request, result }) => {
                            punching.remove(&request);
                            predictions.remove(&request);
                            writer.send(&NativeMessage::Result { request, result }.to_network()).await?;
                        }
                        None => return Ok(()),
                    },
                }
            }
        });
        let (id, observed) =
            match tokio::time::timeout(config.session.handshake_timeout, registered_rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => {
                    let why = match task.await {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the link stopped".into(),
                    };
                    bail!("registration with {coordinator} failed: {why}");
                }
                Err(_) => {
                    task.abort();
                    bail!("registration with {coordinator} timed out");
                }
            };
        // Sent before the registration, so it is here by now.
        let (version, features) = verified_rx.await.unwrap_or_default();
        let link = CoordinatorLink {
            id,
            observed,
            coordinator: endpoint,
            version,
            features,
            rtt,
            counters,
            endpoint_independent: Arc::default(),
            displaced,
            commands,
            orders,
            task,
        };
        Ok((link, asked))
    }

    /// A handle for asking and reporting from other tasks.
    pub fn handle(&self) -> LinkHandle {
        LinkHandle {
            commands: self.commands.clone(),
        }
    }

    pub async fn request(
        &self,
        target: NodeId,
        timeout: Duration,
    ) -> Result<RequestedOrder, RequestError> {
        self.handle().request(target, timeout).await
    }

    pub async fn report(&self, request: u64, result: PunchResult) {
        self.handle().report(request, result).await
    }

    /// Bytes on the coordinator session so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.counters.total()
    }

    /// Waits until the link ends and says why.
    pub async fn closed(&mut self) -> String {
        match (&mut self.task).await {
            Ok(Ok(())) => "closed".into(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        }
    }

    pub fn is_alive(&self) -> bool {
        !self.task.is_finished()
    }

    /// The link ended because another connection registered our key.
    pub fn was_displaced(&self) -> bool {
        self.displaced.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A coordinator session that is up, its registration not yet confirmed.
pub struct SessionUp {
    /// Where the coordinator says (in its `version`) it sees us: not yet
    /// proven to come from the coordinator, so good for a guess only.
    pub sees_us_at: Option<SocketAddr>,
    pub rtt: Duration,
}

/// A request that went out; its order (or refusal) comes later.
pub struct AskedOrder(oneshot::Receiver<Result<RequestedOrder, RequestError>>);

impl AskedOrder {
    pub async fn answer(self, timeout: Duration) -> Result<RequestedOrder, RequestError> {
        match tokio::time::timeout(timeout, self.0).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RequestError::LinkDown("link task ended".into())),
            Err(_) => Err(RequestError::Timeout(timeout)),
        }
    }
}

#[derive(Clone)]
pub struct LinkHandle {
    commands: mpsc::Sender<Command>,
}

impl LinkHandle {
    /// Asks for a punch to `target`; returns our order.
    pub async fn request(
        &self,
        target: NodeId,
        timeout: Duration,
    ) -> Result<RequestedOrder, RequestError> {
        self.ask(target).await.answer(timeout).await
    }

    /// Sends a request for `target`; the answer is awaited separately.
    pub async fn ask(&self, target: NodeId) -> AskedOrder {
        let (reply, answer) = oneshot::channel();
        // A link that is gone drops the command, and with it `reply`: the
        // answer then says so.
        let _ = self.commands.send(Command::Request { target, reply }).await;
        AskedOrder(answer)
    }

    /// Tells the coordinator, for the peer of our order `request`, the
    /// ports at our public address `ip` that our NAT will likely give our
    /// punch. Dropped when the coordinator does not pass predictions on.
    pub async fn predict(&self, request: u64, ip: std::net::IpAddr, ports: Vec<u16>) {
        let _ = self
            .commands
            .send(Command::Predict { request, ip, ports })
            .await;
    }

    /// Tells the coordinator our NAT's class, now or once registered, for
    /// the records of our peers. Dropped if the link is busy (it carries
    /// the next one).
    pub fn tell_nat(&self, class: crate::nat::NatBrief) {
        if self.commands.try_send(Command::TellNat(class)).is_err() {
            tracing::debug!("not telling the coordinator our NAT class: the link is busy or gone");
        }
    }

    /// Tells the coordinator how a punch went.
    pub async fn report(&self, request: u64, result: PunchResult) {
        let _ = self
            .commands
            .send(Command::Report { request, result })
            .await;
    }
}
