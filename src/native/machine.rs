//! The native protocol's state machines, without I/O: the coordinator's and
//! the client's. Drivers feed them messages and time and carry out what they
//! return. docs/native-protocol.md describes the same rules in prose.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::XOnlyPublicKey;

use super::messages::{
    coordinator_proof_data, FailReason, NativeMessage, PunchResult, PunchRole, COORDINATOR_TAG,
    FEATURES, FEATURE_DUAL_STACK, FEATURE_LOCAL_CANDIDATES, FEATURE_NAT_CLASS,
    FEATURE_PORT_PREDICTION, FEATURE_SECOND_FAMILY, MAX_LOCAL_ENDPOINTS, MAX_PREDICTED_PORTS,
    PROTOCOL_VERSION, REGISTER_TAG,
};
use crate::identity::{self, NodeId, NodeKey};
use crate::nat::NatBrief;
use crate::net::NetGroup;

pub type ConnId = u64;

/// How long the coordinator waits for a target's report on an order.
pub const ORDER_LIFETIME: Duration = Duration::from_secs(60);
/// How long after an order its nodes may pass predicted ports (`hpports`)
/// to each other: a punch gives up well within it.
pub const PREDICTION_WINDOW: Duration = Duration::from_secs(10);
/// Orders per connection that may still carry an `hpports`; older ones
/// are forgotten first.
const PREDICTABLE_ORDERS: usize = 4;

/// A side's latest orders that may still get predicted ports, each with
/// what the prediction is checked against (the coordinator: the peer's
/// connection; the client: the peer's address). Each is taken once, within
/// [`PREDICTION_WINDOW`]; the oldest make way past [`PREDICTABLE_ORDERS`].
#[derive(Debug)]
struct RecentOrders<T> {
    orders: VecDeque<(u64, T, Instant)>,
}

impl<T> Default for RecentOrders<T> {
    fn default() -> Self {
        RecentOrders {
            orders: VecDeque::new(),
        }
    }
}

impl<T> RecentOrders<T> {
    fn push(&mut self, request: u64, with: T, now: Instant) {
        if self.orders.len() >= PREDICTABLE_ORDERS {
            self.orders.pop_front();
        }
        self.orders.push_back((request, with, now));
    }

    /// What order `request` was given with, if it is recent and not taken.
    fn take(&mut self, request: u64, now: Instant) -> Option<T> {
        let at = self.orders.iter().position(|(r, _, t)| {
            *r == request && now.saturating_duration_since(*t) < PREDICTION_WINDOW
        })?;
        self.orders.remove(at).map(|(_, with, _)| with)
    }
}

// ---------------------------------------------------------------- coordinator

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Added to the computed dial time, for processing on both sides.
    pub margin: Duration,
    /// Connect requests one client connection may make per minute.
    pub requests_per_minute: usize,
    /// Connect requests from one netgroup (IPv4 /16, IPv6 /32) per minute,
    /// however many connections it opens: reconnecting does not reset it.
    pub requests_per_netgroup_per_minute: usize,
    /// Orders one netgroup may cause to one registered node per minute:
    /// a few requesters cannot spend a node's own order budget (30 a
    /// minute by default) and lock everyone else out of it.
    pub orders_per_netgroup_per_target: usize,
    /// Feature bits announced in `hpcoord` (signed with the key).
    pub features: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            features: FEATURES,
            margin: Duration::from_millis(20),
            requests_per_minute: 30,
            requests_per_netgroup_per_minute: 60,
            orders_per_netgroup_per_target: 3,
        }
    }
}

#[derive(Debug)]
enum PeerState {
    /// Has not said `hphello` yet.
    Connected,
    /// Has our `hpcoord`: may register.
    Greeted,
    Challenged {
        key: XOnlyPublicKey,
        nonce: [u8; 32],
    },
    Registered {
        key: XOnlyPublicKey,
        id: NodeId,
    },
}

#[derive(Debug)]
struct Peer {
    observed: SocketAddr,
    /// The BIP324 session id, which `hpcoord` signs; `None` on a v1
    /// session, which cannot carry the coordinator's proof.
    session_id: Option<[u8; 32]>,
    rtt: Option<Duration>,
    state: PeerState,
    requests: VecDeque<Instant>,
    /// Feature bits from its `hphello`.
    features: u64,
    /// Where its shared port is on its own network (`hplocal`), for a peer
    /// behind the same public address.
    local: Vec<SocketAddr>,
    /// Its latest orders that may still carry predicted ports: (request,
    /// the peer's connection, when). One `hpports` each.
    predictable: RecentOrders<ConnId>,
    /// Its NAT's class, as it stated it (`hpnat`): passed to its peers.
    nat: Option<NatBrief>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorAction {
    Send(ConnId, NativeMessage),
    Close(ConnId, String),
    /// A client reported how a punch went (for logs and records).
    Reported {
        conn: ConnId,
        request: u64,
        result: PunchResult,
    },
}

#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    /// The coordinator's identity: clients check it before they register.
    key: NodeKey,
    peers: HashMap<ConnId, Peer>,
    by_id: HashMap<NodeId, ConnId>,
    /// A node's second registration, over its other address family (dual
    /// stack): orders go to its first, and its peers learn both endpoints.
    /// It takes the first's place when the first goes.
    other_family: HashMap<NodeId, ConnId>,
    /// Orders sent to targets and not yet reported on, by (target's
    /// connection, request): who asked, and when. A target that refuses
    /// its order is reported to the requester, so that it stops punching.
    open_orders: HashMap<(ConnId, u64), (ConnId, Instant)>,
    /// The same orders oldest first, so that expiring them costs nothing
    /// per request however many clients never report.
    open_order_queue: VecDeque<(Instant, (ConnId, u64))>,
    /// Request times per requester netgroup, and order times per
    /// (requester netgroup, target): the last minute's only.
    by_netgroup: HashMap<NetGroup, VecDeque<Instant>>,
    by_netgroup_target: HashMap<(NetGroup, NodeId), VecDeque<Instant>>,
    /// Map size at which the next sweep runs.
    sweep_at: usize,
}

const MIN_SWEEP: usize = 1024;

/// An endpoint's address family for dual stack, an IPv4-mapped IPv6
/// endpoint counting as the IPv4 one it is.
fn is_ipv4_family(endpoint: SocketAddr) -> bool {
    crate::net::admission::unmapped(endpoint.ip()).is_ipv4()
}

/// Drops times a minute old or older; true when none are left.
fn expire(times: &mut VecDeque<Instant>, now: Instant) -> bool {
    crate::clock::expire_window(times, now, ORDER_LIFETIME)
}

impl Coordinator {
    pub fn new(config: CoordinatorConfig, key: NodeKey) -> Self {
        Coordinator {
            config,
            key,
            peers: HashMap::new(),
            by_id: HashMap::new(),
            other_family: HashMap::new(),
            open_orders: HashMap::new(),
            open_order_queue: VecDeque::new(),
            by_netgroup: HashMap::new(),
            by_netgroup_target: HashMap::new(),
            sweep_at: MIN_SWEEP,
        }
    }

    pub fn id(&self) -> NodeId {
        self.key.id()
    }

    /// A client finished the Bitcoin handshake; `observed` is its source
    /// endpoint as this side sees it: its NAT mapping. `session_id` is the
    /// BIP324 session's (`None` for v1).
    pub fn connected(
        &mut self,
        conn: ConnId,
        observed: SocketAddr,
        rtt: Option<Duration>,
        session_id: Option<[u8; 32]>,
    ) {
        // A reused id is a new connection: the old one's registration goes
        // (found by the coordinator fuzzer; drivers never reuse ids).
        self.disconnected(conn);
        self.peers.insert(
            conn,
            Peer {
                observed,
                session_id,
                rtt,
                state: PeerState::Connected,
                requests: VecDeque::new(),
                features: 0,
                local: Vec::new(),
                predictable: RecentOrders::default(),
                nat: None,
            },
        );
    }

    pub fn rtt(&mut self, conn: ConnId, rtt: Duration) {
        if let Some(p) = self.peers.get_mut(&conn) {
            p.rtt = Some(rtt);
        }
    }

    pub fn disconnected(&mut self, conn: ConnId) {
        if let Some(Peer {
            state: PeerState::Registered { id, .. },
            ..
        }) = self.peers.remove(&conn)
        {
            self.unindex(id, conn);
        }
    }

    /// Takes `conn` out of the id indexes. A node's registration over its
    /// other family takes the place of its first when the first goes.
    fn unindex(&mut self, id: NodeId, conn: ConnId) {
        if self.by_id.get(&id) == Some(&conn) {
            self.by_id.remove(&id);
            if let Some(second) = self.other_family.remove(&id) {
                self.by_id.insert(id, second);
            }
        } else if self.other_family.get(&id) == Some(&conn) {
            self.other_family.remove(&id);
        }
    }

    /// Whether a registration seen at `observed` whose link said
    /// `features` stands beside the same key's registration seen at
    /// `first_at`: it declared itself the node's second family, of the
    /// other family, and we speak of dual stack.
    fn stands_beside(&self, features: u64, observed: SocketAddr, first_at: SocketAddr) -> bool {
        self.config.features & FEATURE_DUAL_STACK != 0
            && features & FEATURE_SECOND_FAMILY != 0
            && is_ipv4_family(observed) != is_ipv4_family(first_at)
    }

    /// Where `id` is seen in the other family than `seen_at`, if it
    /// registered over both.
    fn other_family_endpoint(&self, id: NodeId, seen_at: SocketAddr) -> Option<SocketAddr> {
        [self.by_id.get(&id), self.other_family.get(&id)]
            .into_iter()
            .flatten()
            .filter_map(|conn| self.peers.get(conn))
            .map(|p| p.observed)
            .find(|a| is_ipv4_family(*a) != is_ipv4_family(seen_at))
    }

    pub fn registered(&self) -> usize {
        self.by_id.len()
    }

    /// Connections the machine knows, registered or not.
    pub fn connections(&self) -> usize {
        self.peers.len()
    }

    /// The machine's bookkeeping agrees with itself: the id index names
    /// exactly the registered connections, and nothing grows past what the
    /// request limits allow. The fuzzers call this after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (id, conn) in self.by_id.iter().chain(&self.other_family) {
            match self.peers.get(conn).map(|p| &p.state) {
                Some(PeerState::Registered { id: got, .. }) if got == id => {}
                other => return Err(format!("index {id} -> {conn} points at {other:?}")),
            }
        }
        for (id, conn) in &self.other_family {
            let Some(first) = self.by_id.get(id) else {
                return Err(format!(
                    "{id} has a second registration ({conn}) and no first"
                ));
            };
            let family = |c: &ConnId| self.peers.get(c).map(|p| is_ipv4_family(p.observed));
            if first == conn || family(first) == family(conn) {
                return Err(format!(
                    "{id}'s two registrations {first}, {conn} share a family"
                ));
            }
        }
        for (conn, peer) in &self.peers {
            if let PeerState::Registered { id, .. } = peer.state {
                if self.by_id.get(&id) != Some(conn) && self.other_family.get(&id) != Some(conn) {
                    return Err(format!(
                        "registered {conn} ({id}) missing from the id indexes"
                    ));
                }
            }
            if peer.requests.len() > self.config.requests_per_minute {
                return Err(format!(
                    "{conn} holds {} request times",
                    peer.requests.len()
                ));
            }
        }
        for (group, times) in &self.by_netgroup {
            if times.len() > self.config.requests_per_netgroup_per_minute {
                return Err(format!("{group} holds {} request times", times.len()));
            }
        }
        for ((group, target), times) in &self.by_netgroup_target {
            if times.len() > self.config.orders_per_netgroup_per_target {
                return Err(format!(
                    "{group} -> {target} holds {} order times",
                    times.len()
                ));
            }
        }
        if self.open_orders.len() > self.open_order_queue.len() {
            return Err("an open order is not in the expiry queue".into());
        }
        Ok(())
    }

    /// Time passes: orders older than a minute are reports that never came
    /// and are forgotten. Called on every request and by the driver's timer,
    /// so that the open orders are only the last minute's.
    pub fn tick(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.open_order_queue.front() {
            if now.saturating_duration_since(at) < ORDER_LIFETIME {
                break;
            }
            self.open_order_queue.pop_front();
            if self.open_orders.get(&key).is_some_and(|(_, t)| *t == at) {
                self.open_orders.remove(&key);
            }
        }
    }

    /// Forgets netgroups with no request in the last minute, once the maps
    /// have doubled since the last sweep: amortised constant time per
    /// request, and the maps stay within twice a minute's requests.
    fn sweep_netgroups(&mut self, now: Instant) {
        let size = self
            .by_netgroup
            .len()
            .saturating_add(self.by_netgroup_target.len());
        if size < self.sweep_at {
            return;
        }
        self.by_netgroup.retain(|_, times| !expire(times, now));
        self.by_netgroup_target
            .retain(|_, times| !expire(times, now));
        let left = self
            .by_netgroup
            .len()
            .saturating_add(self.by_netgroup_target.len());
        self.sweep_at = left.saturating_mul(2).max(MIN_SWEEP);
    }

    /// Orders waiting for their target's report (bounded by the request
    /// rate: each expires after a minute).
    pub fn open_orders(&self) -> usize {
        self.open_order_queue.len()
    }

    /// `challenge` is fresh randomness from the driver, used if `msg` starts
    /// a registration.
    pub fn handle(
        &mut self,
        now: Instant,
        conn: ConnId,
        msg: NativeMessage,
        challenge: [u8; 32],
    ) -> Vec<CoordinatorAction> {
        use CoordinatorAction::*;
        let Some(peer) = self.peers.get_mut(&conn) else {
            return vec![];
        };
        match msg {
            NativeMessage::Hello { version, features } => {
                if !matches!(peer.state, PeerState::Connected) {
                    return vec![Close(conn, "hphello twice".into())];
                }
                if version == 0 {
                    return vec![Close(conn, "hphello: version 0".into())];
                }
                let Some(session_id) = peer.session_id else {
                    return vec![Close(
                        conn,
                        "hphello on a v1 session: the coordinator proves its key over a BIP324 session id".into(),
                    )];
                };
                peer.state = PeerState::Greeted;
                peer.features = features;
                let ours = self.config.features;
                let data = coordinator_proof_data(&session_id, PROTOCOL_VERSION, ours);
                vec![Send(
                    conn,
                    NativeMessage::Coordinator {
                        version: PROTOCOL_VERSION,
                        features: ours,
                        key: self.key.public().serialize(),
                        signature: self.key.sign(COORDINATOR_TAG, &[&data]),
                    },
                )]
            }
            NativeMessage::Register { .. } if matches!(peer.state, PeerState::Connected) => {
                vec![Close(conn, "hpregister before hphello".into())]
            }
            NativeMessage::Register { key } => match identity::parse_public(&key) {
                Ok(key) => {
                    // A registered connection that starts over gives up its
                    // registration now, so that the index never names a
                    // connection that is not registered under that id.
                    let registered = match peer.state {
                        PeerState::Registered { id, .. } => Some(id),
                        _ => None,
                    };
                    peer.state = PeerState::Challenged {
                        key,
                        nonce: challenge,
                    };
                    if let Some(id) = registered {
                        self.unindex(id, conn);
                    }
                    vec![Send(conn, NativeMessage::Challenge { nonce: challenge })]
                }
                Err(e) => vec![Close(conn, format!("hpregister: {e}"))],
            },
            NativeMessage::Prove { signature } => {
                let PeerState::Challenged { key, nonce } = peer.state else {
                    return vec![Close(conn, "hpprove without a challenge".into())];
                };
                if !identity::verify(&key, REGISTER_TAG, &[&nonce, &key.serialize()], &signature) {
                    return vec![Close(conn, "hpprove: signature does not verify".into())];
                }
                let id = NodeId::of(&key);
                peer.state = PeerState::Registered { key, id };
                let (observed, features) = (peer.observed, peer.features);
                let mut actions = vec![Send(conn, NativeMessage::Registered { id, observed })];
                // The newest proof of a key wins: an older connection with
                // the same id is a stale one of the same node, or the same
                // key in a second process. It is told why and closed, so
                // that it does not believe itself reachable. A dual-stack
                // node's registration over its other family displaces only
                // an older one of that family.
                let first = self.by_id.get(&id).copied().filter(|f| *f != conn);
                let first_seen = first
                    .and_then(|f| self.peers.get(&f))
                    .map(|p| (p.observed, p.features));
                let displaced: Vec<ConnId> = match (first, first_seen) {
                    // The node's second family, beside its first.
                    (Some(_), Some((first_at, _)))
                        if self.stands_beside(features, observed, first_at) =>
                    {
                        self.other_family.insert(id, conn).into_iter().collect()
                    }
                    // Its second family got here first: it moves aside.
                    (Some(first), Some((first_at, first_features)))
                        if self.stands_beside(first_features, first_at, observed) =>
                    {
                        self.by_id.insert(id, conn);
                        self.other_family.insert(id, first).into_iter().collect()
                    }
                    _ => {
                        let mut gone: Vec<ConnId> =
                            self.by_id.insert(id, conn).into_iter().collect();
                        // A second registration stays only beside a first
                        // of the other family.
                        let second = self.other_family.get(&id).copied();
                        let kept = second
                            .and_then(|c| self.peers.get(&c))
                            .is_some_and(|p| self.stands_beside(p.features, p.observed, observed));
                        if let (Some(second), false) = (second, kept) {
                            self.other_family.remove(&id);
                            gone.push(second);
                        }
                        gone
                    }
                };
                for older in displaced.into_iter().filter(|older| *older != conn) {
                    if let Some(p) = self.peers.get_mut(&older) {
                        p.state = PeerState::Greeted;
                    }
                    actions.push(Send(
                        older,
                        NativeMessage::Fail {
                            request: 0,
                            reason: FailReason::Displaced,
                        },
                    ));
                    actions.push(Close(
                        older,
                        format!("displaced: {id} registered again from {observed}"),
                    ));
                }
                actions
            }
            NativeMessage::Connect { request, target } => self.connect(now, conn, request, target),
            NativeMessage::Local { endpoints } => {
                if !matches!(peer.state, PeerState::Registered { .. }) {
                    return vec![Close(conn, "hplocal before registration".into())];
                }
                // The decoder allows no more than MAX_LOCAL_ENDPOINTS.
                peer.local = endpoints;
                vec![]
            }
            NativeMessage::Nat { class } => {
                if !matches!(peer.state, PeerState::Registered { .. }) {
                    return vec![Close(conn, "hpnat before registration".into())];
                }
                // Fixed size, kept once per peer: a repeated one replaces it.
                peer.nat = Some(class);
                vec![]
            }
            NativeMessage::Ports { ports, .. } if ports.is_empty() => vec![],
            NativeMessage::Ports { request, ip, ports } => {
                let observed = peer.observed.ip();
                let Some(other) = peer.predictable.take(request, now) else {
                    // Late, repeated, or for an order never given: the
                    // punch it was for is over or never was.
                    return vec![];
                };
                // A node predicts its own NAT's ports: any other address
                // would aim the peer's SYNs at someone else.
                if ip != observed {
                    return vec![Close(
                        conn,
                        format!("hpports names {ip}, but this node is seen at {observed}"),
                    )];
                }
                match self.peers.get(&other) {
                    Some(p) if p.features & FEATURE_PORT_PREDICTION != 0 => {
                        vec![Send(other, NativeMessage::Ports { request, ip, ports })]
                    }
                    _ => vec![],
                }
            }
            NativeMessage::Result { request, result } => {
                let mut actions = vec![Reported {
                    conn,
                    request,
                    result,
                }];
                let requester = self.open_orders.remove(&(conn, request));
                if let (Some((requester, _)), PunchResult::Refused) = (requester, result) {
                    if self.peers.contains_key(&requester) {
                        actions.push(Send(
                            requester,
                            NativeMessage::Fail {
                                request,
                                reason: FailReason::PeerRefused,
                            },
                        ));
                    }
                }
                actions
            }
            other @ (NativeMessage::Coordinator { .. }
            | NativeMessage::Challenge { .. }
            | NativeMessage::Registered { .. }
            | NativeMessage::Punch { .. }
            | NativeMessage::Fail { .. }
            | NativeMessage::Auth { .. }
            | NativeMessage::Candidates { .. }
            | NativeMessage::PeerNat { .. }
            | NativeMessage::Reach { .. }
            | NativeMessage::Handoff { .. }) => {
                vec![Close(
                    conn,
                    format!("{} is not for a coordinator", other.command()),
                )]
            }
        }
    }

    fn connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: u64,
        target: NodeId,
    ) -> Vec<CoordinatorAction> {
        use CoordinatorAction::*;
        let fail = |reason| vec![Send(conn, NativeMessage::Fail { request, reason })];
        let window = Duration::from_secs(60);
        let limit = self.config.requests_per_minute;
        let Some(requester) = self.peers.get_mut(&conn) else {
            return vec![];
        };
        crate::clock::expire_window(&mut requester.requests, now, window);
        if requester.requests.len() >= limit {
            return fail(FailReason::RateLimited);
        }
        let group = NetGroup::of(requester.observed.ip());
        let from_group = self.by_netgroup.entry(group).or_default();
        expire(from_group, now);
        if from_group.len() >= self.config.requests_per_netgroup_per_minute {
            return fail(FailReason::RateLimited);
        }
        from_group.push_back(now);
        requester.requests.push_back(now);
        let PeerState::Registered {
            key: requester_key,
            id: requester_id,
        } = requester.state
        else {
            return fail(FailReason::NotRegistered);
        };
        if requester_id == target {
            return fail(FailReason::SelfConnect);
        }
        let (requester_addr, requester_rtt) = (requester.observed, requester.rtt);
        let Some(&target_conn) = self.by_id.get(&target) else {
            return fail(FailReason::UnknownPeer);
        };
        let Some(target_peer) = self.peers.get(&target_conn) else {
            return fail(FailReason::UnknownPeer);
        };
        let PeerState::Registered {
            key: target_key,
            id: target_id,
        } = target_peer.state
        else {
            return fail(FailReason::UnknownPeer);
        };
        if target_id != target {
            return fail(FailReason::UnknownPeer);
        }
        let to_target = self.by_netgroup_target.entry((group, target)).or_default();
        expire(to_target, now);
        if to_target.len() >= self.config.orders_per_netgroup_per_target {
            return fail(FailReason::RateLimited);
        }
        to_target.push_back(now);
        // Both orders leave now; each reaches its node half an RTT later.
        // Each node waits so that both dial at the same moment: when the
        // farther one receives its order, plus a margin.
        let rtt_r = requester_rtt.unwrap_or_default();
        let (rtt_t, target_addr) = (target_peer.rtt.unwrap_or_default(), target_peer.observed);
        // Two nodes behind one NAT (the same public address) may not reach
        // each other through it (many routers do not hairpin): each is told
        // where the other is on their network, if both speak of it.
        let same_nat = requester_addr.ip() == target_addr.ip();
        // A dual-stack node registered over both families: its peer races
        // the endpoint of the other family too.
        let requester_other = self.other_family_endpoint(requester_id, requester_addr);
        let target_other = self.other_family_endpoint(target_id, target_addr);
        let candidates_for = |to: &Peer, of: &Peer, of_other: Option<SocketAddr>| {
            let mut endpoints = Vec::new();
            if same_nat && to.features & FEATURE_LOCAL_CANDIDATES != 0 {
                endpoints.extend(of.local.iter().copied());
            }
            if let Some(other) = of_other.filter(|_| to.features & FEATURE_DUAL_STACK != 0) {
                endpoints.truncate(MAX_LOCAL_ENDPOINTS.saturating_sub(1));
                endpoints.push(other);
            }
            (!endpoints.is_empty()).then_some(endpoints)
        };
        let (to_requester, to_target) = match self.peers.get(&conn) {
            Some(requester) => (
                candidates_for(requester, target_peer, target_other),
                candidates_for(target_peer, requester, requester_other),
            ),
            None => (None, None),
        };
        let nat_for = |to: &Peer, of: &Peer| {
            of.nat
                .filter(|_| to.features & FEATURE_NAT_CLASS != 0)
                .map(|class| NativeMessage::PeerNat { request, class })
        };
        let (nat_to_requester, nat_to_target) = match self.peers.get(&conn) {
            Some(requester) => (
                nat_for(requester, target_peer),
                nat_for(target_peer, requester),
            ),
            None => (None, None),
        };
        self.sweep_netgroups(now);
        let farthest = rtt_r.max(rtt_t);
        let margin = self.config.margin;
        let delay = |own: Duration| {
            let wait = farthest
                .saturating_sub(own)
                .checked_div(2)
                .unwrap_or_default();
            u32::try_from(wait.saturating_add(margin).as_millis()).unwrap_or(u32::MAX)
        };
        self.tick(now);
        let key = (target_conn, request);
        self.open_orders.insert(key, (conn, now));
        self.open_order_queue.push_back((now, key));
        for (at, other) in [(conn, target_conn), (target_conn, conn)] {
            if let Some(p) = self.peers.get_mut(&at) {
                p.predictable.push(request, other, now);
            }
        }
        let mut actions = Vec::with_capacity(6);
        if let Some(m) = nat_to_requester {
            actions.push(Send(conn, m));
        }
        if let Some(endpoints) = to_requester {
            actions.push(Send(conn, NativeMessage::Candidates { request, endpoints }));
        }
        actions.push(Send(
            conn,
            NativeMessage::Punch {
                request,
                role: PunchRole::Initiator,
                peer_key: target_key.serialize(),
                peer: target_addr,
                delay_ms: delay(rtt_r),
            },
        ));
        if let Some(m) = nat_to_target {
            actions.push(Send(target_conn, m));
        }
        if let Some(endpoints) = to_target {
            actions.push(Send(
                target_conn,
                NativeMessage::Candidates { request, endpoints },
            ));
        }
        actions.push(Send(
            target_conn,
            NativeMessage::Punch {
                request,
                role: PunchRole::Responder,
                peer_key: requester_key.serialize(),
                peer: requester_addr,
                delay_ms: delay(rtt_t),
            },
        ));
        actions
    }
}

// --------------------------------------------------------------------- client

/// How long a request waits for the coordinator's answer before the client
/// forgets it (an order that comes later is refused as one never made).
pub const REQUEST_LIFETIME: Duration = Duration::from_secs(60);
/// Requests remembered at once; the oldest is forgotten first.
pub const MAX_OUTSTANDING_REQUESTS: usize = 256;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Punch orders per target address per minute (reflection limit).
    pub orders_per_target_per_minute: usize,
    /// Punch orders per minute in all.
    pub orders_per_minute: usize,
    /// Longest dial delay an order may ask for.
    pub max_delay: Duration,
    /// Follow orders to loopback and private addresses (tests on one
    /// machine). Off, only globally routable peers are punched
    /// (`net::routable`), whatever the coordinator says.
    pub allow_private: bool,
    /// This link registers the node's key a second time, over its other
    /// address family (dual stack): only with a coordinator that speaks of
    /// it, since any other would displace the first registration.
    pub second_family: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            orders_per_target_per_minute: 6,
            orders_per_minute: 30,
            max_delay: Duration::from_secs(5),
            allow_private: false,
            second_family: false,
        }
    }
}

/// Why a client did not follow a punch order, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    InvalidKey,
    /// An initiator order for a request we never made.
    UnknownRequest,
    /// The key does not hash to the id we asked for.
    SubstitutedKey,
    NotRegistered,
    Unroutable,
    DelayTooLong,
    PerTargetLimit,
    GlobalLimit,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::InvalidKey => "invalid_key",
            RefusalReason::UnknownRequest => "unknown_request",
            RefusalReason::SubstitutedKey => "substituted_key",
            RefusalReason::NotRegistered => "not_registered",
            RefusalReason::Unroutable => "unroutable",
            RefusalReason::DelayTooLong => "delay_too_long",
            RefusalReason::PerTargetLimit => "per_target_limit",
            RefusalReason::GlobalLimit => "global_limit",
        }
    }
}

/// A punch the client should carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PunchOrder {
    pub request: u64,
    pub role: PunchRole,
    pub peer_key: XOnlyPublicKey,
    pub peer: SocketAddr,
    pub delay: Duration,
    /// The peer's endpoints on the network we share with it (it is behind
    /// our own public address): raced beside `peer`.
    pub local: Vec<SocketAddr>,
    /// The peer's endpoint in the other address family than `peer` (it
    /// registered over both): raced beside `peer` too.
    pub other_family: Option<SocketAddr>,
    /// The peer's NAT class, as it told its coordinator: for the record.
    pub peer_nat: Option<NatBrief>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Send(NativeMessage),
    /// The coordinator proved the key its address names, on this session.
    CoordinatorVerified {
        id: NodeId,
        version: u32,
        features: u64,
    },
    Registered {
        id: NodeId,
        observed: SocketAddr,
    },
    Punch(PunchOrder),
    /// The peer of an order we follow predicted the ports its NAT gives
    /// its punch (`hpports`): dial each once, beside the order's endpoint.
    Predicted {
        request: u64,
        endpoints: Vec<SocketAddr>,
    },
    /// An order was not followed; the coordinator has been told.
    Refused {
        request: u64,
        reason: RefusalReason,
        why: String,
    },
    RequestFailed {
        request: u64,
        reason: FailReason,
    },
    /// Another connection proved our key to the coordinator, which is
    /// closing this one: the key is in use elsewhere.
    Displaced,
    /// The coordinator broke the protocol: close the connection.
    Close(String),
}

/// Whom the client expects at the other end: the coordinator id its
/// address names, and the session on which that key must be proven.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedCoordinator {
    pub id: NodeId,
    pub session_id: [u8; 32],
}

#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    key: NodeKey,
    coordinator: ExpectedCoordinator,
    /// The version both speak, once the coordinator proved its key.
    /// Nothing but `hpcoord` is accepted before.
    verified: Option<u32>,
    registered: Option<NodeId>,
    /// Requests we made, the id we asked for (checked against the key in
    /// the order: a coordinator cannot substitute another key) and when.
    requests: HashMap<u64, (NodeId, Instant)>,
    orders: VecDeque<(Instant, IpAddr)>,
    /// The coordinator's feature bits, once verified.
    coordinator_features: u64,
    /// Where our shared port is on our own network, to announce.
    local: Vec<SocketAddr>,
    /// Where the coordinator sees us.
    observed: Option<SocketAddr>,
    /// The last `hpcands`, for the order of the same request that follows.
    candidates: Option<(u64, Vec<SocketAddr>)>,
    /// Orders we follow whose peer may still predict its ports: (request,
    /// the peer's public address, when).
    predictable: RecentOrders<IpAddr>,
    /// Orders we follow for which we may still predict our own ports: apart
    /// from `predictable`, since the peer's prediction may come first.
    ours_predictable: RecentOrders<()>,
    /// Our NAT's class once we know it, and what we last told the
    /// coordinator.
    nat: Option<NatBrief>,
    nat_told: Option<NatBrief>,
    /// The last `hppeernat`, for the order of the same request that follows.
    peer_nat: Option<(u64, NatBrief)>,
    /// Our `hpregister` went out (with `hphello`, or after the proof).
    register_sent: bool,
    /// Our `hpprove` went out: requests go out at once from here on.
    proved: bool,
    /// Requests made before our `hpprove`, oldest first: they follow it
    /// in the same flight, so that the coordinator reads them registered.
    held_requests: VecDeque<u64>,
    /// Where the coordinator said, in its `version`, it sees us.
    seen: Option<SocketAddr>,
    /// Our own-network endpoints and NAT class went out.
    announced: bool,
}

impl Client {
    pub fn new(config: ClientConfig, key: NodeKey, coordinator: ExpectedCoordinator) -> Self {
        Client {
            config,
            key,
            coordinator,
            verified: None,
            registered: None,
            requests: HashMap::new(),
            orders: VecDeque::new(),
            coordinator_features: 0,
            local: Vec::new(),
            observed: None,
            candidates: None,
            predictable: RecentOrders::default(),
            ours_predictable: RecentOrders::default(),
            nat: None,
            nat_told: None,
            peer_nat: None,
            register_sent: false,
            proved: false,
            held_requests: VecDeque::new(),
            seen: None,
            announced: false,
        }
    }

    /// Our NAT's class, learned or changed: an `hpnat` to send now when we
    /// are registered with a coordinator that passes classes on and have
    /// not told it this one (otherwise it goes out on registration).
    pub fn set_nat(&mut self, class: NatBrief) -> Option<NativeMessage> {
        self.nat = Some(class);
        self.tell_nat()
    }

    fn tell_nat(&mut self) -> Option<NativeMessage> {
        let class = self.nat?;
        let listening = self.coordinator_features & FEATURE_NAT_CLASS != 0;
        if !self.proved || !listening || self.nat_told == Some(class) {
            return None;
        }
        self.nat_told = Some(class);
        Some(NativeMessage::Nat { class })
    }

    /// `hpports` for our own order `request`, when the coordinator passes
    /// predictions on: the ports at our public address `ip` that our NAT
    /// will likely give our punch (at most [`MAX_PREDICTED_PORTS`]), once
    /// per order.
    pub fn predict(
        &mut self,
        now: Instant,
        request: u64,
        ip: IpAddr,
        mut ports: Vec<u16>,
    ) -> Option<NativeMessage> {
        ports.truncate(MAX_PREDICTED_PORTS);
        if ports.is_empty() || self.coordinator_features & FEATURE_PORT_PREDICTION == 0 {
            return None;
        }
        self.ours_predictable.take(request, now)?;
        Some(NativeMessage::Ports { request, ip, ports })
    }

    /// Where the coordinator's `version` said it sees us, before the
    /// registration confirms it.
    pub fn set_seen(&mut self, seen: Option<SocketAddr>) {
        self.seen = seen;
    }

    /// What a registration announces, once: behind a NAT (we are not
    /// where the coordinator sees us), our own-network endpoints, which
    /// let a peer behind the same NAT reach us without hairpinning; and
    /// our NAT class. Right behind `hpprove` when a request follows it
    /// (the coordinator makes the order from what it knows then), else
    /// on `hpregistered`.
    fn announce(&mut self, seen: Option<SocketAddr>) -> Vec<NativeMessage> {
        if self.announced {
            return vec![];
        }
        self.announced = true;
        let local: Vec<SocketAddr> = self
            .local
            .iter()
            .filter(|l| Some(**l) != seen && crate::net::routable::is_own_network(l.ip()))
            .copied()
            .collect();
        let mut messages = Vec::new();
        if self.coordinator_features & FEATURE_LOCAL_CANDIDATES != 0 && !local.is_empty() {
            messages.push(NativeMessage::Local { endpoints: local });
        }
        messages.extend(self.tell_nat());
        messages
    }

    /// Where our shared port is on our own network (the local address of
    /// the link to the coordinator): announced after registration when the
    /// coordinator speaks of it and the address is not the one it sees.
    pub fn set_local(&mut self, endpoints: Vec<SocketAddr>) {
        self.local = endpoints;
        self.local.truncate(MAX_LOCAL_ENDPOINTS);
    }

    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// The first messages: our version and, on a first family's link, our
    /// registration with it. The coordinator answers in order, its proof
    /// before its challenge, and nothing it says is acted upon before the
    /// proof verifies; so registering before the proof costs one thing,
    /// that whoever answers learns our public key, and saves a round trip
    /// on every link. A second family's link waits for the proof: a
    /// coordinator that does not speak of dual stack would let it displace
    /// the first.
    pub fn start(&mut self) -> Vec<NativeMessage> {
        let second = match self.config.second_family {
            true => FEATURE_SECOND_FAMILY,
            false => 0,
        };
        let mut first = vec![NativeMessage::Hello {
            version: PROTOCOL_VERSION,
            features: FEATURES | second,
        }];
        if !self.config.second_family {
            self.register_sent = true;
            first.push(self.register());
        }
        first
    }

    fn register(&self) -> NativeMessage {
        NativeMessage::Register {
            key: self.key.public().serialize(),
        }
    }

    /// The protocol version both sides speak, once the coordinator has
    /// proven its key.
    pub fn version(&self) -> Option<u32> {
        self.verified
    }

    fn check_coordinator(
        &mut self,
        version: u32,
        features: u64,
        key: [u8; 32],
        signature: [u8; 64],
    ) -> Vec<ClientEvent> {
        use ClientEvent::*;
        if self.verified.is_some() {
            return vec![Close("hpcoord twice".into())];
        }
        let expected = self.coordinator.id;
        let key = match identity::parse_public(&key) {
            Ok(key) => key,
            Err(e) => return vec![Close(format!("hpcoord: {e}"))],
        };
        let id = NodeId::of(&key);
        if id != expected {
            return vec![Close(format!(
                "the coordinator's key has id {id}, but its address names {expected}: \
                 not the coordinator we asked for (an on-path attacker, or a wrong address)"
            ))];
        }
        let data = coordinator_proof_data(&self.coordinator.session_id, version, features);
        if !identity::verify(&key, COORDINATOR_TAG, &[&data], &signature) {
            return vec![Close(format!(
                "coordinator {id}'s proof does not verify over this BIP324 session: \
                 someone between us relays its messages"
            ))];
        }
        if version == 0 {
            return vec![Close("hpcoord: version 0".into())];
        }
        if self.config.second_family && features & FEATURE_DUAL_STACK == 0 {
            return vec![Close(format!(
                "coordinator {id} does not speak of dual stack: registering over a second \
                 family would displace the first registration"
            ))];
        }
        let version = version.min(PROTOCOL_VERSION);
        self.verified = Some(version);
        self.coordinator_features = features;
        let mut events = vec![CoordinatorVerified {
            id,
            version,
            features,
        }];
        if !self.register_sent {
            self.register_sent = true;
            events.push(Send(self.register()));
        }
        events
    }

    /// A request to the coordinator. Requests the coordinator never
    /// answers are forgotten after [`REQUEST_LIFETIME`], and at most
    /// [`MAX_OUTSTANDING_REQUESTS`] are remembered, so that a silent
    /// coordinator cannot make this grow. `None` while we have not proved
    /// our key: the `hpconnect` then follows our `hpprove`.
    pub fn request(&mut self, now: Instant, request: u64, target: NodeId) -> Option<NativeMessage> {
        self.requests
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < REQUEST_LIFETIME);
        if self.requests.len() >= MAX_OUTSTANDING_REQUESTS {
            let oldest = self
                .requests
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(r, _)| *r);
            if let Some(oldest) = oldest {
                self.requests.remove(&oldest);
            }
        }
        self.requests.insert(request, (target, now));
        if !self.proved {
            if self.held_requests.len() >= MAX_OUTSTANDING_REQUESTS {
                self.held_requests.pop_front();
            }
            self.held_requests.push_back(request);
            return None;
        }
        Some(NativeMessage::Connect { request, target })
    }

    /// Requests still waiting for an answer.
    pub fn outstanding_requests(&self) -> usize {
        self.requests.len()
    }

    /// Orders remembered for the reflection limit (at most a minute's).
    pub fn remembered_orders(&self) -> usize {
        self.orders.len()
    }

    pub fn handle(&mut self, now: Instant, msg: NativeMessage) -> Vec<ClientEvent> {
        use ClientEvent::*;
        if let NativeMessage::Coordinator {
            version,
            features,
            key,
            signature,
        } = msg
        {
            return self.check_coordinator(version, features, key, signature);
        }
        if self.verified.is_none() {
            return vec![Close(format!(
                "{} before the coordinator proved its key",
                msg.command()
            ))];
        }
        match msg {
            NativeMessage::Coordinator { .. } => vec![],
            NativeMessage::Challenge { nonce } => {
                let key = self.key.public().serialize();
                let mut events = vec![Send(NativeMessage::Prove {
                    signature: self.key.sign(REGISTER_TAG, &[&nonce, &key]),
                })];
                self.proved = true;
                let held = std::mem::take(&mut self.held_requests);
                if !held.is_empty() {
                    events.extend(self.announce(self.seen).into_iter().map(Send));
                }
                // Requests forgotten meanwhile (expired or evicted) stay
                // unsent.
                events.extend(held.into_iter().filter_map(|request| {
                    let (target, _) = self.requests.get(&request)?;
                    Some(Send(NativeMessage::Connect {
                        request,
                        target: *target,
                    }))
                }));
                events
            }
            NativeMessage::Registered { id, observed } => {
                if id != self.key.id() {
                    return vec![Close(format!(
                        "coordinator registered us as {id}, not {}",
                        self.key.id()
                    ))];
                }
                self.registered = Some(id);
                self.observed = Some(observed);
                let mut events = vec![Registered { id, observed }];
                events.extend(self.announce(Some(observed)).into_iter().map(Send));
                events
            }
            NativeMessage::Candidates { request, endpoints } => {
                self.candidates = Some((request, endpoints));
                vec![]
            }
            NativeMessage::PeerNat { request, class } => {
                self.peer_nat = Some((request, class));
                vec![]
            }
            NativeMessage::Ports { request, ip, ports } => self.predicted(now, request, ip, ports),
            NativeMessage::Fail {
                reason: FailReason::Displaced,
                ..
            } => {
                self.registered = None;
                vec![Displaced]
            }
            NativeMessage::Fail { request, reason } => {
                self.requests.remove(&request);
                vec![RequestFailed { request, reason }]
            }
            NativeMessage::Punch {
                request,
                role,
                peer_key,
                peer,
                delay_ms,
            } => self.order(now, request, role, peer_key, peer, delay_ms),
            other @ (NativeMessage::Hello { .. }
            | NativeMessage::Register { .. }
            | NativeMessage::Prove { .. }
            | NativeMessage::Connect { .. }
            | NativeMessage::Result { .. }
            | NativeMessage::Auth { .. }
            | NativeMessage::Local { .. }
            | NativeMessage::Nat { .. }
            | NativeMessage::Reach { .. }
            | NativeMessage::Handoff { .. }) => {
                vec![Close(format!("{} is not for a client", other.command()))]
            }
        }
    }

    fn order(
        &mut self,
        now: Instant,
        request: u64,
        role: PunchRole,
        peer_key: [u8; 32],
        peer: SocketAddr,
        delay_ms: u32,
    ) -> Vec<ClientEvent> {
        use ClientEvent::*;
        let refuse = |reason: RefusalReason, why: String| {
            vec![
                Send(NativeMessage::Result {
                    request,
                    result: PunchResult::Refused,
                }),
                Refused {
                    request,
                    reason,
                    why,
                },
            ]
        };
        let Ok(peer_key) = identity::parse_public(&peer_key) else {
            return refuse(
                RefusalReason::InvalidKey,
                "the peer key is not a valid public key".into(),
            );
        };
        if role == PunchRole::Initiator {
            // Only for our own requests, and only with the key whose id we
            // asked for.
            let Some((asked, _)) = self.requests.remove(&request) else {
                return refuse(
                    RefusalReason::UnknownRequest,
                    format!("an initiator order for request {request} we never made"),
                );
            };
            if NodeId::of(&peer_key) != asked {
                return refuse(
                    RefusalReason::SubstitutedKey,
                    format!(
                        "the coordinator gave key {} for peer {asked}: it does not hash to that id",
                        NodeId::of(&peer_key)
                    ),
                );
            }
        } else if self.registered.is_none() {
            return refuse(
                RefusalReason::NotRegistered,
                "a responder order before registration".into(),
            );
        }
        // The coordinator names the address: never a SYN into loopback, a
        // LAN, or an IPv4 address hidden in an IPv6 one.
        let peer = if self.config.allow_private {
            peer
        } else {
            match crate::net::routable::routable_target(peer) {
                Ok(target) => target,
                Err(why) => {
                    return refuse(
                        RefusalReason::Unroutable,
                        format!("{peer} is not a punchable address: {why}"),
                    )
                }
            }
        };
        let delay = Duration::from_millis(delay_ms.into());
        if delay > self.config.max_delay {
            return refuse(
                RefusalReason::DelayTooLong,
                format!("dial delay {delay:?} is too long"),
            );
        }
        // Reflection limit: whatever the coordinator says, this node sends
        // SYNs to one address at most so often, and to all at most so often.
        let window = Duration::from_secs(60);
        while self
            .orders
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= window)
        {
            self.orders.pop_front();
        }
        // One target is an IPv4 address or an IPv6 /64: a subscriber's
        // whole prefix, not each of its 2^64 addresses.
        let target = crate::punch::budget::address_key(peer.ip());
        let to_target = self.orders.iter().filter(|(_, ip)| *ip == target).count();
        if to_target >= self.config.orders_per_target_per_minute {
            return refuse(
                RefusalReason::PerTargetLimit,
                format!("rate limit: {to_target} punches to {target} (its /32 or /64) in the last minute"),
            );
        }
        if self.orders.len() >= self.config.orders_per_minute {
            return refuse(
                RefusalReason::GlobalLimit,
                format!(
                    "rate limit: {} punches in the last minute",
                    self.orders.len()
                ),
            );
        }
        self.orders.push_back((now, target));
        self.predictable.push(request, peer.ip(), now);
        self.ours_predictable.push(request, (), now);
        let (local, other_family) = self.extra_candidates(request, peer);
        let peer_nat = self
            .peer_nat
            .take()
            .filter(|(r, _)| *r == request)
            .map(|(_, class)| class);
        vec![Punch(PunchOrder {
            request,
            role,
            peer_key,
            peer,
            delay,
            local,
            other_family,
            peer_nat,
        })]
    }

    /// An `hpports` for one of our orders: the peer's predicted endpoints,
    /// once per order and only at the address the order named, so that a
    /// coordinator can add ports to a punch it ordered but aim it nowhere
    /// else. Each SYN is paid from the punch budget.
    fn predicted(
        &mut self,
        now: Instant,
        request: u64,
        ip: IpAddr,
        ports: Vec<u16>,
    ) -> Vec<ClientEvent> {
        if ports.is_empty() {
            return vec![];
        }
        let Some(peer_ip) = self.predictable.take(request, now) else {
            return vec![];
        };
        if ip != peer_ip {
            return vec![ClientEvent::Close(format!(
                "hpports for request {request} names {ip}, but the order named {peer_ip}"
            ))];
        }
        let mut endpoints: Vec<SocketAddr> = Vec::with_capacity(ports.len());
        for port in ports.into_iter().take(MAX_PREDICTED_PORTS) {
            let endpoint = SocketAddr::new(ip, port);
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        vec![ClientEvent::Predicted { request, endpoints }]
    }

    /// The peer's own-network endpoints from the `hpcands` of this request,
    /// if it is behind our own public address (as the coordinator sees
    /// us): so that nobody, the coordinator included, can point our SYNs
    /// into our network for a peer elsewhere. Only own-network addresses
    /// of the peer's family pass. And, from a coordinator that speaks of
    /// dual stack, one punchable endpoint of the other family: no more
    /// than the order itself could name. Each SYN is paid from the punch
    /// budget.
    fn extra_candidates(
        &mut self,
        request: u64,
        peer: SocketAddr,
    ) -> (Vec<SocketAddr>, Option<SocketAddr>) {
        let Some((for_request, endpoints)) = self.candidates.take() else {
            return (Vec::new(), None);
        };
        if for_request != request {
            return (Vec::new(), None);
        }
        let behind_our_nat = self.observed.is_some_and(|o| o.ip() == peer.ip());
        let local = endpoints
            .iter()
            .copied()
            .filter(|e| {
                behind_our_nat
                    && e.is_ipv4() == peer.is_ipv4()
                    && crate::net::routable::is_own_network(e.ip())
            })
            .take(MAX_LOCAL_ENDPOINTS)
            .collect();
        let dual_stack = self.coordinator_features & FEATURE_DUAL_STACK != 0;
        let allow_private = self.config.allow_private;
        let other_family = endpoints
            .iter()
            .filter(|_| dual_stack)
            .filter_map(|e| match allow_private {
                true => Some(*e),
                false => crate::net::routable::routable_target(*e).ok(),
            })
            .find(|e| e.is_ipv4() != peer.is_ipv4());
        (local, other_family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Every test connection has this BIP324 session id.
    const SESSION: [u8; 32] = [5; 32];

    fn test_coordinator_key() -> NodeKey {
        NodeKey::from_secret(&[42; 32]).unwrap()
    }

    /// A client with a new key, expecting the test coordinator.
    fn fresh_client() -> Client {
        Client::new(
            ClientConfig::default(),
            NodeKey::generate(),
            expected_coordinator(),
        )
    }

    fn expected_coordinator() -> ExpectedCoordinator {
        ExpectedCoordinator {
            id: test_coordinator_key().id(),
            session_id: SESSION,
        }
    }

    /// A registered client's `hpconnect`.
    fn asked(client: &mut Client, now: Instant, request: u64, target: NodeId) -> NativeMessage {
        client
            .request(now, request, target)
            .expect("a registered client asks at once")
    }

    /// Runs a client's registration against the coordinator, returns its id.
    fn register(c: &mut Coordinator, conn: ConnId, client: &mut Client, now: Instant) -> NodeId {
        let (id, others) = register_seeing_others(c, conn, client, now);
        assert!(others.is_empty(), "{others:?}");
        id
    }

    /// The same, also returning what the coordinator did to other
    /// connections meanwhile.
    fn register_seeing_others(
        c: &mut Coordinator,
        conn: ConnId,
        client: &mut Client,
        now: Instant,
    ) -> (NodeId, Vec<CoordinatorAction>) {
        // In order, as a TCP stream delivers them.
        let mut to_coord = VecDeque::from(client.start());
        let mut id = None;
        let mut others = Vec::new();
        while let Some(msg) = to_coord.pop_front() {
            for action in c.handle(now, conn, msg, [conn as u8; 32]) {
                let reply = match action {
                    CoordinatorAction::Send(to, reply) if to == conn => reply,
                    other => {
                        others.push(other);
                        continue;
                    }
                };
                for event in client.handle(now, reply) {
                    match event {
                        ClientEvent::Send(m) => to_coord.push_back(m),
                        ClientEvent::CoordinatorVerified { .. } => {}
                        ClientEvent::Registered { id: got, .. } => id = Some(got),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
        (id.expect("registered"), others)
    }

    fn proof(key: &NodeKey, session_id: &[u8; 32], version: u32) -> NativeMessage {
        let data = coordinator_proof_data(session_id, version, FEATURES);
        NativeMessage::Coordinator {
            version,
            features: FEATURES,
            key: key.public().serialize(),
            signature: key.sign(COORDINATOR_TAG, &[&data]),
        }
    }

    fn closes(events: &[ClientEvent], why: &str) -> bool {
        matches!(events, [ClientEvent::Close(reason)] if reason.contains(why))
    }

    #[test]
    fn the_client_registers_only_after_the_named_coordinator_proves_its_key_on_this_session() {
        let t0 = Instant::now();
        let named = test_coordinator_key();
        let fresh = || {
            Client::new(
                ClientConfig::default(),
                NodeKey::generate(),
                expected_coordinator(),
            )
        };
        // Nothing before the proof, not even a challenge.
        let challenge = NativeMessage::Challenge { nonce: [1; 32] };
        assert!(closes(
            &fresh().handle(t0, challenge),
            "before the coordinator proved"
        ));
        // Another key, the named key over another session, a forged signature.
        let impostor = NodeKey::generate();
        assert!(closes(
            &fresh().handle(t0, proof(&impostor, &SESSION, 1)),
            "but its address names"
        ));
        assert!(closes(
            &fresh().handle(t0, proof(&named, &[6; 32], 1)),
            "does not verify over this BIP324 session"
        ));
        let NativeMessage::Coordinator {
            key, mut signature, ..
        } = proof(&named, &SESSION, 1)
        else {
            unreachable!()
        };
        signature[0] ^= 1;
        let forged = NativeMessage::Coordinator {
            version: 1,
            features: 0,
            key,
            signature,
        };
        assert!(closes(&fresh().handle(t0, forged), "does not verify"));
        // The version is signed: a relay cannot change it.
        let NativeMessage::Coordinator { key, signature, .. } = proof(&named, &SESSION, 1) else {
            unreachable!()
        };
        let downgraded = NativeMessage::Coordinator {
            version: 2,
            features: 0,
            key,
            signature,
        };
        assert!(closes(&fresh().handle(t0, downgraded), "does not verify"));
        // The genuine proof: a newer coordinator's version is met at ours.
        let mut client = fresh();
        let events = client.handle(t0, proof(&named, &SESSION, 7));
        assert!(
            matches!(
                &events[..],
                [
                    ClientEvent::CoordinatorVerified { version: 1, .. },
                    ClientEvent::Send(NativeMessage::Register { .. })
                ]
            ),
            "{events:?}"
        );
        assert_eq!(client.version(), Some(PROTOCOL_VERSION));
        assert!(closes(
            &client.handle(t0, proof(&named, &SESSION, 1)),
            "twice"
        ));
    }

    #[test]
    fn the_coordinator_proves_its_key_only_on_bip324_and_only_after_hello() {
        let t0 = Instant::now();
        let key = test_coordinator_key();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), key.clone());
        let hello = NativeMessage::Hello {
            version: 3,
            features: 1 << 40,
        };
        let register = NativeMessage::Register {
            key: NodeKey::generate().public().serialize(),
        };
        let closed = |actions: Vec<CoordinatorAction>, why: &str| matches!(&actions[..], [CoordinatorAction::Close(_, reason)] if reason.contains(why));
        coord.connected(1, addr("203.0.113.2:1"), None, Some(SESSION));
        assert!(closed(
            coord.handle(t0, 1, register.clone(), [0; 32]),
            "before hphello"
        ));
        coord.connected(2, addr("203.0.113.2:2"), None, None);
        assert!(closed(
            coord.handle(t0, 2, hello.clone(), [0; 32]),
            "v1 session"
        ));
        coord.connected(3, addr("203.0.113.2:3"), None, Some(SESSION));
        let zero = NativeMessage::Hello {
            version: 0,
            features: 0,
        };
        assert!(closed(coord.handle(t0, 3, zero, [0; 32]), "version 0"));
        coord.connected(4, addr("203.0.113.2:4"), None, Some(SESSION));
        let actions = coord.handle(t0, 4, hello.clone(), [0; 32]);
        assert_eq!(
            actions,
            vec![CoordinatorAction::Send(
                4,
                proof(&key, &SESSION, PROTOCOL_VERSION)
            )]
        );
        assert!(closed(coord.handle(t0, 4, hello, [0; 32]), "twice"));
        assert!(matches!(
            &coord.handle(t0, 4, register, [0; 32])[..],
            [CoordinatorAction::Send(4, NativeMessage::Challenge { .. })]
        ));
    }

    /// Delivers the coordinator's actions to the clients by connection
    /// and returns each one's punch order (1: `a`, 2: `b`) and the
    /// `hpcands` sent.
    fn deliver(
        actions: Vec<CoordinatorAction>,
        clients: &mut [(ConnId, &mut Client)],
        now: Instant,
    ) -> (Vec<(ConnId, PunchOrder)>, usize) {
        let mut orders = Vec::new();
        let mut cands = 0;
        for action in actions {
            let CoordinatorAction::Send(to, msg) = action else {
                panic!("{action:?}")
            };
            if matches!(msg, NativeMessage::Candidates { .. }) {
                cands += 1;
            }
            let Some((_, client)) = clients.iter_mut().find(|(c, _)| *c == to) else {
                continue;
            };
            for event in client.handle(now, msg) {
                if let ClientEvent::Punch(order) = event {
                    orders.push((to, order));
                }
            }
        }
        (orders, cands)
    }

    #[test]
    fn a_first_link_registers_with_its_hello_and_a_second_family_link_waits_for_the_proof() {
        let mut first = link(1, false);
        assert!(matches!(
            &first.start()[..],
            [NativeMessage::Hello { .. }, NativeMessage::Register { .. }]
        ));
        // The proof does not ask for a second registration.
        let proof = proof(&test_coordinator_key(), &SESSION, PROTOCOL_VERSION);
        assert!(matches!(
            &first.handle(Instant::now(), proof.clone())[..],
            [ClientEvent::CoordinatorVerified { .. }]
        ));

        let mut second = link(1, true);
        assert!(matches!(&second.start()[..], [NativeMessage::Hello { .. }]));
        assert!(matches!(
            &second.handle(Instant::now(), proof)[..],
            [
                ClientEvent::CoordinatorVerified { .. },
                ClientEvent::Send(NativeMessage::Register { .. })
            ]
        ));
    }

    #[test]
    fn a_request_made_before_registering_follows_the_proof_and_gets_its_order() {
        let t0 = Instant::now();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), test_coordinator_key());
        let (mut alice, mut bob) = (fresh_client(), fresh_client());
        coord.connected(1, addr("203.0.113.7:8333"), None, Some(SESSION));
        coord.connected(2, addr("198.51.100.20:40001"), None, Some(SESSION));
        let bob_id = register(&mut coord, 2, &mut bob, t0);

        // Alice is behind a NAT: her own-network endpoint must reach the
        // coordinator before her request does, for a peer behind the same
        // NAT.
        alice.set_local(vec![addr("10.1.0.10:8333")]);
        alice.set_seen(Some(addr("203.0.113.7:8333")));
        // Alice's whole first flight: hello, registration, request.
        let mut to_coord = VecDeque::from(alice.start());
        assert_eq!(alice.request(t0, 7, bob_id), None);
        let mut after_challenge = Vec::new();
        let mut sent_local = 0;
        let mut orders = Vec::new();
        while let Some(msg) = to_coord.pop_front() {
            for action in coord.handle(t0, 1, msg, [9; 32]) {
                let CoordinatorAction::Send(to, reply) = action else {
                    panic!("unexpected {action:?}");
                };
                if let NativeMessage::Punch { request, role, .. } = &reply {
                    orders.push((to, *request, *role));
                }
                if to != 1 {
                    continue;
                }
                let challenge = matches!(reply, NativeMessage::Challenge { .. });
                for event in alice.handle(t0, reply) {
                    if let ClientEvent::Send(m) = event {
                        if challenge {
                            after_challenge.push(m.clone());
                        }
                        if matches!(m, NativeMessage::Local { .. }) {
                            sent_local += 1;
                        }
                        to_coord.push_back(m);
                    }
                }
            }
        }
        // The request went out right behind the proof, in the same flight,
        // and the coordinator, reading it registered, ordered both sides.
        assert!(
            matches!(
                &after_challenge[..],
                [
                    NativeMessage::Prove { .. },
                    NativeMessage::Local { .. },
                    NativeMessage::Connect { request: 7, target }
                ] if *target == bob_id
            ),
            "{after_challenge:?}"
        );
        // `hpregistered` does not announce it again.
        assert_eq!(sent_local, 1);
        assert_eq!(
            orders,
            vec![(1, 7, PunchRole::Initiator), (2, 7, PunchRole::Responder)]
        );
        // From here on requests go out at once.
        assert!(alice.request(t0, 8, bob_id).is_some());
    }

    #[test]
    fn a_held_request_that_expired_before_the_proof_is_not_sent() {
        let t0 = Instant::now();
        let mut alice = fresh_client();
        let _first = alice.start();
        let bob = NodeKey::generate().id();
        assert_eq!(alice.request(t0, 1, bob), None);
        // A second request long after the first forgets it.
        let later = t0 + REQUEST_LIFETIME + Duration::from_secs(1);
        assert_eq!(alice.request(later, 2, bob), None);
        let proof = proof(&test_coordinator_key(), &SESSION, PROTOCOL_VERSION);
        let _verified = alice.handle(later, proof);
        let events = alice.handle(later, NativeMessage::Challenge { nonce: [3; 32] });
        assert!(
            matches!(
                &events[..],
                [
                    ClientEvent::Send(NativeMessage::Prove { .. }),
                    ClientEvent::Send(NativeMessage::Connect { request: 2, .. })
                ]
            ),
            "{events:?}"
        );
    }

    #[test]
    fn predicted_ports_reach_the_peer_of_the_order_once_and_only_at_the_predictors_address() {
        let t0 = Instant::now();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), test_coordinator_key());
        let (mut alice, mut bob, mut carol) = (fresh_client(), fresh_client(), fresh_client());
        coord.connected(1, addr("203.0.113.7:8333"), None, Some(SESSION));
        coord.connected(2, addr("198.51.100.20:40001"), None, Some(SESSION));
        coord.connected(3, addr("192.0.2.30:8333"), None, Some(SESSION));
        register(&mut coord, 1, &mut alice, t0);
        let bob_id = register(&mut coord, 2, &mut bob, t0);
        register(&mut coord, 3, &mut carol, t0);
        let ask = asked(&mut alice, t0, 9, bob_id);
        let actions = coord.handle(t0, 1, ask, [0; 32]);
        let (orders, _) = deliver(actions, &mut [(1, &mut alice), (2, &mut bob)], t0);
        assert_eq!(orders.len(), 2);
        let bob_ip: IpAddr = "198.51.100.20".parse().unwrap();
        let ports: Vec<u16> = (40_003..40_011).collect();

        // Only for an order one follows.
        assert_eq!(carol.predict(t0, 9, bob_ip, ports.clone()), None);
        let predict = bob.predict(t0, 9, bob_ip, ports.clone()).unwrap();
        let forged = NativeMessage::Ports {
            request: 9,
            ip: bob_ip,
            ports: vec![22],
        };
        assert!(coord.handle(t0, 3, forged, [0; 32]).is_empty());
        // Bob's prediction goes to Alice, once.
        let actions = coord.handle(t0, 2, predict.clone(), [0; 32]);
        assert_eq!(actions, vec![CoordinatorAction::Send(1, predict.clone())]);
        assert!(coord.handle(t0, 2, predict.clone(), [0; 32]).is_empty());
        // Alice dials them, once, at the address her order named.
        let events = alice.handle(t0, predict.clone());
        let expected: Vec<SocketAddr> = ports.iter().map(|p| SocketAddr::new(bob_ip, *p)).collect();
        assert_eq!(
            events,
            vec![ClientEvent::Predicted {
                request: 9,
                endpoints: expected
            }]
        );
        assert!(alice.handle(t0, predict).is_empty());

        // A node may only predict its own address; a coordinator may not
        // move a prediction elsewhere; late predictions are dropped.
        let ask = asked(&mut alice, t0, 10, bob_id);
        let actions = coord.handle(t0, 1, ask, [0; 32]);
        deliver(actions, &mut [(1, &mut alice), (2, &mut bob)], t0);
        let elsewhere = NativeMessage::Ports {
            request: 10,
            ip: "192.0.2.99".parse().unwrap(),
            ports: vec![80],
        };
        assert!(matches!(
            &coord.handle(t0, 2, elsewhere.clone(), [0; 32])[..],
            [CoordinatorAction::Close(2, why)] if why.contains("seen at 198.51.100.20")
        ));
        assert!(matches!(
            &alice.handle(t0, elsewhere)[..],
            [ClientEvent::Close(why)] if why.contains("order named 198.51.100.20")
        ));
        let late = t0 + PREDICTION_WINDOW;
        let ask = asked(&mut alice, t0, 11, bob_id);
        let actions = coord.handle(t0, 1, ask, [0; 32]);
        deliver(actions, &mut [(1, &mut alice), (2, &mut bob)], t0);
        let predict = bob.predict(t0, 11, bob_ip, ports).unwrap();
        assert!(coord.handle(late, 2, predict.clone(), [0; 32]).is_empty());
        assert!(alice.handle(late, predict).is_empty());
    }

    #[test]
    fn a_side_still_predicts_after_the_peers_prediction_came_first_and_only_once() {
        // Both behind symmetric NATs: Alice probed early and her ports
        // reach Bob before Bob's own probe has answered.
        let t0 = Instant::now();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), test_coordinator_key());
        let (mut alice, mut bob) = (fresh_client(), fresh_client());
        coord.connected(1, addr("203.0.113.7:40000"), None, Some(SESSION));
        coord.connected(2, addr("198.51.100.20:40000"), None, Some(SESSION));
        register(&mut coord, 1, &mut alice, t0);
        let bob_id = register(&mut coord, 2, &mut bob, t0);
        let ask = asked(&mut alice, t0, 5, bob_id);
        let actions = coord.handle(t0, 1, ask, [0; 32]);
        deliver(actions, &mut [(1, &mut alice), (2, &mut bob)], t0);
        let (alice_ip, bob_ip): (IpAddr, IpAddr) = (
            "203.0.113.7".parse().unwrap(),
            "198.51.100.20".parse().unwrap(),
        );

        let alices = alice.predict(t0, 5, alice_ip, vec![40_003]).unwrap();
        let to_bob = coord.handle(t0, 1, alices, [0; 32]);
        let [CoordinatorAction::Send(2, alices)] = &to_bob[..] else {
            panic!("{to_bob:?}");
        };
        assert!(matches!(
            &bob.handle(t0, alices.clone())[..],
            [ClientEvent::Predicted { request: 5, .. }]
        ));
        // Bob's own prediction still goes out, and reaches Alice.
        let bobs = bob.predict(t0, 5, bob_ip, vec![40_007]).unwrap();
        assert_eq!(bob.predict(t0, 5, bob_ip, vec![40_007]), None);
        let to_alice = coord.handle(t0, 2, bobs, [0; 32]);
        let [CoordinatorAction::Send(1, bobs)] = &to_alice[..] else {
            panic!("{to_alice:?}");
        };
        assert!(matches!(
            &alice.handle(t0, bobs.clone())[..],
            [ClientEvent::Predicted { request: 5, .. }]
        ));
    }

    #[test]
    fn each_side_of_an_order_learns_the_nat_class_the_other_stated() {
        use crate::nat::{Allocation, MappingBehaviour};
        let t0 = Instant::now();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), test_coordinator_key());
        let (mut alice, mut bob) = (fresh_client(), fresh_client());
        let symmetric = NatBrief {
            mapping: MappingBehaviour::AddressAndPortDependent,
            port_preserving: false,
            allocation: Allocation::Sequential(1),
        };
        let home = NatBrief {
            mapping: MappingBehaviour::EndpointIndependent,
            port_preserving: true,
            allocation: Allocation::Preserving,
        };
        coord.connected(1, addr("203.0.113.7:8333"), None, Some(SESSION));
        coord.connected(2, addr("198.51.100.20:40001"), None, Some(SESSION));
        // Known before registering: it goes out with the registration.
        assert_eq!(alice.set_nat(symmetric), None);
        register(&mut coord, 1, &mut alice, t0);
        let bob_id = register(&mut coord, 2, &mut bob, t0);
        // Learned after: told at once, and only once.
        let tell = bob.set_nat(home).unwrap();
        assert_eq!(tell, NativeMessage::Nat { class: home });
        assert_eq!(bob.set_nat(home), None);
        assert!(coord.handle(t0, 2, tell, [0; 32]).is_empty());

        let ask = asked(&mut alice, t0, 9, bob_id);
        let actions = coord.handle(t0, 1, ask, [0; 32]);
        let (orders, _) = deliver(actions, &mut [(1, &mut alice), (2, &mut bob)], t0);
        let peer_nat = |conn: ConnId| {
            orders
                .iter()
                .find(|(to, _)| *to == conn)
                .map(|(_, order)| order.peer_nat)
        };
        assert_eq!(peer_nat(1), Some(Some(home)));
        assert_eq!(peer_nat(2), Some(Some(symmetric)));

        // A class for another request is not attached to this order.
        let stray = NativeMessage::PeerNat {
            request: 77,
            class: home,
        };
        assert!(alice.handle(t0, stray).is_empty());
        let ask = asked(&mut alice, t0, 10, bob_id);
        let actions: Vec<_> = coord
            .handle(t0, 1, ask, [0; 32])
            .into_iter()
            .filter(|a| !matches!(a, CoordinatorAction::Send(1, NativeMessage::PeerNat { .. })))
            .collect();
        let (orders, _) = deliver(actions, &mut [(1, &mut alice), (2, &mut bob)], t0);
        assert!(orders
            .iter()
            .any(|(to, o)| *to == 1 && o.peer_nat.is_none()));

        // Only a registered node states its class; a client never takes one.
        coord.connected(3, addr("192.0.2.30:8333"), None, Some(SESSION));
        let early = NativeMessage::Nat { class: home };
        assert!(matches!(
            &coord.handle(t0, 3, early.clone(), [0; 32])[..],
            [CoordinatorAction::Close(3, _)]
        ));
        assert!(matches!(
            &alice.handle(t0, early)[..],
            [ClientEvent::Close(_)]
        ));
    }

    #[test]
    fn nodes_behind_one_nat_race_each_others_own_network_endpoints() {
        let t0 = Instant::now();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), test_coordinator_key());
        let (mut alice, mut bob, mut carol) = (fresh_client(), fresh_client(), fresh_client());
        alice.set_local(vec![addr("192.168.1.10:8333")]);
        // A public "own" address is not announced.
        bob.set_local(vec![addr("192.168.1.11:8333"), addr("198.51.100.9:8333")]);
        carol.set_local(vec![addr("10.0.0.3:8333")]);
        coord.connected(1, addr("203.0.113.7:40001"), None, Some(SESSION));
        coord.connected(2, addr("203.0.113.7:40002"), None, Some(SESSION));
        coord.connected(3, addr("198.51.100.20:40003"), None, Some(SESSION));
        register(&mut coord, 1, &mut alice, t0);
        let bob_id = register(&mut coord, 2, &mut bob, t0);
        register(&mut coord, 3, &mut carol, t0);

        // Alice and Bob share the public address: each learns the other's.
        let ask = asked(&mut alice, t0, 1, bob_id);
        let actions = coord.handle(t0, 1, ask, [0; 32]);
        let (orders, cands) = deliver(actions, &mut [(1, &mut alice), (2, &mut bob)], t0);
        assert_eq!(cands, 2);
        let local_of = |conn| {
            orders
                .iter()
                .find(|(c, _)| *c == conn)
                .map(|(_, o)| o.local.clone())
                .unwrap()
        };
        assert_eq!(local_of(1), vec![addr("192.168.1.11:8333")]);
        assert_eq!(local_of(2), vec![addr("192.168.1.10:8333")]);

        // Carol is elsewhere: nobody learns anybody's network.
        let ask = asked(&mut carol, t0, 2, bob_id);
        let actions = coord.handle(t0, 3, ask, [0; 32]);
        let (orders, cands) = deliver(actions, &mut [(3, &mut carol), (2, &mut bob)], t0);
        assert_eq!(cands, 0);
        assert_eq!(orders.len(), 2);
        assert!(orders.iter().all(|(_, o)| o.local.is_empty()));

        // A coordinator that sends Carol endpoints for a peer that is not
        // behind her address cannot aim her SYNs into her network.
        let ask = asked(&mut carol, t0, 3, bob_id);
        let _ = ask;
        let bob_key = bob.key().public().serialize();
        assert!(carol
            .handle(
                t0,
                NativeMessage::Candidates {
                    request: 3,
                    endpoints: vec![addr("10.0.0.9:22")],
                },
            )
            .is_empty());
        let events = carol.handle(
            t0,
            NativeMessage::Punch {
                request: 3,
                role: PunchRole::Initiator,
                peer_key: bob_key,
                peer: addr("203.0.113.7:40002"),
                delay_ms: 10,
            },
        );
        let [ClientEvent::Punch(order)] = &events[..] else {
            panic!("{events:?}")
        };
        assert!(order.local.is_empty());
    }

    /// A link of the node with key `[secret; 32]`, expecting the test
    /// coordinator; `second_family`: it registers the node's second family.
    fn link(secret: u8, second_family: bool) -> Client {
        Client::new(
            ClientConfig {
                second_family,
                ..Default::default()
            },
            NodeKey::from_secret(&[secret; 32]).unwrap(),
            expected_coordinator(),
        )
    }

    #[test]
    fn a_dual_stack_node_registers_over_both_families_and_its_peers_race_both() {
        let t0 = Instant::now();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), test_coordinator_key());
        // One key per node, one link per family; the second link says so.
        let (mut alice4, mut alice6) = (link(1, false), link(1, true));
        let (mut bob4, mut bob6) = (link(2, false), link(2, true));
        let (alice_v6, bob_v6) = (addr("[2001:db8:1::a]:8333"), addr("[2001:db8:2::a]:8333"));
        coord.connected(1, addr("203.0.113.7:40001"), None, Some(SESSION));
        coord.connected(2, alice_v6, None, Some(SESSION));
        coord.connected(3, addr("198.51.100.20:40003"), None, Some(SESSION));
        coord.connected(4, bob_v6, None, Some(SESSION));
        // `register` asserts that nobody else was touched: no displacing.
        let alice_id = register(&mut coord, 1, &mut alice4, t0);
        assert_eq!(register(&mut coord, 2, &mut alice6, t0), alice_id);
        let bob_id = register(&mut coord, 3, &mut bob4, t0);
        assert_eq!(register(&mut coord, 4, &mut bob6, t0), bob_id);
        assert_eq!(coord.registered(), 2);
        coord.check_invariants().unwrap();

        // Alice asks over IPv4: each side also gets the other's IPv6.
        let ask = asked(&mut alice4, t0, 1, bob_id);
        let actions = coord.handle(t0, 1, ask, [0; 32]);
        let (orders, cands) = deliver(actions, &mut [(1, &mut alice4), (3, &mut bob4)], t0);
        assert_eq!((orders.len(), cands), (2, 2));
        let other_of = |orders: &[(ConnId, PunchOrder)], conn| {
            orders
                .iter()
                .find(|(c, _)| *c == conn)
                .map(|(_, o)| (o.peer, o.other_family))
                .unwrap()
        };
        assert_eq!(
            other_of(&orders, 1),
            (addr("198.51.100.20:40003"), Some(bob_v6))
        );
        assert_eq!(
            other_of(&orders, 3),
            (addr("203.0.113.7:40001"), Some(alice_v6))
        );

        // Bob's IPv4 link goes: his IPv6 one takes its place and gets the
        // orders; Alice learns nothing of a family Bob no longer has.
        coord.disconnected(3);
        coord.check_invariants().unwrap();
        assert_eq!(coord.registered(), 2);
        let ask = asked(&mut alice4, t0, 2, bob_id);
        let actions = coord.handle(t0, 1, ask, [0; 32]);
        let (orders, _) = deliver(actions, &mut [(1, &mut alice4), (4, &mut bob6)], t0);
        assert_eq!(other_of(&orders, 1), (bob_v6, None));
        assert_eq!(
            other_of(&orders, 4),
            (addr("203.0.113.7:40001"), Some(alice_v6))
        );

        // Alice again over IPv6 (a new address): only her older IPv6 link
        // is displaced, her IPv4 one stays.
        let mut alice6b = link(1, true);
        coord.connected(5, addr("[2001:db8:1::b]:8333"), None, Some(SESSION));
        let (_, others) = register_seeing_others(&mut coord, 5, &mut alice6b, t0);
        let closed: Vec<ConnId> = others
            .iter()
            .filter_map(|a| match a {
                CoordinatorAction::Close(conn, _) => Some(*conn),
                _ => None,
            })
            .collect();
        assert_eq!(closed, vec![2]);
        coord.check_invariants().unwrap();

        // A node that does not speak of dual stack from another family
        // displaces as before, both of Alice's links with it.
        let key = NodeKey::from_secret(&[1; 32]).unwrap();
        let public = key.public().serialize();
        coord.connected(6, addr("[2001:db8:1::c]:8333"), None, Some(SESSION));
        let hello = NativeMessage::Hello {
            version: PROTOCOL_VERSION,
            features: FEATURES & !FEATURE_DUAL_STACK,
        };
        let _coord = coord.handle(t0, 6, hello, [0; 32]);
        let nonce = [6; 32];
        let _challenge = coord.handle(t0, 6, NativeMessage::Register { key: public }, nonce);
        let signature = key.sign(REGISTER_TAG, &[&nonce, &public]);
        let others = coord.handle(t0, 6, NativeMessage::Prove { signature }, [0; 32]);
        let mut closed: Vec<ConnId> = others
            .iter()
            .filter_map(|a| match a {
                CoordinatorAction::Close(conn, _) => Some(*conn),
                _ => None,
            })
            .collect();
        closed.sort();
        assert_eq!(closed, vec![1, 5]);
        coord.check_invariants().unwrap();

        // A second-family link does not register with a coordinator that
        // would take it for a displacement.
        let features = FEATURES & !FEATURE_DUAL_STACK;
        let key = test_coordinator_key();
        let data = coordinator_proof_data(&SESSION, 1, features);
        let old = NativeMessage::Coordinator {
            version: 1,
            features,
            key: key.public().serialize(),
            signature: key.sign(COORDINATOR_TAG, &[&data]),
        };
        let mut second = link(3, true);
        let _hello = second.start();
        assert!(closes(&second.handle(t0, old.clone()), "dual stack"));
        // A first-family link registered with its hello already.
        let mut first = link(3, false);
        let _hello = first.start();
        assert!(matches!(
            &first.handle(t0, old)[..],
            [ClientEvent::CoordinatorVerified { .. }]
        ));
    }

    #[test]
    fn a_node_that_moved_families_displaces_and_a_second_family_that_came_first_moves_aside() {
        let t0 = Instant::now();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), test_coordinator_key());
        let closed = |actions: &[CoordinatorAction]| -> Vec<ConnId> {
            actions
                .iter()
                .filter_map(|a| match a {
                    CoordinatorAction::Close(conn, _) => Some(*conn),
                    _ => None,
                })
                .collect()
        };
        // Registered over IPv4, the same key from IPv6 on a link that does
        // not say it is the second family: the node moved; the stale IPv4
        // registration goes at once.
        let (mut before, mut after) = (link(1, false), link(1, false));
        coord.connected(1, addr("203.0.113.7:40001"), None, Some(SESSION));
        coord.connected(2, addr("[2001:db8:1::a]:8333"), None, Some(SESSION));
        register(&mut coord, 1, &mut before, t0);
        let (_, others) = register_seeing_others(&mut coord, 2, &mut after, t0);
        assert_eq!(closed(&others), vec![1]);
        coord.check_invariants().unwrap();

        // Both links of a dual-stack node race; the second-family one
        // proves first. The first then takes the first place, and the
        // second stands beside it: nobody is displaced, orders go to the
        // first.
        let (mut first, mut second) = (link(2, false), link(2, true));
        coord.connected(3, addr("[2001:db8:2::a]:8333"), None, Some(SESSION));
        coord.connected(4, addr("198.51.100.20:40003"), None, Some(SESSION));
        let id = register(&mut coord, 3, &mut second, t0);
        assert_eq!(register(&mut coord, 4, &mut first, t0), id);
        coord.check_invariants().unwrap();
        assert_eq!(coord.by_id.get(&id), Some(&4));
        assert_eq!(coord.other_family.get(&id), Some(&3));
    }

    #[test]
    fn a_dual_stack_client_takes_one_punchable_endpoint_of_the_other_family() {
        let t0 = Instant::now();
        let mut alice = fresh_client();
        alice.verified = Some(PROTOCOL_VERSION);
        alice.coordinator_features = FEATURES;
        alice.registered = Some(alice.key().id());
        alice.observed = Some(addr("203.0.113.7:40001"));
        let bob = NodeKey::generate();
        let order = |client: &mut Client, request: u64, endpoints: Vec<SocketAddr>| {
            let _ = client.handle(t0, NativeMessage::Candidates { request, endpoints });
            let events = client.handle(
                t0,
                NativeMessage::Punch {
                    request,
                    role: PunchRole::Responder,
                    peer_key: bob.public().serialize(),
                    peer: addr("198.51.100.20:40003"),
                    delay_ms: 10,
                },
            );
            match &events[..] {
                [ClientEvent::Punch(order)] => (order.local.clone(), order.other_family),
                other => panic!("{other:?}"),
            }
        };
        // Loopback, a LAN, an IPv4 address hidden in IPv6: none is taken;
        // the first punchable IPv6 endpoint is, and only one.
        let offered = vec![
            addr("[::1]:8333"),
            addr("[fd00::5]:8333"),
            addr("[::ffff:198.51.100.9]:8333"),
            addr("[2001:db8:2::a]:8333"),
        ];
        assert_eq!(
            order(&mut alice, 1, offered),
            (vec![], Some(addr("[2001:db8:2::a]:8333")))
        );
        // Same family as the order's endpoint: not an other-family one
        // (nor, the peer not being behind our address, an own-network one).
        assert_eq!(
            order(&mut alice, 2, vec![addr("192.0.2.9:8333")]),
            (vec![], None)
        );
        // A coordinator that did not announce dual stack gets none through.
        alice.coordinator_features = FEATURES & !FEATURE_DUAL_STACK;
        assert_eq!(
            order(&mut alice, 3, vec![addr("[2001:db8:2::a]:8333")]),
            (vec![], None)
        );
    }

    #[test]
    fn registration_and_a_timed_punch() {
        let t0 = Instant::now();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), test_coordinator_key());
        let mut alice = fresh_client();
        let mut bob = fresh_client();
        coord.connected(
            1,
            addr("203.0.113.2:40001"),
            Some(Duration::from_millis(40)),
            Some(SESSION),
        );
        coord.connected(
            2,
            addr("203.0.113.6:40002"),
            Some(Duration::from_millis(100)),
            Some(SESSION),
        );
        let alice_id = register(&mut coord, 1, &mut alice, t0);
        let bob_id = register(&mut coord, 2, &mut bob, t0);
        assert_eq!(alice_id, alice.key().id());
        assert_eq!(coord.registered(), 2);

        let ask = asked(&mut alice, t0, 7, bob_id);
        let actions = coord.handle(t0, 1, ask, [0; 32]);
        let [CoordinatorAction::Send(1, to_alice), CoordinatorAction::Send(2, to_bob)] =
            &actions[..]
        else {
            panic!("{actions:?}")
        };
        // Alice is 40 ms away, Bob 100 ms: Alice waits (100-40)/2 ms longer.
        let a = alice.handle(t0, to_alice.clone());
        let b = bob.handle(t0, to_bob.clone());
        let [ClientEvent::Punch(a)] = &a[..] else {
            panic!("{a:?}")
        };
        let [ClientEvent::Punch(b)] = &b[..] else {
            panic!("{b:?}")
        };
        assert_eq!(a.role, PunchRole::Initiator);
        assert_eq!(b.role, PunchRole::Responder);
        assert_eq!(a.peer, addr("203.0.113.6:40002"));
        assert_eq!(b.peer, addr("203.0.113.2:40001"));
        assert_eq!(a.delay, Duration::from_millis(30 + 20));
        assert_eq!(b.delay, Duration::from_millis(20));
        // Each arrives at rtt/2, then waits: both dial at 70 ms.
        assert_eq!(
            Duration::from_millis(20) + a.delay,
            Duration::from_millis(50) + b.delay
        );
        assert_eq!(a.peer_key, bob.key().public());
    }

    #[test]
    fn a_bad_proof_closes_and_requests_need_registration() {
        let t0 = Instant::now();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), test_coordinator_key());
        coord.connected(1, addr("203.0.113.2:1"), None, Some(SESSION));
        let key = NodeKey::generate();
        let hello = NativeMessage::Hello {
            version: 1,
            features: 0,
        };
        coord.handle(t0, 1, hello, [0; 32]);
        coord.handle(
            t0,
            1,
            NativeMessage::Register {
                key: key.public().serialize(),
            },
            [1; 32],
        );
        let wrong = key.sign(REGISTER_TAG, &[&[2u8; 32], &key.public().serialize()]);
        assert!(matches!(
            &coord.handle(t0, 1, NativeMessage::Prove { signature: wrong }, [0; 32])[..],
            [CoordinatorAction::Close(1, why)] if why.contains("does not verify")
        ));
        coord.connected(2, addr("203.0.113.6:1"), None, Some(SESSION));
        let actions = coord.handle(
            t0,
            2,
            NativeMessage::Connect {
                request: 1,
                target: key.id(),
            },
            [0; 32],
        );
        assert_eq!(
            actions,
            vec![CoordinatorAction::Send(
                2,
                NativeMessage::Fail {
                    request: 1,
                    reason: FailReason::NotRegistered
                }
            )]
        );
        assert!(matches!(
            &coord.handle(t0, 2, NativeMessage::Challenge { nonce: [0; 32] }, [0; 32])[..],
            [CoordinatorAction::Close(2, _)]
        ));
    }

    #[test]
    fn unknown_targets_and_request_floods_fail() {
        let t0 = Instant::now();
        let mut coord = Coordinator::new(
            CoordinatorConfig {
                requests_per_minute: 2,
                ..Default::default()
            },
            test_coordinator_key(),
        );
        let mut alice = fresh_client();
        coord.connected(1, addr("203.0.113.2:1"), None, Some(SESSION));
        let alice_id = register(&mut coord, 1, &mut alice, t0);
        let stranger = NodeKey::generate().id();
        let fail = |actions: Vec<CoordinatorAction>| match &actions[..] {
            [CoordinatorAction::Send(_, NativeMessage::Fail { reason, .. })] => *reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            fail(coord.handle(t0, 1, asked(&mut alice, t0, 1, stranger), [0; 32])),
            FailReason::UnknownPeer
        );
        assert_eq!(
            fail(coord.handle(t0, 1, asked(&mut alice, t0, 2, alice_id), [0; 32])),
            FailReason::SelfConnect
        );
        assert_eq!(
            fail(coord.handle(t0, 1, asked(&mut alice, t0, 3, stranger), [0; 32])),
            FailReason::RateLimited
        );
        // A minute later the window has moved on.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            fail(coord.handle(later, 1, asked(&mut alice, later, 4, stranger), [0; 32])),
            FailReason::UnknownPeer
        );
    }

    #[test]
    fn the_client_refuses_substituted_keys_unknown_requests_and_floods() {
        let t0 = Instant::now();
        let config = ClientConfig {
            orders_per_target_per_minute: 2,
            orders_per_minute: 3,
            ..Default::default()
        };
        let mut alice = Client::new(config, NodeKey::generate(), expected_coordinator());
        alice.verified = Some(PROTOCOL_VERSION);
        alice.registered = Some(alice.key().id());
        let bob = NodeKey::generate();
        let mallory = NodeKey::generate();
        let order = |request, role, key: &NodeKey, peer: &str| NativeMessage::Punch {
            request,
            role,
            peer_key: key.public().serialize(),
            peer: addr(peer),
            delay_ms: 10,
        };
        let refused = |events: Vec<ClientEvent>| {
            matches!(
                &events[..],
                [
                    ClientEvent::Send(NativeMessage::Result {
                        result: PunchResult::Refused,
                        ..
                    }),
                    ClientEvent::Refused { .. }
                ]
            )
        };
        // A key that does not hash to the id we asked for.
        alice.request(t0, 1, bob.id());
        assert!(refused(alice.handle(
            t0,
            order(1, PunchRole::Initiator, &mallory, "198.51.100.1:1")
        )));
        // An initiator order for a request never made.
        assert!(refused(alice.handle(
            t0,
            order(9, PunchRole::Initiator, &bob, "198.51.100.1:1")
        )));
        // Responder orders: two per target address, three in all.
        for (i, target) in ["198.51.100.1:1", "198.51.100.1:2"].iter().enumerate() {
            assert!(matches!(
                &alice.handle(t0, order(10 + i as u64, PunchRole::Responder, &bob, target))[..],
                [ClientEvent::Punch(_)]
            ));
        }
        assert!(refused(alice.handle(
            t0,
            order(12, PunchRole::Responder, &bob, "198.51.100.1:3")
        )));
        assert!(matches!(
            &alice.handle(t0, order(13, PunchRole::Responder, &bob, "198.51.100.2:1"))[..],
            [ClientEvent::Punch(_)]
        ));
        assert!(refused(alice.handle(
            t0,
            order(14, PunchRole::Responder, &bob, "198.51.100.3:1")
        )));
        let later = t0 + Duration::from_secs(60);
        assert!(matches!(
            &alice.handle(
                later,
                order(15, PunchRole::Responder, &bob, "198.51.100.1:1")
            )[..],
            [ClientEvent::Punch(_)]
        ));
    }

    #[test]
    fn orders_to_unroutable_addresses_are_refused() {
        let t0 = Instant::now();
        let mut alice = fresh_client();
        alice.verified = Some(PROTOCOL_VERSION);
        alice.registered = Some(alice.key().id());
        let bob = NodeKey::generate();
        for peer in [
            "127.0.0.1:8333",
            "192.168.1.1:80",
            "[::ffff:10.0.0.1]:22",
            "[64:ff9b::a00:1]:1",
        ] {
            let events = alice.handle(
                t0,
                NativeMessage::Punch {
                    request: 1,
                    role: PunchRole::Responder,
                    peer_key: bob.public().serialize(),
                    peer: addr(peer),
                    delay_ms: 0,
                },
            );
            assert!(
                matches!(&events[..], [ClientEvent::Send(_), ClientEvent::Refused { why, .. }] if why.contains("not a punchable address")),
                "{peer}: {events:?}"
            );
        }
        // A mapped public address is followed, as IPv4.
        let events = alice.handle(
            t0,
            NativeMessage::Punch {
                request: 2,
                role: PunchRole::Responder,
                peer_key: bob.public().serialize(),
                peer: addr("[::ffff:203.0.113.8]:8333"),
                delay_ms: 0,
            },
        );
        let [ClientEvent::Punch(order)] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(order.peer, addr("203.0.113.8:8333"));
    }

    #[test]
    fn the_per_target_limit_counts_an_ipv6_64_as_one_target() {
        let t0 = Instant::now();
        let mut alice = Client::new(
            ClientConfig {
                orders_per_target_per_minute: 2,
                ..Default::default()
            },
            NodeKey::generate(),
            expected_coordinator(),
        );
        alice.verified = Some(PROTOCOL_VERSION);
        alice.registered = Some(alice.key().id());
        let bob = NodeKey::generate();
        let order = |request, peer: &str| NativeMessage::Punch {
            request,
            role: PunchRole::Responder,
            peer_key: bob.public().serialize(),
            peer: addr(peer),
            delay_ms: 0,
        };
        for (i, peer) in ["[2001:db8:7:7::1]:1", "[2001:db8:7:7::2]:1"]
            .iter()
            .enumerate()
        {
            assert!(matches!(
                &alice.handle(t0, order(i as u64, peer))[..],
                [ClientEvent::Punch(_)]
            ));
        }
        // Another address of the same /64 is the same target.
        let events = alice.handle(t0, order(9, "[2001:db8:7:7:ffff::3]:1"));
        assert!(
            matches!(
                &events[..],
                [ClientEvent::Send(_), ClientEvent::Refused { .. }]
            ),
            "{events:?}"
        );
        // The next /64 is not.
        assert!(matches!(
            &alice.handle(t0, order(10, "[2001:db8:7:8::1]:1"))[..],
            [ClientEvent::Punch(_)]
        ));
    }

    /// Many connections from one netgroup (reconnecting resets nothing)
    /// cannot spend a registered node's order budget: after three orders
    /// to Bob they are refused, and Carol from another netgroup still gets
    /// through.
    #[test]
    fn a_budget_burn_from_one_netgroup_leaves_others_their_orders() {
        let t0 = Instant::now();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), test_coordinator_key());
        let mut bob = fresh_client();
        coord.connected(1, addr("203.0.113.6:1"), None, Some(SESSION));
        let bob_id = register(&mut coord, 1, &mut bob, t0);
        let mut orders = 0;
        for conn in 10..30 {
            let mut mallory = Client::new(
                ClientConfig::default(),
                NodeKey::generate(),
                expected_coordinator(),
            );
            coord.connected(
                conn,
                addr(&format!("198.51.{}.7:1", conn)),
                None,
                Some(SESSION),
            );
            register(&mut coord, conn, &mut mallory, t0);
            let actions = coord.handle(t0, conn, asked(&mut mallory, t0, 1, bob_id), [0; 32]);
            if actions.len() == 2 {
                orders += 1;
            }
            coord.disconnected(conn);
            coord.check_invariants().unwrap();
        }
        assert_eq!(orders, 3, "one netgroup got {orders} orders to Bob");
        let mut carol = fresh_client();
        coord.connected(99, addr("192.0.2.44:1"), None, Some(SESSION));
        register(&mut coord, 99, &mut carol, t0);
        let actions = coord.handle(t0, 99, asked(&mut carol, t0, 1, bob_id), [0; 32]);
        assert!(
            matches!(
                &actions[..],
                [CoordinatorAction::Send(99, NativeMessage::Punch { .. }), _]
            ),
            "{actions:?}"
        );
    }

    /// Found by hand against the spec, then by the coordinator fuzzer: a
    /// registered client that registers again and leaves must not leave its
    /// id pointing at a dead connection (the next request for it panicked).
    #[test]
    fn a_re_registration_then_disconnect_leaves_no_stale_index() {
        let t0 = Instant::now();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), test_coordinator_key());
        let mut alice = fresh_client();
        let mut bob = fresh_client();
        coord.connected(1, addr("203.0.113.2:1"), None, Some(SESSION));
        coord.connected(2, addr("203.0.113.6:2"), None, Some(SESSION));
        register(&mut coord, 1, &mut alice, t0);
        let bob_id = register(&mut coord, 2, &mut bob, t0);
        let register_again = NativeMessage::Register {
            key: bob.key().public().serialize(),
        };
        coord.handle(t0, 2, register_again, [5; 32]);
        coord.check_invariants().unwrap();
        coord.disconnected(2);
        coord.check_invariants().unwrap();
        let actions = coord.handle(t0, 1, asked(&mut alice, t0, 1, bob_id), [0; 32]);
        assert_eq!(
            actions,
            vec![CoordinatorAction::Send(
                1,
                NativeMessage::Fail {
                    request: 1,
                    reason: FailReason::UnknownPeer
                }
            )]
        );
        // The same key proven on a second connection displaces the first,
        // which stays connected but unregistered.
        let mut bob_again = Client::new(
            ClientConfig::default(),
            bob.key().clone(),
            expected_coordinator(),
        );
        coord.connected(3, addr("203.0.113.6:3"), None, Some(SESSION));
        coord.connected(4, addr("203.0.113.6:4"), None, Some(SESSION));
        let mut bob_third = Client::new(
            ClientConfig::default(),
            bob.key().clone(),
            expected_coordinator(),
        );
        register(&mut coord, 3, &mut bob_again, t0);
        let (_, others) = register_seeing_others(&mut coord, 4, &mut bob_third, t0);
        coord.check_invariants().unwrap();
        assert_eq!(coord.registered(), 2);
        // The displaced connection is told why and closed; its client
        // stops instead of registering again.
        let [CoordinatorAction::Send(3, told), CoordinatorAction::Close(3, why)] = &others[..]
        else {
            panic!("{others:?}")
        };
        assert!(why.contains("displaced"), "{why}");
        assert_eq!(
            bob_again.handle(t0, told.clone()),
            vec![ClientEvent::Displaced]
        );
        coord.disconnected(3);
        coord.check_invariants().unwrap();
        let actions = coord.handle(t0, 1, asked(&mut alice, t0, 2, bob_id), [0; 32]);
        assert!(
            matches!(
                &actions[..],
                [
                    CoordinatorAction::Send(1, NativeMessage::Punch { .. }),
                    CoordinatorAction::Send(4, _)
                ]
            ),
            "{actions:?}"
        );
    }

    #[test]
    fn a_targets_refusal_reaches_the_requester_once() {
        let t0 = Instant::now();
        let mut coord = Coordinator::new(CoordinatorConfig::default(), test_coordinator_key());
        let mut alice = fresh_client();
        let mut bob = fresh_client();
        coord.connected(1, addr("203.0.113.2:1"), None, Some(SESSION));
        coord.connected(2, addr("203.0.113.6:2"), None, Some(SESSION));
        register(&mut coord, 1, &mut alice, t0);
        let bob_id = register(&mut coord, 2, &mut bob, t0);
        coord.handle(t0, 1, asked(&mut alice, t0, 9, bob_id), [0; 32]);
        let refused = NativeMessage::Result {
            request: 9,
            result: PunchResult::Refused,
        };
        let actions = coord.handle(t0, 2, refused.clone(), [0; 32]);
        assert_eq!(
            actions[1..],
            [CoordinatorAction::Send(
                1,
                NativeMessage::Fail {
                    request: 9,
                    reason: FailReason::PeerRefused
                }
            )]
        );
        // Alice hears it as a failure of her request.
        let [CoordinatorAction::Send(_, fail)] = &actions[1..] else {
            panic!("{actions:?}")
        };
        assert_eq!(
            alice.handle(t0, fail.clone()),
            vec![ClientEvent::RequestFailed {
                request: 9,
                reason: FailReason::PeerRefused
            }]
        );
        // A second report of the same request, or one from the requester,
        // forwards nothing.
        assert_eq!(coord.handle(t0, 2, refused.clone(), [0; 32]).len(), 1);
        assert_eq!(coord.handle(t0, 1, refused, [0; 32]).len(), 1);
        // A punch that worked is not forwarded either.
        coord.handle(t0, 1, asked(&mut alice, t0, 10, bob_id), [0; 32]);
        let connected = NativeMessage::Result {
            request: 10,
            result: PunchResult::Connected,
        };
        assert_eq!(coord.handle(t0, 2, connected, [0; 32]).len(), 1);
    }
}
