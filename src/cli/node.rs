//! `bitpunch node`: the daemon.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use bitpunch::address::CoordinatorAddress;
use bitpunch::addrman::AddrMan;
use bitpunch::libp2p::{self as p2p, punch::Libp2pPunchContext, swarm::Libp2pNode};
use bitpunch::native::client::LinkConfig;
use bitpunch::native::{self, machine};
use bitpunch::net::AdmissionConfig;
use bitpunch::node::{Node, NodeConfig};
use bitpunch::peers::PeerBook;
use bitpunch::punch::budget::BudgetConfig;

use super::args::*;
use super::common::*;

pub(crate) async fn run_node(args: NodeArgs) -> anyhow::Result<ExitCode> {
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
        punch_birthdays_per_minute,
        punch_syns_per_minute,
        metrics_addr,
        bitcoind,
        socks5,
        seednode,
        outbound,
        inbound_slots,
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
    let mut session = session_config(&net, timeout)?;
    // Beside Bitcoin Core the node is Core's transport, not a peer: Core
    // keeps its own addresses and picks its own peers.
    let keeps_addresses = bitcoind.is_none();
    if keeps_addresses {
        // We relay reachability records, and take newcomers a full node
        // of ours hands us (we are reachable via our coordinators).
        session.services |= bitcoin::p2p::ServiceFlags::from(
            native::messages::NODE_PUNCH_REACH_BIT | native::messages::NODE_PUNCH_HANDOFF_BIT,
        );
    }
    // Parse everything the user typed before binding anything.
    let mut coordinators: Vec<(
        (
            native::client::CoordinatorEndpoint,
            Option<std::net::SocketAddr>,
        ),
        CoordinatorAddress,
    )> = Vec::new();
    for typed in &coordinator {
        let typed: CoordinatorAddress = typed.parse()?;
        let (endpoint, also) = resolve_coordinator(&typed, net.network.default_port()).await?;
        // One coordinator named once per family (IPv4 and IPv6 literals):
        // one registration over each, as for a name that resolves to both.
        let named_before = coordinators
            .iter_mut()
            .find(|((earlier, _), _)| earlier.id == endpoint.id);
        if let Some(((earlier, earlier_also), _)) = named_before {
            let other_family = earlier.addr.is_ipv4() != endpoint.addr.is_ipv4();
            anyhow::ensure!(
                other_family && earlier_also.is_none(),
                "--coordinator {typed}: coordinator {} is named twice; name it once, or once \
                 per address family (ID@IPv4:PORT and ID@[IPv6]:PORT)",
                endpoint.id
            );
            *earlier_also = Some(endpoint.addr);
            continue;
        }
        coordinators.push(((endpoint, also), typed));
    }
    let mut seeds = Vec::new();
    for typed in &seednode {
        seeds.push(resolve_seed(typed, net.network.default_port()).await?);
    }
    // The data directory is this process's until it ends: its keys, and the
    // control socket `bitpunch status|peers|disconnect` talk to.
    let data = data.open()?;
    let key = Arc::new(data.node_key()?);
    let book = if keeps_addresses {
        let book = PeerBook::load(
            key.id(),
            AddrMan::path_in(data.path()),
            p2p_args.allow_private_addrs,
        )?;
        for seed in &seeds {
            book.seed(*seed);
        }
        Some(Arc::new(book))
    } else {
        None
    };
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
        birthdays: punch_birthdays_per_minute,
    };
    config.bitcoind = bitcoind;
    config.addresses = book.clone();
    anyhow::ensure!(
        inbound_slots.is_none() || keeps_addresses,
        "--inbound-slots hands newcomers off through the address book, which a sidecar \
         (--bitcoind) does not keep"
    );
    config.inbound_slots = inbound_slots;
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
    let mut metrics = bitpunch::metrics::Metrics::node();
    // rust-libp2p's own metrics come with the swarm, when there is one.
    let libp2p_metrics =
        (metrics_addr.is_some() && !relays.is_empty()).then(|| Arc::new(metrics.libp2p()));
    let metrics = Arc::new(metrics);
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
    // libp2p runs when the node is reachable through relays; a failure to
    // start it stops the node before it serves anyone.
    let libp2p = if relays.is_empty() {
        None
    } else {
        let libp2p = Arc::new(Libp2pNode::start_with(
            data.libp2p_keypair()?,
            node.shared_port().clone(),
            node.router(),
            p2p::swarm::Libp2pOptions {
                metrics: libp2p_metrics,
                ..p2p::swarm::Libp2pOptions::stock_dcutr(p2p_args.stock_dcutr)
            },
        )?);
        tracing::info!(peer_id = %libp2p.peer_id, "libp2p started");
        Some(libp2p)
    };
    let punch_context = libp2p.as_ref().map(|libp2p| {
        Libp2pPunchContext::for_node(
            &node,
            libp2p.clone(),
            session.clone(),
            p2p_args.allow_private_addrs,
        )
    });
    let relayed = async {
        let (Some(libp2p), Some(ctx)) = (&libp2p, &punch_context) else {
            return std::future::pending::<()>().await;
        };
        // What `bitpunch status` says about each relay follows its
        // reservation.
        let reservations = futures::future::join_all(relays.iter().map(|r| {
            let relay = r.to_string();
            let (on_reserved, on_lost) = (handle.clone(), handle.clone());
            let lost_relay = relay.clone();
            p2p::keep_reservation_reporting(
                libp2p.clone(),
                r.clone(),
                move |circuit| {
                    on_reserved.set_reservation(&relay, Some(circuit.to_string()));
                    say!("reachable as {circuit}")
                },
                move || on_lost.set_reservation(&lost_relay, None),
            )
        }));
        let answer = if p2p_args.stock_dcutr {
            // rust-libp2p's DCUtR does the work; we only report it.
            let relay_peers = relays.iter().filter_map(p2p::relay_peer).collect();
            futures::future::Either::Left(report_stock_dcutr(libp2p.events(), relay_peers))
        } else {
            futures::future::Either::Right(p2p::serve_relayed(
                ctx.clone(),
                Duration::from_secs(20 * 60),
                records.clone(),
            ))
        };
        tokio::join!(reservations, answer);
    };
    // `bitpunch connect` on this machine goes through this node.
    let connector = bitpunch::connect::NodeConnector {
        port: node.shared_port().clone(),
        router: node.router().clone(),
        owner: node.session_owner(),
        handle: handle.clone(),
        key: key.clone(),
        session: session.clone(),
        idle: Duration::from_secs(20 * 60),
        // Our exchange, not stock DCUtR, can punch for others.
        libp2p: punch_context.clone().filter(|_| !p2p_args.stock_dcutr),
        records: records.clone(),
    };
    handle.set_connector(connector.clone());
    if let Some(bitcoind) = bitcoind {
        say!("splicing to bitcoind {bitcoind}");
    }
    // The proxy runs as long as the node; its task ends with this one.
    let _socks5 = match socks5 {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --socks5 {addr}"))?;
            let local = listener.local_addr()?;
            if !local.ip().is_loopback() {
                tracing::warn!(%local, "the SOCKS5 proxy listens beyond loopback: anyone who reaches it can make this node punch and connect");
            }
            say!("socks5 listening {local}");
            Some(bitpunch::native::AbortOnDrop(
                tokio::spawn(bitpunch::sidecar::socks::serve(
                    listener,
                    connector.clone(),
                    Default::default(),
                ))
                .abort_handle(),
            ))
        }
        None => None,
    };
    // The node asks once what NAT it is behind, after its first
    // registration (`bitpunch status` shows it; `bitpunch nat` asks again).
    let nat_asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Dual stack: the same key over the coordinator's other family, where
    // its name has one and so does our port; peers then race both.
    let second_family: Vec<(native::client::CoordinatorEndpoint, String)> = coordinators
        .iter()
        .filter_map(|((coordinator, also), typed)| {
            let addr = native::other_family_of(&node, *coordinator, *also)?;
            Some((
                native::client::CoordinatorEndpoint {
                    addr,
                    ..*coordinator
                },
                typed.to_string(),
            ))
        })
        .collect();
    let link_config = |second_family: bool| LinkConfig {
        session: session.clone(),
        client: machine::ClientConfig {
            second_family,
            ..order_limits.clone()
        },
        ping_interval: native::client::LINK_PING_INTERVAL,
        refusals: Some(handle.order_refusals()),
    };
    let second_registrations = second_family.into_iter().map(|(coordinator, typed)| {
        let link_config = link_config(true);
        let handle = handle.clone();
        let family = if coordinator.addr.is_ipv6() {
            "IPv6"
        } else {
            "IPv4"
        };
        let label = format!("{typed} over {family}");
        native::stay_registered(
            &node,
            coordinator,
            key.clone(),
            link_config,
            Duration::from_secs(20 * 60),
            records.clone(),
            move |event| match event {
                native::RegistrationEvent::Registered { id, observed, .. } => {
                    handle.set_other_family_registration(
                        &label,
                        Some((format!("{id}@{typed}"), observed)),
                    );
                    say!("reachable over {family} too, seen at {observed}");
                }
                native::RegistrationEvent::Lost { .. }
                | native::RegistrationEvent::Displaced { .. } => {
                    handle.set_other_family_registration(&label, None);
                }
                native::RegistrationEvent::Failed { .. } => {}
            },
        )
    });
    // A registration, configured or made on demand for an outbound
    // address that names a coordinator: what others reach us as there is
    // shown by `status` and, with an address book, told to our peers.
    let register_with = |coordinator: native::client::CoordinatorEndpoint, typed: String| {
        let nat_asked = nat_asked.clone();
        let link_config = link_config(false);
        let handle = handle.clone();
        let book = book.clone();
        let key_for_records = key.clone();
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
                    if let Some(book) = &book {
                        book.advertise(&key_for_records, coordinator.id, Some(coordinator.addr));
                    }
                    say!("reachable as {address}");
                    if !nat_asked.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        let handle = handle.clone();
                        tokio::spawn(async move {
                            match handle.nat().await {
                                Ok(class) => tracing::info!(nat = ?class, "classified our NAT"),
                                Err(e) => {
                                    tracing::info!(error = %format!("{e:#}"), "could not classify our NAT")
                                }
                            }
                        });
                    }
                }
                native::RegistrationEvent::Lost { .. }
                | native::RegistrationEvent::Displaced { .. } => {
                    handle.set_registration(&typed, None);
                    if let Some(book) = &book {
                        book.advertise(&key_for_records, coordinator.id, None);
                    }
                }
                native::RegistrationEvent::Failed { .. } => {}
            },
        )
    };
    let configured: std::collections::HashSet<_> =
        coordinators.iter().map(|((c, _), _)| c.id).collect();
    let registrations: Vec<_> = coordinators
        .into_iter()
        .map(|((coordinator, _), typed)| register_with(coordinator, typed.to_string()))
        .collect();
    // Coordinators that outbound addresses name, registered with when the
    // outbound manager first needs one (a bounded number).
    let (register_tx, mut register_rx) = tokio::sync::mpsc::channel(8);
    let on_demand = async {
        use futures::StreamExt;
        let mut running = futures::stream::FuturesUnordered::new();
        let mut known = configured;
        loop {
            tokio::select! {
                Some(coordinator) = register_rx.recv() => {
                    let coordinator: native::client::CoordinatorEndpoint = coordinator;
                    if known.len() >= MAX_COORDINATORS || !known.insert(coordinator.id) {
                        continue;
                    }
                    tracing::info!(%coordinator, "registering with a coordinator an outbound address names");
                    running.push(register_with(coordinator, coordinator.to_string()));
                }
                Some(()) = running.next(), if !running.is_empty() => {}
                else => std::future::pending::<()>().await,
            }
        }
    };
    let outbound_state = Arc::new(bitpunch::outbound::OutboundState::default());
    let manage_outbound = async {
        match &book {
            Some(book) if outbound > 0 => {
                handle.set_outbound(outbound_state.clone());
                bitpunch::outbound::run(
                    bitpunch::outbound::OutboundConfig {
                        target: outbound,
                        ..Default::default()
                    },
                    book.clone(),
                    connector.clone(),
                    register_tx,
                    outbound_state.clone(),
                    key.id(),
                )
                .await
            }
            _ => std::future::pending::<()>().await,
        }
    };
    // The book is saved every minute (and at the end), and our records
    // signed again before they expire.
    let upkeep = async {
        let Some(book) = &book else {
            return std::future::pending::<()>().await;
        };
        let mut minute = tokio::time::interval(Duration::from_secs(60));
        let refresh = Duration::from_secs(native::reach::REACH_REFRESH_SECS);
        let mut refreshed = tokio::time::Instant::now();
        loop {
            minute.tick().await;
            book.with_addrman(|m| m.expire(bitpunch::clock::unix_now()));
            if let Err(e) = book.save() {
                tracing::warn!(error = %format!("{e:#}"), "could not save the address book");
            }
            if refreshed.elapsed() >= refresh {
                book.refresh(&key);
                refreshed = tokio::time::Instant::now();
            }
        }
    };
    // Displaced (the key registered from elsewhere), the node stops asking
    // that coordinator but keeps serving everything else.
    let serve = async {
        tokio::join!(
            futures::future::join_all(registrations),
            futures::future::join_all(second_registrations)
        );
        std::future::pending::<()>().await
    };
    tokio::select! {
        r = shutdown_signal() => tracing::info!(signal = r?, "shutting down"),
        () = serve => {}
        () = relayed => {}
        () = print_records => {}
        () = on_demand => {}
        () = manage_outbound => {}
        () = upkeep => {}
    }
    if let Some(book) = &book {
        if let Err(e) = book.save() {
            tracing::warn!(error = %format!("{e:#}"), "could not save the address book");
        }
    }
    // Every session ends with the reason in the log; dropping the node and
    // its links then closes the coordinator links (an RST: the coordinator
    // frees the registration at once) and the relay connections (the
    // reservations go with them).
    let closed = handle.close_all("the node is shutting down");
    tracing::info!(sessions = closed, "stopped");
    Ok(ExitCode::SUCCESS)
}

/// Coordinators the node registers with in all, configured and on demand:
/// addresses naming more are not connected to.
const MAX_COORDINATORS: usize = 8;

/// A `--seednode`: a direct address, resolved.
async fn resolve_seed(typed: &str, default_port: u16) -> anyhow::Result<std::net::SocketAddr> {
    let parsed: bitpunch::address::PeerAddress = typed
        .parse()
        .with_context(|| format!("--seednode {typed}"))?;
    anyhow::ensure!(
        matches!(parsed, bitpunch::address::PeerAddress::Direct { .. }),
        "--seednode {typed}: a seed is connected to directly: HOST:PORT or [IPv6]:PORT"
    );
    let resolved = parsed
        .resolve(default_port)
        .await
        .with_context(|| format!("--seednode {typed}: cannot resolve it"))?;
    resolved
        .first()
        .copied()
        .with_context(|| format!("--seednode {typed} resolved to no address"))
}

/// What stock DCUtR did, on stdout for scripts and the interop tests: every
/// direct connection to a peer that is not one of our relays, and DCUtR's
/// own verdict.
pub(crate) async fn report_stock_dcutr(
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
