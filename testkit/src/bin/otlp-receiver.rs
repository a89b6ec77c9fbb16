//! `otlp-receiver`: a stand-in for Jaeger (or an OpenTelemetry collector)
//! in tests and in the compose stack. Receives OTLP traces over gRPC
//! (default 4317) and HTTP/protobuf (default 4318), and shows them on a
//! query port (default 16686): `GET /spans` (all spans, flattened),
//! `DELETE /spans`, and Jaeger's `/api/services`, `/api/traces?service=…`
//! and `/api/traces/{id}`. Runs until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use testkit::otlp::{Listeners, OtlpReceiver, Store};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(version, about = "OTLP trace receiver with a JSON query API (a Jaeger stand-in for tests)")]
struct Args {
    /// OTLP/gRPC listen address.
    #[arg(long, env = "OTLP_RECEIVER_GRPC", default_value = "0.0.0.0:4317")]
    grpc: SocketAddr,
    /// OTLP/HTTP listen address (`POST /v1/traces`, protobuf).
    #[arg(long, env = "OTLP_RECEIVER_HTTP", default_value = "0.0.0.0:4318")]
    http: SocketAddr,
    /// Query API listen address (JSON).
    #[arg(long, env = "OTLP_RECEIVER_QUERY", default_value = "0.0.0.0:16686")]
    query: SocketAddr,
    /// Spans kept at most; the oldest are forgotten first.
    #[arg(long, env = "OTLP_RECEIVER_MAX_SPANS", default_value_t = 100_000)]
    max_spans: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otlp-receiver: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(args: Args) -> std::io::Result<()> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
    };
    let listeners = Listeners {
        grpc: bind(args.grpc).await?,
        http: bind(args.http).await?,
        query: bind(args.query).await?,
    };
    let receiver = OtlpReceiver::serve(listeners, Store::new(args.max_spans))?;
    eprintln!(
        "otlp-receiver: OTLP/gRPC on {}, OTLP/HTTP on {}, query API on {}",
        receiver.grpc, receiver.http, receiver.query
    );
    service::shutdown_signal().await;
    Ok(())
}
