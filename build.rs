//! Records the versions of the crates that decide what is measured (from
//! Cargo.lock), so that `bitpunch lab run` can print them with its results.

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    // The NAT lab tests need root: built as anyone else, they are marked
    // ignored (tests/common/mod.rs says what happens when run anyway).
    println!("cargo::rustc-check-cfg=cfg(bitpunch_no_lab)");
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false);
    if !root {
        println!("cargo:rustc-cfg=bitpunch_no_lab");
    }
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut versions = Vec::new();
    let mut name: Option<String> = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let Some(v) = line.strip_prefix("version = ") {
            if let Some(n) = name.take() {
                if [
                    "libp2p",
                    "libp2p-relay",
                    "libp2p-dcutr",
                    "bip324",
                    "bitcoin",
                    "tokio",
                ]
                .contains(&n.as_str())
                {
                    versions.push(format!("{n} {}", v.trim_matches('"')));
                }
            }
        }
    }
    versions.sort();
    println!(
        "cargo:rustc-env=BITPUNCH_DEP_VERSIONS={}",
        versions.join(", ")
    );
}
