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
use crate::report::{Outcome, Path};
use crate::wire::{self, SessionConfig, SessionRole};

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
                );
                let outcome = crate::native::connect_with(&ctx, &link, *peer, asked).await;
                let adopted = match outcome.session {
                    Some(s) => self.adopt(SessionPath::Native, s).await,
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
                        (record, self.adopt(SessionPath::Outbound, s).await)
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
                    Some(s) => self.adopt(SessionPath::Libp2p, s).await,
                    None => true,
                };
                (outcome.record, adopted)
            }
        };
        if let Some(records) = &self.records {
            let _ = records.send(record.clone()).await;
        }
        if !adopted {
            bail!("the node is stopping");
        }
        Ok(record)
    }

    async fn adopt<S>(&self, path: SessionPath, session: wire::Session<S>) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.owner.adopt_session(path, session, self.idle).await
    }
}
