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
    let records = bitpunch::demo::run(&config, |r| {
        if json {
            println!("{}", r.to_json());
        }
    })
    .await?;
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
