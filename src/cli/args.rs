//! The command line's arguments: one struct per role, shared groups of flags.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use bitpunch::data_dir::DataDir;
use bitpunch::lab::NatProfile;
use bitpunch::libp2p::relay;
use bitpunch::net::AdmissionConfig;
use bitpunch::punch::budget::BudgetConfig;
use bitpunch::wire::{Network, TransportPolicy};
use libp2p::Multiaddr;

#[derive(Parser)]
#[command(
    name = "bitpunch",
    version,
    about = "TCP hole punching for Bitcoin nodes behind NATs"
)]
pub(crate) struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Args, Clone)]
pub(crate) struct NetArgs {
    /// Bitcoin network: mainnet, testnet4, signet, regtest.
    #[arg(long, default_value = "mainnet")]
    pub(crate) network: Network,
    /// v2 (BIP324 only), v1 (plaintext only) or auto (v2, falling back to v1).
    #[arg(long, value_enum, default_value_t = TransportPolicy::Auto)]
    pub(crate) transport: TransportPolicy,
}

#[derive(Args, Clone)]
pub(crate) struct DataArgs {
    /// Where the node key lives (node.key). Default: $BITPUNCH_DATA_DIR, or
    /// ~/.bitpunch.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
}

impl DataArgs {
    pub(crate) fn dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(bitpunch::data_dir::default_path)
    }

    /// The data directory, locked for this process: whoever uses one of
    /// its keys holds it.
    pub(crate) fn open(&self) -> anyhow::Result<DataDir> {
        DataDir::open_locked(&self.dir())
    }

    /// For `connect`: the directory the user named, locked; without
    /// --data-dir, none (a fresh identity in memory, which never displaces
    /// a running node's registration).
    pub(crate) fn named(&self) -> anyhow::Result<Option<DataDir>> {
        self.data_dir
            .as_deref()
            .map(DataDir::open_locked)
            .transpose()
    }
}

#[derive(Args, Clone)]
pub(crate) struct P2pArgs {
    /// Offer, accept and punch loopback and private addresses, on both
    /// paths (for tests on one machine or one LAN). Off, only globally
    /// routable addresses are punched, whoever names them.
    #[arg(long)]
    pub(crate) allow_private_addrs: bool,
    /// Run rust-libp2p's own DCUtR instead of our exchange: the relayed
    /// connection becomes a direct libp2p connection, not a BIP324 session.
    /// The yardstick for comparisons; both sides need it.
    #[arg(long)]
    pub(crate) stock_dcutr: bool,
}

/// Where a listening role (node, coordinator) listens, and how long a peer
/// has to finish its handshake.
#[derive(Args, Clone)]
pub(crate) struct ListenArgs {
    #[command(flatten)]
    pub(crate) net: NetArgs,
    /// The TCP port, shared by everything the role does (default: the
    /// network's port).
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// Listen on this address only (default: every IPv4 and IPv6 address).
    #[arg(long)]
    pub(crate) bind: Option<IpAddr>,
    /// Seconds an inbound peer has to finish the handshake.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) timeout: f64,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}

/// Admission control and per-connection deadlines (docs/security.md).
#[derive(Args, Clone)]
pub(crate) struct LimitArgs {
    /// Inbound connections in all; when full, the youngest connection of the
    /// most crowded netgroup is evicted [default: node 512, coordinator 100000]
    #[arg(long, value_name = "N")]
    pub(crate) max_inbound: Option<usize>,
    /// Inbound connections from one IP address [default: node 8, coordinator 16]
    #[arg(long, value_name = "N")]
    pub(crate) max_inbound_per_ip: Option<usize>,
    /// Inbound connections from one netgroup (IPv4 /16, IPv6 /32) [default:
    /// node 32, coordinator 256]
    #[arg(long, value_name = "N")]
    pub(crate) max_inbound_per_netgroup: Option<usize>,
    /// Seconds one write to a peer may take once its session is set up; a
    /// peer that stops reading is closed after this.
    #[arg(long, value_name = "S", default_value_t = 60.0)]
    pub(crate) write_timeout: f64,
}

impl LimitArgs {
    pub(crate) fn admission(&self, defaults: AdmissionConfig) -> AdmissionConfig {
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
pub(crate) struct NodeArgs {
    #[command(flatten)]
    pub(crate) listen: ListenArgs,
    /// A coordinator (COORDINATOR_ID@HOST:PORT) to register with
    /// (repeatable); prints the NODE_ID@COORDINATOR_ID@HOST:PORT address
    /// others connect to.
    #[arg(long)]
    pub(crate) coordinator: Vec<String>,
    /// A libp2p relay (multiaddr with /p2p/<id>) to hold a reservation
    /// on (repeatable); prints the circuit address others connect to.
    #[arg(long)]
    pub(crate) relay: Vec<Multiaddr>,
    /// Print one outcome record (JSON line) on stdout for every punch this
    /// node answers, as `connect --json` does for the side that asks.
    #[arg(long)]
    pub(crate) json: bool,
    /// Reflection limit: punch orders from the coordinator this node follows
    /// per peer IP address per minute (each fires up to 3 SYNs there).
    #[arg(long, default_value_t = 6)]
    pub(crate) orders_per_peer_per_minute: usize,
    /// Punch orders this node follows per minute in all.
    #[arg(long, default_value_t = 30)]
    pub(crate) orders_per_minute: usize,
    /// Punch budget, both paths: SYNs per minute to one address (IPv4 /32,
    /// IPv6 /64).
    #[arg(long, value_name = "N", default_value_t = BudgetConfig::default().per_address)]
    pub(crate) punch_syns_per_address: usize,
    /// SYNs per minute to one netgroup (IPv4 /24, IPv6 /48).
    #[arg(long, value_name = "N", default_value_t = BudgetConfig::default().per_netgroup)]
    pub(crate) punch_syns_per_netgroup: usize,
    /// SYNs per minute on behalf of one requesting peer.
    #[arg(long, value_name = "N", default_value_t = BudgetConfig::default().per_requester)]
    pub(crate) punch_syns_per_requester: usize,
    /// SYNs per minute in all.
    #[arg(long, value_name = "N", default_value_t = BudgetConfig::default().global)]
    pub(crate) punch_syns_per_minute: usize,
    /// Birthday punches per minute (a random symmetric NAT, ours or the
    /// peer's: 256 SYNs to one address each, paid whole instead of from
    /// the SYN limits); 0 turns them off.
    #[arg(long, value_name = "N", default_value_t = BudgetConfig::default().birthdays)]
    pub(crate) punch_birthdays_per_minute: usize,
    /// Serve Prometheus metrics on this address (GET /metrics), e.g.
    /// 127.0.0.1:9333; prints `metrics listening ADDR`.
    #[arg(long = "metrics", value_name = "ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// Sidecar for a Bitcoin node (docs/bitcoin-core.md): splice every
    /// connection punched for this node, and every ordinary inbound Bitcoin
    /// peer of the shared port, to that node's P2P port, e.g. 127.0.0.1:8335.
    /// The Bitcoin nodes run BIP324 end to end; bitpunch does not terminate it.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) bitcoind: Option<std::net::SocketAddr>,
    /// Serve a SOCKS5 proxy for Bitcoin Core's -proxy=ADDR, e.g.
    /// 127.0.0.1:1080: NODE_ID.punch (and PEER_ID.punch) are punched through
    /// this node's coordinators (relays) and spliced; every other destination
    /// is connected directly. Prints `socks5 listening ADDR`.
    #[arg(long, value_name = "ADDR")]
    pub(crate) socks5: Option<std::net::SocketAddr>,
    /// An address to learn others from (HOST:PORT, repeatable): it goes
    /// into the node's address book (`<data-dir>/peers.json`), and the
    /// outbound manager connects to it and asks it for addresses.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) seednode: Vec<String>,
    /// Outbound sessions the node keeps by itself, picked from its address
    /// book (direct, or punched via the coordinator an address names), at
    /// most one per netgroup; 0 makes none. Not with --bitcoind (Bitcoin
    /// Core picks its own peers).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub(crate) outbound: usize,
    /// Inbound sessions served at most; a bitpunch node that connects
    /// beyond is handed off to an inbound peer that takes handoffs (it then
    /// punches to that peer through the peer's coordinator), any other
    /// peer is closed. Default: no limit but --max-inbound.
    #[arg(long, value_name = "N")]
    pub(crate) inbound_slots: Option<usize>,
    /// Settings file: every flag of this command without `--` (TOML);
    /// flags given here win. Default: <data-dir>/bitpunch.toml if present.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) p2p: P2pArgs,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Serve inbound v1 and v2 peers on one shared port until Ctrl-C; with
    /// --coordinator, also be reachable through it and accept punches.
    #[command(
        after_help = "Examples:\n  bitpunch node --coordinator ab12…@coord.example.org:8333 --metrics 127.0.0.1:9333\n  bitpunch node --relay /ip4/203.0.113.1/tcp/4001/p2p/12D3KooW… --data-dir /var/lib/bitpunch\n  bitpunch node --coordinator ab12…@coord.example.org:8333 --bitcoind 127.0.0.1:8335 --socks5 127.0.0.1:1080"
    )]
    Node(NodeArgs),
    /// Open one session to ADDRESS, exchange version/verack/ping, report.
    /// NODE_ID@COORDINATOR punches through NATs first.
    #[command(
        after_help = "Examples:\n  bitpunch connect seed.example.org:8333\n  bitpunch connect 0011…aabb@ffee…4455@coord.example.org:8333 --json\n  bitpunch connect /ip4/203.0.113.1/tcp/4001/p2p/12D3KooW…/p2p-circuit/p2p/12D3KooW…\n  bitpunch connect --proxy 127.0.0.1:1080 0011…aabb.punch:8333"
    )]
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
        /// Connect through this SOCKS5 proxy, asking for ADDRESS by name as
        /// Bitcoin Core does with -proxy: through a sidecar's proxy
        /// (`bitpunch node --socks5`), NODE_ID.punch:PORT is punched to.
        #[arg(long, value_name = "ADDR")]
        proxy: Option<std::net::SocketAddr>,
        #[command(flatten)]
        p2p: P2pArgs,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Ask the running node of a data directory: listeners, registrations,
    /// reservations, punch budget. Example: `bitpunch status --data-dir ~/.bitpunch`
    #[command(after_help = "Example:\n  bitpunch status --json --data-dir ~/.bitpunch")]
    Status {
        /// The node's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Ask the running node what NAT it is behind: mapping, port
    /// preservation, port allocation (through a coordinator's NAT probes).
    #[command(after_help = "Example:\n  bitpunch nat --json --data-dir ~/.bitpunch")]
    Nat {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List the running node's sessions: path, role, remote, transport,
    /// BIP324 session id, since, bytes. Example: `bitpunch peers --json`
    #[command(after_help = "Example:\n  bitpunch peers --json")]
    Peers {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// End one of the running node's sessions, by its number in `peers` or
    /// its remote IP:PORT. Example: `bitpunch disconnect 3`
    #[command(
        after_help = "Examples:\n  bitpunch disconnect 3\n  bitpunch disconnect 203.0.113.7:40001"
    )]
    Disconnect {
        peer: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Run a libp2p circuit relay v2 server (rust-libp2p's), with identify
    /// and ping; prints its address with /p2p/<id>.
    #[command(
        after_help = "Examples:\n  bitpunch relay\n  bitpunch relay --listen /ip4/0.0.0.0/tcp/4001 --external /ip4/203.0.113.1/tcp/4001"
    )]
    Relay(RelayArgs),
    /// Offer hole-punch coordination (the native path) on a reachable port.
    #[command(
        after_help = "Example:\n  bitpunch coordinator --port 8333 --metrics 127.0.0.1:9334\n  (prints `coordinator id ID`; nodes use --coordinator ID@THIS_HOST:8333)"
    )]
    Coordinator(CoordinatorArgs),
    /// Both punch paths and stock DCUtR side by side: a relay, a
    /// coordinator and two nodes on loopback (or, with --nat, between two
    /// emulated home NATs), then a table.
    #[command(
        after_help = "Examples:\n  bitpunch demo\n  sudo bitpunch demo --nat home,symmetric --tries 5"
    )]
    Demo {
        /// Between two emulated NATs in the lab (root): `--nat` for two
        /// home routers, or `--nat PROFILE_A,PROFILE_B`.
        #[arg(long, num_args = 0..=1, default_missing_value = "home,home")]
        nat: Option<String>,
        /// One-way delay on each NAT's internet link (with --nat).
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// Each packet's delay is drawn from delay ± this (with --nat).
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// Tries per path.
        #[arg(long, default_value_t = 1)]
        tries: u32,
        /// Paths to run (repeatable; default: all three).
        #[arg(long, value_enum)]
        path: Vec<bitpunch::scenario::PathKind>,
        /// One outcome record per line instead of the table.
        #[arg(long)]
        json: bool,
        /// The sidecar instead (docs/bitcoin-core.md): each side's Bitcoin
        /// node is a separate `bitpunch node` on 127.0.0.1 behind its
        /// sidecar; Alice's dials Bob's `NODE_ID.punch` and `PEER_ID.punch`
        /// through her sidecar's SOCKS5 proxy, as Bitcoin Core would.
        #[arg(long, conflicts_with = "path")]
        sidecar: bool,
    },
    /// The NAT lab (root): emulated NATs in network namespaces.
    #[command(
        after_help = "Examples:\n  sudo bitpunch lab nat-check --all\n  sudo bitpunch lab run --tries 20 --out results/"
    )]
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
}

#[derive(Subcommand)]
pub(crate) enum LabCommand {
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
        /// Also (or, without --alice and --bob, only) cells with Alice and
        /// Bob behind one router of this profile (repeatable; `home` does
        /// not hairpin, `home/hairpin` does).
        #[arg(long, value_name = "PROFILE")]
        same_router: Vec<NatProfile>,
        /// Paths (repeatable; default: libp2p, native, stock-dcutr).
        #[arg(long, value_enum)]
        path: Vec<bitpunch::scenario::PathKind>,
        /// One-way delay on each NAT's internet link, ms.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// One-way delay on Bob's NAT's link instead (asymmetric paths), ms.
        #[arg(long, value_name = "MS")]
        bob_delay_ms: Option<u64>,
        /// Every cell over IPv6: the routers route it through a stateful
        /// firewall (drop, or reject for `*-rst` profiles) instead of NAT.
        #[arg(long)]
        ipv6: bool,
        /// Every cell dual-stack: relay and coordinator listen on both
        /// families and are named by their IPv4 address; the nodes bind
        /// both, learn their IPv6 address themselves and race the two.
        #[arg(long, conflicts_with = "ipv6")]
        dual_stack: bool,
        /// Each packet's delay is drawn from delay ± this, ms (packets may
        /// overtake each other, as with netem).
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// Loss on each NAT's internet link, percent.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Tries per path and NAT pair.
        #[arg(long, default_value_t = 20)]
        tries: u32,
        /// Output folder (default: results/lab-run-<unix time>).
        #[arg(long, conflicts_with = "resume")]
        out: Option<PathBuf>,
        /// Continue an interrupted run in DIR: the tries already in its
        /// records.jsonl are kept and not made again (same flags otherwise).
        #[arg(long, value_name = "DIR")]
        resume: Option<PathBuf>,
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
    /// A network that finds its own peers: NODES `bitpunch node` processes
    /// behind mixed NATs, one or two coordinators and one reachable node
    /// with few inbound slots, each node seeded with the reachable node's
    /// address only. Runs until every node holds its outbound target (or
    /// --seconds), prints sessions per node, how each was made, handoffs;
    /// writes records.jsonl and summary.json. Exit status 1 when it did not
    /// converge.
    Network {
        /// Nodes behind NATs.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Coordinators (1 or 2), each in a /16 of its own.
        #[arg(long, default_value_t = 2)]
        coordinators: usize,
        /// NAT presets the nodes are behind, in turn (repeatable; default:
        /// home, home-rst, full-cone, restricted-cone, port-restricted-rp, cgn).
        #[arg(long)]
        nat: Vec<String>,
        /// Outbound sessions each node keeps (the lab has three address
        /// groups: the reachable node's and one per coordinator).
        #[arg(long, default_value_t = 3)]
        target: usize,
        /// Inbound sessions the reachable node serves before it hands
        /// newcomers off.
        #[arg(long, default_value_t = 3)]
        inbound_slots: usize,
        /// Time the network has to converge.
        #[arg(long, default_value_t = 180)]
        seconds: u64,
        /// One-way delay on each link, ms.
        #[arg(long, default_value_t = 10)]
        delay_ms: u64,
        /// A hostile party first sends the reachable node this many fake
        /// "reachable via my coordinator" records.
        #[arg(long, default_value_t = 0)]
        flood: usize,
        /// The summary as one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// Output folder (default: results/lab-network-<unix time>).
        #[arg(long)]
        out: Option<PathBuf>,
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

#[derive(Args)]
pub(crate) struct RelayArgs {
    /// Serve Prometheus metrics on this address (GET /metrics): rust-libp2p's
    /// relay, swarm, identify and ping metrics.
    #[arg(long = "metrics", value_name = "ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// Where to listen (repeatable). The default is both families, so
    /// that dual-stack nodes learn their address in each; without IPv6 on
    /// the host, IPv4 alone.
    #[arg(long, default_values = ["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"])]
    pub(crate) listen: Vec<Multiaddr>,
    /// The address nodes dial (default: the listen address, when it is
    /// not a wildcard).
    #[arg(long)]
    pub(crate) external: Option<Multiaddr>,
    /// The relay's key file (default: <data-dir>/relay.key).
    #[arg(long)]
    pub(crate) key: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) data: DataArgs,
    #[arg(long, default_value_t = 128)]
    pub(crate) max_reservations: usize,
    #[arg(long, default_value_t = 16)]
    pub(crate) max_circuits: usize,
    /// Seconds a circuit may last.
    #[arg(long, default_value_t = 120)]
    pub(crate) max_circuit_duration: u64,
    #[arg(long, default_value_t = 1 << 17)]
    pub(crate) max_circuit_bytes: u64,
    /// Turn off the reservation and circuit rate limits (benchmarks only).
    #[arg(long)]
    pub(crate) no_rate_limits: bool,
    /// Do not answer NAT probes on the listen port + 1 (nodes behind
    /// symmetric NATs then cannot predict their ports through this relay).
    #[arg(long)]
    pub(crate) no_nat_probe: bool,
    /// Inbound connections still negotiating Noise/Yamux.
    #[arg(long, default_value_t = relay::ConnectionCaps::RELAY.max_pending_incoming)]
    pub(crate) max_pending_incoming: u32,
    /// Established inbound connections.
    #[arg(long, default_value_t = relay::ConnectionCaps::RELAY.max_established_incoming)]
    pub(crate) max_connections: u32,
    /// Established connections to one peer.
    #[arg(long, default_value_t = relay::ConnectionCaps::RELAY.max_established_per_peer)]
    pub(crate) max_connections_per_peer: u32,
    /// No new connections while the relay's resident memory is above this.
    #[arg(long, value_name = "MIB", default_value_t = relay::ConnectionCaps::RELAY.max_memory_mib)]
    pub(crate) max_memory_mib: usize,
    /// Connections from one IP address.
    #[arg(long, value_name = "N", default_value_t = AdmissionConfig::RELAY.max_per_ip)]
    pub(crate) max_inbound_per_ip: usize,
    /// Connections from one netgroup (IPv4 /16, IPv6 /32).
    #[arg(long, value_name = "N", default_value_t = AdmissionConfig::RELAY.max_per_netgroup)]
    pub(crate) max_inbound_per_netgroup: usize,
}

#[derive(Args)]
pub(crate) struct CoordinatorArgs {
    #[command(flatten)]
    pub(crate) listen: ListenArgs,
    /// Do not answer NAT probes on port + 1 (nodes then cannot ask this
    /// coordinator what NAT they are behind: `bitpunch nat`).
    #[arg(long)]
    pub(crate) no_nat_probe: bool,
    /// Connect requests one client connection may make per minute.
    #[arg(long, default_value_t = 30)]
    pub(crate) requests_per_minute: usize,
    /// Connect requests from one netgroup (IPv4 /16, IPv6 /32) per
    /// minute, across all its connections.
    #[arg(long, default_value_t = 60)]
    pub(crate) requests_per_netgroup_per_minute: usize,
    /// Orders one netgroup may cause to one registered node per minute
    /// (protects the node's own order budget from a few requesters).
    #[arg(long, default_value_t = 3)]
    pub(crate) orders_per_netgroup_per_target: usize,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long = "metrics", value_name = "ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// The coordinator's identity is <data-dir>/node.key: nodes name its
    /// id in the address they give out (ID@HOST:PORT).
    #[command(flatten)]
    pub(crate) data: DataArgs,
}
