//! The native path: a reachable Bitcoin node ("coordinator") that nodes
//! behind NATs keep a session with swaps their observed endpoints and tells
//! both when to dial. Spec: docs/native-protocol.md.

pub mod client;
pub mod coordinator;
pub mod machine;
pub mod messages;
pub mod punch;
pub mod reach;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::identity::{NodeId, NodeKey};
use crate::node::Node;
use crate::report::{Outcome, Path};
use crate::wire::{SessionConfig, SessionRole, Stage};
use client::{CoordinatorEndpoint, CoordinatorLink, LinkAccess, LinkConfig};
use punch::{PunchContext, PunchOutcome};

impl PunchContext {
    /// Punches from `port` (whose accept loop feeds `router`), arranged
    /// over `link`.
    pub fn over(
        port: Arc<crate::net::SharedPort>,
        router: Arc<crate::net::Router>,
        key: Arc<NodeKey>,
        session: SessionConfig,
        link: &LinkAccess,
        known_nat: crate::nat::NatMemory,
    ) -> Self {
        PunchContext {
            port,
            router,
            key,
            session,
            coordinator: link.coordinator,
            coordinator_rtt: link.rtt,
            ending: Default::default(),
            prediction: punch::PredictionLink::of(link),
            known_nat,
            early_probe: None,
        }
    }

    pub fn for_node(
        node: &Node,
        key: Arc<NodeKey>,
        session: SessionConfig,
        link: &CoordinatorLink,
    ) -> Self {
        PunchContext {
            port: node.shared_port().clone(),
            router: node.router().clone(),
            key,
            session,
            coordinator: link.coordinator,
            coordinator_rtt: link.rtt,
            ending: node.ending(),
            prediction: punch::PredictionLink::of(&link.access()),
            known_nat: node.handle().nat_memory(),
            early_probe: None,
        }
    }
}

/// `bitpunch connect NODE_ID@COORDINATOR`: register with `coordinator` from
/// `node`'s shared port with the request for `target` right behind the
/// registration (and a NAT probe under way meanwhile), then punch as
/// `connect_via` does. Times count from before the registration, so the
/// path pays for reaching its third party. `also`,
/// the coordinator's address in the other family, is registered at the
/// same time when the node has that family (dual stack): the peer then
/// races both.
pub async fn connect(
    node: &Node,
    (coordinator, also): (CoordinatorEndpoint, Option<SocketAddr>),
    key: Arc<NodeKey>,
    session: SessionConfig,
    target: NodeId,
    allow_private: bool,
) -> Outcome {
    let asked = Instant::now();
    let link_config = LinkConfig {
        session: session.clone(),
        client: machine::ClientConfig {
            allow_private,
            ..Default::default()
        },
        ping_interval: crate::native::client::LINK_PING_INTERVAL,
        refusals: None,
    };
    let mut second_config = link_config.clone();
    second_config.client.second_family = true;
    let second_key = key.clone();
    let second = async move {
        let addr = other_family_of(node, coordinator, also)?;
        let endpoint = CoordinatorEndpoint {
            addr,
            ..coordinator
        };
        register(node, endpoint, &second_key, second_config)
            .await
            .inspect_err(|e| tracing::debug!(error = %format!("{e:#}"), "no registration over the other family"))
            .ok()
    };
    // A dual-stack node's request waits for both registrations: its order
    // must carry our endpoint in the other family (behind two symmetric
    // NATs the only way through), which the coordinator knows once the
    // second link has registered.
    let ask_with_registration = other_family_of(node, coordinator, also)
        .is_none()
        .then_some(target);
    let (session_up, up) = tokio::sync::oneshot::channel();
    let early_probe = punch::EarlyProbe::start(
        node.shared_port().clone(),
        coordinator.addr,
        node.handle().nat_memory(),
        up,
    );
    let first = async {
        CoordinatorLink::connect_asking(
            Some(node.shared_port()),
            coordinator,
            (*key).clone(),
            link_config,
            ask_with_registration,
            session_up,
        )
        .await
        .with_context(|| format!("registering with coordinator {coordinator}"))
    };
    let (first, second) = first_and_second(first, second).await;
    match first {
        Ok((link, order)) => {
            tracing::info!(
                id = %link.id, observed = %link.observed,
                other_family = ?second.as_ref().map(|l| l.observed),
                "registered; asking for {target}"
            );
            let mut ctx = PunchContext::for_node(node, key, session, &link);
            ctx.early_probe = Some(early_probe);
            let access = link.access();
            let order = match order {
                Some(order) => order,
                None => access.handle.ask(target).await,
            };
            let mut outcome = follow_order(&ctx, &access, order, asked, 0).await;
            outcome.record.bytes.coordination = link.bytes();
            drop(second);
            outcome.record
        }
        Err(e) => {
            let mut record = Outcome::failed(
                Path::Native,
                SessionRole::Initiator,
                Stage::Coordination,
                format!("{e:#}"),
            );
            record.via = Some(coordinator.to_string());
            record
        }
    }
}

/// The requester's side: ask the coordinator for `target`, punch, upgrade,
/// authenticate. `link` must have been opened from `node`'s shared port, for
/// this connection: `asked` is when the user asked (before the link was
/// opened), and all of the link's bytes count as coordination.
pub async fn connect_via(
    node: &Node,
    link: &CoordinatorLink,
    key: Arc<NodeKey>,
    session: SessionConfig,
    target: NodeId,
    asked: Instant,
) -> PunchOutcome {
    let ctx = PunchContext::for_node(node, key, session, link);
    let access = link.access();
    let mut outcome = connect_with(&ctx, &access, target, asked).await;
    outcome.record.bytes.coordination = link.bytes();
    outcome
}

/// The same over a link someone else owns (a running node's registration):
/// one request on the open session. The record's coordination bytes are
/// what the link carried while this punch was arranged.
pub async fn connect_with(
    ctx: &PunchContext,
    link: &LinkAccess,
    target: NodeId,
    asked: Instant,
) -> PunchOutcome {
    let bytes_before = link.bytes();
    let order = link.handle.ask(target).await;
    follow_order(ctx, link, order, asked, bytes_before).await
}

/// The rest of [`connect_with`] once the request went out: wait for the
/// order, punch, report.
async fn follow_order(
    ctx: &PunchContext,
    link: &LinkAccess,
    order: client::AskedOrder,
    asked: Instant,
    bytes_before: u64,
) -> PunchOutcome {
    let session = ctx.session.clone();
    let requested = match order.answer(session.handshake_timeout).await {
        Ok(o) => o,
        Err(e) => {
            let mut record = Outcome::failed(
                Path::Native,
                SessionRole::Initiator,
                Stage::Coordination,
                e.to_string(),
            );
            record.via = Some(link.coordinator.to_string());
            return PunchOutcome {
                record,
                session: None,
                spliced: None,
                result: messages::PunchResult::NoConnection,
            };
        }
    };
    let request = requested.order.request;
    let peer = requested.order.peer;
    let withdrawn = async {
        match requested.withdrawn.await {
            Ok(reason) => reason,
            // No word from the coordinator: the punch decides.
            Err(_) => std::future::pending().await,
        }
    };
    let mut outcome = tokio::select! {
        outcome = punch::execute(ctx, requested.order, requested.predicted, asked, requested.received) => outcome,
        reason = withdrawn => {
            // Nobody is dialing back: stop now rather than after three
            // attempts into a NAT that will not open.
            let mut record = Outcome::failed(
                Path::Native,
                SessionRole::Initiator,
                Stage::Punch,
                format!("the coordinator says the peer refused its order ({reason:?}): nobody dials back"),
            );
            record.via = Some(link.coordinator.to_string());
            record.candidates = vec![peer.to_string()];
            PunchOutcome {
                record,
                session: None,
                spliced: None,
                result: messages::PunchResult::NoConnection,
            }
        }
    };
    link.handle.report(request, outcome.result).await;
    outcome.record.bytes.coordination = link.bytes().saturating_sub(bytes_before);
    outcome
}

/// The responder's side: carries out every order the coordinator sends,
/// each in its own task; established sessions are served until they end.
/// Each finished punch's record goes to `records`, if given.
pub async fn serve_orders(
    node: &Node,
    link: &mut CoordinatorLink,
    key: Arc<NodeKey>,
    session: SessionConfig,
    idle: Duration,
    records: Option<mpsc::Sender<Outcome>>,
) -> String {
    let ctx = PunchContext::for_node(node, key, session, link);
    let handle = link.handle();
    let owner = node.session_owner();
    let mut punches = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            order = link.orders.recv() => {
                let Some(client::ReceivedOrder { order, received, predicted }) = order else { break };
                let ctx = ctx.clone();
                let handle = handle.clone();
                let records = records.clone();
                let owner = owner.clone();
                punches.spawn(async move {
                    let request = order.request;
                    let peer = order.peer;
                    let peer_node = Some(NodeId::of(&order.peer_key));
                    let outcome = punch::execute(&ctx, order, predicted, received, received).await;
                    handle.report(request, outcome.result).await;
                    let record = outcome.record;
                    match record.ok {
                        true => tracing::info!(%peer, record = %record.to_json(), "punched session established"),
                        false => tracing::warn!(%peer, record = %record.to_json(), "punch failed"),
                    }
                    if let Some(tx) = records {
                        let _ = tx.send(record).await;
                    }
                    // The session belongs to the node from here: it survives
                    // this link, whose punches are aborted when it ends.
                    if let Some(session) = outcome.session {
                        owner.adopt_session(crate::node::SessionPath::Native, session, idle, peer_node).await;
                    }
                    if let Some(spliced) = outcome.spliced {
                        owner.adopt(spliced.info, spliced.task).await;
                    }
                });
            }
            Some(_) = punches.join_next(), if !punches.is_empty() => {}
        }
    }
    link.closed().await
}

/// What [`stay_registered`] reports as it goes.
#[derive(Debug, Clone)]
pub enum RegistrationEvent {
    Registered {
        id: NodeId,
        observed: std::net::SocketAddr,
        /// For asking over this registration's link while it lasts.
        link: LinkAccess,
    },
    /// The link ended: the coordinator closed it, stopped answering pings,
    /// or broke the protocol.
    Lost { why: String },
    /// A registration attempt failed (unreachable, refused its proof...).
    Failed { why: String },
    /// Another connection proved our key to the coordinator, which closed
    /// ours: [`stay_registered`] stops rather than fight over the key.
    Displaced { why: String },
}

/// What a node that is reachable through a coordinator does for as long as
/// it runs: register, serve orders, and when the link ends (the coordinator
/// went away, stopped answering pings, or failed its proof) register again
/// after a jittered back-off, from 1 s doubling to a minute. It returns
/// only when displaced: the same key registered from elsewhere.
/// `on_event` hears of each registration (the CLI prints the address) and
/// each lost link.
pub async fn stay_registered(
    node: &Node,
    coordinator: CoordinatorEndpoint,
    key: Arc<NodeKey>,
    link_config: LinkConfig,
    idle: Duration,
    records: Option<mpsc::Sender<Outcome>>,
    on_event: impl Fn(RegistrationEvent),
) {
    let mut backoff = crate::clock::Backoff::default();
    loop {
        match register(node, coordinator, &key, link_config.clone()).await {
            Ok(mut link) => {
                backoff.reset();
                tracing::info!(id = %link.id, observed = %link.observed, version = link.version, "registered with the coordinator");
                on_event(RegistrationEvent::Registered {
                    id: link.id,
                    observed: link.observed,
                    link: link.access(),
                });
                let why = serve_orders(
                    node,
                    &mut link,
                    key.clone(),
                    link_config.session.clone(),
                    idle,
                    records.clone(),
                )
                .await;
                if link.was_displaced() {
                    // Registering again would displace the other holder of
                    // the key, which would do the same: a loop nobody wins.
                    tracing::error!(%why, "not registering again: this key is registered from elsewhere");
                    on_event(RegistrationEvent::Displaced { why });
                    return;
                }
                tracing::warn!(%why, "lost the coordinator");
                on_event(RegistrationEvent::Lost { why });
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!(error = %why, retry_in = ?backoff.next(), "cannot register");
                on_event(RegistrationEvent::Failed { why });
            }
        }
        backoff.wait().await;
    }
}

/// `also`, if it is of the other family than `coordinator`'s address and
/// the node's shared port has that family.
pub fn other_family_of(
    node: &Node,
    coordinator: CoordinatorEndpoint,
    also: Option<SocketAddr>,
) -> Option<SocketAddr> {
    also.filter(|a| {
        a.is_ipv4() != coordinator.addr.is_ipv4() && node.shared_port().has_family_of(*a)
    })
}

/// Both registrations, the second given as long again as the first took
/// (at least 200 ms): a family that does not answer costs one
/// registration's time, not a timeout.
async fn first_and_second<A, B>(
    first: impl std::future::Future<Output = A>,
    second: impl std::future::Future<Output = Option<B>>,
) -> (A, Option<B>) {
    let started = Instant::now();
    tokio::pin!(first);
    tokio::pin!(second);
    tokio::select! {
        a = &mut first => {
            let grace = started.elapsed().max(Duration::from_millis(200));
            (a, tokio::time::timeout(grace, second).await.ok().flatten())
        }
        b = &mut second => (first.await, b),
    }
}

/// Opens a coordinator link from `node`'s port and registers `key`.
pub async fn register(
    node: &Node,
    coordinator: CoordinatorEndpoint,
    key: &NodeKey,
    config: LinkConfig,
) -> Result<CoordinatorLink> {
    CoordinatorLink::connect(Some(node.shared_port()), coordinator, key.clone(), config)
        .await
        .with_context(|| format!("registering with coordinator {coordinator}"))
}

/// Aborts a task when dropped: a connection's reader and writer tasks end
/// with whoever owns the connection, also when that owner is aborted.
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
