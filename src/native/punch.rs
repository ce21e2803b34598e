//! Carrying out one punch order: the timed simultaneous open from the shared
//! port, BIP324 on the winner with roles from the order, version/verack/ping,
//! and the proof of the node keys over the BIP324 session id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::machine::PunchOrder;
use super::messages::{NativeMessage, PunchResult, PunchRole, SESSION_TAG, SPLICE_TAG};
use crate::clock::Later;
use crate::identity::{self, NodeId, NodeKey};
use crate::net::{Router, SharedPort};
use crate::punch::predict::OwnPorts;
use crate::punch::{self, PunchPlan, PunchedStream, ScheduleConfig};
use crate::report::{Outcome, Path};
use crate::wire::{Session, SessionConfig, SessionRole, Stage};
use bitcoin::p2p::message::NetworkMessage;

#[derive(Clone)]
pub struct PunchContext {
    pub port: Arc<SharedPort>,
    pub router: Arc<Router>,
    pub key: Arc<NodeKey>,
    pub session: SessionConfig,
    pub coordinator: super::client::CoordinatorEndpoint,
    /// RTT to the coordinator, to size the punch attempts.
    pub coordinator_rtt: Duration,
    /// What becomes of a punched connection: our session, or a sidecar's
    /// splice.
    pub ending: crate::punch::upgrade::Ending,
    /// Set when the coordinator answers NAT probes and passes predicted
    /// ports on: what a punch from behind a symmetric NAT needs.
    pub prediction: Option<PredictionLink>,
    /// What the node last learnt of its NAT (`bitpunch nat`), if anything.
    pub known_nat: crate::nat::NatMemory,
    /// A NAT probe made while the request was on its way, for the first
    /// punch over this link.
    pub early_probe: Option<EarlyProbe>,
}

type ProbeAnswer = Option<(std::net::IpAddr, OwnPorts)>;
/// The probe's answer, with the mapping it was made for and how long it
/// took.
type ProbeTask = tokio::task::JoinHandle<Option<(SocketAddr, ProbeAnswer, Duration)>>;

/// The requester's NAT probe, started as soon as its coordinator session
/// is up instead of after the order: the order comes two round trips
/// later, about what a probe takes, so a NAT that changes ports costs the
/// punch (almost) nothing more. The session's mapping exists by then, so
/// the punch's connections are still the next ones the NAT maps.
#[derive(Clone)]
pub struct EarlyProbe(Arc<std::sync::Mutex<Option<ProbeTask>>>);

impl EarlyProbe {
    /// Probes from `port` once `session_up` says where the coordinator's
    /// `version` sees us (the probe server is the coordinator's port + 1).
    pub fn start(
        port: Arc<SharedPort>,
        coordinator: SocketAddr,
        known_nat: crate::nat::NatMemory,
        session_up: tokio::sync::oneshot::Receiver<super::client::SessionUp>,
    ) -> EarlyProbe {
        let task = tokio::spawn(async move {
            let up = session_up.await.ok()?;
            let observed = up.sees_us_at?;
            let probe = crate::nat::probe_server(coordinator)?;
            let endpoint_independent = std::sync::atomic::AtomicBool::new(false);
            let began = Instant::now();
            let answer = punch::OwnPrediction {
                port: &port,
                observed,
                probe,
                known: &known_nat,
                endpoint_independent: &endpoint_independent,
                timeout: probe_timeout(up.rtt),
            }
            .ports()
            .await;
            Some((observed, answer, began.elapsed()))
        });
        EarlyProbe(Arc::new(std::sync::Mutex::new(Some(task))))
    }

    /// The probe's answer and how long it took, once, if it was made for
    /// the mapping the coordinator registered (`observed`); `None` if not
    /// (then the punch probes itself).
    async fn answer(&self, observed: SocketAddr) -> Option<(ProbeAnswer, Duration)> {
        let task = crate::clock::lock(&self.0).take()?;
        match task.await {
            Ok(Some((seen, answer, took))) if seen == observed => Some((answer, took)),
            _ => None,
        }
    }
}

fn probe_timeout(coordinator_rtt: Duration) -> Duration {
    coordinator_rtt
        .saturating_mul(4)
        .clamp(Duration::from_millis(300), Duration::from_secs(2))
}

/// What port prediction needs of the coordinator link.
#[derive(Clone)]
pub struct PredictionLink {
    pub link: super::client::LinkHandle,
    /// Where the coordinator sees the link: our shared port's mapping.
    pub observed: SocketAddr,
    /// The coordinator's NAT probe server.
    pub probe: SocketAddr,
    /// A probe over this link found our mapping endpoint-independent: the
    /// NAT will not change its mind while the link lasts, so no punch
    /// over it probes again.
    endpoint_independent: Arc<std::sync::atomic::AtomicBool>,
}

impl PredictionLink {
    /// `None` unless the coordinator announced both NAT probes and port
    /// prediction.
    pub fn of(link: &super::client::LinkAccess) -> Option<PredictionLink> {
        use super::messages::{FEATURE_NAT_PROBE, FEATURE_PORT_PREDICTION};
        let both = FEATURE_NAT_PROBE | FEATURE_PORT_PREDICTION;
        let addr = link.coordinator.addr;
        (link.features & both == both).then_some(())?;
        Some(PredictionLink {
            link: link.handle.clone(),
            observed: link.observed,
            probe: crate::nat::probe_server(addr)?,
            endpoint_independent: link.endpoint_independent.clone(),
        })
    }
}

/// What a punch produced: its record, the session when it worked, and the
/// result to report to the coordinator.
pub struct PunchOutcome {
    pub record: Outcome,
    pub session: Option<Session<PunchedStream>>,
    /// A sidecar's punch: the splice to run instead of a session.
    pub spliced: Option<crate::sidecar::Spliced>,
    pub result: PunchResult,
}

fn role_of(role: PunchRole) -> SessionRole {
    match role {
        PunchRole::Initiator => SessionRole::Initiator,
        PunchRole::Responder => SessionRole::Responder,
    }
}

/// `asked_at`: when the connection was asked for (the requester's request,
/// or for the responder the order's arrival); `received_at`: when the order
/// arrived. Phase times count from `asked_at`.
pub async fn execute(
    ctx: &PunchContext,
    order: PunchOrder,
    predicted: tokio::sync::oneshot::Receiver<Vec<SocketAddr>>,
    asked_at: Instant,
    received_at: Instant,
) -> PunchOutcome {
    let role = role_of(order.role);
    let ms = |t: Instant| Some(crate::report::ms_since(asked_at, t));
    let mut record = Outcome::failed(Path::Native, role, Stage::Punch, String::new());
    record.via = Some(ctx.coordinator.to_string());
    // The peer's public endpoint, where it is on the network we share with
    // it when it is behind our own NAT (no hairpinning needed), and its
    // endpoint in the other family when we can dial that family: all raced
    // at once (a punch's SYNs must cross, so no family waits for the other).
    let other_family = order
        .other_family
        .filter(|other| ctx.port.has_family_of(*other));
    let candidates: Vec<SocketAddr> = std::iter::once(order.peer)
        .chain(order.local.iter().copied())
        .chain(other_family)
        .collect();
    record.t_ms.coordination = ms(received_at);
    record.nat_ours = crate::nat::brief_of(&ctx.known_nat);
    record.nat_peer = order.peer_nat;
    // Before our first SYN, so that it takes the port we predict.
    let (own_ports, early_probe_took) =
        match predict_our_ports(ctx, &order, other_family.is_some()).await {
            Some((ours, took)) => (Some(ours), took),
            None => (None, None),
        };
    record.predicted_ports = OwnPorts::predicted(&own_ports);

    let mut start = received_at.later(order.delay);
    if own_ports.is_some() {
        // Our SYN should meet the peer's SYNs to the predicted ports, not
        // arrive before the peer has heard of them: a SYN that finds the
        // peer's NAT closed is lost (or, where stale state from an earlier
        // punch lets it in, answered on a state the peer's SYN then
        // contradicts). The prediction takes about one of our round trips
        // to the coordinator to reach the peer.
        let mut wait = ctx.coordinator_rtt;
        // A peer that may be behind a symmetric NAT too probes after its
        // order, which we did early: its own prediction comes about as much
        // later. A first SYN to its unpredicted endpoint meanwhile would
        // spend one of the ports we predicted.
        let peer_maps_alike = order
            .peer_nat
            .is_some_and(|peer| peer.mapping == crate::nat::MappingBehaviour::EndpointIndependent);
        if !peer_maps_alike {
            wait = wait.saturating_add(early_probe_took.unwrap_or_default());
        }
        start = start.max(Instant::now().later(wait));
    }
    let plan = PunchPlan {
        candidates,
        start,
        config: ScheduleConfig::for_rtt(ctx.coordinator_rtt.saturating_mul(2)),
        requester: format!("native:{}", NodeId::of(&order.peer_key)),
        late: Some(punch::LateCandidates {
            endpoints: predicted,
            router: ctx.router.clone(),
        }),
        birthday_mappings: matches!(own_ports, Some(OwnPorts::Birthday(_))),
        pick_where_peer_speaks: order.role == PunchRole::Responder,
    };
    let punched = match punch::punch(&ctx.port, &ctx.router, plan).await {
        Ok(p) => p,
        Err(e) => {
            record.error = Some(e.to_string());
            record.attempts = e.attempts;
            record.syns = e.syns;
            record.birthday_ports = e.birthday_ports;
            record.candidates = e.candidates.iter().map(|c| c.to_string()).collect();
            record.t_ms.first_syn = e.first_syn.and_then(ms);
            return PunchOutcome {
                record,
                session: None,
                spliced: None,
                result: PunchResult::NoConnection,
            };
        }
    };
    record.attempts = punched.attempts;
    record.syns = punched.syns;
    record.birthday_ports = punched.birthday_ports;
    record.candidates = punched.candidates.iter().map(|c| c.to_string()).collect();
    let proof = NodeKeyProof {
        key: &ctx.key,
        order: &order,
    };
    let crate::punch::upgrade::Finished {
        record: mut upgraded,
        session,
        spliced,
    } = crate::punch::upgrade::finish(
        punched,
        Path::Native,
        role,
        &ctx.session,
        asked_at,
        &proof,
        &ctx.ending,
    )
    .await;
    carry_punch_fields(record, &mut upgraded);
    let result = match (upgraded.ok, upgraded.failed_at) {
        (true, _) => PunchResult::Connected,
        (false, Some(Stage::Auth)) => PunchResult::AuthFailed,
        (false, _) => PunchResult::HandshakeFailed,
    };
    PunchOutcome {
        record: upgraded,
        session,
        spliced,
        result,
    }
}

/// What the record says about the coordination and the punch itself (the
/// upgrade's record knows only the connection): onto the upgraded record.
fn carry_punch_fields(punch: Outcome, upgraded: &mut Outcome) {
    upgraded.via = punch.via;
    upgraded.candidates = punch.candidates;
    upgraded.attempts = punch.attempts;
    upgraded.syns = punch.syns;
    upgraded.birthday_ports = punch.birthday_ports;
    upgraded.predicted_ports = punch.predicted_ports;
    upgraded.nat_ours = punch.nat_ours;
    upgraded.nat_peer = punch.nat_peer;
    upgraded.t_ms.coordination = punch.t_ms.coordination;
}

/// Behind a symmetric NAT the coordinator's view of our port is useless
/// to the peer: ask the probe server where our latest connection appears,
/// and tell the peer (through the coordinator) the ports that follow (the
/// punch's own connections take them next), or, for a NAT that allocates
/// at random, a birthday's guesses. No birthday toward a peer that said
/// its own NAT maps each destination apart: its SYNs would not come from
/// the endpoint our mappings point at.
/// Also says how long the probe took when it was made early (EarlyProbe).
async fn predict_our_ports(
    ctx: &PunchContext,
    order: &PunchOrder,
    racing_other_family: bool,
) -> Option<(OwnPorts, Option<Duration>)> {
    let prediction = ctx.prediction.as_ref()?;
    let early = match &ctx.early_probe {
        Some(early) => early.answer(prediction.observed).await,
        None => None,
    };
    let early_took = early.as_ref().map(|(_, took)| *took);
    let (ip, ours) = match early {
        Some((answer, _)) => answer?,
        None => {
            punch::OwnPrediction {
                port: &ctx.port,
                observed: prediction.observed,
                probe: prediction.probe,
                known: &ctx.known_nat,
                endpoint_independent: &prediction.endpoint_independent,
                timeout: probe_timeout(ctx.coordinator_rtt),
            }
            .ports()
            .await?
        }
    };
    let peer_maps_apart = order
        .peer_nat
        .is_some_and(|peer| peer.mapping != crate::nat::MappingBehaviour::EndpointIndependent);
    if matches!(ours, OwnPorts::Birthday(_)) && peer_maps_apart {
        tracing::info!(
            request = order.request,
            "no birthday punch: the peer's NAT maps each destination apart too"
        );
        return None;
    }
    // Dual stack: the other family (IPv6 behind stateful firewalls, most
    // often) punches with one SYN a side; a birthday's 256 are not spent
    // beside it. The peer, given our endpoint there too, decides the same.
    if matches!(ours, OwnPorts::Birthday(_)) && racing_other_family {
        tracing::info!(
            request = order.request,
            "no birthday punch: we race the peer's other address family instead"
        );
        return None;
    }
    prediction
        .link
        .predict(order.request, ip, ours.ports().to_vec())
        .await;
    Some((ours, early_took))
}

fn signed_data(session_id: &[u8; 32], role: PunchRole, request: u64) -> Vec<u8> {
    let mut data = session_id.to_vec();
    data.push(role as u8);
    data.extend_from_slice(&request.to_le_bytes());
    data
}

/// Both sides sign (session id, own role, request) and check the other's
/// signature against the key the order named. A coordinator that relayed
/// two BIP324 sessions has two session ids and cannot produce the peer's
/// signature over the one we see.
struct NodeKeyProof<'a> {
    key: &'a NodeKey,
    order: &'a PunchOrder,
}

impl crate::punch::upgrade::Proof for NodeKeyProof<'_> {
    fn ours(&self, session_id: &[u8; 32]) -> NetworkMessage {
        let order = self.order;
        NativeMessage::Auth {
            request: order.request,
            signature: self.key.sign(
                SESSION_TAG,
                &[&signed_data(session_id, order.role, order.request)],
            ),
        }
        .to_network()
    }

    fn check(&self, msg: &NetworkMessage, session_id: &[u8; 32]) -> Result<bool, String> {
        let order = self.order;
        let peer_role = match order.role {
            PunchRole::Initiator => PunchRole::Responder,
            PunchRole::Responder => PunchRole::Initiator,
        };
        match NativeMessage::from_network(msg).map_err(|e| e.to_string())? {
            Some(NativeMessage::Auth { request, signature }) if request == order.request => {
                let data = signed_data(session_id, peer_role, request);
                if identity::verify(&order.peer_key, SESSION_TAG, &[&data], &signature) {
                    Ok(true)
                } else {
                    Err(format!(
                        "the peer could not prove it holds the key of {}: someone (the coordinator?) may be in the middle",
                        NodeId::of(&order.peer_key)
                    ))
                }
            }
            Some(NativeMessage::Auth { request, .. }) => Err(format!(
                "hpauth for request {request}, expected {}",
                order.request
            )),
            Some(other) => Err(format!("expected hpauth, got {}", other.command())),
            None => Ok(false),
        }
    }

    fn expected(&self) -> String {
        NodeId::of(&self.order.peer_key).to_string()
    }

    fn sign_splice(&self, transcript: &[u8; 32]) -> Vec<u8> {
        let request = self.order.request.to_le_bytes();
        self.key.sign(SPLICE_TAG, &[transcript, &request]).to_vec()
    }

    fn check_splice(&self, transcript: &[u8; 32], proof: &[u8]) -> Result<(), String> {
        let request = self.order.request.to_le_bytes();
        let holds = <&[u8; 64]>::try_from(proof).is_ok_and(|signature| {
            identity::verify(
                &self.order.peer_key,
                SPLICE_TAG,
                &[transcript, &request],
                signature,
            )
        });
        if holds {
            Ok(())
        } else {
            Err(format!(
                "the peer could not prove it holds the key of {} over these Bitcoin nodes' first bytes: someone (the coordinator?) may be in the middle",
                NodeId::of(&self.order.peer_key)
            ))
        }
    }
}
