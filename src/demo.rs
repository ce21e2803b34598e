//! `bitpunch demo`: both punch paths and the yardstick, side by side, with
//! no set-up — on loopback, or (root) between two emulated home NATs.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;

use crate::lab::{Lab, LinkShape, NatProfile};
use crate::report::Outcome;
use crate::scenario::{self, PathKind, Place, Places, Ports};

pub struct DemoConfig {
    pub nat: Option<(NatProfile, NatProfile)>,
    pub delay_ms: u64,
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
                bob: (Place::Here, here),
                alice: Place::Here,
                allow_private: true,
                ports: Ports::ANY,
            };
            let running = scenario::start(&places).await?;
            every_try(&running, Place::Here, config, &mut each, &mut records).await;
        }
        Some((nat_a, nat_b)) => {
            let mut lab = Lab::new()?;
            let relay = lab.add_public_host("relay")?;
            let coord = lab.add_public_host("coord")?;
            let mut router_a = lab.add_nat("nat-a", nat_a)?;
            let mut router_b = lab.add_nat("nat-b", nat_b)?;
            let alice = lab.add_host_behind(&mut router_a, "alice")?;
            let bob = lab.add_host_behind(&mut router_b, "bob")?;
            if config.delay_ms > 0 {
                lab.set_link_shape(&router_a.link, LinkShape::delay_ms(config.delay_ms))?;
                lab.set_link_shape(&router_b.link, LinkShape::delay_ms(config.delay_ms))?;
            }
            let (relay_rt, coord_rt, bob_rt, alice_rt) = (
                lab.runtime(&relay)?,
                lab.runtime(&coord)?,
                lab.runtime(&bob)?,
                lab.runtime(&alice)?,
            );
            let places = Places {
                relay: (Place::In(&relay_rt), relay.ip.into()),
                coordinator: (Place::In(&coord_rt), coord.ip.into()),
                bob: (Place::In(&bob_rt), Ipv4Addr::UNSPECIFIED.into()),
                alice: Place::In(&alice_rt),
                allow_private: false,
                ports: Ports::FIXED,
            };
            let running = scenario::start(&places).await?;
            every_try(
                &running,
                Place::In(&alice_rt),
                config,
                &mut each,
                &mut records,
            )
            .await;
            drop(running);
            // Runtimes first: their threads keep the namespaces alive.
            drop((relay_rt, coord_rt, bob_rt, alice_rt));
            drop(lab);
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
