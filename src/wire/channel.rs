//! A message channel on one stream: plaintext v1 framing, or BIP324 v2 after
//! the handshake driven here with the ciphers of [`super::bip324`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::Magic;
use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::bip324::{
    InboundCipher, KeyPair, OutboundCipher, Role, ELLSWIFT_LEN, GARBAGE_TERMINATOR_LEN, HEADER_LEN,
    LENGTH_LEN, MAX_GARBAGE_LEN, TAG_LEN,
};
use super::codec::{self, V2Decoded, MAX_V2_CONTENTS, V1_HEADER_LEN};
use super::error::{SessionError, Stage, WireError};
use crate::clock::Later;

/// A v2 packet's header byte + AEAD tag, on top of its contents.
const V2_PACKET_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

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
    io: ReadHalf<S>,
    magic: Magic,
    inbound: Option<InboundCipher>,
    deadline: Deadline,
    /// Messages received while the set-up waited for another one; handed
    /// out before anything read later.
    held: VecDeque<NetworkMessage>,
    /// Bytes read and not yet consumed: the part of a message read so far
    /// (which is why a cancelled `recv` loses nothing), or what followed
    /// the peer's garbage terminator. Empty, and unallocated, between
    /// messages: an idle session holds no buffer.
    unread: Vec<u8>,
    /// The decrypted length of the v2 packet being read: the length cipher
    /// has moved past it, so it must not be decrypted twice.
    packet_len: Option<usize>,
}

/// How much a read may grow the buffer beyond what has arrived: a large
/// message's buffer doubles as its bytes come in, from this size.
const READ_STEP: usize = 64 * 1024;

/// The first read of the garbage region: a key exchange's usual second
/// flight (terminator, version packet and a message or two) fits.
const GARBAGE_READ_START: usize = 256;

/// The sending half of a channel.
pub struct ChannelWriter<S> {
    io: WriteHalf<S>,
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
    /// From writing our BIP324 key to reading the peer's version packet.
    /// Each side sends its key as soon as TCP is up, and the peer's
    /// version packet leaves as soon as the peer has our key, so this is
    /// one round trip: what a link that cannot spare a ping's round trip
    /// uses as its RTT.
    handshake_rtt: Option<Duration>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Channel<S> {
    pub fn v1(stream: S, magic: Magic) -> Self {
        let (read, write) = tokio::io::split(stream);
        Self {
            reader: ChannelReader {
                io: read,
                magic,
                inbound: None,
                deadline: Deadline::default(),
                held: VecDeque::new(),
                unread: Vec::new(),
                packet_len: None,
            },
            writer: ChannelWriter {
                io: write,
                magic,
                outbound: None,
                deadline: Deadline::default(),
                write_timeout: DEFAULT_WRITE_TIMEOUT,
            },
            session_id: None,
            handshake_rtt: None,
        }
    }

    /// Runs the BIP324 handshake on `stream` and returns a v2 channel.
    pub async fn v2(
        stream: S,
        magic: Magic,
        role: Role,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<Self, SessionError> {
        Self::v2_sending(stream, magic, role, deadline, None).await
    }

    /// [`v2`](Self::v2), sending `first` in the handshake's last flight,
    /// right behind our version packet, as BIP324 allows: the initiator's
    /// `version` then reaches the peer a round trip earlier.
    pub async fn v2_sending(
        stream: S,
        magic: Magic,
        role: Role,
        deadline: Option<(Instant, Duration)>,
        first: Option<&NetworkMessage>,
    ) -> Result<Self, SessionError> {
        let mut channel = Self::v1(stream, magic);
        channel.set_deadline(deadline);
        channel.bip324_handshake(role, first).await?;
        Ok(channel)
    }

    /// A v2 channel whose BIP324 handshake happened elsewhere: for the
    /// fuzzers, which feed one session's ciphers many inputs.
    #[doc(hidden)]
    pub fn v2_from_cipher(
        stream: S,
        magic: Magic,
        session_id: [u8; 32],
        (inbound, outbound): (InboundCipher, OutboundCipher),
    ) -> Self {
        let mut channel = Self::v1(stream, magic);
        channel.session_id = Some(session_id);
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

    pub fn handshake_rtt(&self) -> Option<Duration> {
        self.handshake_rtt
    }

    /// The two halves, for a reader and a writer that run concurrently.
    pub fn into_split(self) -> (ChannelReader<S>, ChannelWriter<S>) {
        (self.reader, self.writer)
    }

    async fn bip324_handshake(
        &mut self,
        role: Role,
        first: Option<&NetworkMessage>,
    ) -> Result<(), SessionError> {
        let magic = self.reader.magic.to_bytes();
        let at = |stage| move |e| SessionError::new(stage, e);

        let ours = KeyPair::generate();
        self.writer
            .write_all(&ours.public.to_array())
            .await
            .map_err(at(Stage::Bip324KeyExchange))?;
        let key_sent = Instant::now();
        let mut their_key = [0u8; ELLSWIFT_LEN];
        self.reader
            .read_exact(&mut their_key)
            .await
            .map_err(at(Stage::Bip324KeyExchange))?;
        if role == Role::Responder && starts_like_v1_version(&their_key, magic) {
            return Err(SessionError::new(
                Stage::Bip324KeyExchange,
                WireError::PeerSpeaksV1,
            ));
        }
        let keys = ours.agree(their_key, role, magic);
        let (mut inbound, mut outbound) = keys.ciphers(role);
        let (our_terminator, their_terminator) = keys.terminators(role);

        // We send no garbage, so our version packet's AAD is empty. Its
        // contents are empty too: BIP324 reserves them for later versions.
        let mut flight = our_terminator.to_vec();
        outbound
            .encrypt_onto(&mut flight, &[], false, &[])
            .map_err(|e| SessionError::new(Stage::Bip324KeyExchange, e.into()))?;
        if let Some(msg) = first {
            let start = OutboundCipher::begin(&mut flight);
            codec::encode_v2_contents_onto(msg, &mut flight);
            outbound
                .seal(&mut flight, start, false, &[])
                .map_err(|e| SessionError::new(Stage::Bip324KeyExchange, e.into()))?;
        }
        self.writer
            .write_all(&flight)
            .await
            .map_err(at(Stage::Bip324KeyExchange))?;

        // The peer may send up to 4095 bytes of garbage before its
        // terminator; whatever arrived after the terminator stays unread,
        // where the packet reader expects it.
        let garbage = self
            .reader
            .read_garbage(&their_terminator)
            .await
            .map_err(at(Stage::Bip324Garbage))?;

        // Decoy packets may precede the version packet; all must
        // authenticate, and the first one carries the garbage as its AAD.
        let mut aad = garbage;
        loop {
            let mut length = [0u8; LENGTH_LEN];
            self.reader
                .read_exact(&mut length)
                .await
                .map_err(at(Stage::Bip324Version))?;
            let len = inbound.decrypt_length(length);
            check_packet_len(len).map_err(at(Stage::Bip324Version))?;
            let mut packet = self
                .reader
                .read_announced(len.saturating_add(V2_PACKET_OVERHEAD))
                .await
                .map_err(at(Stage::Bip324Version))?;
            let opened = inbound
                .open(&mut packet, &aad)
                .map_err(|e| SessionError::new(Stage::Bip324Version, e.into()))?;
            aad.clear();
            if !opened.decoy {
                break;
            }
        }
        self.handshake_rtt = Some(key_sent.elapsed());
        self.session_id = Some(keys.session_id);
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

/// Bitcoin Core's test for a v1 peer at a v2 responder: the first 16
/// bytes are a v1 `version` message's magic and command.
fn starts_like_v1_version(first: &[u8; ELLSWIFT_LEN], magic: [u8; 4]) -> bool {
    let mut prefix = [0u8; 16];
    prefix[..4].copy_from_slice(&magic);
    prefix[4..11].copy_from_slice(b"version");
    first.starts_with(&prefix)
}

/// `len` is a packet's contents as its length field announced them.
fn check_packet_len(len: usize) -> Result<(), WireError> {
    if len > MAX_V2_CONTENTS {
        return Err(WireError::Oversized {
            len,
            max: MAX_V2_CONTENTS,
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
                // Serialised once, into the buffer it is sealed in and sent
                // from.
                let mut packet = Vec::new();
                let start = OutboundCipher::begin(&mut packet);
                codec::encode_v2_contents_onto(msg, &mut packet);
                outbound.seal(&mut packet, start, false, &[])?;
                packet
            }
        };
        self.write_all(&bytes).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ChannelReader<S> {
    /// Reads until `n` bytes are unread, growing the buffer by what arrives
    /// (as Bitcoin Core does: an announced length alone costs nothing,
    /// whatever it names) and never past `n`, so that one message's buffer
    /// holds no byte of the next. Cancellation-safe: what was read stays.
    async fn fill(&mut self, n: usize) -> Result<(), WireError> {
        while self.unread.len() < n {
            let missing = n.saturating_sub(self.unread.len());
            self.read_some(missing, READ_STEP).await?;
        }
        Ok(())
    }

    /// One read of at most `at_most` bytes onto the unread ones. A full
    /// buffer grows by what it holds (at least `step`), never past
    /// `at_most`. Cancellation-safe.
    ///
    /// A hand-written poll function rather than nested async calls: an
    /// idle session waits here, and its task keeps this future's size for
    /// as long as it is idle (the deadline's timer is allocated only when
    /// there is a deadline).
    async fn read_some(&mut self, at_most: usize, step: usize) -> Result<(), WireError> {
        if self.unread.capacity() == self.unread.len() {
            self.unread
                .reserve_exact(at_most.min(self.unread.len().max(step)));
        }
        let spare = self.unread.capacity().saturating_sub(self.unread.len());
        let budget = self.deadline.budget;
        let mut timer = self
            .deadline
            .at
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        let mut limited = (&mut self.unread).limit(at_most.min(spare));
        let io = &mut self.io;
        std::future::poll_fn(|cx| {
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut limited) {
                Poll::Ready(Ok(0)) => Poll::Ready(Err(WireError::PeerClosed)),
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
                Poll::Pending => {
                    let expired = timer
                        .as_mut()
                        .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                    if expired {
                        Poll::Ready(Err(WireError::Timeout(budget)))
                    } else {
                        Poll::Pending
                    }
                }
            }
        })
        .await
    }

    /// The first `n` unread bytes, as their own buffer: the whole buffer
    /// when nothing follows them (the usual case), so a message is not
    /// copied to be handed on.
    fn take(&mut self, n: usize) -> Vec<u8> {
        if self.unread.len() <= n {
            return std::mem::take(&mut self.unread);
        }
        let rest = self.unread.split_off(n);
        std::mem::replace(&mut self.unread, rest)
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), WireError> {
        self.fill(buf.len()).await?;
        let bytes = self.take(buf.len());
        buf.copy_from_slice(bytes.get(..buf.len()).unwrap_or_default());
        Ok(())
    }

    /// `len` bytes that the peer announced, read as they arrive.
    async fn read_announced(&mut self, len: usize) -> Result<Vec<u8>, WireError> {
        self.fill(len).await?;
        Ok(self.take(len))
    }

    /// The garbage before `terminator` (at most 4095 bytes). Reads what
    /// arrives, in as few reads as it takes; bytes after the terminator
    /// stay unread.
    async fn read_garbage(
        &mut self,
        terminator: &[u8; GARBAGE_TERMINATOR_LEN],
    ) -> Result<Vec<u8>, WireError> {
        const LIMIT: usize = MAX_GARBAGE_LEN + GARBAGE_TERMINATOR_LEN;
        loop {
            if let Some(at) = self
                .unread
                .windows(GARBAGE_TERMINATOR_LEN)
                .position(|w| w == terminator)
            {
                let mut garbage = self.take(at.saturating_add(GARBAGE_TERMINATOR_LEN));
                garbage.truncate(at);
                self.unread.shrink_to_fit();
                return Ok(garbage);
            }
            if self.unread.len() >= LIMIT {
                return Err(WireError::Protocol(
                    "no garbage terminator in 4095 bytes".into(),
                ));
            }
            // Most peers send little or no garbage: start small and double
            // as it comes, up to the limit.
            let room = LIMIT.saturating_sub(self.unread.len());
            self.read_some(room, GARBAGE_READ_START).await?;
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
    /// Cancellation-safe: a message read in part is finished by the next
    /// call, so `recv` can sit in a `select!` beside other work.
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
            // The header stays unread until the whole message is here.
            self.fill(V1_HEADER_LEN).await?;
            let header: [u8; V1_HEADER_LEN] = self
                .unread
                .first_chunk()
                .copied()
                .ok_or(WireError::PeerClosed)?;
            let parsed = codec::parse_v1_header(self.magic, &header)?;
            let whole = V1_HEADER_LEN.saturating_add(parsed.len);
            self.fill(whole).await?;
            let message = self.take(whole);
            return codec::decode_v1(&message).map(Some);
        }
        loop {
            let len = match self.packet_len {
                Some(len) => len,
                None => {
                    let mut length = [0u8; LENGTH_LEN];
                    self.read_exact(&mut length).await?;
                    let Some(inbound) = self.inbound.as_mut() else {
                        return Err(WireError::Protocol("v2 cipher missing".into()));
                    };
                    let len = inbound.decrypt_length(length);
                    check_packet_len(len)?;
                    self.packet_len = Some(len);
                    len
                }
            };
            let mut packet = self
                .read_announced(len.saturating_add(V2_PACKET_OVERHEAD))
                .await?;
            self.packet_len = None;
            let Some(inbound) = self.inbound.as_mut() else {
                return Err(WireError::Protocol("v2 cipher missing".into()));
            };
            if inbound.open(&mut packet, &[])?.decoy {
                continue;
            }
            // Decoded where it was decrypted: header byte, contents, tag.
            return match codec::decode_v2_packet(
                packet,
                HEADER_LEN,
                HEADER_LEN.saturating_add(len),
            )? {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::bip324::cipher_pair;
    use bitcoin::p2p::message::CommandString;

    /// A reader whose `recv` is dropped over and over while the peer's
    /// packets trickle in, a few bytes at a time, must still hand out every
    /// message whole and in order.
    #[tokio::test]
    async fn recv_is_cancellation_safe() {
        let magic = Magic::REGTEST;
        let (ours, theirs) = cipher_pair(magic.to_bytes());
        let (near, mut far) = tokio::io::duplex(64);
        let (mut reader, _writer) =
            Channel::v2_from_cipher(near, magic, [0; 32], theirs).into_split();
        let big = NetworkMessage::Unknown {
            command: CommandString::try_from_static("big").unwrap(),
            payload: (0..200_000u32).map(|i| i as u8).collect(),
        };
        let messages = vec![NetworkMessage::Ping(1), big, NetworkMessage::Pong(2)];
        let mut wire = Vec::new();
        let mut out = ours.1;
        for msg in &messages {
            let start = OutboundCipher::begin(&mut wire);
            codec::encode_v2_contents_onto(msg, &mut wire);
            out.seal(&mut wire, start, false, &[]).unwrap();
        }
        let sender = tokio::spawn(async move {
            for chunk in wire.chunks(997) {
                far.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            far
        });
        let mut got = Vec::new();
        let mut cancelled = 0;
        while got.len() < messages.len() {
            tokio::select! {
                biased;
                msg = reader.recv() => got.push(msg.unwrap().unwrap()),
                _ = tokio::task::yield_now() => cancelled += 1,
            }
        }
        assert_eq!(got, messages);
        assert!(
            cancelled > 10,
            "the reads were interrupted {cancelled} times"
        );
        assert!(
            reader.unread.capacity() == 0,
            "an idle reader holds no buffer"
        );
        drop(sender.await.unwrap());
    }
}
