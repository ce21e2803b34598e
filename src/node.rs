//! A node: the shared port, its accept loop, and the Bitcoin sessions it
//! serves. Later paths (punches, libp2p) attach to the same router.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::net::router::Inbound;
use crate::net::{AdmissionConfig, Route, Router, SharedPort};
use crate::punch::budget::BudgetConfig;
use crate::wire::{SessionConfig, SessionError, SessionReport};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `None`: both wildcards, IPv4 and IPv6.
    pub bind_ip: Option<IpAddr>,
    pub port: u16,
    pub session: SessionConfig,
    /// A connected peer that sends nothing for this long is dropped.
    pub idle_timeout: Duration,
    /// A new connection must send its first bytes within this.
    pub sniff_timeout: Duration,
    /// Caps on inbound connections (docs/security.md).
    pub admission: AdmissionConfig,
    /// Limits on punch SYNs from the shared port (docs/security.md).
    pub punch_budget: BudgetConfig,
}

impl NodeConfig {
    pub fn new(session: SessionConfig) -> Self {
        Self {
            bind_ip: None,
            port: session.network.default_port(),
            session,
            idle_timeout: Duration::from_secs(20 * 60),
            sniff_timeout: Duration::from_secs(10),
            admission: AdmissionConfig::NODE,
            punch_budget: BudgetConfig::default(),
        }
    }
}

/// What happened to an inbound connection, for logs, tests and records.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    Established(Box<SessionReport>),
    Failed { remote: SocketAddr, reason: String },
    Closed { remote: SocketAddr, reason: String },
}

/// A session's serving loop, handed to the node to own.
pub type SessionTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Hands sessions to the node: they then live as long as the node, not as
/// long as the coordinator link or relay reservation that set them up.
#[derive(Clone)]
pub struct SessionOwner(mpsc::Sender<SessionTask>);

impl SessionOwner {
    /// `false` when the node has stopped (the session is dropped).
    pub async fn adopt(&self, task: SessionTask) -> bool {
        self.0.send(task).await.is_ok()
    }
}

pub struct Node {
    shared: Arc<SharedPort>,
    owner: SessionOwner,
    router: Arc<Router>,
    local_addrs: Vec<SocketAddr>,
    port: u16,
    events: broadcast::Sender<NodeEvent>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Node {
    pub fn start(config: NodeConfig) -> std::io::Result<Node> {
        let mut shared = SharedPort::bind(config.bind_ip, config.port)?;
        shared.set_punch_budget(config.punch_budget);
        let port = shared.port();
        let local_addrs = shared.local_addrs().to_vec();
        let router = Router::with_admission(
            config.session.network.magic().to_bytes(),
            config.sniff_timeout,
            config.admission,
        );
        let (events, _) = broadcast::channel(1024);
        let mut bitcoin = router.subscribe(Route::Bitcoin, 64);
        let (adopt_tx, mut adopted) = mpsc::channel::<SessionTask>(64);
        let accept = shared.spawn_accept_loop(router.clone());
        let serve_events = events.clone();
        let config = Arc::new(config);
        let serve = tokio::spawn(async move {
            // Sessions live in this set so that stopping the node stops them.
            let mut sessions = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    inbound = bitcoin.recv() => match inbound {
                        Some(inbound) => {
                            sessions.spawn(serve_inbound(inbound, config.clone(), serve_events.clone()));
                        }
                        None => break,
                    },
                    Some(task) = adopted.recv() => {
                        sessions.spawn(task);
                    }
                    Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                }
            }
        });
        Ok(Node {
            owner: SessionOwner(adopt_tx),
            shared: Arc::new(shared),
            router,
            local_addrs,
            port,
            events,
            tasks: vec![accept, serve],
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The port everything leaves from, for outbound connections and punches.
    pub fn shared_port(&self) -> &Arc<SharedPort> {
        &self.shared
    }

    /// Where punched sessions go to outlive whatever coordinated them.
    pub fn session_owner(&self) -> SessionOwner {
        self.owner.clone()
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }
}

async fn serve_inbound(
    inbound: Inbound,
    config: Arc<NodeConfig>,
    events: broadcast::Sender<NodeEvent>,
) {
    let remote = inbound.remote;
    let established = crate::wire::respond(inbound, &config.session).await;
    let session = match established {
        Ok(s) => s,
        Err(e) => {
            report_failure(&events, remote, &e);
            return;
        }
    };
    let r = &session.report;
    tracing::info!(
        %remote,
        transport = %r.transport,
        session_id = r.session_id.as_deref().unwrap_or("-"),
        peer = %r.peer.user_agent,
        rtt_ms = r.rtt_ms.unwrap_or_default(),
        "session established"
    );
    let _ = events.send(NodeEvent::Established(Box::new(r.clone())));
    let ended = session.serve(config.idle_timeout).await;
    tracing::info!(%remote, reason = %ended, "session closed");
    let _ = events.send(NodeEvent::Closed {
        remote,
        reason: ended.to_string(),
    });
}

fn report_failure(events: &broadcast::Sender<NodeEvent>, remote: SocketAddr, e: &SessionError) {
    tracing::warn!(%remote, reason = %e, "closing connection");
    let _ = events.send(NodeEvent::Failed {
        remote,
        reason: e.to_string(),
    });
}
