//! The node's address manager: where it learns whom it could connect to,
//! and how it picks so that no one party can fill its outbound slots.
//!
//! A simplified Bitcoin Core addrman (src/addrman.cpp): a *new* table of
//! addresses heard of and a *tried* table of addresses connected to, each a
//! fixed grid of buckets × slots, an address's bucket a keyed hash of its
//! netgroup (and, in *new*, of the netgroup of whoever told us). What one
//! source says about one netgroup lands in one bucket of 32 slots, so a
//! flood of addresses from one peer or about one network displaces little.
//!
//! It holds two kinds of addresses: direct ones (`HOST:PORT`) and nodes
//! reachable via a coordinator ([`ReachRecord`]). The latter expire with
//! their record and are never stored past it. An address reachable via
//! coordinator C is in C's netgroup: C could mint any number of such nodes,
//! so for choosing peers they all count as one party, the same one as C's
//! own network (docs/native-protocol.md, "Address groups").
//!
//! Sans-I/O: every call takes the time; saving and loading are the only
//! file operations, and they are whole-file.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use bitcoin::hashes::{sha256, Hash, HashEngine};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::native::messages::NativeMessage;
use crate::native::reach::ReachRecord;
use crate::net::admission::{unmapped, NetGroup};

pub const NEW_BUCKETS: usize = 256;
pub const TRIED_BUCKETS: usize = 64;
pub const BUCKET_SIZE: usize = 32;
/// One source netgroup's addresses spread over at most this many *new*
/// buckets (Core: 64 of 1,024).
const NEW_BUCKETS_PER_SOURCE: u64 = 16;
/// One netgroup's tried addresses spread over at most this many *tried*
/// buckets (Core: 8 of 256).
const TRIED_BUCKETS_PER_GROUP: u64 = 4;
/// A direct address not heard of again for this long is dropped when it
/// meets a newcomer in its slot (Core: 30 days).
const DIRECT_HORIZON_SECS: u64 = 30 * 24 * 60 * 60;
/// Failed attempts without a success after which an address is terrible.
const MAX_FAILURES: u32 = 3;
/// An address tried this recently is picked rarely (Core: 10 minutes).
const RECENT_TRY_SECS: u64 = 10 * 60;

/// Who an address belongs to, for spreading outbound connections: no two
/// outbound sessions in one group. The groups are those the node's
/// admission control counts inbound connections in (IPv4 /16, IPv6 /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Netgroup {
    Net(NetGroup),
    /// Loopback, private and other addresses not on the internet: one
    /// group, as in Core.
    Local,
}

impl Netgroup {
    pub fn of_ip(ip: IpAddr) -> Netgroup {
        if crate::net::routable::is_routable(unmapped(ip)) {
            Netgroup::Net(NetGroup::of(ip))
        } else {
            Netgroup::Local
        }
    }

    /// An IPv4 /16, by its first two octets.
    pub fn ipv4(first: [u8; 2]) -> Netgroup {
        Netgroup::Net(NetGroup::V4(first))
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Netgroup::Net(NetGroup::V4(b)) => [&[4u8][..], b].concat(),
            Netgroup::Net(NetGroup::V6(b)) => [&[6u8][..], b].concat(),
            Netgroup::Local => vec![0],
        }
    }
}

impl std::fmt::Display for Netgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Netgroup::Net(group) => group.fmt(f),
            Netgroup::Local => write!(f, "local"),
        }
    }
}

/// An address the manager holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    Direct(SocketAddr),
    /// A node reachable via a coordinator, as its signed record says.
    Via(ReachRecord),
}

/// What identifies an address in the tables: a node reachable via two
/// coordinators is two addresses; a newer record of the same pair
/// replaces the older.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrKey {
    Direct(SocketAddr),
    Via { node: NodeId, coordinator: NodeId },
}

impl PeerAddr {
    pub fn key(&self) -> Option<AddrKey> {
        match self {
            PeerAddr::Direct(a) => Some(AddrKey::Direct(*a)),
            PeerAddr::Via(r) => Some(AddrKey::Via {
                node: r.node().ok()?,
                coordinator: r.coordinator,
            }),
        }
    }

    /// A via address is in its coordinator's group.
    pub fn netgroup(&self) -> Netgroup {
        match self {
            PeerAddr::Direct(a) => Netgroup::of_ip(a.ip()),
            PeerAddr::Via(r) => Netgroup::of_ip(r.coordinator_at.ip()),
        }
    }

    /// Unix seconds after which the address is dead, if it dies.
    pub fn expires(&self) -> Option<u64> {
        match self {
            PeerAddr::Direct(_) => None,
            PeerAddr::Via(r) => Some(r.expires()),
        }
    }

    /// As a user types it: `HOST:PORT` or `NODE_ID@COORDINATOR_ID@HOST:PORT`.
    pub fn to_address_string(&self) -> String {
        match self {
            PeerAddr::Direct(a) => a.to_string(),
            PeerAddr::Via(r) => r
                .address()
                .unwrap_or_else(|_| format!("?@{}@{}", r.coordinator, r.coordinator_at)),
        }
    }
}

impl AddrKey {
    fn bytes(&self) -> Vec<u8> {
        match self {
            AddrKey::Direct(a) => {
                let mut b = vec![0u8];
                match unmapped(a.ip()) {
                    IpAddr::V4(v4) => b.extend_from_slice(&v4.octets()),
                    IpAddr::V6(v6) => b.extend_from_slice(&v6.octets()),
                }
                b.extend_from_slice(&a.port().to_be_bytes());
                b
            }
            AddrKey::Via { node, coordinator } => [&[1u8][..], &node.0, &coordinator.0].concat(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub addr: PeerAddr,
    /// The netgroup of whoever told us (for the *new* bucket).
    pub source: Netgroup,
    /// Unix seconds: last heard of (direct), or the record's time (via).
    pub seen: u64,
    pub last_try: Option<u64>,
    pub last_success: Option<u64>,
    /// Failed attempts since the last success.
    pub failures: u32,
    pub tried: bool,
}

impl Entry {
    /// Not worth a slot: dead, or failed repeatedly, or not heard of for
    /// a month.
    fn is_terrible(&self, now: u64) -> bool {
        if self.addr.expires().is_some_and(|e| now > e) {
            return true;
        }
        if self.last_success.is_none() && self.failures >= MAX_FAILURES {
            return true;
        }
        matches!(self.addr, PeerAddr::Direct(_))
            && now.saturating_sub(self.seen) > DIRECT_HORIZON_SECS
    }

    /// The relative chance of being picked (Core's `GetChance`): lower
    /// after failures and right after a try.
    fn chance(&self, now: u64) -> f64 {
        let mut chance = 0.66f64.powi(i32::try_from(self.failures.min(8)).unwrap_or(8));
        if self
            .last_try
            .is_some_and(|t| now.saturating_sub(t) < RECENT_TRY_SECS)
        {
            chance *= 0.01;
        }
        chance
    }
}

/// What became of an address offered to [`AddrMan::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    New,
    /// Known already; its time (and for a via address its record) updated.
    Refreshed,
    /// Its slot holds a good address: dropped.
    NoRoom,
    /// Dead already.
    Expired,
}

pub struct AddrMan {
    key: [u8; 32],
    entries: HashMap<AddrKey, Entry>,
    /// `new[bucket][slot]` and `tried[bucket][slot]`.
    new: Vec<[Option<AddrKey>; BUCKET_SIZE]>,
    tried: Vec<[Option<AddrKey>; BUCKET_SIZE]>,
}

impl std::fmt::Debug for AddrMan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AddrMan({} new, {} tried)",
            self.count(false),
            self.count(true)
        )
    }
}

impl AddrMan {
    /// An empty manager with a fresh secret bucket key.
    pub fn new() -> AddrMan {
        AddrMan::with_key(rand::random())
    }

    pub fn with_key(key: [u8; 32]) -> AddrMan {
        AddrMan {
            key,
            entries: HashMap::new(),
            new: vec![[None; BUCKET_SIZE]; NEW_BUCKETS],
            tried: vec![[None; BUCKET_SIZE]; TRIED_BUCKETS],
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn count(&self, tried: bool) -> usize {
        self.entries.values().filter(|e| e.tried == tried).count()
    }

    pub fn get(&self, key: &AddrKey) -> Option<&Entry> {
        self.entries.get(key)
    }

    fn hash(&self, parts: &[&[u8]]) -> u64 {
        let mut engine = sha256::Hash::engine();
        engine.input(&self.key);
        for part in parts {
            engine.input(&(part.len() as u64).to_le_bytes());
            engine.input(part);
        }
        let digest = sha256::Hash::from_engine(engine).to_byte_array();
        let mut first = [0u8; 8];
        first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
        u64::from_le_bytes(first)
    }

    fn new_position(&self, key: &AddrKey, group: Netgroup, source: Netgroup) -> (usize, usize) {
        let per_source = self.hash(&[b"new", &group.bytes(), &source.bytes()]);
        let per_source = (per_source % NEW_BUCKETS_PER_SOURCE).to_le_bytes();
        let bucket = below(
            self.hash(&[b"new", &source.bytes(), &per_source]),
            NEW_BUCKETS,
        );
        let slot = below(
            self.hash(&[b"slot", &bucket.to_le_bytes(), &key.bytes()]),
            BUCKET_SIZE,
        );
        (bucket, slot)
    }

    fn tried_position(&self, key: &AddrKey, group: Netgroup) -> (usize, usize) {
        let per_group = self.hash(&[b"tried", &key.bytes()]);
        let per_group = (per_group % TRIED_BUCKETS_PER_GROUP).to_le_bytes();
        let bucket = below(
            self.hash(&[b"tried", &group.bytes(), &per_group]),
            TRIED_BUCKETS,
        );
        let slot = below(
            self.hash(&[b"tslot", &bucket.to_le_bytes(), &key.bytes()]),
            BUCKET_SIZE,
        );
        (bucket, slot)
    }

    fn slot(
        &mut self,
        tried: bool,
        (bucket, slot): (usize, usize),
    ) -> Option<&mut Option<AddrKey>> {
        let table = if tried {
            &mut self.tried
        } else {
            &mut self.new
        };
        table.get_mut(bucket)?.get_mut(slot)
    }

    /// Offers an address heard from a peer in `source` at `now`. A via
    /// address must have been verified by the caller.
    pub fn add(&mut self, addr: PeerAddr, source: Netgroup, now: u64) -> Added {
        let Some(key) = addr.key() else {
            return Added::Expired;
        };
        if addr.expires().is_some_and(|e| now > e) {
            return Added::Expired;
        }
        let seen = match &addr {
            PeerAddr::Via(r) => r.since,
            PeerAddr::Direct(_) => now,
        };
        if let Some(known) = self.entries.get_mut(&key) {
            // A via address keeps the newest record of its pair.
            if seen > known.seen {
                known.seen = seen;
                known.addr = addr;
            }
            return Added::Refreshed;
        }
        let position = self.new_position(&key, addr.netgroup(), source);
        let occupant = self.slot(false, position).and_then(|s| *s);
        if let Some(occupant) = occupant {
            let keep = self
                .entries
                .get(&occupant)
                .is_some_and(|e| !e.is_terrible(now));
            if keep {
                return Added::NoRoom;
            }
            self.entries.remove(&occupant);
        }
        if let Some(slot) = self.slot(false, position) {
            *slot = Some(key);
        }
        self.entries.insert(
            key,
            Entry {
                addr,
                source,
                seen,
                last_try: None,
                last_success: None,
                failures: 0,
                tried: false,
            },
        );
        Added::New
    }

    /// A connection to `key` is being attempted.
    pub fn attempt(&mut self, key: &AddrKey, now: u64) {
        if let Some(e) = self.entries.get_mut(key) {
            e.last_try = Some(now);
        }
    }

    /// The attempt failed.
    pub fn failed(&mut self, key: &AddrKey, now: u64) {
        if let Some(e) = self.entries.get_mut(key) {
            e.last_try = Some(now);
            e.failures = e.failures.saturating_add(1);
        }
    }

    /// A session with `key` was made: it moves to *tried*. The tried
    /// address it meets in its slot goes back to *new* (Core tests it
    /// first; we keep it simple).
    pub fn good(&mut self, key: &AddrKey, now: u64) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.last_success = Some(now);
        entry.last_try = Some(now);
        entry.failures = 0;
        if entry.tried {
            return;
        }
        let group = entry.addr.netgroup();
        let source = entry.source;
        let new_position = self.new_position(key, group, source);
        if let Some(slot) = self.slot(false, new_position) {
            if *slot == Some(*key) {
                *slot = None;
            }
        }
        let position = self.tried_position(key, group);
        let evicted = self.slot(true, position).and_then(|s| s.replace(*key));
        if let Some(e) = self.entries.get_mut(key) {
            e.tried = true;
        }
        if let Some(evicted) = evicted {
            self.demote(evicted);
        }
    }

    fn demote(&mut self, key: AddrKey) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        entry.tried = false;
        let group = entry.addr.netgroup();
        let source = entry.source;
        let position = self.new_position(&key, group, source);
        let occupant = self.slot(false, position).and_then(|s| s.replace(key));
        if let Some(occupant) = occupant.filter(|o| *o != key) {
            self.entries.remove(&occupant);
        }
    }

    /// Forgets every dead address; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let dead: Vec<AddrKey> = self
            .entries
            .iter()
            .filter(|(_, e)| e.addr.expires().is_some_and(|x| now > x))
            .map(|(k, _)| *k)
            .collect();
        for key in &dead {
            self.remove(key);
        }
        dead.len()
    }

    fn remove(&mut self, key: &AddrKey) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        let group = entry.addr.netgroup();
        let position = if entry.tried {
            self.tried_position(key, group)
        } else {
            self.new_position(key, group, entry.source)
        };
        if let Some(slot) = self.slot(entry.tried, position) {
            if *slot == Some(*key) {
                *slot = None;
            }
        }
    }

    /// Picks an address to connect to: from *tried* or *new* with even
    /// odds (either, when one is empty), weighted by [`Entry::chance`],
    /// skipping dead ones and those `skip` refuses (groups already used,
    /// addresses already connected).
    pub fn select(
        &self,
        now: u64,
        rng: &mut impl Rng,
        skip: impl Fn(&Entry) -> bool,
    ) -> Option<&Entry> {
        let usable = |tried: bool| -> Vec<(&Entry, f64)> {
            self.entries
                .values()
                .filter(|e| e.tried == tried && !e.is_terrible(now) && !skip(e))
                .map(|e| (e, e.chance(now)))
                .collect()
        };
        let (tried, new) = (usable(true), usable(false));
        let pool = match (tried.is_empty(), new.is_empty()) {
            (true, true) => return None,
            (false, true) => tried,
            (true, false) => new,
            (false, false) => {
                if rng.gen_bool(0.5) {
                    tried
                } else {
                    new
                }
            }
        };
        let total: f64 = pool.iter().map(|(_, c)| c).sum();
        let mut pick = rng.gen_range(0.0..total.max(f64::MIN_POSITIVE));
        for (entry, chance) in &pool {
            if pick < *chance {
                return Some(entry);
            }
            pick -= chance;
        }
        pool.last().map(|(e, _)| *e)
    }

    /// Up to `max` live addresses at random, for a peer's `getaddr` or to
    /// relay.
    pub fn sample(&self, now: u64, max: usize, rng: &mut impl Rng) -> Vec<PeerAddr> {
        let live: Vec<&Entry> = self
            .entries
            .values()
            .filter(|e| !e.is_terrible(now))
            .collect();
        rand::seq::index::sample(rng, live.len(), max.min(live.len()))
            .into_iter()
            .filter_map(|i| live.get(i))
            .map(|e| e.addr.clone())
            .collect()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Panics when the tables and the entries disagree: every entry sits
    /// in exactly one slot, of the table its `tried` says, at the position
    /// its hash gives; every slot names an entry. For tests and fuzzing.
    #[allow(
        clippy::panic,
        reason = "an invariant check, called by tests and the fuzzer only"
    )]
    pub fn check_invariants(&self) {
        let mut placed = 0usize;
        for (tried, table) in [(false, &self.new), (true, &self.tried)] {
            for (bucket, slots) in table.iter().enumerate() {
                for (slot, key) in slots.iter().enumerate() {
                    let Some(key) = key else { continue };
                    let Some(entry) = self.entries.get(key) else {
                        panic!("slot ({bucket}, {slot}) names {key:?}, which has no entry");
                    };
                    if entry.tried != tried {
                        panic!("{key:?} is in the wrong table");
                    }
                    let group = entry.addr.netgroup();
                    let at = if tried {
                        self.tried_position(key, group)
                    } else {
                        self.new_position(key, group, entry.source)
                    };
                    if at != (bucket, slot) {
                        panic!("{key:?} at ({bucket}, {slot}), its place is {at:?}");
                    }
                    placed = placed.saturating_add(1);
                }
            }
        }
        if placed != self.entries.len() {
            panic!("{placed} placed, {} entries", self.entries.len());
        }
    }

    /// Where a node keeps its addresses: `<data dir>/peers.json`.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("peers.json")
    }

    /// Writes the whole manager to `path` (through a temporary file, so a
    /// crash leaves the old file or the new one).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let stored = Stored {
            key: hex::encode(self.key),
            entries: self.entries.values().map(StoredEntry::of).collect(),
        };
        let tmp = path.with_extension("json.new");
        std::fs::write(&tmp, serde_json::to_vec(&stored)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// The manager saved at `path`, without the addresses that died
    /// meanwhile; a fresh one when there is no file. A file that does not
    /// parse is an error (the caller says which file to remove).
    pub fn load(path: &Path, now: u64) -> anyhow::Result<AddrMan> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AddrMan::new()),
            Err(e) => return Err(e.into()),
        };
        let stored: Stored = serde_json::from_slice(&bytes)?;
        let key: [u8; 32] = hex::decode(&stored.key)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("the bucket key is not 32 bytes"))?;
        let mut man = AddrMan::with_key(key);
        // Tried ones first, so that they keep their places.
        let mut entries: Vec<Entry> = stored
            .entries
            .into_iter()
            .filter_map(StoredEntry::into_entry)
            .collect();
        entries.sort_by_key(|e| !e.tried);
        for entry in entries {
            let Some(key) = entry.addr.key() else {
                continue;
            };
            if man.add(entry.addr.clone(), entry.source, now) != Added::New {
                continue;
            }
            if let Some(e) = man.entries.get_mut(&key) {
                e.seen = entry.seen;
                e.last_try = entry.last_try;
                e.failures = entry.failures;
            }
            if entry.tried {
                man.good(&key, entry.last_success.unwrap_or(now));
            }
            if let Some(e) = man.entries.get_mut(&key) {
                e.last_success = entry.last_success;
                e.last_try = entry.last_try;
            }
        }
        Ok(man)
    }
}

impl Default for AddrMan {
    fn default() -> Self {
        AddrMan::new()
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    key: String,
    entries: Vec<StoredEntry>,
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    /// `HOST:PORT`, or a via address's record as `hpreach` carries it (hex).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    direct: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    record: Option<String>,
    source: String,
    seen: u64,
    last_try: Option<u64>,
    last_success: Option<u64>,
    failures: u32,
    tried: bool,
}

impl StoredEntry {
    fn of(e: &Entry) -> StoredEntry {
        let (direct, record) = match &e.addr {
            PeerAddr::Direct(a) => (Some(*a), None),
            PeerAddr::Via(r) => (
                None,
                Some(hex::encode(
                    NativeMessage::Reach {
                        records: vec![r.clone()],
                    }
                    .encode(),
                )),
            ),
        };
        StoredEntry {
            direct,
            record,
            source: source_text(e.source),
            seen: e.seen,
            last_try: e.last_try,
            last_success: e.last_success,
            failures: e.failures,
            tried: e.tried,
        }
    }

    fn into_entry(self) -> Option<Entry> {
        let addr = match (self.direct, self.record) {
            (Some(a), None) => PeerAddr::Direct(a),
            (None, Some(hex_record)) => {
                let bytes = hex::decode(hex_record).ok()?;
                match NativeMessage::decode("hpreach", &bytes).ok()? {
                    NativeMessage::Reach { records } => PeerAddr::Via(records.into_iter().next()?),
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some(Entry {
            addr,
            source: parse_source(&self.source)?,
            seen: self.seen,
            last_try: self.last_try,
            last_success: self.last_success,
            failures: self.failures,
            tried: self.tried,
        })
    }
}

/// `hash` reduced to `0..n` (`n` is a table dimension, never 0).
fn below(hash: u64, n: usize) -> usize {
    usize::try_from(hash.checked_rem(n as u64).unwrap_or(0)).unwrap_or(0)
}

fn source_text(group: Netgroup) -> String {
    hex::encode(group.bytes())
}

fn parse_source(text: &str) -> Option<Netgroup> {
    let bytes = hex::decode(text).ok()?;
    match bytes.as_slice() {
        [0] => Some(Netgroup::Local),
        [4, a, b] => Some(Netgroup::Net(NetGroup::V4([*a, *b]))),
        [6, a, b, c, d] => Some(Netgroup::Net(NetGroup::V6([*a, *b, *c, *d]))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;
    use crate::native::reach::REACH_LIFETIME_SECS;
    use rand::SeedableRng;

    const NOW: u64 = 1_800_000_000;

    fn via(seed: u32, coordinator_at: &str, since: u64) -> PeerAddr {
        let mut secret = [1u8; 32];
        secret[..4].copy_from_slice(&seed.to_le_bytes());
        let key = NodeKey::from_secret(&secret).unwrap();
        let coordinator = NodeKey::from_secret(&[2; 32]).unwrap().id();
        PeerAddr::Via(ReachRecord::sign(
            &key,
            coordinator,
            coordinator_at.parse().unwrap(),
            since,
        ))
    }

    fn direct(s: &str) -> PeerAddr {
        PeerAddr::Direct(s.parse().unwrap())
    }

    fn source() -> Netgroup {
        Netgroup::of_ip("198.51.100.1".parse().unwrap())
    }

    #[test]
    fn netgroups_are_slash_16_slash_32_and_a_coordinators_for_what_it_reaches() {
        assert_eq!(
            direct("203.0.113.5:8333").netgroup(),
            Netgroup::ipv4([203, 0])
        );
        assert_eq!(
            direct("[::ffff:203.0.113.5]:8333").netgroup(),
            Netgroup::ipv4([203, 0])
        );
        assert_eq!(
            direct("[2001:db8:1:2::5]:8333").netgroup(),
            Netgroup::Net(NetGroup::V6([0x20, 0x01, 0x0d, 0xb8]))
        );
        assert_eq!(direct("10.1.2.3:8333").netgroup(), Netgroup::Local);
        assert_eq!(direct("127.0.0.1:8333").netgroup(), Netgroup::Local);
        // Everything reachable via a coordinator is in the group of the
        // coordinator's own address, whoever the node is.
        assert_eq!(
            via(1, "192.0.2.7:8333", NOW).netgroup(),
            direct("192.0.99.1:8333").netgroup()
        );
        assert_eq!(Netgroup::ipv4([203, 0]).to_string(), "203.0.0.0/16");
    }

    #[test]
    fn a_flood_about_one_coordinator_from_one_source_fills_one_bucket() {
        let mut man = AddrMan::with_key([5; 32]);
        let mut added = 0;
        for seed in 0..1_000 {
            if man.add(via(seed, "192.0.2.7:8333", NOW), source(), NOW) == Added::New {
                added += 1;
            }
        }
        assert!(added <= BUCKET_SIZE, "{added} of 1000 fake records kept");
        man.check_invariants();
        assert!(added > BUCKET_SIZE / 2, "{added}");
        // Honest addresses elsewhere still find room.
        assert_eq!(
            man.add(direct("203.0.113.9:8333"), source(), NOW),
            Added::New
        );
        assert_eq!(
            man.add(via(5_000, "198.51.100.9:8333", NOW), source(), NOW),
            Added::New
        );
    }

    #[test]
    fn via_addresses_die_with_their_record_and_a_newer_record_refreshes() {
        let mut man = AddrMan::with_key([5; 32]);
        let old = via(1, "192.0.2.7:8333", NOW);
        assert_eq!(man.add(old.clone(), source(), NOW), Added::New);
        let key = old.key().unwrap();
        let newer = via(1, "192.0.2.7:8333", NOW + 600);
        assert_eq!(
            man.add(newer.clone(), source(), NOW + 600),
            Added::Refreshed
        );
        assert_eq!(man.get(&key).unwrap().addr, newer);
        assert_eq!(man.add(old, source(), NOW + 600), Added::Refreshed);
        assert_eq!(
            man.get(&key).unwrap().addr,
            newer,
            "an older record never wins"
        );
        let dead = NOW + 600 + REACH_LIFETIME_SECS + 1;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(man.select(dead, &mut rng, |_| false).is_none());
        assert_eq!(
            man.add(via(2, "192.0.2.7:8333", NOW), source(), dead),
            Added::Expired
        );
        assert_eq!(man.expire(dead), 1);
        assert!(man.is_empty());
    }

    #[test]
    fn a_good_address_moves_to_tried_and_select_honours_the_skip() {
        let mut man = AddrMan::with_key([5; 32]);
        let a = direct("203.0.113.9:8333");
        let b = via(1, "192.0.2.7:8333", NOW);
        man.add(a.clone(), source(), NOW);
        man.add(b.clone(), source(), NOW);
        man.good(&a.key().unwrap(), NOW);
        assert_eq!((man.count(true), man.count(false)), (1, 1));
        man.check_invariants();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let used = a.netgroup();
        for _ in 0..50 {
            let picked = man.select(NOW + 1, &mut rng, |e| e.addr.netgroup() == used);
            assert_eq!(picked.unwrap().addr, b);
        }
        let mut seen_tried = false;
        let mut seen_new = false;
        for _ in 0..100 {
            let picked = man.select(NOW + 1, &mut rng, |_| false).unwrap();
            seen_tried |= picked.tried;
            seen_new |= !picked.tried;
        }
        assert!(seen_tried && seen_new);
    }

    #[test]
    fn an_address_that_keeps_failing_gives_its_slot_away() {
        let mut man = AddrMan::with_key([5; 32]);
        let a = direct("203.0.113.9:8333");
        man.add(a.clone(), source(), NOW);
        let key = a.key().unwrap();
        for _ in 0..MAX_FAILURES {
            man.failed(&key, NOW);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert!(man.select(NOW, &mut rng, |_| false).is_none());
    }

    #[test]
    fn saved_and_loaded_it_keeps_its_addresses_but_not_the_dead() {
        let dir = std::env::temp_dir().join(format!("bitpunch-addrman-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = AddrMan::path_in(&dir);
        let mut man = AddrMan::with_key([6; 32]);
        let a = direct("203.0.113.9:8333");
        let b = via(1, "192.0.2.7:8333", NOW);
        let c = via(2, "198.51.100.7:8333", NOW - REACH_LIFETIME_SECS + 60);
        for addr in [&a, &b, &c] {
            assert_eq!(man.add(addr.clone(), source(), NOW), Added::New);
        }
        man.good(&b.key().unwrap(), NOW);
        man.save(&path).unwrap();
        let later = NOW + 120;
        let loaded = AddrMan::load(&path, later).unwrap();
        assert_eq!(loaded.len(), 2, "c died meanwhile");
        assert!(!loaded.get(&a.key().unwrap()).unwrap().tried);
        let b_entry = loaded.get(&b.key().unwrap()).unwrap();
        assert!(b_entry.tried);
        assert_eq!(b_entry.addr, b);
        assert_eq!(b_entry.last_success, Some(NOW));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(AddrMan::load(&path, later).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(AddrMan::load(&path, later).unwrap().is_empty());
    }
}
