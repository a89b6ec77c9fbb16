//! The order request/reply service: reads gateways' order requests from
//! the request stream through the shared consumer group, answers each on
//! the asking node's reply channel (SPUBLISH on a Redis Cluster),
//! acknowledges it, then runs the accepted order's lifecycle on
//! `orders.<ACCOUNT>`.
//!
//! Each request is served once across replicas (consumer group). A
//! replica that dies holding requests leaves them pending; every replica
//! periodically XAUTOCLAIMs requests idle longer than
//! `request_claim_idle_ms` and serves them. After its own connection
//! failed mid-batch, a replica first re-reads its own pending requests
//! (id `0`) before taking new ones (`>`). Order ids derive from the
//! request's stream id, so serving a request twice yields the same
//! updates, which the update script writes once.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use serde_json::value::RawValue;
use tokio::time::Instant;
use wire::keys;
use wire::orders::{CONSUMER_GROUP, OrderReply, OrderRequest, REQUEST_FIELD, ReplyError};

use crate::metrics::REPLY_OK;
use crate::orders::{self, Order};
use crate::outage::Backoff;
use crate::redis_link::Conn;
use crate::redis_writer::WriteError;
use crate::state::Shared;

/// Requests read (or claimed) per round trip.
const READ_COUNT: usize = 64;

/// What serving one batch of requests needs from the stream.
struct Reader {
    shared: Arc<Shared>,
    stream: String,
    /// How long one XREADGROUP waits for new requests.
    block: Duration,
    /// Re-read this replica's own pending requests before new ones.
    own_pending_first: bool,
    group_ready: bool,
    claim_cursor: String,
    next_claim: Instant,
}

/// Serves order requests until shutdown.
pub async fn run(shared: Arc<Shared>) {
    // The block must end well before the connection's response timeout.
    let block = (shared.config.redis_timeout() / 2).min(Duration::from_secs(1));
    let mut reader = Reader {
        stream: keys::order_requests(shared.prefix()),
        block,
        own_pending_first: true,
        group_ready: false,
        claim_cursor: "0-0".into(),
        next_claim: Instant::now(),
        shared,
    };
    let shutdown = reader.shared.shutdown.clone();
    let mut backoff = Backoff::new(reader.shared.config.redis_backoff_max());
    let mut conn: Option<Conn> = None;
    tracing::info!(consumer = %reader.shared.replica_id, stream = %reader.stream, "order service started");
    while !shutdown.is_cancelled() {
        let c = match conn.as_mut() {
            Some(c) => c,
            // Its own connection: XREADGROUP blocks it.
            None => match reader.shared.writer.dedicated_conn().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    reader.failed(&e);
                    if !sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                        break;
                    }
                    continue;
                }
            },
        };
        match reader.round(c).await {
            Ok(()) => {
                reader.shared.outage.succeeded();
                backoff.reset();
            }
            Err(e) if is_nogroup(&e) => {
                // Redis answered, but came back empty (no persistence):
                // recreate the group and go on, this is no outage.
                tracing::info!("order request group missing (Redis restarted empty?); recreating it");
                reader.group_ready = false;
                reader.own_pending_first = true;
            }
            Err(e) => {
                reader.failed(&e);
                conn = None;
                if !sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                    break;
                }
            }
        }
    }
    tracing::info!("order service stopped");
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &tokio_util::sync::CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

impl Reader {
    fn failed(&mut self, e: &WriteError) {
        self.own_pending_first = true;
        self.shared.outage.failed("order service", e);
    }

    /// One round: make sure the group exists, claim idle requests when
    /// due, read a batch, serve it.
    async fn round(&mut self, conn: &mut Conn) -> Result<(), WriteError> {
        if !self.group_ready {
            self.create_group(conn).await?;
            self.group_ready = true;
        }
        if Instant::now() >= self.next_claim {
            self.claim(conn).await?;
            self.next_claim = Instant::now() + self.shared.config.request_claim_idle() / 2;
        }
        let from_own = self.own_pending_first;
        let entries = self.read(conn, from_own).await?;
        if from_own && entries.is_empty() {
            self.own_pending_first = false;
        }
        self.serve(conn, entries).await
    }

    async fn create_group(&self, conn: &mut Conn) -> Result<(), WriteError> {
        // From id 0, so requests queued before the first replica ever
        // started are served too (stale ones are skipped by age).
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(CONSUMER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Takes over requests another replica left pending too long.
    async fn claim(&mut self, conn: &mut Conn) -> Result<(), WriteError> {
        let idle = self.shared.config.request_claim_idle_ms;
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(CONSUMER_GROUP)
            .arg(&self.shared.replica_id)
            .arg(idle)
            .arg(&self.claim_cursor)
            .arg(StreamAutoClaimOptions::default().count(READ_COUNT))
            .query_async(conn)
            .await?;
        self.claim_cursor = reply.next_stream_id;
        if !reply.claimed.is_empty() {
            tracing::info!(count = reply.claimed.len(), "claimed order requests from an idle replica");
            self.shared.metrics.requests_claimed.inc_by(reply.claimed.len() as u64);
            self.serve(conn, reply.claimed).await?;
        }
        Ok(())
    }

    async fn read(&self, conn: &mut Conn, own_pending: bool) -> Result<Vec<StreamId>, WriteError> {
        let mut opts =
            StreamReadOptions::default().group(CONSUMER_GROUP, &self.shared.replica_id).count(READ_COUNT);
        let id = if own_pending {
            "0"
        } else {
            opts = opts.block(self.block.as_millis() as usize);
            ">"
        };
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg(opts)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(id)
            .query_async(conn)
            .await?;
        Ok(reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default())
    }

    /// Answers and acknowledges a batch in one round trip, then starts the
    /// accepted orders' lifecycles.
    async fn serve(&self, conn: &mut Conn, entries: Vec<StreamId>) -> Result<(), WriteError> {
        if entries.is_empty() {
            return Ok(());
        }
        let shared = &self.shared;
        let now = wire::now_ms();
        let mut replies: Vec<(String, String)> = Vec::with_capacity(entries.len());
        let mut accepted: Vec<Order> = Vec::new();
        let mut skipped = 0u64;
        let mut codes: Vec<&'static str> = Vec::new();
        for entry in &entries {
            let Some(request) = parse_request(entry) else {
                tracing::debug!(id = %entry.id, "unreadable order request skipped");
                skipped += 1;
                continue;
            };
            if now.saturating_sub(request.ts) > shared.config.request_max_age_ms {
                tracing::debug!(id = %entry.id, corr = %request.corr, "stale order request skipped");
                skipped += 1;
                continue;
            }
            let order_id = format!("ord-{}", entry.id);
            let reply = match orders::validate(
                request.order.get(),
                request.account.as_deref(),
                &shared.market,
                order_id,
            ) {
                Ok(order) => {
                    let data = RawValue::from_string(order.accepted_json(&shared.market)).ok();
                    accepted.push(order);
                    codes.push(REPLY_OK);
                    OrderReply { corr: request.corr, data, error: None }
                }
                Err(rejection) => {
                    codes.push(rejection.code.as_str());
                    OrderReply {
                        corr: request.corr,
                        data: None,
                        error: Some(ReplyError {
                            code: rejection.code.as_str().into(),
                            message: rejection.message,
                        }),
                    }
                }
            };
            match serde_json::to_string(&reply) {
                Ok(json) => replies.push((keys::node_replies(shared.prefix(), &request.node), json)),
                Err(e) => tracing::error!(error = %e, "order reply could not be encoded"),
            }
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        shared.writer.reply_and_ack(conn, &replies, &self.stream, CONSUMER_GROUP, &ids).await?;

        shared.metrics.requests_served.inc_by(codes.len() as u64);
        shared.metrics.requests_skipped.inc_by(skipped);
        for code in codes {
            shared.metrics.reply(code);
        }
        for order in accepted {
            // Waits while the outage buffer is full: requests then stay in
            // the stream rather than piling up in memory.
            let started = orders::start_lifecycle(
                order,
                false,
                Arc::clone(&shared.market),
                shared.updates.clone(),
                shared.config.fill_delay(),
                &shared.lifecycles,
            );
            if started.await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

fn is_nogroup(e: &WriteError) -> bool {
    matches!(e, WriteError::Redis(re) if re.code() == Some("NOGROUP"))
}

fn parse_request(entry: &StreamId) -> Option<OrderRequest> {
    let text: String = entry.get(REQUEST_FIELD)?;
    serde_json::from_str(&text).ok()
}
