//! A message channel on one stream: plaintext v1 framing, or BIP324 v2 after
//! a handshake driven here on top of the bip324 crate's sans-IO `Handshake`
//! (its async wrapper hides the session id, which decision 5 needs).

use std::collections::VecDeque;
use std::time::Duration;

use bip324::{
    GarbageResult, Handshake, InboundCipher, Initialized, OutboundCipher, PacketType, Role,
    VersionResult, NUM_LENGTH_BYTES,
};
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::Magic;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::time::Instant;

use super::codec::{self, V2Decoded, MAX_V2_CONTENTS, V1_HEADER_LEN};
use super::error::{SessionError, Stage, WireError};
use crate::clock::Later;

const ELLSWIFT_LEN: usize = 64;
const GARBAGE_TERMINATOR_LEN: usize = 16;
const MAX_GARBAGE_LEN: usize = 4095;
/// Length of a v2 packet's header byte + AEAD tag, on top of its contents.
const V2_PACKET_OVERHEAD: usize = 1 + 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    V1,
    V2,
    /// Not a Bitcoin transport: a libp2p connection (Noise + Yamux), which
    /// only the records of stock DCUtR, the yardstick, carry.
    Libp2p,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::V1 => "v1",
            Transport::V2 => "v2",
            Transport::Libp2p => "libp2p",
        })
    }
}

/// Messages a channel keeps for its owner while the session set-up waits for
/// something else (its pong): Bitcoin Core sends `sendcmpct`, `ping`,
/// `getheaders` and `feefilter` right after verack, and a coordinator client
/// its first request. More than this before the set-up ends is an abuse.
pub const MAX_HELD_MESSAGES: usize = 64;

/// How long one write may take once the session is set up, unless the owner
/// says otherwise: a peer that stops reading is closed after this, and its
/// task and socket are freed.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// The receiving half of a channel.
pub struct ChannelReader<S> {
    io: ReadHalf<BufReader<S>>,
    magic: Magic,
    inbound: Option<InboundCipher>,
    deadline: Deadline,
    /// Messages received while the set-up waited for another one; handed
    /// out before anything read later.
    held: VecDeque<NetworkMessage>,
}

/// The sending half of a channel.
pub struct ChannelWriter<S> {
    io: WriteHalf<BufReader<S>>,
    magic: Magic,
    outbound: Option<OutboundCipher>,
    deadline: Deadline,
    /// Bounds each write when no deadline is set.
    write_timeout: Duration,
}

/// Every read and write must finish before this instant; it bounds the whole
/// establishment so that a stalling peer cannot hold a slot.
#[derive(Clone, Copy, Default)]
struct Deadline {
    at: Option<Instant>,
    /// How long the deadline was, for the error message.
    budget: Duration,
}

impl Deadline {
    fn new(deadline: Option<(Instant, Duration)>) -> Self {
        Deadline {
            at: deadline.map(|(d, _)| d),
            budget: deadline.map(|(_, b)| b).unwrap_or_default(),
        }
    }
}

/// A message channel: both halves, plus what the handshake established.
pub struct Channel<S> {
    reader: ChannelReader<S>,
    writer: ChannelWriter<S>,
    session_id: Option<[u8; 32]>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Channel<S> {
    pub fn v1(stream: S, magic: Magic) -> Self {
        let (read, write) = tokio::io::split(BufReader::new(stream));
        Self {
            reader: ChannelReader {
                io: read,
                magic,
                inbound: None,
                deadline: Deadline::default(),
                held: VecDeque::new(),
            },
            writer: ChannelWriter {
                io: write,
                magic,
                outbound: None,
                deadline: Deadline::default(),
                write_timeout: DEFAULT_WRITE_TIMEOUT,
            },
            session_id: None,
        }
    }

    /// Runs the BIP324 handshake on `stream` and returns a v2 channel.
    pub async fn v2(
        stream: S,
        magic: Magic,
        role: Role,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<Self, SessionError> {
        let mut channel = Self::v1(stream, magic);
        channel.set_deadline(deadline);
        channel.bip324_handshake(role).await?;
        Ok(channel)
    }

    /// A v2 channel whose BIP324 handshake happened elsewhere: for the
    /// fuzzers, which feed one session's ciphers many inputs.
    #[doc(hidden)]
    pub fn v2_from_cipher(stream: S, magic: Magic, cipher: bip324::CipherSession) -> Self {
        let mut channel = Self::v1(stream, magic);
        channel.session_id = Some(*cipher.id());
        let (inbound, outbound) = cipher.into_split();
        channel.reader.inbound = Some(inbound);
        channel.writer.outbound = Some(outbound);
        channel
    }

    pub fn set_deadline(&mut self, deadline: Option<(Instant, Duration)>) {
        self.reader.deadline = Deadline::new(deadline);
        self.writer.deadline = Deadline::new(deadline);
    }

    pub fn transport(&self) -> Transport {
        match self.reader.inbound {
            None => Transport::V1,
            Some(_) => Transport::V2,
        }
    }

    pub fn session_id(&self) -> Option<[u8; 32]> {
        self.session_id
    }

    /// The two halves, for a reader and a writer that run concurrently.
    pub fn into_split(self) -> (ChannelReader<S>, ChannelWriter<S>) {
        (self.reader, self.writer)
    }

    async fn bip324_handshake(&mut self, role: Role) -> Result<(), SessionError> {
        let magic = self.reader.magic.to_bytes();
        let at = |stage| move |e| SessionError::new(stage, e);

        let handshake = Handshake::<Initialized>::new(magic, role)
            .map_err(|e| SessionError::new(Stage::Bip324KeyExchange, e.into()))?;
        let mut key = vec![0u8; Handshake::<Initialized>::send_key_len(None)];
        let handshake = handshake
            .send_key(None, &mut key)
            .map_err(|e| SessionError::new(Stage::Bip324KeyExchange, e.into()))?;
        self.writer
            .write_all(&key)
            .await
            .map_err(at(Stage::Bip324KeyExchange))?;

        let mut their_key = [0u8; ELLSWIFT_LEN];
        self.reader
            .read_exact(&mut their_key)
            .await
            .map_err(at(Stage::Bip324KeyExchange))?;
        let handshake = match handshake.receive_key(their_key) {
            Ok(h) => h,
            Err(bip324::Error::V1Protocol) => {
                return Err(SessionError::new(
                    Stage::Bip324KeyExchange,
                    WireError::PeerSpeaksV1,
                ))
            }
            Err(e) => return Err(SessionError::new(Stage::Bip324KeyExchange, e.into())),
        };

        let mut version = vec![0u8; Handshake::<bip324::ReceivedKey>::send_version_len(None)];
        let handshake = handshake
            .send_version(&mut version, None)
            .map_err(|e| SessionError::new(Stage::Bip324KeyExchange, e.into()))?;
        self.writer
            .write_all(&version)
            .await
            .map_err(at(Stage::Bip324KeyExchange))?;

        // The peer may send up to 4095 bytes of garbage before its terminator.
        // Reading byte by byte (from the buffer) leaves whatever follows the
        // terminator in the stream, where the packet reader expects it.
        let mut garbage = vec![0u8; GARBAGE_TERMINATOR_LEN];
        self.reader
            .read_exact(&mut garbage)
            .await
            .map_err(at(Stage::Bip324Garbage))?;
        let mut pending = handshake;
        let (mut handshake, consumed) = loop {
            match pending.receive_garbage(&garbage) {
                Ok(GarbageResult::FoundGarbage {
                    handshake,
                    consumed_bytes,
                }) => break (handshake, consumed_bytes),
                Ok(GarbageResult::NeedMoreData(h)) => {
                    if garbage.len() >= MAX_GARBAGE_LEN + GARBAGE_TERMINATOR_LEN {
                        return Err(SessionError::new(
                            Stage::Bip324Garbage,
                            bip324::Error::NoGarbageTerminator.into(),
                        ));
                    }
                    pending = h;
                    let mut byte = [0u8; 1];
                    self.reader
                        .read_exact(&mut byte)
                        .await
                        .map_err(at(Stage::Bip324Garbage))?;
                    garbage.push(byte[0]);
                }
                Err(e) => return Err(SessionError::new(Stage::Bip324Garbage, e.into())),
            }
        };
        debug_assert_eq!(consumed, garbage.len());

        // Decoy packets may precede the version packet; all must authenticate.
        let cipher = loop {
            let mut len_bytes = [0u8; NUM_LENGTH_BYTES];
            self.reader
                .read_exact(&mut len_bytes)
                .await
                .map_err(at(Stage::Bip324Version))?;
            let len = handshake
                .decrypt_packet_len(len_bytes)
                .map_err(|e| SessionError::new(Stage::Bip324Version, e.into()))?;
            check_packet_len(len).map_err(at(Stage::Bip324Version))?;
            let mut packet = self
                .reader
                .read_announced(len)
                .await
                .map_err(at(Stage::Bip324Version))?;
            match handshake.receive_version(&mut packet) {
                Ok(VersionResult::Complete { cipher }) => break cipher,
                Ok(VersionResult::Decoy(h)) => handshake = h,
                Err(e) => return Err(SessionError::new(Stage::Bip324Version, e.into())),
            }
        };
        self.session_id = Some(*cipher.id());
        let (inbound, outbound) = cipher.into_split();
        self.reader.inbound = Some(inbound);
        self.writer.outbound = Some(outbound);
        Ok(())
    }

    pub async fn send(&mut self, msg: &NetworkMessage) -> Result<(), WireError> {
        self.writer.send(msg).await
    }

    pub async fn recv(&mut self) -> Result<Option<NetworkMessage>, WireError> {
        self.reader.recv().await
    }

    /// The next message off the wire, past any held ones.
    pub(crate) async fn recv_from_peer(&mut self) -> Result<Option<NetworkMessage>, WireError> {
        self.reader.recv_from_peer().await
    }

    /// Keeps `msg` for the owner: [`recv`](Self::recv) returns it first.
    pub fn hold(&mut self, msg: NetworkMessage) -> Result<(), WireError> {
        self.reader.hold(msg)
    }

    /// Bounds each write once no deadline is set.
    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.writer.write_timeout = timeout;
    }
}

/// Both ends of one BIP324 session, made in memory by the real handshake
/// (no garbage, no decoys): for the fuzzers and tests that need a peer's
/// cipher to encrypt what a channel is fed.
#[doc(hidden)]
pub fn cipher_pair(
    magic: Magic,
) -> Result<(bip324::CipherSession, bip324::CipherSession), bip324::Error> {
    let magic = magic.to_bytes();
    let start = |role| -> Result<_, bip324::Error> {
        let mut key = vec![0u8; Handshake::<Initialized>::send_key_len(None)];
        let handshake = Handshake::<Initialized>::new(magic, role)?.send_key(None, &mut key)?;
        let ellswift: [u8; ELLSWIFT_LEN] = key
            .get(..ELLSWIFT_LEN)
            .and_then(|k| k.try_into().ok())
            .ok_or(bip324::Error::CiphertextTooSmall)?;
        Ok((handshake, ellswift))
    };
    let (initiator, initiator_key) = start(Role::Initiator)?;
    let (responder, responder_key) = start(Role::Responder)?;
    let finish = |handshake: Handshake<bip324::SentKey<'_>>,
                  their_key: [u8; ELLSWIFT_LEN],
                  version_out: &mut Vec<u8>|
     -> Result<_, bip324::Error> {
        let handshake = handshake.receive_key(their_key)?;
        version_out.resize(Handshake::<bip324::ReceivedKey>::send_version_len(None), 0);
        handshake.send_version(version_out, None)
    };
    let (mut to_responder, mut to_initiator) = (Vec::new(), Vec::new());
    let initiator = finish(initiator, responder_key, &mut to_responder)?;
    let responder = finish(responder, initiator_key, &mut to_initiator)?;
    let complete = |handshake: Handshake<bip324::SentVersion>,
                    bytes: &[u8]|
     -> Result<bip324::CipherSession, bip324::Error> {
        let GarbageResult::FoundGarbage {
            mut handshake,
            consumed_bytes,
        } = handshake.receive_garbage(bytes)?
        else {
            return Err(bip324::Error::NoGarbageTerminator);
        };
        let rest = bytes.get(consumed_bytes..).unwrap_or_default();
        let (len_bytes, packet) = rest.split_at(NUM_LENGTH_BYTES.min(rest.len()));
        let len_bytes: [u8; NUM_LENGTH_BYTES] = len_bytes
            .try_into()
            .map_err(|_| bip324::Error::CiphertextTooSmall)?;
        let len = handshake.decrypt_packet_len(len_bytes)?;
        let mut packet = packet.get(..len).unwrap_or_default().to_vec();
        match handshake.receive_version(&mut packet)? {
            VersionResult::Complete { cipher } => Ok(cipher),
            VersionResult::Decoy(_) => Err(bip324::Error::NoGarbageTerminator),
        }
    };
    Ok((
        complete(initiator, &to_initiator)?,
        complete(responder, &to_responder)?,
    ))
}

fn check_packet_len(len: usize) -> Result<(), WireError> {
    if len > MAX_V2_CONTENTS + V2_PACKET_OVERHEAD {
        return Err(WireError::Oversized {
            len,
            max: MAX_V2_CONTENTS + V2_PACKET_OVERHEAD,
        });
    }
    Ok(())
}

impl<S: AsyncRead + AsyncWrite + Unpin> ChannelWriter<S> {
    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let io = &mut self.io;
        let deadline = match self.deadline.at {
            Some(_) => self.deadline,
            None => Deadline {
                at: Some(Instant::now().later(self.write_timeout)),
                budget: self.write_timeout,
            },
        };
        within(deadline, async {
            io.write_all(bytes).await?;
            io.flush().await?;
            Ok(())
        })
        .await
    }

    pub async fn send(&mut self, msg: &NetworkMessage) -> Result<(), WireError> {
        let bytes = match &mut self.outbound {
            None => codec::encode_v1(self.magic, msg),
            Some(outbound) => {
                outbound.encrypt_to_vec(&codec::encode_v2_contents(msg), PacketType::Genuine, None)
            }
        };
        self.write_all(&bytes).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ChannelReader<S> {
    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), WireError> {
        let read = self.io.read_exact(buf);
        within(self.deadline, async {
            read.await.map(|_| ()).map_err(WireError::from)
        })
        .await
    }

    /// Reads `len` bytes that the peer announced, growing the buffer only as
    /// they arrive (as Bitcoin Core does): an announcement alone costs
    /// nothing, whatever length it names.
    async fn read_announced(&mut self, len: usize) -> Result<Vec<u8>, WireError> {
        let mut buf = Vec::new();
        self.read_announced_onto(&mut buf, len).await?;
        Ok(buf)
    }

    /// [`read_announced`](Self::read_announced), appending to `buf`.
    async fn read_announced_onto(
        &mut self,
        buf: &mut Vec<u8>,
        len: usize,
    ) -> Result<(), WireError> {
        let start = buf.len();
        let mut limited = (&mut self.io).take(u64::try_from(len).unwrap_or(u64::MAX));
        within(self.deadline, async {
            limited.read_to_end(buf).await?;
            Ok(())
        })
        .await?;
        if buf.len().saturating_sub(start) == len {
            Ok(())
        } else {
            Err(WireError::PeerClosed)
        }
    }

    pub(crate) fn hold(&mut self, msg: NetworkMessage) -> Result<(), WireError> {
        if self.held.len() >= MAX_HELD_MESSAGES {
            return Err(WireError::Protocol(format!(
                "more than {MAX_HELD_MESSAGES} messages before the session was set up"
            )));
        }
        self.held.push_back(msg);
        Ok(())
    }

    /// The next message from the peer (or one held for the owner). v2 decoy
    /// packets are skipped; a v2 packet with an unassigned short id is
    /// returned as `None`.
    /// Not cancellation-safe: a half-read message is lost with the future.
    pub async fn recv(&mut self) -> Result<Option<NetworkMessage>, WireError> {
        if let Some(msg) = self.held.pop_front() {
            return Ok(Some(msg));
        }
        self.recv_from_peer().await
    }

    /// The next message off the wire, past any held ones: for the set-up,
    /// which holds what it is not waiting for.
    pub(crate) async fn recv_from_peer(&mut self) -> Result<Option<NetworkMessage>, WireError> {
        if self.inbound.is_none() {
            let mut header = [0u8; V1_HEADER_LEN];
            self.read_exact(&mut header).await?;
            let parsed = codec::parse_v1_header(self.magic, &header)?;
            // The payload lands behind its header: one buffer, decoded once.
            let mut message = header.to_vec();
            self.read_announced_onto(&mut message, parsed.len).await?;
            return codec::decode_v1(&message).map(Some);
        }
        loop {
            let mut len_bytes = [0u8; NUM_LENGTH_BYTES];
            self.read_exact(&mut len_bytes).await?;
            let Some(inbound) = self.inbound.as_mut() else {
                return Err(WireError::Protocol("v2 cipher missing".into()));
            };
            let len = inbound.decrypt_packet_len(len_bytes);
            check_packet_len(len)?;
            let packet = self.read_announced(len).await?;
            let Some(inbound) = self.inbound.as_mut() else {
                return Err(WireError::Protocol("v2 cipher missing".into()));
            };
            let (kind, plaintext) = inbound.decrypt_to_vec(&packet, None)?;
            if kind == PacketType::Decoy {
                continue;
            }
            let contents = plaintext.get(1..).unwrap_or_default();
            return match codec::decode_v2_contents(self.magic, contents)? {
                V2Decoded::Message(m) => Ok(Some(m)),
                V2Decoded::UnknownShortId(id) => {
                    tracing::debug!(id, "ignoring v2 message with unassigned short id");
                    Ok(None)
                }
            };
        }
    }

    /// Bounds every later read by `deadline` (or lifts the bound).
    pub fn set_deadline(&mut self, deadline: Option<(Instant, Duration)>) {
        self.deadline = Deadline::new(deadline);
    }
}

impl<S> ChannelWriter<S> {
    pub fn set_deadline(&mut self, deadline: Option<(Instant, Duration)>) {
        self.deadline = Deadline::new(deadline);
    }
}

async fn within<T>(
    deadline: Deadline,
    fut: impl std::future::Future<Output = Result<T, WireError>>,
) -> Result<T, WireError> {
    match deadline.at {
        Some(d) => tokio::time::timeout_at(d, fut)
            .await
            .map_err(|_| WireError::Timeout(deadline.budget))?,
        None => fut.await,
    }
}
