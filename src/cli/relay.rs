//! `bitpunch relay`.

use std::path::PathBuf;
use std::process::ExitCode;

use bitpunch::libp2p::relay;
use libp2p::Multiaddr;

use super::args::*;
use super::common::*;

pub(crate) async fn run_relay(
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
