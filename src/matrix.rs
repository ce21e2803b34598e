//! `bitpunch lab run`: the comparison matrix. For every pair of NAT
//! profiles it builds a lab, starts the scenario (relay, coordinator, Bob),
//! runs every path a number of times from Alice, and appends each record to
//! a JSONL file as it comes; then it writes the summary and the plots.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::lab::{LinkShape, NatProfile};
use crate::report::bound::lower_bound_with_direct;
use crate::report::table::{median, quantile};
use crate::report::{LabContext, Outcome};
use crate::scenario::{self, PathKind};

/// What a record's `lab.nat_bob` says when Bob sits behind Alice's router.
pub const SAME_ROUTER: &str = "same-router";
/// How an IPv6 run's records name their NATs: the profile and this.
const IPV6_SUFFIX: &str = " (IPv6)";
/// And a dual-stack run's.
const DUAL_STACK_SUFFIX: &str = " (dual stack)";

/// Where Alice and Bob sit in one cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// Alice behind one NAT, Bob behind another.
    Apart(NatProfile, NatProfile),
    /// Both on one LAN behind one router (hairpinning or not, as its
    /// profile says).
    SameRouter(NatProfile),
}

impl Cell {
    /// The record's (`nat_alice`, `nat_bob`).
    pub fn names(&self) -> (String, String) {
        match self {
            Cell::Apart(a, b) => (a.to_string(), b.to_string()),
            Cell::SameRouter(p) => (p.to_string(), SAME_ROUTER.to_string()),
        }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Apart(a, b) => write!(f, "{a} vs {b}"),
            Cell::SameRouter(p) => write!(f, "both behind one {p}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MatrixConfig {
    pub cells: Vec<Cell>,
    pub paths: Vec<PathKind>,
    /// One-way delay on Alice's NAT's internet link (and Bob's, unless
    /// `bob_delay_ms` says otherwise).
    pub delay_ms: u64,
    /// One-way delay on Bob's NAT's link: asymmetric paths.
    pub bob_delay_ms: Option<u64>,
    /// Run every cell over IPv6 (the routers are stateful firewalls), or
    /// dual-stack (nodes race both families).
    pub family: scenario::Family,
    /// Each packet's delay is drawn from `delay_ms ± jitter_ms`.
    pub jitter_ms: u64,
    pub loss_percent: f64,
    pub tries: u32,
    pub out_dir: PathBuf,
    /// Continue the run in `out_dir`: the tries already in its
    /// `records.jsonl` are kept and not made again.
    pub resume: bool,
    /// The command line, for the summary.
    pub command: String,
}

pub struct Progress<'a> {
    pub cell: usize,
    pub cells: usize,
    pub pair: Cell,
    pub done: u64,
    pub total: u64,
    pub last: Option<&'a Outcome>,
}

/// The time to the first Bitcoin message (verack), or for stock DCUtR to
/// its first ping: what the paths are compared on.
pub fn time_to_first_message(r: &Outcome) -> Option<f64> {
    r.t_ms.verack.or(r.t_ms.pong)
}

/// Runs the matrix; stops early (keeping what was measured) when `stop` is
/// set. Returns every record, also written to `records.jsonl`.
pub async fn run(
    config: &MatrixConfig,
    stop: Arc<AtomicBool>,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Vec<Outcome>> {
    std::fs::create_dir_all(&config.out_dir)
        .with_context(|| format!("creating {}", config.out_dir.display()))?;
    let jsonl_path = config.out_dir.join("records.jsonl");
    let mut records = if config.resume {
        earlier_records(config, &jsonl_path)?
    } else {
        Vec::new()
    };
    let mut jsonl = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(config.resume)
        .truncate(!config.resume)
        .open(&jsonl_path)
        .with_context(|| format!("opening {}", jsonl_path.display()))?;
    // Tries already made, per cell and path.
    let mut made: BTreeMap<(String, String, PathKind), u32> = BTreeMap::new();
    for r in &records {
        if let Some(lab) = &r.lab {
            *made
                .entry((lab.nat_alice.clone(), lab.nat_bob.clone(), PathKind::of(r)))
                .or_default() += 1;
        }
    }
    let names = |cell: Cell| {
        let (a, b) = cell.names();
        let suffix = match config.family {
            scenario::Family::Ipv4 => "",
            scenario::Family::Ipv6 => IPV6_SUFFIX,
            scenario::Family::DualStack => DUAL_STACK_SUFFIX,
        };
        (format!("{a}{suffix}"), format!("{b}{suffix}"))
    };
    let made_in = |cell: Cell, path: PathKind| {
        let (a, b) = names(cell);
        made.get(&(a, b, path)).copied().unwrap_or_default()
    };
    let total = (config.cells.len() * config.paths.len()) as u64 * u64::from(config.tries);
    let mut done: u64 = config
        .cells
        .iter()
        .flat_map(|pair| {
            config
                .paths
                .iter()
                .map(|path| made_in(*pair, *path).min(config.tries))
        })
        .map(u64::from)
        .sum();
    for (index, &cell) in config.cells.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let left = |path: &PathKind| made_in(cell, *path) < config.tries;
        if !config.paths.iter().any(left) {
            continue;
        }
        progress(Progress {
            cell: index,
            cells: config.cells.len(),
            pair: cell,
            done,
            total,
            last: None,
        });
        let shape = |delay_ms: u64| LinkShape {
            delay: std::time::Duration::from_millis(delay_ms),
            jitter: std::time::Duration::from_millis(config.jitter_ms),
            loss_percent: config.loss_percent,
        };
        let lab = match cell {
            Cell::Apart(nat_alice, nat_bob) => {
                let bob_delay = config.bob_delay_ms.unwrap_or(config.delay_ms);
                let shapes = (shape(config.delay_ms), shape(bob_delay));
                scenario::InLab::start_shaped(nat_alice, nat_bob, shapes, config.family).await?
            }
            Cell::SameRouter(nat) => {
                scenario::InLab::start_behind_one_router(nat, shape(config.delay_ms), config.family)
                    .await?
            }
        };
        let (nat_alice, nat_bob) = names(cell);
        'tries: for try_index in 0..config.tries {
            for &path in &config.paths {
                if stop.load(Ordering::Relaxed) {
                    break 'tries;
                }
                if try_index < made_in(cell, path) {
                    continue;
                }
                let mut record = lab.try_path(path).await;
                record.lab = Some(LabContext {
                    nat_alice: nat_alice.clone(),
                    nat_bob: nat_bob.clone(),
                    delay_ms: config.delay_ms as f64,
                    bob_delay_ms: config.bob_delay_ms.map(|d| d as f64),
                    ipv6: config.family == scenario::Family::Ipv6,
                    dual_stack: config.family == scenario::Family::DualStack,
                    loss_percent: config.loss_percent,
                    jitter_ms: config.jitter_ms as f64,
                    try_index,
                });
                writeln!(jsonl, "{}", record.to_json())?;
                jsonl.flush()?;
                done += 1;
                progress(Progress {
                    cell: index,
                    cells: config.cells.len(),
                    pair: cell,
                    done,
                    total,
                    last: Some(&record),
                });
                records.push(record);
            }
        }
        drop(lab);
    }
    Ok(records)
}

/// The records of the run being resumed, which must have been measured
/// under the same link conditions.
fn earlier_records(config: &MatrixConfig, path: &FsPath) -> Result<Vec<Outcome>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // A line cut short by a killed run is dropped; that try runs again.
        let Ok(record) = serde_json::from_str::<Outcome>(line) else {
            eprintln!("{}:{}: not a record, ignored", path.display(), i + 1);
            continue;
        };
        if let Some(lab) = &record.lab {
            let same = lab.delay_ms == config.delay_ms as f64
                && lab.bob_delay_ms == config.bob_delay_ms.map(|d| d as f64)
                && lab.jitter_ms == config.jitter_ms as f64
                && lab.loss_percent == config.loss_percent;
            if !same {
                anyhow::bail!(
                    "{} was measured at {} ms ± {} ms and {}% loss, not at the {} ms ± {} ms and {}% asked for: resume with the same --delay-ms, --bob-delay-ms, --jitter-ms and --loss",
                    path.display(),
                    lab.delay_ms,
                    lab.jitter_ms,
                    lab.loss_percent,
                    config.delay_ms,
                    config.jitter_ms,
                    config.loss_percent
                );
            }
        }
        records.push(record);
    }
    Ok(records)
}

/// One cell of the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSummary {
    pub ok: usize,
    pub tries: usize,
    pub median_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub bound_ms: f64,
}

/// (Alice's NAT, Bob's NAT, path) → summary.
pub fn summarize(records: &[Outcome]) -> BTreeMap<(String, String, PathKind), CellSummary> {
    let mut cells: BTreeMap<(String, String, PathKind), Vec<&Outcome>> = BTreeMap::new();
    for r in records {
        let Some(lab) = &r.lab else { continue };
        cells
            .entry((lab.nat_alice.clone(), lab.nat_bob.clone(), PathKind::of(r)))
            .or_default()
            .push(r);
    }
    cells
        .into_iter()
        .map(|(key, rs)| {
            let (d_a, d_b) = rs[0]
                .lab
                .as_ref()
                .map(|l| (l.delay_ms, l.bob_delay_ms.unwrap_or(l.delay_ms)))
                .unwrap_or_default();
            // Behind one router the punched connection never crosses the
            // delayed link.
            let same_router = key
                .1
                .trim_end_matches(IPV6_SUFFIX)
                .trim_end_matches(DUAL_STACK_SUFFIX)
                == SAME_ROUTER;
            let direct = if same_router { 0.0 } else { d_a + d_b };
            let summary = summarize_group(&rs, lower_bound_with_direct(key.2, d_a, d_b, direct));
            (key, summary)
        })
        .collect()
}

/// Successes, tries and times of a group of records.
fn summarize_group(rs: &[&Outcome], bound_ms: f64) -> CellSummary {
    let times: Vec<f64> = rs
        .iter()
        .filter(|r| r.ok)
        .filter_map(|r| time_to_first_message(r))
        .collect();
    CellSummary {
        ok: rs.iter().filter(|r| r.ok).count(),
        tries: rs.len(),
        median_ms: median(times.clone()),
        p95_ms: quantile(times, 0.95),
        bound_ms,
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into())
}

/// The Markdown summary: one table, a row per NAT pair and path.
pub fn summary_markdown(config: &MatrixConfig, records: &[Outcome], complete: bool) -> String {
    let mut md = String::from("# bitpunch lab run\n\n");
    if !complete {
        md.push_str("**Stopped early**: these are the records measured until then.\n\n");
    }
    let delay = match config.bob_delay_ms {
        Some(bob) => format!("{} (Alice's NAT) and {bob} (Bob's)", config.delay_ms),
        None => config.delay_ms.to_string(),
    };
    md.push_str(&format!(
        "- command: `{}`\n- bitpunch {}; {}\n- one-way delay {} ± {} ms and loss {}% on each NAT's internet link; {} tries per cell; {} records\n\n",
        config.command,
        env!("CARGO_PKG_VERSION"),
        env!("BITPUNCH_DEP_VERSIONS"),
        delay,
        config.jitter_ms,
        config.loss_percent,
        config.tries,
        records.len()
    ));
    md.push_str("Time = connect request to verack (stock DCUtR: to its first ping on the direct libp2p connection), over successful tries. Bound = the protocol's minimum for these delays (docs/results.md).\n\n");
    md.push_str("| Alice's NAT | Bob's NAT | path | success | median ms | p95 ms | bound ms | median / bound |\n|---|---|---|---|---|---|---|---|\n");
    for ((a, b, path), c) in summarize(records) {
        let ratio = match (c.median_ms, c.bound_ms > 0.0) {
            (Some(m), true) => format!("{:.2}", m / c.bound_ms),
            _ => "–".into(),
        };
        md.push_str(&format!(
            "| {a} | {b} | {} | {}/{} ({:.0}%) | {} | {} | {:.0} | {ratio} |\n",
            path.name(),
            c.ok,
            c.tries,
            100.0 * c.ok as f64 / c.tries.max(1) as f64,
            fmt_ms(c.median_ms),
            fmt_ms(c.p95_ms),
            c.bound_ms
        ));
    }
    md.push_str("\nPer path over all cells:\n\n| path | success | median ms |\n|---|---|---|\n");
    for path in PathKind::ALL {
        let rs: Vec<&Outcome> = records
            .iter()
            .filter(|r| r.lab.is_some() && PathKind::of(r) == path)
            .collect();
        if rs.is_empty() {
            continue;
        }
        let c = summarize_group(&rs, 0.0);
        md.push_str(&format!(
            "| {} | {}/{} ({:.0}%) | {} |\n",
            path.name(),
            c.ok,
            c.tries,
            100.0 * c.ok as f64 / c.tries as f64,
            fmt_ms(c.median_ms)
        ));
    }
    md
}

pub fn read_jsonl(path: &FsPath) -> Result<Vec<Outcome>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Path;
    use crate::wire::{SessionRole, Stage};

    fn config(dir: &FsPath, jitter_ms: u64) -> MatrixConfig {
        MatrixConfig {
            cells: vec![],
            paths: vec![PathKind::Native],
            delay_ms: 0,
            bob_delay_ms: None,
            family: scenario::Family::Ipv4,
            jitter_ms,
            loss_percent: 0.0,
            tries: 2,
            out_dir: dir.to_path_buf(),
            resume: true,
            command: String::new(),
        }
    }

    #[test]
    fn same_router_cells_are_named_and_bounded_by_their_lan() {
        let home: NatProfile = "home".parse().unwrap();
        let cell = Cell::SameRouter(home);
        assert_eq!(cell.names(), ("eim/apdf/drop".into(), SAME_ROUTER.into()));
        assert_eq!(cell.to_string(), "both behind one eim/apdf/drop");
        let record = |nat_bob: &str, bob_delay_ms: Option<f64>| {
            let mut r = Outcome::failed(
                Path::Native,
                SessionRole::Initiator,
                Stage::Punch,
                "x".into(),
            );
            r.lab = Some(LabContext {
                nat_alice: "eim/apdf/drop".into(),
                nat_bob: nat_bob.into(),
                delay_ms: 20.0,
                bob_delay_ms,
                ipv6: false,
                dual_stack: false,
                loss_percent: 0.0,
                jitter_ms: 0.0,
                try_index: 0,
            });
            r
        };
        let bound = |r: Outcome| summarize(&[r]).into_values().next().unwrap().bound_ms;
        // Registration and request over the 20 ms link (9 d + d), the
        // punch and handshake on the LAN (no delay).
        assert_eq!(bound(record(SAME_ROUTER, None)), 200.0);
        assert_eq!(bound(record("same-router (IPv6)", None)), 200.0);
        assert_eq!(bound(record("eim/apdf/drop", None)), 400.0);
        // Asymmetric: Bob's link 60 ms.
        assert_eq!(bound(record("eim/apdf/drop", Some(60.0))), 240.0 + 400.0);
    }

    #[test]
    fn a_resumed_run_keeps_its_records_and_refuses_other_conditions() {
        let dir = std::env::temp_dir().join(format!("bitpunch-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records.jsonl");
        let mut record = Outcome::failed(
            Path::Native,
            SessionRole::Initiator,
            Stage::Punch,
            "x".into(),
        );
        record.lab = Some(LabContext {
            nat_alice: "home".into(),
            nat_bob: "home".into(),
            delay_ms: 0.0,
            bob_delay_ms: None,
            ipv6: false,
            dual_stack: false,
            loss_percent: 0.0,
            jitter_ms: 10.0,
            try_index: 0,
        });
        // The last line was cut short by a killed run.
        std::fs::write(&path, format!("{}\n{{\"path\":\"nat", record.to_json())).unwrap();
        let kept = earlier_records(&config(&dir, 10), &path).unwrap();
        assert_eq!(kept, vec![record]);
        let e = earlier_records(&config(&dir, 0), &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--jitter-ms"), "{e}");
        assert!(earlier_records(&config(&dir, 0), &dir.join("none"))
            .unwrap()
            .is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
