//! Outcome records (DESIGN.md decision 6): every attempt ends in one JSON
//! object; tables, plots and benchmarks are built from these only.

pub mod bound;
pub mod svg;
pub mod table;

use serde::{Deserialize, Serialize};

use crate::wire::{Phases, SessionError, SessionReport, SessionRole, Stage, Transport};

/// Milliseconds from `start` to `t`, as the records' `t_ms` hold them:
/// rounded to the microsecond the clock can honestly resolve.
pub fn ms_since(start: tokio::time::Instant, t: tokio::time::Instant) -> f64 {
    let micros = t.saturating_duration_since(start).as_micros() as f64;
    micros / 1000.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Path {
    #[serde(rename = "libp2p")]
    Libp2p,
    #[serde(rename = "native")]
    Native,
    #[serde(rename = "stock-dcutr")]
    StockDcutr,
    #[serde(rename = "direct")]
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WonBy {
    Connect,
    Accept,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bytes {
    pub coordination: u64,
    pub direct: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub coordination: Option<f64>,
    /// The first SYN of the punch left (punched paths only).
    pub first_syn: Option<f64>,
    pub tcp: Option<f64>,
    pub handshake: Option<f64>,
    pub verack: Option<f64>,
    pub pong: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub path: Path,
    pub ok: bool,
    pub error: Option<String>,
    /// The step that failed, when one did.
    pub failed_at: Option<Stage>,
    pub role: SessionRole,
    pub transport: Option<Transport>,
    pub session_id: Option<String>,
    pub local: Option<String>,
    pub remote: Option<String>,
    pub via: Option<String>,
    /// The peer endpoints a punch dialed.
    pub candidates: Vec<String>,
    pub attempts: u32,
    /// SYNs the punch fired (connects started, from our punch budget).
    #[serde(default)]
    pub syns: u32,
    /// Behind a symmetric NAT: the ports we told the peer our NAT would
    /// likely give our punch (crate::punch::predict).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predicted_ports: Vec<u16>,
    /// Of `syns`, a birthday punch's (a random symmetric NAT, ours or the
    /// peer's): the mappings we opened or the guesses we dialed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub birthday_ports: u32,
    /// Our NAT's class, as our own classification last found it
    /// (`bitpunch nat`), and the peer's, as it told its coordinator
    /// (native path only: DCUtR has no field for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_ours: Option<crate::nat::NatBrief>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_peer: Option<crate::nat::NatBrief>,
    pub won_by: Option<WonBy>,
    pub t_ms: Timings,
    pub bytes: Bytes,
    pub peer_user_agent: Option<String>,
    pub peer_version: Option<u32>,
    pub peer_services: Option<u64>,
    pub peer_start_height: Option<i32>,
    /// Where the peer says it sees us (its version's `addr_recv`).
    pub peer_sees_us_at: Option<String>,
    pub rtt_ms: Option<f64>,
    /// Set when a BIP324 try failed and v1 was used instead.
    pub v2_fallback_reason: Option<String>,
    /// Where it ran, for records of the NAT lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab: Option<LabContext>,
    /// A sidecar's punch: the local Bitcoin node the connection was
    /// spliced to (its BIP324 session is the Bitcoin nodes', not ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spliced_to: Option<String>,
}

/// The lab conditions of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabContext {
    /// Alice's (the connecting side's) NAT profile, and Bob's.
    pub nat_alice: String,
    pub nat_bob: String,
    /// One-way delay and loss on each NAT's internet link.
    pub delay_ms: f64,
    /// Bob's NAT's link, when it differs from Alice's (`--bob-delay-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bob_delay_ms: Option<f64>,
    /// The run was over IPv6 (`lab run --ipv6`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ipv6: bool,
    /// The run was dual-stack (`lab run --dual-stack`): relay and
    /// coordinator named by IPv4, everything listening on both families.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dual_stack: bool,
    pub loss_percent: f64,
    /// Each packet's delay is drawn from `delay_ms ± jitter_ms`.
    #[serde(default)]
    pub jitter_ms: f64,
    pub try_index: u32,
}

impl Outcome {
    fn empty(path: Path, role: SessionRole) -> Outcome {
        Outcome {
            path,
            ok: false,
            error: None,
            failed_at: None,
            role,
            transport: None,
            session_id: None,
            local: None,
            remote: None,
            via: None,
            candidates: Vec::new(),
            attempts: 1,
            syns: 0,
            predicted_ports: Vec::new(),
            birthday_ports: 0,
            nat_ours: None,
            nat_peer: None,
            won_by: None,
            t_ms: Timings::default(),
            bytes: Bytes::default(),
            peer_user_agent: None,
            peer_version: None,
            peer_services: None,
            peer_start_height: None,
            peer_sees_us_at: None,
            rtt_ms: None,
            v2_fallback_reason: None,
            lab: None,
            spliced_to: None,
        }
    }

    pub fn from_session(path: Path, report: &SessionReport) -> Outcome {
        let Phases {
            tcp,
            handshake,
            verack,
            pong,
        } = report.t_ms.clone();
        Outcome {
            ok: true,
            transport: Some(report.transport),
            session_id: report.session_id.clone(),
            local: Some(report.local.to_string()),
            remote: Some(report.remote.to_string()),
            t_ms: Timings {
                coordination: None,
                first_syn: None,
                tcp,
                handshake,
                verack,
                pong,
            },
            bytes: Bytes {
                coordination: 0,
                direct: report.bytes_sent + report.bytes_received,
            },
            peer_user_agent: Some(report.peer.user_agent.clone()),
            peer_version: Some(report.peer.version),
            peer_services: Some(report.peer.services),
            peer_start_height: Some(report.peer.start_height),
            peer_sees_us_at: report.peer.sees_us_at.map(|a| a.to_string()),
            rtt_ms: report.rtt_ms,
            ..Outcome::empty(path, report.role)
        }
    }

    pub fn from_error(
        path: Path,
        role: SessionRole,
        remote: Option<String>,
        error: &SessionError,
    ) -> Outcome {
        Outcome {
            error: Some(error.to_string()),
            failed_at: Some(error.stage),
            remote,
            ..Outcome::empty(path, role)
        }
    }

    /// A failure before or during a punch, with what is known by then.
    pub fn failed(path: Path, role: SessionRole, stage: Stage, error: String) -> Outcome {
        Outcome {
            error: Some(error),
            failed_at: Some(stage),
            ..Outcome::empty(path, role)
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("outcome records always serialize")
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
