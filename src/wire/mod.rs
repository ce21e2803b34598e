//! Bitcoin P2P on a stream: BIP324 v2 (our own, `bip324`) or v1, and the
//! version/verack/ping exchange that every session starts with.

pub mod bip324;
pub mod channel;
pub mod codec;
pub mod error;
pub mod network;
pub mod session;

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;

pub use channel::{Channel, ChannelReader, ChannelWriter, Transport};
pub use error::{SessionError, Stage, WireError};
pub use network::Network;
pub use session::{
    Phases, Session, SessionConfig, SessionReport, SessionRole, StreamContext, TransportPolicy,
};

use crate::net::router::{Inbound, InboundStream};
use crate::net::stream::Counted;
use crate::net::{SharedPort, StreamKind};

/// What an outbound `connect` ended with, including the failed tries.
pub struct ConnectOutcome {
    pub result: Result<Session<Counted<TcpStream>>, SessionError>,
    /// TCP connections opened: 2 when a v2 try fell back to v1.
    pub attempts: u32,
    /// The v2 failure that made us fall back to v1, if any.
    pub fell_back: Option<SessionError>,
    /// Bytes of every attempt, the failed ones included.
    pub bytes_total: u64,
}

/// Opens an outbound session to `remote` the way Bitcoin Core does with
/// `-v2transport`: BIP324 first, and on a failure that looks like a v1-only
/// peer, a new TCP connection speaking v1. Dials from the shared port when one
/// is given.
pub async fn connect(
    remote: SocketAddr,
    config: &SessionConfig,
    from: Option<&SharedPort>,
    started: Instant,
) -> ConnectOutcome {
    let first = first_transport(config);
    let mut bytes_total = 0;
    let result = connect_once(remote, config, from, started, first, &mut bytes_total).await;
    match result {
        Err(e) if e.peer_may_be_v1 && config.transport == TransportPolicy::Auto => {
            tracing::info!(%remote, reason = %e, "BIP324 failed like a v1-only peer; reconnecting with v1");
            let retry = connect_once(
                remote,
                config,
                from,
                started,
                Transport::V1,
                &mut bytes_total,
            )
            .await;
            ConnectOutcome {
                result: retry,
                attempts: 2,
                fell_back: Some(e),
                bytes_total,
            }
        }
        Err(mut e) if e.peer_may_be_v1 && config.transport == TransportPolicy::V2 => {
            e.error = WireError::Protocol(format!(
                "{}; the peer may only speak v1 (try --transport auto or v1)",
                e.error
            ));
            ConnectOutcome {
                result: Err(e),
                attempts: 1,
                fell_back: None,
                bytes_total,
            }
        }
        result => ConnectOutcome {
            result,
            attempts: 1,
            fell_back: None,
            bytes_total,
        },
    }
}

/// What an outbound connection tries first: BIP324 unless v1 is forced.
fn first_transport(config: &SessionConfig) -> Transport {
    match config.transport {
        TransportPolicy::V1 => Transport::V1,
        TransportPolicy::Auto | TransportPolicy::V2 => Transport::V2,
    }
}

async fn connect_once(
    remote: SocketAddr,
    config: &SessionConfig,
    from: Option<&SharedPort>,
    started: Instant,
    transport: Transport,
    bytes_total: &mut u64,
) -> Result<Session<Counted<TcpStream>>, SessionError> {
    let dial = async {
        match from {
            Some(port) => port.dial(remote).await,
            None => crate::net::dial_from_ip(config.source_ip, remote).await,
        }
    };
    let stream = tokio::time::timeout(config.handshake_timeout, dial)
        .await
        .map_err(|_| {
            SessionError::new(Stage::Connect, WireError::Timeout(config.handshake_timeout))
        })?
        .map_err(|e| SessionError::new(Stage::Connect, WireError::Io(e)))?;
    establish_outbound(stream, remote, config, started, transport, bytes_total).await
}

/// `bitpunch connect --proxy`: the session through a SOCKS5 proxy, asked
/// for by name as Bitcoin Core asks (`NODE_ID.punch` is punched by a
/// sidecar). No v1 retry: through a sidecar each try is a punch. The
/// session's remote is the proxy.
pub async fn connect_proxied(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    config: &SessionConfig,
    started: Instant,
) -> ConnectOutcome {
    let transport = first_transport(config);
    let mut bytes_total = 0;
    let result =
        match crate::sidecar::socks::connect_through(proxy, host, port, config.handshake_timeout)
            .await
        {
            Ok(stream) => {
                establish_outbound(stream, proxy, config, started, transport, &mut bytes_total)
                    .await
            }
            Err(e) => Err(SessionError::new(
                Stage::Connect,
                WireError::Protocol(format!("{e:#}")),
            )),
        };
    ConnectOutcome {
        result,
        attempts: 1,
        fell_back: None,
        bytes_total,
    }
}

async fn establish_outbound(
    stream: TcpStream,
    remote: SocketAddr,
    config: &SessionConfig,
    started: Instant,
    transport: Transport,
    bytes_total: &mut u64,
) -> Result<Session<Counted<TcpStream>>, SessionError> {
    let _ = stream.set_nodelay(true);
    if config.close_with_reset {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    }
    let ctx = StreamContext {
        local: stream
            .local_addr()
            .map_err(|e| SessionError::new(Stage::Connect, WireError::Io(e)))?,
        remote,
        started,
        tcp_at: Instant::now(),
        counters: Default::default(),
    };
    let counted = Counted::with_counters(stream, ctx.counters.clone());
    let counters = ctx.counters.clone();
    let result = Session::establish(counted, ctx, SessionRole::Initiator, transport, config).await;
    *bytes_total = bytes_total.saturating_add(counters.total());
    result
}

/// Serves an inbound connection from the accept loop as the responder, in
/// the transport its first bytes announced.
pub async fn respond(
    inbound: Inbound,
    config: &SessionConfig,
) -> Result<Session<InboundStream>, SessionError> {
    let transport = match inbound.kind {
        Some(StreamKind::Bitcoin(t)) => t,
        _ => Transport::V2,
    };
    let ctx = StreamContext {
        local: inbound.local,
        remote: inbound.remote,
        started: inbound.accepted_at,
        tcp_at: inbound.accepted_at,
        counters: inbound.counters.clone(),
    };
    Session::establish(
        inbound.stream,
        ctx,
        SessionRole::Responder,
        transport,
        config,
    )
    .await
}
