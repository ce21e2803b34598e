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
use crate::connect::NodeConnector;
use crate::identity::NodeId;
use crate::native::client::CoordinatorEndpoint;
use crate::node::SessionPath;
use crate::peers::{unix_now, PeerBook};

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
            register_timeout: Duration::from_secs(15),
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
    /// Unix seconds.
    pub since: u64,
    #[serde(skip)]
    key: Option<AddrKey>,
    #[serde(skip)]
    group: Option<Netgroup>,
    #[serde(skip)]
    session_id: String,
}

/// What `bitpunch status` shows of the manager.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutboundStatus {
    pub target: usize,
    pub sessions: Vec<OutboundSession>,
    /// The most sessions held in one netgroup (1 unless something broke).
    pub max_per_group: usize,
    /// Addresses known: heard of, and connected to before.
    pub addresses_new: usize,
    pub addresses_tried: usize,
    pub attempts: u64,
    pub failures: u64,
}

/// The manager's state, shared with the control interface.
#[derive(Debug, Default)]
pub struct OutboundState(Mutex<OutboundStatus>);

impl OutboundState {
    pub fn status(&self) -> OutboundStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut OutboundStatus)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
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
    let mut asked_to_register: HashMap<NodeId, u64> = HashMap::new();
    let mut ticker = tokio::time::interval(config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        forget_ended(&state, &connector);
        let held = state.status();
        let (new, tried) = book.with_addrman(|m| (m.count(false), m.count(true)));
        state.update(|s| {
            s.addresses_new = new;
            s.addresses_tried = tried;
        });
        if held.sessions.len() >= config.target {
            continue;
        }
        let used_groups: Vec<Netgroup> = held.sessions.iter().filter_map(|s| s.group).collect();
        let used_keys: Vec<AddrKey> = held.sessions.iter().filter_map(|s| s.key).collect();
        // Nodes we hold a session with already, whoever asked for it.
        let connected: Vec<NodeId> = connector
            .handle
            .peers()
            .iter()
            .filter_map(|p| p.node.as_deref()?.parse().ok())
            .collect();
        let picked = book.with_addrman(|m| {
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
        let Some(addr) = picked else { continue };
        let Some(key) = addr.key() else { continue };
        book.with_addrman(|m| m.attempt(&key, unix_now()));
        state.update(|s| s.attempts = s.attempts.saturating_add(1));
        if let PeerAddr::Via(record) = &addr {
            let linked = connector.handle.link_to(record.coordinator).is_some();
            if !linked
                && !registered_in_time(
                    &config,
                    &connector,
                    &register,
                    &mut asked_to_register,
                    CoordinatorEndpoint {
                        id: record.coordinator,
                        addr: record.coordinator_at,
                    },
                )
                .await
            {
                book.with_addrman(|m| m.failed(&key, unix_now()));
                state.update(|s| s.failures = s.failures.saturating_add(1));
                continue;
            }
        }
        let address = addr.to_address_string();
        let outcome = connector.connect(&address).await;
        match outcome {
            Ok(record) if record.ok => {
                book.with_addrman(|m| m.good(&key, unix_now()));
                let path = match addr {
                    PeerAddr::Direct(_) => SessionPath::Outbound,
                    PeerAddr::Via(_) => SessionPath::Native,
                };
                let group = addr.netgroup();
                tracing::info!(%address, netgroup = %group, ?path, "outbound session");
                state.update(|s| {
                    s.sessions.push(OutboundSession {
                        address,
                        netgroup: group.to_string(),
                        path,
                        since: unix_now(),
                        key: Some(key),
                        group: Some(group),
                        session_id: record.session_id.unwrap_or_default(),
                    });
                    s.max_per_group = max_per_group(&s.sessions);
                });
            }
            Ok(record) => {
                tracing::info!(%address, error = record.error.as_deref().unwrap_or("-"), "outbound attempt failed");
                book.with_addrman(|m| m.failed(&key, unix_now()));
                state.update(|s| s.failures = s.failures.saturating_add(1));
            }
            Err(e) => {
                tracing::info!(%address, error = %format!("{e:#}"), "outbound attempt failed");
                book.with_addrman(|m| m.failed(&key, unix_now()));
                state.update(|s| s.failures = s.failures.saturating_add(1));
            }
        }
    }
}

/// Drops the sessions that ended from the manager's list (their slots
/// are then filled again).
fn forget_ended(state: &OutboundState, connector: &NodeConnector) {
    let live: Vec<String> = connector
        .handle
        .peers()
        .into_iter()
        .filter_map(|p| p.session_id)
        .collect();
    state.update(|s| {
        s.sessions.retain(|held| live.contains(&held.session_id));
        s.max_per_group = max_per_group(&s.sessions);
    });
}

fn max_per_group(sessions: &[OutboundSession]) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in sessions {
        let c = counts.entry(&s.netgroup).or_default();
        *c = c.saturating_add(1);
    }
    counts.values().copied().max().unwrap_or(0)
}

/// Asks the node to register with `coordinator` (once a minute at most)
/// and waits for the link.
async fn registered_in_time(
    config: &OutboundConfig,
    connector: &NodeConnector,
    register: &mpsc::Sender<CoordinatorEndpoint>,
    asked: &mut HashMap<NodeId, u64>,
    coordinator: CoordinatorEndpoint,
) -> bool {
    let now = unix_now();
    let recently = asked
        .get(&coordinator.id)
        .is_some_and(|t| now.saturating_sub(*t) < 60);
    if !recently {
        asked.insert(coordinator.id, now);
        if register.send(coordinator).await.is_err() {
            return false;
        }
    }
    let deadline = tokio::time::Instant::now() + config.register_timeout;
    while tokio::time::Instant::now() < deadline {
        if connector.handle.link_to(coordinator.id).is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
