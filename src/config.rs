//! The node's configuration file: `<data-dir>/bitpunch.toml` (or
//! `--config FILE`). Every setting is one of `bitpunch node`'s flags
//! without its dashes, so the file and `--help` can never disagree:
//!
//! ```toml
//! port = 8333
//! coordinator = ["ab12…@coord.example.org:8333", "cd34…@203.0.113.9"]
//! relay = ["/dns4/relay.example.org/tcp/4001/p2p/12D3Koo…"]
//! orders-per-minute = 20
//! metrics = "127.0.0.1:9333"
//! ```
//!
//! The file becomes command-line arguments placed before the user's own,
//! for the flags the user did not give: flags win, and clap checks every
//! value the same way whichever way it came.

use std::path::Path;

use anyhow::{bail, Context, Result};

pub const FILE: &str = "bitpunch.toml";

/// Settings the file may not hold: where the file itself is found.
const NOT_IN_FILE: [&str; 2] = ["data-dir", "config"];

/// The arguments `path` stands for. `known` are the command's long flag
/// names and whether each takes a value; `given` the flags already on the
/// command line, which the file does not override.
pub fn file_args(path: &Path, known: &[(String, bool)], given: &[String]) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    args_from(&text, known, given).with_context(|| format!("in {}", path.display()))
}

pub fn args_from(text: &str, known: &[(String, bool)], given: &[String]) -> Result<Vec<String>> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    let mut args = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let Some((_, takes_value)) = known.iter().find(|(name, _)| *name == flag) else {
            let mut names: Vec<&str> = known
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| !NOT_IN_FILE.contains(n))
                .collect();
            names.sort_unstable();
            bail!(
                "unknown setting `{key}`; settings are the node's flags without `--`: {}",
                names.join(", ")
            );
        };
        if NOT_IN_FILE.contains(&flag.as_str()) {
            bail!("`{key}` cannot be set in the file it names");
        }
        if given.contains(&flag) {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items,
            single => vec![single],
        };
        for value in values {
            match (value, takes_value) {
                (toml::Value::Boolean(true), false) => args.push(format!("--{flag}")),
                (toml::Value::Boolean(false), false) => {}
                (toml::Value::Boolean(_), true) | (_, false) => {
                    bail!(
                        "`{key}`: expected {}",
                        if *takes_value {
                            "a value"
                        } else {
                            "true or false"
                        }
                    )
                }
                (toml::Value::String(s), true) => args.extend([format!("--{flag}"), s]),
                (toml::Value::Integer(n), true) => {
                    args.extend([format!("--{flag}"), n.to_string()])
                }
                (toml::Value::Float(x), true) => args.extend([format!("--{flag}"), x.to_string()]),
                (other, true) => bail!("`{key}`: {} is not a flag's value", other.type_str()),
            }
        }
    }
    Ok(args)
}

/// The long flags present in `argv` (`--port 1`, `--port=1`).
pub fn given_flags(argv: &[String]) -> Vec<String> {
    argv.iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<(String, bool)> {
        [
            ("port", true),
            ("coordinator", true),
            ("allow-private-addrs", false),
            ("timeout", true),
            ("data-dir", true),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), *v))
        .collect()
    }

    #[test]
    fn settings_become_flags_and_the_command_line_wins() {
        let text = r#"
            port = 8333
            coordinator = ["a@h:1", "b@h:2"]
            allow_private_addrs = true
            timeout = 2.5
        "#;
        let args = args_from(text, &known(), &["port".into()]).unwrap();
        assert_eq!(
            args,
            [
                "--allow-private-addrs",
                "--coordinator",
                "a@h:1",
                "--coordinator",
                "b@h:2",
                "--timeout",
                "2.5"
            ]
        );
    }

    #[test]
    fn bad_settings_are_named() {
        for (text, needle) in [
            ("prot = 1", "unknown setting `prot`"),
            ("data-dir = \"/x\"", "cannot be set"),
            ("allow-private-addrs = 1", "true or false"),
            ("port = true", "expected a value"),
            ("port = { a = 1 }", "not a flag's value"),
            ("port = ", "not valid TOML"),
        ] {
            let e = format!("{:#}", args_from(text, &known(), &[]).unwrap_err());
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
