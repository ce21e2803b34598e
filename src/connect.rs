//! `bitpunch connect` through a running node: the connection leaves from
//! the node's shared port, a native punch is one request on the node's
//! open coordinator session, a libp2p punch uses the node's own swarm, and
//! the session then belongs to the node (it shows in `bitpunch peers`).
//! The control interface calls this.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::time::Instant;

use crate::address::PeerAddress;
use crate::identity::NodeKey;
use crate::native::punch::PunchContext;
use crate::net::{Router, SharedPort};
use crate::node::{NodeHandle, SessionOwner, SessionPath};
use crate::punch::upgrade::Ending;
use crate::report::{Outcome, Path};
use crate::sidecar::socks::PunchName;
use crate::sidecar::{ClientSlot, LocalEnd};
use crate::wire::{self, SessionConfig, SessionRole, Stage};

/// Everything a connection through the node needs of it.
#[derive(Clone)]
pub struct NodeConnector {
    pub port: Arc<SharedPort>,
    pub router: Arc<Router>,
    pub owner: SessionOwner,
    pub handle: NodeHandle,
    pub key: Arc<NodeKey>,
    pub session: SessionConfig,
    /// A session the node adopted ends after this long without a message.
    pub idle: Duration,
    /// The node's libp2p side, when it runs one (it holds reservations).
    pub libp2p: Option<crate::libp2p::punch::Libp2pPunchContext>,
    /// Where the node's records go (its metrics, `--json`).
    pub records: Option<tokio::sync::mpsc::Sender<Outcome>>,
}

impl NodeConnector {
    /// Connects to `address` (direct, or `NODE_ID@COORDINATOR_ID@HOST:PORT`
    /// through a coordinator the node is registered with) and hands the
    /// session to the node. The record says how it went.
    pub async fn connect(&self, address: &str) -> Result<Outcome> {
        let asked = Instant::now();
        let target: PeerAddress = address.parse()?;
        // The record, and whether the node took the session (when there
        // is one).
        let (record, adopted) = match &target {
            PeerAddress::Coordinated { peer, coordinator } => {
                let Some(link) = self.handle.link_to(coordinator.id) else {
                    bail!(
                        "this node is not registered with coordinator {coordinator}: add it \
                         (--coordinator, or bitpunch.toml), or connect without a running node"
                    );
                };
                let ctx = PunchContext::over(
                    self.port.clone(),
                    self.router.clone(),
                    self.key.clone(),
                    self.session.clone(),
                    &link,
                    self.handle.nat_memory(),
                );
                let outcome = crate::native::connect_with(&ctx, &link, *peer, asked).await;
                let adopted = match outcome.session {
                    Some(s) => self.adopt(SessionPath::Native, s, Some(*peer)).await,
                    None => true,
                };
                (outcome.record, adopted)
            }
            PeerAddress::Direct { .. } => {
                let resolved = target
                    .resolve(self.session.network.default_port())
                    .await
                    .with_context(|| format!("cannot resolve {target}"))?;
                let Some(remote) = resolved.first().copied() else {
                    bail!("{target} resolved to no address");
                };
                let outcome = wire::connect(remote, &self.session, Some(&self.port), asked).await;
                match outcome.result {
                    Ok(s) => {
                        let mut record = Outcome::from_session(Path::Direct, &s.report);
                        record.bytes.direct = outcome.bytes_total;
                        record.attempts = outcome.attempts;
                        (record, self.adopt(SessionPath::Outbound, s, None).await)
                    }
                    Err(e) => (
                        Outcome::from_error(
                            Path::Direct,
                            SessionRole::Initiator,
                            Some(remote.to_string()),
                            &e,
                        ),
                        true,
                    ),
                }
            }
            PeerAddress::Circuit(circuit) => {
                let Some(ctx) = &self.libp2p else {
                    bail!(
                        "this node runs no libp2p (start it with --relay) to punch {circuit} through"
                    );
                };
                let outcome = crate::libp2p::connect_circuit(ctx, circuit.clone()).await;
                let adopted = match outcome.session {
                    Some(s) => self.adopt(SessionPath::Libp2p, s, None).await,
                    None => true,
                };
                (outcome.record, adopted)
            }
        };
        self.report(&record).await;
        if !adopted {
            bail!("the node is stopping");
        }
        Ok(record)
    }

    /// The node takes the splice, if the punch made one; the record goes
    /// where the node's records go.
    async fn settle(&self, record: Outcome, spliced: Option<crate::sidecar::Spliced>) -> Outcome {
        if let Some(spliced) = spliced {
            self.owner.adopt(spliced.info, spliced.task).await;
        }
        self.report(&record).await;
        record
    }

    async fn report(&self, record: &Outcome) {
        if let Some(records) = &self.records {
            let _ = records.send(record.clone()).await;
        }
    }

    /// For the sidecar's SOCKS5 proxy: punch to `name` and splice the
    /// connection to the waiting `client`; the splice then belongs to the
    /// node. Without a coordinator or relay pinned in the name, each one
    /// the node holds is asked in turn until one knows the peer. `Err`
    /// when there is nobody to ask.
    pub async fn splice(&self, name: &PunchName, client: ClientSlot) -> Result<Outcome> {
        let asked = Instant::now();
        let ending = Ending::Splice(LocalEnd::Client(client));
        let mut last = None;
        match name {
            PunchName::Node { id, coordinator } => {
                let links: Vec<_> = self
                    .handle
                    .links()
                    .into_iter()
                    .filter(|l| coordinator.is_none_or(|c| l.coordinator.id == c))
                    .collect();
                if links.is_empty() {
                    bail!(
                        "{name}: this node is registered with no coordinator{} to ask through",
                        coordinator.map(|c| format!(" {c}")).unwrap_or_default()
                    );
                }
                for link in links {
                    let mut ctx = PunchContext::over(
                        self.port.clone(),
                        self.router.clone(),
                        self.key.clone(),
                        self.session.clone(),
                        &link,
                        self.handle.nat_memory(),
                    );
                    ctx.ending = ending.clone();
                    let outcome = crate::native::connect_with(&ctx, &link, *id, asked).await;
                    let record = self.settle(outcome.record, outcome.spliced).await;
                    let unknown_here = record.failed_at == Some(Stage::Coordination);
                    last = Some(record);
                    if !unknown_here {
                        break;
                    }
                }
            }
            PunchName::Peer { id, relay } => {
                let Some(ctx) = &self.libp2p else {
                    bail!("{name}: this node runs no libp2p (start it with --relay)");
                };
                let relays: Vec<libp2p::Multiaddr> = self
                    .handle
                    .relays()
                    .iter()
                    .filter_map(|r| r.parse().ok())
                    .filter(|r| relay.is_none_or(|want| crate::libp2p::relay_peer(r) == Some(want)))
                    .collect();
                if relays.is_empty() {
                    bail!(
                        "{name}: this node holds no reservation on a relay{} to reach the peer through",
                        relay.map(|r| format!(" {r}")).unwrap_or_default()
                    );
                }
                let mut ctx = ctx.clone();
                ctx.ending = ending.clone();
                for relay in relays {
                    let circuit = relay
                        .with(libp2p::multiaddr::Protocol::P2pCircuit)
                        .with(libp2p::multiaddr::Protocol::P2p(*id));
                    let outcome = crate::libp2p::connect_circuit(&ctx, circuit).await;
                    let record = self.settle(outcome.record, outcome.spliced).await;
                    let unknown_here = record.failed_at == Some(Stage::Coordination);
                    last = Some(record);
                    if !unknown_here {
                        break;
                    }
                }
            }
        }
        last.context("nobody was asked")
    }

    async fn adopt<S>(
        &self,
        path: SessionPath,
        session: wire::Session<S>,
        node: Option<crate::identity::NodeId>,
    ) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.owner
            .adopt_session(path, session, self.idle, node)
            .await
    }
}
