//! `bitpunch status | peers | disconnect`: the running node, asked over its
//! control socket.

use std::process::ExitCode;

use super::args::*;

pub(crate) async fn run_status(json: bool, data: DataArgs) -> anyhow::Result<ExitCode> {
    let status = bitpunch::control::call(&data.dir(), "status", serde_json::Value::Null).await?;
    if json {
        println!("{status}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", bitpunch::control::render_status(&status));
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run_peers(json: bool, data: DataArgs) -> anyhow::Result<ExitCode> {
    let peers = bitpunch::control::call(&data.dir(), "peers", serde_json::Value::Null).await?;
    if json {
        println!("{peers}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", bitpunch::control::render_peers(&peers));
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run_disconnect(peer: &str, data: DataArgs) -> anyhow::Result<ExitCode> {
    let ended = bitpunch::control::call(
        &data.dir(),
        "disconnect",
        serde_json::json!({ "peer": peer }),
    )
    .await?;
    let n = ended.as_array().map(Vec::len).unwrap_or_default();
    println!("disconnected {n} session{}", if n == 1 { "" } else { "s" });
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run_nat(json: bool, data: DataArgs) -> anyhow::Result<ExitCode> {
    let class = bitpunch::control::call(&data.dir(), "nat", serde_json::Value::Null).await?;
    if json {
        println!("{class}");
        return Ok(ExitCode::SUCCESS);
    }
    let class: bitpunch::nat::NatClass = serde_json::from_value(class)?;
    print!("{}", bitpunch::nat::render(&class));
    Ok(ExitCode::SUCCESS)
}
