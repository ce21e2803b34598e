//! One Bitcoin P2P session on an established stream: transport set-up (v1, or
//! BIP324 v2), the version/verack handshake, and a ping to measure RTT.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bip324::Role;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Address, ServiceFlags};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::clock::Later;
use crate::report::ms_since;

use super::channel::{Channel, ChannelReader, ChannelWriter, Transport};
use super::error::{SessionError, Stage, WireError};
use super::network::Network;
use crate::net::stream::ByteCounters;

/// The protocol version we announce: 70016 is the first with `wtxidrelay`,
/// the level every current Bitcoin Core peer speaks.
pub const PROTOCOL_VERSION: u32 = 70016;

pub fn user_agent() -> String {
    format!("/bitpunch:{}/", env!("CARGO_PKG_VERSION"))
}

/// Which transports a side is willing to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportPolicy {
    /// BIP324 first; reconnect with v1 when the peer looks v1-only (outbound),
    /// serve both (inbound). Bitcoin Core's `-v2transport=1` behaviour.
    #[default]
    Auto,
    /// BIP324 only.
    V2,
    /// Plaintext v1 only, as a node from before BIP324.
    V1,
}

impl TransportPolicy {
    pub fn allows(self, transport: Transport) -> bool {
        let bitcoin = transport != Transport::Libp2p;
        bitcoin
            && match self {
                TransportPolicy::Auto => true,
                TransportPolicy::V2 => transport == Transport::V2,
                TransportPolicy::V1 => transport == Transport::V1,
            }
    }
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub network: Network,
    pub transport: TransportPolicy,
    pub user_agent: String,
    pub services: ServiceFlags,
    pub start_height: i32,
    /// Bound on everything from TCP established to pong received.
    pub handshake_timeout: Duration,
    /// Bound on each write after the set-up: a peer that stops reading is
    /// closed after this.
    pub write_timeout: Duration,
    /// Outbound only: close with an RST (`SO_LINGER` 0) instead of a FIN.
    /// For links whose end we decide because the peer went silent: a FIN
    /// to a dead peer would keep the socket retransmitting for minutes and
    /// hold the shared port's 4-tuple to that peer, so the next connection
    /// to it from the same port fails with "address not available" (seen
    /// in `tests/third_parties_lab.rs` while a coordinator was black-holed).
    pub close_with_reset: bool,
    /// Outbound only, when not dialing from the shared port: the local
    /// address to dial from. `lab scale` spreads its clients over several
    /// 127.x addresses, each with its own range of ephemeral ports.
    pub source_ip: Option<std::net::IpAddr>,
    /// Take the RTT from the BIP324 handshake instead of a ping after
    /// verack, on v2: for a link whose first requests should not wait a
    /// round trip (a coordinator session). v1 still pings.
    pub rtt_from_handshake: bool,
}

impl SessionConfig {
    pub fn new(network: Network) -> Self {
        Self {
            network,
            transport: TransportPolicy::Auto,
            user_agent: user_agent(),
            services: ServiceFlags::NONE,
            start_height: 0,
            handshake_timeout: Duration::from_secs(10),
            write_timeout: super::channel::DEFAULT_WRITE_TIMEOUT,
            close_with_reset: false,
            source_ip: None,
            rtt_from_handshake: false,
        }
    }

    fn announced_services(&self) -> ServiceFlags {
        if self.transport == TransportPolicy::V1 {
            self.services
        } else {
            self.services | ServiceFlags::P2P_V2
        }
    }
}

/// Milliseconds since the connection was asked for, per phase.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Phases {
    pub tcp: Option<f64>,
    pub handshake: Option<f64>,
    pub verack: Option<f64>,
    pub pong: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    pub user_agent: String,
    pub version: u32,
    pub services: u64,
    pub start_height: i32,
    /// The `addr_recv` of the peer's version: where the peer sees us.
    pub sees_us_at: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    pub role: SessionRole,
    pub transport: Transport,
    pub session_id: Option<String>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub peer: PeerInfo,
    pub rtt_ms: Option<f64>,
    pub t_ms: Phases,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Live byte counts of the connection, for whoever keeps using it.
    #[serde(skip)]
    pub counters: Arc<ByteCounters>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionRole {
    Initiator,
    Responder,
}

impl From<SessionRole> for Role {
    fn from(r: SessionRole) -> Role {
        match r {
            SessionRole::Initiator => Role::Initiator,
            SessionRole::Responder => Role::Responder,
        }
    }
}

/// Where and when a stream came from, for the report.
#[derive(Debug, Clone)]
pub struct StreamContext {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// When the connection was asked for: all phase times count from here.
    pub started: Instant,
    /// When TCP was established.
    pub tcp_at: Instant,
    pub counters: Arc<ByteCounters>,
}

pub struct Session<S> {
    channel: Channel<S>,
    pub report: SessionReport,
}

fn version_message(config: &SessionConfig, remote: SocketAddr, nonce: u64) -> NetworkMessage {
    let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let mut version = VersionMessage::new(
        config.announced_services(),
        unix_now(),
        Address::new(&remote, ServiceFlags::NONE),
        Address::new(&unspecified, config.announced_services()),
        nonce,
        config.user_agent.clone(),
        config.start_height,
    );
    version.version = PROTOCOL_VERSION;
    // We announce no transactions of our own and want none relayed.
    version.relay = false;
    NetworkMessage::Version(version)
}

fn unix_now() -> i64 {
    i64::try_from(crate::clock::unix_now()).unwrap_or(i64::MAX)
}

fn socket_of(address: &Address) -> Option<SocketAddr> {
    address.socket_addr().ok()
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Sets up `transport` on `stream` and runs version/verack/ping.
    ///
    /// `role` says who speaks first, and for v2 who is the BIP324 initiator; it
    /// comes from whoever asked for the connection, not from the socket.
    pub async fn establish(
        stream: S,
        ctx: StreamContext,
        role: SessionRole,
        transport: Transport,
        config: &SessionConfig,
    ) -> Result<Session<S>, SessionError> {
        if !config.transport.allows(transport) {
            let why = match transport {
                Transport::V1 => "v1 is disabled (--transport v2)",
                Transport::V2 => "BIP324 v2 is disabled (--transport v1)",
                Transport::Libp2p => "libp2p is not a Bitcoin transport",
            };
            let stage = match transport {
                Transport::V1 | Transport::Libp2p => Stage::Version,
                Transport::V2 => Stage::Bip324KeyExchange,
            };
            return Err(SessionError::new(stage, WireError::NotAllowed(why)));
        }
        let budget = config.handshake_timeout;
        let deadline = Some((ctx.tcp_at.later(budget), budget));
        let magic = config.network.magic();
        let nonce: u64 = rand::random();
        let mut version_sent = false;
        let channel = match transport {
            Transport::V1 => {
                let mut c = Channel::v1(stream, magic);
                c.set_deadline(deadline);
                c
            }
            Transport::V2 => {
                // The initiator's `version` rides in the handshake's last
                // flight: one round trip less to verack.
                let first = (role == SessionRole::Initiator)
                    .then(|| version_message(config, ctx.remote, nonce));
                version_sent = first.is_some();
                Channel::v2_sending(stream, magic, role.into(), deadline, first.as_ref()).await?
            }
            Transport::Libp2p => {
                return Err(SessionError::new(
                    Stage::Version,
                    WireError::NotAllowed("libp2p is not a Bitcoin transport"),
                ))
            }
        };
        let handshake_at = Instant::now();
        let mut session = Session {
            report: SessionReport {
                role,
                transport,
                session_id: channel.session_id().map(hex::encode),
                local: ctx.local,
                remote: ctx.remote,
                peer: PeerInfo {
                    user_agent: String::new(),
                    version: 0,
                    services: 0,
                    start_height: 0,
                    sees_us_at: None,
                },
                rtt_ms: None,
                t_ms: Phases {
                    tcp: Some(ms_since(ctx.started, ctx.tcp_at)),
                    handshake: Some(ms_since(ctx.started, handshake_at)),
                    ..Phases::default()
                },
                bytes_sent: 0,
                bytes_received: 0,
                counters: ctx.counters.clone(),
            },
            channel,
        };
        session
            .version_handshake(&ctx, config, nonce, version_sent)
            .await?;
        match session.channel.handshake_rtt() {
            Some(rtt) if config.rtt_from_handshake => {
                session.report.rtt_ms = Some(rtt.as_micros() as f64 / 1000.0);
            }
            _ => session.ping(&ctx).await?,
        }
        session.channel.set_deadline(None);
        session.channel.set_write_timeout(config.write_timeout);
        session.report.bytes_sent = ctx.counters.sent();
        session.report.bytes_received = ctx.counters.received();
        Ok(session)
    }

    /// `sent` when our `version` went out with the BIP324 handshake.
    async fn version_handshake(
        &mut self,
        ctx: &StreamContext,
        config: &SessionConfig,
        nonce: u64,
        sent: bool,
    ) -> Result<(), SessionError> {
        if self.report.role == SessionRole::Initiator && !sent {
            let ours = version_message(config, self.report.remote, nonce);
            self.send(&ours, Stage::Version).await?;
        }
        let mut got_version = false;
        let mut got_verack = false;
        while !(got_version && got_verack) {
            let stage = if got_version {
                Stage::Verack
            } else {
                Stage::Version
            };
            let Some(msg) = self.recv(stage).await? else {
                continue;
            };
            match msg {
                NetworkMessage::Version(v) if !got_version => {
                    if v.nonce == nonce && self.report.role == SessionRole::Initiator {
                        return Err(protocol(stage, "connected to ourselves (version nonce)"));
                    }
                    self.report.peer = PeerInfo {
                        user_agent: v.user_agent.clone(),
                        version: v.version,
                        services: v.services.to_u64(),
                        start_height: v.start_height,
                        sees_us_at: socket_of(&v.receiver),
                    };
                    got_version = true;
                    if self.report.role == SessionRole::Responder {
                        let ours = version_message(config, self.report.remote, nonce);
                        self.send(&ours, Stage::Version).await?;
                    }
                    self.send(&NetworkMessage::Verack, Stage::Version).await?;
                }
                NetworkMessage::Version(_) => {
                    return Err(protocol(stage, "second version message"));
                }
                _ if !got_version => {
                    return Err(protocol(
                        stage,
                        &format!("{:?} before version", msg.command()),
                    ));
                }
                NetworkMessage::Verack => got_verack = true,
                other => self.answer(other, stage).await?,
            }
        }
        self.report.t_ms.verack = Some(ms_since(ctx.started, Instant::now()));
        Ok(())
    }

    async fn ping(&mut self, ctx: &StreamContext) -> Result<(), SessionError> {
        let rtt = self.round_trip().await?;
        self.report.rtt_ms = Some(rtt.as_micros() as f64 / 1000.0);
        self.report.t_ms.pong = Some(ms_since(ctx.started, Instant::now()));
        Ok(())
    }

    /// One ping/pong with a fresh nonce; pings from the peer meanwhile are
    /// answered. Bounded by whatever deadline the channel has.
    async fn round_trip(&mut self) -> Result<Duration, SessionError> {
        let nonce: u64 = rand::random();
        let sent = Instant::now();
        self.send(&NetworkMessage::Ping(nonce), Stage::Ping).await?;
        loop {
            match self.recv(Stage::Ping).await? {
                Some(NetworkMessage::Pong(n)) if n == nonce => return Ok(sent.elapsed()),
                Some(ping @ NetworkMessage::Ping(_)) => self.answer(ping, Stage::Ping).await?,
                Some(NetworkMessage::Verack | NetworkMessage::Version(_)) => {
                    return Err(protocol(Stage::Ping, "a second version or verack"))
                }
                // Whatever the peer says after verack is for the session's
                // owner (a coordinator request, Core's sendcmpct): keep it.
                Some(other) => self
                    .channel
                    .hold(other)
                    .map_err(|e| SessionError::new(Stage::Ping, e))?,
                None => {}
            }
        }
    }

    /// The part of a node's message handling that a session without a chain
    /// needs: pings are answered, everything else is ignored.
    async fn answer(&mut self, msg: NetworkMessage, stage: Stage) -> Result<(), SessionError> {
        match msg {
            NetworkMessage::Ping(n) => self.send(&NetworkMessage::Pong(n), stage).await,
            NetworkMessage::Verack | NetworkMessage::Version(_) => {
                Err(protocol(stage, &format!("unexpected {}", msg.cmd())))
            }
            other => {
                tracing::trace!(command = %other.command(), "ignoring message");
                Ok(())
            }
        }
    }

    async fn send(&mut self, msg: &NetworkMessage, stage: Stage) -> Result<(), SessionError> {
        self.channel
            .send(msg)
            .await
            .map_err(|e| SessionError::new(stage, e))
    }

    /// The set-up's next message: off the wire, since the set-up holds
    /// what it is not waiting for.
    async fn recv(&mut self, stage: Stage) -> Result<Option<NetworkMessage>, SessionError> {
        self.channel
            .recv_from_peer()
            .await
            .map_err(|e| SessionError::new(stage, e))
    }

    /// Keeps the session open, answering pings, until the peer leaves or is
    /// silent for `idle`. Returns why it ended.
    pub async fn serve(mut self, idle: Duration) -> SessionError {
        loop {
            let next = tokio::time::timeout(idle, self.channel.recv()).await;
            let result = match next {
                Err(_) => Err(WireError::Timeout(idle)),
                Ok(Ok(Some(msg))) => match self.answer(msg, Stage::Serving).await {
                    Ok(()) => Ok(()),
                    Err(e) => return e,
                },
                Ok(Ok(None)) => Ok(()),
                Ok(Err(e)) => Err(e),
            };
            if let Err(e) = result {
                return SessionError::new(Stage::Serving, e);
            }
        }
    }

    /// A fresh ping/pong round trip on an established session; pings the
    /// peer sends meanwhile are answered.
    pub async fn measure_rtt(&mut self, timeout: Duration) -> Result<Duration, SessionError> {
        let deadline = Instant::now().later(timeout);
        self.channel.set_deadline(Some((deadline, timeout)));
        let result = self.round_trip().await;
        self.channel.set_deadline(None);
        result
    }

    /// The BIP324 session id, for v2 sessions.
    pub fn session_id(&self) -> Option<[u8; 32]> {
        self.channel.session_id()
    }

    pub async fn send_message(&mut self, msg: &NetworkMessage) -> Result<(), WireError> {
        self.channel.send(msg).await
    }

    /// The next message that is not a ping (pings are answered) within
    /// `timeout`.
    pub async fn recv_message(&mut self, timeout: Duration) -> Result<NetworkMessage, WireError> {
        let deadline = Instant::now().later(timeout);
        self.channel.set_deadline(Some((deadline, timeout)));
        let result = async {
            loop {
                match self.channel.recv().await? {
                    Some(NetworkMessage::Ping(n)) => {
                        self.channel.send(&NetworkMessage::Pong(n)).await?
                    }
                    Some(msg) => return Ok(msg),
                    None => {}
                }
            }
        }
        .await;
        self.channel.set_deadline(None);
        result
    }

    /// The two halves of the channel, for a reader and a writer that run
    /// concurrently, and the report of the establishment.
    pub fn into_parts(self) -> (ChannelReader<S>, ChannelWriter<S>, SessionReport) {
        let (reader, writer) = self.channel.into_split();
        (reader, writer, self.report)
    }
}

fn protocol(stage: Stage, what: &str) -> SessionError {
    SessionError::new(stage, WireError::Protocol(what.to_string()))
}
