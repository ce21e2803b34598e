//! The control interface of a running `bitpunch node`, as a user meets it:
//! `status`, `peers` and `disconnect` against the real binary, with a real
//! session held open from this test.

mod common;
use common::*;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bitpunch::wire;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

fn bitpunch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bitpunch"))
}

async fn cli(args: &[&str], data: &std::path::Path) -> (Option<i32>, String, String) {
    let out = bitpunch()
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_peers_and_disconnect_talk_to_the_running_node() {
    let data = std::env::temp_dir().join(format!("bitpunch-control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);

    // No node yet: a clear error, exit 1.
    let (code, _, stderr) = cli(&["status"], &data).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no running node serves"), "{stderr}");

    let mut node = bitpunch()
        .args([
            "node",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--network",
            "regtest",
            "-q",
        ])
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(node.stdout.take().unwrap()).lines();
    let listening = lines.next_line().await.unwrap().unwrap();
    let addr: SocketAddr = listening
        .strip_prefix("listening ")
        .unwrap()
        .parse()
        .unwrap();

    let mut session = wire::connect(addr, &session(), None, tokio::time::Instant::now())
        .await
        .result
        .expect("a session with the node");
    let ours = session.report.local;

    let (code, stdout, stderr) = cli(&["status", "--json"], &data).await;
    assert_eq!(code, Some(0), "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["listening"][0], addr.to_string());
    assert_eq!(status["sessions"], 1, "{status}");
    assert_eq!(status["punch_budget"]["syns_sent"], 0);

    let (code, stdout, stderr) = cli(&["peers", "--json"], &data).await;
    assert_eq!(code, Some(0), "{stderr}");
    let peers: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let row = &peers[0];
    assert_eq!(row["path"], "inbound", "{peers}");
    assert_eq!(row["role"], "responder");
    assert_eq!(row["remote"], ours.to_string());
    assert_eq!(row["transport"], "v2");
    assert_eq!(
        row["session_id"],
        session.report.session_id.clone().unwrap()
    );
    assert!(row["bytes_received"].as_u64().unwrap() > 0, "{row}");
    // The table names the same session.
    let (_, table, _) = cli(&["peers"], &data).await;
    assert!(table.contains(&ours.to_string()), "{table}");

    let id = row["id"].to_string();
    let (code, stdout, stderr) = cli(&["disconnect", &id], &data).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("disconnected 1 session"), "{stdout}");
    // Our side sees the session end.
    let ended = session.recv_message(Duration::from_secs(5)).await;
    assert!(ended.is_err(), "still open: {ended:?}");
    let (_, stdout, _) = cli(&["peers", "--json"], &data).await;
    assert_eq!(stdout.trim(), "[]");
    let (code, _, stderr) = cli(&["disconnect", &id], &data).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no session"), "{stderr}");

    drop(node);
    let _ = std::fs::remove_dir_all(&data);
}
