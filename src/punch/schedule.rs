//! When to send which SYN: the punch schedule, without I/O.
//!
//! Both sides of a punch get the same plan from the coordination: attempt `k`
//! starts at `start + k × interval` and dials every candidate at once. Fixed
//! slots keep the two sides in step after a failed attempt: an attempt that
//! was refused early (the far NAT answered our SYN with an RST because its
//! own SYN had not left yet) waits for the next slot, when the peer dials
//! again too, instead of drifting away on a private back-off. An attempt that
//! is still pending when the next slot begins is abandoned and replaced.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::clock::Later;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Attempts in all (DCUtR makes three).
    pub attempts: u32,
    /// Time from one attempt's start to the next's.
    pub interval: Duration,
}

impl ScheduleConfig {
    /// A plan for a peer `rtt` away: an attempt lasts long enough for a SYN
    /// to cross and its answer to come back a few times, and never less than
    /// half a second, so that scheduling noise does not eat it.
    pub fn for_rtt(rtt: Duration) -> Self {
        let interval = rtt
            .saturating_mul(4)
            .saturating_add(Duration::from_millis(200))
            .clamp(Duration::from_millis(500), Duration::from_secs(3));
        ScheduleConfig {
            attempts: 3,
            interval,
        }
    }

    /// When the last attempt ends: the longest a punch can take.
    pub fn total(&self) -> Duration {
        self.interval.saturating_mul(self.attempts)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do before this instant.
    WaitUntil(Instant),
    /// Start attempt `attempt` (0-based): dial every candidate now, and drop
    /// whatever the previous attempt still has pending.
    Dial {
        attempt: u32,
        candidates: Vec<SocketAddr>,
    },
    /// Every attempt is over without a connection.
    GiveUp,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    config: ScheduleConfig,
    candidates: Vec<SocketAddr>,
    start: Instant,
    next_attempt: u32,
}

impl Schedule {
    pub fn new(config: ScheduleConfig, candidates: Vec<SocketAddr>, start: Instant) -> Self {
        Schedule {
            config,
            candidates,
            start,
            next_attempt: 0,
        }
    }

    /// What to do at `now`. Call again after acting on a `Dial`, and when the
    /// instant of a `WaitUntil` has come.
    pub fn poll(&mut self, now: Instant) -> Step {
        if self.candidates.is_empty() {
            return Step::GiveUp;
        }
        if self.next_attempt < self.config.attempts {
            let slot = self
                .start
                .later(self.config.interval.saturating_mul(self.next_attempt));
            if now < slot {
                return Step::WaitUntil(slot);
            }
            let attempt = self.next_attempt;
            self.next_attempt = self.next_attempt.saturating_add(1);
            return Step::Dial {
                attempt,
                candidates: self.candidates.clone(),
            };
        }
        let end = self.start.later(self.config.total());
        if now < end {
            Step::WaitUntil(end)
        } else {
            Step::GiveUp
        }
    }

    /// Attempts started so far.
    pub fn attempts_started(&self) -> u32 {
        self.next_attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates() -> Vec<SocketAddr> {
        vec!["203.0.113.2:40001".parse().unwrap()]
    }

    #[test]
    fn attempts_start_on_fixed_slots_and_then_it_gives_up() {
        let t0 = Instant::now();
        let config = ScheduleConfig {
            attempts: 3,
            interval: Duration::from_millis(500),
        };
        let start = t0 + Duration::from_millis(30);
        let mut s = Schedule::new(config, candidates(), start);
        assert_eq!(s.poll(t0), Step::WaitUntil(start));
        assert_eq!(
            s.poll(start),
            Step::Dial {
                attempt: 0,
                candidates: candidates()
            }
        );
        // A refusal right after the dial does not move the next slot.
        let next = start + Duration::from_millis(500);
        assert_eq!(
            s.poll(start + Duration::from_millis(5)),
            Step::WaitUntil(next)
        );
        // Woken late: the attempt still starts, and the slot after it keeps
        // its place.
        let late = next + Duration::from_millis(120);
        assert!(matches!(s.poll(late), Step::Dial { attempt: 1, .. }));
        assert_eq!(
            s.poll(late),
            Step::WaitUntil(start + Duration::from_millis(1000))
        );
        assert!(matches!(
            s.poll(start + Duration::from_millis(1000)),
            Step::Dial { attempt: 2, .. }
        ));
        assert_eq!(s.attempts_started(), 3);
        let end = start + Duration::from_millis(1500);
        assert_eq!(s.poll(end - Duration::from_millis(1)), Step::WaitUntil(end));
        assert_eq!(s.poll(end), Step::GiveUp);
        assert_eq!(s.poll(end + Duration::from_secs(9)), Step::GiveUp);
    }

    #[test]
    fn no_candidates_means_no_dial() {
        let t0 = Instant::now();
        let mut s = Schedule::new(ScheduleConfig::for_rtt(Duration::ZERO), vec![], t0);
        assert_eq!(s.poll(t0), Step::GiveUp);
    }

    #[test]
    fn interval_follows_the_rtt_within_bounds() {
        assert_eq!(
            ScheduleConfig::for_rtt(Duration::ZERO).interval,
            Duration::from_millis(500)
        );
        assert_eq!(
            ScheduleConfig::for_rtt(Duration::from_millis(100)).interval,
            Duration::from_millis(600)
        );
        assert_eq!(
            ScheduleConfig::for_rtt(Duration::from_secs(5)).interval,
            Duration::from_secs(3)
        );
        assert_eq!(ScheduleConfig::for_rtt(Duration::ZERO).attempts, 3);
    }
}
