//! `bitpunch coordinator`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use bitpunch::native::{coordinator, machine};
use bitpunch::net::AdmissionConfig;

use super::args::*;
use super::common::*;

pub(crate) async fn run_coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let CoordinatorArgs {
        listen,
        requests_per_minute,
        requests_per_netgroup_per_minute,
        orders_per_netgroup_per_target,
        metrics_addr,
        no_nat_probe,
        data,
    } = args;
    let machine = machine::CoordinatorConfig {
        requests_per_minute,
        requests_per_netgroup_per_minute,
        orders_per_netgroup_per_target,
        ..Default::default()
    };
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
    config.nat_probe = !no_nat_probe;
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
