//! The `bitpunch` command line: parses, builds a config, calls the library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::time::Instant;

use bitpunch::address::{CoordinatorAddress, PeerAddress};
use bitpunch::data_dir::DataDir;
use bitpunch::identity::{NodeId, NodeKey};
use bitpunch::lab::{self, LinkShape, NatProfile};
use bitpunch::libp2p::{self as p2p, punch::Libp2pPunchContext, relay, swarm::Libp2pNode};
use bitpunch::native::client::{CoordinatorEndpoint, LinkConfig};
use bitpunch::native::{self, coordinator, machine};
use bitpunch::net::AdmissionConfig;
use bitpunch::node::{Node, NodeConfig};
use bitpunch::punch::budget::BudgetConfig;
use bitpunch::report::{Outcome, Path};
use bitpunch::wire::{self, Network, SessionConfig, SessionRole, TransportPolicy};
use libp2p::Multiaddr;

#[derive(Parser)]
#[command(
    name = "bitpunch",
    version,
    about = "TCP hole punching for Bitcoin nodes behind NATs"
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct NetArgs {
    /// Bitcoin network: mainnet, testnet4, signet, regtest.
    #[arg(long, default_value = "mainnet")]
    network: Network,
    /// v2 (BIP324 only), v1 (plaintext only) or auto (v2, falling back to v1).
    #[arg(long, value_enum, default_value_t = TransportPolicy::Auto)]
    transport: TransportPolicy,
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Where the node key lives (node.key). Default: $BITPUNCH_DATA_DIR, or
    /// ~/.bitpunch.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl DataArgs {
    fn dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(bitpunch::data_dir::default_path)
    }

    /// The data directory, locked for this process: whoever uses one of
    /// its keys holds it.
    fn open(&self) -> anyhow::Result<DataDir> {
        DataDir::open_locked(&self.dir())
    }

    /// For `connect`: the directory the user named, locked; without
    /// --data-dir, none (a fresh identity in memory, which never displaces
    /// a running node's registration).
    fn named(&self) -> anyhow::Result<Option<DataDir>> {
        self.data_dir
            .as_deref()
            .map(DataDir::open_locked)
            .transpose()
    }
}

#[derive(Args, Clone)]
struct P2pArgs {
    /// Offer, accept and punch loopback and private addresses, on both
    /// paths (for tests on one machine or one LAN). Off, only globally
    /// routable addresses are punched, whoever names them.
    #[arg(long)]
    allow_private_addrs: bool,
    /// Run rust-libp2p's own DCUtR instead of our exchange: the relayed
    /// connection becomes a direct libp2p connection, not a BIP324 session.
    /// The yardstick for comparisons; both sides need it.
    #[arg(long)]
    stock_dcutr: bool,
}

/// Where a listening role (node, coordinator) listens, and how long a peer
/// has to finish its handshake.
#[derive(Args, Clone)]
struct ListenArgs {
    #[command(flatten)]
    net: NetArgs,
    /// The TCP port, shared by everything the role does (default: the
    /// network's port).
    #[arg(long)]
    port: Option<u16>,
    /// Listen on this address only (default: every IPv4 and IPv6 address).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Seconds an inbound peer has to finish the handshake.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Admission control and per-connection deadlines (docs/security.md).
#[derive(Args, Clone)]
struct LimitArgs {
    /// Inbound connections in all; when full, the youngest connection of the
    /// most crowded netgroup is evicted [default: node 512, coordinator 100000]
    #[arg(long, value_name = "N")]
    max_inbound: Option<usize>,
    /// Inbound connections from one IP address [default: node 8, coordinator 16]
    #[arg(long, value_name = "N")]
    max_inbound_per_ip: Option<usize>,
    /// Inbound connections from one netgroup (IPv4 /16, IPv6 /32) [default:
    /// node 32, coordinator 256]
    #[arg(long, value_name = "N")]
    max_inbound_per_netgroup: Option<usize>,
    /// Seconds one write to a peer may take once its session is set up; a
    /// peer that stops reading is closed after this.
    #[arg(long, value_name = "S", default_value_t = 60.0)]
    write_timeout: f64,
}

impl LimitArgs {
    fn admission(&self, defaults: AdmissionConfig) -> AdmissionConfig {
        AdmissionConfig {
            max_inbound: self.max_inbound.unwrap_or(defaults.max_inbound),
            max_per_ip: self.max_inbound_per_ip.unwrap_or(defaults.max_per_ip),
            max_per_netgroup: self
                .max_inbound_per_netgroup
                .unwrap_or(defaults.max_per_netgroup),
        }
    }
}

#[derive(Args)]
struct NodeArgs {
    #[command(flatten)]
    listen: ListenArgs,
    /// A coordinator (COORDINATOR_ID@HOST:PORT) to register with
    /// (repeatable); prints the NODE_ID@COORDINATOR_ID@HOST:PORT address
    /// others connect to.
    #[arg(long)]
    coordinator: Vec<String>,
    /// A libp2p relay (multiaddr with /p2p/<id>) to hold a reservation
    /// on (repeatable); prints the circuit address others connect to.
    #[arg(long)]
    relay: Vec<Multiaddr>,
    /// Print one outcome record (JSON line) on stdout for every punch this
    /// node answers, as `connect --json` does for the side that asks.
    #[arg(long)]
    json: bool,
    /// Reflection limit: punch orders from the coordinator this node follows
    /// per peer IP address per minute (each fires up to 3 SYNs there).
    #[arg(long, default_value_t = 6)]
    orders_per_peer_per_minute: usize,
    /// Punch orders this node follows per minute in all.
    #[arg(long, default_value_t = 30)]
    orders_per_minute: usize,
    /// Punch budget, both paths: SYNs per minute to one address (IPv4 /32,
    /// IPv6 /64).
    #[arg(long, value_name = "N", default_value_t = BudgetConfig::default().per_address)]
    punch_syns_per_address: usize,
    /// SYNs per minute to one netgroup (IPv4 /24, IPv6 /48).
    #[arg(long, value_name = "N", default_value_t = BudgetConfig::default().per_netgroup)]
    punch_syns_per_netgroup: usize,
    /// SYNs per minute on behalf of one requesting peer.
    #[arg(long, value_name = "N", default_value_t = BudgetConfig::default().per_requester)]
    punch_syns_per_requester: usize,
    /// SYNs per minute in all.
    #[arg(long, value_name = "N", default_value_t = BudgetConfig::default().global)]
    punch_syns_per_minute: usize,
    /// Serve Prometheus metrics on this address (GET /metrics), e.g.
    /// 127.0.0.1:9333; prints `metrics listening ADDR`.
    #[arg(long = "metrics", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Settings file: every flag of this command without `--` (TOML);
    /// flags given here win. Default: <data-dir>/bitpunch.toml if present.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    p2p: P2pArgs,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve inbound v1 and v2 peers on one shared port until Ctrl-C; with
    /// --coordinator, also be reachable through it and accept punches.
    Node(NodeArgs),
    /// Open one session to ADDRESS, exchange version/verack/ping, report.
    /// NODE_ID@COORDINATOR punches through NATs first.
    Connect {
        /// HOST:PORT, [IPv6]:PORT, HOST (the network's default port), or
        /// NODE_ID@COORDINATOR.
        address: String,
        #[command(flatten)]
        net: NetArgs,
        /// Print one outcome record (JSON) instead of a summary.
        #[arg(long)]
        json: bool,
        /// Seconds for TCP connect, and again for the handshake up to pong.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        /// For a punch: the local port to punch from (default: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[command(flatten)]
        p2p: P2pArgs,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Ask the running node of a data directory: listeners, registrations,
    /// reservations, punch budget. Example: `bitpunch status --data-dir ~/.bitpunch`
    Status {
        /// The node's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List the running node's sessions: path, role, remote, transport,
    /// BIP324 session id, since, bytes. Example: `bitpunch peers --json`
    Peers {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// End one of the running node's sessions, by its number in `peers` or
    /// its remote IP:PORT. Example: `bitpunch disconnect 3`
    Disconnect {
        peer: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Run a libp2p circuit relay v2 server (rust-libp2p's), with identify
    /// and ping; prints its address with /p2p/<id>.
    Relay {
        /// Where to listen.
        #[arg(long, default_value = "/ip4/0.0.0.0/tcp/4001")]
        listen: Multiaddr,
        /// The address nodes dial (default: the listen address, when it is
        /// not a wildcard).
        #[arg(long)]
        external: Option<Multiaddr>,
        /// The relay's key file (default: <data-dir>/relay.key).
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value_t = 128)]
        max_reservations: usize,
        #[arg(long, default_value_t = 16)]
        max_circuits: usize,
        /// Seconds a circuit may last.
        #[arg(long, default_value_t = 120)]
        max_circuit_duration: u64,
        #[arg(long, default_value_t = 1 << 17)]
        max_circuit_bytes: u64,
        /// Turn off the reservation and circuit rate limits (benchmarks only).
        #[arg(long)]
        no_rate_limits: bool,
        /// Inbound connections still negotiating Noise/Yamux.
        #[arg(long, default_value_t = relay::ConnectionCaps::RELAY.max_pending_incoming)]
        max_pending_incoming: u32,
        /// Established inbound connections.
        #[arg(long, default_value_t = relay::ConnectionCaps::RELAY.max_established_incoming)]
        max_connections: u32,
        /// Established connections to one peer.
        #[arg(long, default_value_t = relay::ConnectionCaps::RELAY.max_established_per_peer)]
        max_connections_per_peer: u32,
        /// No new connections while the relay's resident memory is above this.
        #[arg(long, value_name = "MIB", default_value_t = relay::ConnectionCaps::RELAY.max_memory_mib)]
        max_memory_mib: usize,
        /// Connections from one IP address.
        #[arg(long, value_name = "N", default_value_t = AdmissionConfig::RELAY.max_per_ip)]
        max_inbound_per_ip: usize,
        /// Connections from one netgroup (IPv4 /16, IPv6 /32).
        #[arg(long, value_name = "N", default_value_t = AdmissionConfig::RELAY.max_per_netgroup)]
        max_inbound_per_netgroup: usize,
    },
    /// Offer hole-punch coordination (the native path) on a reachable port.
    Coordinator {
        #[command(flatten)]
        listen: ListenArgs,
        /// Connect requests one client connection may make per minute.
        #[arg(long, default_value_t = 30)]
        requests_per_minute: usize,
        /// Connect requests from one netgroup (IPv4 /16, IPv6 /32) per
        /// minute, across all its connections.
        #[arg(long, default_value_t = 60)]
        requests_per_netgroup_per_minute: usize,
        /// Orders one netgroup may cause to one registered node per minute
        /// (protects the node's own order budget from a few requesters).
        #[arg(long, default_value_t = 3)]
        orders_per_netgroup_per_target: usize,
        /// Serve Prometheus metrics on this address (GET /metrics).
        #[arg(long = "metrics", value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// The coordinator's identity is <data-dir>/node.key: nodes name its
        /// id in the address they give out (ID@HOST:PORT).
        #[command(flatten)]
        data: DataArgs,
    },
    /// Both punch paths and stock DCUtR side by side: a relay, a
    /// coordinator and two nodes on loopback (or, with --nat, between two
    /// emulated home NATs), then a table.
    Demo {
        /// Between two emulated NATs in the lab (root): `--nat` for two
        /// home routers, or `--nat PROFILE_A,PROFILE_B`.
        #[arg(long, num_args = 0..=1, default_missing_value = "home,home")]
        nat: Option<String>,
        /// One-way delay on each NAT's internet link (with --nat).
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// Tries per path.
        #[arg(long, default_value_t = 1)]
        tries: u32,
        /// Paths to run (repeatable; default: all three).
        #[arg(long, value_enum)]
        path: Vec<bitpunch::scenario::PathKind>,
        /// One outcome record per line instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The NAT lab (root): emulated NATs in network namespaces.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build each NAT profile, classify it from a host behind it, and report
    /// whether the lab's NAT behaves as configured.
    NatCheck {
        /// Check every profile (4 mappings x 3 filterings x drop/RST x hairpin).
        #[arg(long, conflicts_with = "profile")]
        all: bool,
        /// A profile to check (repeatable): a preset (home, home-rst,
        /// full-cone, restricted-cone, port-restricted-rp, symmetric,
        /// symmetric-seq, symmetric-rst) or MAPPING/FILTERING/UNSOLICITED[/hairpin].
        /// Default: the presets.
        #[arg(long)]
        profile: Vec<NatProfile>,
        /// One JSON record per profile instead of a table.
        #[arg(long)]
        json: bool,
        /// Milliseconds an inbound probe may take before it counts as filtered.
        /// A profile that does not classify as configured is checked once
        /// more with five times this.
        #[arg(long, default_value_t = 400)]
        probe_timeout_ms: u64,
    },
    /// Build a lab and keep it until Ctrl-C: one public host, and per --nat a
    /// router with one host behind it. Prints the namespaces and addresses.
    Up {
        /// NAT profile of each router (repeatable; default: one `home`).
        #[arg(long)]
        nat: Vec<NatProfile>,
        /// One-way delay on each router's internet link, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Packet loss on each router's internet link, in percent.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
    },
    /// The comparison matrix: every path, many tries, for every pair of NAT
    /// profiles; writes records.jsonl, summary.md, success.svg, latency.svg.
    Run {
        /// Profiles for Alice's (the connecting side's) NAT (repeatable;
        /// default: every preset).
        #[arg(long)]
        alice: Vec<NatProfile>,
        /// Profiles for Bob's NAT (repeatable; default: every preset).
        #[arg(long)]
        bob: Vec<NatProfile>,
        /// Paths (repeatable; default: libp2p, native, stock-dcutr).
        #[arg(long, value_enum)]
        path: Vec<bitpunch::scenario::PathKind>,
        /// One-way delay on each NAT's internet link, ms.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// Loss on each NAT's internet link, percent.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Tries per path and NAT pair.
        #[arg(long, default_value_t = 20)]
        tries: u32,
        /// Output folder (default: results/lab-run-<unix time>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// What a coordinator costs: resident memory per registered client and
    /// coordinations per second, with the coordinator pinned to one core
    /// (loopback; needs no root).
    Scale {
        /// Registered clients (repeatable: one measurement each).
        #[arg(long, default_values_t = [1000usize, 10000])]
        clients: Vec<usize>,
        /// Seconds of requests for the rate (coordinations, or circuits
        /// through the relay).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// One JSON record per measurement instead of a line.
        #[arg(long)]
        json: bool,
        /// Measure a relay (memory per held reservation) instead of a
        /// coordinator.
        #[arg(long)]
        relay: bool,
        /// Measure another relay: "PROGRAM ARGS..." (split at spaces), to
        /// which the listen address is appended; implies --relay. E.g.
        /// "interop/py/.venv/bin/python interop/py/relay.py".
        #[arg(long, value_name = "COMMAND")]
        relay_command: Option<String>,
    },
    /// Redraw success.svg and latency.svg of a run from its records.jsonl.
    Plot {
        /// The run's folder.
        dir: PathBuf,
    },
    /// Remove namespaces left by lab runs that are no longer running.
    Cleanup {
        /// Also remove those of runs that are still alive.
        #[arg(long)]
        all: bool,
    },
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn seconds(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("timeout {s} must be a positive number of seconds"))
}

fn session_config(net: &NetArgs, timeout: f64) -> anyhow::Result<SessionConfig> {
    let mut config = SessionConfig::new(net.network);
    config.transport = net.transport;
    config.handshake_timeout = seconds(timeout)?;
    Ok(config)
}

/// A line on stdout for whoever watches a long-running role (scripts wait
/// for "listening", "reachable as"…). If the watcher goes away and closes
/// the pipe, the role keeps running: the write error is ignored, where
/// `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The command line, with `bitpunch node`'s settings file folded in (its
/// settings become the flags the user did not give).
fn command_line() -> anyhow::Result<Cli> {
    use clap::CommandFactory;
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse_from(&argv);
    let Command::Node(args) = &cli.command else {
        return Ok(cli);
    };
    let path = match &args.config {
        Some(path) => path.clone(),
        None => {
            let path = args.data.dir().join(bitpunch::config::FILE);
            if !path.exists() {
                return Ok(cli);
            }
            path
        }
    };
    let command = Cli::command();
    let known: Vec<(String, bool)> = command
        .find_subcommand("node")
        .map(|node| {
            node.get_arguments()
                .filter_map(|a| {
                    a.get_long()
                        .map(|l| (l.to_string(), a.get_action().takes_values()))
                })
                .collect()
        })
        .unwrap_or_default();
    let given = bitpunch::config::given_flags(&argv);
    let extra = bitpunch::config::file_args(&path, &known, &given)?;
    tracing::debug!(file = %path.display(), ?extra, "settings from the file");
    Ok(Cli::parse_from(argv.into_iter().chain(extra)))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match command_line() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.verbose, cli.quiet);
    match bitpunch::net::raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    let result = match cli.command {
        Command::Node(args) => run_node(args).await,
        Command::Connect {
            address,
            net,
            json,
            timeout,
            port,
            p2p,
            data,
        } => run_connect(&address, net, json, timeout, port, p2p, data).await,
        Command::Relay {
            listen,
            external,
            key,
            data,
            max_reservations,
            max_circuits,
            max_circuit_duration,
            max_circuit_bytes,
            no_rate_limits,
            max_pending_incoming,
            max_connections,
            max_connections_per_peer,
            max_memory_mib,
            max_inbound_per_ip,
            max_inbound_per_netgroup,
        } => {
            let mut limits = relay::RelayLimits {
                max_reservations,
                max_circuits,
                max_circuit_duration: Duration::from_secs(max_circuit_duration),
                max_circuit_bytes,
                caps: relay::ConnectionCaps {
                    max_pending_incoming,
                    max_established_incoming: max_connections,
                    max_established_per_peer: max_connections_per_peer,
                    max_memory_mib,
                },
                admission: AdmissionConfig {
                    max_per_ip: max_inbound_per_ip,
                    max_per_netgroup: max_inbound_per_netgroup,
                    ..AdmissionConfig::RELAY
                },
                ..Default::default()
            };
            if no_rate_limits {
                limits.rate_limits = None;
            }
            run_relay(listen, external, key, data, limits).await
        }
        Command::Coordinator {
            listen,
            requests_per_minute,
            requests_per_netgroup_per_minute,
            orders_per_netgroup_per_target,
            metrics_addr,
            data,
        } => {
            let machine = machine::CoordinatorConfig {
                requests_per_minute,
                requests_per_netgroup_per_minute,
                orders_per_netgroup_per_target,
                ..Default::default()
            };
            run_coordinator(listen, machine, metrics_addr, data).await
        }
        Command::Lab { command } => run_lab(command).await,
        Command::Status { json, data } => run_status(json, data).await,
        Command::Peers { json, data } => run_peers(json, data).await,
        Command::Disconnect { peer, data } => run_disconnect(&peer, data).await,
        Command::Demo {
            nat,
            delay_ms,
            tries,
            path,
            json,
        } => run_demo(nat, delay_ms, tries, path, json).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // 2 is for what the user typed (as clap does for flags); what
            // went wrong while running is 1.
            let usage = e.chain().any(|cause| {
                cause.is::<bitpunch::address::AddressError>()
                    || cause.is::<bitpunch::address::CoordinatorAddressError>()
            });
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

async fn run_node(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let NodeArgs {
        listen:
            ListenArgs {
                net,
                port,
                bind,
                timeout,
                limits,
            },
        coordinator,
        relay: relays,
        json,
        orders_per_peer_per_minute,
        orders_per_minute,
        punch_syns_per_address,
        punch_syns_per_netgroup,
        punch_syns_per_requester,
        punch_syns_per_minute,
        metrics_addr,
        config: _,
        p2p: p2p_args,
        data,
    } = args;
    let order_limits = machine::ClientConfig {
        orders_per_target_per_minute: orders_per_peer_per_minute,
        orders_per_minute,
        allow_private: p2p_args.allow_private_addrs,
        ..Default::default()
    };
    for relay in &relays {
        if !relay
            .iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        {
            anyhow::bail!("--relay {relay}: the relay address needs its /p2p/<relay id>");
        }
    }
    let session = session_config(&net, timeout)?;
    // Parse everything the user typed before binding anything.
    let mut coordinators = Vec::new();
    for typed in &coordinator {
        let typed: CoordinatorAddress = typed.parse()?;
        let endpoint = resolve_coordinator(&typed, net.network.default_port()).await?;
        coordinators.push((endpoint, typed));
    }
    // The data directory is this process's until it ends: its keys, and the
    // control socket `bitpunch status|peers|disconnect` talk to.
    let data = data.open()?;
    let mut config = NodeConfig::new(session.clone());
    config.port = port.unwrap_or(net.network.default_port());
    config.bind_ip = bind;
    config.admission = limits.admission(AdmissionConfig::NODE);
    config.session.write_timeout = seconds(limits.write_timeout)?;
    config.punch_budget = BudgetConfig {
        per_address: punch_syns_per_address,
        per_netgroup: punch_syns_per_netgroup,
        per_requester: punch_syns_per_requester,
        global: punch_syns_per_minute,
    };
    let node = Node::start(config).with_context(|| {
        format!(
            "cannot listen on port {}",
            port.unwrap_or(net.network.default_port())
        )
    })?;
    let handle = node.handle();
    let _control = bitpunch::control::serve(data.path(), handle.clone())?;
    // One line per listener on stdout, so that scripts can find the port
    // (the control socket answers by then).
    for addr in node.local_addrs() {
        say!("listening {addr}");
        tracing::info!(%addr, network = %net.network, transport = ?net.transport, "listening");
    }
    // Every punch this node answers is counted as it ends, and with --json
    // printed.
    let metrics = Arc::new(bitpunch::metrics::Metrics::node());
    if let Some(addr) = metrics_addr {
        let (m, h) = (metrics.clone(), handle.clone());
        let (local, _) = bitpunch::metrics::serve(
            addr,
            Arc::new(move || {
                m.refresh_node(&h);
                m.encode()
            }),
        )
        .await?;
        say!("metrics listening {local}");
    }
    let (records_tx, mut records_rx) = tokio::sync::mpsc::channel::<bitpunch::report::Outcome>(16);
    let records = Some(records_tx);
    let counted = metrics.clone();
    let print_records = async move {
        while let Some(record) = records_rx.recv().await {
            counted.record(&record);
            if json {
                say!("{}", record.to_json());
            }
        }
        std::future::pending::<()>().await
    };
    let relayed = async {
        if relays.is_empty() {
            return std::future::pending::<()>().await;
        }
        let keypair = match data.libp2p_keypair() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "no libp2p key");
                return std::future::pending::<()>().await;
            }
        };
        let libp2p = match Libp2pNode::start_with(
            keypair,
            node.shared_port().clone(),
            node.router(),
            p2p::swarm::Libp2pOptions::stock_dcutr(p2p_args.stock_dcutr),
        ) {
            Ok(n) => Arc::new(n),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot start libp2p");
                return std::future::pending::<()>().await;
            }
        };
        tracing::info!(peer_id = %libp2p.peer_id, "libp2p started");
        // What `bitpunch status` says about each relay follows the swarm.
        let track = track_reservations(libp2p.events(), relays.clone(), handle.clone());
        let reservations = futures::future::join_all(relays.iter().map(|r| {
            p2p::keep_reservation(libp2p.clone(), r.clone(), |circuit| {
                say!("reachable as {circuit}")
            })
        }));
        let answer = if p2p_args.stock_dcutr {
            // rust-libp2p's DCUtR does the work; we only report it.
            let relay_peers = relays.iter().filter_map(p2p::relay_peer).collect();
            futures::future::Either::Left(report_stock_dcutr(libp2p.events(), relay_peers))
        } else {
            let ctx = Libp2pPunchContext::for_node(
                &node,
                libp2p.clone(),
                session.clone(),
                p2p_args.allow_private_addrs,
            );
            futures::future::Either::Right(p2p::serve_relayed(
                ctx,
                Duration::from_secs(20 * 60),
                records.clone(),
            ))
        };
        tokio::join!(reservations, answer, track);
    };
    let key = Arc::new(data.node_key()?);
    // `bitpunch connect` on this machine goes through this node.
    handle.set_connector(bitpunch::connect::NodeConnector {
        port: node.shared_port().clone(),
        router: node.router().clone(),
        owner: node.session_owner(),
        handle: handle.clone(),
        key: key.clone(),
        session: session.clone(),
        idle: Duration::from_secs(20 * 60),
    });
    let registrations = coordinators.into_iter().map(|(coordinator, typed)| {
        let link_config = LinkConfig {
            session: session.clone(),
            client: order_limits.clone(),
            ping_interval: native::client::LINK_PING_INTERVAL,
        };
        let handle = handle.clone();
        let typed = typed.to_string();
        native::stay_registered(
            &node,
            coordinator,
            key.clone(),
            link_config,
            Duration::from_secs(20 * 60),
            records.clone(),
            move |event| match event {
                native::RegistrationEvent::Registered { id, observed, link } => {
                    let address = format!("{id}@{typed}");
                    // The state first: whoever reads the line may ask for it.
                    handle.set_registration(&typed, Some((address.clone(), observed, link)));
                    say!("reachable as {address}");
                }
                native::RegistrationEvent::Lost { .. }
                | native::RegistrationEvent::Displaced { .. } => {
                    handle.set_registration(&typed, None);
                }
                native::RegistrationEvent::Failed { .. } => {}
            },
        )
    });
    // Displaced (the key registered from elsewhere), the node stops asking
    // that coordinator but keeps serving everything else.
    let serve = async {
        futures::future::join_all(registrations).await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        r = shutdown_signal() => tracing::info!(signal = r?, "shutting down"),
        () = serve => {}
        () = relayed => {}
        () = print_records => {}
    }
    // Dropping the node and its links now closes every session and the
    // coordinator link (an RST: the coordinator frees the registration at
    // once) and the relay connections (the reservations go with them).
    Ok(ExitCode::SUCCESS)
}

/// Keeps the node's record of its reservations (for `bitpunch status`) in
/// step with the swarm's events.
async fn track_reservations(
    mut events: tokio::sync::broadcast::Receiver<p2p::swarm::Libp2pEvent>,
    relays: Vec<Multiaddr>,
    handle: bitpunch::node::NodeHandle,
) {
    use p2p::swarm::Libp2pEvent;
    let listens: Vec<(String, String)> = relays
        .iter()
        .map(|r| {
            let listen = r.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
            (r.to_string(), listen.to_string())
        })
        .collect();
    loop {
        match events.recv().await {
            Ok(Libp2pEvent::Reserved { circuit, .. }) => {
                let circuit = circuit.to_string();
                if let Some((relay, _)) = listens.iter().find(|(_, l)| circuit.starts_with(l)) {
                    handle.set_reservation(relay, Some(circuit));
                }
            }
            Ok(Libp2pEvent::ReservationLost { relay_addr, .. }) => {
                let lost = relay_addr.to_string();
                if let Some((relay, _)) = listens.iter().find(|(_, l)| *l == lost) {
                    handle.set_reservation(relay, None);
                }
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    }
}

async fn run_status(json: bool, data: DataArgs) -> anyhow::Result<ExitCode> {
    let status = bitpunch::control::call(&data.dir(), "status", serde_json::Value::Null).await?;
    if json {
        println!("{status}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", bitpunch::control::render_status(&status));
    Ok(ExitCode::SUCCESS)
}

async fn run_peers(json: bool, data: DataArgs) -> anyhow::Result<ExitCode> {
    let peers = bitpunch::control::call(&data.dir(), "peers", serde_json::Value::Null).await?;
    if json {
        println!("{peers}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", bitpunch::control::render_peers(&peers));
    Ok(ExitCode::SUCCESS)
}

async fn run_disconnect(peer: &str, data: DataArgs) -> anyhow::Result<ExitCode> {
    let ended = bitpunch::control::call(
        &data.dir(),
        "disconnect",
        serde_json::json!({ "peer": peer }),
    )
    .await?;
    let n = ended.as_array().map(Vec::len).unwrap_or_default();
    println!("disconnected {n} session{}", if n == 1 { "" } else { "s" });
    Ok(ExitCode::SUCCESS)
}

/// What stock DCUtR did, on stdout for scripts and the interop tests: every
/// direct connection to a peer that is not one of our relays, and DCUtR's
/// own verdict.
async fn report_stock_dcutr(
    mut events: tokio::sync::broadcast::Receiver<p2p::swarm::Libp2pEvent>,
    relay_peers: Vec<libp2p::PeerId>,
) {
    loop {
        match events.recv().await {
            Ok(p2p::swarm::Libp2pEvent::Connected {
                peer,
                remote,
                relayed: false,
                ..
            }) if !relay_peers.contains(&peer) => {
                say!("direct connection {peer} {remote}");
            }
            Ok(p2p::swarm::Libp2pEvent::Dcutr { peer, result }) => {
                tracing::info!(%peer, ?result, "stock DCUtR finished");
                match result {
                    Ok(_) => say!("dcutr ok {peer}"),
                    Err(e) => say!("dcutr failed {peer}: {e}"),
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    }
}

async fn run_relay(
    listen: Multiaddr,
    external: Option<Multiaddr>,
    key: Option<PathBuf>,
    data: DataArgs,
    limits: relay::RelayLimits,
) -> anyhow::Result<ExitCode> {
    // The relay's key in the data dir: that dir is locked for as long as
    // the relay runs.
    let (key, _data) = match key {
        Some(key) => (key, None),
        None => {
            let data = data.open()?;
            (data.path().join("relay.key"), Some(data))
        }
    };
    let keypair = relay::load_or_create_keypair(&key)?;
    let server = relay::RelayServer::start(keypair, listen, external, limits).await?;
    say!("relay listening {}", server.address);
    tracing::info!(address = %server.address, "relay listening");
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "shutting down");
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM (what systemd and `kill` send): the long-running
/// roles stop the same way on either.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for Ctrl-C")?;
            Ok("SIGINT")
        }
        _ = terminate.recv() => Ok("SIGTERM"),
    }
}

/// The first address `coordinator` resolves to, with the id it must prove.
async fn resolve_coordinator(
    coordinator: &CoordinatorAddress,
    default_port: u16,
) -> anyhow::Result<CoordinatorEndpoint> {
    let resolved = coordinator
        .resolve(default_port)
        .await
        .with_context(|| format!("cannot resolve {coordinator}"))?;
    let addr = resolved
        .first()
        .copied()
        .with_context(|| format!("{coordinator} resolved to no address"))?;
    Ok(CoordinatorEndpoint {
        id: coordinator.id,
        addr,
    })
}

async fn run_coordinator(
    listen: ListenArgs,
    machine: machine::CoordinatorConfig,
    metrics_addr: Option<std::net::SocketAddr>,
    data: DataArgs,
) -> anyhow::Result<ExitCode> {
    let data = data.open()?;
    let key = data.node_key()?;
    let ListenArgs {
        net,
        port,
        bind,
        timeout,
        limits,
    } = listen;
    let mut config = coordinator::CoordinatorServerConfig::new(session_config(&net, timeout)?, key);
    config.port = port.unwrap_or(net.network.default_port());
    config.bind_ip = bind;
    config.admission = limits.admission(AdmissionConfig::COORDINATOR);
    config.session.write_timeout = seconds(limits.write_timeout)?;
    config.machine = machine;
    let server = coordinator::CoordinatorServer::start(config).with_context(|| {
        format!(
            "cannot listen on port {}",
            port.unwrap_or(net.network.default_port())
        )
    })?;
    // The id first: whoever reads the addresses needs it to use them.
    say!("coordinator id {}", server.id());
    for addr in server.local_addrs() {
        say!("coordinator listening {addr}");
        tracing::info!(%addr, id = %server.id(), network = %net.network, "coordinator listening; nodes name it {}@HOST:PORT", server.id());
    }
    let server = Arc::new(server);
    if let Some(addr) = metrics_addr {
        let metrics = bitpunch::metrics::Metrics::coordinator();
        let watched = server.clone();
        let (local, _) = bitpunch::metrics::serve(
            addr,
            Arc::new(move || {
                metrics.refresh_coordinator(&watched.stats());
                metrics.encode()
            }),
        )
        .await?;
        say!("metrics listening {local}");
    }
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "shutting down");
    Ok(ExitCode::SUCCESS)
}

async fn run_connect(
    address: &str,
    net: NetArgs,
    json: bool,
    timeout: f64,
    port: u16,
    p2p_args: P2pArgs,
    data: DataArgs,
) -> anyhow::Result<ExitCode> {
    let target: PeerAddress = address.parse()?;
    let config = session_config(&net, timeout)?;
    // A node running on this data directory makes the connection itself,
    // from its port and over its open coordinator session, and keeps it.
    if !matches!(target, PeerAddress::Circuit(_))
        && bitpunch::control::node_serves(&data.dir()).await
    {
        let record = bitpunch::control::call(
            &data.dir(),
            "connect",
            serde_json::json!({ "address": address }),
        )
        .await?;
        let record: Outcome = serde_json::from_value(record)?;
        return Ok(finish(record, json));
    }
    if let PeerAddress::Circuit(circuit) = &target {
        let record = connect_libp2p(circuit.clone(), config, port, p2p_args, data).await?;
        return Ok(finish(record, json));
    }
    if let PeerAddress::Coordinated { peer, coordinator } = &target {
        let coordinator = resolve_coordinator(coordinator, net.network.default_port()).await?;
        let record = connect_native(
            *peer,
            coordinator,
            config,
            port,
            data,
            p2p_args.allow_private_addrs,
        )
        .await?;
        return Ok(finish(record, json));
    }
    let started = Instant::now();
    let resolved = target
        .resolve(net.network.default_port())
        .await
        .with_context(|| format!("cannot resolve {target}"))?;
    let remote = *resolved
        .first()
        .with_context(|| format!("{target} resolved to no address"))?;
    let outcome = wire::connect(remote, &config, None, started).await;
    let record = match &outcome.result {
        Ok(session) => {
            let mut record = Outcome::from_session(Path::Direct, &session.report);
            record.bytes.direct = outcome.bytes_total;
            record
        }
        Err(e) => Outcome::from_error(
            Path::Direct,
            SessionRole::Initiator,
            Some(remote.to_string()),
            e,
        ),
    };
    let record = Outcome {
        attempts: outcome.attempts,
        v2_fallback_reason: outcome.fell_back.as_ref().map(|e| e.to_string()),
        ..record
    };
    Ok(finish(record, json))
}

fn finish(record: Outcome, json: bool) -> ExitCode {
    if json {
        println!("{}", record.to_json());
    } else {
        print_summary(&record);
    }
    if record.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A punch to the peer at `circuit`, coordinated through its relay.
async fn connect_libp2p(
    circuit: Multiaddr,
    session: SessionConfig,
    port: u16,
    p2p_args: P2pArgs,
    data: DataArgs,
) -> anyhow::Result<Outcome> {
    let data = data.named()?;
    let keypair = match &data {
        Some(data) => data.libp2p_keypair()?,
        None => libp2p::identity::Keypair::generate_ed25519(),
    };
    let mut config = NodeConfig::new(session.clone());
    config.port = port;
    let node = Node::start(config).with_context(|| format!("cannot bind local port {port}"))?;
    let libp2p = Libp2pNode::start_with(
        keypair,
        node.shared_port().clone(),
        node.router(),
        p2p::swarm::Libp2pOptions::stock_dcutr(p2p_args.stock_dcutr),
    )?;
    if p2p_args.stock_dcutr {
        return Ok(p2p::stock::connect(&libp2p, circuit, session.handshake_timeout * 3).await);
    }
    let ctx = Libp2pPunchContext::for_node(
        &node,
        Arc::new(libp2p),
        session,
        p2p_args.allow_private_addrs,
    );
    Ok(p2p::connect_circuit(&ctx, circuit).await.record)
}

/// A punch through `coordinator` to `peer`, from local port `port`.
async fn connect_native(
    peer: NodeId,
    coordinator: CoordinatorEndpoint,
    session: SessionConfig,
    port: u16,
    data: DataArgs,
    allow_private: bool,
) -> anyhow::Result<Outcome> {
    let data = data.named()?;
    let key = Arc::new(match &data {
        Some(data) => data.node_key()?,
        None => NodeKey::generate(),
    });
    let mut config = NodeConfig::new(session.clone());
    config.port = port;
    let node = Node::start(config).with_context(|| format!("cannot bind local port {port}"))?;
    Ok(native::connect(&node, coordinator, key, session, peer, allow_private).await)
}

fn print_summary(r: &Outcome) {
    let remote = r.remote.as_deref().unwrap_or("?");
    if !r.ok {
        println!(
            "FAILED  {remote}: {}",
            r.error.as_deref().unwrap_or("unknown error")
        );
        return;
    }
    let transport = r.transport.map(|t| t.to_string()).unwrap_or_default();
    println!(
        "connected to {remote} from {}{}",
        r.local.as_deref().unwrap_or("?"),
        match (&r.via, r.won_by) {
            (Some(via), Some(won_by)) => format!(
                " (punched via {via}, {} attempt(s), won by {won_by:?})",
                r.attempts
            ),
            _ => String::new(),
        }
    );
    println!(
        "  transport   {transport}{}",
        match &r.v2_fallback_reason {
            Some(why) => format!(" (after BIP324 failed: {why})"),
            None => String::new(),
        }
    );
    if let Some(id) = &r.session_id {
        println!("  session id  {id}");
    }
    println!(
        "  peer        {} (version {}, services {:#x}, height {})",
        r.peer_user_agent.as_deref().unwrap_or(""),
        r.peer_version.unwrap_or_default(),
        r.peer_services.unwrap_or_default(),
        r.peer_start_height.unwrap_or_default()
    );
    if let Some(us) = &r.peer_sees_us_at {
        println!("  sees us at  {us}");
    }
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.1} ms")).unwrap_or("-".into());
    if r.via.is_some() {
        println!(
            "  punch       coordination {}, first SYN {}",
            ms(r.t_ms.coordination),
            ms(r.t_ms.first_syn)
        );
    }
    println!(
        "  timeline    tcp {}, handshake {}, verack {}, pong {}",
        ms(r.t_ms.tcp),
        ms(r.t_ms.handshake),
        ms(r.t_ms.verack),
        ms(r.t_ms.pong)
    );
    println!("  rtt         {}", ms(r.rtt_ms));
    println!(
        "  bytes       {} direct, {} coordination",
        r.bytes.direct, r.bytes.coordination
    );
}

async fn run_lab(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::NatCheck {
            all,
            profile,
            json,
            probe_timeout_ms,
        } => {
            let profiles = if all {
                NatProfile::all()
            } else if profile.is_empty() {
                lab::nat::PRESETS.iter().map(|(_, p)| *p).collect()
            } else {
                profile
            };
            let mut failed = 0;
            for p in profiles {
                let check =
                    lab::probe::check_profile_twice(p, Duration::from_millis(probe_timeout_ms))
                        .await?;
                if !check.matches {
                    failed += 1;
                }
                if json {
                    println!("{}", serde_json::to_string(&check)?);
                } else {
                    println!(
                        "{:<26} {:<28} {}",
                        check.profile,
                        check.classified,
                        match (check.matches, check.rechecked) {
                            (true, false) => "ok",
                            (true, true) => "ok (on a second check)",
                            (false, _) => "MISMATCH (twice)",
                        }
                    );
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LabCommand::Up {
            nat,
            delay_ms,
            loss,
        } => {
            let nats = if nat.is_empty() {
                vec!["home".parse().expect("preset")]
            } else {
                nat
            };
            let mut lab = lab::Lab::new()?;
            let public = lab.add_public_host("public")?;
            let mut hosts = Vec::new();
            for (i, profile) in nats.iter().enumerate() {
                let mut router = lab.add_nat(&format!("nat{i}"), *profile)?;
                let host = lab.add_host_behind(&mut router, &format!("host{i}"))?;
                let shape = LinkShape {
                    delay: Duration::from_millis(delay_ms),
                    loss_percent: loss,
                    ..Default::default()
                };
                if !shape.is_neutral() {
                    lab.set_link_shape(&router.link, shape)?;
                }
                hosts.push(serde_json::json!({
                    "profile": profile.to_string(), "router_ns": router.ns,
                    "public_ip": router.public_ip.to_string(),
                    "host_ns": host.ns, "host_ip": host.ip.to_string(),
                }));
            }
            println!(
                "{}",
                serde_json::json!({
                    "prefix": lab.prefix(), "internet_ns": lab.internet_ns(),
                    "public": {"ns": public.ns, "ip": public.ip.to_string()},
                    "nats": hosts,
                })
            );
            eprintln!(
                "lab ready; run programs with `ip netns exec NS ...`; Ctrl-C removes the lab"
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            drop(lab);
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Run {
            alice,
            bob,
            path,
            delay_ms,
            loss,
            tries,
            out,
        } => run_matrix(alice, bob, path, delay_ms, loss, tries, out).await,
        LabCommand::Scale {
            clients,
            seconds,
            json,
            relay,
            relay_command,
        } => {
            let bin = std::env::current_exe().context("finding the bitpunch binary")?;
            if relay || relay_command.is_some() {
                for n in clients {
                    let argv: Option<Vec<String>> = relay_command
                        .as_ref()
                        .map(|c| c.split_whitespace().map(String::from).collect());
                    let under_test = match &argv {
                        Some(argv) => bitpunch::scale::RelayUnderTest::Command(argv),
                        None => bitpunch::scale::RelayUnderTest::Bitpunch(&bin),
                    };
                    let r = bitpunch::scale::measure_relay(under_test, n, seconds).await?;
                    if json {
                        println!("{}", serde_json::to_string(&r)?);
                    } else {
                        println!(
                            "{:>6} reservations: relay RSS {} KiB idle, {} KiB loaded ({:.1} KiB per reservation); all reserved in {:.1} s; {} circuits in {:.1} s ({:.0}/s, {:.0} per relay CPU second; {} failed)",
                            r.reservations, r.rss_idle_kib, r.rss_loaded_kib, r.kib_per_reservation, r.seconds_to_reserve_all,
                            r.circuits, r.circuit_seconds, r.circuits_per_second, r.circuits_per_relay_cpu_second, r.circuit_failures
                        );
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            for n in clients {
                let r = bitpunch::scale::measure(&bin, n, seconds).await?;
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{:>6} clients: coordinator RSS {} KiB idle, {} KiB loaded ({:.1} KiB per registration); {:.0} coordinations/s on 1 core ({} in {:.1} s)",
                        r.clients, r.rss_idle_kib, r.rss_loaded_kib, r.kib_per_registration, r.coordinations_per_second, r.coordinations, r.seconds
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Plot { dir } => {
            let records = bitpunch::matrix::read_jsonl(&dir.join("records.jsonl"))?;
            std::fs::write(
                dir.join("success.svg"),
                bitpunch::report::svg::success_heatmap(&records),
            )?;
            std::fs::write(
                dir.join("latency.svg"),
                bitpunch::report::svg::latency_cdf(&records),
            )?;
            println!(
                "{} records; plots written to {}",
                records.len(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Cleanup { all } => {
            let removed = lab::cleanup(all)?;
            for ns in &removed {
                println!("removed {ns}");
            }
            if removed.is_empty() {
                println!("nothing to remove");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_demo(
    nat: Option<String>,
    delay_ms: u64,
    tries: u32,
    paths: Vec<bitpunch::scenario::PathKind>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let nat = match nat {
        None => None,
        Some(pair) => {
            let (a, b) = pair
                .split_once(',')
                .unwrap_or((pair.as_str(), pair.as_str()));
            let a: NatProfile = a.parse().map_err(anyhow::Error::msg)?;
            let b: NatProfile = b.parse().map_err(anyhow::Error::msg)?;
            Some((a, b))
        }
    };
    let config = bitpunch::demo::DemoConfig {
        nat,
        delay_ms,
        tries: tries.max(1),
        paths: if paths.is_empty() {
            bitpunch::scenario::PathKind::ALL.to_vec()
        } else {
            paths
        },
    };
    if !json {
        match config.nat {
            None => println!("bitpunch demo: relay, coordinator and two nodes on 127.0.0.1"),
            Some((a, b)) => println!(
                "bitpunch demo: Alice behind {a}, Bob behind {b}, {delay_ms} ms one-way on each NAT's link; relay and coordinator on public lab hosts"
            ),
        }
    }
    let records = bitpunch::demo::run(&config, |r| {
        if json {
            println!("{}", r.to_json());
        }
    })
    .await?;
    if !json {
        println!();
        print!("{}", bitpunch::report::table::by_path(&records));
        println!();
        println!(
            "times in ms from the connect request (medians over successful tries); stock-dcutr's"
        );
        println!("\"verack\" is its first ping on the direct libp2p connection. Records: --json.");
    }
    Ok(if records.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_matrix(
    alice: Vec<NatProfile>,
    bob: Vec<NatProfile>,
    paths: Vec<bitpunch::scenario::PathKind>,
    delay_ms: u64,
    loss: f64,
    tries: u32,
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use bitpunch::matrix;
    use std::sync::atomic::{AtomicBool, Ordering};
    let presets: Vec<NatProfile> = lab::nat::PRESETS.iter().map(|(_, p)| *p).collect();
    let alice = if alice.is_empty() {
        presets.clone()
    } else {
        alice
    };
    let bob = if bob.is_empty() { presets } else { bob };
    let pairs = alice
        .iter()
        .flat_map(|a| bob.iter().map(move |b| (*a, *b)))
        .collect();
    let out = out.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        PathBuf::from(format!("results/lab-run-{now}"))
    });
    let config = matrix::MatrixConfig {
        pairs,
        paths: if paths.is_empty() {
            bitpunch::scenario::PathKind::ALL.to_vec()
        } else {
            paths
        },
        delay_ms,
        loss_percent: loss,
        tries: tries.max(1),
        out_dir: out.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping after the current try; writing what was measured");
            on_signal.store(true, Ordering::Relaxed);
        }
    });
    let total = (config.pairs.len() * config.paths.len()) as u64 * u64::from(config.tries);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} tries, eta {eta} | {msg}")
            .expect("valid template"),
    );
    let records = matrix::run(&config, stop.clone(), |p| {
        bar.set_position(p.done);
        let last = p
            .last
            .map(|r| format!(" last: {:?} {}", r.path, if r.ok { "ok" } else { "failed" }))
            .unwrap_or_default();
        bar.set_message(format!(
            "cell {}/{}: {} vs {}{last}",
            p.cell + 1,
            p.cells,
            p.pair.0,
            p.pair.1
        ));
    })
    .await;
    bar.finish_and_clear();
    let records = records?;
    let complete = !stop.load(Ordering::Relaxed);
    std::fs::write(
        out.join("summary.md"),
        matrix::summary_markdown(&config, &records, complete),
    )?;
    std::fs::write(
        out.join("success.svg"),
        bitpunch::report::svg::success_heatmap(&records),
    )?;
    std::fs::write(
        out.join("latency.svg"),
        bitpunch::report::svg::latency_cdf(&records),
    )?;
    println!(
        "{} records in {}",
        records.len(),
        out.join("records.jsonl").display()
    );
    println!("summary: {}", out.join("summary.md").display());
    println!(
        "plots:   {}, {}",
        out.join("success.svg").display(),
        out.join("latency.svg").display()
    );
    Ok(ExitCode::SUCCESS)
}
