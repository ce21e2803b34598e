//! The punch budget: every SYN a node fires at an address someone else
//! supplied (a relay's peer, a coordinator's order) is paid from it,
//! whichever path asked. Without I/O; the driver charges one SYN per
//! candidate per attempt before it dials, and skips what is refused.
//!
//! Counted per minute, per target address (IPv4 /32, IPv6 /64: one
//! subscriber's prefix is one target), per target netgroup (IPv4 /24, IPv6
//! /48: one site), per requester (the peer that asked, by its key), and in
//! all. Memory is bounded: nothing is recorded once the global limit is
//! reached, and expired entries are swept.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::net::admission::unmapped;

/// How a punch failure caused by the budget starts, in records and logs
/// (the sidecar's proxy answers those with "connection not allowed").
pub const REFUSED_BY_BUDGET: &str = "punch budget";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BudgetConfig {
    /// SYNs per minute to one address (IPv4 /32, IPv6 /64).
    pub per_address: usize,
    /// SYNs per minute to one netgroup (IPv4 /24, IPv6 /48).
    pub per_netgroup: usize,
    /// SYNs per minute on behalf of one requesting peer.
    pub per_requester: usize,
    /// SYNs per minute in all.
    pub global: usize,
    /// Birthday punches per minute in all (each up to
    /// [`crate::punch::predict::BIRTHDAY_PORTS`] SYNs to one address,
    /// paid from this allowance instead of the SYN limits above).
    pub birthdays: usize,
}

impl Default for BudgetConfig {
    /// A punch is at most 3 attempts × 8 candidates, plus up to 4 SYNs
    /// again per attempt to a candidate that answered with a reset (a NAT
    /// that refuses early SYNs), and an honest one has 1–2 candidates: 24 a
    /// minute to one address is eight honest punches there (one, when its
    /// NAT refuses every SYN), and 300 in all is a hundred one-candidate
    /// punches.
    ///
    /// A birthday punch (a random symmetric NAT against an endpoint-
    /// independent one) needs hundreds of SYNs to one address at once,
    /// which no per-SYN limit fit for everything else allows; it is paid
    /// whole, from its own allowance: one a minute, so that the most a
    /// coordinator can make a node fire at one host is 256 SYNs a minute
    /// (about four a second).
    fn default() -> Self {
        BudgetConfig {
            per_address: 24,
            per_netgroup: 48,
            per_requester: 48,
            global: 300,
            birthdays: 1,
        }
    }
}

impl BudgetConfig {
    /// No limits: for measurements that punch one peer many times a minute
    /// (the lab matrix, the twenty-try tests), never for a node facing the
    /// internet.
    pub const UNLIMITED: BudgetConfig = BudgetConfig {
        per_address: usize::MAX,
        per_netgroup: usize::MAX,
        per_requester: usize::MAX,
        global: usize::MAX,
        birthdays: usize::MAX,
    };
}

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Address(IpAddr),
    Netgroup(IpAddr),
    Requester(String),
    Birthdays,
}

/// Why a SYN was not fired.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetRefusal {
    #[error("{limit} SYNs a minute to {target} (its /32 or /64) already spent")]
    Address { target: IpAddr, limit: usize },
    #[error("{limit} SYNs a minute to {target}'s netgroup (/24 or /48) already spent")]
    Netgroup { target: IpAddr, limit: usize },
    #[error("{limit} SYNs a minute on behalf of {requester} already spent")]
    Requester { requester: String, limit: usize },
    #[error("{limit} SYNs a minute in all already spent")]
    Global { limit: usize },
    #[error("{limit} birthday punches a minute already made")]
    Birthdays { limit: usize },
}

#[derive(Debug, Default)]
pub struct PunchBudget {
    config: BudgetConfig,
    global: VecDeque<Instant>,
    by_key: HashMap<Key, VecDeque<Instant>>,
    /// SYNs refused so far, for status and tests.
    pub refused: u64,
    /// SYNs paid for so far.
    pub spent: u64,
}

/// The address as the budget counts it: IPv4 /32, IPv6 /64 (every address
/// of a subscriber's prefix is one target).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match unmapped(ip) {
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(masked.into())
        }
        v4 => v4,
    }
}

/// The netgroup as the budget counts it: IPv4 /24, IPv6 /48.
fn netgroup_key(ip: IpAddr) -> IpAddr {
    match unmapped(ip) {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (u128::MAX << 80)).into()),
    }
}

fn prune(times: &mut VecDeque<Instant>, now: Instant) {
    crate::clock::expire_window(times, now, WINDOW);
}

impl PunchBudget {
    pub fn new(config: BudgetConfig) -> Self {
        PunchBudget {
            config,
            ..Default::default()
        }
    }

    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    /// Pays for one SYN to `target` on behalf of `requester`, or says why not.
    pub fn charge(
        &mut self,
        now: Instant,
        requester: &str,
        target: IpAddr,
    ) -> Result<(), BudgetRefusal> {
        prune(&mut self.global, now);
        let checks = [
            (Key::Address(address_key(target)), self.config.per_address),
            (
                Key::Netgroup(netgroup_key(target)),
                self.config.per_netgroup,
            ),
            (
                Key::Requester(requester.to_string()),
                self.config.per_requester,
            ),
        ];
        let refusal = if self.global.len() >= self.config.global {
            Some(BudgetRefusal::Global {
                limit: self.config.global,
            })
        } else {
            checks.iter().find_map(|(key, limit)| {
                let used = self.by_key.get_mut(key).map_or(0, |times| {
                    prune(times, now);
                    times.len()
                });
                (used >= *limit).then(|| match key {
                    Key::Address(_) => BudgetRefusal::Address {
                        target,
                        limit: *limit,
                    },
                    Key::Netgroup(_) => BudgetRefusal::Netgroup {
                        target,
                        limit: *limit,
                    },
                    Key::Requester(r) => BudgetRefusal::Requester {
                        requester: r.clone(),
                        limit: *limit,
                    },
                    Key::Birthdays => BudgetRefusal::Birthdays { limit: *limit },
                })
            })
        };
        if let Some(refusal) = refusal {
            self.refused = self.refused.saturating_add(1);
            return Err(refusal);
        }
        self.global.push_back(now);
        for (key, _) in checks {
            self.by_key.entry(key).or_default().push_back(now);
        }
        self.spent = self.spent.saturating_add(1);
        // Keys whose SYNs all expired: swept once they could outnumber what
        // a minute's global budget can record.
        if self.by_key.len() > self.config.global.saturating_mul(3) {
            self.by_key.retain(|_, times| {
                prune(times, now);
                !times.is_empty()
            });
        }
        Ok(())
    }

    /// Pays for one birthday punch of `syns` SYNs, all to one address, or
    /// says why not. Its SYNs count as spent, but not against the per-SYN
    /// limits, which they would exhaust for a minute.
    pub fn charge_birthday(&mut self, now: Instant, syns: usize) -> Result<(), BudgetRefusal> {
        let times = self.by_key.entry(Key::Birthdays).or_default();
        prune(times, now);
        if times.len() >= self.config.birthdays {
            self.refused = self.refused.saturating_add(syns as u64);
            return Err(BudgetRefusal::Birthdays {
                limit: self.config.birthdays,
            });
        }
        times.push_back(now);
        self.spent = self.spent.saturating_add(syns as u64);
        Ok(())
    }

    /// Entries the budget holds (bounded by three per SYN of the last
    /// minute, plus what the next sweep removes).
    pub fn tracked(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_64_is_one_target_and_a_24_one_netgroup() {
        let t0 = Instant::now();
        let mut budget = PunchBudget::new(BudgetConfig {
            per_address: 3,
            per_netgroup: 5,
            per_requester: 100,
            global: 100,
            birthdays: 0,
        });
        for i in 1..=3 {
            budget
                .charge(t0, "a", ip(&format!("2001:db8:1:2::{i}")))
                .unwrap();
        }
        // Every address of the /64 is the same target.
        assert!(matches!(
            budget.charge(t0, "b", ip("2001:db8:1:2:ffff::9")),
            Err(BudgetRefusal::Address { .. })
        ));
        // Another /64 of the same /48: two more, then the netgroup is spent.
        budget.charge(t0, "b", ip("2001:db8:1:3::1")).unwrap();
        budget.charge(t0, "b", ip("2001:db8:1:4::1")).unwrap();
        assert!(matches!(
            budget.charge(t0, "b", ip("2001:db8:1:5::1")),
            Err(BudgetRefusal::Netgroup { .. })
        ));
        // IPv4: a /24 is one netgroup; mapped addresses count as IPv4.
        for last in 1..=5 {
            budget
                .charge(t0, "c", ip(&format!("198.51.100.{last}")))
                .unwrap();
        }
        assert!(matches!(
            budget.charge(t0, "c", ip("::ffff:198.51.100.200")),
            Err(BudgetRefusal::Netgroup { .. })
        ));
        // A minute later it is all available again.
        let later = t0 + WINDOW;
        budget.charge(later, "c", ip("198.51.100.9")).unwrap();
        assert_eq!(budget.refused, 3);
    }

    #[test]
    fn requesters_and_the_whole_node_have_their_own_limits() {
        let t0 = Instant::now();
        let mut budget = PunchBudget::new(BudgetConfig {
            per_address: 100,
            per_netgroup: 100,
            per_requester: 2,
            global: 3,
            birthdays: 0,
        });
        budget.charge(t0, "mallory", ip("198.51.100.1")).unwrap();
        budget.charge(t0, "mallory", ip("203.0.113.1")).unwrap();
        assert!(matches!(
            budget.charge(t0, "mallory", ip("192.0.2.1")),
            Err(BudgetRefusal::Requester { .. })
        ));
        budget.charge(t0, "alice", ip("192.0.2.1")).unwrap();
        assert!(matches!(
            budget.charge(t0, "bob", ip("192.0.2.2")),
            Err(BudgetRefusal::Global { limit: 3 })
        ));
    }

    #[test]
    fn a_birthday_is_paid_whole_from_its_own_allowance() {
        let t0 = Instant::now();
        let mut budget = PunchBudget::new(BudgetConfig {
            per_address: 2,
            ..Default::default()
        });
        budget.charge_birthday(t0, 256).unwrap();
        // The per-SYN limits are untouched by it...
        budget.charge(t0, "a", ip("198.51.100.1")).unwrap();
        // ...and a second birthday in the same minute is refused, whole.
        assert_eq!(
            budget.charge_birthday(t0, 256),
            Err(BudgetRefusal::Birthdays { limit: 1 })
        );
        assert_eq!((budget.spent, budget.refused), (257, 256));
        budget.charge_birthday(t0 + WINDOW, 256).unwrap();
        let mut none = PunchBudget::new(BudgetConfig {
            birthdays: 0,
            ..Default::default()
        });
        assert!(none.charge_birthday(t0, 1).is_err());
    }

    #[test]
    fn memory_stays_bounded_under_many_targets_and_requesters() {
        let mut budget = PunchBudget::new(BudgetConfig {
            global: 10,
            ..Default::default()
        });
        let t0 = Instant::now();
        for minute in 0..50u32 {
            let now = t0 + WINDOW * minute;
            for i in 0..100u32 {
                let _ = budget.charge(
                    now,
                    &format!("r{minute}-{i}"),
                    IpAddr::V4((0xc633_6400 + i + minute * 256).into()),
                );
            }
        }
        assert!(budget.tracked() <= 3 * 10 + 3, "{} keys", budget.tracked());
    }
}
