//! Routing of inbound connections on the shared port.
//!
//! First by remote endpoint: a connection from an endpoint that a punch in
//! progress expects belongs to that punch, whatever it says. Then by the first
//! bytes the dialer sends (in all three protocols the dialer speaks first):
//! the multistream-select header is libp2p, network magic + `version` is a v1
//! Bitcoin peer, and anything else is taken for a BIP324 key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::admission::{Admission, AdmissionConfig};
use super::stream::{ByteCounters, Counted, Rewound};
use crate::wire::Transport;

const MULTISTREAM_HEADER: &[u8] = b"\x13/multistream/1.0.0\n";
const V1_VERSION_COMMAND: &[u8; 12] = b"version\0\0\0\0\0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Libp2p,
    Bitcoin(Transport),
}

/// Where classified connections go; one receiver per route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Libp2p,
    Bitcoin,
}

impl StreamKind {
    fn route(self) -> Route {
        match self {
            StreamKind::Libp2p => Route::Libp2p,
            StreamKind::Bitcoin(_) => Route::Bitcoin,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Sniff {
    NeedMore,
    Is(StreamKind),
}

/// Classifies a connection by the first bytes its dialer sent.
pub fn sniff(prefix: &[u8], magic: [u8; 4]) -> Sniff {
    let mut v1 = [0u8; 16];
    v1[..4].copy_from_slice(&magic);
    v1[4..].copy_from_slice(V1_VERSION_COMMAND);
    let mut undecided = false;
    for (pattern, kind) in [
        (&v1[..], StreamKind::Bitcoin(Transport::V1)),
        (MULTISTREAM_HEADER, StreamKind::Libp2p),
    ] {
        let n = prefix.len().min(pattern.len());
        if prefix.get(..n) == pattern.get(..n) {
            if n == pattern.len() {
                return Sniff::Is(kind);
            }
            undecided = true;
        }
    }
    if undecided {
        Sniff::NeedMore
    } else {
        Sniff::Is(StreamKind::Bitcoin(Transport::V2))
    }
}

pub type InboundStream = Rewound<Counted<TcpStream>>;

pub struct Inbound {
    /// The connection, with the bytes read for routing still to be read.
    pub stream: InboundStream,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// What its first bytes said; `None` for a connection handed to a punch
    /// by its endpoint, before anything was read.
    pub kind: Option<StreamKind>,
    pub accepted_at: Instant,
    pub counters: Arc<ByteCounters>,
}

pub struct Router {
    magic: [u8; 4],
    admission: Admission,
    sniff_timeout: Duration,
    expected: Mutex<HashMap<SocketAddr, oneshot::Sender<Inbound>>>,
    /// Connections still being classified, by remote endpoint: a punch that
    /// starts to expect one of them takes it over (the peer's SYN came in just
    /// before our punch began, and a BIP324 responder says nothing first).
    sniffing: Mutex<HashMap<SocketAddr, oneshot::Sender<oneshot::Sender<Inbound>>>>,
    routes: Mutex<HashMap<Route, mpsc::Sender<Inbound>>>,
}

/// A punch's claim on connections from one remote endpoint; released on drop.
pub struct Expectation {
    router: Arc<Router>,
    remote: SocketAddr,
    pub inbound: oneshot::Receiver<Inbound>,
}

impl Drop for Expectation {
    fn drop(&mut self) {
        // Remove our claim, not a newer one for the same endpoint.
        self.inbound.close();
        let mut expected = self.router.lock_expected();
        if expected.get(&self.remote).is_some_and(|tx| tx.is_closed()) {
            expected.remove(&self.remote);
        }
    }
}

impl Router {
    /// A router with a node's admission caps ([`AdmissionConfig::NODE`]).
    pub fn new(magic: [u8; 4], sniff_timeout: Duration) -> Arc<Router> {
        Self::with_admission(magic, sniff_timeout, AdmissionConfig::NODE)
    }

    pub fn with_admission(
        magic: [u8; 4],
        sniff_timeout: Duration,
        admission: AdmissionConfig,
    ) -> Arc<Router> {
        Arc::new(Router {
            magic,
            admission: Admission::new(admission),
            sniff_timeout,
            expected: Mutex::default(),
            sniffing: Mutex::default(),
            routes: Mutex::default(),
        })
    }

    /// Admission control's caps and counts.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    fn lock_expected(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, oneshot::Sender<Inbound>>> {
        crate::clock::lock(&self.expected)
    }

    /// The punch that claims a connection from `remote`: the one expecting
    /// exactly that endpoint, or else one expecting another port of the same
    /// address. The second case is a peer behind an address-and-port-
    /// dependent NAT: its SYN to us leaves from a new external port, not the
    /// one the relay or coordinator saw, and still reaches us when our NAT
    /// (or none) lets it in.
    fn take_claim(&self, remote: SocketAddr) -> Option<oneshot::Sender<Inbound>> {
        let mut expected = self.lock_expected();
        if let Some(exact) = expected.remove(&remote) {
            return Some(exact);
        }
        let same_ip = expected
            .iter()
            .find(|(k, tx)| k.ip() == remote.ip() && !tx.is_closed())
            .map(|(k, _)| *k)?;
        expected.remove(&same_ip)
    }

    /// Subscribes to a route; a later subscription replaces the earlier one.
    pub fn subscribe(&self, route: Route, capacity: usize) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(capacity);
        crate::clock::lock(&self.routes).insert(route, tx);
        rx
    }

    fn lock_sniffing(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, oneshot::Sender<oneshot::Sender<Inbound>>>>
    {
        crate::clock::lock(&self.sniffing)
    }

    /// Claims the next connection from `remote` (a punch in progress), or
    /// the one from `remote` that is being classified right now.
    pub fn expect_from(self: &Arc<Self>, remote: SocketAddr) -> Expectation {
        let (tx, rx) = oneshot::channel();
        let in_sniff = self.lock_sniffing().remove(&remote);
        let unclaimed = match in_sniff {
            Some(sniffer) => sniffer.send(tx).err(),
            None => Some(tx),
        };
        if let Some(tx) = unclaimed {
            self.lock_expected().insert(remote, tx);
        }
        Expectation {
            router: self.clone(),
            remote,
            inbound: rx,
        }
    }

    pub(crate) fn dispatch(self: Arc<Self>, stream: TcpStream, remote: SocketAddr) {
        let accepted_at = Instant::now();
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "dropping connection without a local address");
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        // A connection a punch is waiting for was asked for by this node:
        // admitted whatever the caps say. Everyone else waits their turn.
        let claim = self.take_claim(remote);
        let ticket = match self.admission.admit(remote.ip(), claim.is_some()) {
            Ok(ticket) => ticket,
            Err(_) => return, // logged by admission, once per interval
        };
        let counted = Counted::admitted(stream, ticket);
        let counters = counted.counters();
        let mut inbound = Inbound {
            stream: Rewound::new(Vec::new(), counted),
            local,
            remote,
            kind: None,
            accepted_at,
            counters,
        };
        if let Some(claim) = claim {
            tracing::debug!(%remote, "inbound connection belongs to a punch in progress");
            if let Err(unclaimed) = claim.send(inbound) {
                tracing::debug!(remote = %unclaimed.remote, "punch gave up before its connection arrived");
            }
            return;
        }
        let (claim_tx, mut claim_rx) = oneshot::channel::<oneshot::Sender<Inbound>>();
        self.lock_sniffing().insert(remote, claim_tx);
        tokio::spawn(async move {
            let (_, mut counted) = inbound.stream.into_inner();
            let mut prefix = Vec::new();
            let read = tokio::select! {
                read = tokio::time::timeout(self.sniff_timeout, read_prefix(&mut counted, self.magic, &mut prefix)) => Some(read),
                Ok(claimer) = &mut claim_rx => {
                    self.lock_sniffing().remove(&remote);
                    inbound.stream = Rewound::new(prefix, counted);
                    tracing::debug!(%remote, "connection being classified belongs to a punch that just began");
                    let _ = claimer.send(inbound);
                    return;
                }
            };
            self.lock_sniffing().remove(&remote);
            // A claim that raced with the end of classification still wins.
            if let Ok(claimer) = claim_rx.try_recv() {
                inbound.stream = Rewound::new(prefix, counted);
                let _ = claimer.send(inbound);
                return;
            }
            let kind = match read {
                Some(Ok(Ok(kind))) => kind,
                Some(Ok(Err(e))) if super::admission::Evicted::is(&e) => {
                    tracing::debug!(%remote, reason = %e, "closing inbound connection before routing");
                    return;
                }
                Some(Ok(Err(e))) => {
                    tracing::info!(%remote, reason = %e, "closing inbound connection before routing");
                    return;
                }
                _ => {
                    tracing::info!(%remote, timeout = ?self.sniff_timeout, "closing inbound connection: it sent too little to route");
                    return;
                }
            };
            inbound.stream = Rewound::new(prefix, counted);
            inbound.kind = Some(kind);
            let route = crate::clock::lock(&self.routes).get(&kind.route()).cloned();
            match route {
                Some(tx) => {
                    if tx.send(inbound).await.is_err() {
                        tracing::info!(%remote, ?kind, "closing inbound connection: its handler has stopped");
                    }
                }
                None => {
                    tracing::info!(%remote, ?kind, "closing inbound connection: nothing here serves it")
                }
            }
        });
    }
}

/// Reads into `prefix` until its first bytes say what the connection is.
/// Cancellation-safe: what was read stays in `prefix`.
async fn read_prefix(
    stream: &mut Counted<TcpStream>,
    magic: [u8; 4],
    prefix: &mut Vec<u8>,
) -> std::io::Result<StreamKind> {
    loop {
        if let Sniff::Is(kind) = sniff(prefix, magic) {
            return Ok(kind);
        }
        let mut chunk = [0u8; 32];
        let want = MULTISTREAM_HEADER.len().saturating_sub(prefix.len()).max(1);
        let want = want.min(chunk.len());
        let n = stream
            .read(chunk.get_mut(..want).unwrap_or_default())
            .await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "peer closed before its first bytes could be classified",
            ));
        }
        prefix.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGTEST: [u8; 4] = [0xfa, 0xbf, 0xb5, 0xda];

    #[test]
    fn sniff_tells_the_three_dialers_apart() {
        let mut v1 = REGTEST.to_vec();
        v1.extend_from_slice(b"version\0\0\0\0\0");
        assert_eq!(
            sniff(&v1, REGTEST),
            Sniff::Is(StreamKind::Bitcoin(Transport::V1))
        );
        assert_eq!(sniff(&v1[..10], REGTEST), Sniff::NeedMore);
        assert_eq!(sniff(&[], REGTEST), Sniff::NeedMore);
        assert_eq!(
            sniff(MULTISTREAM_HEADER, REGTEST),
            Sniff::Is(StreamKind::Libp2p)
        );
        assert_eq!(sniff(&MULTISTREAM_HEADER[..5], REGTEST), Sniff::NeedMore);
        // A BIP324 key differs from both patterns within a few bytes.
        assert_eq!(
            sniff(&[0x42, 0x17, 0x99], REGTEST),
            Sniff::Is(StreamKind::Bitcoin(Transport::V2))
        );
        // v1 on another network is not v1 for us: it goes the BIP324 way and
        // fails there, as in Bitcoin Core.
        let mut mainnet_v1 = vec![0xf9, 0xbe, 0xb4, 0xd9];
        mainnet_v1.extend_from_slice(b"version\0\0\0\0\0");
        assert_eq!(
            sniff(&mainnet_v1, REGTEST),
            Sniff::Is(StreamKind::Bitcoin(Transport::V2))
        );
        // A different v1 command first is not a v1 handshake.
        let mut verack = REGTEST.to_vec();
        verack.extend_from_slice(b"verack\0\0\0\0\0\0");
        assert_eq!(
            sniff(&verack, REGTEST),
            Sniff::Is(StreamKind::Bitcoin(Transport::V2))
        );
    }
}
