//! Prometheus metrics (`--metrics ADDR`), in the text format any scraper
//! reads, built on `prometheus-client` (the crate libp2p's own metrics use).
//! The names follow go-libp2p's hole-punch metrics where they overlap, so
//! that dashboards users know carry over: punches by path and result,
//! attempts, which socket won, time to verack.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::node::{NodeHandle, SessionPath};
use crate::report::{Outcome, Path, WonBy};
use crate::wire::Transport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum PathLabel {
    libp2p,
    native,
    stock_dcutr,
    direct,
    inbound,
    outbound,
}

impl From<Path> for PathLabel {
    fn from(p: Path) -> Self {
        match p {
            Path::Libp2p => PathLabel::libp2p,
            Path::Native => PathLabel::native,
            Path::StockDcutr => PathLabel::stock_dcutr,
            Path::Direct => PathLabel::direct,
        }
    }
}

impl From<SessionPath> for PathLabel {
    fn from(p: SessionPath) -> Self {
        match p {
            SessionPath::Inbound => PathLabel::inbound,
            SessionPath::Native => PathLabel::native,
            SessionPath::Libp2p => PathLabel::libp2p,
            SessionPath::Outbound => PathLabel::outbound,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PunchLabels {
    path: PathLabel,
    /// `ok` or the stage that failed.
    result: String,
    /// `connect` (our SYN made the connection), `accept` (theirs did), or
    /// `none`.
    won_by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: PathLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    path: PathLabel,
    transport: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    path: PathLabel,
    /// `coordination` (relay, coordinator, exchange) or `direct`.
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// A node's or a coordinator's metrics. Events are counted as they happen;
/// what is a state (sessions open, registrations held, the punch budget's
/// totals) is read from the node when scraped.
pub struct Metrics {
    registry: Registry,
    punches: Family<PunchLabels, Counter>,
    attempts: Family<PathLabels, Histogram>,
    verack: Family<PathLabels, Histogram>,
    bytes: Family<BytesLabels, Counter>,
    sessions: Family<SessionLabels, Gauge>,
    registrations: Gauge,
    reservations: Gauge,
    syns: Family<OutcomeLabels, Counter>,
    orders_refused: Family<ReasonLabels, Counter>,
    coordinator_registered: Gauge,
    coordinator_fails: Family<ReasonLabels, Counter>,
    coordinator_orders: Counter,
}

/// Whose metrics: a node's and a coordinator's are different families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Node,
    Coordinator,
    /// rust-libp2p's families only.
    Relay,
}

impl Metrics {
    pub fn node() -> Metrics {
        Self::build(Role::Node)
    }

    pub fn coordinator() -> Metrics {
        Self::build(Role::Coordinator)
    }

    /// A relay's: rust-libp2p's own metrics only (see [`Metrics::libp2p`]).
    pub fn relay() -> Metrics {
        Self::build(Role::Relay)
    }

    /// rust-libp2p's metrics (swarm, identify, ping, DCUtR, relay), under
    /// `bitpunch_libp2p_…` in this registry, for the swarm to record into.
    pub fn libp2p(&mut self) -> ::libp2p::metrics::Metrics {
        ::libp2p::metrics::Metrics::new(&mut self.registry)
    }

    fn build(role: Role) -> Metrics {
        let mut all = Registry::with_prefix("bitpunch");
        // Families a role does not have are made but never exposed.
        let (mut unused, mut unused_too) = (Registry::default(), Registry::default());
        let (registry, other) = match role {
            Role::Node => (&mut all, &mut unused),
            Role::Coordinator => (&mut unused, &mut all),
            Role::Relay => (&mut unused, &mut unused_too),
        };
        let punches = Family::<PunchLabels, Counter>::default();
        registry.register(
            "punches",
            "Punches this node took part in, by path, result and which socket won",
            punches.clone(),
        );
        let attempts = Family::<PathLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 9.0])
        });
        registry.register(
            "punch_attempts",
            "Attempts (native) or exchange rounds (libp2p) a punch took",
            attempts.clone(),
        );
        let verack = Family::<PathLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 12))
        });
        registry.register(
            "time_to_verack_seconds",
            "From the ask (or the order) to verack on the direct session, for successful punches",
            verack.clone(),
        );
        let bytes = Family::<BytesLabels, Counter>::default();
        registry.register(
            "punch_bytes",
            "Bytes of finished punches: coordination and on the direct connection",
            bytes.clone(),
        );
        let sessions = Family::<SessionLabels, Gauge>::default();
        registry.register(
            "sessions_open",
            "Sessions the node serves now",
            sessions.clone(),
        );
        let registrations = Gauge::default();
        registry.register(
            "registrations_held",
            "Coordinators the node is registered with now",
            registrations.clone(),
        );
        let reservations = Gauge::default();
        registry.register(
            "reservations_held",
            "Relays the node holds a reservation on now",
            reservations.clone(),
        );
        let syns = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "punch_syns",
            "SYNs the punch budget paid (sent) or refused",
            syns.clone(),
        );
        let orders_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "orders_refused",
            "Punch orders from coordinators this node did not follow, by reason",
            orders_refused.clone(),
        );
        let coordinator_registered = Gauge::default();
        other.register(
            "coordinator_registered",
            "Clients registered at this coordinator now",
            coordinator_registered.clone(),
        );
        let coordinator_fails = Family::<ReasonLabels, Counter>::default();
        other.register(
            "coordinator_refusals",
            "hpfail answers this coordinator sent, by reason",
            coordinator_fails.clone(),
        );
        let coordinator_orders = Counter::default();
        other.register(
            "coordinator_coordinations",
            "Requests this coordinator answered with a pair of punch orders",
            coordinator_orders.clone(),
        );
        Metrics {
            registry: all,
            punches,
            attempts,
            verack,
            bytes,
            sessions,
            registrations,
            reservations,
            syns,
            orders_refused,
            coordinator_registered,
            coordinator_fails,
            coordinator_orders,
        }
    }

    /// Counts one finished punch from its outcome record.
    pub fn record(&self, o: &Outcome) {
        let path = PathLabel::from(o.path);
        let result = match (o.ok, o.failed_at) {
            (true, _) => "ok".to_string(),
            (false, Some(stage)) => format!("{stage:?}").to_lowercase(),
            (false, None) => "failed".to_string(),
        };
        let won_by = match o.won_by {
            Some(WonBy::Connect) => "connect",
            Some(WonBy::Accept) => "accept",
            None => "none",
        };
        self.punches
            .get_or_create(&PunchLabels {
                path: path.clone(),
                result,
                won_by: won_by.to_string(),
            })
            .inc();
        let labels = PathLabels { path: path.clone() };
        self.attempts
            .get_or_create(&labels)
            .observe(f64::from(o.attempts));
        if let (true, Some(ms)) = (o.ok, o.t_ms.verack) {
            self.verack.get_or_create(&labels).observe(ms / 1000.0);
        }
        for (kind, n) in [
            ("coordination", o.bytes.coordination),
            ("direct", o.bytes.direct),
        ] {
            self.bytes
                .get_or_create(&BytesLabels {
                    path: path.clone(),
                    kind: kind.to_string(),
                })
                .inc_by(n);
        }
    }

    /// Reads what is a state from the node, just before a scrape.
    pub fn refresh_node(&self, node: &NodeHandle) {
        self.sessions.clear();
        for row in node.peers() {
            let transport = match row.transport {
                Transport::V1 => "v1",
                Transport::V2 => "v2",
                Transport::Libp2p => "libp2p",
            };
            self.sessions
                .get_or_create(&SessionLabels {
                    path: row.path.into(),
                    transport: transport.to_string(),
                })
                .inc();
        }
        let status = node.status();
        self.registrations
            .set(i64::try_from(status.reachability.coordinators.len()).unwrap_or(i64::MAX));
        self.reservations
            .set(i64::try_from(status.reachability.relays.len()).unwrap_or(i64::MAX));
        let budget = &status.punch_budget;
        for (outcome, total) in [("sent", budget.syns_sent), ("refused", budget.syns_refused)] {
            let counter = self.syns.get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            });
            catch_up(&counter, total);
        }
        for (reason, total) in node.order_refusals().snapshot() {
            let counter = self.orders_refused.get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            });
            catch_up(&counter, total);
        }
    }

    /// A coordinator's state and counts, just before a scrape.
    pub fn refresh_coordinator(&self, stats: &crate::native::coordinator::CoordinatorStats) {
        self.coordinator_registered
            .set(i64::try_from(stats.registered).unwrap_or(i64::MAX));
        for (reason, total) in &stats.refusals {
            let counter = self.coordinator_fails.get_or_create(&ReasonLabels {
                reason: reason.clone(),
            });
            catch_up(&counter, *total);
        }
        catch_up(&self.coordinator_orders, stats.coordinations);
    }

    /// The Prometheus text exposition of everything above.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Brings a counter up to a total that the code it mirrors keeps itself
/// (the punch budget's, the coordinator's): the counter remembers what it
/// has already counted.
fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// Serves `GET /metrics` on `addr` with what `render` returns at each
/// scrape. A minimal HTTP/1.1 responder: one request per connection, a
/// bounded request head, a deadline.
pub async fn serve(
    addr: SocketAddr,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics: cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let render = render.clone();
            tokio::spawn(async move {
                let mut head = Vec::with_capacity(1024);
                let mut buf = [0u8; 1024];
                let read = async {
                    while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
                        }
                    }
                    true
                };
                if !tokio::time::timeout(Duration::from_secs(5), read)
                    .await
                    .unwrap_or(false)
                {
                    return;
                }
                let response = if head.starts_with(b"GET /metrics ") {
                    let body = render();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((local, task))
}
