//! The sidecar's SOCKS5 proxy, for Bitcoin Core's `-proxy=ADDR`.
//!
//! Core hands host names to its proxy unresolved, so `addnode
//! NODE_ID.punch:8333 onetry` arrives here as a CONNECT to a domain name.
//! Names under `.punch` are punched through the running node (its
//! coordinators, or its relays for a libp2p peer id) and spliced; every other
//! destination is connected directly, so Core's ordinary outbound peers
//! keep working. Core offers "no authentication" and username/password
//! (random credentials for Tor stream isolation); we pick the first.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use fast_socks5::server::Socks5ServerProtocol;
use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::{ReplyError, Socks5Command};
use libp2p::PeerId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{ClientSlot, PendingClient};
use crate::connect::NodeConnector;
use crate::identity::NodeId;
use crate::report::Outcome;
use crate::wire::Stage;

pub const SUFFIX: &str = ".punch";

/// A name the proxy punches to: `ID.punch`, or `ID.VIA.punch` to pick the
/// coordinator or relay. ID is a node id (24 hex digits: through the
/// node's coordinators) or a libp2p peer id (through its relays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PunchName {
    Node {
        id: NodeId,
        coordinator: Option<NodeId>,
    },
    Peer {
        id: PeerId,
        relay: Option<PeerId>,
    },
}

impl fmt::Display for PunchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PunchName::Node { id, coordinator } => match coordinator {
                Some(c) => write!(f, "{id}.{c}{SUFFIX}"),
                None => write!(f, "{id}{SUFFIX}"),
            },
            PunchName::Peer { id, relay } => match relay {
                Some(r) => write!(f, "{id}.{r}{SUFFIX}"),
                None => write!(f, "{id}{SUFFIX}"),
            },
        }
    }
}

/// Whether a host name is ours to punch (case-insensitive, like DNS).
pub fn is_punch_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.len() > SUFFIX.len()
        && host
            .get(host.len().saturating_sub(SUFFIX.len())..)
            .is_some_and(|s| s.eq_ignore_ascii_case(SUFFIX))
}

impl FromStr for PunchName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let forms =
            "NODE_ID.punch, NODE_ID.COORDINATOR_ID.punch, PEER_ID.punch or PEER_ID.RELAY_ID.punch";
        if !is_punch_name(name) {
            return Err(format!(
                "{name:?} does not end in {SUFFIX}: expected {forms}"
            ));
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        let labels = name
            .get(..name.len().saturating_sub(SUFFIX.len()))
            .unwrap_or_default();
        let (id, via) = match labels.split_once('.') {
            Some((id, via)) => (id, Some(via)),
            None => (labels, None),
        };
        if let Ok(id) = id.parse::<NodeId>() {
            let coordinator = via
                .map(|c| {
                    c.parse::<NodeId>().map_err(|e| {
                        format!("{name:?}: the coordinator label: {e}; expected {forms}")
                    })
                })
                .transpose()?;
            return Ok(PunchName::Node { id, coordinator });
        }
        if let Ok(id) = id.parse::<PeerId>() {
            let relay = via
                .map(|r| {
                    r.parse::<PeerId>().map_err(|e| {
                        format!(
                            "{name:?}: the relay label is not a peer id ({e}); expected {forms}"
                        )
                    })
                })
                .transpose()?;
            return Ok(PunchName::Peer { id, relay });
        }
        Err(format!(
            "{name:?}: {id:?} is neither a node id (24 hex digits) nor a libp2p peer id: expected {forms}"
        ))
    }
}

/// Why a punch for a SOCKS client failed, as the SOCKS reply says it.
/// Bitcoin Core logs the reply's text ("host unreachable", ...).
pub fn reply_for(record: &Outcome) -> ReplyError {
    let error = record.error.as_deref().unwrap_or_default();
    if error.contains(crate::punch::budget::REFUSED_BY_BUDGET) {
        return ReplyError::ConnectionNotAllowed;
    }
    match record.failed_at {
        // The coordinator or relay does not know the node, or would not ask.
        Some(Stage::Coordination) => ReplyError::HostUnreachable,
        // No direct connection through the NATs.
        Some(Stage::Punch) => ReplyError::NetworkUnreachable,
        // Connected, but the peer did not prove its key, or broke off.
        _ => ReplyError::GeneralFailure,
    }
}

/// Limits on the proxy's clients.
#[derive(Debug, Clone, Copy)]
pub struct ProxyLimits {
    /// Clients served at once; more wait in the listen backlog.
    pub clients: usize,
    /// For the SOCKS greeting and request, and a direct connect.
    pub timeout: Duration,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            clients: 256,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Serves SOCKS5 clients on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, connector: NodeConnector, limits: ProxyLimits) {
    let slots = Arc::new(Semaphore::new(limits.clients.max(1)));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: the next accept may work.
                tracing::warn!(error = %e, "SOCKS5 proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let connector = connector.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_client(stream, client, &connector, limits).await;
        });
    }
}

async fn serve_client(
    stream: TcpStream,
    client: SocketAddr,
    connector: &NodeConnector,
    limits: ProxyLimits,
) {
    let request = async {
        let proto = Socks5ServerProtocol::accept_no_auth(stream).await?;
        proto.read_command().await
    };
    let (proto, command, target) = match tokio::time::timeout(limits.timeout, request).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            tracing::info!(%client, reason = %e, "SOCKS5 proxy: closing client");
            return;
        }
        Err(_) => {
            tracing::info!(%client, "SOCKS5 proxy: closing client: no request in time");
            return;
        }
    };
    if !matches!(command, Socks5Command::TCPConnect) {
        tracing::info!(%client, ?command, "SOCKS5 proxy: only CONNECT is served");
        let _ = proto.reply_error(&ReplyError::CommandNotSupported).await;
        return;
    }
    match target {
        TargetAddr::Domain(host, _port) if is_punch_name(&host) => {
            punch(proto, client, &host, connector).await
        }
        TargetAddr::Domain(host, port) => {
            let lower = host.to_ascii_lowercase();
            if lower.ends_with(".onion") || lower.ends_with(".i2p") {
                tracing::info!(%client, %host, "SOCKS5 proxy: no route to onion or I2P names (give Core -onion / -i2psam)");
                let _ = proto.reply_error(&ReplyError::HostUnreachable).await;
                return;
            }
            let resolved = tokio::time::timeout(
                limits.timeout,
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await;
            match resolved {
                Ok(Ok(mut addrs)) => match addrs.next() {
                    Some(addr) => direct(proto, client, &host, addr, limits).await,
                    None => {
                        let _ = proto.reply_error(&ReplyError::HostUnreachable).await;
                    }
                },
                _ => {
                    tracing::info!(%client, %host, "SOCKS5 proxy: cannot resolve");
                    let _ = proto.reply_error(&ReplyError::HostUnreachable).await;
                }
            }
        }
        TargetAddr::Ip(addr) => direct(proto, client, &addr.to_string(), addr, limits).await,
    }
}

/// Pass-through: an ordinary peer, connected from an ordinary port as the
/// Bitcoin node would have connected without us.
async fn direct(
    proto: PendingClient,
    client: SocketAddr,
    name: &str,
    addr: SocketAddr,
    limits: ProxyLimits,
) {
    let connected = tokio::time::timeout(limits.timeout, TcpStream::connect(addr)).await;
    let mut remote = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reply = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ReplyError::ConnectionRefused,
                std::io::ErrorKind::NetworkUnreachable => ReplyError::NetworkUnreachable,
                _ => ReplyError::HostUnreachable,
            };
            tracing::info!(%client, %name, error = %e, "SOCKS5 proxy: direct connection failed");
            let _ = proto.reply_error(&reply).await;
            return;
        }
        Err(_) => {
            tracing::info!(%client, %name, "SOCKS5 proxy: direct connection timed out");
            let _ = proto.reply_error(&ReplyError::TtlExpired).await;
            return;
        }
    };
    let bound = remote.local_addr().unwrap_or(addr);
    let Ok(mut local) = proto.reply_success(bound).await else {
        return;
    };
    tracing::debug!(%client, %name, %addr, "SOCKS5 proxy: direct connection");
    let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
}

async fn punch(proto: PendingClient, client: SocketAddr, host: &str, connector: &NodeConnector) {
    let name: PunchName = match host.parse() {
        Ok(n) => n,
        Err(why) => {
            tracing::warn!(%client, reason = %why, "SOCKS5 proxy: not a name to punch to");
            let _ = proto.reply_error(&ReplyError::HostUnreachable).await;
            return;
        }
    };
    let slot = ClientSlot::new(proto);
    let result = connector.splice(&name, slot.clone()).await;
    // The splice took the client when the punch worked; otherwise it is
    // still here to be told why not.
    let reply = match &result {
        Ok(record) if record.ok => {
            tracing::info!(%client, %name, record = %record.to_json(), "SOCKS5 proxy: punched and spliced");
            return;
        }
        Ok(record) => {
            tracing::warn!(%client, %name, record = %record.to_json(), "SOCKS5 proxy: punch failed");
            reply_for(record)
        }
        Err(e) => {
            tracing::warn!(%client, %name, reason = %format!("{e:#}"), "SOCKS5 proxy: cannot punch");
            ReplyError::NetworkUnreachable
        }
    };
    if let Some(proto) = slot.take() {
        let _ = proto.reply_error(&reply).await;
    }
}

/// `bitpunch connect --proxy`: a connection to `host:port` through a SOCKS5
/// proxy, asked for the way Bitcoin Core asks (a domain name unresolved).
pub async fn connect_through(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    let mut config = fast_socks5::client::Config::default();
    config.set_connect_timeout(timeout);
    let stream = tokio::time::timeout(
        timeout,
        fast_socks5::client::Socks5Stream::connect(proxy, host.to_string(), port, config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the SOCKS5 proxy at {proxy} did not answer within {timeout:?}"))?
    .map_err(|e| anyhow::anyhow!("SOCKS5 proxy {proxy}: {e}"))?;
    Ok(stream.get_socket())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punch_names_parse_in_every_form_and_name_the_forms_when_wrong() {
        let node = "0011223344556677889900aa";
        let coord = "ffeeddccbbaa998877665544";
        assert_eq!(
            format!("{node}.punch").parse::<PunchName>().unwrap(),
            PunchName::Node {
                id: node.parse().unwrap(),
                coordinator: None
            }
        );
        // DNS is case-insensitive and may end in a dot.
        assert_eq!(
            format!("{}.{coord}.PUNCH.", node.to_uppercase())
                .parse::<PunchName>()
                .unwrap(),
            PunchName::Node {
                id: node.parse().unwrap(),
                coordinator: Some(coord.parse().unwrap())
            }
        );
        let peer = PeerId::random();
        let relay = PeerId::random();
        assert_eq!(
            format!("{peer}.{relay}.punch")
                .parse::<PunchName>()
                .unwrap(),
            PunchName::Peer {
                id: peer,
                relay: Some(relay)
            }
        );
        let name = PunchName::Peer {
            id: peer,
            relay: None,
        };
        assert_eq!(name.to_string().parse::<PunchName>().unwrap(), name);
        for bad in [
            "punch",
            ".punch",
            "example.org",
            "nothex.punch",
            &format!("{node}.nothex.punch"),
            &format!("{peer}.{node}x.punch"),
        ] {
            let e = bad.parse::<PunchName>().unwrap_err();
            assert!(e.contains("NODE_ID.punch"), "{bad}: {e}");
        }
        assert!(is_punch_name("a.punch") && !is_punch_name("punch") && !is_punch_name("a.punches"));
    }

    #[test]
    fn failures_map_to_distinct_socks_replies() {
        use crate::report::Path;
        use crate::wire::SessionRole;
        let at = |stage, error: &str| {
            reply_for(&Outcome::failed(
                Path::Native,
                SessionRole::Initiator,
                stage,
                error.into(),
            ))
            .as_u8()
        };
        assert_eq!(at(Stage::Coordination, "unknown peer"), 4);
        assert_eq!(at(Stage::Punch, "no direct connection"), 3);
        assert_eq!(
            at(
                Stage::Punch,
                &format!(
                    "x ({}: per address)",
                    crate::punch::budget::REFUSED_BY_BUDGET
                )
            ),
            2
        );
        assert_eq!(at(Stage::Splice, "proof"), 1);
    }
}
