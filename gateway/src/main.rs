//! `gateway` binary: config, telemetry, listen, run until SIGTERM/SIGINT,
//! then flush the spans still queued.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use gateway::Config;

/// WebSocket pub/sub gateway node. Every setting is also an environment
/// variable GATEWAY_<KEY>; see gateway.example.toml.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file (defaults < file < GATEWAY_* environment).
    #[arg(long, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gateway: invalid configuration: {e}");
            // EX_CONFIG would be 78; 64 (EX_USAGE) is what the project documents.
            return ExitCode::from(64);
        }
    };
    if let Err(e) = service::telemetry::init_with("gateway", &config.telemetry()) {
        eprintln!("gateway: invalid configuration: {e}");
        return ExitCode::from(64);
    }
    let code = match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("gateway failed: {e:#}");
            ExitCode::FAILURE
        }
    };
    service::telemetry::shutdown();
    code
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    let files = gateway::raise_open_file_limit();
    tracing::debug!(files, "open-file limit");
    let addr = config.listen_addr().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    gateway::run(config, listener, service::shutdown_signal()).await?;
    Ok(())
}
