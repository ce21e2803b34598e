//! The native coordination messages. They travel as ordinary Bitcoin P2P
//! messages (long-form commands `hp…`) on a session with the coordinator, so
//! they get BIP324's encryption and any Bitcoin node could carry them. Every
//! payload has a fixed layout with a hard size limit; anything else is an
//! error that closes the connection. docs/native-protocol.md is the spec.

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use bitcoin::consensus::encode::{Decodable, Encodable};
use bitcoin::p2p::address::AddrV2;
use bitcoin::p2p::message::{CommandString, NetworkMessage};
use bitcoin::p2p::ServiceFlags;

use super::reach::{ReachRecord, MAX_REACH_RECORDS};
use crate::identity::{NodeId, ID_LEN};
use crate::nat::{Allocation, MappingBehaviour, NatBrief};

/// The service bit a coordinator sets in its `version`: bit 26, inside the
/// range 24..31 that BIP 159's successors leave for temporary experiments.
pub const NODE_PUNCH_COORDINATOR_BIT: u64 = 1 << 26;

pub fn node_punch_coordinator() -> ServiceFlags {
    ServiceFlags::from(NODE_PUNCH_COORDINATOR_BIT)
}

/// The service bit of a node that stores and relays reachability records
/// (`hpreach`): bit 25. A node sends `hpreach` only to peers that set it,
/// so an ordinary Bitcoin node never sees one.
pub const NODE_PUNCH_REACH_BIT: u64 = 1 << 25;

/// The service bit of a node that takes handed-off connectors: when a
/// reachable node it is an inbound peer of has no inbound slot left, that
/// node may coordinate a punch between it and the newcomer instead
/// (docs/native-protocol.md, "Handoff"): bit 27.
pub const NODE_PUNCH_HANDOFF_BIT: u64 = 1 << 27;

/// No native message is larger than this: `hpreach` with its most records
/// (1 + 8 × 136 bytes; the largest coordination message, `hpports` with a
/// birthday's 256 ports at an IPv6 address, has 540).
pub const MAX_NATIVE_PAYLOAD: usize = 1 + MAX_REACH_RECORDS * super::reach::MAX_REACH_RECORD_LEN;

/// Tags of the things a node key signs.
pub const REGISTER_TAG: &str = "bitpunch/register/v1";
pub const SESSION_TAG: &str = "bitpunch/session/v1";
/// What a sidecar signs over a splice handshake (docs/native-protocol.md).
pub const SPLICE_TAG: &str = "bitpunch/splice/v1";
pub const COORDINATOR_TAG: &str = "bitpunch/coordinator/v1";

/// The `hp` protocol version this code speaks. Each side sends its version
/// and feature bits first (`hphello`, `hpcoord`); a message added later is
/// only sent to a peer whose version or features say it knows it, so the
/// strict rule "an unknown `hp` command closes the connection" never hits
/// a peer that follows the spec.
pub const PROTOCOL_VERSION: u32 = 1;
/// Feature bit: the node announces where its shared port is on its own
/// network (`hplocal`), and the coordinator passes those endpoints to a
/// peer behind the same public address (`hpcands`).
pub const FEATURE_LOCAL_CANDIDATES: u64 = 1;
/// Feature bit (coordinators): NAT probes are answered on the coordinator's
/// port + 1 (crate::nat).
pub const FEATURE_NAT_PROBE: u64 = 2;
/// Feature bit: the node tells the coordinator which ports its NAT will
/// likely give the punch (`hpports`, when it is behind a symmetric NAT),
/// and the coordinator passes them to the peer, which dials each once.
pub const FEATURE_PORT_PREDICTION: u64 = 4;
/// Feature bit: the node tells the coordinator its NAT's class (`hpnat`)
/// once it knows it, and the coordinator tells each side of an order the
/// other's (`hppeernat`), so that both records of a punch carry both
/// classes.
pub const FEATURE_NAT_CLASS: u64 = 8;
/// Feature bit: dual stack. A node may register its key a second time
/// over its other address family (IPv4 and IPv6) without displacing the
/// first registration, and the coordinator passes the endpoint it observes
/// there to the peer of each order (`hpcands`), which races it beside the
/// order's endpoint.
pub const FEATURE_DUAL_STACK: u64 = 16;
/// Feature bit, in a link's `hphello` only: this link registers a key the
/// node has registered over its other address family already, to stand
/// beside that registration ([`FEATURE_DUAL_STACK`]). Without it, the same
/// key from the other family is a node that moved, and displaces the first.
pub const FEATURE_SECOND_FAMILY: u64 = 32;
/// Feature bits of this code. Unknown bits are ignored.
pub const FEATURES: u64 =
    FEATURE_LOCAL_CANDIDATES | FEATURE_PORT_PREDICTION | FEATURE_NAT_CLASS | FEATURE_DUAL_STACK;
/// Ports in one `hpports`: a sequence's prediction (each one SYN of the
/// peer's punch budget) or a birthday's guesses (paid whole from its
/// birthday allowance); docs/native-protocol.md, "Port prediction".
pub const MAX_PREDICTED_PORTS: usize = crate::punch::predict::BIRTHDAY_PORTS;
/// Own-network endpoints in one `hplocal` or `hpcands`.
pub const MAX_LOCAL_ENDPOINTS: usize = 4;

/// What the coordinator signs to prove its key on one session: the BIP324
/// session id (which an on-path attacker's two sessions cannot share), and
/// the version and features it announces, so that they cannot be altered.
pub fn coordinator_proof_data(session_id: &[u8; 32], version: u32, features: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(44);
    data.extend_from_slice(session_id);
    data.extend_from_slice(&version.to_le_bytes());
    data.extend_from_slice(&features.to_le_bytes());
    data
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PunchRole {
    /// Asked for the connection: BIP324 initiator.
    Initiator = 0,
    /// Was asked for: BIP324 responder.
    Responder = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FailReason {
    NotRegistered = 1,
    UnknownPeer = 2,
    PeerBusy = 3,
    RateLimited = 4,
    SelfConnect = 5,
    /// The target refused the order it was sent (its reflection limit, or
    /// an order it judged invalid): sent after the requester's own order.
    PeerRefused = 6,
    /// Sent with request 0 to a registered connection just before the
    /// coordinator closes it: another connection proved the same key.
    Displaced = 7,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PunchResult {
    Connected = 0,
    NoConnection = 1,
    HandshakeFailed = 2,
    AuthFailed = 3,
    Refused = 4,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeMessage {
    /// client → coordinator, first: the versions it speaks.
    Hello { version: u32, features: u64 },
    /// coordinator → client, the answer to `Hello`: its version, and its
    /// key with a Schnorr signature over the BIP324 session id.
    Coordinator {
        version: u32,
        features: u64,
        key: [u8; 32],
        signature: [u8; 64],
    },
    /// client → coordinator: "make me reachable; this is my key".
    Register { key: [u8; 32] },
    /// coordinator → client: sign this.
    Challenge { nonce: [u8; 32] },
    /// client → coordinator: Schnorr signature over (nonce, key).
    Prove { signature: [u8; 64] },
    /// coordinator → client: you are `id`, and I see you at `observed`.
    Registered { id: NodeId, observed: SocketAddr },
    /// client → coordinator: connect me to `target`.
    Connect { request: u64, target: NodeId },
    /// coordinator → both: dial `peer` from your registered port after
    /// `delay_ms`, in `role`; the peer proves `peer_key` afterwards.
    Punch {
        request: u64,
        role: PunchRole,
        peer_key: [u8; 32],
        peer: SocketAddr,
        delay_ms: u32,
    },
    /// coordinator → requester: no punch, because…
    Fail { request: u64, reason: FailReason },
    /// client → coordinator: how it went.
    Result { request: u64, result: PunchResult },
    /// On the punched connection, both ways: Schnorr signature over the
    /// BIP324 session id, the signer's role and the request.
    Auth { request: u64, signature: [u8; 64] },
    /// client → coordinator, after registration, when the coordinator
    /// announced [`FEATURE_LOCAL_CANDIDATES`]: where the node's shared port
    /// is on its own network (at most [`MAX_LOCAL_ENDPOINTS`]).
    Local { endpoints: Vec<SocketAddr> },
    /// coordinator → client, just before the `Punch` of the same request:
    /// the peer's own-network endpoints when both nodes are seen at the
    /// same public address, and its endpoint in the other address family
    /// when it registered over both ([`FEATURE_DUAL_STACK`]): to race
    /// beside its public one (at most [`MAX_LOCAL_ENDPOINTS`] in all).
    Candidates {
        request: u64,
        endpoints: Vec<SocketAddr>,
    },
    /// Both ways, after `hppunch`: a node behind a symmetric NAT tells the
    /// coordinator the ports at `ip` (its public address) that its NAT will
    /// likely give its punch; the coordinator passes them to the peer of
    /// the same request, which dials each once (at most
    /// [`MAX_PREDICTED_PORTS`]).
    Ports {
        request: u64,
        ip: IpAddr,
        ports: Vec<u16>,
    },
    /// client → coordinator, after registration, when the coordinator
    /// announced [`FEATURE_NAT_CLASS`]: the class of the node's NAT, as its
    /// own classification found it (again when it changes).
    Nat { class: NatBrief },
    /// coordinator → client, just before the `Punch` of the same request,
    /// to a node that announced [`FEATURE_NAT_CLASS`]: the peer's class, as
    /// the peer stated it (for records; nothing is decided on it).
    PeerNat { request: u64, class: NatBrief },
    /// Node → node, on any session between two nodes that set
    /// [`NODE_PUNCH_REACH_BIT`]: reachability records to store and relay
    /// (1 to [`MAX_REACH_RECORDS`]; docs/native-protocol.md,
    /// "Reachability records"). Never part of a coordinator link.
    Reach { records: Vec<ReachRecord> },
    /// Reachable node → a peer that just connected to it, when its inbound
    /// slots are full: connect to this node instead (an inbound peer of
    /// ours that takes handoffs), through the coordinator its record
    /// names; then the session is closed (docs/native-protocol.md,
    /// "Handoff"). Sent only to a peer that set [`NODE_PUNCH_REACH_BIT`].
    Handoff { record: ReachRecord },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NativeError {
    #[error("{command}: payload of {len} bytes, expected {expected}")]
    BadLength {
        command: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("{command}: {what}")]
    BadField { command: &'static str, what: String },
    #[error("unknown native command {0:?}")]
    UnknownCommand(String),
}

const PREFIX: &str = "hp";

impl NativeMessage {
    pub fn command(&self) -> &'static str {
        match self {
            NativeMessage::Hello { .. } => "hphello",
            NativeMessage::Coordinator { .. } => "hpcoord",
            NativeMessage::Register { .. } => "hpregister",
            NativeMessage::Challenge { .. } => "hpchallenge",
            NativeMessage::Prove { .. } => "hpprove",
            NativeMessage::Registered { .. } => "hpregistered",
            NativeMessage::Connect { .. } => "hpconnect",
            NativeMessage::Punch { .. } => "hppunch",
            NativeMessage::Fail { .. } => "hpfail",
            NativeMessage::Result { .. } => "hpresult",
            NativeMessage::Auth { .. } => "hpauth",
            NativeMessage::Local { .. } => "hplocal",
            NativeMessage::Candidates { .. } => "hpcands",
            NativeMessage::Ports { .. } => "hpports",
            NativeMessage::Nat { .. } => "hpnat",
            NativeMessage::PeerNat { .. } => "hppeernat",
            NativeMessage::Reach { .. } => "hpreach",
            NativeMessage::Handoff { .. } => "hphandoff",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_NATIVE_PAYLOAD);
        match self {
            NativeMessage::Hello { version, features } => {
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&features.to_le_bytes());
            }
            NativeMessage::Coordinator {
                version,
                features,
                key,
                signature,
            } => {
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&features.to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(signature);
            }
            NativeMessage::Register { key } => out.extend_from_slice(key),
            NativeMessage::Challenge { nonce } => out.extend_from_slice(nonce),
            NativeMessage::Prove { signature } => out.extend_from_slice(signature),
            NativeMessage::Registered { id, observed } => {
                out.extend_from_slice(&id.0);
                put_endpoint(&mut out, observed);
            }
            NativeMessage::Connect { request, target } => {
                out.extend_from_slice(&request.to_le_bytes());
                out.extend_from_slice(&target.0);
            }
            NativeMessage::Punch {
                request,
                role,
                peer_key,
                peer,
                delay_ms,
            } => {
                out.extend_from_slice(&request.to_le_bytes());
                out.push(*role as u8);
                out.extend_from_slice(peer_key);
                put_endpoint(&mut out, peer);
                out.extend_from_slice(&delay_ms.to_le_bytes());
            }
            NativeMessage::Fail { request, reason } => {
                out.extend_from_slice(&request.to_le_bytes());
                out.push(*reason as u8);
            }
            NativeMessage::Result { request, result } => {
                out.extend_from_slice(&request.to_le_bytes());
                out.push(*result as u8);
            }
            NativeMessage::Auth { request, signature } => {
                out.extend_from_slice(&request.to_le_bytes());
                out.extend_from_slice(signature);
            }
            NativeMessage::Local { endpoints } => put_endpoints(&mut out, endpoints),
            NativeMessage::Candidates { request, endpoints } => {
                out.extend_from_slice(&request.to_le_bytes());
                put_endpoints(&mut out, endpoints);
            }
            NativeMessage::Ports { request, ip, ports } => {
                out.extend_from_slice(&request.to_le_bytes());
                put_ip(&mut out, *ip);
                let ports = ports.get(..MAX_PREDICTED_PORTS).unwrap_or(ports);
                out.extend_from_slice(&u16::try_from(ports.len()).unwrap_or(0).to_le_bytes());
                for port in ports {
                    out.extend_from_slice(&port.to_be_bytes());
                }
            }
            NativeMessage::Nat { class } => put_nat(&mut out, class),
            NativeMessage::PeerNat { request, class } => {
                out.extend_from_slice(&request.to_le_bytes());
                put_nat(&mut out, class);
            }
            NativeMessage::Reach { records } => {
                let records = records.get(..MAX_REACH_RECORDS).unwrap_or(records);
                out.push(u8::try_from(records.len()).unwrap_or(0));
                for record in records {
                    put_record(&mut out, record);
                }
            }
            NativeMessage::Handoff { record } => put_record(&mut out, record),
        }
        debug_assert!(out.len() <= MAX_NATIVE_PAYLOAD);
        out
    }

    #[allow(
        clippy::expect_used,
        reason = "the commands are constants of at most 12 ASCII bytes; a test encodes each"
    )]
    pub fn to_network(&self) -> NetworkMessage {
        NetworkMessage::Unknown {
            command: CommandString::try_from_static(self.command())
                .expect("native commands are valid command strings"),
            payload: self.encode(),
        }
    }

    /// `Ok(None)` when `msg` is not a native message at all (any other
    /// Bitcoin message); an error when it claims to be one and is not valid.
    pub fn from_network(msg: &NetworkMessage) -> Result<Option<NativeMessage>, NativeError> {
        let NetworkMessage::Unknown { command, payload } = msg else {
            return Ok(None);
        };
        let command = command.as_ref();
        if !command.starts_with(PREFIX) {
            return Ok(None);
        }
        Self::decode(command, payload).map(Some)
    }

    pub fn decode(command: &str, payload: &[u8]) -> Result<NativeMessage, NativeError> {
        let mut r = Reader {
            command: static_name(command)?,
            cursor: Cursor::new(payload),
        };
        let msg = match r.command {
            "hphello" => NativeMessage::Hello {
                version: r.u32()?,
                features: r.u64()?,
            },
            "hpcoord" => NativeMessage::Coordinator {
                version: r.u32()?,
                features: r.u64()?,
                key: r.array()?,
                signature: r.array()?,
            },
            "hpregister" => NativeMessage::Register { key: r.array()? },
            "hpchallenge" => NativeMessage::Challenge { nonce: r.array()? },
            "hpprove" => NativeMessage::Prove {
                signature: r.array()?,
            },
            "hpregistered" => NativeMessage::Registered {
                id: NodeId(r.array::<ID_LEN>()?),
                observed: r.endpoint()?,
            },
            "hpconnect" => NativeMessage::Connect {
                request: r.u64()?,
                target: NodeId(r.array::<ID_LEN>()?),
            },
            "hppunch" => NativeMessage::Punch {
                request: r.u64()?,
                role: match r.u8()? {
                    0 => PunchRole::Initiator,
                    1 => PunchRole::Responder,
                    other => return Err(r.bad(format!("role {other}"))),
                },
                peer_key: r.array()?,
                peer: r.endpoint()?,
                delay_ms: r.u32()?,
            },
            "hpfail" => NativeMessage::Fail {
                request: r.u64()?,
                reason: match r.u8()? {
                    1 => FailReason::NotRegistered,
                    2 => FailReason::UnknownPeer,
                    3 => FailReason::PeerBusy,
                    4 => FailReason::RateLimited,
                    5 => FailReason::SelfConnect,
                    6 => FailReason::PeerRefused,
                    7 => FailReason::Displaced,
                    other => return Err(r.bad(format!("reason {other}"))),
                },
            },
            "hpresult" => NativeMessage::Result {
                request: r.u64()?,
                result: match r.u8()? {
                    0 => PunchResult::Connected,
                    1 => PunchResult::NoConnection,
                    2 => PunchResult::HandshakeFailed,
                    3 => PunchResult::AuthFailed,
                    4 => PunchResult::Refused,
                    other => return Err(r.bad(format!("result {other}"))),
                },
            },
            "hpauth" => NativeMessage::Auth {
                request: r.u64()?,
                signature: r.array()?,
            },
            "hplocal" => NativeMessage::Local {
                endpoints: r.endpoints()?,
            },
            "hpcands" => NativeMessage::Candidates {
                request: r.u64()?,
                endpoints: r.endpoints()?,
            },
            "hpports" => NativeMessage::Ports {
                request: r.u64()?,
                ip: r.ip()?,
                ports: r.ports()?,
            },
            "hpnat" => NativeMessage::Nat { class: r.nat()? },
            "hppeernat" => NativeMessage::PeerNat {
                request: r.u64()?,
                class: r.nat()?,
            },
            "hpreach" => NativeMessage::Reach {
                records: r.reach_records()?,
            },
            "hphandoff" => NativeMessage::Handoff {
                record: r.reach_record()?,
            },
            other => return Err(NativeError::UnknownCommand(other.to_string())),
        };
        r.finish(msg.encode().len())?;
        Ok(msg)
    }
}

pub const COMMANDS: [&str; 18] = [
    "hphello",
    "hpcoord",
    "hpregister",
    "hpchallenge",
    "hpprove",
    "hpregistered",
    "hpconnect",
    "hppunch",
    "hpfail",
    "hpresult",
    "hpauth",
    "hplocal",
    "hpcands",
    "hpports",
    "hpnat",
    "hppeernat",
    "hpreach",
    "hphandoff",
];

fn static_name(command: &str) -> Result<&'static str, NativeError> {
    COMMANDS
        .iter()
        .find(|c| **c == command)
        .copied()
        .ok_or_else(|| NativeError::UnknownCommand(command.to_string()))
}

/// mapping (u8: 1 endpoint-independent, 2 address-and-port dependent, 3
/// none) ‖ port preserving (u8: 0 or 1) ‖ allocation (u8: 1 preserving, 2
/// sequential, 3 random) ‖ step (i32, 0 unless sequential): 7 bytes.
fn put_nat(out: &mut Vec<u8>, class: &NatBrief) {
    out.push(match class.mapping {
        MappingBehaviour::EndpointIndependent => 1,
        MappingBehaviour::AddressAndPortDependent => 2,
        MappingBehaviour::None => 3,
    });
    out.push(u8::from(class.port_preserving));
    let (kind, step) = match class.allocation {
        Allocation::Preserving => (1u8, 0i32),
        Allocation::Sequential(step) => (2, step),
        Allocation::Random => (3, 0),
    };
    out.push(kind);
    out.extend_from_slice(&step.to_le_bytes());
}

/// key (32) ‖ coordinator id (12) ‖ coordinator endpoint ‖ since (u64
/// LE) ‖ signature (64): at most [`super::reach::MAX_REACH_RECORD_LEN`].
fn put_record(out: &mut Vec<u8>, record: &ReachRecord) {
    out.extend_from_slice(&record.key);
    out.extend_from_slice(&record.coordinator.0);
    put_endpoint(out, &record.coordinator_at);
    out.extend_from_slice(&record.since.to_le_bytes());
    out.extend_from_slice(&record.signature);
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    let v2 = match ip {
        IpAddr::V4(ip) => AddrV2::Ipv4(ip),
        IpAddr::V6(ip) => AddrV2::Ipv6(ip),
    };
    // Writing to a Vec cannot fail; the length is what the size table says.
    let _ = v2.consensus_encode(out);
}

fn put_endpoint(out: &mut Vec<u8>, addr: &SocketAddr) {
    put_ip(out, addr.ip());
    // Port in network byte order, as in Bitcoin's address messages.
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// count (u8) ‖ endpoints; callers keep to [`MAX_LOCAL_ENDPOINTS`].
fn put_endpoints(out: &mut Vec<u8>, endpoints: &[SocketAddr]) {
    let endpoints = endpoints.get(..MAX_LOCAL_ENDPOINTS).unwrap_or(endpoints);
    out.push(u8::try_from(endpoints.len()).unwrap_or(0));
    for e in endpoints {
        put_endpoint(out, e);
    }
}

struct Reader<'a> {
    command: &'static str,
    cursor: Cursor<&'a [u8]>,
}

impl Reader<'_> {
    fn bad(&self, what: String) -> NativeError {
        NativeError::BadField {
            command: self.command,
            what,
        }
    }

    fn short(&self) -> NativeError {
        self.bad(format!(
            "payload ends early ({} bytes)",
            self.cursor.get_ref().len()
        ))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], NativeError> {
        let pos = usize::try_from(self.cursor.position()).map_err(|_| self.short())?;
        let end = pos.checked_add(N).ok_or_else(|| self.short())?;
        let bytes = self.cursor.get_ref();
        let array: [u8; N] = bytes
            .get(pos..end)
            .and_then(|slice| slice.try_into().ok())
            .ok_or_else(|| self.short())?;
        self.cursor.set_position(end as u64);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, NativeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, NativeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, NativeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn ip(&mut self) -> Result<IpAddr, NativeError> {
        let addr = AddrV2::consensus_decode(&mut self.cursor)
            .map_err(|e| self.bad(format!("address: {e}")))?;
        match addr {
            AddrV2::Ipv4(ip) => Ok(ip.into()),
            AddrV2::Ipv6(ip) => Ok(ip.into()),
            other => Err(self.bad(format!("address {other:?} is not IP"))),
        }
    }

    fn port(&mut self) -> Result<u16, NativeError> {
        match u16::from_be_bytes(self.array()?) {
            0 => Err(self.bad("port 0".into())),
            port => Ok(port),
        }
    }

    fn endpoint(&mut self) -> Result<SocketAddr, NativeError> {
        let ip = self.ip()?;
        Ok(SocketAddr::new(ip, self.port()?))
    }

    fn nat(&mut self) -> Result<NatBrief, NativeError> {
        let mapping = match self.u8()? {
            1 => MappingBehaviour::EndpointIndependent,
            2 => MappingBehaviour::AddressAndPortDependent,
            3 => MappingBehaviour::None,
            other => return Err(self.bad(format!("mapping {other}"))),
        };
        let port_preserving = match self.u8()? {
            0 => false,
            1 => true,
            other => return Err(self.bad(format!("port preserving {other}"))),
        };
        let kind = self.u8()?;
        let step = i32::from_le_bytes(self.array()?);
        let allocation = match (kind, step) {
            (1, 0) => Allocation::Preserving,
            // A step is what a NAT adds per new mapping: nonzero, and
            // within the port range.
            (2, step) if step != 0 && step.unsigned_abs() < 65_536 => Allocation::Sequential(step),
            (3, 0) => Allocation::Random,
            (kind, step) => return Err(self.bad(format!("allocation {kind} with step {step}"))),
        };
        Ok(NatBrief {
            mapping,
            port_preserving,
            allocation,
        })
    }

    /// count (u16 LE, 1 to [`MAX_PREDICTED_PORTS`]) ‖ ports.
    fn ports(&mut self) -> Result<Vec<u16>, NativeError> {
        let count = usize::from(u16::from_le_bytes([self.u8()?, self.u8()?]));
        if count == 0 || count > MAX_PREDICTED_PORTS {
            return Err(self.bad(format!("{count} ports, 1 to {MAX_PREDICTED_PORTS} allowed")));
        }
        (0..count).map(|_| self.port()).collect()
    }

    fn endpoints(&mut self) -> Result<Vec<SocketAddr>, NativeError> {
        let count = usize::from(self.u8()?);
        if count > MAX_LOCAL_ENDPOINTS {
            return Err(self.bad(format!("{count} endpoints, at most {MAX_LOCAL_ENDPOINTS}")));
        }
        (0..count).map(|_| self.endpoint()).collect()
    }

    /// count (u8, 1 to [`MAX_REACH_RECORDS`]) ‖ records. Read, not
    /// verified: that takes the reader's clock.
    fn reach_records(&mut self) -> Result<Vec<ReachRecord>, NativeError> {
        let count = usize::from(self.u8()?);
        if count == 0 || count > MAX_REACH_RECORDS {
            return Err(self.bad(format!("{count} records, 1 to {MAX_REACH_RECORDS} allowed")));
        }
        (0..count).map(|_| self.reach_record()).collect()
    }

    fn reach_record(&mut self) -> Result<ReachRecord, NativeError> {
        Ok(ReachRecord {
            key: self.array()?,
            coordinator: NodeId(self.array::<ID_LEN>()?),
            coordinator_at: self.endpoint()?,
            since: self.u64()?,
            signature: self.array()?,
        })
    }

    fn finish(&self, expected: usize) -> Result<(), NativeError> {
        let len = self.cursor.get_ref().len();
        if len != expected {
            return Err(NativeError::BadLength {
                command: self.command,
                len,
                expected,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<NativeMessage> {
        let v4: SocketAddr = "203.0.113.9:40001".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:8333".parse().unwrap();
        vec![
            NativeMessage::Hello {
                version: 1,
                features: 1 << 63,
            },
            NativeMessage::Coordinator {
                version: 2,
                features: 5,
                key: [6; 32],
                signature: [4; 64],
            },
            NativeMessage::Register { key: [7; 32] },
            NativeMessage::Challenge { nonce: [9; 32] },
            NativeMessage::Prove { signature: [3; 64] },
            NativeMessage::Registered {
                id: NodeId([1; 12]),
                observed: v4,
            },
            NativeMessage::Registered {
                id: NodeId([2; 12]),
                observed: v6,
            },
            NativeMessage::Connect {
                request: 77,
                target: NodeId([4; 12]),
            },
            NativeMessage::Punch {
                request: u64::MAX,
                role: PunchRole::Responder,
                peer_key: [5; 32],
                peer: v4,
                delay_ms: 12,
            },
            NativeMessage::Fail {
                request: 1,
                reason: FailReason::RateLimited,
            },
            NativeMessage::Result {
                request: 2,
                result: PunchResult::AuthFailed,
            },
            NativeMessage::Auth {
                request: 3,
                signature: [8; 64],
            },
            NativeMessage::Local {
                endpoints: vec!["10.0.0.5:8333".parse().unwrap()],
            },
            NativeMessage::Candidates {
                request: 4,
                endpoints: vec![v6, v6, v6, v6],
            },
            NativeMessage::Ports {
                request: 5,
                ip: v6.ip(),
                ports: (40_001..40_017).collect(),
            },
            // A birthday's guesses: the most one message carries.
            NativeMessage::Ports {
                request: 6,
                ip: "203.0.113.9".parse().unwrap(),
                ports: (2_000..2_256).collect(),
            },
            NativeMessage::Nat {
                class: NatBrief {
                    mapping: MappingBehaviour::AddressAndPortDependent,
                    port_preserving: false,
                    allocation: Allocation::Sequential(-2),
                },
            },
            NativeMessage::PeerNat {
                request: 6,
                class: NatBrief {
                    mapping: MappingBehaviour::EndpointIndependent,
                    port_preserving: true,
                    allocation: Allocation::Preserving,
                },
            },
            NativeMessage::Reach {
                records: vec![
                    ReachRecord::sign(
                        &crate::identity::NodeKey::from_secret(&[3; 32]).unwrap(),
                        NodeId([9; ID_LEN]),
                        v4,
                        1_800_000_000,
                    ),
                    ReachRecord::sign(
                        &crate::identity::NodeKey::from_secret(&[4; 32]).unwrap(),
                        NodeId([8; ID_LEN]),
                        "[2001:db8::9]:8333".parse().unwrap(),
                        1_800_000_001,
                    ),
                ],
            },
            NativeMessage::Handoff {
                record: ReachRecord::sign(
                    &crate::identity::NodeKey::from_secret(&[5; 32]).unwrap(),
                    NodeId([7; ID_LEN]),
                    v4,
                    1_800_000_002,
                ),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_v2_packet() {
        for msg in samples() {
            let contents = crate::wire::codec::encode_v2_contents(&msg.to_network());
            let decoded = crate::wire::codec::decode_v2_contents(&contents).unwrap();
            let crate::wire::codec::V2Decoded::Message(net) = decoded else {
                panic!("not a message")
            };
            assert_eq!(
                NativeMessage::from_network(&net).unwrap(),
                Some(msg.clone())
            );
            assert!(msg.encode().len() <= MAX_NATIVE_PAYLOAD);
        }
    }

    #[test]
    fn sizes_are_the_ones_the_spec_lists() {
        let sizes: Vec<usize> = samples().iter().map(|m| m.encode().len()).collect();
        // hello, coord, register, challenge, prove, registered v4/v6,
        // connect, punch v4, fail, result, auth, local (one v4), cands
        // (four v6), ports (v6, sixteen; v4, 256), nat, peernat, reach
        // (a v4 and a v6 coordinator), handoff (v4) (docs/native-protocol.md)
        assert_eq!(
            sizes,
            vec![12, 108, 32, 32, 64, 20, 32, 20, 53, 9, 9, 72, 9, 89, 60, 528, 7, 15, 261, 124]
        );
        let ports = |count: u16, given: u16| {
            let mut bytes = 7u64.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[1, 4, 203, 0, 113, 9]);
            bytes.extend_from_slice(&count.to_le_bytes());
            for _ in 0..given {
                bytes.extend_from_slice(&40_000u16.to_be_bytes());
            }
            NativeMessage::decode("hpports", &bytes)
        };
        assert!(ports(256, 256).is_ok());
        for count in [0, 257, u16::MAX] {
            assert!(ports(count, count.min(300))
                .unwrap_err()
                .to_string()
                .contains("1 to 256 allowed"));
        }
        // A count the bytes do not back is refused, not allocated.
        assert!(ports(200, 3).is_err());
        let five = NativeMessage::Local {
            endpoints: vec!["10.0.0.5:8333".parse().unwrap(); 4],
        }
        .encode();
        let mut bad = five.clone();
        bad[0] = 5;
        bad.extend_from_slice(&five[1..9]);
        assert!(NativeMessage::decode("hplocal", &bad)
            .unwrap_err()
            .to_string()
            .contains("at most 4"));
    }

    #[test]
    fn a_nat_class_that_no_nat_has_is_refused() {
        let decode = |bytes: &[u8]| NativeMessage::decode("hpnat", bytes);
        let ok = [2u8, 0, 2, 1, 0, 0, 0];
        assert!(decode(&ok).is_ok());
        for bad in [
            [0u8, 0, 1, 0, 0, 0, 0], // mapping 0
            [1, 2, 1, 0, 0, 0, 0],   // preserving 2
            [1, 1, 1, 5, 0, 0, 0],   // preserving with a step
            [2, 0, 2, 0, 0, 0, 0],   // sequential with step 0
            [2, 0, 2, 0, 0, 1, 0],   // step 65,536
            [2, 0, 4, 0, 0, 0, 0],   // allocation 4
        ] {
            assert!(decode(&bad).is_err(), "{bad:?}");
        }
        assert!(decode(&ok[..6]).is_err());
        assert!(decode(&[2, 0, 2, 1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn truncated_extended_and_garbled_payloads_are_errors() {
        for msg in samples() {
            let bytes = msg.encode();
            for cut in 0..bytes.len() {
                assert!(NativeMessage::decode(msg.command(), &bytes[..cut]).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                NativeMessage::decode(msg.command(), &longer),
                Err(NativeError::BadLength { .. })
            ));
        }
        assert!(NativeMessage::decode("hpnonsense", &[]).is_err());
        assert_eq!(
            NativeMessage::from_network(&NetworkMessage::Verack),
            Ok(None)
        );
    }

    proptest::proptest! {
        #[test]
        fn random_payloads_never_panic(command in 0usize..COMMANDS.len(), payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = NativeMessage::decode(COMMANDS[command], &payload);
        }
    }
}
