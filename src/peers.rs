//! What the node's sessions say to each other beyond ping: addresses.
//!
//! Every session the node serves (inbound, punched, outbound) runs
//! [`serve`]: it answers pings, answers one `getaddr` from a peer that
//! connected to us, takes `addr`/`addrv2` and `hpreach` into the node's
//! [`AddrMan`] within a per-peer rate, and relays reachability records
//! that are new to us to two other peers. A session we asked for sends
//! `getaddr` first, as Bitcoin Core does on its outbound connections. The
//! node's own records (one per coordinator it is registered with) go to
//! every peer that relays records, at the start of each session and again
//! whenever they change.
//!
//! Hostile peers are the normal case: a record that does not verify, an
//! `hpreach` that does not parse, or a flood beyond the rate is dropped
//! (the malformed one closes the session with the reason logged); nothing a
//! peer announces is allocated before it is read, and a peer that does not
//! read has its relays dropped, never queued without bound.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::p2p::address::{AddrV2, Address};
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::ServiceFlags;
use rand::seq::SliceRandom;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::addrman::{Added, AddrKey, AddrMan, Netgroup, PeerAddr};
use crate::clock::{lock, unix_now, Later};
use crate::identity::NodeId;
use crate::native::messages::{NativeMessage, NODE_PUNCH_HANDOFF_BIT, NODE_PUNCH_REACH_BIT};
use crate::native::reach::{ReachRecord, MAX_REACH_RECORDS};
use crate::node::SessionPath;
use crate::wire::{Session, SessionError, SessionRole, Stage, WireError};

/// Addresses a `getaddr` answer holds at most (Core: 1,000, and 23 % of
/// its table).
const GETADDR_MAX: usize = 1_000;
const GETADDR_PERCENT: usize = 23;
/// Reachability records a `getaddr` answer holds at most.
const GETADDR_MAX_RECORDS: usize = 64;
/// Addresses and records a peer may send per second, and its bucket's
/// depth (Core takes 0.1 addresses per second; records come from nodes
/// that refresh them every 20 minutes and must cross a network in
/// seconds, so they get more).
const ADDR_PER_SECOND: f64 = 0.1;
const RECORDS_PER_SECOND: f64 = 1.0;
const RECORD_BURST: f64 = 64.0;
/// Answering our `getaddr` the peer may send this many more.
const GETADDR_ALLOWANCE: f64 = 1_000.0;
/// Peers a new record is passed on to.
const RELAY_FANOUT: usize = 2;
/// How long a full node keeps a newcomer it handed off before closing.
const HANDOFF_LINGER: Duration = Duration::from_secs(1);
/// Messages queued for one peer's writer; beyond, relays are dropped.
const PEER_QUEUE: usize = 64;

/// A token bucket: `rate` per second up to `depth`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    depth: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, depth: f64, initial: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: initial.min(depth),
            rate,
            depth,
            at: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.depth.max(self.tokens));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Room for an answer we asked for, beyond the depth.
    pub fn grant(&mut self, extra: f64) {
        self.tokens += extra;
    }
}

/// Whom the node relays records to: each live session's queue.
struct PeerLink {
    queue: mpsc::Sender<NetworkMessage>,
    relays_records: bool,
    /// It connected to us (not a punch, not our outbound).
    inbound: bool,
    /// It set [`NODE_PUNCH_HANDOFF_BIT`]: newcomers may be sent to it.
    takes_handoffs: bool,
    /// The first record it sent that verified: how it said it can be
    /// reached, and where newcomers handed to it go.
    record: Option<ReachRecord>,
}

/// The address book in `bitpunch status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BookStatus {
    /// Addresses heard of, and addresses connected to before.
    pub new: usize,
    pub tried: usize,
    /// The coordinators our records name (what we tell peers).
    pub reachable_via: Vec<SocketAddr>,
    pub inbound_sessions: usize,
    /// Addresses reachable via each coordinator (by its address).
    pub via_coordinators: std::collections::BTreeMap<String, usize>,
    /// Newcomers handed to our inbound peers while our slots were full,
    /// and handoffs we received.
    pub handoffs_given: u64,
    pub handoffs_received: u64,
}

/// A handoff the node received: connect to `record`'s node instead of
/// `from`, in `from`'s netgroup (the party that chose the peer).
#[derive(Debug, Clone)]
pub struct HandedOff {
    pub from: SocketAddr,
    pub record: ReachRecord,
}

/// Handoffs a reachable node gives per minute: to one connector (by IP),
/// to one inbound peer, and in all.
#[derive(Debug, Clone, Copy)]
pub struct HandoffLimits {
    pub per_connector: u32,
    pub per_peer: u32,
    pub total: u32,
}

impl Default for HandoffLimits {
    fn default() -> Self {
        HandoffLimits {
            per_connector: 2,
            per_peer: 6,
            total: 60,
        }
    }
}

/// Handoffs given per key within the last minute (a sliding window, like
/// every other rate limit here). Keys exist only while they have a handoff
/// in the window, and handoffs are capped in total, so the map stays small.
#[derive(Debug)]
struct HandoffWindow<K> {
    given: HashMap<K, VecDeque<std::time::Instant>>,
}

impl<K> Default for HandoffWindow<K> {
    fn default() -> Self {
        HandoffWindow {
            given: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq> HandoffWindow<K> {
    const WINDOW: Duration = Duration::from_secs(60);

    fn expire(&mut self, now: std::time::Instant) {
        self.given
            .retain(|_, times| !crate::clock::expire_window(times, now, Self::WINDOW));
    }

    fn count(&self, key: &K) -> usize {
        self.given.get(key).map_or(0, VecDeque::len)
    }

    fn add(&mut self, key: K, now: std::time::Instant) {
        self.given.entry(key).or_default().push_back(now);
    }
}

struct BookState {
    addrman: AddrMan,
    links: HashMap<u64, PeerLink>,
    next_link: u64,
    /// The node's own records, one per coordinator it is registered with.
    own: HashMap<NodeId, ReachRecord>,
    given_to_connector: HandoffWindow<std::net::IpAddr>,
    given_to_peer: HandoffWindow<NodeId>,
    given: HandoffWindow<()>,
    handoffs_given: u64,
    handoffs_taken: u64,
    /// Where received handoffs go (the outbound manager), if anywhere.
    handoffs: Option<mpsc::Sender<HandedOff>>,
}

/// The node's addresses and its live sessions' relay queues.
pub struct PeerBook {
    state: Mutex<BookState>,
    own_id: NodeId,
    /// Lab networks live on private addresses; elsewhere they are refused.
    allow_private: bool,
    pub handoff_limits: HandoffLimits,
    /// Where the address manager is saved, if anywhere.
    path: Option<PathBuf>,
}

impl std::fmt::Debug for PeerBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.state);
        write!(
            f,
            "PeerBook({:?}, {} sessions, {} own records)",
            state.addrman,
            state.links.len(),
            state.own.len()
        )
    }
}

/// What a session's peer told us, for the log and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub addresses: usize,
    pub records: usize,
    pub refused: usize,
    pub over_rate: usize,
}

impl PeerBook {
    pub fn new(own_id: NodeId, addrman: AddrMan, allow_private: bool) -> PeerBook {
        PeerBook {
            state: Mutex::new(BookState {
                addrman,
                links: HashMap::new(),
                next_link: 0,
                own: HashMap::new(),
                given_to_connector: HandoffWindow::default(),
                given_to_peer: HandoffWindow::default(),
                given: HandoffWindow::default(),
                handoffs_given: 0,
                handoffs_taken: 0,
                handoffs: None,
            }),
            own_id,
            allow_private,
            handoff_limits: HandoffLimits::default(),
            path: None,
        }
    }

    /// A book saved at `path` (see [`PeerBook::save`]), loaded from there.
    pub fn load(own_id: NodeId, path: PathBuf, allow_private: bool) -> anyhow::Result<PeerBook> {
        let addrman = AddrMan::load(&path, unix_now()).map_err(|e| {
            anyhow::anyhow!(
                "{} cannot be read ({e}); remove it to start with no addresses",
                path.display()
            )
        })?;
        let mut book = PeerBook::new(own_id, addrman, allow_private);
        book.path = Some(path);
        Ok(book)
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        lock(&self.state).addrman.save(path)
    }

    /// Runs `f` on the address manager.
    pub fn with_addrman<T>(&self, f: impl FnOnce(&mut AddrMan) -> T) -> T {
        f(&mut lock(&self.state).addrman)
    }

    /// An address the user gave (`--seed`): as if a peer of our own told
    /// us.
    pub fn seed(&self, addr: SocketAddr) -> Added {
        let mut state = lock(&self.state);
        state
            .addrman
            .add(PeerAddr::Direct(addr), Netgroup::Local, unix_now())
    }

    /// The node is reachable via `coordinator` at `at` (or, with `None`,
    /// no longer): its record is signed afresh and sent to every peer that
    /// relays records.
    pub fn advertise(
        &self,
        key: &crate::identity::NodeKey,
        coordinator: NodeId,
        at: Option<SocketAddr>,
    ) {
        let mut state = lock(&self.state);
        let Some(at) = at else {
            state.own.remove(&coordinator);
            return;
        };
        let record = ReachRecord::sign(key, coordinator, at, unix_now());
        state.own.insert(coordinator, record.clone());
        let peers = state.links.values().filter(|l| l.relays_records).count();
        tracing::info!(via = %at, peers, "telling peers we are reachable via a coordinator");
        let message = NativeMessage::Reach {
            records: vec![record],
        }
        .to_network();
        for link in state.links.values().filter(|l| l.relays_records) {
            let _ = link.queue.try_send(message.clone());
        }
    }

    /// Signs every own record again (they expire), and sends them.
    pub fn refresh(&self, key: &crate::identity::NodeKey) {
        let own: Vec<(NodeId, SocketAddr)> = lock(&self.state)
            .own
            .values()
            .map(|r| (r.coordinator, r.coordinator_at))
            .collect();
        for (coordinator, at) in own {
            self.advertise(key, coordinator, Some(at));
        }
    }

    pub fn own_records(&self) -> Vec<ReachRecord> {
        lock(&self.state).own.values().cloned().collect()
    }

    fn join(&self, link: PeerLink) -> u64 {
        let mut state = lock(&self.state);
        let id = state.next_link;
        state.next_link = state.next_link.wrapping_add(1);
        state.links.insert(id, link);
        id
    }

    /// Sessions served that peers opened to us.
    pub fn inbound_sessions(&self) -> usize {
        lock(&self.state)
            .links
            .values()
            .filter(|l| l.inbound)
            .count()
    }

    /// What `bitpunch status` shows of the book.
    pub fn status(&self) -> BookStatus {
        let mut state = lock(&self.state);
        state.addrman.expire(unix_now());
        BookStatus {
            new: state.addrman.count(false),
            tried: state.addrman.count(true),
            reachable_via: state.own.values().map(|r| r.coordinator_at).collect(),
            inbound_sessions: state.links.values().filter(|l| l.inbound).count(),
            via_coordinators: state.addrman.entries().fold(
                std::collections::BTreeMap::new(),
                |mut counts, e| {
                    if let PeerAddr::Via(r) = &e.addr {
                        let c = counts.entry(r.coordinator_at.to_string()).or_insert(0usize);
                        *c = c.saturating_add(1);
                    }
                    counts
                },
            ),
            handoffs_given: state.handoffs_given,
            handoffs_received: state.handoffs_taken,
        }
    }

    /// Handoffs received from now on go to the returned receiver (the
    /// outbound manager's).
    pub fn take_handoffs(&self) -> mpsc::Receiver<HandedOff> {
        let (tx, rx) = mpsc::channel(16);
        lock(&self.state).handoffs = Some(tx);
        rx
    }

    /// The inbound peer a newcomer from `connector` is handed to, if one
    /// takes handoffs and the limits allow: the one handed the fewest this
    /// minute. Counted as given.
    pub fn handoff_target(&self, connector: std::net::IpAddr) -> Option<ReachRecord> {
        let now = std::time::Instant::now();
        let unix = unix_now();
        let limits = self.handoff_limits;
        let mut state = lock(&self.state);
        state.given_to_connector.expire(now);
        state.given_to_peer.expire(now);
        state.given.expire(now);
        if state.given.count(&()) >= limits.total as usize
            || state.given_to_connector.count(&connector) >= limits.per_connector as usize
        {
            return None;
        }
        let candidates: Vec<(NodeId, ReachRecord)> = state
            .links
            .values()
            .filter(|l| l.inbound && l.takes_handoffs)
            .filter_map(|l| l.record.clone())
            .filter_map(|r| Some((r.verify(unix, self.allow_private).ok()?, r)))
            .filter(|(node, _)| state.given_to_peer.count(node) < limits.per_peer as usize)
            .collect();
        let (node, record) = candidates
            .into_iter()
            .min_by_key(|(node, _)| (state.given_to_peer.count(node), rand::random::<u16>()))?;
        state.given_to_connector.add(connector, now);
        state.given_to_peer.add(node, now);
        state.given.add((), now);
        state.handoffs_given = state.handoffs_given.saturating_add(1);
        Some(record)
    }

    fn note_record_of(&self, link: u64, record: &ReachRecord) {
        if let Some(l) = lock(&self.state).links.get_mut(&link) {
            if l.record.is_none() {
                l.record = Some(record.clone());
            }
        }
    }

    fn handed_off(&self, from: SocketAddr, record: ReachRecord) {
        let mut state = lock(&self.state);
        state.handoffs_taken = state.handoffs_taken.saturating_add(1);
        if let Some(tx) = &state.handoffs {
            let _ = tx.try_send(HandedOff { from, record });
        }
    }

    fn leave(&self, id: u64) {
        lock(&self.state).links.remove(&id);
    }

    /// The answer to a `getaddr`: direct addresses in one `addr`, records
    /// (ours first) in `hpreach` messages when the peer relays them.
    fn getaddr_answer(&self, relays_records: bool) -> Vec<NetworkMessage> {
        let now = unix_now();
        let mut rng = rand::thread_rng();
        let state = lock(&self.state);
        let share = (state.addrman.len().saturating_mul(GETADDR_PERCENT) / 100).max(1);
        let wanted = share.min(GETADDR_MAX).saturating_add(GETADDR_MAX_RECORDS);
        let sample = state.addrman.sample(now, wanted, &mut rng);
        let mut direct = Vec::new();
        let mut records: Vec<ReachRecord> = state.own.values().cloned().collect();
        for addr in sample {
            match addr {
                PeerAddr::Direct(a) if direct.len() < GETADDR_MAX => direct.push((
                    now.min(u64::from(u32::MAX)) as u32,
                    Address::new(&a, ServiceFlags::NETWORK),
                )),
                PeerAddr::Via(r) if records.len() < GETADDR_MAX_RECORDS => records.push(r),
                _ => {}
            }
        }
        let mut out = Vec::new();
        if !direct.is_empty() {
            out.push(NetworkMessage::Addr(direct));
        }
        if relays_records {
            for chunk in records.chunks(MAX_REACH_RECORDS) {
                out.push(
                    NativeMessage::Reach {
                        records: chunk.to_vec(),
                    }
                    .to_network(),
                );
            }
        }
        out
    }

    /// Takes one record a peer in `source` sent: verified, stored, and
    /// when new to us passed on to [`RELAY_FANOUT`] other peers.
    fn take_record(
        &self,
        record: ReachRecord,
        source: Netgroup,
        from_link: u64,
    ) -> Result<(), String> {
        let now = unix_now();
        let node = record
            .verify(now, self.allow_private)
            .map_err(|e| e.to_string())?;
        if node == self.own_id {
            return Ok(());
        }
        let mut state = lock(&self.state);
        let key = AddrKey::Via {
            node,
            coordinator: record.coordinator,
        };
        let before = state.addrman.get(&key).map(|e| e.seen);
        let since = record.since;
        let added = state
            .addrman
            .add(PeerAddr::Via(record.clone()), source, now);
        let news =
            added == Added::New || (added == Added::Refreshed && before.is_some_and(|b| b < since));
        if news {
            let mut targets: Vec<&PeerLink> = state
                .links
                .iter()
                .filter(|(id, l)| **id != from_link && l.relays_records)
                .map(|(_, l)| l)
                .collect();
            targets.shuffle(&mut rand::thread_rng());
            let message = NativeMessage::Reach {
                records: vec![record],
            }
            .to_network();
            for link in targets.into_iter().take(RELAY_FANOUT) {
                let _ = link.queue.try_send(message.clone());
            }
        }
        Ok(())
    }

    fn take_direct(&self, addr: SocketAddr, source: Netgroup) -> bool {
        let routable = crate::net::routable::routable_target(addr).is_ok();
        let lab_address = self.allow_private && addr.port() != 0 && !addr.ip().is_unspecified();
        if !(routable || lab_address) {
            return false;
        }
        lock(&self.state)
            .addrman
            .add(PeerAddr::Direct(addr), source, unix_now());
        true
    }
}

/// Serves `session` with the node's address book until the peer leaves,
/// is silent for `idle`, or breaks the rules. Returns why it ended.
pub async fn serve<S>(
    session: Session<S>,
    book: Arc<PeerBook>,
    path: SessionPath,
    idle: Duration,
) -> SessionError
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer, report) = session.into_parts();
    let remote = report.remote;
    let source = Netgroup::of_ip(remote.ip());
    let relays_records = report.peer.services & NODE_PUNCH_REACH_BIT != 0;
    let asked_for_it = report.role == SessionRole::Initiator;
    let (queue, mut outgoing) = mpsc::channel::<NetworkMessage>(PEER_QUEUE);
    let link = book.join(PeerLink {
        queue: queue.clone(),
        relays_records,
        inbound: path == SessionPath::Inbound,
        takes_handoffs: report.peer.services & NODE_PUNCH_HANDOFF_BIT != 0,
        record: None,
    });
    let write = tokio::spawn(async move {
        while let Some(msg) = outgoing.recv().await {
            if let Err(e) = writer.send(&msg).await {
                return e;
            }
        }
        WireError::PeerClosed
    });
    let start = Instant::now();
    let mut addr_tokens = TokenBucket::new(ADDR_PER_SECOND, 1_000.0, 1.0, start);
    let mut record_tokens = TokenBucket::new(RECORDS_PER_SECOND, RECORD_BURST, RECORD_BURST, start);
    if asked_for_it {
        let _ = queue.try_send(NetworkMessage::GetAddr);
        addr_tokens.grant(GETADDR_ALLOWANCE);
        record_tokens.grant(GETADDR_ALLOWANCE);
    }
    if relays_records {
        for chunk in book.own_records().chunks(MAX_REACH_RECORDS) {
            let _ = queue.try_send(
                NativeMessage::Reach {
                    records: chunk.to_vec(),
                }
                .to_network(),
            );
        }
    }
    let mut answered_getaddr = false;
    let mut handed_off = false;
    let mut heard = Heard::default();
    let ended = loop {
        let next = tokio::time::timeout(idle, reader.recv()).await;
        let msg = match next {
            Err(_) => break SessionError::new(Stage::Serving, WireError::Timeout(idle)),
            Ok(Err(e)) => break SessionError::new(Stage::Serving, e),
            Ok(Ok(None)) => continue,
            Ok(Ok(Some(msg))) => msg,
        };
        let now = Instant::now();
        match msg {
            NetworkMessage::Ping(nonce) => {
                if queue.send(NetworkMessage::Pong(nonce)).await.is_err() {
                    break SessionError::new(Stage::Serving, WireError::PeerClosed);
                }
            }
            // Only who connected to us learns our table, once (Core's
            // rule: an outbound peer asking is fingerprinting).
            NetworkMessage::GetAddr if !asked_for_it && !answered_getaddr => {
                answered_getaddr = true;
                for answer in book.getaddr_answer(relays_records) {
                    let _ = queue.try_send(answer);
                }
            }
            NetworkMessage::Addr(list) => {
                for (_, addr) in list {
                    take_address(
                        &book,
                        &mut addr_tokens,
                        now,
                        addr.socket_addr().ok(),
                        source,
                        &mut heard,
                    );
                }
            }
            NetworkMessage::AddrV2(list) => {
                for entry in list {
                    let addr = match entry.addr {
                        AddrV2::Ipv4(ip) => Some(SocketAddr::new(ip.into(), entry.port)),
                        AddrV2::Ipv6(ip) => Some(SocketAddr::new(ip.into(), entry.port)),
                        _ => None,
                    };
                    take_address(&book, &mut addr_tokens, now, addr, source, &mut heard);
                }
            }
            other => match NativeMessage::from_network(&other) {
                Ok(Some(NativeMessage::Reach { records })) => {
                    for record in records {
                        if !record_tokens.take(now) {
                            heard.over_rate = heard.over_rate.saturating_add(1);
                            continue;
                        }
                        match book.take_record(record.clone(), source, link) {
                            Ok(()) => {
                                book.note_record_of(link, &record);
                                heard.records = heard.records.saturating_add(1)
                            }
                            Err(why) => {
                                heard.refused = heard.refused.saturating_add(1);
                                tracing::debug!(%remote, %why, "reachability record refused");
                            }
                        }
                    }
                }
                // Only a node we connected to may send us on, once.
                Ok(Some(NativeMessage::Handoff { record })) if asked_for_it && !handed_off => {
                    handed_off = true;
                    match record.verify(unix_now(), book.allow_private) {
                        Ok(node) => {
                            tracing::info!(%remote, to = %node, via = %record.coordinator_at, "handed off");
                            book.handed_off(remote, record);
                        }
                        Err(why) => {
                            tracing::info!(%remote, %why, "handoff to a record that does not verify ignored")
                        }
                    }
                }
                // Coordination messages have no business on a peer session.
                Ok(Some(native)) => {
                    break SessionError::new(
                        Stage::Serving,
                        WireError::Protocol(format!("{} on a peer session", native.command())),
                    )
                }
                Err(e) => {
                    break SessionError::new(Stage::Serving, WireError::Protocol(e.to_string()))
                }
                Ok(None) => {}
            },
        }
        if write.is_finished() {
            break SessionError::new(Stage::Serving, WireError::PeerClosed);
        }
    };
    book.leave(link);
    write.abort();
    tracing::debug!(%remote, ?heard, "address relay of the session");
    ended
}

/// A newcomer that found the node's inbound slots full: handed to an
/// inbound peer that takes handoffs (when it understands `hphandoff` and
/// the limits allow), then closed either way. Returns the reason logged.
pub async fn hand_off_or_close<S>(mut session: Session<S>, book: &PeerBook) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let remote = session.report.remote;
    let understands = session.report.peer.services & NODE_PUNCH_REACH_BIT != 0;
    let target = if understands {
        book.handoff_target(remote.ip())
    } else {
        None
    };
    let Some(record) = target else {
        return "inbound slots full, nobody to hand off to".into();
    };
    let to = record.address().unwrap_or_default();
    let sent = session
        .send_message(&NativeMessage::Handoff { record }.to_network())
        .await;
    match sent {
        // What the peer sends meanwhile is read and dropped for a second,
        // so that our close is a FIN behind the message, not an RST that
        // could overtake it; we close first, so the TIME_WAIT is ours and
        // the peer's shared port may come back to us at once.
        Ok(()) => {
            let until = Instant::now().later(HANDOFF_LINGER);
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                if session.recv_message(left).await.is_err() {
                    break;
                }
            }
            format!("inbound slots full, handed off to {to}")
        }
        Err(e) => format!("inbound slots full; the handoff could not be sent: {e}"),
    }
}

fn take_address(
    book: &PeerBook,
    tokens: &mut TokenBucket,
    now: Instant,
    addr: Option<SocketAddr>,
    source: Netgroup,
    heard: &mut Heard,
) {
    let Some(addr) = addr else {
        heard.refused = heard.refused.saturating_add(1);
        return;
    };
    if !tokens.take(now) {
        heard.over_rate = heard.over_rate.saturating_add(1);
        return;
    }
    if book.take_direct(addr, source) {
        heard.addresses = heard.addresses.saturating_add(1);
    } else {
        heard.refused = heard.refused.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_bucket_refills_at_its_rate_up_to_its_depth() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1.0, 3.0, 3.0, t0);
        assert!((0..3).all(|_| bucket.take(t0)));
        assert!(!bucket.take(t0));
        assert!(bucket.take(t0 + Duration::from_millis(1_000)));
        assert!(!bucket.take(t0 + Duration::from_millis(1_500)));
        let much_later = t0 + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| bucket.take(much_later)).count(), 3);
        bucket.grant(5.0);
        assert_eq!((0..10).filter(|_| bucket.take(much_later)).count(), 5);
    }
}
