//! Admission control for inbound connections: caps in total, per IP and per
//! netgroup, and eviction when full, so that a flood of connections from
//! one network costs that network its own connections and nobody else's.
//!
//! Netgroups are Bitcoin Core's: an IPv4 /16, an IPv6 /32 (IPv4-mapped IPv6
//! addresses count as the IPv4 address they carry). When every slot is
//! taken, the youngest connection of the netgroup holding the most
//! connections is evicted to make room, as Core's `AttemptToEvictConnection`
//! does in its last step; an attacker who spreads over many netgroups still
//! evicts mostly its own connections, because it holds most of them.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Context;
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;

/// The group an address counts in for connection caps and eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NetGroup {
    /// The first two octets.
    V4([u8; 2]),
    /// The first four bytes.
    V6([u8; 4]),
}

impl NetGroup {
    pub fn of(ip: IpAddr) -> NetGroup {
        match unmapped(ip) {
            IpAddr::V4(v4) => {
                let [a, b, _, _] = v4.octets();
                NetGroup::V4([a, b])
            }
            IpAddr::V6(v6) => {
                let [a, b, c, d, ..] = v6.octets();
                NetGroup::V6([a, b, c, d])
            }
        }
    }
}

impl std::fmt::Display for NetGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetGroup::V4([a, b]) => write!(f, "{a}.{b}.0.0/16"),
            NetGroup::V6([a, b, c, d]) => {
                write!(
                    f,
                    "{:x}:{:x}::/32",
                    u16::from_be_bytes([*a, *b]),
                    u16::from_be_bytes([*c, *d])
                )
            }
        }
    }
}

/// The IPv4 address inside an IPv4-mapped IPv6 address, else `ip`.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AdmissionConfig {
    /// Inbound connections in all (being classified, setting up, or in a
    /// session).
    pub max_inbound: usize,
    pub max_per_ip: usize,
    pub max_per_netgroup: usize,
}

impl AdmissionConfig {
    /// A node: Bitcoin Core serves 125 connections by default; a node that
    /// is also reached by punches gets a little more room.
    pub const NODE: AdmissionConfig = AdmissionConfig {
        max_inbound: 512,
        max_per_ip: 8,
        max_per_netgroup: 32,
    };
    /// A relay: per address and netgroup only (libp2p's connection limits
    /// count the total); a relay's reservations are per peer id, and
    /// several peers may share a NAT.
    pub const RELAY: AdmissionConfig = AdmissionConfig {
        max_inbound: usize::MAX,
        max_per_ip: 16,
        max_per_netgroup: 128,
    };
    /// A coordinator holds one idle session per registered node.
    pub const COORDINATOR: AdmissionConfig = AdmissionConfig {
        max_inbound: 100_000,
        max_per_ip: 16,
        max_per_netgroup: 256,
    };
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    PerIp { ip: IpAddr, limit: usize },
    PerNetgroup { group: NetGroup, limit: usize },
    Full { limit: usize },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PerIp { ip, limit } => write!(
                f,
                "{ip} already has {limit} connections (--max-inbound-per-ip)"
            ),
            Refusal::PerNetgroup { group, limit } => {
                write!(
                    f,
                    "{group} already has {limit} connections (--max-inbound-per-netgroup)"
                )
            }
            Refusal::Full { limit } => write!(
                f,
                "all {limit} inbound slots are taken and none can be evicted (--max-inbound)"
            ),
        }
    }
}

/// The error an evicted connection's stream fails with.
#[derive(Debug, thiserror::Error)]
#[error("evicted to make room for a connection from a less crowded netgroup")]
pub struct Evicted;

impl Evicted {
    /// Whether `e` is an eviction (logged quietly: admission already
    /// counted it, and a flood would otherwise write a line per connection).
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<Evicted>())
    }
}

/// Set when a connection is evicted; its stream fails at the next poll.
#[derive(Debug, Default)]
pub struct Eviction {
    evicted: AtomicBool,
    waker: AtomicWaker,
}

impl Eviction {
    /// Called from the stream's poll functions: an error once evicted, and
    /// a wake-up registered so that a pending read learns of it.
    pub fn check(&self, cx: &mut Context<'_>) -> io::Result<()> {
        self.waker.register(cx.waker());
        if self.evicted.load(Ordering::Acquire) {
            return Err(io::Error::other(Evicted));
        }
        Ok(())
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// An admitted connection's place; released when dropped (with its stream).
#[derive(Debug)]
pub struct Ticket {
    admission: Weak<Mutex<Table>>,
    id: u64,
    pub eviction: Arc<Eviction>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(table) = self.admission.upgrade() {
            crate::clock::lock(&table).release(self.id);
        }
    }
}

#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    group: NetGroup,
    eviction: Arc<Eviction>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    live: HashMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
    /// Connection ids by netgroup, oldest first.
    per_group: HashMap<NetGroup, BTreeSet<u64>>,
}

impl Table {
    fn release(&mut self, id: u64) {
        let Some(entry) = self.live.remove(&id) else {
            return;
        };
        if let Some(n) = self.per_ip.get_mut(&entry.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&entry.ip);
            }
        }
        if let Some(ids) = self.per_group.get_mut(&entry.group) {
            ids.remove(&id);
            if ids.is_empty() {
                self.per_group.remove(&entry.group);
            }
        }
    }

    /// The youngest connection of the most crowded netgroup.
    fn eviction_candidate(&self) -> Option<u64> {
        let (_, ids) = self
            .per_group
            .iter()
            .max_by_key(|(group, ids)| (ids.len(), std::cmp::Reverse(**group)))?;
        ids.last().copied()
    }
}

/// Counts of what admission did, for logs, status and tests.
#[derive(Debug, Default)]
pub struct AdmissionStats {
    pub admitted: AtomicU64,
    pub refused: AtomicU64,
    pub evicted: AtomicU64,
}

#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    table: Arc<Mutex<Table>>,
    pub stats: AdmissionStats,
    /// When a refusal was last logged at info level: a flood gets one line
    /// per interval, not one per connection.
    last_logged: Mutex<Option<Instant>>,
}

const LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Admission {
    pub fn new(config: AdmissionConfig) -> Admission {
        Admission {
            config,
            table: Arc::default(),
            stats: AdmissionStats::default(),
            last_logged: Mutex::new(None),
        }
    }

    pub fn config(&self) -> AdmissionConfig {
        self.config
    }

    /// Inbound connections holding a place now.
    pub fn live(&self) -> usize {
        self.lock().live.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        crate::clock::lock(&self.table)
    }

    /// A place for a connection from `ip`, evicting another when full; or
    /// why not. `force` admits whatever the caps say (a punch's own
    /// connection, which this node asked for).
    pub fn admit(&self, ip: IpAddr, force: bool) -> Result<Ticket, Refusal> {
        let ip = unmapped(ip);
        let group = NetGroup::of(ip);
        let mut table = self.lock();
        if !force {
            let from_ip = table.per_ip.get(&ip).copied().unwrap_or(0);
            if from_ip >= self.config.max_per_ip {
                return Err(self.refused(Refusal::PerIp {
                    ip,
                    limit: self.config.max_per_ip,
                }));
            }
            let from_group = table.per_group.get(&group).map_or(0, BTreeSet::len);
            if from_group >= self.config.max_per_netgroup {
                return Err(self.refused(Refusal::PerNetgroup {
                    group,
                    limit: self.config.max_per_netgroup,
                }));
            }
            if table.live.len() >= self.config.max_inbound {
                let Some(victim) = table.eviction_candidate() else {
                    return Err(self.refused(Refusal::Full {
                        limit: self.config.max_inbound,
                    }));
                };
                if let Some(entry) = table.live.get(&victim) {
                    tracing::debug!(ip = %entry.ip, group = %entry.group, newcomer = %ip, "evicting the youngest connection of the most crowded netgroup");
                    entry.eviction.evict();
                }
                table.release(victim);
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = table.next_id;
        table.next_id = table.next_id.wrapping_add(1);
        let eviction = Arc::new(Eviction::default());
        table.live.insert(
            id,
            Entry {
                ip,
                group,
                eviction: eviction.clone(),
            },
        );
        let n = table.per_ip.entry(ip).or_insert(0);
        *n = n.saturating_add(1);
        table.per_group.entry(group).or_default().insert(id);
        self.stats.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            admission: Arc::downgrade(&self.table),
            id,
            eviction,
        })
    }

    fn refused(&self, why: Refusal) -> Refusal {
        let total = self
            .stats
            .refused
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let mut last = crate::clock::lock(&self.last_logged);
        let now = Instant::now();
        if last.is_none_or(|t| now.saturating_duration_since(t) >= LOG_INTERVAL) {
            *last = Some(now);
            tracing::info!(reason = %why, refused_so_far = total, "refusing inbound connections (logged once per 10 s)");
        } else {
            tracing::debug!(reason = %why, "refusing inbound connection");
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn netgroups_are_v4_16_and_v6_32_and_mapped_addresses_unmap() {
        assert_eq!(
            NetGroup::of(ip("203.0.113.7")),
            NetGroup::of(ip("203.0.1.1"))
        );
        assert_ne!(
            NetGroup::of(ip("203.0.113.7")),
            NetGroup::of(ip("203.1.113.7"))
        );
        assert_eq!(
            NetGroup::of(ip("::ffff:203.0.113.7")),
            NetGroup::of(ip("203.0.9.9"))
        );
        assert_eq!(
            NetGroup::of(ip("2001:db8:1::1")),
            NetGroup::of(ip("2001:db8:ffff::2"))
        );
        assert_ne!(
            NetGroup::of(ip("2001:db8::1")),
            NetGroup::of(ip("2001:db9::1"))
        );
        assert_eq!(NetGroup::of(ip("2001:db8::1")).to_string(), "2001:db8::/32");
    }

    #[test]
    fn caps_per_ip_and_netgroup_and_tickets_release_their_place() {
        let admission = Admission::new(AdmissionConfig {
            max_inbound: 100,
            max_per_ip: 2,
            max_per_netgroup: 3,
        });
        let a = admission.admit(ip("198.51.100.1"), false).unwrap();
        let _b = admission.admit(ip("198.51.100.1"), false).unwrap();
        assert!(matches!(
            admission.admit(ip("198.51.100.1"), false),
            Err(Refusal::PerIp { .. })
        ));
        let _c = admission.admit(ip("198.51.7.7"), false).unwrap();
        assert!(matches!(
            admission.admit(ip("198.51.8.8"), false),
            Err(Refusal::PerNetgroup { .. })
        ));
        // A punch's own connection is admitted regardless.
        let _forced = admission.admit(ip("198.51.100.1"), true).unwrap();
        drop(a);
        assert_eq!(admission.live(), 3);
        let _d = admission.admit(ip("198.51.100.1"), true).unwrap();
        assert_eq!(admission.stats.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn when_full_the_most_crowded_netgroup_loses_its_youngest() {
        let admission = Admission::new(AdmissionConfig {
            max_inbound: 4,
            max_per_ip: 10,
            max_per_netgroup: 10,
        });
        let flood: Vec<Ticket> = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
            .iter()
            .map(|a| admission.admit(ip(a), false).unwrap())
            .collect();
        let honest = admission.admit(ip("192.0.2.1"), false).unwrap();
        let newcomer = admission.admit(ip("198.51.100.9"), false).unwrap();
        assert_eq!(admission.live(), 4);
        let flags: Vec<bool> = flood
            .iter()
            .map(|t| t.eviction.evicted.load(Ordering::Acquire))
            .collect();
        assert_eq!(
            flags,
            vec![false, false, true],
            "the youngest of 10.1/16 goes"
        );
        assert!(!honest.eviction.evicted.load(Ordering::Acquire));
        assert!(!newcomer.eviction.evicted.load(Ordering::Acquire));
        assert_eq!(admission.stats.evicted.load(Ordering::Relaxed), 1);
    }
}
