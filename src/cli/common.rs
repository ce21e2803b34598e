//! What every command uses: logging, session settings, the settings file,
//! shutdown signals, resolving a coordinator.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use bitpunch::address::CoordinatorAddress;
use bitpunch::native::client::CoordinatorEndpoint;
use bitpunch::wire::SessionConfig;

use super::args::*;

/// `quiet_by_default`: commands whose output is a table (demo) log only
/// warnings unless -v asks for more.
pub(crate) fn init_logging(verbose: u8, quiet: bool, quiet_by_default: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) if quiet_by_default => "warn",
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

pub(crate) fn seconds(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("timeout {s} must be a positive number of seconds"))
}

pub(crate) fn session_config(net: &NetArgs, timeout: f64) -> anyhow::Result<SessionConfig> {
    let mut config = SessionConfig::new(net.network);
    config.transport = net.transport;
    config.handshake_timeout = seconds(timeout)?;
    Ok(config)
}

/// The command line, with `bitpunch node`'s settings file folded in (its
/// settings become the flags the user did not give).
pub(crate) fn command_line() -> anyhow::Result<Cli> {
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

/// Ctrl-C or SIGTERM (what systemd and `kill` send): the long-running
/// roles stop the same way on either.
pub(crate) async fn shutdown_signal() -> anyhow::Result<&'static str> {
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
/// The coordinator at its first address, and its first address of the
/// other family if its name has one (a dual-stack node registers over
/// both).
pub(crate) async fn resolve_coordinator(
    coordinator: &CoordinatorAddress,
    default_port: u16,
) -> anyhow::Result<(CoordinatorEndpoint, Option<std::net::SocketAddr>)> {
    let resolved = coordinator
        .resolve(default_port)
        .await
        .with_context(|| format!("cannot resolve {coordinator}"))?;
    let addr = resolved
        .first()
        .copied()
        .with_context(|| format!("{coordinator} resolved to no address"))?;
    let also = resolved
        .iter()
        .copied()
        .find(|a| a.is_ipv4() != addr.is_ipv4());
    Ok((
        CoordinatorEndpoint {
            id: coordinator.id,
            addr,
        },
        also,
    ))
}
