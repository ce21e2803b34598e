//! `bitpunch connect ADDRESS`: through a running node, or standalone.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::time::Instant;

use bitpunch::address::PeerAddress;
use bitpunch::identity::{NodeId, NodeKey};
use bitpunch::libp2p::{self as p2p, punch::Libp2pPunchContext, swarm::Libp2pNode};
use bitpunch::native::client::CoordinatorEndpoint;
use bitpunch::native::{self};
use bitpunch::node::{Node, NodeConfig};
use bitpunch::report::{Outcome, Path};
use bitpunch::wire::{self, SessionConfig, SessionRole};
use libp2p::Multiaddr;

use super::args::*;
use super::common::*;

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_connect(
    address: &str,
    net: NetArgs,
    json: bool,
    timeout: f64,
    port: u16,
    proxy: Option<std::net::SocketAddr>,
    p2p_args: P2pArgs,
    data: DataArgs,
) -> anyhow::Result<ExitCode> {
    let target: PeerAddress = address.parse()?;
    let config = session_config(&net, timeout)?;
    if let Some(proxy) = proxy {
        let PeerAddress::Direct { host, port } = &target else {
            return Err(bitpunch::address::AddressError {
                input: address.to_string(),
                problem: "--proxy connects to HOST:PORT (through a sidecar: NODE_ID.punch:PORT)"
                    .into(),
            }
            .into());
        };
        let port = port.unwrap_or(net.network.default_port());
        let record = connect_proxied(proxy, &host.to_string(), port, &config).await;
        return Ok(finish(record, json));
    }
    // A node running on this data directory makes the connection itself,
    // from its port and over its open coordinator session, and keeps it.
    if bitpunch::control::node_serves(&data.dir()).await && through_node_can(&target, &data).await {
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

/// A session through a SOCKS5 proxy, as Bitcoin Core makes one with -proxy.
async fn connect_proxied(
    proxy: std::net::SocketAddr,
    host: &str,
    port: u16,
    config: &SessionConfig,
) -> Outcome {
    let outcome = wire::connect_proxied(proxy, host, port, config, Instant::now()).await;
    let mut record = match &outcome.result {
        Ok(session) => {
            let mut record = Outcome::from_session(Path::Direct, &session.report);
            record.bytes.direct = outcome.bytes_total;
            record
        }
        Err(e) => Outcome::from_error(Path::Direct, SessionRole::Initiator, None, e),
    };
    record.via = Some(format!("socks5 {proxy}"));
    // The peer, as asked for; the socket's far end is the proxy.
    record.remote = Some(format!("{host}:{port}"));
    record
}

pub(crate) fn finish(record: Outcome, json: bool) -> ExitCode {
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
pub(crate) async fn connect_libp2p(
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
pub(crate) async fn connect_native(
    peer: NodeId,
    (coordinator, also): (CoordinatorEndpoint, Option<std::net::SocketAddr>),
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
    Ok(native::connect(
        &node,
        (coordinator, also),
        key,
        session,
        peer,
        allow_private,
    )
    .await)
}

pub(crate) fn print_summary(r: &Outcome) {
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

/// Whether the running node can make this connection: anything but a
/// circuit, and a circuit when it runs our libp2p exchange.
async fn through_node_can(target: &PeerAddress, data: &DataArgs) -> bool {
    if !matches!(target, PeerAddress::Circuit(_)) {
        return true;
    }
    bitpunch::control::call(&data.dir(), "status", serde_json::Value::Null)
        .await
        .ok()
        .and_then(|s| {
            s.get("punches_circuits")
                .and_then(serde_json::Value::as_bool)
        })
        .unwrap_or(false)
}
