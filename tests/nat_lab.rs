//! The NAT lab itself: each profile does what its name says, the physics of
//! TCP simultaneous open hold, delay and loss take effect, nothing is left.
//! These need root (CI runs as root); elsewhere they skip and say why.

use std::time::Duration;

use bitpunch::lab::{self, probe, NatProfile};

macro_rules! require_lab {
    () => {
        if let Some(why) = lab::unavailable_reason() {
            eprintln!("SKIPPED (NAT lab unavailable): {why}");
            return;
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_profile_classifies() {
    require_lab!();
    let profile: NatProfile = "home".parse().unwrap();
    let check = probe::check_profile(profile, Duration::from_millis(500))
        .await
        .unwrap();
    eprintln!("{}", serde_json::to_string(&check).unwrap());
    assert!(check.matches, "{check:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_is_what_the_classifier_finds() {
    require_lab!();
    let mut mismatches = Vec::new();
    for profile in NatProfile::all() {
        let check = probe::check_profile(profile, Duration::from_millis(400))
            .await
            .unwrap();
        eprintln!("{} -> {}", check.profile, check.classified);
        if !check.matches {
            mismatches.push(format!(
                "{} classified as {}",
                check.profile, check.classified
            ));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}
