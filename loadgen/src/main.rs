//! `loadgen` binary: flags, runtime, Ctrl-C, output and exit status
//! (0 ok, 1 run failed, 2 bad flags or refused target, 3 loss above
//! `--max-loss` or an order accounting failure).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use loadgen::cli::{Cli, Command, Output, RunArgs, SweepArgs, open_file_limit};
use loadgen::run::RunError;
use loadgen::{Summary, sweep};
use tokio_util::sync::CancellationToken;

const FAILED: u8 = 1;
const USAGE: u8 = 2;
const LOSS: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs on stderr; traces of sampled orders (`loadgen.order` client
    // spans) exported when the standard OTEL_* variables name an endpoint.
    if let Err(e) = service::telemetry::init_with("loadgen", &service::telemetry::Settings::default()) {
        eprintln!("loadgen: {e}");
        return ExitCode::from(USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the async runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    if let Some(index) = cli.worker_index {
        return match runtime.block_on(loadgen::workers::child_main(index)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadgen worker {index}: {e}");
                ExitCode::from(FAILED)
            }
        };
    }
    let code = runtime.block_on(async {
        let interrupt = ctrl_c();
        match cli.command {
            Some(Command::Sweep(args)) => run_sweep(args, interrupt).await,
            None => run_once(&cli.run, interrupt).await,
        }
    });
    service::telemetry::shutdown();
    ExitCode::from(code)
}

/// Cancelled on the first Ctrl-C (the run winds down and reports); a
/// second one exits at once.
fn ctrl_c() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("loadgen: interrupted; closing connections (Ctrl-C again to quit now)");
            cancel.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    token
}

async fn run_once(args: &RunArgs, interrupt: CancellationToken) -> u8 {
    let settings = match args.settings(open_file_limit()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return USAGE;
        }
    };
    match loadgen::run(&settings, interrupt).await {
        Ok(summary) => {
            if let Err(e) = output(&summary, args) {
                eprintln!("loadgen: {e:#}");
                return FAILED;
            }
            match summary.verdict(settings.max_loss) {
                Ok(()) => 0,
                Err(why) => {
                    eprintln!("loadgen: {why}");
                    LOSS
                }
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            if matches!(e, RunError::Target(_)) { USAGE } else { FAILED }
        }
    }
}

fn output(summary: &Summary, args: &RunArgs) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(summary).context("encoding the summary")?;
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{json}\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    match args.output {
        Output::Table => print!("{}", summary.table()),
        Output::Json => println!("{json}"),
    }
    Ok(())
}

async fn run_sweep(args: SweepArgs, interrupt: CancellationToken) -> u8 {
    let open_files = open_file_limit();
    let base = match args.run.settings(open_files) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return USAGE;
        }
    };
    let header = sweep::header(&base);
    let mut csv = format!("{header}\n");
    println!("{header}");
    let (mut failed, mut lossy) = (false, false);
    let quiet = args.run.quiet;
    let steps = sweep::sweep(
        &base,
        &args.steps,
        args.step_duration,
        args.step_pause,
        open_files,
        interrupt,
        |step| match &step.summary {
            Ok(summary) => {
                let row = sweep::row(step.connections, summary);
                println!("{row}");
                csv.push_str(&row);
                csv.push('\n');
                if !quiet {
                    eprint!("{}", summary.table());
                }
                if let Err(why) = summary.verdict(base.max_loss) {
                    eprintln!("loadgen: step {}: {why}", step.connections);
                    lossy = true;
                }
            }
            Err(e) => {
                eprintln!("loadgen: step {}: {e}", step.connections);
                failed = true;
            }
        },
    )
    .await;
    if let Some(path) = &args.csv
        && let Err(e) = std::fs::write(path, &csv)
    {
        eprintln!("loadgen: writing {}: {e}", path.display());
        return FAILED;
    }
    // Steps left out (after an unreachable one, or Ctrl-C) fail the sweep.
    if failed || steps.len() < args.steps.len() {
        FAILED
    } else if lossy {
        LOSS
    } else {
        0
    }
}
