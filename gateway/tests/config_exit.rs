//! The gateway binary refuses a configuration that cannot work at start,
//! with exit code 64 and the key named, before it listens or connects.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with `env` (and nothing else from GATEWAY_*); returns
/// its exit code and stderr.
fn run_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("GATEWAY_")) {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway did not exit on a bad config");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn cluster_seed_list_without_a_seed_exits_64_at_start() {
    let (code, stderr) = run_with(&[("GATEWAY_REDIS_CLUSTER", "true"), ("GATEWAY_REDIS_URL", ",")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("redis_url"), "{stderr}");
}
