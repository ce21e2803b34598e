//! `bitpunch demo`.

use std::process::ExitCode;

use bitpunch::lab::NatProfile;

pub(crate) async fn run_demo(
    nat: Option<String>,
    (delay_ms, jitter_ms): (u64, u64),
    tries: u32,
    paths: Vec<bitpunch::scenario::PathKind>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let nat = nat.map(|pair| nat_pair(&pair)).transpose()?;
    let config = bitpunch::demo::DemoConfig {
        nat,
        delay_ms,
        jitter_ms,
        tries: tries.max(1),
        paths: if paths.is_empty() {
            bitpunch::scenario::PathKind::ALL.to_vec()
        } else {
            paths
        },
    };
    if !json {
        match config.nat {
            None => println!("bitpunch demo: relay, coordinator and two nodes on 127.0.0.1"),
            Some((a, b)) => println!(
                "bitpunch demo: Alice behind {a}, Bob behind {b}, {delay_ms} ± {jitter_ms} ms one-way on each NAT's link; relay and coordinator on public lab hosts"
            ),
        }
    }
    // One progress line on stderr while the tries run (a terminal only).
    let total = config.paths.len() * config.tries as usize;
    let progress = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut done = 0usize;
    let records = bitpunch::demo::run(&config, |r| {
        done += 1;
        if json {
            println!("{}", r.to_json());
        } else if progress {
            let path = serde_json::to_value(r.path).unwrap_or_default();
            eprint!(
                "\r{done}/{total} tries; last: {} {}          ",
                path.as_str().unwrap_or("?"),
                if r.ok { "ok" } else { "failed" }
            );
        }
    })
    .await?;
    if progress {
        eprint!("\r{:60}\r", "");
    }
    if !json {
        println!();
        print!("{}", bitpunch::report::table::by_path(&records));
        println!();
        println!(
            "times in ms from the connect request (medians over successful tries); stock-dcutr's"
        );
        println!("\"verack\" is its first ping on the direct libp2p connection. Records: --json.");
    }
    Ok(if records.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `bitpunch demo --sidecar`: every part its own process.
pub(crate) async fn run_sidecar_demo(
    nat: Option<String>,
    (delay_ms, jitter_ms): (u64, u64),
    tries: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use bitpunch::sidecar::demo::{self, Site};
    let exe = std::env::current_exe()?;
    let nat = nat.map(|pair| nat_pair(&pair)).transpose()?;
    let mut lab = match nat {
        Some((a, b)) => Some(bitpunch::lab::Lab::two_nats(
            a,
            b,
            bitpunch::lab::LinkShape {
                delay: std::time::Duration::from_millis(delay_ms),
                jitter: std::time::Duration::from_millis(jitter_ms),
                ..Default::default()
            },
        )?),
        None => None,
    };
    if !json {
        match nat {
            None => println!("bitpunch demo --sidecar: relay, coordinator, two sidecars and two stand-in Bitcoin nodes on 127.0.0.1"),
            Some((a, b)) => println!(
                "bitpunch demo --sidecar: Alice behind {a}, Bob behind {b}, {delay_ms} ± {jitter_ms} ms one-way on each NAT's link; each Bitcoin node a stand-in on its host's 127.0.0.1 behind its sidecar"
            ),
        }
    }
    let site = match &mut lab {
        Some((lab, topology)) => Site::Lab(lab, topology),
        None => Site::Loopback,
    };
    let tries = tokio::task::block_in_place(|| {
        demo::run(&exe, site, tries.max(1), |t| {
            if json {
                println!("{}", serde_json::to_string(t).unwrap_or_default());
            }
        })
    })?;
    if !json {
        println!();
        println!(
            "{:<8} {:>5} {:>4} {:>13} {:>12}  far ends (as Alice's sidecar / Bob's sidecar sees it)",
            "path", "tries", "ok", "same session", "ms to pong"
        );
        for path in ["native", "libp2p"] {
            let of: Vec<_> = tries.iter().filter(|t| t.path == path).collect();
            let ok = of.iter().filter(|t| t.ok).count();
            let same = of.iter().filter(|t| t.same_session_at_both_ends).count();
            let mut pong: Vec<f64> = of
                .iter()
                .filter(|t| t.ok)
                .filter_map(|t| t.standin.t_ms.pong)
                .collect();
            pong.sort_by(f64::total_cmp);
            let median = pong
                .get(pong.len() / 2)
                .map_or("-".into(), |m| format!("{m:.0}"));
            let ends = of.iter().find(|t| t.ok).map_or("-".into(), |t| {
                let far = |r: &Option<bitpunch::report::Outcome>| {
                    r.as_ref()
                        .and_then(|r| r.remote.clone())
                        .unwrap_or("?".into())
                };
                format!("{} / {}", far(&t.connector), far(&t.listener))
            });
            println!(
                "{path:<8} {:>5} {ok:>4} {:>13} {median:>12}  {ends}",
                of.len(),
                format!("{same}/{}", of.len())
            );
        }
        println!();
        println!(
            "\"same session\": Bob's Bitcoin node logged the BIP324 session id Alice's reported"
        );
        println!(
            "(the sidecars spliced it, they did not terminate it). ms from Alice's SOCKS5 request."
        );
    }
    Ok(if tries.iter().all(|t| t.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn nat_pair(pair: &str) -> anyhow::Result<(NatProfile, NatProfile)> {
    let (a, b) = pair.split_once(',').unwrap_or((pair, pair));
    let a: NatProfile = a.parse().map_err(anyhow::Error::msg)?;
    let b: NatProfile = b.parse().map_err(anyhow::Error::msg)?;
    Ok((a, b))
}
