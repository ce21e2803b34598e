//! `bitpunch lab network`: a small Bitcoin network of `bitpunch node`
//! processes behind mixed NATs, that must find its own peers.
//!
//! One reachable node (few inbound slots), one or two coordinators, each in
//! its own /16 so that each is one address group, and `nodes` nodes behind
//! NAT routers of the given presets, each registered with one coordinator
//! and seeded with the reachable node's address only. Everything else —
//! learning addresses, connecting via coordinators, being handed off by the
//! full reachable node — the nodes do by themselves; the lab only watches
//! their `status` until each holds its target of outbound sessions, or the
//! time is up. Optionally a hostile party floods the reachable node with
//! fake "reachable via my coordinator" records.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::{Host, Lab, LinkShape, NatProfile};

/// The NAT mix the network gets by default: endpoint-independent mappings
/// of every filtering, RST and carrier-grade included. No symmetric NAT: a
/// node behind one punches only where its next port can be predicted, and
/// in a network its port moves with every connection it makes (a
/// sequential NAT then looks random to its peers); `--nat symmetric-seq`
/// shows it.
pub const DEFAULT_PRESETS: [&str; 6] = [
    "home",
    "home-rst",
    "full-cone",
    "restricted-cone",
    "port-restricted-rp",
    "cgn",
];

const PORT: &str = "18444";
/// How long the flooder's records have left to live when it sends them.
const FLOOD_LIFETIME: Duration = Duration::from_secs(45);
const COORDINATOR_PORT: &str = "18555";

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub nodes: usize,
    /// 1 or 2.
    pub coordinators: usize,
    pub presets: Vec<String>,
    /// Outbound sessions each node keeps.
    pub target: usize,
    /// Inbound sessions the reachable node serves before it hands off.
    pub inbound_slots: usize,
    /// How long the network has to converge.
    pub seconds: u64,
    /// One-way delay on each NAT's and public host's link.
    pub delay_ms: u64,
    /// Fake records a hostile party sends the reachable node (0: none).
    pub flood: usize,
    pub out: PathBuf,
}

/// One node at the end (or at convergence).
#[derive(Debug, Clone, Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub nat: String,
    /// The coordinator it was told to register with.
    pub coordinator: String,
    pub outbound: usize,
    pub target: usize,
    /// The most outbound sessions it holds in one netgroup.
    pub max_per_group: usize,
    /// Its outbound sessions: address, how made, netgroup.
    pub sessions: Vec<Value>,
    pub attempts: u64,
    pub failures: u64,
    pub handoffs_followed: u64,
    /// Addresses it knows, and of those reachable via the flooder's
    /// coordinator.
    pub addresses: u64,
    pub flooded_addresses: u64,
    /// The most it held at any time of the run.
    pub flooded_addresses_peak: u64,
    /// Outbound sessions via the flooder's coordinator.
    pub flooded_sessions: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkSummary {
    pub nodes: Vec<NodeSummary>,
    /// Newcomers the reachable node handed off.
    pub handoffs: u64,
    /// Every node at its target.
    pub converged: bool,
    pub seconds_to_converge: Option<f64>,
    pub seconds: f64,
    /// What the reachable node served.
    pub reachable_inbound_sessions: u64,
    /// Records the flooder sent, and of those the reachable node holds at
    /// the end (the rest were never stored, or died).
    pub flood: usize,
    pub reachable_flooded_addresses: u64,
    pub reachable_flooded_addresses_peak: u64,
}

/// Child processes write their lines here, by name.
fn read_lines(name: String, child: &mut std::process::Child) -> Result<mpsc::Receiver<String>> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().context("piped stdout")?;
    std::thread::Builder::new()
        .name(format!("lab-{name}"))
        .spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        })?;
    Ok(rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str, what: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .with_context(|| format!("{what} did not print `{prefix}…`"))?;
        if let Some(rest) = line.strip_prefix(prefix) {
            return Ok(rest.to_string());
        }
    }
}

struct Member {
    name: String,
    nat: String,
    coordinator: String,
    data: PathBuf,
    output: mpsc::Receiver<String>,
}

/// Builds the network, lets it run, and returns what it became. The
/// records the nodes print go to `out/records.jsonl`.
pub async fn run(bin: &Path, config: &NetworkConfig) -> Result<NetworkSummary> {
    if !(1..=2).contains(&config.coordinators) {
        bail!("--coordinators: 1 or 2 (each gets a /16 of its own)");
    }
    if config.nodes == 0 || config.nodes > 48 {
        bail!("--nodes: 1 to 48");
    }
    let presets: Vec<(String, NatProfile)> = config
        .presets
        .iter()
        .map(|p| {
            let profile = p
                .parse::<NatProfile>()
                .map_err(|e| anyhow::anyhow!("--nat {p}: {e}"))?;
            Ok((p.clone(), profile))
        })
        .collect::<Result<_>>()?;
    if presets.is_empty() {
        bail!("--nat: at least one preset");
    }
    // Each process's log goes to out/logs/NAME.log.
    let logs = config.out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    // Data directories hold control sockets, whose paths must be short.
    let scratch = std::env::temp_dir().join(format!("bpnet{}", std::process::id()));
    let _scratch_guard = RemoveOnDrop(scratch.clone());
    let mut lab = Lab::new()?;
    let shape = LinkShape {
        delay: Duration::from_millis(config.delay_ms),
        ..Default::default()
    };

    let reachable = lab.add_public_host("reachable")?;
    let mut coordinator_hosts = Vec::new();
    for k in 0..config.coordinators {
        let network = u8::try_from(k + 1).unwrap_or(1);
        coordinator_hosts.push(lab.add_public_host_in(&format!("coord{k}"), network)?);
    }
    lab.set_link_shape(&reachable.link, shape)?;
    for h in &coordinator_hosts {
        lab.set_link_shape(&h.link, shape)?;
    }

    let mut coordinators = Vec::new();
    for (k, host) in coordinator_hosts.iter().enumerate() {
        let data = scratch.join(format!("c{k}"));
        let data_arg = data.display().to_string();
        let child = lab.spawn_logged(
            host,
            &bin.display().to_string(),
            &[
                "coordinator",
                "--port",
                COORDINATOR_PORT,
                "--network",
                "regtest",
                "--data-dir",
                &data_arg,
            ],
            &logs.join(format!("coord{k}.log")),
        )?;
        let out = read_lines(format!("coord{k}"), child)?;
        let id = wait_line(&out, "coordinator id ", "a coordinator")?;
        wait_line(&out, "coordinator listening ", "a coordinator")?;
        coordinators.push(format!("{id}@{}:{COORDINATOR_PORT}", host.ip));
    }

    let reachable_data = scratch.join("r");
    let reachable_data_arg = reachable_data.display().to_string();
    let slots = config.inbound_slots.to_string();
    let child = lab.spawn_logged(
        &reachable,
        &bin.display().to_string(),
        &[
            "node",
            "--port",
            PORT,
            "--network",
            "regtest",
            "--outbound",
            "0",
            "--inbound-slots",
            &slots,
            "--data-dir",
            &reachable_data_arg,
        ],
        &logs.join("reachable.log"),
    )?;
    let reachable_out = read_lines("reachable".into(), child)?;
    wait_line(&reachable_out, "listening ", "the reachable node")?;
    let seed = format!("{}:{PORT}", reachable.ip);

    // The flooder's claimed coordinator shares the reachable node's /16
    // (the lab has three): what it claims is one group however many.
    let mut flooder = None;
    if config.flood > 0 {
        let host = lab.add_public_host("flooder")?;
        lab.set_link_shape(&host.link, shape)?;
        let runtime = lab.runtime(&host)?;
        let to = std::net::SocketAddr::new(reachable.ip.into(), PORT.parse()?);
        let at = std::net::SocketAddr::new(host.ip.into(), 8333);
        let count = config.flood;
        runtime
            .run(async move { flood(to, at, count).await })
            .await
            .context("the flooder")?;
        // Its runtime holds the flooding session open until the end.
        flooder = Some((runtime, at.to_string()));
    }
    let flooder_at = flooder.as_ref().map(|(_, at)| at.clone());

    let mut members = Vec::new();
    let target = config.target.to_string();
    for i in 0..config.nodes {
        let (preset, profile) = &presets[i % presets.len()];
        let mut router = lab.add_nat(&format!("r{i}"), *profile)?;
        lab.set_link_shape(&router.link, shape)?;
        let host: Host = lab.add_host_behind(&mut router, &format!("n{i}"))?;
        let coordinator = coordinators[i % coordinators.len()].clone();
        let data = scratch.join(format!("n{i}"));
        let data_arg = data.display().to_string();
        let child = lab.spawn_logged(
            &host,
            &bin.display().to_string(),
            &[
                "node",
                "--port",
                PORT,
                "--network",
                "regtest",
                "--coordinator",
                &coordinator,
                "--seednode",
                &seed,
                "--outbound",
                &target,
                "--data-dir",
                &data_arg,
                "--json",
            ],
            &logs.join(format!("n{i}.log")),
        )?;
        let output = read_lines(format!("n{i}"), child)?;
        members.push(Member {
            name: format!("n{i}"),
            nat: preset.clone(),
            coordinator,
            data,
            output,
        });
    }

    let started = Instant::now();
    let limit = Duration::from_secs(config.seconds);
    let mut records = Vec::new();
    let mut converged_at = None;
    let mut flood_peaks = vec![0u64; members.len()];
    let mut reachable_flood_peak = 0u64;
    let summary = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for m in &members {
            while let Ok(line) = m.output.try_recv() {
                if line.starts_with('{') {
                    records.push(line);
                }
            }
        }
        let mut nodes = Vec::new();
        for (m, peak) in members.iter().zip(flood_peaks.iter_mut()) {
            let mut node = node_summary(m, config.target, flooder_at.as_deref()).await;
            *peak = (*peak).max(node.flooded_addresses);
            node.flooded_addresses_peak = *peak;
            nodes.push(node);
        }
        if let Some(at) = &flooder_at {
            let status = crate::control::call(&reachable_data, "status", Value::Null)
                .await
                .unwrap_or(Value::Null);
            let held = status["addresses"]["via_coordinators"][at.as_str()]
                .as_u64()
                .unwrap_or(0);
            reachable_flood_peak = reachable_flood_peak.max(held);
        }
        let at_target = nodes.iter().all(|n| n.outbound >= n.target);
        if at_target && converged_at.is_none() {
            converged_at = Some(started.elapsed().as_secs_f64());
        }
        // Once converged it runs a few seconds more: a slot that was
        // about to break shows. A flood's records must have died first.
        let flood_over =
            config.flood == 0 || started.elapsed() > FLOOD_LIFETIME + Duration::from_secs(5);
        let done =
            flood_over && converged_at.is_some_and(|t| started.elapsed().as_secs_f64() > t + 5.0);
        if done || started.elapsed() >= limit {
            let reachable_status =
                crate::control::call(&reachable_data, "status", Value::Null).await?;
            let book = &reachable_status["addresses"];
            let reachable_flooded = flooder_at
                .as_deref()
                .and_then(|at| book["via_coordinators"][at].as_u64())
                .unwrap_or(0);
            break NetworkSummary {
                reachable_flooded_addresses: reachable_flooded,
                reachable_flooded_addresses_peak: reachable_flood_peak.max(reachable_flooded),
                handoffs: book["handoffs_given"].as_u64().unwrap_or(0),
                reachable_inbound_sessions: book["inbound_sessions"].as_u64().unwrap_or(0),
                converged: at_target,
                seconds_to_converge: converged_at,
                seconds: started.elapsed().as_secs_f64(),
                nodes,
                flood: config.flood,
            };
        }
    };
    let mut file = String::new();
    for r in records {
        file.push_str(&r);
        file.push('\n');
    }
    std::fs::write(config.out.join("records.jsonl"), file)?;
    std::fs::write(
        config.out.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    drop(flooder);
    drop(lab);
    Ok(summary)
}

async fn node_summary(m: &Member, target: usize, flooder_at: Option<&str>) -> NodeSummary {
    let status = crate::control::call(&m.data, "status", Value::Null)
        .await
        .unwrap_or(Value::Null);
    let outbound = &status["outbound"];
    let sessions: Vec<Value> = outbound["sessions"].as_array().cloned().unwrap_or_default();
    let book = &status["addresses"];
    let via_flooder = |s: &&Value| {
        flooder_at.is_some_and(|at| {
            s["address"]
                .as_str()
                .is_some_and(|a| a.ends_with(&format!("@{at}")))
        })
    };
    NodeSummary {
        name: m.name.clone(),
        nat: m.nat.clone(),
        coordinator: m.coordinator.clone(),
        outbound: sessions.len(),
        target,
        max_per_group: outbound["max_per_group"].as_u64().unwrap_or(0) as usize,
        flooded_sessions: sessions.iter().filter(via_flooder).count(),
        sessions,
        attempts: outbound["attempts"].as_u64().unwrap_or(0),
        failures: outbound["failures"].as_u64().unwrap_or(0),
        handoffs_followed: outbound["handoffs_followed"].as_u64().unwrap_or(0),
        addresses: book["new"].as_u64().unwrap_or(0) + book["tried"].as_u64().unwrap_or(0),
        flooded_addresses: flooder_at
            .and_then(|at| book["via_coordinators"][at].as_u64())
            .unwrap_or(0),
        flooded_addresses_peak: 0,
    }
}

/// A hostile party: `count` records of made-up nodes "reachable via" a
/// coordinator key of its own at `at`, sent to `to` as fast as it takes
/// them.
async fn flood(to: std::net::SocketAddr, at: std::net::SocketAddr, count: usize) -> Result<()> {
    use crate::native::messages::NativeMessage;
    use crate::native::reach::{ReachRecord, MAX_REACH_RECORDS};
    let mut config = crate::wire::SessionConfig::new(crate::wire::Network::Regtest);
    config.services =
        bitcoin::p2p::ServiceFlags::from(crate::native::messages::NODE_PUNCH_REACH_BIT);
    let mut session = crate::wire::connect(to, &config, None, tokio::time::Instant::now())
        .await
        .result
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let coordinator = crate::identity::NodeKey::generate().id();
    // Signed so that they die [`FLOOD_LIFETIME`] from now: the run shows
    // them gone without waiting the hour a record lives.
    let since = crate::clock::unix_now()
        .saturating_sub(crate::native::reach::REACH_LIFETIME_SECS)
        .saturating_add(FLOOD_LIFETIME.as_secs());
    let records: Vec<ReachRecord> = (0..count)
        .map(|_| {
            ReachRecord::sign(
                &crate::identity::NodeKey::generate(),
                coordinator,
                at,
                since,
            )
        })
        .collect();
    for chunk in records.chunks(MAX_REACH_RECORDS) {
        session
            .send_message(
                &NativeMessage::Reach {
                    records: chunk.to_vec(),
                }
                .to_network(),
            )
            .await?;
    }
    // Kept open: the reachable node goes on relaying what it took.
    tokio::spawn(async move {
        let _ = session.serve(Duration::from_secs(3600)).await;
    });
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The summary as a table, for people.
pub fn render(summary: &NetworkSummary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<20} {:>8} {:>9} {:>8} {:>8}  sessions (how made, netgroup)",
        "node", "nat", "outbound", "max/group", "attempts", "failures"
    );
    for n in &summary.nodes {
        let sessions: Vec<String> = n
            .sessions
            .iter()
            .map(|s| {
                let how = match (s["path"].as_str(), s["handed_off"].as_bool()) {
                    (_, Some(true)) => "handed off",
                    (Some("native"), _) => "punched",
                    (Some("outbound"), _) => "direct",
                    (Some(other), _) => other,
                    _ => "?",
                };
                format!("{how} {}", s["netgroup"].as_str().unwrap_or("?"))
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<5} {:<20} {:>5}/{:<2} {:>9} {:>8} {:>8}  {}",
            n.name,
            n.nat,
            n.outbound,
            n.target,
            n.max_per_group,
            n.attempts,
            n.failures,
            sessions.join("; ")
        );
    }
    let _ = writeln!(
        out,
        "{} after {:.0} s; {} handoffs by the reachable node ({} inbound sessions there)",
        match summary.seconds_to_converge {
            Some(t) => format!("every node at its target in {t:.0} s"),
            None => "not converged".into(),
        },
        summary.seconds,
        summary.handoffs,
        summary.reachable_inbound_sessions
    );
    if summary.flood > 0 {
        let peak = summary.nodes.iter().map(|n| n.flooded_addresses_peak).max();
        let held = summary.nodes.iter().map(|n| n.flooded_addresses).max();
        let sessions = summary.nodes.iter().map(|n| n.flooded_sessions).max();
        let _ = writeln!(
            out,
            "flood: {} fake records sent to the reachable node; it stored at most {} (a node at most {}); at the end it holds {} (a node at most {}); a node holds at most {} sessions via the flooder",
            summary.flood,
            summary.reachable_flooded_addresses_peak,
            peak.unwrap_or(0),
            summary.reachable_flooded_addresses,
            held.unwrap_or(0),
            sessions.unwrap_or(0)
        );
    }
    out
}
