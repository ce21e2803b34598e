//! Records the versions of the crates that decide what is measured (from
//! Cargo.lock), so that `bitpunch lab run` can print them with its results.

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
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
