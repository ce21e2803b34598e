//! The fuzz targets' bodies. They live in the library so that the stable
//! test suite can replay every committed corpus entry and every crash that
//! was ever found (tests/fuzz_regressions.rs) through the same code that
//! `cargo fuzz` runs on nightly (fuzz/).
//!
//! Each function takes the fuzzer's bytes, drives one decoder or state
//! machine with them, and panics only when an invariant breaks: a panic
//! here is a bug in bitpunch, never in the input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bitcoin::p2p::Magic;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::identity::{NodeId, NodeKey};
use crate::libp2p::exchange::{self, ExchangeMessage, MAX_CANDIDATES, MAX_ROUNDS};
use crate::native::machine::{
    Client, ClientConfig, ClientEvent, Coordinator, CoordinatorAction, CoordinatorConfig,
    MAX_OUTSTANDING_REQUESTS, ORDER_LIFETIME,
};
use crate::native::messages::{FailReason, NativeMessage, PunchResult, PunchRole, REGISTER_TAG};
use crate::punch::schedule::{Schedule, ScheduleConfig, Step};
use crate::wire::bip324::{cipher_pair, Ends};
use crate::wire::channel::Channel;
use crate::wire::codec;

const MAGIC: Magic = Magic::REGTEST;

/// A target's body: takes the fuzzer's bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name `cargo fuzz` knows it by.
pub const TARGETS: &[(&str, Target)] = &[
    ("sniff", sniff),
    ("v1_message", v1_message),
    ("v2_contents", v2_contents),
    ("channel_v1", channel_v1),
    ("channel_v2", channel_v2),
    ("native_message", native_message),
    ("exchange_message", exchange_message),
    ("auth_proof", auth_proof),
    ("coordinator_machine", coordinator_machine),
    ("client_machine", client_machine),
    ("exchange_machines", exchange_machines),
    ("punch_schedule", punch_schedule),
    ("splice_input", splice_input),
    ("address_book", address_book),
];

// ------------------------------------------------------------------ decoders

pub fn sniff(data: &[u8]) {
    let _ = crate::net::router::sniff(data, MAGIC.to_bytes());
}

pub fn v1_message(data: &[u8]) {
    if let Some(header) = data.first_chunk::<{ codec::V1_HEADER_LEN }>() {
        if let Ok(parsed) = codec::parse_v1_header(MAGIC, header) {
            assert!(parsed.len <= codec::MAX_PAYLOAD);
        }
    }
    let _ = codec::decode_v1(data);
}

pub fn v2_contents(data: &[u8]) {
    let direct = codec::decode_v2_contents(data);
    // The decoder parses payloads in place; the bitcoin crate's own v1
    // decoder, fed the same contents framed as v1, is the reference.
    let reference = codec::decode_v2_contents_by_reframing(MAGIC, data);
    match (&direct, &reference) {
        (Ok(codec::V2Decoded::Message(a)), Ok(codec::V2Decoded::Message(b))) => {
            assert_eq!(a, b, "direct and re-framed decoding differ")
        }
        (Ok(codec::V2Decoded::UnknownShortId(a)), Ok(codec::V2Decoded::UnknownShortId(b))) => {
            assert_eq!(a, b)
        }
        (Err(_), Err(_)) => {}
        _ => panic!("direct {direct:?} but re-framed {reference:?}"),
    }
    // The owning decoder (the one sessions use) agrees with both.
    let owned = codec::decode_v2_packet(data.to_vec(), 0, data.len());
    match (&owned, &direct) {
        (Ok(codec::V2Decoded::Message(a)), Ok(codec::V2Decoded::Message(b))) => assert_eq!(a, b),
        (Ok(codec::V2Decoded::UnknownShortId(a)), Ok(codec::V2Decoded::UnknownShortId(b))) => {
            assert_eq!(a, b)
        }
        (Err(_), Err(_)) => {}
        _ => panic!("owned {owned:?} but direct {direct:?}"),
    }
    if let Ok(codec::V2Decoded::Message(msg)) = direct {
        // What decodes re-encodes to something that decodes to the same.
        let again = codec::encode_v2_contents(&msg);
        match codec::decode_v2_contents(&again) {
            Ok(codec::V2Decoded::Message(back)) => assert_eq!(back, msg),
            other => panic!("re-encoded {msg:?} decodes to {other:?}"),
        }
    }
}

pub fn native_message(data: &[u8]) {
    let Some((&which, payload)) = data.split_first() else {
        return;
    };
    let commands = crate::native::messages::COMMANDS;
    let Some(command) = commands.get(usize::from(which) % commands.len()) else {
        return;
    };
    if let Ok(msg) = NativeMessage::decode(command, payload) {
        assert_eq!(msg.encode(), payload, "{command} does not round-trip");
    }
}

pub fn exchange_message(data: &[u8]) {
    let _ = ExchangeMessage::decode(data);
    let mut framed = futures::io::Cursor::new(data);
    // Framed reads until the stream runs dry or a frame is refused.
    futures::executor::block_on(async {
        while let Ok((_, used)) = exchange::read_message(&mut framed).await {
            assert!(used <= exchange::MAX_MESSAGE + 10);
        }
    });
}

/// What a sidecar reads from strangers before it splices: the peer's
/// splice hello and proof length, and the host name a SOCKS5 client asks
/// for. Whatever decodes must encode back to itself.
pub fn splice_input(data: &[u8]) {
    use crate::sidecar::handshake::{self, Hello, SpliceRole, HELLO_LEN, MAX_PROOF};
    if let Some(hello) = data.first_chunk::<HELLO_LEN>() {
        for ours in [SpliceRole::Connector, SpliceRole::Listener] {
            if let Ok(decoded) = Hello::decode(hello, ours) {
                assert_eq!(decoded.role, ours.peer());
                assert_eq!(&decoded.encode(), hello, "a hello that does not re-encode");
            }
        }
        if let Some(len) = data.get(HELLO_LEN..).and_then(|d| d.first_chunk::<2>()) {
            if let Ok(len) = handshake::proof_len(*len) {
                assert!(len <= MAX_PROOF);
            }
        }
    }
    let host = String::from_utf8_lossy(data);
    if let Ok(name) = host.parse::<crate::sidecar::socks::PunchName>() {
        assert!(crate::sidecar::socks::is_punch_name(&host));
        assert_eq!(
            name.to_string().parse(),
            Ok(name),
            "a name that does not re-parse"
        );
    }
}

pub fn auth_proof(data: &[u8]) {
    static KEY: OnceLock<::libp2p::identity::Keypair> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        ::libp2p::identity::Keypair::ed25519_from_bytes([7u8; 32]).expect("32-byte seed")
    });
    let session_id = [9u8; 32];
    let expected = key.public().to_peer_id();
    for role in [
        crate::wire::SessionRole::Initiator,
        crate::wire::SessionRole::Responder,
    ] {
        if crate::libp2p::punch::verify_auth(data, expected, &session_id, role).is_ok() {
            // Only the key's own signature over exactly this may pass.
            let genuine = crate::libp2p::punch::encode_auth(key, &session_id, role);
            let bitcoin::p2p::message::NetworkMessage::Unknown { payload, .. } = genuine else {
                panic!("bpauth is not an Unknown message");
            };
            assert_eq!(payload, data, "a forged bpauth verified");
        }
    }
}

// ------------------------------------------------------------------ channels

/// A stream that yields `input` and swallows what is written to it.
struct Feed {
    input: Vec<u8>,
    at: usize,
}

impl AsyncRead for Feed {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let rest = this.input.get(this.at..).unwrap_or_default();
        let n = rest.len().min(buf.remaining());
        buf.put_slice(rest.get(..n).unwrap_or_default());
        this.at = this.at.saturating_add(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Feed {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads messages until the channel fails; the input is finite, so it must.
fn drain(mut channel: Channel<Feed>, budget: usize) {
    futures::executor::block_on(async {
        for _ in 0..budget {
            if channel.recv().await.is_err() {
                return;
            }
        }
        panic!("a finite input yielded more than {budget} messages");
    });
}

pub fn channel_v1(data: &[u8]) {
    let feed = Feed {
        input: data.to_vec(),
        at: 0,
    };
    // Each message costs at least a 24-byte header.
    drain(
        Channel::v1(feed, MAGIC),
        data.len() / codec::V1_HEADER_LEN + 2,
    );
}

#[derive(Arbitrary, Debug)]
struct V2Input {
    packets: Vec<(bool, Vec<u8>)>,
    /// Flip one bit of the ciphertext: a packet that must fail to
    /// authenticate, never be accepted.
    flip: Option<u16>,
    trailing: Vec<u8>,
}

/// The packets are encrypted with the peer's real cipher from one real
/// handshake, so the fuzzer reaches the code behind authentication.
pub fn channel_v2(data: &[u8]) {
    static CIPHERS: OnceLock<(Ends, Ends)> = OnceLock::new();
    let (ours, theirs) = CIPHERS.get_or_init(|| cipher_pair(MAGIC.to_bytes()));
    let Ok(input) = V2Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut peer_out = ours.1.clone();
    let mut wire = Vec::new();
    for (decoy, contents) in &input.packets {
        if peer_out
            .encrypt_onto(&mut wire, contents, *decoy, &[])
            .is_err()
        {
            return;
        }
    }
    if let Some(flip) = input.flip {
        if let Some(byte) = wire.get_mut(usize::from(flip / 8)) {
            *byte ^= 1 << (flip % 8);
        }
    }
    wire.extend_from_slice(&input.trailing);
    let feed = Feed { input: wire, at: 0 };
    drain(
        Channel::v2_from_cipher(feed, MAGIC, [0; 32], theirs.clone()),
        input.packets.len() + 2,
    );
}

// ------------------------------------------------------------ state machines

fn keys() -> &'static [NodeKey; 4] {
    static KEYS: OnceLock<[NodeKey; 4]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [1u8, 2, 3, 4].map(|b| NodeKey::from_secret(&[b; 32]).expect("a valid secret"))
    })
}

/// The coordinator's key in the machine harnesses.
fn coordinator_key() -> &'static NodeKey {
    static KEY: OnceLock<NodeKey> = OnceLock::new();
    KEY.get_or_init(|| NodeKey::from_secret(&[9; 32]).expect("a valid secret"))
}

fn endpoint(ip: u8, port: u16, v6: bool) -> SocketAddr {
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, u16::from(ip), 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, ip))
    };
    SocketAddr::new(ip, port)
}

/// An endpoint a node may call its own network's, or (odd `kind`) one it
/// may not: public, loopback; or (`kind` 4, 6) a public or loopback IPv6
/// one, what a dual-stack peer's other family looks like and what it must
/// not be.
fn own_network_endpoint(ip: u8, port: u16, kind: u8) -> SocketAddr {
    let ip = match kind % 8 {
        0 => IpAddr::V4(Ipv4Addr::new(192, 168, 1, ip)),
        1 | 5 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, ip)),
        2 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(ip))),
        4 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, u16::from(ip))),
        6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        _ => IpAddr::V4(Ipv4Addr::new(127, 0, 0, ip)),
    };
    SocketAddr::new(ip, port.max(1))
}

#[derive(Arbitrary, Debug)]
enum CoordinatorInput {
    Connect {
        conn: u8,
        ip: u8,
        port: u16,
        rtt_ms: Option<u16>,
    },
    Disconnect {
        conn: u8,
    },
    Register {
        conn: u8,
        key: u8,
    },
    RegisterRaw {
        conn: u8,
        key: [u8; 32],
    },
    Prove {
        conn: u8,
        valid: bool,
    },
    Request {
        conn: u8,
        request: u8,
        target: u8,
    },
    RequestUnknown {
        conn: u8,
        request: u8,
        target: [u8; 12],
    },
    Report {
        conn: u8,
        request: u8,
        result: u8,
    },
    NotForCoordinator {
        conn: u8,
    },
    /// `hplocal`: the decoder passes at most four.
    Local {
        conn: u8,
        endpoints: Vec<(u8, u16, u8)>,
    },
    /// `hpports`: the ports a node predicts for one of its orders.
    Ports {
        conn: u8,
        request: u8,
        ip: u8,
        ports: Vec<u16>,
    },
    Rtt {
        conn: u8,
        ms: u16,
    },
    /// `hpnat`: the class a node states, passed to its peers' orders.
    Nat {
        conn: u8,
        class: u8,
    },
    Wait {
        secs: u8,
    },
}

/// Arbitrary sequences of connections, registrations (with valid and
/// invalid proofs), requests, reports and time against the coordinator.
/// After every step: no panic, the indexes agree, every request from a
/// connected client is answered, nothing grows past its limit.
pub fn coordinator_machine(data: &[u8]) {
    let Ok(steps) = Vec::<CoordinatorInput>::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let config = CoordinatorConfig {
        requests_per_minute: 5,
        ..Default::default()
    };
    let mut machine = Coordinator::new(config.clone(), coordinator_key().clone());
    let keys = keys();
    let mut now = Instant::now();
    // What the harness knows about each connection: the key it registered
    // and the challenge it was sent.
    let mut connected: std::collections::HashMap<u8, (Option<usize>, [u8; 32])> =
        Default::default();
    let mut challenge_counter = 0u8;
    let mut orders_issued: Vec<Instant> = Vec::new();
    for step in steps {
        challenge_counter = challenge_counter.wrapping_add(1);
        let challenge = [challenge_counter; 32];
        let conn_of = |c: u8| u64::from(c % 16);
        match step {
            CoordinatorInput::Connect {
                conn,
                ip,
                port,
                rtt_ms,
            } => {
                machine.connected(
                    conn_of(conn),
                    endpoint(ip, port, ip % 2 == 0),
                    rtt_ms.map(|ms| Duration::from_millis(ms.into())),
                    Some([conn; 32]),
                );
                // Every client that follows the spec says hello first; the
                // coordinator must answer with its proof.
                // Own-network candidates, dual stack and a second-family
                // link, each on or off.
                let dual_stack = match port & 2 {
                    0 => 0,
                    _ => crate::native::messages::FEATURE_DUAL_STACK,
                };
                let second_family = match port & 4 {
                    0 => 0,
                    _ => crate::native::messages::FEATURE_SECOND_FAMILY,
                };
                let hello = NativeMessage::Hello {
                    version: 1,
                    features: u64::from(port % 2) | dual_stack | second_family,
                };
                let actions = machine.handle(now, conn_of(conn), hello, challenge);
                assert!(
                    matches!(
                        &actions[..],
                        [CoordinatorAction::Send(
                            _,
                            NativeMessage::Coordinator { .. }
                        )]
                    ),
                    "hello not answered: {actions:?}"
                );
                connected.insert(conn % 16, (None, [0; 32]));
            }
            CoordinatorInput::Disconnect { conn } => {
                machine.disconnected(conn_of(conn));
                connected.remove(&(conn % 16));
            }
            CoordinatorInput::Register { conn, key } => {
                let index = usize::from(key) % keys.len();
                let Some(key) = keys.get(index) else { continue };
                let msg = NativeMessage::Register {
                    key: key.public().serialize(),
                };
                let actions = machine.handle(now, conn_of(conn), msg, challenge);
                if let Some(entry) = connected.get_mut(&(conn % 16)) {
                    *entry = (Some(index), challenge);
                    assert!(
                        actions.iter().any(|a| matches!(
                            a,
                            CoordinatorAction::Send(_, NativeMessage::Challenge { .. })
                        )),
                        "registration not challenged: {actions:?}"
                    );
                }
            }
            CoordinatorInput::RegisterRaw { conn, key } => {
                let msg = NativeMessage::Register { key };
                machine.handle(now, conn_of(conn), msg, challenge);
                if let Some(entry) = connected.get_mut(&(conn % 16)) {
                    *entry = (None, challenge);
                }
            }
            CoordinatorInput::Prove { conn, valid } => {
                let (index, nonce) = connected
                    .get(&(conn % 16))
                    .copied()
                    .unwrap_or((None, [0; 32]));
                let signature = match (valid, index.and_then(|i| keys.get(i))) {
                    (true, Some(key)) => {
                        key.sign(REGISTER_TAG, &[&nonce, &key.public().serialize()])
                    }
                    _ => [conn; 64],
                };
                machine.handle(
                    now,
                    conn_of(conn),
                    NativeMessage::Prove { signature },
                    challenge,
                );
            }
            CoordinatorInput::Request {
                conn,
                request,
                target,
            } => {
                let target = keys
                    .get(usize::from(target) % keys.len())
                    .map(NodeKey::id)
                    .unwrap_or(NodeId([0; 12]));
                if coordinator_request(
                    &mut machine,
                    now,
                    conn_of(conn),
                    request,
                    target,
                    connected.contains_key(&(conn % 16)),
                ) {
                    orders_issued.push(now);
                }
            }
            CoordinatorInput::RequestUnknown {
                conn,
                request,
                target,
            } => {
                if coordinator_request(
                    &mut machine,
                    now,
                    conn_of(conn),
                    request,
                    NodeId(target),
                    connected.contains_key(&(conn % 16)),
                ) {
                    orders_issued.push(now);
                }
            }
            CoordinatorInput::Report {
                conn,
                request,
                result,
            } => {
                let result = match result % 5 {
                    0 => PunchResult::Connected,
                    1 => PunchResult::NoConnection,
                    2 => PunchResult::HandshakeFailed,
                    3 => PunchResult::AuthFailed,
                    _ => PunchResult::Refused,
                };
                let msg = NativeMessage::Result {
                    request: request.into(),
                    result,
                };
                machine.handle(now, conn_of(conn), msg, challenge);
            }
            CoordinatorInput::NotForCoordinator { conn } => {
                let actions = machine.handle(
                    now,
                    conn_of(conn),
                    NativeMessage::Fail {
                        request: 1,
                        reason: FailReason::PeerBusy,
                    },
                    challenge,
                );
                if connected.contains_key(&(conn % 16)) {
                    assert!(
                        matches!(&actions[..], [CoordinatorAction::Close(..)]),
                        "{actions:?}"
                    );
                }
            }
            CoordinatorInput::Local { conn, endpoints } => {
                let endpoints = endpoints
                    .into_iter()
                    .take(crate::native::messages::MAX_LOCAL_ENDPOINTS)
                    .map(|(ip, port, kind)| own_network_endpoint(ip, port, kind))
                    .collect();
                machine.handle(
                    now,
                    conn_of(conn),
                    NativeMessage::Local { endpoints },
                    challenge,
                );
            }
            CoordinatorInput::Ports {
                conn,
                request,
                ip,
                ports,
            } => {
                let ports: Vec<u16> = ports
                    .into_iter()
                    .filter(|p| *p != 0)
                    .take(crate::native::messages::MAX_PREDICTED_PORTS)
                    .collect();
                if ports.is_empty() {
                    continue;
                }
                let ip = endpoint(ip, 1, false).ip();
                let actions = machine.handle(
                    now,
                    conn_of(conn),
                    NativeMessage::Ports {
                        request: request.into(),
                        ip,
                        ports: ports.clone(),
                    },
                    challenge,
                );
                // Passed on once, unchanged, to another connection; or
                // nothing; or the sender closed for naming another address.
                match &actions[..] {
                    [] | [CoordinatorAction::Close(..)] => {}
                    [CoordinatorAction::Send(
                        to,
                        NativeMessage::Ports {
                            request: r,
                            ip: i,
                            ports: p,
                        },
                    )] => {
                        assert_ne!(*to, conn_of(conn));
                        assert_eq!((*r, *i, p), (u64::from(request), ip, &ports));
                        let again = machine.handle(
                            now,
                            conn_of(conn),
                            NativeMessage::Ports {
                                request: request.into(),
                                ip,
                                ports,
                            },
                            challenge,
                        );
                        assert!(again.is_empty(), "passed on twice: {again:?}");
                    }
                    other => panic!("hpports answered with {other:?}"),
                }
            }
            CoordinatorInput::Nat { conn, class } => {
                let actions = machine.handle(
                    now,
                    conn_of(conn),
                    NativeMessage::Nat {
                        class: nat_brief(class),
                    },
                    challenge,
                );
                // Kept, never answered; a sender not registered is closed.
                assert!(
                    matches!(&actions[..], [] | [CoordinatorAction::Close(..)]),
                    "{actions:?}"
                );
            }
            CoordinatorInput::Rtt { conn, ms } => {
                machine.rtt(conn_of(conn), Duration::from_millis(ms.into()));
            }
            CoordinatorInput::Wait { secs } => {
                now += Duration::from_secs(secs.into());
                machine.tick(now);
            }
        }
        if let Err(e) = machine.check_invariants() {
            panic!("coordinator invariant broken: {e}");
        }
        assert_eq!(machine.connections(), connected.len());
        assert!(machine.registered() <= machine.connections());
        // Open orders are the last minute's punches, no more.
        orders_issued.retain(|t| now.saturating_duration_since(*t) < ORDER_LIFETIME);
        assert!(
            machine.open_orders() <= orders_issued.len(),
            "{} open orders, {} issued in the last minute",
            machine.open_orders(),
            orders_issued.len()
        );
    }
}

fn coordinator_request(
    machine: &mut Coordinator,
    now: Instant,
    conn: u64,
    request: u8,
    target: NodeId,
    is_connected: bool,
) -> bool {
    let msg = NativeMessage::Connect {
        request: request.into(),
        target,
    };
    let mut actions = machine.handle(now, conn, msg, [0; 32]);
    if !is_connected {
        assert!(actions.is_empty(), "answered a stranger: {actions:?}");
        return false;
    }
    // A peer's NAT class goes to a side just before its order (or the
    // own-network endpoints that precede it), for that request.
    let mut i = 0;
    while i < actions.len() {
        if let Some(CoordinatorAction::Send(to, NativeMessage::PeerNat { request: r, .. })) =
            actions.get(i)
        {
            assert_eq!(*r, u64::from(request));
            let next = actions.get(i + 1);
            assert!(
                matches!(next, Some(CoordinatorAction::Send(next_to, NativeMessage::Punch { request: nr, .. } | NativeMessage::Candidates { request: nr, .. })) if next_to == to && nr == r),
                "hppeernat not followed by its order: {actions:?}"
            );
            actions.remove(i);
        } else {
            i += 1;
        }
    }
    // Own-network endpoints go to a side just before its order, at most
    // four.
    let mut i = 0;
    while i < actions.len() {
        if let Some(CoordinatorAction::Send(to, NativeMessage::Candidates { endpoints, .. })) =
            actions.get(i)
        {
            assert!(endpoints.len() <= crate::native::messages::MAX_LOCAL_ENDPOINTS);
            let next = actions.get(i + 1);
            assert!(
                matches!(next, Some(CoordinatorAction::Send(next_to, NativeMessage::Punch { .. })) if next_to == to),
                "hpcands not followed by its order: {actions:?}"
            );
            actions.remove(i);
        } else {
            i += 1;
        }
    }
    // Answered: a failure, or both orders (the requester's first).
    match &actions[..] {
        [CoordinatorAction::Send(to, NativeMessage::Fail { .. })] => {
            assert_eq!(*to, conn);
            false
        }
        [CoordinatorAction::Send(
            to,
            NativeMessage::Punch {
                role: PunchRole::Initiator,
                ..
            },
        ), CoordinatorAction::Send(
            other,
            NativeMessage::Punch {
                role: PunchRole::Responder,
                ..
            },
        )] => {
            assert_eq!(*to, conn);
            assert_ne!(*other, conn, "a node ordered to punch itself");
            true
        }
        other => panic!("request not answered properly: {other:?}"),
    }
}

#[derive(Arbitrary, Debug)]
enum ClientInput {
    Challenge {
        nonce: [u8; 32],
    },
    Registered {
        ours: bool,
        ip: u8,
        port: u16,
    },
    Fail {
        request: u8,
    },
    Punch {
        request: u8,
        initiator: bool,
        key: u8,
        raw_key: Option<[u8; 32]>,
        ip: u8,
        v6: bool,
        port: u16,
        delay_ms: u32,
    },
    NotForClient,
    Request {
        request: u8,
        target: u8,
    },
    Candidates {
        request: u8,
        endpoints: Vec<(u8, u16, u8)>,
    },
    Ports {
        request: u8,
        ip: u8,
        v6: bool,
        ports: Vec<u16>,
    },
    PeerNat {
        request: u8,
        class: u8,
    },
    /// Our own classification, learned or changed.
    SetNat {
        class: u8,
    },
    Wait {
        ms: u16,
    },
}

/// Arbitrary coordinator messages and local requests against the client:
/// never more punches than the reflection limits allow, per target and in
/// all, and no map that grows without bound.
pub fn client_machine(data: &[u8]) {
    let Ok(steps) = Vec::<ClientInput>::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let config = ClientConfig {
        orders_per_target_per_minute: 2,
        orders_per_minute: 5,
        ..Default::default()
    };
    let keys = keys();
    let Some(own) = keys.first() else { return };
    let session_id = [7; 32];
    let coordinator = coordinator_key();
    let mut client = Client::new(
        config.clone(),
        own.clone(),
        crate::native::machine::ExpectedCoordinator {
            id: coordinator.id(),
            session_id,
        },
    );
    // The coordinator proves its key first; everything below is what a
    // coordinator that did so may send.
    // An old coordinator or one that speaks of every feature (dual stack
    // lets `hpcands` carry an other-family endpoint).
    let features = match data.first() {
        Some(b) if b % 2 == 1 => crate::native::messages::FEATURES,
        _ => 0,
    };
    let proof = crate::native::messages::coordinator_proof_data(&session_id, 1, features);
    let verified = client.handle(
        Instant::now(),
        NativeMessage::Coordinator {
            version: 1,
            features,
            key: coordinator.public().serialize(),
            signature: coordinator.sign(crate::native::messages::COORDINATOR_TAG, &[&proof]),
        },
    );
    assert!(
        matches!(
            &verified[..],
            [
                ClientEvent::CoordinatorVerified { .. },
                ClientEvent::Send(NativeMessage::Register { .. })
            ]
        ),
        "{verified:?}"
    );
    let mut now = Instant::now();
    let mut punches: Vec<(Instant, IpAddr)> = Vec::new();
    let mut ordered: std::collections::HashMap<u64, Vec<IpAddr>> = Default::default();
    let mut observed: Option<SocketAddr> = None;
    for step in steps {
        let events = match step {
            ClientInput::Challenge { nonce } => {
                client.handle(now, NativeMessage::Challenge { nonce })
            }
            ClientInput::Registered { ours, ip, port } => {
                let id = if ours { own.id() } else { NodeId([ip; 12]) };
                if ours {
                    observed = Some(endpoint(ip, port, false));
                }
                client.handle(
                    now,
                    NativeMessage::Registered {
                        id,
                        observed: endpoint(ip, port, false),
                    },
                )
            }
            ClientInput::Fail { request } => client.handle(
                now,
                NativeMessage::Fail {
                    request: request.into(),
                    reason: FailReason::UnknownPeer,
                },
            ),
            ClientInput::Punch {
                request,
                initiator,
                key,
                raw_key,
                ip,
                v6,
                port,
                delay_ms,
            } => {
                let peer_key = match raw_key {
                    Some(raw) => raw,
                    None => keys
                        .get(usize::from(key) % keys.len())
                        .map(|k| k.public().serialize())
                        .unwrap_or_default(),
                };
                let role = if initiator {
                    PunchRole::Initiator
                } else {
                    PunchRole::Responder
                };
                client.handle(
                    now,
                    NativeMessage::Punch {
                        request: request.into(),
                        role,
                        peer_key,
                        peer: endpoint(ip, port, v6),
                        delay_ms,
                    },
                )
            }
            ClientInput::NotForClient => {
                let events = client.handle(now, NativeMessage::Register { key: [1; 32] });
                assert!(matches!(&events[..], [ClientEvent::Close(_)]), "{events:?}");
                events
            }
            ClientInput::Candidates { request, endpoints } => client.handle(
                now,
                NativeMessage::Candidates {
                    request: request.into(),
                    endpoints: endpoints
                        .into_iter()
                        .take(crate::native::messages::MAX_LOCAL_ENDPOINTS)
                        .map(|(ip, port, kind)| own_network_endpoint(ip, port, kind))
                        .collect(),
                },
            ),
            ClientInput::Ports {
                request,
                ip,
                v6,
                ports,
            } => client.handle(
                now,
                NativeMessage::Ports {
                    request: request.into(),
                    ip: endpoint(ip, 1, v6).ip(),
                    ports: ports
                        .into_iter()
                        .filter(|p| *p != 0)
                        .take(crate::native::messages::MAX_PREDICTED_PORTS)
                        .collect(),
                },
            ),
            ClientInput::PeerNat { request, class } => {
                let events = client.handle(
                    now,
                    NativeMessage::PeerNat {
                        request: request.into(),
                        class: nat_brief(class),
                    },
                );
                assert!(events.is_empty(), "{events:?}");
                events
            }
            ClientInput::SetNat { class } => {
                let class = nat_brief(class);
                let told = client.set_nat(class);
                if let Some(told) = &told {
                    assert_eq!(told, &NativeMessage::Nat { class });
                }
                // Told at most once per class.
                assert_eq!(client.set_nat(class), None);
                told.map(ClientEvent::Send).into_iter().collect()
            }
            ClientInput::Request { request, target } => {
                let target = keys
                    .get(usize::from(target) % keys.len())
                    .map(NodeKey::id)
                    .unwrap_or(NodeId([0; 12]));
                let _ = client.request(now, request.into(), target);
                vec![]
            }
            ClientInput::Wait { ms } => {
                now += Duration::from_millis(ms.into());
                vec![]
            }
        };
        for event in &events {
            if let ClientEvent::Punch(order) = event {
                assert!(order.delay <= config.max_delay);
                // Own-network SYNs only toward a peer behind our own
                // public address, and only to own-network addresses.
                if !order.local.is_empty() {
                    assert_eq!(observed.map(|o| o.ip()), Some(order.peer.ip()), "{order:?}");
                }
                assert!(
                    order
                        .local
                        .iter()
                        .all(|l| crate::net::routable::is_own_network(l.ip())),
                    "{order:?}"
                );
                // Dual stack: one punchable endpoint of the other family.
                if let Some(other) = order.other_family {
                    assert_ne!(other.is_ipv4(), order.peer.is_ipv4(), "{order:?}");
                    assert!(crate::net::routable::is_routable(other.ip()), "{order:?}");
                }
                punches.push((now, order.peer.ip()));
                ordered
                    .entry(order.request)
                    .or_default()
                    .push(order.peer.ip());
            }
            // Predicted ports: only for an order we follow, at the address
            // it named, once.
            if let ClientEvent::Predicted { request, endpoints } = event {
                let ips = ordered.get_mut(request);
                let ip = endpoints.first().map(|e| e.ip());
                let at = ips
                    .as_ref()
                    .and_then(|ips| ips.iter().position(|i| Some(*i) == ip));
                assert!(
                    at.is_some(),
                    "predicted ports for no order there: {event:?}"
                );
                if let (Some(ips), Some(at)) = (ips, at) {
                    ips.remove(at);
                }
                assert!(endpoints.len() <= crate::native::messages::MAX_PREDICTED_PORTS);
                assert!(endpoints.iter().all(|e| Some(e.ip()) == ip), "{event:?}");
            }
        }
        let window = Duration::from_secs(60);
        punches.retain(|(t, _)| now.saturating_duration_since(*t) < window);
        assert!(
            punches.len() <= config.orders_per_minute,
            "reflection limit exceeded"
        );
        for (_, ip) in &punches {
            let to_ip = punches.iter().filter(|(_, other)| other == ip).count();
            assert!(
                to_ip <= config.orders_per_target_per_minute,
                "per-target limit exceeded"
            );
        }
        assert!(client.outstanding_requests() <= MAX_OUTSTANDING_REQUESTS);
        assert!(client.remembered_orders() <= config.orders_per_minute);
    }
}

#[derive(Arbitrary, Debug)]
enum ExchangeInput {
    StartRound,
    Connect(Vec<(u8, bool, u16)>),
    Garbage(Vec<u8>),
    Sync,
    Wait { ms: u16 },
}

/// Both roles of the exchange fed arbitrary messages in arbitrary order:
/// never more than [`MAX_ROUNDS`] rounds or [`MAX_CANDIDATES`] candidates.
pub fn exchange_machines(data: &[u8]) {
    let Ok(steps) = Vec::<ExchangeInput>::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let ours: Vec<::libp2p::Multiaddr> = vec!["/ip4/203.0.113.9/tcp/4001"
        .parse()
        .expect("valid multiaddr")];
    let mut initiator = exchange::SideB::new(ours.clone(), false);
    let mut responder = exchange::SideA::new(ours, false);
    let mut now = Instant::now();
    let mut punches = 0u32;
    for step in steps {
        let msg = match step {
            ExchangeInput::StartRound => {
                if initiator.start_round(now).is_err() {
                    assert_eq!(initiator.round(), MAX_ROUNDS);
                }
                continue;
            }
            ExchangeInput::Wait { ms } => {
                now += Duration::from_millis(ms.into());
                continue;
            }
            ExchangeInput::Sync => ExchangeMessage::Sync,
            ExchangeInput::Garbage(bytes) => match ExchangeMessage::decode(&bytes) {
                Ok(m) => m,
                Err(_) => continue,
            },
            ExchangeInput::Connect(addrs) => ExchangeMessage::Connect(
                addrs
                    .iter()
                    .map(|(ip, v6, port)| {
                        let socket = endpoint(*ip, *port, *v6);
                        let mut m = ::libp2p::Multiaddr::empty();
                        m.push(match socket.ip() {
                            IpAddr::V4(v4) => ::libp2p::multiaddr::Protocol::Ip4(v4),
                            IpAddr::V6(v6) => ::libp2p::multiaddr::Protocol::Ip6(v6),
                        });
                        m.push(::libp2p::multiaddr::Protocol::Tcp(socket.port()));
                        m
                    })
                    .collect(),
            ),
        };
        for steps in [
            initiator.on_message(now, msg.clone()),
            responder.on_message(now, msg),
        ]
        .into_iter()
        .flatten()
        {
            for step in steps {
                if let exchange::Step::Punch {
                    candidates,
                    guesses,
                    ..
                } = step
                {
                    punches += 1;
                    assert!(
                        candidates.len() <= MAX_CANDIDATES,
                        "{} candidates",
                        candidates.len()
                    );
                    // Guesses: once each, only at the first candidate's
                    // IPv4 address, never one of the candidates.
                    assert!(guesses.len() <= crate::punch::predict::BIRTHDAY_PORTS);
                    assert!(guesses.iter().all(|g| g.is_ipv4()
                        && Some(g.ip()) == candidates.first().map(|c| c.ip())
                        && !candidates.contains(g)));
                }
            }
        }
        assert!(initiator.round() <= MAX_ROUNDS);
        assert!(responder.round() <= MAX_ROUNDS);
        assert!(
            punches <= 2 * MAX_ROUNDS,
            "{punches} punches from {MAX_ROUNDS} rounds a side"
        );
    }
}

#[derive(Arbitrary, Debug)]
struct ScheduleInput {
    attempts: u8,
    interval_ms: u16,
    candidates: u8,
    polls: Vec<u16>,
}

/// The schedule polled at arbitrary (non-decreasing) times: it dials at
/// most `attempts` times, in order, never before a slot, and gives up for
/// good once it has.
pub fn punch_schedule(data: &[u8]) {
    let Ok(input) = ScheduleInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let config = ScheduleConfig {
        attempts: u32::from(input.attempts % 8),
        interval: Duration::from_millis(input.interval_ms.into()),
    };
    let candidates: Vec<SocketAddr> = (0..input.candidates % 4)
        .map(|i| endpoint(i, 4000, false))
        .collect();
    let start = Instant::now();
    let mut schedule = Schedule::new(config, candidates.clone(), start);
    let mut now = start;
    let mut dials = 0u32;
    let mut gave_up = false;
    for advance in input.polls {
        now += Duration::from_millis(advance.into());
        match schedule.poll(now) {
            Step::Dial {
                attempt,
                candidates: dialed,
            } => {
                assert!(!gave_up, "dialed after giving up");
                assert_eq!(attempt, dials);
                assert_eq!(dialed, candidates);
                assert!(now >= start + config.interval * attempt);
                dials += 1;
            }
            Step::WaitUntil(at) => {
                assert!(!gave_up, "waits after giving up");
                assert!(at > now);
            }
            Step::GiveUp => gave_up = true,
        }
        assert!(dials <= config.attempts);
    }
}

/// One of the NAT classes a node can state, picked by `pick`.
fn nat_brief(pick: u8) -> crate::nat::NatBrief {
    use crate::nat::{Allocation, MappingBehaviour, NatBrief};
    let mapping = match pick % 3 {
        0 => MappingBehaviour::EndpointIndependent,
        1 => MappingBehaviour::AddressAndPortDependent,
        _ => MappingBehaviour::None,
    };
    let allocation = match (pick / 3) % 3 {
        0 => Allocation::Preserving,
        1 => Allocation::Sequential(match pick % 4 {
            0 => 1,
            1 => 2,
            2 => -1,
            _ => 7,
        }),
        _ => Allocation::Random,
    };
    NatBrief {
        mapping,
        port_preserving: pick & 0x80 != 0,
        allocation,
    }
}

// ------------------------------------------------------------ address book

/// Records of 8 nodes via 4 coordinators (in two netgroups), signed once:
/// signing per input would make the target crawl.
fn fuzz_records() -> &'static [crate::native::reach::ReachRecord] {
    static RECORDS: OnceLock<Vec<crate::native::reach::ReachRecord>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let mut records = Vec::new();
        for node in 1u8..=8 {
            let Ok(key) = NodeKey::from_secret(&[node; 32]) else {
                continue;
            };
            for coordinator in 0u8..4 {
                let at = SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2 + coordinator / 2, coordinator)),
                    8333,
                );
                records.push(crate::native::reach::ReachRecord::sign(
                    &key,
                    NodeId([coordinator; 12]),
                    at,
                    1_800_000_000 + u64::from(node) * 60,
                ));
            }
        }
        records
    })
}

/// The address manager under any sequence of what peers and the outbound
/// manager do to it: its tables and entries always agree, a selection is
/// always a live entry that the skip allowed, and floods stay in their
/// bucket.
pub fn address_book(data: &[u8]) {
    use crate::addrman::{AddrMan, Netgroup, PeerAddr};
    use rand::SeedableRng;
    let mut u = Unstructured::new(data);
    let mut man = AddrMan::with_key([7; 32]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut now = 1_800_000_000u64;
    let records = fuzz_records();
    let mut known = Vec::new();
    // An exhausted `Unstructured` keeps answering defaults: stop at its end.
    while !u.is_empty() {
        let Ok(op) = u.int_in_range(0u8..=6) else {
            break;
        };
        let source = match u.int_in_range(0u8..=2).unwrap_or(0) {
            0 => Netgroup::Local,
            1 => Netgroup::ipv4([198, 51]),
            _ => Netgroup::ipv4([u.arbitrary().unwrap_or(0), 0]),
        };
        match op {
            0 => {
                let ip: [u8; 4] = u.arbitrary().unwrap_or([203, 0, 113, 1]);
                let addr = PeerAddr::Direct(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(ip)),
                    u.arbitrary().unwrap_or(8333),
                ));
                known.extend(addr.key());
                man.add(addr, source, now);
            }
            1 => {
                let Some(record) = records
                    .get(usize::from(u.arbitrary::<u8>().unwrap_or(0)) % records.len().max(1))
                else {
                    continue;
                };
                let addr = PeerAddr::Via(record.clone());
                known.extend(addr.key());
                man.add(addr, source, now);
            }
            2..=4 => {
                if known.is_empty() {
                    continue;
                }
                let i = usize::from(u.arbitrary::<u16>().unwrap_or(0)) % known.len();
                let Some(key) = known.get(i) else { continue };
                match op {
                    2 => man.good(key, now),
                    3 => man.failed(key, now),
                    _ => man.attempt(key, now),
                }
            }
            5 => {
                now = now.saturating_add(u64::from(u.arbitrary::<u16>().unwrap_or(0)));
                man.expire(now);
            }
            _ => {
                let banned = Netgroup::ipv4([u.arbitrary().unwrap_or(0), 0]);
                if let Some(e) = man.select(now, &mut rng, |e| e.addr.netgroup() == banned) {
                    assert_ne!(e.addr.netgroup(), banned, "select ignored the skip");
                    assert!(
                        e.addr.expires().is_none_or(|x| x >= now),
                        "select gave a dead address"
                    );
                }
            }
        }
        man.check_invariants();
    }
}
