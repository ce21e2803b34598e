//! `bitpunch demo`: both punch paths and the yardstick, side by side, with
//! no set-up — on loopback, or (root) between two emulated home NATs.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;

use crate::lab::{LinkShape, NatProfile};
use crate::report::Outcome;
use crate::scenario::{self, PathKind, Place, Places, Ports};

pub struct DemoConfig {
    pub nat: Option<(NatProfile, NatProfile)>,
    pub delay_ms: u64,
    pub jitter_ms: u64,
    pub tries: u32,
    pub paths: Vec<PathKind>,
}

/// Runs every path `tries` times, calling `each` with every record.
pub async fn run(config: &DemoConfig, mut each: impl FnMut(&Outcome)) -> Result<Vec<Outcome>> {
    let mut records = Vec::new();
    match config.nat {
        None => {
            let here: IpAddr = Ipv4Addr::LOCALHOST.into();
            let places = Places {
                relay: (Place::Here, here),
                coordinator: (Place::Here, here),
                bob: (Place::Here, Some(here)),
                alice: Place::Here,
                also: None,
                allow_private: true,
                ports: Ports::ANY,
            };
            let running = scenario::start(&places).await?;
            every_try(&running, Place::Here, config, &mut each, &mut records).await;
        }
        Some((nat_a, nat_b)) => {
            let shape = LinkShape {
                delay: std::time::Duration::from_millis(config.delay_ms),
                jitter: std::time::Duration::from_millis(config.jitter_ms),
                ..Default::default()
            };
            let lab = scenario::InLab::start(nat_a, nat_b, shape).await?;
            every_try(&lab.running, lab.alice(), config, &mut each, &mut records).await;
        }
    }
    Ok(records)
}

async fn every_try(
    running: &scenario::Running,
    alice: Place<'_>,
    config: &DemoConfig,
    each: &mut impl FnMut(&Outcome),
    records: &mut Vec<Outcome>,
) {
    for _ in 0..config.tries {
        for path in &config.paths {
            let record = scenario::try_path(running, alice, *path).await;
            each(&record);
            records.push(record);
        }
    }
}
