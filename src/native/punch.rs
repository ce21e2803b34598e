//! Carrying out one punch order: the timed simultaneous open from the shared
//! port, BIP324 on the winner with roles from the order, version/verack/ping,
//! and the proof of the node keys over the BIP324 session id.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::machine::PunchOrder;
use super::messages::{NativeMessage, PunchResult, PunchRole, SESSION_TAG};
use crate::clock::Later;
use crate::identity::{self, NodeId, NodeKey};
use crate::net::{Router, SharedPort};
use crate::punch::{self, PunchPlan, PunchedStream, ScheduleConfig};
use crate::report::{Outcome, Path};
use crate::wire::{
    Session, SessionConfig, SessionError, SessionRole, Stage, StreamContext, Transport, WireError,
};

#[derive(Clone)]
pub struct PunchContext {
    pub port: Arc<SharedPort>,
    pub router: Arc<Router>,
    pub key: Arc<NodeKey>,
    pub session: SessionConfig,
    pub coordinator: super::client::CoordinatorEndpoint,
    /// RTT to the coordinator, to size the punch attempts.
    pub coordinator_rtt: Duration,
}

/// What a punch produced: its record, the session when it worked, and the
/// result to report to the coordinator.
pub struct PunchOutcome {
    pub record: Outcome,
    pub session: Option<Session<PunchedStream>>,
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
    asked_at: Instant,
    received_at: Instant,
) -> PunchOutcome {
    let role = role_of(order.role);
    let ms = |t: Instant| Some(crate::report::ms_since(asked_at, t));
    let mut record = Outcome::failed(Path::Native, role, Stage::Punch, String::new());
    record.via = Some(ctx.coordinator.to_string());
    record.candidates = vec![order.peer.to_string()];
    record.t_ms.coordination = ms(received_at);

    let plan = PunchPlan {
        candidates: vec![order.peer],
        start: received_at.later(order.delay),
        config: ScheduleConfig::for_rtt(ctx.coordinator_rtt.saturating_mul(2)),
        requester: format!("native:{}", NodeId::of(&order.peer_key)),
    };
    let punched = match punch::punch(&ctx.port, &ctx.router, plan).await {
        Ok(p) => p,
        Err(e) => {
            record.error = Some(e.to_string());
            record.attempts = e.attempts;
            record.t_ms.first_syn = e.first_syn.and_then(ms);
            return PunchOutcome {
                record,
                session: None,
                result: PunchResult::NoConnection,
            };
        }
    };
    record.attempts = punched.attempts;
    record.won_by = Some(punched.won_by);
    record.t_ms.first_syn = punched.first_syn.and_then(ms);
    let counters = punched.stream.get_ref().counters();
    let stream_ctx = StreamContext {
        local: punched.local,
        remote: punched.remote,
        started: asked_at,
        tcp_at: punched.established,
        counters: counters.clone(),
    };
    let fail = |mut record: Outcome, e: SessionError, result| {
        record.error = Some(e.to_string());
        record.failed_at = Some(e.stage);
        record.local = Some(punched.local.to_string());
        record.remote = Some(punched.remote.to_string());
        record.bytes.direct = counters.total();
        PunchOutcome {
            record,
            session: None,
            result,
        }
    };
    let mut session = match Session::establish(
        punched.stream,
        stream_ctx,
        role,
        Transport::V2,
        &ctx.session,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return fail(record, e, PunchResult::HandshakeFailed),
    };
    if let Err(e) = authenticate(
        &mut session,
        &ctx.key,
        &order,
        ctx.session.handshake_timeout,
    )
    .await
    {
        return fail(record, e, PunchResult::AuthFailed);
    }
    let won_by = record.won_by;
    let mut record = Outcome {
        via: record.via,
        candidates: record.candidates,
        attempts: record.attempts,
        won_by,
        ..Outcome::from_session(Path::Native, &session.report)
    };
    record.t_ms.coordination = ms(received_at);
    record.t_ms.first_syn = punched.first_syn.and_then(ms);
    record.bytes.direct = counters.total();
    PunchOutcome {
        record,
        session: Some(session),
        result: PunchResult::Connected,
    }
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
async fn authenticate(
    session: &mut Session<PunchedStream>,
    key: &NodeKey,
    order: &PunchOrder,
    timeout: Duration,
) -> Result<(), SessionError> {
    let err = |e: WireError| SessionError::new(Stage::Auth, e);
    let session_id = session
        .session_id()
        .ok_or_else(|| err(WireError::Protocol("no BIP324 session id to sign".into())))?;
    let ours = NativeMessage::Auth {
        request: order.request,
        signature: key.sign(
            SESSION_TAG,
            &[&signed_data(&session_id, order.role, order.request)],
        ),
    };
    session
        .send_message(&ours.to_network())
        .await
        .map_err(err)?;
    let peer_role = match order.role {
        PunchRole::Initiator => PunchRole::Responder,
        PunchRole::Responder => PunchRole::Initiator,
    };
    let deadline = Instant::now().later(timeout);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match session.recv_message(left).await {
            Ok(msg) => msg,
            Err(WireError::Timeout(_)) => {
                return Err(err(WireError::Protocol(format!(
                    "the punched peer did not prove it is {} within {:.1}s: it may be someone else",
                    NodeId::of(&order.peer_key),
                    timeout.as_secs_f64()
                ))))
            }
            Err(e) => return Err(err(e)),
        };
        let native = NativeMessage::from_network(&msg)
            .map_err(|e| err(WireError::Malformed(e.to_string())))?;
        match native {
            Some(NativeMessage::Auth { request, signature }) if request == order.request => {
                let data = signed_data(&session_id, peer_role, request);
                if identity::verify(&order.peer_key, SESSION_TAG, &[&data], &signature) {
                    return Ok(());
                }
                return Err(err(WireError::Protocol(format!(
                    "the peer could not prove it holds the key of {}: someone (the coordinator?) may be in the middle",
                    NodeId::of(&order.peer_key)
                ))));
            }
            Some(NativeMessage::Auth { request, .. }) => {
                return Err(err(WireError::Protocol(format!(
                    "hpauth for request {request}, expected {}",
                    order.request
                ))))
            }
            Some(other) => {
                return Err(err(WireError::Protocol(format!(
                    "expected hpauth, got {}",
                    other.command()
                ))))
            }
            // Not ours (a pong, say): keep waiting.
            None => {}
        }
    }
}
