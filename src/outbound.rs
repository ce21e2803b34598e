//! The outbound connection manager: the node keeps `target` sessions it
//! chose itself, picked from its address manager, at most one per
//! netgroup, and replaces those that end — as Bitcoin Core's
//! `ThreadOpenConnections` does for its full-relay outbound slots.
//!
//! An address reachable via a coordinator is connected to through that
//! coordinator; a node not yet registered with it registers first (which
//! also makes it reachable there). Such an address is in the coordinator's
//! netgroup, so however many nodes one coordinator claims to reach, they
//! and the coordinator's own network fill at most one slot
//! (docs/native-protocol.md, "Address groups").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::addrman::{AddrKey, Netgroup, PeerAddr};
use crate::clock::{lock, unix_now};
use crate::connect::NodeConnector;
use crate::identity::NodeId;
use crate::native::client::CoordinatorEndpoint;
use crate::node::SessionPath;
use crate::peers::{HandedOff, PeerBook};

#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Sessions to keep (Core: 8 full-relay outbound).
    pub target: usize,
    /// How often the manager looks for a slot to fill.
    pub tick: Duration,
    /// How long a new coordinator registration may take before the
    /// address that needed it counts as failed.
    pub register_timeout: Duration,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            target: 8,
            tick: Duration::from_secs(2),
            register_timeout: Duration::from_secs(5),
        }
    }
}

/// One session the manager made.
#[derive(Debug, Clone, Serialize)]
pub struct OutboundSession {
    /// As a user would type it.
    pub address: String,
    pub netgroup: String,
    pub path: SessionPath,
    /// Made because the node we connected to handed us to this one.
    pub handed_off: bool,
    /// Unix seconds.
    pub since: u64,
    #[serde(skip)]
    key: AddrKey,
    #[serde(skip)]
    group: Netgroup,
    /// The BIP324 session id (or, for v1, the remote address) that finds
    /// it among the node's sessions.
    #[serde(skip)]
    session: String,
    /// When the manager got it: the node lists an adopted session a moment
    /// later, so until [`LISTING_GRACE`] has passed a session missing from
    /// the list has not ended.
    #[serde(skip)]
    made: tokio::time::Instant,
}

const LISTING_GRACE: Duration = Duration::from_secs(5);

/// What `bitpunch status` shows of the manager.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutboundStatus {
    pub target: usize,
    pub sessions: Vec<OutboundSession>,
    /// The most sessions held in one netgroup (1 unless something broke).
    pub max_per_group: usize,
    pub attempts: u64,
    pub failures: u64,
    /// Handoffs received that ended in a session.
    pub handoffs_followed: u64,
}

/// The manager's state, shared with the control interface.
#[derive(Debug, Default)]
pub struct OutboundState(Mutex<OutboundStatus>);

impl OutboundState {
    pub fn status(&self) -> OutboundStatus {
        lock(&self.0).clone()
    }

    fn update(&self, f: impl FnOnce(&mut OutboundStatus)) {
        f(&mut lock(&self.0))
    }
}

/// Runs the manager until the node stops. `register` asks the node to
/// register with a coordinator it is not registered with yet.
pub async fn run(
    config: OutboundConfig,
    book: Arc<PeerBook>,
    connector: NodeConnector,
    register: mpsc::Sender<CoordinatorEndpoint>,
    state: Arc<OutboundState>,
    own_id: NodeId,
) {
    state.update(|s| s.target = config.target);
    let mut handoffs = book.take_handoffs();
    let mut manager = Manager {
        config,
        book,
        connector,
        register,
        state,
        own_id,
        asked_to_register: HashMap::new(),
        cooling: HashMap::new(),
    };
    let mut ticker = tokio::time::interval(manager.config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => manager.fill_a_slot().await,
            Some(handed) = handoffs.recv() => manager.follow(handed).await,
        }
    }
}

struct Manager {
    config: OutboundConfig,
    book: Arc<PeerBook>,
    connector: NodeConnector,
    register: mpsc::Sender<CoordinatorEndpoint>,
    state: Arc<OutboundState>,
    own_id: NodeId,
    asked_to_register: HashMap<NodeId, u64>,
    /// Addresses whose session ended soon after it began (a full node
    /// that closed us, with or without a handoff): left alone a while,
    /// or the manager would knock every tick.
    cooling: HashMap<AddrKey, tokio::time::Instant>,
}

/// A session that ends within this of its start cools its address for
/// [`COOLING`].
const SHORT_SESSION: Duration = Duration::from_secs(30);
const COOLING: Duration = Duration::from_secs(30);

impl Manager {
    /// Nodes we hold a session with already, whoever asked for it.
    fn connected_nodes(&self) -> Vec<NodeId> {
        self.connector
            .handle
            .peers()
            .iter()
            .filter_map(|p| p.node.as_deref()?.parse().ok())
            .collect()
    }

    async fn fill_a_slot(&mut self) {
        let now = tokio::time::Instant::now();
        for ended in forget_ended(&self.state, &self.connector) {
            let lasted = unix_now().saturating_sub(ended.since);
            if lasted < SHORT_SESSION.as_secs() {
                self.cooling.insert(ended.key, now);
            }
        }
        self.cooling
            .retain(|_, since| now.saturating_duration_since(*since) < COOLING);
        let held = self.state.status();
        if held.sessions.len() >= self.config.target {
            return;
        }
        let used_groups: Vec<Netgroup> = held.sessions.iter().map(|s| s.group).collect();
        let mut used_keys: Vec<AddrKey> = held.sessions.iter().map(|s| s.key).collect();
        used_keys.extend(self.cooling.keys().copied());
        let connected = self.connected_nodes();
        let own_id = self.own_id;
        let picked = self.book.with_addrman(|m| {
            m.select(unix_now(), &mut rand::thread_rng(), |e| {
                let node = match &e.addr {
                    PeerAddr::Via(r) => r.node().ok(),
                    PeerAddr::Direct(_) => None,
                };
                node.is_some_and(|n| n == own_id || connected.contains(&n))
                    || used_groups.contains(&e.addr.netgroup())
                    || e.addr.key().is_some_and(|k| used_keys.contains(&k))
            })
            .map(|e| e.addr.clone())
        });
        if let Some(addr) = picked {
            let group = addr.netgroup();
            self.connect(addr, group, false).await;
        }
    }

    /// A node we connected to had no slot and sent us to one of its
    /// inbound peers: that peer takes the slot of the node that chose it,
    /// in its netgroup.
    async fn follow(&mut self, handed: HandedOff) {
        let group = Netgroup::of_ip(handed.from.ip());
        let from = AddrKey::Direct(handed.from);
        self.cooling.insert(from, tokio::time::Instant::now());
        self.state.update(|s| {
            s.sessions.retain(|held| held.key != from);
            s.max_per_group = max_per_group(&s.sessions);
        });
        let Ok(node) = handed.record.node() else {
            return;
        };
        let taken = self
            .state
            .status()
            .sessions
            .iter()
            .any(|s| s.group == group);
        if node == self.own_id || taken {
            return;
        }
        if self.connected_nodes().contains(&node) {
            // We hold a session with it already, made through another
            // group: it moves into the slot of the node that vouched for
            // it, and the group it leaves is filled anew. Still one
            // session per group.
            self.state.update(|s| {
                let ours = s
                    .sessions
                    .iter_mut()
                    .find(|h| matches!(h.key, AddrKey::Via { node: n, .. } if n == node));
                if let Some(held) = ours {
                    held.group = group;
                    held.netgroup = group.to_string();
                    held.handed_off = true;
                    s.handoffs_followed = s.handoffs_followed.saturating_add(1);
                }
                s.max_per_group = max_per_group(&s.sessions);
            });
            return;
        }
        let addr = PeerAddr::Via(handed.record);
        // Known from now on, like any address a peer told us.
        self.book
            .with_addrman(|m| m.add(addr.clone(), group, unix_now()));
        self.connect(addr, group, true).await;
    }

    async fn connect(&mut self, addr: PeerAddr, group: Netgroup, handed_off: bool) {
        let Some(key) = addr.key() else { return };
        self.book.with_addrman(|m| m.attempt(&key, unix_now()));
        self.state
            .update(|s| s.attempts = s.attempts.saturating_add(1));
        if let PeerAddr::Via(record) = &addr {
            let coordinator = CoordinatorEndpoint {
                id: record.coordinator,
                addr: record.coordinator_at,
            };
            if !self.linked_to(coordinator).await {
                self.failed(&key, "could not register with its coordinator");
                return;
            }
        }
        let address = addr.to_address_string();
        match self.connector.connect(&address).await {
            Ok(record) if record.ok => {
                self.book.with_addrman(|m| m.good(&key, unix_now()));
                let path = match addr {
                    PeerAddr::Direct(_) => SessionPath::Outbound,
                    PeerAddr::Via(_) => SessionPath::Native,
                };
                tracing::info!(%address, netgroup = %group, ?path, handed_off, "outbound session");
                self.state.update(|s| {
                    s.sessions.push(OutboundSession {
                        address,
                        netgroup: group.to_string(),
                        path,
                        handed_off,
                        since: unix_now(),
                        key,
                        group,
                        session: record.session_id.or(record.remote).unwrap_or_default(),
                        made: tokio::time::Instant::now(),
                    });
                    s.max_per_group = max_per_group(&s.sessions);
                    if handed_off {
                        s.handoffs_followed = s.handoffs_followed.saturating_add(1);
                    }
                });
            }
            // A coordinator's rate limit or a busy peer says "later", not
            // "unreachable": the address cools instead of failing.
            Ok(record) if record.error.as_deref().is_some_and(refused_for_now) => {
                tracing::info!(%address, error = record.error.as_deref().unwrap_or("-"), "outbound attempt put off");
                self.cooling.insert(key, tokio::time::Instant::now());
            }
            Ok(record) => self.failed(&key, record.error.as_deref().unwrap_or("-")),
            Err(e) => self.failed(&key, &format!("{e:#}")),
        }
    }

    fn failed(&self, key: &AddrKey, why: &str) {
        tracing::info!(?key, %why, "outbound attempt failed");
        self.book.with_addrman(|m| m.failed(key, unix_now()));
        self.state
            .update(|s| s.failures = s.failures.saturating_add(1));
    }

    /// Registered with `coordinator` already, or asks the node to register
    /// (once a minute at most) and waits for the link.
    async fn linked_to(&mut self, coordinator: CoordinatorEndpoint) -> bool {
        let handle = &self.connector.handle;
        if handle.link_to(coordinator.id).is_some() {
            return true;
        }
        let now = unix_now();
        let recently = self
            .asked_to_register
            .get(&coordinator.id)
            .is_some_and(|t| now.saturating_sub(*t) < 60);
        if !recently {
            self.asked_to_register.insert(coordinator.id, now);
            if self.register.send(coordinator).await.is_err() {
                return false;
            }
        }
        let deadline = tokio::time::Instant::now() + self.config.register_timeout;
        while tokio::time::Instant::now() < deadline {
            if handle.link_to(coordinator.id).is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// Drops the sessions that ended from the manager's list (their slots
/// are then filled again), and returns them.
fn forget_ended(state: &OutboundState, connector: &NodeConnector) -> Vec<OutboundSession> {
    let peers = connector.handle.peers();
    let now = tokio::time::Instant::now();
    let live = |held: &OutboundSession| {
        let young = now.saturating_duration_since(held.made) < LISTING_GRACE;
        young
            || peers.iter().any(|p| {
                p.session_id.as_deref() == Some(held.session.as_str())
                    || p.remote.to_string() == held.session
            })
    };
    let mut ended = Vec::new();
    state.update(|s| {
        let (kept, gone): (Vec<_>, Vec<_>) = s.sessions.drain(..).partition(|h| live(h));
        s.sessions = kept;
        ended = gone;
        s.max_per_group = max_per_group(&s.sessions);
    });
    ended
}

/// The coordinator's answer was a temporary refusal.
fn refused_for_now(error: &str) -> bool {
    use crate::native::client::RequestError;
    use crate::native::messages::FailReason;
    [FailReason::RateLimited, FailReason::PeerBusy]
        .into_iter()
        .any(|reason| error.contains(&RequestError::Refused(reason).to_string()))
}

fn max_per_group(sessions: &[OutboundSession]) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in sessions {
        let c = counts.entry(&s.netgroup).or_default();
        *c = c.saturating_add(1);
    }
    counts.values().copied().max().unwrap_or(0)
}
