//! `bitpunch demo --sidecar`: the splice made visible without a Bitcoin
//! node. Every part is its own `bitpunch` process, as an operator would run
//! them: a relay, a coordinator, Bob's Bitcoin node (a stand-in `bitpunch
//! node` on 127.0.0.1) behind Bob's sidecar (`--bitcoind`), and Alice's
//! sidecar (`--socks5`) through which Alice's stand-in dials `ID.punch`
//! exactly as Bitcoin Core with `-proxy` would. On loopback, or with the
//! NAT lab each side in its own namespace behind its own NAT.
//!
//! A try counts as spliced end to end when Bob's stand-in logged the same
//! BIP324 session id that Alice's stand-in reports: the sidecars carried
//! the Bitcoin nodes' own session and did not terminate it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::lab::{Host, Lab, TwoNats};
use crate::report::Outcome;

/// One try: what Alice's stand-in saw, what each sidecar recorded, and
/// whether Bob's stand-in had the same BIP324 session.
#[derive(Debug, Clone, Serialize)]
pub struct SidecarTry {
    /// `native` or `libp2p`: how the sidecars were coordinated.
    pub path: &'static str,
    pub ok: bool,
    /// The name Alice's stand-in asked the proxy for.
    pub name: String,
    /// Both stand-ins logged this BIP324 session id.
    pub same_session_at_both_ends: bool,
    /// Alice's stand-in's record (its socket's far end is the proxy).
    pub standin: Outcome,
    /// Alice's sidecar's record of the punch (`remote`: Bob's NAT).
    pub connector: Option<Outcome>,
    /// Bob's sidecar's record (`spliced_to`: Bob's stand-in).
    pub listener: Option<Outcome>,
}

/// Where the processes run.
pub enum Site<'a> {
    /// Everything on 127.0.0.1.
    Loopback,
    /// Relay and coordinator on public lab hosts, Alice and Bob behind
    /// their NATs.
    Lab(&'a mut Lab, &'a TwoNats),
}

/// A child that is killed when dropped, with its stdout as lines.
struct Proc {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Proc {
    fn line(&self, prefix: &str) -> Result<String> {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .with_context(|| format!("no line starting {prefix:?} within 30 s"))?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
        }
    }

    fn record(&self) -> Option<Outcome> {
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(10)).ok()?;
            if line.starts_with('{') {
                return serde_json::from_str(&line).ok();
            }
        }
    }
}

fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    rx
}

/// Removes the demo's data directories however it ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Runner<'a> {
    exe: PathBuf,
    site: Site<'a>,
    scratch: Scratch,
}

impl Runner<'_> {
    fn dir(&self, name: &str) -> String {
        self.scratch.0.join(name).to_string_lossy().into_owned()
    }

    /// The command that runs `args` as `host` (loopback: here).
    fn command(&self, host: Option<&Host>, args: &[&str]) -> Command {
        match host {
            Some(host) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &host.ns])
                    .arg(&self.exe)
                    .args(args);
                c
            }
            None => {
                let mut c = Command::new(&self.exe);
                c.args(args);
                c
            }
        }
    }

    fn spawn(&self, host: Option<&Host>, args: &[&str], log: Option<&Path>) -> Result<Proc> {
        let mut command = self.command(host, args);
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        match log {
            Some(path) => command.stderr(std::fs::File::create(path)?),
            None => command.stderr(Stdio::null()),
        };
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} {}", self.exe.display(), args.join(" ")))?;
        let lines = lines_of(&mut child);
        Ok(Proc {
            child: Some(child),
            lines,
        })
    }

    fn hosts(&self) -> (Option<Host>, Option<Host>, Option<Host>, Option<Host>) {
        match &self.site {
            Site::Loopback => (None, None, None, None),
            Site::Lab(_, t) => (
                Some(t.relay.clone()),
                Some(t.coordinator.clone()),
                Some(t.alice.clone()),
                Some(t.bob.clone()),
            ),
        }
    }
}

/// Runs `tries` tries of each path through the sidecars, calling `each`
/// with every one.
pub fn run(
    exe: &Path,
    site: Site<'_>,
    tries: u32,
    mut each: impl FnMut(&SidecarTry),
) -> Result<Vec<SidecarTry>> {
    let scratch =
        std::env::temp_dir().join(format!("bitpunch-sidecar-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let runner = Runner {
        exe: exe.to_path_buf(),
        site,
        scratch: Scratch(scratch),
    };
    let (relay_host, coord_host, alice, bob) = runner.hosts();
    let loopback = relay_host.is_none();
    let ip = |h: &Option<Host>| {
        h.as_ref()
            .map_or("127.0.0.1".to_string(), |h| h.ip.to_string())
    };
    // On loopback every port is the kernel's choice; in the lab each host
    // has its own addresses and the usual ports.
    let (relay_port, coord_port, sidecar_port) = if loopback {
        ("0", "0", "0")
    } else {
        ("4001", "18555", "18444")
    };
    let net = ["--network", "regtest"];
    let private: &[&str] = if loopback {
        &["--allow-private-addrs"]
    } else {
        &[]
    };

    let relay = runner.spawn(
        relay_host.as_ref(),
        &[
            "relay",
            "--listen",
            &format!("/ip4/{}/tcp/{relay_port}", ip(&relay_host)),
            "--data-dir",
            &runner.dir("relay"),
            "-q",
        ],
        None,
    )?;
    let relay_addr = relay.line("relay listening ")?;
    // The demo repeats punches between the same two nodes far faster than
    // any real use would: the limits against abuse (docs/security.md) are
    // lifted, as for the in-process demo.
    let unlimited = "1000000";
    let coordinator = runner.spawn(
        coord_host.as_ref(),
        &[
            &[
                "coordinator",
                "--port",
                coord_port,
                "--bind",
                &ip(&coord_host),
            ][..],
            &["--orders-per-netgroup-per-target", unlimited],
            &net,
            &["--data-dir", &runner.dir("coordinator"), "-q"],
        ]
        .concat(),
        None,
    )?;
    let coord_id = coordinator.line("coordinator id ")?;
    let coord_addr = format!("{coord_id}@{}", coordinator.line("coordinator listening ")?);

    // Bob's Bitcoin node, on loopback of Bob's host as Core would be.
    let bob_log = runner.scratch.0.join("bob-bitcoin.log");
    let bob_bitcoin = runner.spawn(
        bob.as_ref(),
        &[
            &["node", "--bind", "127.0.0.1", "--port", "0"][..],
            &net,
            &["--data-dir", &runner.dir("bob-bitcoin")],
        ]
        .concat(),
        Some(&bob_log),
    )?;
    let bob_bitcoin_addr = bob_bitcoin.line("listening ")?;
    let sidecar = |who: &str, host: &Option<Host>, role: [&str; 2]| {
        runner.spawn(
            host.as_ref(),
            &[
                &["node", "--port", sidecar_port][..],
                if loopback {
                    &["--bind", "127.0.0.1"][..]
                } else {
                    &[]
                },
                &net,
                private,
                &["--coordinator", &coord_addr, "--relay", &relay_addr],
                &[
                    "--orders-per-peer-per-minute",
                    unlimited,
                    "--orders-per-minute",
                    unlimited,
                    "--punch-syns-per-address",
                    unlimited,
                    "--punch-syns-per-netgroup",
                    unlimited,
                    "--punch-syns-per-requester",
                    unlimited,
                    "--punch-syns-per-minute",
                    unlimited,
                ],
                &role,
                &["--json", "-q", "--data-dir", &runner.dir(who)],
            ]
            .concat(),
            None,
        )
    };
    let bob_sidecar = sidecar("bob-sidecar", &bob, ["--bitcoind", &bob_bitcoin_addr])?;
    let (bob_node, bob_peer) = reachable(&bob_sidecar)?;
    let alice_sidecar = sidecar("alice-sidecar", &alice, ["--socks5", "127.0.0.1:0"])?;
    let socks = alice_sidecar.line("socks5 listening ")?;
    // Alice's sidecar asks through its relay only once it holds a
    // reservation there.
    reachable(&alice_sidecar)?;

    let mut results = Vec::new();
    for _ in 0..tries {
        for (path, id) in [("native", &bob_node), ("libp2p", &bob_peer)] {
            let name = format!("{id}.punch");
            let out = runner
                .command(
                    alice.as_ref(),
                    &[
                        &["connect", "--proxy", &socks, &format!("{name}:18444")][..],
                        &net,
                        &["--json", "-q"],
                    ]
                    .concat(),
                )
                .output()
                .context("running Alice's stand-in")?;
            let standin: Outcome = serde_json::from_slice(&out.stdout).with_context(|| {
                format!(
                    "Alice's stand-in printed no record: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
            let connector = alice_sidecar.record();
            let listener = if connector.as_ref().is_some_and(|r| r.ok) {
                bob_sidecar.record()
            } else {
                None
            };
            let same = standin
                .session_id
                .as_deref()
                .is_some_and(|id| logged_session(&bob_log, id));
            let attempt = SidecarTry {
                path,
                ok: standin.ok && same,
                name,
                same_session_at_both_ends: same,
                standin,
                connector,
                listener,
            };
            each(&attempt);
            results.push(attempt);
            // The splice closed with Alice's stand-in; the next punch
            // between the same two ports waits for that close to finish.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    drop((alice_sidecar, bob_sidecar, bob_bitcoin, coordinator, relay));
    Ok(results)
}

/// The node id and libp2p peer id a sidecar is reachable as.
fn reachable(sidecar: &Proc) -> Result<(String, String)> {
    let (mut node, mut peer) = (None, None);
    while node.is_none() || peer.is_none() {
        let address = sidecar.line("reachable as ")?;
        if address.starts_with('/') {
            peer = address.rsplit('/').next().map(str::to_string);
        } else {
            node = address.split('@').next().map(str::to_string);
        }
    }
    match (node, peer) {
        (Some(n), Some(p)) => Ok((n, p)),
        _ => bail!("a sidecar printed no address"),
    }
}

/// Whether Bob's stand-in logged an established session with this id
/// (waiting up to 5 s for the log to be written).
fn logged_session(log: &Path, session_id: &str) -> bool {
    for _ in 0..50 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("session established") && l.contains(session_id))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
