//! The `bitpunch` command line: parses, builds a config, calls the library.

use std::process::ExitCode;

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

mod cli;

use cli::{
    args::*, common::*, connect::*, control::*, coordinator::*, demo::*, lab::*, node::*, relay::*,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match command_line() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let table_output = matches!(cli.command, Command::Demo { .. });
    init_logging(cli.verbose, cli.quiet, table_output);
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
            proxy,
            p2p,
            data,
        } => run_connect(&address, net, json, timeout, port, proxy, p2p, data).await,
        Command::Relay(args) => run_relay(args).await,
        Command::Coordinator(args) => run_coordinator(args).await,
        Command::Lab { command } => run_lab(command).await,
        Command::Status { json, data } => run_status(json, data).await,
        Command::Peers { json, data } => run_peers(json, data).await,
        Command::Nat { json, data } => run_nat(json, data).await,
        Command::Disconnect { peer, data } => run_disconnect(&peer, data).await,
        Command::Demo {
            nat,
            delay_ms,
            jitter_ms,
            tries,
            path,
            json,
            sidecar,
        } => match sidecar {
            true => run_sidecar_demo(nat, (delay_ms, jitter_ms), tries, json).await,
            false => run_demo(nat, (delay_ms, jitter_ms), tries, path, json).await,
        },
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
