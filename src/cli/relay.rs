//! `bitpunch relay`.

use std::time::Duration;

use bitpunch::net::AdmissionConfig;
use std::process::ExitCode;

use bitpunch::libp2p::relay;

use super::args::*;
use super::common::*;

pub(crate) async fn run_relay(args: RelayArgs) -> anyhow::Result<ExitCode> {
    let RelayArgs {
        metrics_addr,
        listen,
        external,
        key,
        data,
        max_reservations,
        max_circuits,
        max_circuit_duration,
        max_circuit_bytes,
        no_rate_limits,
        no_nat_probe,
        max_pending_incoming,
        max_connections,
        max_connections_per_peer,
        max_memory_mib,
        max_inbound_per_ip,
        max_inbound_per_netgroup,
    } = args;
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
        nat_probe: !no_nat_probe,
        ..Default::default()
    };
    if no_rate_limits {
        limits.rate_limits = None;
    }
    let mut metrics = bitpunch::metrics::Metrics::relay();
    if metrics_addr.is_some() {
        limits.metrics = Some(std::sync::Arc::new(metrics.libp2p()));
    }
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
    let server = relay::RelayServer::start(keypair, &listen, external, limits).await?;
    say!("relay listening {}", server.address);
    tracing::info!(address = %server.address, "relay listening");
    if let Some(addr) = metrics_addr {
        let (local, _) =
            bitpunch::metrics::serve(addr, std::sync::Arc::new(move || metrics.encode())).await?;
        say!("metrics listening {local}");
    }
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "shutting down");
    Ok(ExitCode::SUCCESS)
}
