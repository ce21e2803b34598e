//! `bitpunch lab`: the NAT lab, its runs, scale measurements.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use bitpunch::lab::{self, LinkShape, NatProfile};

use super::args::*;

pub(crate) async fn run_lab(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::NatCheck {
            all,
            profile,
            json,
            probe_timeout_ms,
        } => {
            let profiles = if all {
                NatProfile::all()
            } else if profile.is_empty() {
                lab::nat::PRESETS.iter().map(|(_, p)| *p).collect()
            } else {
                profile
            };
            let mut failed = 0;
            for p in profiles {
                let check =
                    lab::probe::check_profile_twice(p, Duration::from_millis(probe_timeout_ms))
                        .await?;
                if !check.matches {
                    failed += 1;
                }
                if json {
                    println!("{}", serde_json::to_string(&check)?);
                } else {
                    println!(
                        "{:<26} {:<28} {}",
                        check.profile,
                        check.classified,
                        match (check.matches, check.rechecked) {
                            (true, false) => "ok",
                            (true, true) => "ok (on a second check)",
                            (false, _) => "MISMATCH (twice)",
                        }
                    );
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LabCommand::Up {
            nat,
            delay_ms,
            loss,
        } => {
            let nats = if nat.is_empty() {
                vec!["home".parse().expect("preset")]
            } else {
                nat
            };
            let mut lab = lab::Lab::new()?;
            let public = lab.add_public_host("public")?;
            let mut hosts = Vec::new();
            for (i, profile) in nats.iter().enumerate() {
                let mut router = lab.add_nat(&format!("nat{i}"), *profile)?;
                let host = lab.add_host_behind(&mut router, &format!("host{i}"))?;
                let shape = LinkShape {
                    delay: Duration::from_millis(delay_ms),
                    loss_percent: loss,
                    ..Default::default()
                };
                if !shape.is_neutral() {
                    lab.set_link_shape(&router.link, shape)?;
                }
                hosts.push(serde_json::json!({
                    "profile": profile.to_string(), "router_ns": router.ns,
                    "public_ip": router.public_ip.to_string(),
                    "host_ns": host.ns, "host_ip": host.ip.to_string(),
                }));
            }
            println!(
                "{}",
                serde_json::json!({
                    "prefix": lab.prefix(), "internet_ns": lab.internet_ns(),
                    "public": {"ns": public.ns, "ip": public.ip.to_string()},
                    "nats": hosts,
                })
            );
            eprintln!(
                "lab ready; run programs with `ip netns exec NS ...`; Ctrl-C removes the lab"
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            drop(lab);
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Run {
            alice,
            bob,
            same_router,
            path,
            delay_ms,
            bob_delay_ms,
            ipv6,
            dual_stack,
            jitter_ms,
            loss,
            tries,
            out,
            resume,
        } => {
            let cells = matrix_cells(alice, bob, same_router);
            let shape = (delay_ms, bob_delay_ms, jitter_ms, loss);
            let family = match (ipv6, dual_stack) {
                (true, _) => bitpunch::scenario::Family::Ipv6,
                (false, true) => bitpunch::scenario::Family::DualStack,
                (false, false) => bitpunch::scenario::Family::Ipv4,
            };
            run_matrix(cells, path, shape, family, tries, out, resume).await
        }
        LabCommand::Scale {
            clients,
            seconds,
            json,
            relay,
            relay_command,
        } => {
            let bin = std::env::current_exe().context("finding the bitpunch binary")?;
            if relay || relay_command.is_some() {
                for n in clients {
                    let argv: Option<Vec<String>> = relay_command
                        .as_ref()
                        .map(|c| c.split_whitespace().map(String::from).collect());
                    let under_test = match &argv {
                        Some(argv) => bitpunch::scale::RelayUnderTest::Command(argv),
                        None => bitpunch::scale::RelayUnderTest::Bitpunch(&bin),
                    };
                    let r = bitpunch::scale::measure_relay(under_test, n, seconds).await?;
                    if json {
                        println!("{}", serde_json::to_string(&r)?);
                    } else {
                        println!(
                            "{:>6} reservations: relay RSS {} KiB idle, {} KiB loaded ({:.1} KiB per reservation); all reserved in {:.1} s; {} circuits in {:.1} s ({:.0}/s, {:.0} per relay CPU second; {} failed)",
                            r.reservations, r.rss_idle_kib, r.rss_loaded_kib, r.kib_per_reservation, r.seconds_to_reserve_all,
                            r.circuits, r.circuit_seconds, r.circuits_per_second, r.circuits_per_relay_cpu_second, r.circuit_failures
                        );
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            for n in clients {
                let r = bitpunch::scale::measure(&bin, n, seconds).await?;
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{:>6} clients: coordinator RSS {} KiB idle, {} KiB loaded ({:.1} KiB per registration); {:.0} coordinations/s on 1 core ({} in {:.1} s)",
                        r.clients, r.rss_idle_kib, r.rss_loaded_kib, r.kib_per_registration, r.coordinations_per_second, r.coordinations, r.seconds
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Network {
            nodes,
            coordinators,
            nat,
            target,
            inbound_slots,
            seconds,
            delay_ms,
            flood,
            json,
            out,
        } => {
            let bin = std::env::current_exe().context("finding the bitpunch binary")?;
            let out = out.unwrap_or_else(|| {
                PathBuf::from(format!(
                    "results/lab-network-{}",
                    bitpunch::clock::unix_now()
                ))
            });
            let presets = if nat.is_empty() {
                bitpunch::lab::network::DEFAULT_PRESETS
                    .iter()
                    .map(|p| p.to_string())
                    .collect()
            } else {
                nat
            };
            let config = bitpunch::lab::network::NetworkConfig {
                nodes,
                coordinators,
                presets,
                target,
                inbound_slots,
                seconds,
                delay_ms,
                flood,
                out: out.clone(),
            };
            let summary = bitpunch::lab::network::run(&bin, &config).await?;
            print!("{}", bitpunch::lab::network::render(&summary));
            println!("records in {}", out.display());
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            }
            Ok(if summary.converged {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LabCommand::Plot { dir } => {
            let records = bitpunch::matrix::read_jsonl(&dir.join("records.jsonl"))?;
            std::fs::write(
                dir.join("success.svg"),
                bitpunch::report::svg::success_heatmap(&records),
            )?;
            std::fs::write(
                dir.join("latency.svg"),
                bitpunch::report::svg::latency_cdf(&records),
            )?;
            println!(
                "{} records; plots written to {}",
                records.len(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Cleanup { all } => {
            let removed = lab::cleanup(all)?;
            for ns in &removed {
                println!("removed {ns}");
            }
            if removed.is_empty() {
                println!("nothing to remove");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Every (Alice, Bob) pair, each side defaulting to every preset unless
/// only same-router cells were asked for; then the same-router cells.
fn matrix_cells(
    alice: Vec<NatProfile>,
    bob: Vec<NatProfile>,
    same_router: Vec<NatProfile>,
) -> Vec<bitpunch::matrix::Cell> {
    use bitpunch::matrix::Cell;
    let presets: Vec<NatProfile> = lab::nat::PRESETS.iter().map(|(_, p)| *p).collect();
    let only_same_router = alice.is_empty() && bob.is_empty() && !same_router.is_empty();
    let mut cells = Vec::new();
    if !only_same_router {
        let alice = if alice.is_empty() {
            presets.clone()
        } else {
            alice
        };
        let bob = if bob.is_empty() { presets } else { bob };
        for a in &alice {
            for b in &bob {
                cells.push(Cell::Apart(*a, *b));
            }
        }
    }
    cells.extend(same_router.into_iter().map(Cell::SameRouter));
    cells
}

pub(crate) async fn run_matrix(
    cells: Vec<bitpunch::matrix::Cell>,
    paths: Vec<bitpunch::scenario::PathKind>,
    (delay_ms, bob_delay_ms, jitter_ms, loss): (u64, Option<u64>, u64, f64),
    family: bitpunch::scenario::Family,
    tries: u32,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use bitpunch::matrix;
    use std::sync::atomic::{AtomicBool, Ordering};
    let resuming = resume.is_some();
    let out = resume.or(out).unwrap_or_else(|| {
        let now = bitpunch::clock::unix_now();
        PathBuf::from(format!("results/lab-run-{now}"))
    });
    let config = matrix::MatrixConfig {
        cells,
        paths: if paths.is_empty() {
            bitpunch::scenario::PathKind::ALL.to_vec()
        } else {
            paths
        },
        delay_ms,
        bob_delay_ms,
        family,
        jitter_ms,
        loss_percent: loss,
        tries: tries.max(1),
        out_dir: out.clone(),
        resume: resuming,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping after the current try; writing what was measured");
            on_signal.store(true, Ordering::Relaxed);
        }
    });
    let total = (config.cells.len() * config.paths.len()) as u64 * u64::from(config.tries);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} tries, eta {eta} | {msg}")
            .expect("valid template"),
    );
    let records = matrix::run(&config, stop.clone(), |p| {
        bar.set_position(p.done);
        let last = p
            .last
            .map(|r| format!(" last: {:?} {}", r.path, if r.ok { "ok" } else { "failed" }))
            .unwrap_or_default();
        bar.set_message(format!("cell {}/{}: {}{last}", p.cell + 1, p.cells, p.pair));
    })
    .await;
    bar.finish_and_clear();
    let records = records?;
    let complete = !stop.load(Ordering::Relaxed);
    std::fs::write(
        out.join("summary.md"),
        matrix::summary_markdown(&config, &records, complete),
    )?;
    std::fs::write(
        out.join("success.svg"),
        bitpunch::report::svg::success_heatmap(&records),
    )?;
    std::fs::write(
        out.join("latency.svg"),
        bitpunch::report::svg::latency_cdf(&records),
    )?;
    println!(
        "{} records in {}",
        records.len(),
        out.join("records.jsonl").display()
    );
    println!("summary: {}", out.join("summary.md").display());
    println!(
        "plots:   {}, {}",
        out.join("success.svg").display(),
        out.join("latency.svg").display()
    );
    Ok(ExitCode::SUCCESS)
}
