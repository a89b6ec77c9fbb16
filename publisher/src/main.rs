//! `publisher` binary: config, telemetry, serve until SIGTERM/SIGINT; or
//! `publisher bench` to measure the quote publish rate.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use publisher::Config;

/// Market-data publisher and order service on the Redis backplane. Every
/// setting is also an environment variable PUBLISHER_<KEY>; see
/// publisher.example.toml.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file (defaults < file < PUBLISHER_* environment).
    #[arg(long, env = "PUBLISHER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the sustained quote publish rate to a Redis (msgs/s).
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Quotes published per timed run.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Symbols (topics) the quotes are spread over.
    #[arg(long, default_value_t = 100)]
    symbols: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Quotes per pipeline.
    #[arg(long, default_value_t = 2_000)]
    batch: usize,
    /// Concurrent writers, each with its own connection.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Key and channel prefix of the bench (its keys are deleted after).
    #[arg(long, default_value = "bench:")]
    prefix: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Bench(b)) = args.command {
        service::telemetry::init("publisher");
        return match bench(b) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("publisher bench failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("publisher: invalid configuration: {e}");
            // EX_CONFIG would be 78; 64 (EX_USAGE) is what the project documents.
            return ExitCode::from(64);
        }
    };
    if let Err(e) = service::telemetry::init_with("publisher", &config.telemetry()) {
        eprintln!("publisher: invalid configuration: {e}");
        return ExitCode::from(64);
    }
    let code = match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("publisher failed: {e:#}");
            ExitCode::FAILURE
        }
    };
    service::telemetry::shutdown();
    code
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.listen_addr().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    publisher::run(config, listener, service::shutdown_signal()).await?;
    Ok(())
}

#[tokio::main]
async fn bench(b: BenchArgs) -> anyhow::Result<()> {
    let opts = publisher::bench::Options {
        redis_url: b.redis_url,
        prefix: b.prefix,
        messages: b.messages,
        symbols: b.symbols,
        runs: b.runs,
        batch: b.batch,
        writers: b.writers,
    };
    eprintln!(
        "bench: {} quotes x {} runs over {} symbols, batch {}, {} writers, {}",
        opts.messages, opts.runs, opts.symbols, opts.batch, opts.writers, opts.redis_url
    );
    let report = publisher::bench::run(&opts).await.context("benchmark")?;
    println!("median: {:.0} msgs/s", report.median);
    Ok(())
}
