//! `bitpunch demo`.

use std::process::ExitCode;

use bitpunch::lab::NatProfile;

pub(crate) async fn run_demo(
    nat: Option<String>,
    delay_ms: u64,
    tries: u32,
    paths: Vec<bitpunch::scenario::PathKind>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let nat = match nat {
        None => None,
        Some(pair) => {
            let (a, b) = pair
                .split_once(',')
                .unwrap_or((pair.as_str(), pair.as_str()));
            let a: NatProfile = a.parse().map_err(anyhow::Error::msg)?;
            let b: NatProfile = b.parse().map_err(anyhow::Error::msg)?;
            Some((a, b))
        }
    };
    let config = bitpunch::demo::DemoConfig {
        nat,
        delay_ms,
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
                "bitpunch demo: Alice behind {a}, Bob behind {b}, {delay_ms} ms one-way on each NAT's link; relay and coordinator on public lab hosts"
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
