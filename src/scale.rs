//! `bitpunch lab scale`: what a coordinator costs. A coordinator runs as a
//! child process pinned to one core; this process opens N registered client
//! sessions to it (BIP324, from ephemeral ports on loopback), reads the
//! child's resident memory before and after, and then has half the clients
//! ask for the other half as fast as the coordinator answers.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::identity::NodeKey;
use crate::native::client::{CoordinatorEndpoint, CoordinatorLink, LinkConfig};
use crate::native::machine::ClientConfig;
use crate::wire::{Network, SessionConfig};

#[derive(Debug, Clone, Serialize)]
pub struct ScaleRecord {
    pub clients: usize,
    pub rss_idle_kib: u64,
    pub rss_loaded_kib: u64,
    pub kib_per_registration: f64,
    pub coordinations: u64,
    pub seconds: f64,
    pub coordinations_per_second: f64,
    pub coordinator_cores: usize,
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// A child under test, killed when dropped, and the data directory made
/// for it, if any, removed.
struct Running(Child, Option<std::path::PathBuf>);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(dir) = &self.1 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn start_coordinator(bin: &std::path::Path) -> Result<(Running, CoordinatorEndpoint)> {
    // Its own identity: a user's data directory may be in use.
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let data = std::env::temp_dir().join(format!(
        "bitpunch-scale-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    // BITPUNCH_SCALE_WRAP="heaptrack -o /tmp/coordinator" runs the
    // coordinator under a profiler, to see where its memory goes.
    let wrap: Vec<String> = std::env::var("BITPUNCH_SCALE_WRAP")
        .map(|w| w.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .args(&wrap)
        .arg(bin)
        .args([
            "coordinator",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--network",
            "regtest",
            "-q",
        ])
        .arg("--data-dir")
        .arg(&data)
        .args(["--requests-per-minute", "100000000", "--timeout", "60"])
        .args(["--requests-per-netgroup-per-minute", "100000000"])
        .args(["--orders-per-netgroup-per-target", "100000000"])
        // Every client is on 127.0.0.1, which admission control would
        // otherwise hold to a handful of connections.
        .args(["--max-inbound-per-ip", "1000000"])
        .args(["--max-inbound-per-netgroup", "1000000"])
        .args(["--max-inbound", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the coordinator (is taskset installed?)")?;
    let stdout = child.stdout.take().context("the coordinator's stdout")?;
    // From here on, every way out kills the child and removes its directory.
    let running = Running(child, Some(data));
    let mut stdout = std::io::BufReader::new(stdout);
    // A wrapper may print lines of its own first.
    let mut next_line = |what: &str| -> Result<String> {
        for _ in 0..16 {
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut stdout, &mut line)? == 0 {
                break;
            }
            if let Some(rest) = line.trim().strip_prefix(what) {
                return Ok(rest.to_string());
            }
        }
        bail!("the coordinator did not print {what:?}")
    };
    let id = next_line("coordinator id ")?
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let addr = next_line("coordinator listening ")?.parse()?;
    Ok((running, CoordinatorEndpoint { id, addr }))
}

/// Clients per 127.x source address: well inside Linux's default
/// ephemeral range (32768–60999), leaving room for sockets in TIME_WAIT.
const CLIENTS_PER_SOURCE: usize = 20_000;

/// Measures with `clients` registered clients and `seconds` of requests.
pub async fn measure(bin: &std::path::Path, clients: usize, seconds: f64) -> Result<ScaleRecord> {
    if clients < 2 {
        bail!("at least 2 clients");
    }
    // Each end (this process, the coordinator) holds a descriptor per
    // client; the coordinator inherits the limit from here.
    crate::net::ensure_fd_limit(
        u64::try_from(clients)
            .unwrap_or(u64::MAX)
            .saturating_add(4096),
    )?;
    let (coordinator, endpoint) = start_coordinator(bin)?;
    let pid = coordinator.0.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss_kib(pid)?;
    let mut session = SessionConfig::new(Network::Regtest);
    session.handshake_timeout = Duration::from_secs(60);
    // Every client is on 127.0.0.1: lift the per-address reflection limit.
    let config = LinkConfig {
        session,
        client: ClientConfig {
            orders_per_target_per_minute: usize::MAX,
            orders_per_minute: usize::MAX,
            // Orders name 127.0.0.1.
            allow_private: true,
            ..Default::default()
        },
        ping_interval: crate::native::client::LINK_PING_INTERVAL,
        refusals: None,
    };
    // Open the sessions a few hundred at a time, from as many 127.x source
    // addresses as the count needs: each has about 28,000 ephemeral ports
    // toward the coordinator's one address and port.
    let sources = clients.div_ceil(CLIENTS_PER_SOURCE).max(1);
    let mut links = Vec::with_capacity(clients);
    for chunk in (0..clients).collect::<Vec<_>>().chunks(200) {
        let opened =
            futures::future::join_all(chunk.iter().map(|i| {
                let mut config = config.clone();
                let source = u8::try_from(1 + i % sources).unwrap_or(1);
                config.session.source_ip = Some(std::net::Ipv4Addr::new(127, 0, 0, source).into());
                async move {
                    CoordinatorLink::connect(None, endpoint, NodeKey::generate(), config).await
                }
            }))
            .await;
        for link in opened {
            links.push(link.context("registering a client")?);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_loaded = rss_kib(pid)?;

    // Half ask for the other half, each waiting for its order before asking
    // again: one coordination = a request answered with both orders sent.
    let half = links.len() / 2;
    let (requesters, targets) = links.split_at_mut(half);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut drains = Vec::new();
    for t in targets.iter_mut() {
        // Targets get responder orders; nobody punches in this measurement.
        let mut orders = std::mem::replace(&mut t.orders, tokio::sync::mpsc::channel(1).1);
        drains.push(tokio::spawn(async move {
            while orders.recv().await.is_some() {}
        }));
    }
    let started = Instant::now();
    futures::future::join_all(requesters.iter().zip(targets.iter()).map(|(r, t)| {
        let done = done.clone();
        let (handle, target) = (r.handle(), t.id);
        async move {
            while Instant::now() < deadline {
                if handle
                    .request(target, Duration::from_secs(30))
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }))
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    for d in drains {
        d.abort();
    }
    let coordinations = done.load(Ordering::Relaxed);
    drop(links);
    drop(coordinator);
    Ok(ScaleRecord {
        clients,
        rss_idle_kib: rss_idle,
        rss_loaded_kib: rss_loaded,
        kib_per_registration: rss_loaded.saturating_sub(rss_idle) as f64 / clients as f64,
        coordinations,
        seconds: elapsed,
        coordinations_per_second: coordinations as f64 / elapsed,
        coordinator_cores: 1,
    })
}

/// What a relay costs per held reservation: a relay child process pinned to
/// one core, and `clients` minimal libp2p clients in this process, each
/// holding one reservation.
#[derive(Debug, Clone, Serialize)]
pub struct RelayScaleRecord {
    pub reservations: usize,
    pub rss_idle_kib: u64,
    pub rss_loaded_kib: u64,
    pub kib_per_reservation: f64,
    pub seconds_to_reserve_all: f64,
    /// Circuits opened (dialer and listener connected through the relay,
    /// Noise and Yamux done) while half the clients dialed the other half,
    /// one circuit at a time each, for `circuit_seconds`.
    pub circuits: u64,
    pub circuit_failures: u64,
    pub circuit_seconds: f64,
    pub circuits_per_second: f64,
    /// The relay's CPU time (user + system) in that window, and circuits per
    /// second of it: the relay's capacity on one core, whatever the clients'
    /// own share of the machine was.
    pub relay_cpu_seconds: f64,
    pub circuits_per_relay_cpu_second: f64,
}

/// User + system CPU seconds a process has used.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .context("no CPU times in /proc stat")
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

#[derive(::libp2p::swarm::NetworkBehaviour)]
struct ReservingClient {
    relay: ::libp2p::relay::client::Behaviour,
}

/// Which relay to measure: ours, or another implementation's server run as
/// `PROGRAM ARGS... /ip4/127.0.0.1/tcp/0` that prints `relay listening
/// <addr>/p2p/<id>` and reads its reservation limit from
/// `RELAY_MAX_RESERVATIONS` (the interop relays in `interop/` do).
pub enum RelayUnderTest<'a> {
    Bitpunch(&'a std::path::Path),
    Command(&'a [String]),
}

pub async fn measure_relay(
    relay: RelayUnderTest<'_>,
    clients: usize,
    seconds: f64,
) -> Result<RelayScaleRecord> {
    use ::libp2p::futures::StreamExt;
    use ::libp2p::multiaddr::Protocol;
    let key_dir = std::env::temp_dir().join(format!("bitpunch-scale-{}", std::process::id()));
    let key_path = key_dir.join("relay.key");
    let mut command = Command::new("taskset");
    command.args(["-c", "0"]);
    let limit = (clients * 2).to_string();
    match relay {
        RelayUnderTest::Bitpunch(bin) => {
            command
                .arg(bin)
                .args([
                    "relay",
                    "--listen",
                    "/ip4/127.0.0.1/tcp/0",
                    "--no-rate-limits",
                    "-q",
                ])
                .args(["--max-reservations", &limit])
                .args(["--max-circuits", &limit])
                // Every client is on 127.0.0.1: lift the per-address and
                // connection caps that protect a relay in production.
                .args([
                    "--max-inbound-per-ip",
                    &limit,
                    "--max-inbound-per-netgroup",
                    &limit,
                ])
                .args([
                    "--max-connections",
                    &limit,
                    "--max-pending-incoming",
                    &limit,
                ])
                .args(["--key", &key_path.to_string_lossy()]);
        }
        RelayUnderTest::Command(argv) => {
            let (program, args) = argv.split_first().context("an empty relay command")?;
            command
                .arg(program)
                .args(args)
                .arg("/ip4/127.0.0.1/tcp/0")
                .env("RELAY_MAX_RESERVATIONS", &limit)
                .env("RELAY_MAX_CIRCUITS", &limit)
                // The js relay's connection manager caps connections and
                // their rate; a load test on one address needs both lifted.
                .env("RELAY_MAX_CONNECTIONS", &limit);
        }
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the relay (is taskset installed?)")?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
        &mut line,
    )?;
    let relay = Running(child, None);
    let address: ::libp2p::Multiaddr = line
        .trim()
        .strip_prefix("relay listening ")
        .with_context(|| format!("unexpected relay output {line:?}"))?
        .parse()?;
    let pid = relay.0.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss_kib(pid)?;
    let reserved = Arc::new(AtomicU64::new(0));
    let circuits = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let (dial_tx, dial_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let mut swarms = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut swarm = ::libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                Default::default(),
                ::libp2p::noise::Config::new,
                ::libp2p::yamux::Config::default,
            )?
            .with_relay_client(
                ::libp2p::noise::Config::new,
                ::libp2p::yamux::Config::default,
            )?
            .with_behaviour(|_, relay| ReservingClient { relay })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
            .build();
        swarm.listen_on(address.clone().with(Protocol::P2pCircuit))?;
        swarms.push(swarm);
    }
    // The first half dials the second half, client i to client half + i.
    let ids: Vec<::libp2p::PeerId> = swarms.iter().map(|s| *s.local_peer_id()).collect();
    let half = clients / 2;
    let mut tasks = Vec::with_capacity(clients);
    for (i, mut swarm) in swarms.into_iter().enumerate() {
        let target = (i < half).then(|| ids[half + i]);
        let circuit = target.map(|t| {
            address
                .clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(t))
        });
        let (reserved, circuits, failures) = (reserved.clone(), circuits.clone(), failures.clone());
        let mut dial = dial_rx.clone();
        tasks.push(tokio::spawn(async move {
            use ::libp2p::swarm::SwarmEvent;
            let mut in_flight = false;
            loop {
                tokio::select! {
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(ReservingClientEvent::Relay(
                            ::libp2p::relay::client::Event::ReservationReqAccepted {
                                renewal: false, ..
                            },
                        )) => {
                            reserved.fetch_add(1, Ordering::Relaxed);
                        }
                        SwarmEvent::ConnectionEstablished { peer_id, .. } if Some(peer_id) == target => {
                            circuits.fetch_add(1, Ordering::Relaxed);
                            let _ = swarm.disconnect_peer_id(peer_id);
                        }
                        SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. }
                            if Some(peer_id) == target => in_flight = false,
                        SwarmEvent::OutgoingConnectionError { peer_id, .. } if peer_id == target => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            in_flight = false;
                        }
                        _ => {}
                    },
                    Ok(()) = dial.changed(), if target.is_some() => {}
                }
                if let Some(circuit) = &circuit {
                    if *dial.borrow() && !in_flight && swarm.dial(circuit.clone()).is_ok() {
                        in_flight = true;
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (reserved.load(Ordering::Relaxed) as usize) < clients {
        if Instant::now() > deadline {
            bail!(
                "only {} of {clients} reservations after 120 s",
                reserved.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds_to_reserve_all = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_loaded = rss_kib(pid)?;

    let cpu_before = cpu_seconds(pid)?;
    let window = Instant::now();
    let _ = dial_tx.send(true);
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let circuit_count = circuits.load(Ordering::Relaxed);
    let circuit_seconds = window.elapsed().as_secs_f64();
    let relay_cpu_seconds = cpu_seconds(pid)? - cpu_before;
    let _ = dial_tx.send(false);
    for t in tasks {
        t.abort();
    }
    drop(relay);
    let _ = std::fs::remove_dir_all(&key_dir);
    Ok(RelayScaleRecord {
        reservations: clients,
        rss_idle_kib: rss_idle,
        rss_loaded_kib: rss_loaded,
        kib_per_reservation: rss_loaded.saturating_sub(rss_idle) as f64 / clients as f64,
        seconds_to_reserve_all,
        circuits: circuit_count,
        circuit_failures: failures.load(Ordering::Relaxed),
        circuit_seconds,
        circuits_per_second: circuit_count as f64 / circuit_seconds,
        relay_cpu_seconds,
        circuits_per_relay_cpu_second: circuit_count as f64 / relay_cpu_seconds.max(0.01),
    })
}
