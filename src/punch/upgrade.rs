//! What happens after a punch, the same for both paths: the punched stream
//! becomes a BIP324 session (roles from the coordination, whichever socket
//! won), `version`/`verack`/`ping` run on it, each side proves its key over
//! the BIP324 session id, and the outcome record is written. Only the proof
//! differs between paths (a node key's Schnorr signature on the native
//! path, the libp2p identity on the libp2p path): [`Proof`].
//!
//! After this the session goes to the node that owns it
//! ([`crate::node::SessionOwner`]). A sidecar ends a punch differently
//! ([`Ending::Splice`]): the same proof, made over the splice handshake
//! instead of our BIP324 session, and the connection handed byte for byte
//! to a local Bitcoin node ([`crate::sidecar`]).

use bitcoin::p2p::message::NetworkMessage;
use tokio::time::Instant;

use super::{Punched, PunchedStream};
use crate::clock::Later;
use crate::report::{ms_since, Outcome, Path};
use crate::wire::{
    Session, SessionConfig, SessionError, SessionRole, Stage, StreamContext, Transport, WireError,
};

/// How a path proves, on the punched session, who is at each end.
pub trait Proof {
    /// Our proof over this BIP324 session id.
    fn ours(&self, session_id: &[u8; 32]) -> NetworkMessage;
    /// The peer's message: `Ok(true)` when it is the peer's proof and it
    /// holds, `Ok(false)` when it is some other message (keep waiting), an
    /// error when it is a proof that does not hold.
    fn check(&self, msg: &NetworkMessage, session_id: &[u8; 32]) -> Result<bool, String>;
    /// Whom we expect at the other end, for the timeout's message.
    fn expected(&self) -> String;
    /// Our proof over a splice handshake's transcript (a sidecar: the
    /// Bitcoin nodes run BIP324 themselves, there is no session id of ours).
    fn sign_splice(&self, transcript: &[u8; 32]) -> Vec<u8>;
    /// Checks the peer's proof over the transcript it signed.
    fn check_splice(&self, transcript: &[u8; 32], proof: &[u8]) -> Result<(), String>;
}

/// What becomes of a punched connection.
#[derive(Clone, Default)]
pub enum Ending {
    /// Our own node runs BIP324 and version/verack on it and serves it.
    #[default]
    Session,
    /// A sidecar hands it to a local Bitcoin node ([`crate::sidecar`]).
    Splice(crate::sidecar::LocalEnd),
}

/// A finished punch: its record, and the session or splice when it worked.
pub struct Finished {
    pub record: Outcome,
    pub session: Option<Session<PunchedStream>>,
    pub spliced: Option<crate::sidecar::Spliced>,
}

/// [`upgrade`], or for a sidecar the splice, by `ending`.
#[allow(clippy::too_many_arguments)]
pub async fn finish(
    punched: Punched,
    path: Path,
    role: SessionRole,
    config: &SessionConfig,
    asked: Instant,
    proof: &impl Proof,
    ending: &Ending,
) -> Finished {
    match ending {
        Ending::Session => {
            let (record, session) = upgrade(punched, path, role, config, asked, proof).await;
            Finished {
                record,
                session,
                spliced: None,
            }
        }
        Ending::Splice(local) => {
            let (record, spliced) =
                crate::sidecar::splice(punched, path, role, config, asked, proof, local).await;
            Finished {
                record,
                session: None,
                spliced,
            }
        }
    }
}

/// Runs the pipeline on `punched`. `asked`: when the connection was asked
/// for (phase times count from it). The record has the session's fields and
/// the punch's (`won_by`, `first_syn`, direct bytes, the endpoints also on
/// failure); the caller adds its path's (via, candidates, attempts,
/// coordination).
pub async fn upgrade(
    punched: Punched,
    path: Path,
    role: SessionRole,
    config: &SessionConfig,
    asked: Instant,
    proof: &impl Proof,
) -> (Outcome, Option<Session<PunchedStream>>) {
    let counters = punched.stream.get_ref().counters();
    let stream_ctx = StreamContext {
        local: punched.local,
        remote: punched.remote,
        started: asked,
        tcp_at: punched.established,
        counters: counters.clone(),
    };
    let established = async {
        let mut session =
            Session::establish(punched.stream, stream_ctx, role, Transport::V2, config).await?;
        authenticate(&mut session, proof, config).await?;
        Ok::<_, SessionError>(session)
    }
    .await;
    let (mut record, session) = match established {
        Ok(session) => (Outcome::from_session(path, &session.report), Some(session)),
        Err(e) => {
            let mut record = Outcome::failed(path, role, e.stage, e.to_string());
            record.local = Some(punched.local.to_string());
            record.remote = Some(punched.remote.to_string());
            (record, None)
        }
    };
    record.won_by = Some(punched.won_by);
    record.t_ms.first_syn = punched.first_syn.map(|t| ms_since(asked, t));
    record.bytes.direct = counters.total();
    (record, session)
}

/// Both sides send their proof and check the other's, within the
/// handshake timeout.
async fn authenticate(
    session: &mut Session<PunchedStream>,
    proof: &impl Proof,
    config: &SessionConfig,
) -> Result<(), SessionError> {
    let err = |e: WireError| SessionError::new(Stage::Auth, e);
    let session_id = session
        .session_id()
        .ok_or_else(|| err(WireError::Protocol("no BIP324 session id to sign".into())))?;
    session
        .send_message(&proof.ours(&session_id))
        .await
        .map_err(err)?;
    let timeout = config.handshake_timeout;
    let deadline = Instant::now().later(timeout);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match session.recv_message(left).await {
            Ok(msg) => msg,
            Err(WireError::Timeout(_)) => {
                return Err(err(WireError::Protocol(format!(
                    "the punched peer did not prove it is {} within {:.1}s: it may be someone else",
                    proof.expected(),
                    timeout.as_secs_f64()
                ))))
            }
            Err(e) => return Err(err(e)),
        };
        match proof.check(&msg, &session_id) {
            Ok(true) => return Ok(()),
            // Not a proof (a pong, say): keep waiting.
            Ok(false) => {}
            Err(why) => return Err(err(WireError::Protocol(why))),
        }
    }
}
