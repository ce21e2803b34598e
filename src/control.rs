//! The control interface of a running node, as `bitcoin-cli` talks to
//! `bitcoind`: JSON-RPC 2.0 over a Unix socket in the node's data
//! directory (`<data-dir>/control.sock`), one request per line, one
//! response per line.
//!
//! A Unix socket rather than HTTP on 127.0.0.1 with a cookie file: there is
//! no port to choose or collide with, and who may talk to the node is who
//! may enter its data directory (created 0700; the socket itself is 0600),
//! which is what bitcoind's cookie amounts to. The CLI finds the node from
//! the same `--data-dir` it would use itself.
//!
//! Methods: `status`, `peers`, `disconnect` (params `{"peer": "N" | "IP:PORT"}`),
//! `connect` (params `{"address": "..."}`: the outcome record).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::node::NodeHandle;

pub const SOCKET: &str = "control.sock";

/// A request line longer than this closes the connection: the callers are
/// local, but a stuck or confused one must not grow the node's memory.
const MAX_REQUEST: usize = 64 * 1024;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// Serves the control socket in `data_dir` until the task is dropped. The
/// caller holds the directory's lock, so a socket file already there is a
/// dead node's and is replaced.
pub fn serve(data_dir: &Path, node: NodeHandle) -> Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    // sockaddr_un holds 108 bytes with the terminating NUL.
    let length = path.as_os_str().len();
    if length > 107 {
        bail!(
            "the control socket {} would be {length} bytes long, over the 107 a Unix socket \
             path may have: give the node a shorter --data-dir",
            path.display()
        );
    }
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_client(stream, node.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn serve_client(stream: UnixStream, node: NodeHandle) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let mut limited = (&mut lines).take(MAX_REQUEST as u64 + 1);
        match limited.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n > MAX_REQUEST => {
                tracing::warn!("control socket: request over {MAX_REQUEST} bytes; closing");
                return;
            }
            Ok(_) => {}
        }
        let response = answer(&node, line.trim()).await;
        let mut out = response.to_string();
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One JSON-RPC 2.0 request, answered.
pub async fn answer(node: &NodeHandle, request: &str) -> Value {
    let request: Value = match serde_json::from_str(request) {
        Ok(v) => v,
        Err(e) => return error(Value::Null, -32700, &format!("parse error: {e}")),
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return error(id, -32600, "invalid request: no method");
    };
    let params = request.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "status" => serde_json::to_value(node.status()),
        "peers" => serde_json::to_value(node.peers()),
        "nat" => match node.nat().await {
            Ok(class) => serde_json::to_value(class),
            Err(e) => return error(id, -32000, &format!("{e:#}")),
        },
        "disconnect" => {
            let Some(peer) = params.get("peer").and_then(Value::as_str) else {
                return error(
                    id,
                    -32602,
                    "disconnect needs params {\"peer\": \"N\" or \"IP:PORT\"}",
                );
            };
            let ended = node.disconnect(peer);
            if ended.is_empty() {
                return error(
                    id,
                    -32000,
                    &format!("no session {peer} (see `bitpunch peers`)"),
                );
            }
            serde_json::to_value(ended)
        }
        "connect" => {
            let Some(address) = params.get("address").and_then(Value::as_str) else {
                return error(id, -32602, "connect needs params {\"address\": \"...\"}");
            };
            match node.connect(address).await {
                Ok(record) => serde_json::to_value(record),
                Err(e) => return error(id, -32000, &format!("{e:#}")),
            }
        }
        other => return error(id, -32601, &format!("unknown method {other:?}")),
    };
    match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => error(id, -32603, &e.to_string()),
    }
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Whether a node answers on `data_dir`'s control socket.
pub async fn node_serves(data_dir: &Path) -> bool {
    UnixStream::connect(socket_path(data_dir)).await.is_ok()
}

/// The CLI's side: one call to the node serving `data_dir`.
pub async fn call(data_dir: &Path, method: &str, params: Value) -> Result<Value> {
    let path = socket_path(data_dir);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => bail!(
            "no running node serves {} ({e}): start `bitpunch node --data-dir {}` first, \
             or name its directory with --data-dir",
            data_dir.display(),
            data_dir.display()
        ),
    };
    let (read, mut write) = stream.into_split();
    let mut request =
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    request.push('\n');
    write.write_all(request.as_bytes()).await?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(120),
        BufReader::new(read).read_line(&mut line),
    )
    .await
    .context("the node did not answer within 120 s")??;
    let response: Value = serde_json::from_str(&line).context("the node's answer")?;
    if let Some(e) = response.get("error") {
        let message = e.get("message").and_then(Value::as_str).unwrap_or("error");
        bail!("{message}");
    }
    Ok(response.get("result").cloned().unwrap_or(Value::Null))
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn number(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or_default()
}

/// `bitpunch status` as text.
pub fn render_status(status: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let listening: Vec<&str> = status
        .get("listening")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let _ = writeln!(out, "listening     {}", listening.join(", "));
    let _ = writeln!(out, "sessions      {}", number(status, "sessions"));
    for (what, key) in [("coordinator", "coordinators"), ("relay", "relays")] {
        let held = status.get(key).and_then(Value::as_object);
        match held {
            Some(held) if !held.is_empty() => {
                for (through, r) in held {
                    let _ = writeln!(out, "{what:<13} {through}");
                    let _ = writeln!(out, "  reachable as {}", text(r, "address"));
                    if let Some(observed) = r.get("observed").and_then(Value::as_str) {
                        let _ = writeln!(out, "  sees us at   {observed}");
                    }
                }
            }
            _ => {
                let _ = writeln!(out, "{what:<13} none");
            }
        }
    }
    if let Some(budget) = status.get("punch_budget") {
        let _ = writeln!(
            out,
            "punch SYNs    {} sent, {} refused by the budget",
            number(budget, "syns_sent"),
            number(budget, "syns_refused")
        );
    }
    if let Some(book) = status.get("addresses") {
        let _ = writeln!(
            out,
            "addresses     {} new, {} tried; {} inbound sessions",
            number(book, "new"),
            number(book, "tried"),
            number(book, "inbound_sessions")
        );
        let _ = writeln!(
            out,
            "handoffs      {} given, {} received",
            number(book, "handoffs_given"),
            number(book, "handoffs_received")
        );
    }
    if let Some(outbound) = status.get("outbound") {
        let sessions = outbound
            .get("sessions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "outbound      {} of {} ({} attempts, {} failed)",
            sessions.len(),
            number(outbound, "target"),
            number(outbound, "attempts"),
            number(outbound, "failures")
        );
        for s in &sessions {
            let handed = if s.get("handed_off").and_then(Value::as_bool) == Some(true) {
                ", handed off"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {} ({}, {}{handed})",
                text(s, "address"),
                text(s, "path"),
                text(s, "netgroup")
            );
        }
    }
    let nat = status
        .get("nat")
        .and_then(|n| serde_json::from_value::<crate::nat::NatClass>(n.clone()).ok());
    match nat {
        Some(class) => {
            let _ = writeln!(out, "nat           (bitpunch nat, last asked)");
            for line in crate::nat::render(&class).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        None => {
            let _ = writeln!(out, "nat           not asked yet (bitpunch nat)");
        }
    }
    out
}

/// `bitpunch peers` as a table.
pub fn render_peers(peers: &Value) -> String {
    use std::fmt::Write;
    let rows = peers.as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>4}  {:<7}  {:<9}  {:<24}  {:<9}  {:>10}  {:>10}  session id",
        "id", "path", "role", "remote", "transport", "sent", "received"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:>4}  {:<7}  {:<9}  {:<24}  {:<9}  {:>10}  {:>10}  {}",
            number(r, "id"),
            text(r, "path"),
            text(r, "role"),
            text(r, "remote"),
            text(r, "transport"),
            number(r, "bytes_sent"),
            number(r, "bytes_received"),
            text(r, "session_id"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_data_dir_too_long_for_a_socket_is_named() {
        let dir = std::path::PathBuf::from(format!("/tmp/{}", "d".repeat(120)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let node = rt.block_on(async {
            let mut config = crate::node::NodeConfig::new(crate::wire::SessionConfig::new(
                crate::wire::Network::Regtest,
            ));
            config.bind_ip = Some(std::net::Ipv4Addr::LOCALHOST.into());
            config.port = 0;
            crate::node::Node::start(config).unwrap()
        });
        let _guard = rt.enter();
        let err = super::serve(&dir, node.handle()).unwrap_err().to_string();
        assert!(err.contains("shorter --data-dir"), "{err}");
        drop(node);
    }
}
