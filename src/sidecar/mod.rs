//! bitpunch beside an unmodified Bitcoin node (docs/bitcoin-core.md).
//!
//! Bitcoin Core cannot take over a punched socket, but it can dial through
//! a SOCKS5 proxy and it accepts inbound connections. So a sidecar punches
//! for it and splices: the Bitcoin node's outbound connection to
//! `NODE_ID.punch` arrives at our proxy ([`socks`]), we punch to that node's
//! sidecar, and the far sidecar connects to its own Bitcoin node's P2P port.
//! The two Bitcoin nodes then run BIP324 (or v1) end to end through both
//! sidecars; neither sidecar terminates their transport.
//!
//! Before the first Bitcoin byte crosses, the two sidecars prove their keys
//! over a short handshake ([`handshake`]) that also signs the first 64 bytes
//! each Bitcoin node sent: under BIP324 those are the nodes' ElligatorSwift
//! keys, so nobody between the sidecars (a coordinator or relay that lied
//! about an address) can pose as the peer or swap a key to read the session.

pub mod demo;
pub mod handshake;
pub mod socks;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::node::{SessionInfo, SessionPath, SessionTask};
use crate::punch::upgrade::Proof;
use crate::punch::Punched;
use crate::report::{ms_since, Outcome, Path};
use crate::wire::{SessionConfig, SessionRole, Stage, Transport};
use handshake::{Hello, SpliceRole, FIRST_FLIGHT, HELLO_LEN};

/// The SOCKS5 client (a Bitcoin node) that asked for a connection, waiting
/// for our reply.
pub type PendingClient =
    fast_socks5::server::Socks5ServerProtocol<TcpStream, fast_socks5::server::states::CommandRead>;

/// Holds the waiting client until the punch succeeds (the splice takes it
/// and answers "succeeded") or fails (the proxy takes it back and answers
/// with the SOCKS error).
#[derive(Clone, Default)]
pub struct ClientSlot(Arc<Mutex<Option<PendingClient>>>);

impl ClientSlot {
    pub fn new(client: PendingClient) -> Self {
        ClientSlot(Arc::new(Mutex::new(Some(client))))
    }

    pub fn take(&self) -> Option<PendingClient> {
        crate::clock::lock(&self.0).take()
    }
}

/// The Bitcoin node's end of a sidecar's punched connections.
#[derive(Clone)]
pub enum LocalEnd {
    /// The listener: connections punched for us go to this P2P port.
    Bitcoind(SocketAddr),
    /// The connector: the Bitcoin node that asked through the proxy.
    Client(ClientSlot),
}

/// A running splice, for the node to own (it shows in `bitpunch peers`).
pub struct Spliced {
    pub info: SessionInfo,
    pub task: SessionTask,
}

fn path_of(path: Path) -> SessionPath {
    match path {
        Path::Libp2p => SessionPath::Libp2p,
        _ => SessionPath::Native,
    }
}

/// Runs the splice handshake on `punched` as the side `role` gives (the
/// BIP324 initiator of the coordination is the connector), within the
/// handshake timeout, and returns the splice ready to run.
#[allow(clippy::too_many_arguments)]
pub async fn splice(
    punched: Punched,
    path: Path,
    role: SessionRole,
    config: &SessionConfig,
    asked: Instant,
    proof: &impl Proof,
    local: &LocalEnd,
) -> (Outcome, Option<Spliced>) {
    let counters = punched.stream.get_ref().counters();
    let mut record = Outcome::failed(path, role, Stage::Splice, String::new());
    record.local = Some(punched.local.to_string());
    record.remote = Some(punched.remote.to_string());
    record.won_by = Some(punched.won_by);
    record.t_ms.first_syn = punched.first_syn.map(|t| ms_since(asked, t));
    record.t_ms.tcp = Some(ms_since(asked, punched.established));
    let remote = punched.remote;
    let local_addr = punched.local;
    let mut peer = punched.stream;
    let handshake = async {
        match (role, local) {
            (SessionRole::Responder, LocalEnd::Bitcoind(bitcoind)) => {
                listen_side(&mut peer, *bitcoind, proof, config).await
            }
            (SessionRole::Initiator, LocalEnd::Client(slot)) => {
                connect_side(&mut peer, local_addr, slot, proof).await
            }
            (SessionRole::Responder, LocalEnd::Client(_)) => Err(
                "the coordination made us the responder of a connection our Bitcoin node asked for"
                    .to_string(),
            ),
            (SessionRole::Initiator, LocalEnd::Bitcoind(_)) => Err(
                "a sidecar splices to its Bitcoin node only connections others asked for".into(),
            ),
        }
    };
    let outcome = match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!(
            "the splice handshake did not finish within {:.1}s",
            config.handshake_timeout.as_secs_f64()
        )),
    };
    record.bytes.direct = counters.total();
    let (bitcoin, transport, spliced_to) = match outcome {
        Ok(done) => done,
        Err(why) => {
            record.error = Some(why);
            return (record, None);
        }
    };
    record.ok = true;
    record.error = None;
    record.failed_at = None;
    record.transport = Some(transport);
    record.t_ms.handshake = Some(ms_since(asked, Instant::now()));
    record.spliced_to = Some(spliced_to.to_string());
    let info = SessionInfo::spliced(path_of(path), role, remote, transport, counters, spliced_to);
    let task = Box::pin(run_splice(peer, bitcoin, remote, spliced_to));
    (record, Some(Spliced { info, task }))
}

/// Copies both ways until either side closes, then logs how it ended.
pub async fn run_splice<A, B>(mut a: A, mut b: B, remote: SocketAddr, spliced_to: SocketAddr)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(&mut a, &mut b).await {
        Ok((to_local, to_remote)) => {
            tracing::info!(%remote, %spliced_to, to_local, to_remote, "splice closed")
        }
        Err(e) => tracing::info!(%remote, %spliced_to, reason = %e, "splice closed"),
    }
}

/// What a finished handshake leaves: the Bitcoin node's stream, the
/// transport it speaks, and where it is.
type Handshaken = (TcpStream, Transport, SocketAddr);

fn io_err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

async fn exchange_hellos<S>(peer: &mut S, ours: SpliceRole) -> Result<(Hello, Hello), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut nonce = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce);
    let hello = Hello { role: ours, nonce };
    peer.write_all(&hello.encode())
        .await
        .map_err(io_err("sending the splice hello"))?;
    let mut theirs = [0u8; HELLO_LEN];
    peer.read_exact(&mut theirs)
        .await
        .map_err(io_err("reading the peer's splice hello"))?;
    let theirs = Hello::decode(&theirs, ours).map_err(|e| e.to_string())?;
    Ok((hello, theirs))
}

async fn read_proof<S: AsyncRead + Unpin>(peer: &mut S) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 2];
    peer.read_exact(&mut len)
        .await
        .map_err(io_err("reading the peer's splice proof"))?;
    let len = handshake::proof_len(len).map_err(|e| e.to_string())?;
    let mut proof = vec![0u8; len];
    peer.read_exact(&mut proof)
        .await
        .map_err(io_err("reading the peer's splice proof"))?;
    Ok(proof)
}

async fn read_first<S: AsyncRead + Unpin>(
    stream: &mut S,
    whose: &str,
) -> Result<[u8; FIRST_FLIGHT], String> {
    let mut first = [0u8; FIRST_FLIGHT];
    stream
        .read_exact(&mut first)
        .await
        .map_err(|e| format!("reading the first {FIRST_FLIGHT} bytes of {whose}: {e}"))?;
    Ok(first)
}

fn transport_of(connector_first: &[u8; FIRST_FLIGHT]) -> Transport {
    if handshake::is_v1(connector_first) {
        Transport::V1
    } else {
        Transport::V2
    }
}

/// The listener: check the connector's proof before our Bitcoin node hears
/// of the connection, then sign both Bitcoin nodes' first flights.
async fn listen_side<S>(
    peer: &mut S,
    bitcoind: SocketAddr,
    proof: &impl Proof,
    config: &SessionConfig,
) -> Result<Handshaken, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (ours, theirs) = exchange_hellos(peer, SpliceRole::Listener).await?;
    let their_proof = read_proof(peer).await?;
    let connector_first = read_first(peer, "the peer's Bitcoin node").await?;
    let signed = handshake::transcript(
        SpliceRole::Connector,
        &theirs.nonce,
        &ours.nonce,
        &connector_first,
        None,
    );
    proof
        .check_splice(&signed, &their_proof)
        .map_err(|why| format!("splice proof: {why}"))?;
    let mut bitcoin = connect_bitcoind(bitcoind, config.handshake_timeout).await?;
    bitcoin
        .write_all(&connector_first)
        .await
        .map_err(io_err("writing to the local Bitcoin node"))?;
    let listener_first = read_first(&mut bitcoin, "our Bitcoin node's answer").await?;
    let signed = handshake::transcript(
        SpliceRole::Listener,
        &theirs.nonce,
        &ours.nonce,
        &connector_first,
        Some(&listener_first),
    );
    let mut flight = handshake::proof_frame(&proof.sign_splice(&signed));
    flight.extend_from_slice(&listener_first);
    peer.write_all(&flight)
        .await
        .map_err(io_err("sending our splice proof"))?;
    Ok((bitcoin, transport_of(&connector_first), bitcoind))
}

/// The connector: answer the waiting SOCKS5 client, sign its first flight,
/// and pass the peer's first flight on only once the peer proved its key
/// over both.
async fn connect_side<S>(
    peer: &mut S,
    punched_from: SocketAddr,
    slot: &ClientSlot,
    proof: &impl Proof,
) -> Result<Handshaken, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (ours, theirs) = exchange_hellos(peer, SpliceRole::Connector).await?;
    let client = slot
        .take()
        .ok_or("the SOCKS5 client is gone (answered already)")?;
    let mut bitcoin = client
        .reply_success(punched_from)
        .await
        .map_err(|e| format!("answering the SOCKS5 client: {e}"))?;
    let client_addr = bitcoin
        .peer_addr()
        .map_err(io_err("the SOCKS5 client's address"))?;
    let connector_first = read_first(&mut bitcoin, "our Bitcoin node's first flight").await?;
    let signed = handshake::transcript(
        SpliceRole::Connector,
        &ours.nonce,
        &theirs.nonce,
        &connector_first,
        None,
    );
    let mut flight = handshake::proof_frame(&proof.sign_splice(&signed));
    flight.extend_from_slice(&connector_first);
    peer.write_all(&flight)
        .await
        .map_err(io_err("sending our splice proof"))?;
    let their_proof = read_proof(peer).await?;
    let listener_first = read_first(peer, "the peer's Bitcoin node's answer").await?;
    let signed = handshake::transcript(
        SpliceRole::Listener,
        &ours.nonce,
        &theirs.nonce,
        &connector_first,
        Some(&listener_first),
    );
    proof
        .check_splice(&signed, &their_proof)
        .map_err(|why| format!("splice proof: {why}"))?;
    bitcoin
        .write_all(&listener_first)
        .await
        .map_err(io_err("writing to our Bitcoin node"))?;
    Ok((bitcoin, transport_of(&connector_first), client_addr))
}

/// Connects to the local Bitcoin node's P2P port.
pub async fn connect_bitcoind(
    bitcoind: SocketAddr,
    timeout: std::time::Duration,
) -> Result<TcpStream, String> {
    tokio::time::timeout(timeout, TcpStream::connect(bitcoind))
        .await
        .map_err(|_| format!("the local Bitcoin node at {bitcoind} did not accept in time"))?
        .map_err(|e| format!("connecting to the local Bitcoin node at {bitcoind}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{self, NodeKey};
    use bitcoin::p2p::message::NetworkMessage;
    use bitcoin::secp256k1::XOnlyPublicKey;

    const TAG: &str = "test/splice";

    struct KeyProof {
        ours: NodeKey,
        peer: XOnlyPublicKey,
    }

    impl Proof for KeyProof {
        fn ours(&self, _: &[u8; 32]) -> NetworkMessage {
            NetworkMessage::Verack
        }
        fn check(&self, _: &NetworkMessage, _: &[u8; 32]) -> Result<bool, String> {
            Ok(false)
        }
        fn expected(&self) -> String {
            "the peer".into()
        }
        fn sign_splice(&self, transcript: &[u8; 32]) -> Vec<u8> {
            self.ours.sign(TAG, &[transcript]).to_vec()
        }
        fn check_splice(&self, transcript: &[u8; 32], proof: &[u8]) -> Result<(), String> {
            let signature: &[u8; 64] = proof.try_into().map_err(|_| "length")?;
            identity::verify(&self.peer, TAG, &[transcript], signature)
                .then_some(())
                .ok_or_else(|| "does not verify".to_string())
        }
    }

    /// A Bitcoin node that answers 64 bytes of 0x42 to the first 64 it
    /// hears; reports what it heard.
    async fn fake_bitcoind() -> (SocketAddr, tokio::sync::mpsc::Receiver<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut first = [0u8; 64];
                if s.read_exact(&mut first).await.is_ok() {
                    let _ = tx.send(first.to_vec()).await;
                    let _ = s.write_all(&[0x42; 64]).await;
                }
            }
        });
        (addr, rx)
    }

    /// Plays the connector by hand: signs with `signer`, sends
    /// `first_sent` where it signed `first_signed`. Returns whether the
    /// listener's proof held and the first flight it passed on.
    async fn connector(
        mut peer: tokio::io::DuplexStream,
        signer: NodeKey,
        listener_key: XOnlyPublicKey,
        first_signed: [u8; 64],
        first_sent: [u8; 64],
    ) -> Result<[u8; 64], String> {
        let proof = KeyProof {
            ours: signer,
            peer: listener_key,
        };
        let (ours, theirs) = exchange_hellos(&mut peer, SpliceRole::Connector).await?;
        let signed = handshake::transcript(
            SpliceRole::Connector,
            &ours.nonce,
            &theirs.nonce,
            &first_signed,
            None,
        );
        let mut flight = handshake::proof_frame(&proof.sign_splice(&signed));
        flight.extend_from_slice(&first_sent);
        peer.write_all(&flight).await.map_err(|e| e.to_string())?;
        let their_proof = read_proof(&mut peer).await?;
        let listener_first = read_first(&mut peer, "listener").await?;
        let signed = handshake::transcript(
            SpliceRole::Listener,
            &ours.nonce,
            &theirs.nonce,
            &first_sent,
            Some(&listener_first),
        );
        proof.check_splice(&signed, &their_proof)?;
        Ok(listener_first)
    }

    async fn run(
        signer: NodeKey,
        claimed: &NodeKey,
        first_signed: [u8; 64],
        first_sent: [u8; 64],
    ) -> (
        Result<(), String>,
        Result<[u8; 64], String>,
        Option<Vec<u8>>,
    ) {
        let (bitcoind, mut heard) = fake_bitcoind().await;
        let listener_key = NodeKey::generate();
        let (mut a, b) = tokio::io::duplex(4096);
        let proof = KeyProof {
            ours: listener_key.clone(),
            peer: claimed.public(),
        };
        let config = SessionConfig::new(crate::wire::Network::Regtest);
        let far = tokio::spawn(connector(
            b,
            signer,
            listener_key.public(),
            first_signed,
            first_sent,
        ));
        let near = listen_side(&mut a, bitcoind, &proof, &config)
            .await
            .map(|_| ());
        drop(a);
        let far = far.await.unwrap();
        let heard = tokio::time::timeout(std::time::Duration::from_millis(200), heard.recv())
            .await
            .ok()
            .flatten();
        (near, far, heard)
    }

    #[tokio::test]
    async fn honest_sidecars_splice_and_each_first_flight_is_signed() {
        let alice = NodeKey::generate();
        let (near, far, heard) = run(alice.clone(), &alice, [0x11; 64], [0x11; 64]).await;
        assert_eq!(near, Ok(()));
        assert_eq!(far, Ok([0x42; 64]), "the listener's answer, proved");
        assert_eq!(
            heard,
            Some(vec![0x11; 64]),
            "the connector's first flight, passed on"
        );
    }

    #[tokio::test]
    async fn an_impostor_never_reaches_the_bitcoin_node() {
        let alice = NodeKey::generate();
        let mallory = NodeKey::generate();
        let (near, _, heard) = run(mallory, &alice, [0x11; 64], [0x11; 64]).await;
        assert!(near.unwrap_err().contains("splice proof"));
        assert_eq!(heard, None, "the Bitcoin node heard nothing");
    }

    #[tokio::test]
    async fn a_swapped_bip324_key_is_caught() {
        // Someone between the sidecars replaced the connector's
        // ElligatorSwift key with its own, to read the session.
        let alice = NodeKey::generate();
        let (near, _, heard) = run(alice.clone(), &alice, [0x11; 64], [0x66; 64]).await;
        assert!(near.unwrap_err().contains("splice proof"));
        assert_eq!(heard, None);
    }
}
