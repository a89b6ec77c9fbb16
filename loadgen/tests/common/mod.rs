//! loadgen's own test helpers on top of the workspace `testkit`: a ready
//! gateway in this process, and the built `loadgen` binary run as a child
//! process with a time bound. Each test file uses a part of it.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

pub use testkit::{TestGateway, TestRedis, free_port, memory_config, redis_config, unique_prefix};

/// The longest any loadgen run in these tests may take; runs are a few
/// seconds, the rest is slack for a loaded two-core machine.
pub const RUN_BOUND: Duration = Duration::from_secs(90);

/// A gateway on a loopback port, answering `/readyz` (its backplane is up
/// before loadgen subscribes).
pub async fn start_gateway(config: gateway::Config) -> TestGateway {
    // Every gateway and loadgen socket of this test process counts
    // against one open-file limit.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let gw = TestGateway::start(config).await;
    testkit::eventually("gateway ready", || async { (gw.get("/readyz").await.0 == 200).then_some(()) }).await;
    gw
}

pub fn publish_url(gw: &TestGateway) -> String {
    format!("http://{}/publish", gw.addr)
}

/// What a finished loadgen run left.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn loadgen_command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd
}

/// Runs the loadgen binary to its end (killed past [`RUN_BOUND`]).
pub async fn loadgen(args: &[&str]) -> Run {
    finish(loadgen_command(args).spawn().unwrap()).await
}

/// Waits for a loadgen child started with [`loadgen_command`] (killed
/// past [`RUN_BOUND`]).
pub async fn finish(child: tokio::process::Child) -> Run {
    let out = tokio::time::timeout(RUN_BOUND, child.wait_with_output())
        .await
        .expect("loadgen did not stop by itself")
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A fresh path in a per-process temporary directory.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}-{}", unique_prefix().trim_end_matches(':')))
}
