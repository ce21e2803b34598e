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
use crate::report::bound::lower_bound;
use crate::report::table::{median, quantile};
use crate::report::{LabContext, Outcome};
use crate::scenario::{self, PathKind};

#[derive(Debug, Clone)]
pub struct MatrixConfig {
    /// (Alice's NAT, Bob's NAT) per cell.
    pub pairs: Vec<(NatProfile, NatProfile)>,
    pub paths: Vec<PathKind>,
    pub delay_ms: u64,
    pub loss_percent: f64,
    pub tries: u32,
    pub out_dir: PathBuf,
    /// The command line, for the summary.
    pub command: String,
}

pub struct Progress<'a> {
    pub cell: usize,
    pub cells: usize,
    pub pair: (NatProfile, NatProfile),
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
    let mut jsonl = std::fs::File::create(&jsonl_path)
        .with_context(|| format!("creating {}", jsonl_path.display()))?;
    let total = (config.pairs.len() * config.paths.len()) as u64 * u64::from(config.tries);
    let mut records = Vec::new();
    let mut done = 0;
    for (cell, &(nat_alice, nat_bob)) in config.pairs.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        progress(Progress {
            cell,
            cells: config.pairs.len(),
            pair: (nat_alice, nat_bob),
            done,
            total,
            last: None,
        });
        let shape = LinkShape {
            delay: std::time::Duration::from_millis(config.delay_ms),
            loss_percent: config.loss_percent,
            ..Default::default()
        };
        let lab = scenario::InLab::start(nat_alice, nat_bob, shape).await?;
        'tries: for try_index in 0..config.tries {
            for &path in &config.paths {
                if stop.load(Ordering::Relaxed) {
                    break 'tries;
                }
                let mut record = lab.try_path(path).await;
                record.lab = Some(LabContext {
                    nat_alice: nat_alice.to_string(),
                    nat_bob: nat_bob.to_string(),
                    delay_ms: config.delay_ms as f64,
                    loss_percent: config.loss_percent,
                    try_index,
                });
                writeln!(jsonl, "{}", record.to_json())?;
                jsonl.flush()?;
                done += 1;
                progress(Progress {
                    cell,
                    cells: config.pairs.len(),
                    pair: (nat_alice, nat_bob),
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
            let delay = rs[0].lab.as_ref().map(|l| l.delay_ms).unwrap_or_default();
            let summary = summarize_group(&rs, lower_bound(key.2, delay, delay));
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
    md.push_str(&format!(
        "- command: `{}`\n- bitpunch {}; {}\n- one-way delay {} ms and loss {}% on each NAT's internet link; {} tries per cell; {} records\n\n",
        config.command,
        env!("CARGO_PKG_VERSION"),
        env!("BITPUNCH_DEP_VERSIONS"),
        config.delay_ms,
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
