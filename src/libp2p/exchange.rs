//! The coordination exchange on the relayed connection: DCUtR's messages and
//! flow (libp2p specs, relay/DCUtR.md) under our own protocol id, so that
//! the punched connection can become a BIP324 session instead of a libp2p
//! one. Message = unsigned-varint length + protobuf `HolePunch`.
//!
//! B, the side that accepted the relayed connection, opens the stream, sends
//! CONNECT with its observed addresses and measures the time to A's CONNECT
//! (the RTT). It then sends SYNC and dials RTT/2 later; A dials as soon as
//! SYNC arrives, so both SYNs leave together. Up to three rounds on the same
//! stream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ::libp2p::{Multiaddr, StreamProtocol};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use prost::Message;

use crate::clock::Later;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/bitpunch/dcutr-bip324/1.0.0");
/// DCUtR's own limit on a message.
pub const MAX_MESSAGE: usize = 4096;
pub const MAX_ROUNDS: u32 = 3;
/// Candidates taken from one CONNECT; the rest are ignored. A home node has
/// one or two public mappings per address family (the relay's view, its
/// listen address) and perhaps a LAN address: 8 leaves room for a dual-stack
/// node with several interfaces, while a hostile peer's 400 addresses become
/// 8 SYNs per attempt, not 400.
pub const MAX_CANDIDATES: usize = 8;

/// DCUtR's `HolePunch` (proto2): `required Type type = 1; repeated bytes
/// ObsAddrs = 2;`, with CONNECT = 100 and SYNC = 300. `type` is declared
/// optional here, which encodes the same, so that a message without it can
/// be told apart and refused (prost fills in a default for `required`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HolePunch {
    #[prost(enumeration = "HolePunchType", optional, tag = "1")]
    pub r#type: Option<i32>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub obs_addrs: Vec<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum HolePunchType {
    Connect = 100,
    Sync = 300,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeMessage {
    Connect(Vec<Multiaddr>),
    Sync,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    Oversized(usize),
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("unexpected {got} while waiting for {expected}")]
    Unexpected {
        got: &'static str,
        expected: &'static str,
    },
    #[error("no observed address to offer the peer yet")]
    NoAddress,
    #[error("no direct connection after {0} rounds")]
    Exhausted(u32),
}

impl ExchangeMessage {
    fn name(&self) -> &'static str {
        match self {
            ExchangeMessage::Connect(_) => "CONNECT",
            ExchangeMessage::Sync => "SYNC",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let msg = match self {
            ExchangeMessage::Connect(addrs) => HolePunch {
                r#type: Some(HolePunchType::Connect as i32),
                obs_addrs: addrs.iter().map(|a| a.to_vec()).collect(),
            },
            ExchangeMessage::Sync => HolePunch {
                r#type: Some(HolePunchType::Sync as i32),
                obs_addrs: vec![],
            },
        };
        msg.encode_to_vec()
    }

    /// Unparsable addresses are skipped, as DCUtR does; a bad type or bad
    /// protobuf is an error.
    pub fn decode(bytes: &[u8]) -> Result<ExchangeMessage, ExchangeError> {
        let msg = HolePunch::decode(bytes).map_err(|e| ExchangeError::Decode(e.to_string()))?;
        let kind = msg
            .r#type
            .ok_or_else(|| ExchangeError::Decode("no type".into()))?;
        match HolePunchType::try_from(kind) {
            Ok(HolePunchType::Connect) => Ok(ExchangeMessage::Connect(
                msg.obs_addrs
                    .into_iter()
                    .filter_map(|a| Multiaddr::try_from(a).ok())
                    .collect(),
            )),
            Ok(HolePunchType::Sync) => Ok(ExchangeMessage::Sync),
            Err(_) => Err(ExchangeError::Decode(format!("unknown type {kind}"))),
        }
    }
}

pub async fn write_message<S: AsyncWrite + Unpin>(
    stream: &mut S,
    msg: &ExchangeMessage,
) -> Result<usize, ExchangeError> {
    let body = msg.encode();
    let mut len = unsigned_varint::encode::usize_buffer();
    let prefix = unsigned_varint::encode::usize(body.len(), &mut len);
    stream.write_all(prefix).await?;
    stream.write_all(&body).await?;
    stream.flush().await?;
    Ok(prefix.len().saturating_add(body.len()))
}

pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(ExchangeMessage, usize), ExchangeError> {
    let len = unsigned_varint::aio::read_usize(&mut *stream)
        .await
        .map_err(|e| match e {
            unsigned_varint::io::ReadError::Io(e) => ExchangeError::Io(e),
            other => ExchangeError::Decode(other.to_string()),
        })?;
    if len > MAX_MESSAGE {
        return Err(ExchangeError::Oversized(len));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    let prefix =
        unsigned_varint::encode::usize(len, &mut unsigned_varint::encode::usize_buffer()).len();
    Ok((ExchangeMessage::decode(&body)?, prefix.saturating_add(len)))
}

/// The addresses worth offering a peer, and the only ones we dial: TCP on
/// a globally routable address (`net::routable`: the IANA special-purpose
/// registries, IPv4-mapped addresses judged and dialed as IPv4; the lab's
/// documentation ranges pass), or any with `allow_private` (one machine).
pub fn punchable(addr: &Multiaddr, allow_private: bool) -> Option<SocketAddr> {
    let socket = super::transport::socket_addr(addr)?;
    if allow_private {
        return Some(socket);
    }
    match crate::net::routable::routable_target(socket) {
        Ok(target) => Some(target),
        Err(why) => {
            tracing::debug!(%addr, why, "not a punch candidate");
            None
        }
    }
}

/// What the exchange asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Send(ExchangeMessage),
    /// Punch now-ish: first SYN at `start`, to `candidates`, and once to
    /// each of `guesses`.
    Punch {
        candidates: Vec<SocketAddr>,
        guesses: Vec<SocketAddr>,
        start: Instant,
        rtt: Option<Duration>,
    },
    /// Wait for the peer's next message.
    Receive,
}

/// DCUtR's B, the node that was reached through the relay: it opens the
/// exchange stream and measures the RTT; it is the BIP324 responder on the
/// punched connection. Without I/O.
#[derive(Debug)]
pub struct SideB {
    ours: Vec<Multiaddr>,
    allow_private: bool,
    round: u32,
    sent_connect: Option<Instant>,
}

impl SideB {
    pub fn new(ours: Vec<Multiaddr>, allow_private: bool) -> Self {
        SideB {
            ours,
            allow_private,
            round: 0,
            sent_connect: None,
        }
    }

    pub fn round(&self) -> u32 {
        self.round
    }

    /// Start a round (also after a failed punch): CONNECT, or give up.
    pub fn start_round(&mut self, now: Instant) -> Result<Step, ExchangeError> {
        if self.round >= MAX_ROUNDS {
            return Err(ExchangeError::Exhausted(self.round));
        }
        self.round = self.round.saturating_add(1);
        self.sent_connect = Some(now);
        Ok(Step::Send(ExchangeMessage::Connect(self.ours.clone())))
    }

    /// A's CONNECT arrived: SYNC, then punch half an RTT later.
    pub fn on_message(
        &mut self,
        now: Instant,
        msg: ExchangeMessage,
    ) -> Result<Vec<Step>, ExchangeError> {
        let (ExchangeMessage::Connect(theirs), Some(sent)) = (&msg, self.sent_connect.take())
        else {
            return Err(ExchangeError::Unexpected {
                got: msg.name(),
                expected: "CONNECT",
            });
        };
        let rtt = now.saturating_duration_since(sent);
        let candidates = candidates(theirs, &self.ours, self.allow_private);
        let guesses = guesses(theirs, &candidates, self.allow_private);
        Ok(vec![
            Step::Send(ExchangeMessage::Sync),
            Step::Punch {
                candidates,
                guesses,
                start: now.later(rtt.checked_div(2).unwrap_or_default()),
                rtt: Some(rtt),
            },
        ])
    }
}

/// The peer's punchable addresses, without duplicates, at most
/// [`MAX_CANDIDATES`] of them in the order the peer gave. Its own-network
/// addresses follow, only when one of its public addresses is one of
/// `ours` (the peer is behind our own NAT): nobody can point our SYNs into
/// our network for a peer elsewhere.
pub fn candidates(
    theirs: &[Multiaddr],
    ours: &[Multiaddr],
    allow_private: bool,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for addr in theirs.iter().filter_map(|a| punchable(a, allow_private)) {
        if out.len() >= MAX_CANDIDATES {
            break;
        }
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    let our_ips: Vec<std::net::IpAddr> = ours
        .iter()
        .filter_map(|a| punchable(a, false))
        .map(|s| s.ip())
        .collect();
    let behind_our_nat = out.iter().any(|c| our_ips.contains(&c.ip()));
    if behind_our_nat {
        let own = theirs
            .iter()
            .filter_map(super::transport::socket_addr)
            .filter(|s| crate::net::routable::is_own_network(s.ip()));
        for addr in own {
            if out.len() >= MAX_CANDIDATES {
                break;
            }
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out
}

/// The peer's addresses beyond its candidates, at the IPv4 address of its
/// first (its public one), distinct, at most
/// [`crate::punch::predict::BIRTHDAY_PORTS`]: ports to dial once each.
/// A peer behind a symmetric NAT offers them: a few are the ports it
/// predicts its NAT will give it, many are a birthday's guesses at its
/// mappings (docs/native-protocol.md, "Port prediction"); the punch pays
/// for a birthday from its own allowance. Another address is never
/// guessed at, and an IPv6 peer has no NAT to guess about.
pub fn guesses(
    theirs: &[Multiaddr],
    candidates: &[SocketAddr],
    allow_private: bool,
) -> Vec<SocketAddr> {
    let Some(public) = candidates.first().map(|c| c.ip()).filter(|ip| ip.is_ipv4()) else {
        return Vec::new();
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for addr in theirs.iter().filter_map(|a| punchable(a, allow_private)) {
        if out.len() >= crate::punch::predict::BIRTHDAY_PORTS {
            break;
        }
        if addr.ip() == public && !candidates.contains(&addr) && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// DCUtR's A, the node that reached B through the relay: it answers
/// CONNECT and dials on SYNC; it is the BIP324 initiator (it asked for the
/// connection). Without I/O.
#[derive(Debug)]
pub struct SideA {
    ours: Vec<Multiaddr>,
    allow_private: bool,
    /// The peer's candidates and guesses, from its CONNECT.
    theirs: Option<(Vec<SocketAddr>, Vec<SocketAddr>)>,
    /// CONNECTs answered: each is a round, and a peer gets [`MAX_ROUNDS`].
    rounds: u32,
}

impl SideA {
    pub fn new(ours: Vec<Multiaddr>, allow_private: bool) -> Self {
        SideA {
            ours,
            allow_private,
            theirs: None,
            rounds: 0,
        }
    }

    pub fn round(&self) -> u32 {
        self.rounds
    }

    pub fn on_message(
        &mut self,
        now: Instant,
        msg: ExchangeMessage,
    ) -> Result<Vec<Step>, ExchangeError> {
        match (msg, self.theirs.take()) {
            (ExchangeMessage::Connect(_), None) if self.rounds >= MAX_ROUNDS => {
                Err(ExchangeError::Exhausted(self.rounds))
            }
            (ExchangeMessage::Connect(theirs), None) => {
                self.rounds = self.rounds.saturating_add(1);
                let candidates = candidates(&theirs, &self.ours, self.allow_private);
                let guesses = guesses(&theirs, &candidates, self.allow_private);
                self.theirs = Some((candidates, guesses));
                Ok(vec![
                    Step::Send(ExchangeMessage::Connect(self.ours.clone())),
                    Step::Receive,
                ])
            }
            (ExchangeMessage::Sync, Some((candidates, guesses))) => Ok(vec![Step::Punch {
                candidates,
                guesses,
                start: now,
                rtt: None,
            }]),
            (msg, expected) => Err(ExchangeError::Unexpected {
                got: msg.name(),
                expected: if expected.is_some() {
                    "SYNC"
                } else {
                    "CONNECT"
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn own_network_addresses_only_for_a_peer_behind_our_public_address() {
        let ours = [addr("/ip4/203.0.113.7/tcp/18444")];
        let theirs = [
            addr("/ip4/203.0.113.7/tcp/40002"),
            addr("/ip4/192.168.1.11/tcp/18444"),
            addr("/ip4/127.0.0.1/tcp/18444"),
        ];
        let got = candidates(&theirs, &ours, false);
        assert_eq!(
            got,
            vec![
                "203.0.113.7:40002".parse::<SocketAddr>().unwrap(),
                "192.168.1.11:18444".parse().unwrap()
            ]
        );
        // Elsewhere: its LAN address is none of our business.
        let elsewhere = [addr("/ip4/198.51.100.9/tcp/18444")];
        assert_eq!(candidates(&theirs, &elsewhere, false).len(), 1);
        // Claiming only a LAN address gets nothing.
        assert!(candidates(&theirs[1..], &ours, false).is_empty());
    }

    #[test]
    fn a_birthday_offer_is_candidates_then_guesses_at_the_public_address() {
        let ours = [addr("/ip4/203.0.113.7/tcp/18444")];
        let mut theirs = vec![addr("/ip4/198.51.100.4/tcp/40002")];
        theirs.extend((0..300).map(|i| addr(&format!("/ip4/198.51.100.4/tcp/{}", 2000 + i))));
        theirs.push(addr("/ip4/192.0.2.9/tcp/3000"));
        let candidates = candidates(&theirs, &ours, false);
        assert_eq!(candidates.len(), MAX_CANDIDATES);
        let guesses = guesses(&theirs, &candidates, false);
        assert_eq!(guesses.len(), crate::punch::predict::BIRTHDAY_PORTS);
        assert!(guesses
            .iter()
            .all(|g| g.ip() == candidates[0].ip() && !candidates.contains(g)));
        // The whole offer fits one DCUtR message.
        let connect =
            ExchangeMessage::Connect(theirs[..=crate::punch::predict::BIRTHDAY_PORTS + 1].to_vec());
        assert!(
            connect.encode().len() < MAX_MESSAGE,
            "{} bytes",
            connect.encode().len()
        );
        // An IPv6 peer is never guessed at.
        let v6 = [
            addr("/ip6/2001:db8::4/tcp/40002"),
            addr("/ip6/2001:db8::4/tcp/40003"),
        ];
        let v6_candidates = super::candidates(&v6, &ours, true);
        assert!(super::guesses(&v6, &v6_candidates[..1], true).is_empty());
    }

    #[test]
    fn a_connect_with_400_addresses_yields_8_routable_candidates_at_most() {
        let mut theirs = vec![
            addr("/ip6/::ffff:10.0.0.1/tcp/1"),
            addr("/ip6/::ffff:127.0.0.1/tcp/1"),
            addr("/ip4/127.0.0.1/tcp/1"),
            addr("/ip6/64:ff9b::a00:1/tcp/1"),
            addr("/ip6/2002:a00:1::1/tcp/1"),
            addr("/ip4/240.0.0.1/tcp/1"),
        ];
        theirs.extend(
            (0..400).map(|i| addr(&format!("/ip4/198.51.100.{}/tcp/{}", i % 250, 1000 + i))),
        );
        let mut responder = SideA::new(vec![addr("/ip4/203.0.113.1/tcp/1")], false);
        let now = Instant::now();
        responder
            .on_message(now, ExchangeMessage::Connect(theirs.clone()))
            .unwrap();
        let steps = responder.on_message(now, ExchangeMessage::Sync).unwrap();
        let [Step::Punch {
            candidates,
            guesses,
            ..
        }] = &steps[..]
        else {
            panic!("{steps:?}")
        };
        assert_eq!(candidates.len(), MAX_CANDIDATES);
        assert!(candidates
            .iter()
            .all(|c| c.ip().to_string().starts_with("198.51.100.")));
        // Guesses only at the first candidate's address: 198.51.100.0 is
        // offered twice (ports 1000 and 1250), and the first is a candidate.
        assert_eq!(guesses, &vec!["198.51.100.0:1250".parse().unwrap()]);
        // IPv4-mapped public addresses are dialed as IPv4.
        assert_eq!(
            punchable(&addr("/ip6/::ffff:203.0.113.9/tcp/7"), false),
            Some("203.0.113.9:7".parse().unwrap())
        );
        // A fourth round is refused.
        for _ in 0..2 {
            responder
                .on_message(now, ExchangeMessage::Connect(theirs.clone()))
                .unwrap();
            responder.on_message(now, ExchangeMessage::Sync).unwrap();
        }
        assert!(matches!(
            responder.on_message(now, ExchangeMessage::Connect(theirs)),
            Err(ExchangeError::Exhausted(3))
        ));
    }

    #[test]
    fn messages_round_trip_and_bad_ones_are_errors() {
        let connect = ExchangeMessage::Connect(vec![addr("/ip4/203.0.113.2/tcp/4001")]);
        for msg in [connect, ExchangeMessage::Sync] {
            assert_eq!(ExchangeMessage::decode(&msg.encode()).unwrap(), msg);
        }
        // type 200 does not exist; missing required type; garbage
        let bad = HolePunch {
            r#type: Some(200),
            obs_addrs: vec![],
        }
        .encode_to_vec();
        assert!(ExchangeMessage::decode(&bad).is_err());
        assert!(ExchangeMessage::decode(&[]).is_err());
        assert!(ExchangeMessage::decode(&[0xff, 0xff, 0xff]).is_err());
        // An unparsable address is skipped, not fatal.
        let mixed = HolePunch {
            r#type: Some(100),
            obs_addrs: vec![vec![0xff, 0x00], addr("/ip4/198.51.100.1/tcp/1").to_vec()],
        }
        .encode_to_vec();
        assert_eq!(
            ExchangeMessage::decode(&mixed).unwrap(),
            ExchangeMessage::Connect(vec![addr("/ip4/198.51.100.1/tcp/1")])
        );
    }

    #[tokio::test]
    async fn framing_enforces_the_size_limit() {
        use tokio_util::compat::TokioAsyncReadCompatExt;
        let (a, b) = tokio::io::duplex(16 * 1024);
        let (mut a, mut b) = (a.compat(), b.compat());
        let sent = write_message(&mut a, &ExchangeMessage::Sync).await.unwrap();
        let (got, read) = read_message(&mut b).await.unwrap();
        assert_eq!((got, read), (ExchangeMessage::Sync, sent));
        let mut huge = Vec::new();
        huge.extend_from_slice(unsigned_varint::encode::usize(
            MAX_MESSAGE + 1,
            &mut unsigned_varint::encode::usize_buffer(),
        ));
        a.write_all(&huge).await.unwrap();
        assert!(matches!(
            read_message(&mut b).await,
            Err(ExchangeError::Oversized(_))
        ));
    }

    #[test]
    fn private_addresses_are_not_offered_unless_allowed() {
        assert!(punchable(&addr("/ip4/203.0.113.2/tcp/1"), false).is_some());
        assert!(punchable(&addr("/ip4/10.1.0.10/tcp/1"), false).is_none());
        assert!(punchable(&addr("/ip4/127.0.0.1/tcp/1"), false).is_none());
        assert!(punchable(&addr("/ip4/100.64.1.1/tcp/1"), false).is_none());
        assert!(punchable(&addr("/ip6/fe80::1/tcp/1"), false).is_none());
        assert!(punchable(&addr("/ip4/127.0.0.1/tcp/1"), true).is_some());
        assert!(punchable(&addr("/ip4/203.0.113.2/udp/1/quic-v1"), false).is_none());
    }

    #[test]
    fn rtt_timing_and_rounds() {
        let t0 = Instant::now();
        let ours = vec![addr("/ip4/203.0.113.6/tcp/2")];
        let mut b = SideB::new(ours.clone(), false);
        let mut a = SideA::new(vec![addr("/ip4/203.0.113.2/tcp/1")], false);
        let Step::Send(connect_b) = b.start_round(t0).unwrap() else {
            panic!()
        };
        let replies = a.on_message(t0, connect_b).unwrap();
        let Step::Send(connect_a) = replies[0].clone() else {
            panic!()
        };
        let t1 = t0 + Duration::from_millis(80);
        let steps = b.on_message(t1, connect_a).unwrap();
        assert_eq!(steps[0], Step::Send(ExchangeMessage::Sync));
        assert_eq!(
            steps[1],
            Step::Punch {
                candidates: vec!["203.0.113.2:1".parse().unwrap()],
                guesses: vec![],
                start: t1 + Duration::from_millis(40),
                rtt: Some(Duration::from_millis(80)),
            }
        );
        // SYNC reaches A half an RTT after B sent it: both dial at t1 + 40 ms.
        let t2 = t1 + Duration::from_millis(40);
        assert_eq!(
            a.on_message(t2, ExchangeMessage::Sync).unwrap(),
            vec![Step::Punch {
                candidates: vec!["203.0.113.6:2".parse().unwrap()],
                guesses: vec![],
                start: t2,
                rtt: None
            }]
        );
        // SYNC out of turn is an error; three rounds at most.
        assert!(a.on_message(t2, ExchangeMessage::Sync).is_err());
        b.start_round(t2).unwrap();
        b.start_round(t2).unwrap();
        assert!(matches!(
            b.start_round(t2),
            Err(ExchangeError::Exhausted(3))
        ));
    }
}
