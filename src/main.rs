//! The `bitpunch` command line: parses, builds a config, calls the library.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::time::Instant;

use bitpunch::address::PeerAddress;
use bitpunch::node::{Node, NodeConfig};
use bitpunch::report::{Outcome, Path};
use bitpunch::wire::{self, Network, SessionConfig, SessionRole, TransportPolicy};

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

#[derive(Subcommand)]
enum Command {
    /// Serve inbound v1 and v2 peers on one shared port until Ctrl-C.
    Node {
        #[command(flatten)]
        net: NetArgs,
        /// The shared TCP port (default: the network's port).
        #[arg(long)]
        port: Option<u16>,
        /// Listen on this address only (default: every IPv4 and IPv6 address).
        #[arg(long)]
        bind: Option<IpAddr>,
        /// Seconds a peer has to finish the handshake.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Open one session to ADDRESS, exchange version/verack/ping, report.
    Connect {
        /// HOST:PORT, [IPv6]:PORT, or HOST (the network's default port).
        address: String,
        #[command(flatten)]
        net: NetArgs,
        /// Print one outcome record (JSON) instead of a summary.
        #[arg(long)]
        json: bool,
        /// Seconds for TCP connect, and again for the handshake up to pong.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Node {
            net,
            port,
            bind,
            timeout,
        } => run_node(net, port, bind, timeout).await,
        Command::Connect {
            address,
            net,
            json,
            timeout,
        } => run_connect(&address, net, json, timeout).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run_node(
    net: NetArgs,
    port: Option<u16>,
    bind: Option<IpAddr>,
    timeout: f64,
) -> anyhow::Result<ExitCode> {
    let session = session_config(&net, timeout)?;
    let mut config = NodeConfig::new(session);
    config.port = port.unwrap_or(net.network.default_port());
    config.bind_ip = bind;
    let node = Node::start(config).with_context(|| {
        format!(
            "cannot listen on port {}",
            port.unwrap_or(net.network.default_port())
        )
    })?;
    // One line per listener on stdout, so that scripts can find the port.
    for addr in node.local_addrs() {
        println!("listening {addr}");
        tracing::info!(%addr, network = %net.network, transport = ?net.transport, "listening");
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    tracing::info!("shutting down");
    Ok(ExitCode::SUCCESS)
}

async fn run_connect(
    address: &str,
    net: NetArgs,
    json: bool,
    timeout: f64,
) -> anyhow::Result<ExitCode> {
    let target: PeerAddress = address.parse()?;
    let config = session_config(&net, timeout)?;
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
    if json {
        println!("{}", record.to_json());
    } else {
        print_summary(&record);
    }
    Ok(if record.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
        "connected to {remote} from {}",
        r.local.as_deref().unwrap_or("?")
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
    println!(
        "  timeline    tcp {}, handshake {}, verack {}, pong {}",
        ms(r.t_ms.tcp),
        ms(r.t_ms.handshake),
        ms(r.t_ms.verack),
        ms(r.t_ms.pong)
    );
    println!("  rtt         {}", ms(r.rtt_ms));
    println!("  bytes       {}", r.bytes.direct);
}
