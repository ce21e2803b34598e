//! One punch on the libp2p path: the exchange on the relayed connection,
//! the punch from the shared port, BIP324 with roles from the exchange, and
//! the libp2p identities' signatures over the BIP324 session id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::libp2p::{identity, Multiaddr, PeerId};
use bitcoin::p2p::message::{CommandString, NetworkMessage};
use tokio::time::Instant;

use super::exchange::{self, ExchangeError, SideA, SideB, Step};
use super::swarm::Libp2pNode;
use crate::clock::Later;
use crate::net::{Router, SharedPort};
use crate::punch::predict::{self, OwnPorts};
use crate::punch::{self, PunchPlan, PunchedStream, ScheduleConfig};
use crate::report::{ms_since, Outcome, Path};
use crate::wire::{Session, SessionConfig, SessionRole, Stage};

const AUTH_COMMAND: &str = "bpauth";
const AUTH_DOMAIN: &[u8] = b"bitpunch/libp2p-session/v1";
const SPLICE_DOMAIN: &[u8] = b"bitpunch/libp2p-splice/v1";
const MAX_AUTH_FIELD: usize = 128;

#[derive(Clone)]
pub struct Libp2pPunchContext {
    pub port: Arc<SharedPort>,
    pub router: Arc<Router>,
    pub libp2p: Arc<Libp2pNode>,
    pub session: SessionConfig,
    /// Offer and accept loopback and private addresses (tests on loopback).
    pub allow_private: bool,
    /// Our own dials start this much later than the exchange says. Zero in
    /// use; experiments set it to make the peer's SYN arrive first.
    pub dial_delay: Duration,
    /// Offer exactly these addresses in our CONNECT instead of our observed
    /// ones, unchecked. Only for tests that play a hostile peer, whose
    /// CONNECT names a victim (tests/reflection_lab.rs).
    #[doc(hidden)]
    pub hostile_offer: Option<Vec<Multiaddr>>,
    /// The node that owns the sessions punched for others
    /// ([`crate::libp2p::serve_relayed`]).
    pub owner: crate::node::SessionOwner,
    /// What becomes of a punched connection: our session, or a sidecar's
    /// splice.
    pub ending: crate::punch::upgrade::Ending,
    /// What the node last learnt of its NAT (`bitpunch nat`), if anything.
    pub known_nat: crate::nat::NatMemory,
    /// A probe showed our mapping endpoint-independent: no punch probes
    /// again.
    pub endpoint_independent: Arc<std::sync::atomic::AtomicBool>,
}

pub struct Libp2pOutcome {
    pub record: Outcome,
    pub session: Option<Session<PunchedStream>>,
    /// A sidecar's punch: the splice to run instead of a session.
    pub spliced: Option<crate::sidecar::Spliced>,
}

impl Libp2pPunchContext {
    /// Punches from `node`'s shared port, through `libp2p` (which must run
    /// on that port), dialing as soon as the exchange says.
    pub fn for_node(
        node: &crate::node::Node,
        libp2p: Arc<Libp2pNode>,
        session: SessionConfig,
        allow_private: bool,
    ) -> Self {
        Libp2pPunchContext {
            port: node.shared_port().clone(),
            router: node.router().clone(),
            libp2p,
            session,
            allow_private,
            dial_delay: Duration::ZERO,
            hostile_offer: None,
            owner: node.session_owner(),
            ending: node.ending(),
            known_nat: node.handle().nat_memory(),
            endpoint_independent: Arc::default(),
        }
    }

    /// Our observed addresses worth offering, waiting a little for identify
    /// if none is known yet; behind a symmetric NAT, after them the ports
    /// the peer should dial once (a sequence's prediction or a birthday's
    /// guesses: returned too, for the punch and the record).
    async fn offer(&self, via: &Multiaddr) -> (Vec<Multiaddr>, Option<OwnPorts>) {
        if let Some(offer) = &self.hostile_offer {
            return (offer.clone(), None);
        }
        let mut offer = self.observed_offer(via).await;
        let predicted = self.predict(&offer, via).await;
        if let Some((ip, own_ports)) = &predicted {
            for port in own_ports.ports() {
                let addr = super::transport::multiaddr(SocketAddr::new(*ip, *port));
                if !offer.contains(&addr) {
                    offer.push(addr);
                }
            }
        }
        (offer, predicted.map(|(_, own_ports)| own_ports))
    }

    /// Port prediction (crate::punch::predict) through the relay's NAT
    /// probes (a bitpunch relay answers on its port + 1). The ports come
    /// after our observed and own-network addresses: the peer dials
    /// [`exchange::MAX_CANDIDATES`] of the offer every round and the rest
    /// at our address once ([`exchange::guesses`]).
    async fn predict(
        &self,
        offer: &[Multiaddr],
        via: &Multiaddr,
    ) -> Option<(std::net::IpAddr, OwnPorts)> {
        let probe = super::relay_endpoint(via).and_then(crate::nat::probe_server)?;
        // The relay's probe sees the family we reach the relay over.
        let observed = offer
            .iter()
            .filter_map(super::transport::socket_addr)
            .find(|a| a.is_ipv4() == probe.is_ipv4())?;
        let own = punch::OwnPrediction {
            port: &self.port,
            observed,
            probe,
            known: &self.known_nat,
            endpoint_independent: &self.endpoint_independent,
            timeout: Duration::from_secs(1),
        };
        own.ports().await
    }

    /// Our observed addresses, the family we reach the relay over first
    /// (the peer guesses at the first one's address, and our prediction is
    /// for it). A dual-stack node that is still learning its address in the
    /// other family waits for it a little: an offer without it would leave
    /// the peer's firewall closed to that family.
    async fn observed_offer(&self, via: &Multiaddr) -> Vec<Multiaddr> {
        let mut events = self.libp2p.events();
        let deadline = Instant::now().later(Duration::from_secs(5));
        let mut second_family_deadline = None;
        loop {
            let ours = self.observed_punchable(via);
            let now = Instant::now();
            let waiting_for_second = !ours.is_empty()
                && self.libp2p.second_family_pending()
                && now < *second_family_deadline.get_or_insert(now.later(SECOND_FAMILY_GRACE));
            if (!ours.is_empty() && !waiting_for_second) || now >= deadline {
                return self.with_own_network(ours);
            }
            let until = match second_family_deadline {
                Some(d) if !ours.is_empty() => d.min(deadline),
                _ => deadline,
            };
            let _ = tokio::time::timeout_at(until, events.recv()).await;
        }
    }
}

impl Libp2pPunchContext {
    /// Our punchable observed addresses as identify has told them so far,
    /// the family we reach the relay over first (newest first within each).
    fn observed_punchable(&self, via: &Multiaddr) -> Vec<Multiaddr> {
        let via_is_ipv6 = super::relay_endpoint(via).is_some_and(|r| r.is_ipv6());
        let mut ours: Vec<Multiaddr> = self
            .libp2p
            .observed()
            .into_iter()
            .filter(|a| exchange::punchable(a, self.allow_private).is_some())
            .collect();
        ours.sort_by_key(|a| {
            exchange::punchable(a, self.allow_private).map(|s| s.is_ipv6() != via_is_ipv6)
        });
        ours
    }

    /// The offer without waiting for anything: what we know now.
    fn observed_now(&self, via: &Multiaddr) -> Vec<Multiaddr> {
        self.with_own_network(self.observed_punchable(via))
    }

    /// `observed`, and after it where our shared port is on our own network
    /// when we are behind a NAT: a peer behind the same NAT races it (the
    /// peer only does so when it sees our public address is its own).
    fn with_own_network(&self, mut observed: Vec<Multiaddr>) -> Vec<Multiaddr> {
        let port = self.port.port();
        let own: Vec<Multiaddr> = observed
            .iter()
            .filter_map(super::transport::socket_addr)
            .filter_map(|public| crate::net::source_toward(public.ip()))
            .filter(|ip| crate::net::routable::is_own_network(*ip))
            .map(|ip| super::transport::multiaddr(SocketAddr::new(ip, port)))
            .collect();
        for addr in own {
            if !observed.contains(&addr) {
                observed.push(addr);
            }
        }
        observed
    }
}

/// How long A's offer may still take once the peer's CONNECT is here: the
/// peer's RTT measure, and so the round's timing, is off by half of it.
const OFFER_GRACE: Duration = Duration::from_millis(100);

/// How long an offer waits, once it has one family, for a connection
/// still learning the other: about two round trips to a distant relay (the
/// connection, then identify), not the 5 s a node with no address at all
/// waits.
const SECOND_FAMILY_GRACE: Duration = Duration::from_millis(1500);

fn failed(role: SessionRole, via: &Multiaddr, stage: Stage, error: String) -> Libp2pOutcome {
    let mut record = Outcome::failed(Path::Libp2p, role, stage, error);
    record.via = Some(via.to_string());
    Libp2pOutcome {
        record,
        session: None,
        spliced: None,
    }
}

/// B's side: `peer` reached us through the relay at `via`; open the
/// exchange, punch, and be the BIP324 responder.
pub async fn punch_as_b(ctx: &Libp2pPunchContext, peer: PeerId, via: Multiaddr) -> Libp2pOutcome {
    with_our_nat(ctx, exchange_as_b(ctx, peer, via).await)
}

/// Our NAT's class in the record, whatever became of the punch (the peer's
/// has no field in DCUtR).
fn with_our_nat(ctx: &Libp2pPunchContext, mut out: Libp2pOutcome) -> Libp2pOutcome {
    out.record.nat_ours = crate::nat::brief_of(&ctx.known_nat);
    out
}

async fn exchange_as_b(ctx: &Libp2pPunchContext, peer: PeerId, via: Multiaddr) -> Libp2pOutcome {
    let asked = Instant::now();
    let role = SessionRole::Responder;
    let mut control = ctx.libp2p.control.clone();
    let mut stream = match tokio::time::timeout(
        ctx.session.handshake_timeout,
        control.open_stream(peer, exchange::PROTOCOL),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return failed(
                role,
                &via,
                Stage::Coordination,
                format!("opening the exchange with {peer}: {e}"),
            )
        }
        Err(_) => {
            return failed(
                role,
                &via,
                Stage::Coordination,
                format!("opening the exchange with {peer} timed out"),
            )
        }
    };
    let (ours, own_ports) = ctx.offer(&via).await;
    let mut machine = SideB::new(ours, ctx.allow_private);
    let mut bytes: u64 = 0;
    let mut last_error = String::new();
    let mut first_syn = None;
    // SYNs of the rounds that failed; the winning round adds its own.
    let mut spent = Spent::default();
    let timeout = ctx.session.handshake_timeout;
    let punched = loop {
        let step = match machine.start_round(Instant::now().into_std()) {
            Ok(step) => step,
            Err(e) => {
                let mut out = failed(role, &via, Stage::Punch, format!("{e} ({last_error})"));
                out.record.attempts = machine.round();
                spent.fill(&mut out.record);
                out.record.bytes.coordination = bytes;
                out.record.t_ms.first_syn = first_syn.map(|t| ms_since(asked, t));
                ctx.libp2p.disconnect(peer).await;
                return out;
            }
        };
        let result: Result<_, ExchangeError> = async {
            if let Step::Send(msg) = step {
                let n = exchange::write_message(&mut stream, &msg).await?;
                bytes = bytes.saturating_add(n as u64);
            }
            let (reply, n) = tokio::time::timeout(timeout, exchange::read_message(&mut stream))
                .await
                .map_err(|_| ExchangeError::Io(std::io::ErrorKind::TimedOut.into()))??;
            bytes = bytes.saturating_add(n as u64);
            let mut plan = None;
            for step in machine.on_message(Instant::now().into_std(), reply)? {
                match step {
                    Step::Send(msg) => {
                        let n = exchange::write_message(&mut stream, &msg).await?;
                        bytes = bytes.saturating_add(n as u64);
                    }
                    Step::Punch {
                        candidates,
                        guesses,
                        start,
                        rtt,
                    } => {
                        plan = Some(Round {
                            candidates,
                            guesses,
                            start: Instant::from_std(start),
                            rtt: rtt.unwrap_or_default(),
                        })
                    }
                    Step::Receive => {}
                }
            }
            plan.ok_or(ExchangeError::Unexpected {
                got: "CONNECT without a punch",
                expected: "a punch plan",
            })
        }
        .await;
        let round = match result {
            Ok(round) => round,
            Err(e) => {
                tracing::info!(%peer, error = %e, "closing the exchange stream");
                ctx.libp2p.disconnect(peer).await;
                let mut out = failed(role, &via, Stage::Coordination, e.to_string());
                out.record.bytes.coordination = bytes;
                return out;
            }
        };
        if round.candidates.is_empty() {
            ctx.libp2p.disconnect(peer).await;
            return failed(
                role,
                &via,
                Stage::Coordination,
                format!("{peer} offered no address to punch to"),
            );
        }
        let coordinated = Instant::now();
        let claims = punch::claim(&ctx.router, &round.candidates);
        let first = machine.round() == 1;
        match punch_once(
            ctx,
            role,
            peer,
            round.once(first, &own_ports, &ctx.port),
            claims,
        )
        .await
        {
            Ok(p) => break (p, coordinated),
            Err(e) => {
                first_syn = first_syn.or(e.first_syn);
                spent.add(e.syns, e.birthday_ports);
                last_error = e.to_string();
            }
        }
    };
    let (punched, coordinated) = punched;
    let attempts = machine.round();
    finish(
        ctx,
        punched,
        role,
        peer,
        asked,
        Coordination {
            via,
            rounds: attempts,
            done_at: coordinated,
            bytes,
            predicted: OwnPorts::predicted(&own_ports),
            spent,
        },
    )
    .await
}

/// What we offer the peer (our addresses, and behind a symmetric NAT the
/// ports we predict), made in its own task from when the circuit is dialed.
pub type EarlyOffer = tokio::task::JoinHandle<(Vec<Multiaddr>, Option<OwnPorts>)>;

pub fn start_offer(ctx: &Libp2pPunchContext, via: &Multiaddr) -> EarlyOffer {
    let ctx = ctx.clone();
    let via = via.clone();
    tokio::spawn(async move { ctx.offer(&via).await })
}

/// A's side: we dialed `peer` through `via`; wait for its exchange, punch,
/// and be the BIP324 initiator. `asked`: when the connection was asked for.
pub async fn punch_as_a(
    ctx: &Libp2pPunchContext,
    peer: PeerId,
    via: Multiaddr,
    asked: Instant,
    stream: ::libp2p::Stream,
    offer: EarlyOffer,
) -> Libp2pOutcome {
    with_our_nat(
        ctx,
        exchange_as_a(ctx, peer, via, asked, stream, offer).await,
    )
}

async fn exchange_as_a(
    ctx: &Libp2pPunchContext,
    peer: PeerId,
    via: Multiaddr,
    asked: Instant,
    stream: ::libp2p::Stream,
    offer: EarlyOffer,
) -> Libp2pOutcome {
    let role = SessionRole::Initiator;
    let mut stream = stream;
    let timeout = ctx.session.handshake_timeout;
    // Our offer (a NAT probe, maybe) was started with the dial and may
    // still be on its way. The peer times its dial by how long our reply
    // took: should the CONNECT come first, the offer gets a moment more and
    // is then sent without its prediction, rather than a probe's timeout
    // late (a probe server that drops SYNs, or a lost SYN, cost the round:
    // the dials missed each other by half a second).
    let (mut first, (ours, own_ports)) = {
        let offer = async {
            match offer.await {
                Ok(made) => made,
                Err(_) => (ctx.observed_now(&via), None),
            }
        };
        let read_first = tokio::time::timeout(timeout, exchange::read_message(&mut stream));
        tokio::pin!(offer, read_first);
        let mut made = None;
        let first = loop {
            tokio::select! {
                o = &mut offer, if made.is_none() => made = Some(o),
                m = &mut read_first => break m,
            }
        };
        let made = match made {
            Some(made) => made,
            None => match tokio::time::timeout(OFFER_GRACE, &mut offer).await {
                Ok(made) => made,
                Err(_) => {
                    tracing::debug!(%peer, "the peer's CONNECT came before our prediction: offering without it");
                    (ctx.observed_now(&via), None)
                }
            },
        };
        let first = first.map_err(|_| ExchangeError::Io(std::io::ErrorKind::TimedOut.into()));
        (Some(first), made)
    };
    let ours_offered = ours.clone();
    let mut machine = SideA::new(ours, ctx.allow_private);
    let mut claims: Vec<crate::net::router::Expectation> = Vec::new();
    let mut bytes: u64 = 0;
    let mut rounds: u32 = 0;
    let mut first_syn = None;
    // SYNs of the rounds that failed; the winning round adds its own.
    let mut spent = Spent::default();
    let mut last_error = String::from("the peer gave up");
    let punched = loop {
        let plan: Result<Option<Round>, ExchangeError> = async {
            let (msg, n) = match first.take() {
                Some(first) => first??,
                None => tokio::time::timeout(timeout, exchange::read_message(&mut stream))
                    .await
                    .map_err(|_| ExchangeError::Io(std::io::ErrorKind::TimedOut.into()))??,
            };
            bytes = bytes.saturating_add(n as u64);
            let connect = match &msg {
                exchange::ExchangeMessage::Connect(addrs) => Some(addrs.clone()),
                exchange::ExchangeMessage::Sync => None,
            };
            for step in machine.on_message(Instant::now().into_std(), msg)? {
                match step {
                    Step::Send(m) => {
                        let n = exchange::write_message(&mut stream, &m).await?;
                        bytes = bytes.saturating_add(n as u64);
                    }
                    Step::Punch {
                        candidates,
                        guesses,
                        start,
                        ..
                    } => {
                        return Ok(Some(Round {
                            candidates,
                            guesses,
                            start: Instant::from_std(start),
                            rtt: Duration::ZERO,
                        }))
                    }
                    Step::Receive => {}
                }
            }
            // B dials RTT/2 after its SYNC, which travels through the relay:
            // B's SYN can beat the SYNC here. Claim B's connections now.
            if let Some(addrs) = connect {
                let candidates = exchange::candidates(&addrs, &ours_offered, ctx.allow_private);
                claims = punch::claim(&ctx.router, &candidates);
            }
            Ok(None)
        }
        .await;
        match plan {
            Ok(None) => continue,
            Ok(Some(round)) => {
                rounds = rounds.saturating_add(1);
                let coordinated = Instant::now();
                if round.candidates.is_empty() {
                    last_error = format!("{peer} offered no address to punch to");
                    continue;
                }
                let first = rounds == 1;
                let claims = std::mem::take(&mut claims);
                match punch_once(
                    ctx,
                    role,
                    peer,
                    round.once(first, &own_ports, &ctx.port),
                    claims,
                )
                .await
                {
                    Ok(p) => break (p, coordinated),
                    Err(e) => {
                        first_syn = first_syn.or(e.first_syn);
                        spent.add(e.syns, e.birthday_ports);
                        last_error = e.to_string();
                    }
                }
            }
            Err(e) => {
                // The stream ends when B gives up after its rounds.
                let stage = if rounds > 0 {
                    Stage::Punch
                } else {
                    Stage::Coordination
                };
                let reason = if rounds > 0 {
                    format!("no direct connection after {rounds} rounds ({last_error})")
                } else {
                    e.to_string()
                };
                ctx.libp2p.disconnect(peer).await;
                let mut out = failed(role, &via, stage, reason);
                out.record.attempts = rounds;
                spent.fill(&mut out.record);
                out.record.bytes.coordination = bytes;
                out.record.t_ms.first_syn = first_syn.map(|t| ms_since(asked, t));
                return out;
            }
        }
    };
    let (punched, coordinated) = punched;
    finish(
        ctx,
        punched,
        role,
        peer,
        asked,
        Coordination {
            via,
            rounds,
            done_at: coordinated,
            bytes,
            predicted: OwnPorts::predicted(&own_ports),
            spent,
        },
    )
    .await
}

/// One exchange round's plan.
struct Round {
    candidates: Vec<SocketAddr>,
    /// The peer's ports to dial once (its prediction or birthday guesses).
    guesses: Vec<SocketAddr>,
    start: Instant,
    rtt: Duration,
}

impl Round {
    /// What this round's punch does. A birthday (our mappings, or our
    /// dials to the peer's guesses) belongs to the first round only: it
    /// is paid whole once per punch, and a second one is as likely to miss.
    ///
    /// Nor is there a birthday beside a candidate of the other address
    /// family that our shared port can dial (dual stack: IPv6 behind
    /// stateful firewalls, most often, punches with one SYN a side). Both
    /// sides see both offers by now and decide alike, so neither opens
    /// mappings or dials guesses for nothing.
    fn once(self, first_round: bool, own_ports: &Option<OwnPorts>, port: &SharedPort) -> OneRound {
        let first_family = self.candidates.first().map(SocketAddr::is_ipv4);
        let racing_other_family = self
            .candidates
            .iter()
            .any(|c| Some(c.is_ipv4()) != first_family && port.has_family_of(*c));
        let birthday =
            first_round && !racing_other_family && matches!(own_ports, Some(OwnPorts::Birthday(_)));
        let birthday_guesses = self.guesses.len() > predict::MAX_SEQUENCE_PORTS;
        let guesses = if !birthday_guesses || (first_round && !racing_other_family) {
            self.guesses
        } else {
            Vec::new()
        };
        OneRound {
            round: Round { guesses, ..self },
            birthday_mappings: birthday,
        }
    }
}

struct OneRound {
    round: Round,
    birthday_mappings: bool,
}

/// One attempt of the punch engine: each exchange round is one attempt,
/// as in DCUtR; the rounds themselves re-synchronise the two sides.
async fn punch_once(
    ctx: &Libp2pPunchContext,
    role: SessionRole,
    peer: PeerId,
    plan: OneRound,
    claims: Vec<crate::net::router::Expectation>,
) -> Result<punch::Punched, punch::PunchError> {
    let OneRound {
        round,
        birthday_mappings,
    } = plan;
    let config = ScheduleConfig {
        attempts: 1,
        ..ScheduleConfig::for_rtt(round.rtt)
    };
    let start = round.start.later(ctx.dial_delay);
    let late = (!round.guesses.is_empty()).then(|| {
        let (told, endpoints) = tokio::sync::oneshot::channel();
        let _ = told.send(round.guesses);
        punch::LateCandidates {
            endpoints,
            router: ctx.router.clone(),
        }
    });
    punch::punch_claimed(
        &ctx.port,
        PunchPlan {
            candidates: round.candidates,
            start,
            config,
            requester: format!("libp2p:{peer}"),
            late,
            birthday_mappings,
            pick_where_peer_speaks: role == SessionRole::Responder,
        },
        claims,
    )
    .await
}

/// SYNs of the rounds so far.
#[derive(Default, Clone, Copy)]
struct Spent {
    syns: u32,
    birthday_ports: u32,
}

impl Spent {
    fn add(&mut self, syns: u32, birthday_ports: u32) {
        self.syns = self.syns.saturating_add(syns);
        self.birthday_ports = self.birthday_ports.saturating_add(birthday_ports);
    }

    fn fill(self, record: &mut Outcome) {
        record.syns = self.syns;
        record.birthday_ports = self.birthday_ports;
    }
}

/// What the exchange did before the punch, for the record.
struct Coordination {
    via: Multiaddr,
    /// Exchange rounds (each one punch attempt).
    rounds: u32,
    /// When the last round's plan was known.
    done_at: Instant,
    /// libp2p bytes the exchange cost (relay, identify, exchange).
    bytes: u64,
    /// The ports we predicted for our punch (behind a symmetric NAT).
    predicted: Vec<u16>,
    /// SYNs of the rounds before the winning one.
    spent: Spent,
}

/// The shared pipeline ([`crate::punch::upgrade`]) with the libp2p
/// identity as the proof; then the relayed connection is closed.
async fn finish(
    ctx: &Libp2pPunchContext,
    punched: punch::Punched,
    role: SessionRole,
    peer: PeerId,
    asked: Instant,
    coordination: Coordination,
) -> Libp2pOutcome {
    let proof = Libp2pIdentityProof {
        key: &ctx.libp2p.keypair,
        role,
        peer,
    };
    let mut spent = coordination.spent;
    spent.add(punched.syns, punched.birthday_ports);
    // The round's candidates and the peer's predicted ports (a birthday's
    // guesses are counted, not listed).
    let candidates = punched.candidates.iter().map(|c| c.to_string()).collect();
    let crate::punch::upgrade::Finished {
        mut record,
        session,
        spliced,
    } = crate::punch::upgrade::finish(
        punched,
        Path::Libp2p,
        role,
        &ctx.session,
        asked,
        &proof,
        &ctx.ending,
    )
    .await;
    record.via = Some(coordination.via.to_string());
    record.candidates = candidates;
    record.attempts = coordination.rounds;
    record.predicted_ports = coordination.predicted;
    spent.fill(&mut record);
    record.t_ms.coordination = Some(ms_since(asked, coordination.done_at));
    record.bytes.coordination = coordination.bytes;
    // The relayed connection has done its job, whatever became of the
    // session: nothing else runs over it.
    ctx.libp2p.disconnect(peer).await;
    Libp2pOutcome {
        record,
        session,
        spliced,
    }
}

fn role_byte(role: SessionRole) -> u8 {
    match role {
        SessionRole::Initiator => 0,
        SessionRole::Responder => 1,
    }
}

fn signed(session_id: &[u8], role: SessionRole) -> Vec<u8> {
    let mut data = AUTH_DOMAIN.to_vec();
    data.extend_from_slice(session_id);
    data.push(role_byte(role));
    data
}

/// `bpauth`: a [`proof_payload`] over (domain ‖ session id ‖ signer's
/// role).
#[allow(
    clippy::expect_used,
    reason = "AUTH_COMMAND is a constant 6-byte ASCII command"
)]
pub fn encode_auth(
    key: &identity::Keypair,
    session_id: &[u8],
    role: SessionRole,
) -> NetworkMessage {
    NetworkMessage::Unknown {
        command: CommandString::try_from_static(AUTH_COMMAND).expect("a valid command"),
        payload: proof_payload(key, &signed(session_id, role)),
    }
}

/// key length (u8) ‖ protobuf public key ‖ signature length (u8) ‖
/// signature over `data`.
fn proof_payload(key: &identity::Keypair, data: &[u8]) -> Vec<u8> {
    let public = key.public().encode_protobuf();
    // Signing fails only for key types we never create (RSA in a browser).
    let signature = key.sign(data).unwrap_or_default();
    let mut payload = vec![u8::try_from(public.len()).unwrap_or(u8::MAX)];
    payload.extend_from_slice(&public);
    payload.push(u8::try_from(signature.len()).unwrap_or(u8::MAX));
    payload.extend_from_slice(&signature);
    payload
}

pub fn verify_auth(
    payload: &[u8],
    expected: PeerId,
    session_id: &[u8],
    peer_role: SessionRole,
) -> Result<(), String> {
    check_proof_payload(
        payload,
        expected,
        &signed(session_id, peer_role),
        "this BIP324 session",
    )
}

/// Checks a [`proof_payload`] by `expected` over `data` (`what`, for the
/// message).
fn check_proof_payload(
    payload: &[u8],
    expected: PeerId,
    data: &[u8],
    what: &str,
) -> Result<(), String> {
    let field = |at: usize| -> Result<(&[u8], usize), String> {
        let len = *payload.get(at).ok_or("bpauth ends early")? as usize;
        if len > MAX_AUTH_FIELD {
            return Err("bpauth field too long".into());
        }
        let from = at.saturating_add(1);
        let to = from.saturating_add(len);
        let bytes = payload.get(from..to).ok_or("bpauth ends early")?;
        Ok((bytes, to))
    };
    let (public, next) = field(0)?;
    let (signature, end) = field(next)?;
    if end != payload.len() {
        return Err("bpauth has trailing bytes".into());
    }
    let public =
        identity::PublicKey::try_decode_protobuf(public).map_err(|e| format!("bpauth key: {e}"))?;
    if public.to_peer_id() != expected {
        return Err(format!(
            "the punched peer is {}, not {expected} that we reached through the relay: someone is in the middle",
            public.to_peer_id()
        ));
    }
    if !public.verify(data, signature) {
        return Err(format!(
            "{expected} did not sign {what}: someone is in the middle"
        ));
    }
    Ok(())
}

fn splice_signed(transcript: &[u8; 32]) -> Vec<u8> {
    let mut data = SPLICE_DOMAIN.to_vec();
    data.extend_from_slice(transcript);
    data
}

/// Each side signs (session id, own role) with its libp2p identity, the
/// one the relay connected us to: someone in the middle of the direct
/// connection cannot sign as the peer we reached through the relay.
struct Libp2pIdentityProof<'a> {
    key: &'a identity::Keypair,
    role: SessionRole,
    peer: PeerId,
}

impl crate::punch::upgrade::Proof for Libp2pIdentityProof<'_> {
    fn ours(&self, session_id: &[u8; 32]) -> NetworkMessage {
        encode_auth(self.key, session_id, self.role)
    }

    fn check(&self, msg: &NetworkMessage, session_id: &[u8; 32]) -> Result<bool, String> {
        let peer_role = match self.role {
            SessionRole::Initiator => SessionRole::Responder,
            SessionRole::Responder => SessionRole::Initiator,
        };
        match msg {
            NetworkMessage::Unknown { command, payload } if command.as_ref() == AUTH_COMMAND => {
                verify_auth(payload, self.peer, session_id, peer_role).map(|()| true)
            }
            _ => Ok(false),
        }
    }

    fn expected(&self) -> String {
        self.peer.to_string()
    }

    fn sign_splice(&self, transcript: &[u8; 32]) -> Vec<u8> {
        proof_payload(self.key, &splice_signed(transcript))
    }

    fn check_splice(&self, transcript: &[u8; 32], proof: &[u8]) -> Result<(), String> {
        check_proof_payload(
            proof,
            self.peer,
            &splice_signed(transcript),
            "these Bitcoin nodes' first bytes",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_binds_peer_session_and_role() {
        let alice = identity::Keypair::generate_ed25519();
        let mallory = identity::Keypair::generate_ed25519();
        let session = [7u8; 32];
        let payload =
            |key: &identity::Keypair, session: &[u8], role| match encode_auth(key, session, role) {
                NetworkMessage::Unknown { payload, .. } => payload,
                _ => unreachable!(),
            };
        let good = payload(&alice, &session, SessionRole::Initiator);
        let alice_id = alice.public().to_peer_id();
        assert!(verify_auth(&good, alice_id, &session, SessionRole::Initiator).is_ok());
        assert!(verify_auth(&good, alice_id, &[8u8; 32], SessionRole::Initiator).is_err());
        assert!(verify_auth(&good, alice_id, &session, SessionRole::Responder).is_err());
        let e = verify_auth(
            &payload(&mallory, &session, SessionRole::Initiator),
            alice_id,
            &session,
            SessionRole::Initiator,
        )
        .unwrap_err();
        assert!(e.contains("in the middle"), "{e}");
        for cut in 0..good.len() {
            assert!(verify_auth(&good[..cut], alice_id, &session, SessionRole::Initiator).is_err());
        }
    }
}
