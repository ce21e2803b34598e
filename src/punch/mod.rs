//! The punch, shared by both coordination paths: a schedule without I/O
//! (`schedule`) and the driver that carries it out on the shared port.
//!
//! Each attempt `connect()`s from the node's port `L` to every candidate
//! endpoint of the peer. Whichever TCP connection completes first wins: one
//! of our connects (the SYNs crossed, or the peer's SYN-ACK answered ours), or
//! an inbound connection that the accept loop hands over because it comes
//! from a candidate endpoint while the punch runs (the peer's SYN beat ours,
//! or our NAT lets anyone in). The losers are closed by being dropped.

pub mod budget;
pub mod predict;
pub mod schedule;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use schedule::{Schedule, ScheduleConfig, Step};

use crate::clock::Later;
use crate::net::router::Expectation;
use crate::net::stream::{Counted, Rewound};
use crate::net::{Router, SharedPort};
use crate::report::WonBy;

pub struct PunchPlan {
    /// The peer's endpoints to dial (its NAT mappings as someone observed
    /// them).
    pub candidates: Vec<SocketAddr>,
    /// When the first attempt starts; the peer starts at the same moment.
    pub start: Instant,
    pub config: ScheduleConfig,
    /// Who made us punch (the peer's key, by path): the budget counts SYNs
    /// per requester.
    pub requester: String,
    /// Endpoints that may come while the punch runs: the ports a peer
    /// behind a symmetric NAT predicts for its own punch.
    pub late: Option<LateCandidates>,
    /// We are behind a random symmetric NAT and the peer guesses at our
    /// ports: open [`predict::BIRTHDAY_PORTS`] connections from fresh
    /// ports to the first candidate at the first attempt.
    pub birthday_mappings: bool,
    /// We are the BIP324 responder: when several candidates are in play,
    /// take, of the connections that come up, the one the initiator speaks
    /// on first (it may have more than one up and uses the first of them).
    pub pick_where_peer_speaks: bool,
}

/// What one punch's port prediction works from (crate::punch::predict).
pub struct OwnPrediction<'a> {
    /// The shared port the punch leaves from.
    pub port: &'a SharedPort,
    /// Where the coordinator or relay sees the shared port.
    pub observed: SocketAddr,
    /// A NAT probe server (the coordinator's or relay's port + 1).
    pub probe: SocketAddr,
    /// What `bitpunch nat` last found.
    pub known: &'a crate::nat::NatMemory,
    /// Set once a probe showed an endpoint-independent mapping: no later
    /// punch over the same link probes again.
    pub endpoint_independent: &'a std::sync::atomic::AtomicBool,
    pub timeout: std::time::Duration,
}

impl OwnPrediction<'_> {
    /// What the peer should dial once each, at which address, when we may
    /// be behind a symmetric NAT: one probe from the shared port shows the
    /// latest mapping, and the ports that follow it are the prediction; a
    /// NAT known or seen to allocate at random gets a birthday instead.
    /// `None` when no probe is worth making, the probe fails, or the
    /// mapping is endpoint-independent. Make it just before the punch's
    /// first SYN.
    pub async fn ports(&self) -> Option<(std::net::IpAddr, predict::OwnPorts)> {
        use std::sync::atomic::Ordering::Relaxed;
        let known = crate::clock::lock(self.known).clone();
        if predict::known_random(self.observed, known.as_ref()) {
            let guesses = predict::birthday_guesses(&mut rand::thread_rng());
            return Some((self.observed.ip(), predict::OwnPorts::Birthday(guesses)));
        }
        let local = self
            .port
            .local_addrs()
            .iter()
            .find(|a| a.is_ipv4() == self.probe.is_ipv4())
            .copied()?;
        if self.endpoint_independent.load(Relaxed)
            || !predict::worth_probing(local.port(), self.observed, known.as_ref())
        {
            return None;
        }
        // Not knowing our NAT, a second probe from a fresh port, issued
        // right after the first (its SYN leaves second, so a sequential NAT
        // gives it the next port), tells a sequence from chance.
        let fresh_probe = async {
            match known {
                Some(_) => None,
                None => {
                    crate::nat::observe(SocketAddr::new(local.ip(), 0), self.probe, self.timeout)
                        .await
                        .ok()
                }
            }
        };
        let (shared, fresh) = tokio::join!(
            crate::nat::observe(local, self.probe, self.timeout),
            fresh_probe
        );
        let latest = match shared {
            Ok(latest) => latest,
            Err(e) => {
                // A probe server that is not there (a relay that is not
                // bitpunch's) costs at most the timeout, and only to a node
                // whose NAT changed its port.
                tracing::debug!(probe = %self.probe, error = %e, "port prediction: no answer from the probe");
                return None;
            }
        };
        if latest == self.observed {
            self.endpoint_independent.store(true, Relaxed);
        }
        let own = predict::after_probe(self.observed, latest, fresh, known.as_ref())?;
        match &own {
            predict::OwnPorts::Predicted(ports) => {
                tracing::debug!(%latest, ?fresh, ?ports, "port prediction: our punch's likely ports")
            }
            predict::OwnPorts::Birthday(_) => tracing::debug!(
                %latest, ?fresh, observed = %self.observed,
                "port prediction: no sequence, a birthday punch"
            ),
        }
        Some((latest.ip(), own))
    }
}

/// Candidates known only after the punch began. Each is claimed and
/// dialed once when it arrives, or at the first attempt if it arrives
/// earlier (not again each attempt: a pending SYN to a predicted port is
/// the peer's way in whenever its own SYN leaves from that port), and kept
/// pending until the punch ends. More than [`predict::MAX_SEQUENCE_PORTS`]
/// are a birthday's guesses: paid whole, neither claimed nor recorded one
/// by one, and closed before the kernel would send their SYNs again.
pub struct LateCandidates {
    pub endpoints: oneshot::Receiver<Vec<SocketAddr>>,
    pub router: Arc<Router>,
}

pub type PunchedStream = Rewound<Counted<TcpStream>>;

/// A direct TCP connection to the peer.
#[derive(Debug)]
pub struct Punched {
    /// With whatever the accept loop had already read from it, still to be
    /// read (the peer may have sent its BIP324 key before our punch began).
    pub stream: PunchedStream,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub won_by: WonBy,
    /// Attempts started, the winning one included.
    pub attempts: u32,
    pub first_syn: Option<Instant>,
    pub established: Instant,
    /// Every endpoint dialed or claimed, late ones included.
    pub candidates: Vec<SocketAddr>,
    /// SYNs this punch fired (connects started; the kernel's own
    /// retransmissions not counted).
    pub syns: u32,
    /// Of those, a birthday's: mappings opened or guesses dialed.
    pub birthday_ports: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("no direct connection after {attempts} attempts to {candidates:?}{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
pub struct PunchError {
    pub attempts: u32,
    pub candidates: Vec<SocketAddr>,
    pub last_error: Option<String>,
    pub first_syn: Option<Instant>,
    pub syns: u32,
    pub birthday_ports: u32,
}

/// Carries out `plan` from `port`, with `router` (the accept loop of the same
/// port) handing over inbound connections from the candidates.
pub async fn punch(
    port: &SharedPort,
    router: &Arc<Router>,
    plan: PunchPlan,
) -> Result<Punched, PunchError> {
    // Claim the candidates' inbound connections before any SYN leaves.
    let claims = claim(router, &plan.candidates);
    punch_claimed(port, plan, claims).await
}

/// Claims inbound connections from `candidates` now, for a punch that
/// starts later: the peer's SYN may arrive before our own schedule begins
/// (a slow coordination path, an endpoint-independent NAT).
pub fn claim(router: &Arc<Router>, candidates: &[SocketAddr]) -> Vec<Expectation> {
    candidates.iter().map(|c| router.expect_from(*c)).collect()
}

/// `punch` with claims made earlier by `claim` for the same candidates.
pub async fn punch_claimed(
    port: &SharedPort,
    plan: PunchPlan,
    claims: Vec<Expectation>,
) -> Result<Punched, PunchError> {
    let mut expectations = claims;
    let mut schedule = Schedule::new(plan.config, plan.candidates.clone(), plan.start.into_std());
    let mut dials = FuturesUnordered::new();
    // Dials to late candidates: never abandoned by a new attempt.
    let mut held = FuturesUnordered::new();
    let (mut late, late_router) = match plan.late {
        Some(l) => (Some(l.endpoints), Some(l.router)),
        None => (None, None),
    };
    let mut all_candidates = plan.candidates.clone();
    let mut first_syn = None;
    let mut spent = Spending {
        port,
        requester: &plan.requester,
        syns: 0,
        birthday_ports: 0,
        last_error: None,
    };
    let give_up =
        |schedule: &Schedule, spent: Spending, first_syn, candidates: &[SocketAddr]| PunchError {
            attempts: schedule.attempts_started(),
            candidates: candidates.to_vec(),
            last_error: spent.last_error,
            first_syn,
            syns: spent.syns,
            birthday_ports: spent.birthday_ports,
        };

    // Responder only: connections up, waiting for the initiator's first
    // bytes. With several ways to the peer (its public endpoint through a
    // hairpinning router and its LAN address, say) more than one TCP
    // connection can come up, and each side would take its own first one.
    // The initiator speaks first on the one it took; the responder takes
    // the one it speaks on, so both end up on the same connection.
    let mut speaking = FuturesUnordered::new();
    let mut giving_up_at: Option<Instant> = None;
    let mut redials_left = 0;
    // Candidates the peer told us during the punch, dialed once each from
    // the first attempt on (before it, the peer is not dialing yet).
    let mut told: Vec<SocketAddr> = Vec::new();
    let mut started = false;
    // A birthday's connections: mappings we open, or guesses we dial.
    let mut birthday = FuturesUnordered::new();
    loop {
        if started && !told.is_empty() {
            let told = std::mem::take(&mut told);
            if told.len() > predict::MAX_SEQUENCE_PORTS {
                // Guessing from behind a random NAT of our own would send
                // every guess from a port the peer's mappings do not point
                // at: two random NATs do not meet, whoever guesses.
                if plan.birthday_mappings {
                    tracing::debug!("punch: no guesses at the peer's birthday, ours is under way");
                } else {
                    first_syn.get_or_insert_with(Instant::now);
                    birthday.extend(spent.birthday(told, Birthday::Guesses));
                }
            } else {
                for candidate in told {
                    if all_candidates.contains(&candidate) {
                        continue;
                    }
                    all_candidates.push(candidate);
                    if let Some(router) = &late_router {
                        expectations.push(router.expect_from(candidate));
                    }
                    tracing::debug!(%candidate, "punch: dialing a predicted port");
                    first_syn.get_or_insert_with(Instant::now);
                    held.extend(spent.dial(candidate, None));
                }
            }
        }
        let wait_until =
            match giving_up_at {
                Some(t) => t,
                None => match schedule.poll(Instant::now().into_std()) {
                    Step::Dial {
                        attempt,
                        candidates,
                    } => {
                        // A connect still pending from the last attempt is
                        // abandoned: its SYN was lost or dropped, and a fresh one
                        // is due now.
                        dials = FuturesUnordered::new();
                        redials_left = REDIALS_AFTER_REFUSAL;
                        first_syn.get_or_insert_with(Instant::now);
                        for candidate in candidates {
                            tracing::debug!(%candidate, attempt, "punch: dialing");
                            dials.extend(spent.dial(candidate, None));
                        }
                        if !started {
                            started = true;
                            if let Some(&peer) =
                                plan.candidates.first().filter(|_| plan.birthday_mappings)
                            {
                                birthday.extend(spent.birthday(
                                    vec![peer; predict::BIRTHDAY_PORTS],
                                    Birthday::Mappings,
                                ));
                            }
                        }
                        continue;
                    }
                    Step::WaitUntil(t) => Instant::from_std(t),
                    Step::GiveUp if speaking.is_empty() => {
                        return Err(give_up(&schedule, spent, first_syn, &all_candidates))
                    }
                    Step::GiveUp => {
                        // A connection is up; give the initiator a moment to
                        // speak on it.
                        let t = Instant::now().later(SPEAK_FIRST_GRACE);
                        giving_up_at = Some(t);
                        t
                    }
                },
            };
        let late_pending = late.is_some();
        let next_late = async {
            match late.as_mut() {
                Some(rx) => rx.await.ok(),
                None => futures::future::pending().await,
            }
        };
        let claimed = !expectations.is_empty();
        let inbound = async {
            if claimed {
                let next = futures::future::select_all(
                    expectations.iter_mut().map(|e| Box::pin(&mut e.inbound)),
                );
                next.await.0
            } else {
                futures::future::pending().await
            }
        };
        let up: Option<Connection> = tokio::select! {
            // In this order: a new attempt's dials issue their connects
            // before the predicted ports' (a sequential NAT gives them
            // ports in the order they leave, and the peer's prediction
            // counts on it).
            biased;
            _ = sleep_precisely_until(wait_until) => {
                if giving_up_at.is_some() {
                    return Err(give_up(&schedule, spent, first_syn, &all_candidates));
                }
                None
            }
            arrived = next_late, if late_pending => {
                late = None;
                told.extend(arrived.unwrap_or_default());
                None
            }
            Some((candidate, dialed_at, result)) = dials.next(), if !dials.is_empty() => match result {
                Ok(stream) => Connection::dialed(candidate, stream),
                Err(e) => {
                    tracing::debug!(%candidate, error = %e, "punch: attempt failed");
                    spent.last_error = Some(e.to_string());
                    if e.kind() == std::io::ErrorKind::ConnectionRefused && redials_left > 0 {
                        redials_left = redials_left.saturating_sub(1);
                        let pause = redial_pause(dialed_at.elapsed(), rand::random());
                        tracing::debug!(%candidate, ?pause, "punch: refused, dialing again");
                        dials.extend(spent.dial(candidate, Some(pause)));
                    }
                    None
                }
            },
            Some((candidate, result)) = birthday.next(), if !birthday.is_empty() => match result {
                Ok(stream) => {
                    tracing::debug!(%candidate, "punch: a birthday connection is up");
                    Connection::dialed(candidate, stream)
                }
                Err(e) => {
                    tracing::trace!(%candidate, error = %e, "punch: a birthday connection failed");
                    None
                }
            },
            Some((candidate, _, result)) = held.next(), if !held.is_empty() => match result {
                Ok(stream) => Connection::dialed(candidate, stream),
                Err(e) => {
                    // A predicted port nobody holds answers with a reset.
                    tracing::debug!(%candidate, error = %e, "punch: predicted port failed");
                    None
                }
            },
            arrived = inbound => match arrived {
                Ok(inbound) => {
                    // A receiver that delivered must not be polled again
                    // (the loop goes on while the responder waits for the
                    // initiator to speak).
                    expectations.retain(|e| !e.inbound.is_terminated());
                    // What the accept loop already read is the peer
                    // speaking.
                    let peer_spoke = !inbound.stream.pending_prefix().is_empty();
                    Some(Connection {
                        stream: inbound.stream,
                        local: inbound.local,
                        remote: inbound.remote,
                        won_by: WonBy::Accept,
                        established: inbound.accepted_at,
                        peer_spoke,
                    })
                }
                Err(_) => {
                    // The claim was taken away (a newer punch to the same
                    // endpoint); keep dialing.
                    expectations.retain(|e| !e.inbound.is_terminated());
                    None
                }
            },
            Some((connection, spoke)) = speaking.next(), if !speaking.is_empty() => {
                if spoke {
                    Some(connection)
                } else {
                    tracing::debug!(remote = %connection.remote, "punch: a connection closed before the peer spoke on it");
                    None
                }
            }
        };
        let Some(connection) = up else { continue };
        // With one candidate only one connection can come up (our connect
        // and the peer's are the same 4-tuple): no need to wait, which
        // would cost the initiator a one-way trip (its key and ours no
        // longer cross).
        let several_ways = all_candidates.len() > 1 || spent.birthday_ports > 0;
        if plan.pick_where_peer_speaks && several_ways && !connection.peer_spoke {
            speaking.push(connection.wait_for_first_bytes());
            continue;
        }
        return Ok(Punched {
            stream: connection.stream,
            local: connection.local,
            remote: connection.remote,
            won_by: connection.won_by,
            attempts: schedule.attempts_started(),
            first_syn,
            established: connection.established,
            candidates: all_candidates,
            syns: spent.syns,
            birthday_ports: spent.birthday_ports,
        });
    }
}

/// What a punch has spent so far, and where it pays from.
struct Spending<'a> {
    port: &'a SharedPort,
    requester: &'a str,
    /// SYNs paid for.
    syns: u32,
    /// Of those, a birthday's.
    birthday_ports: u32,
    /// Why the last dial failed, or was not made.
    last_error: Option<String>,
}

/// Which side of a birthday punch we are.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Birthday {
    /// Behind the random NAT: connections from fresh ports, each a new
    /// mapping, all to the peer's one endpoint.
    Mappings,
    /// The peer's guesses at those mappings, from the shared port.
    Guesses,
}

impl<'a> Spending<'a> {
    /// Pays for one SYN to `candidate` from the punch budget and dials it
    /// (after `pause`, or now); `None` (with the reason in `last_error`)
    /// when the budget refuses. The dial resolves with the instant its SYN
    /// left.
    fn dial(
        &mut self,
        candidate: SocketAddr,
        pause: Option<std::time::Duration>,
    ) -> Option<
        impl std::future::Future<Output = (SocketAddr, Instant, std::io::Result<TcpStream>)> + 'a,
    > {
        if let Err(why) = self.port.charge_syn(self.requester, candidate.ip()) {
            tracing::info!(%candidate, requester = %self.requester, reason = %why, "punch: SYN refused by the punch budget");
            self.last_error = Some(format!("{}: {why}", budget::REFUSED_BY_BUDGET));
            return None;
        }
        self.syns = self.syns.saturating_add(1);
        let port = self.port;
        Some(async move {
            if let Some(pause) = pause {
                pause_briefly(pause).await;
            }
            let dialed_at = Instant::now();
            (candidate, dialed_at, port.dial(candidate).await)
        })
    }
}

impl<'a> Spending<'a> {
    /// Pays for a birthday's connections (to `targets`, at most
    /// [`predict::BIRTHDAY_PORTS`]) as a whole from the budget's birthday
    /// allowance, and dials them; none when it refuses. Each connect is
    /// abandoned before the kernel would send its SYN again: a second SYN
    /// of the same connection meets the same mappings, no new chance.
    fn birthday(
        &mut self,
        mut targets: Vec<SocketAddr>,
        side: Birthday,
    ) -> Vec<impl std::future::Future<Output = (SocketAddr, std::io::Result<TcpStream>)> + 'a> {
        if side == Birthday::Guesses {
            targets.sort_unstable();
            targets.dedup();
        }
        targets.truncate(predict::BIRTHDAY_PORTS);
        if let Err(why) = self.port.charge_birthday(targets.len()) {
            tracing::info!(requester = %self.requester, reason = %why, ?side, "punch: birthday refused by the punch budget");
            self.last_error = Some(format!("{}: {why}", budget::REFUSED_BY_BUDGET));
            return Vec::new();
        }
        let n = u32::try_from(targets.len()).unwrap_or(u32::MAX);
        self.syns = self.syns.saturating_add(n);
        self.birthday_ports = self.birthday_ports.saturating_add(n);
        tracing::debug!(?side, ports = n, "punch: birthday");
        let port = self.port;
        targets
            .into_iter()
            .map(|target| async move {
                let dial = async {
                    match side {
                        Birthday::Mappings => port.dial_fresh(target).await,
                        Birthday::Guesses => port.dial(target).await,
                    }
                };
                match tokio::time::timeout(BIRTHDAY_HOLD, dial).await {
                    Ok(result) => (target, result),
                    Err(_) => (target, Err(std::io::ErrorKind::TimedOut.into())),
                }
            })
            .collect()
    }
}

/// How long a birthday's connects stay pending: under the kernel's first
/// SYN retransmission (1 s), so that each costs exactly one SYN, and long
/// enough for the other side's SYNs to arrive across any path a punch
/// works over.
const BIRTHDAY_HOLD: std::time::Duration = std::time::Duration::from_millis(900);

/// SYNs an attempt may fire again at a candidate that refused one: with
/// three attempts, at most 15 SYNs to one candidate in a punch.
///
/// Between NATs that answer an unexpected SYN with a reset, a SYN gets
/// through only if the peer's own SYN left its NAT less than one trip
/// between the NATs before it arrives: when the two NATs are close (same
/// ISP, same city) that slack is far below what the coordination can time.
/// A reset means the SYNs did not cross; it also removes the state our SYN
/// had made in our own NAT (Linux conntrack drops the entry), so another
/// SYN from the same port starts clean, and each is another chance that the
/// two cross. In the lab at 0 ms this took `home-rst` pairs from 6 of 10
/// (native) and 0 of 10 (libp2p) to 35 of 40 and 29 of 40 (docs/results.md).
const REDIALS_AFTER_REFUSAL: u32 = 4;

/// How long to wait before dialing a candidate again that refused a SYN
/// `refused_after` after it left (about one round trip to the peer's NAT):
/// a random part of that round trip. A fixed pause would keep both sides'
/// retries in the same phase, each SYN meeting the other's reset every
/// time; a random one gives each retry a fresh chance to cross.
fn redial_pause(refused_after: std::time::Duration, draw: u32) -> std::time::Duration {
    let round_trip = refused_after.min(MAX_REDIAL_PAUSE);
    round_trip.mul_f64(f64::from(draw) / f64::from(u32::MAX))
}

/// A refusal slower than this is not from a nearby NAT racing our SYN.
const MAX_REDIAL_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Waits `pause`, often a few tens of microseconds: below the runtime
/// timer's millisecond, in a blocking thread's sleep rather than a spin, so
/// that the peer, often on the same few cores in a lab, is not starved while
/// we wait (spinning here measured worse: 12 of 20 against 17 of 20 at 0 ms).
async fn pause_briefly(pause: std::time::Duration) {
    let blocking_sleep = pause < std::time::Duration::from_millis(2)
        && tokio::task::spawn_blocking(move || std::thread::sleep(pause))
            .await
            .is_ok();
    if !blocking_sleep {
        tokio::time::sleep(pause).await;
    }
}

/// Sleeps until `deadline` to within microseconds, not the timer's
/// millisecond: two SYNs that must cross between NATs that answer early
/// SYNs with a reset have as much slack as one packet's trip between the
/// NATs, tens of microseconds when they are close. The last stretch is
/// spent yielding to the runtime, never blocking it. (libp2p at 0 ms between
/// `home-rst` NATs, retries on: 1 of 20 with the timer alone, 14–18 of 20
/// with this.)
async fn sleep_precisely_until(deadline: Instant) {
    if let Some(coarse) = deadline.checked_sub(PRECISE_WAIT) {
        tokio::time::sleep_until(coarse).await;
    }
    while Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

/// The stretch before a punch's deadline spent yielding rather than in the
/// timer (whose wake-ups come up to a millisecond late).
const PRECISE_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// How long a responder whose schedule is over still waits for the
/// initiator to speak on a connection that is up.
const SPEAK_FIRST_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// A TCP connection to the peer, up, not yet the punch's result.
struct Connection {
    stream: PunchedStream,
    local: SocketAddr,
    remote: SocketAddr,
    won_by: WonBy,
    established: Instant,
    /// Bytes from the peer are waiting on it.
    peer_spoke: bool,
}

impl Connection {
    fn dialed(candidate: SocketAddr, stream: TcpStream) -> Option<Connection> {
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(e) => {
                tracing::debug!(%candidate, error = %e, "punch: connected socket without a local address");
                return None;
            }
        };
        let _ = stream.set_nodelay(true);
        Some(Connection {
            stream: Rewound::new(Vec::new(), Counted::new(stream)),
            local,
            remote: candidate,
            won_by: WonBy::Connect,
            established: Instant::now(),
            peer_spoke: false,
        })
    }

    /// Resolves when the peer's first bytes are readable (true) or the
    /// connection ended first (false). Nothing is consumed.
    async fn wait_for_first_bytes(mut self) -> (Connection, bool) {
        let mut byte = [0u8; 1];
        let spoke = matches!(self.stream.get_ref().get_ref().peek(&mut byte).await, Ok(n) if n > 0);
        self.peer_spoke = spoke;
        (self, spoke)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_redial_waits_a_random_part_of_the_refusals_round_trip() {
        let rtt = Duration::from_micros(40);
        assert_eq!(redial_pause(rtt, 0), Duration::ZERO);
        assert_eq!(redial_pause(rtt, u32::MAX), rtt);
        let half = redial_pause(rtt, u32::MAX / 2);
        assert!(half > Duration::from_micros(19) && half < Duration::from_micros(21));
        // A slow refusal (a far NAT, a loaded host) does not stall the
        // attempt for longer than the cap.
        assert_eq!(
            redial_pause(Duration::from_secs(5), u32::MAX),
            MAX_REDIAL_PAUSE
        );
    }

    #[tokio::test]
    async fn a_precise_sleep_wakes_after_its_deadline_and_not_a_timer_tick_later() {
        for ahead in [0u64, 300, 1_500, 4_000] {
            let deadline = Instant::now() + Duration::from_micros(ahead);
            sleep_precisely_until(deadline).await;
            let late = Instant::now().saturating_duration_since(deadline);
            assert!(Instant::now() >= deadline);
            // Generous: a loaded CI machine may deschedule us for a while.
            assert!(late < Duration::from_millis(50), "{late:?} late");
        }
    }
}
