//! The service's order desk: gateways' requests in the Redis request
//! stream, read through the consumer group every replica shares; replies
//! on the asking node's channel (SPUBLISH on a Redis Cluster).
//!
//! Each request is served once across replicas. A replica that dies
//! holding requests leaves them pending; every replica periodically
//! XAUTOCLAIMs requests idle longer than `request_claim_idle_ms` and
//! serves them. After its own connection failed (mid-batch, or while
//! answering), a replica first re-reads its own pending requests (id `0`)
//! before taking new ones (`>`). Order ids derive from the request's
//! stream id, so serving a request twice yields the same updates, which
//! the update script writes once.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use tokio::time::Instant;
use wire::keys;
use wire::orders::{CONSUMER_GROUP, OrderRequest, REQUEST_FIELD};

use crate::backplane::{BoxFuture, WriteError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::order_desk::{Answer, BATCH, Incoming, OrderDesk};
use crate::outage::{self, Backoff, Outage};
use crate::redis_link::Conn;
use crate::redis_writer::RedisWriter;

pub struct StreamDesk {
    writer: Arc<RedisWriter>,
    outage: Arc<Outage>,
    metrics: Arc<Metrics>,
    stream: String,
    /// This replica's consumer name in the group.
    consumer: String,
    claim_idle_ms: u64,
    claim_every: Duration,
    /// How long one XREADGROUP waits for new requests.
    block: Duration,
    backoff: Backoff,
    /// Its own connection: XREADGROUP blocks it.
    conn: Option<Conn>,
    /// Re-read this replica's own pending requests before new ones.
    own_pending_first: bool,
    group_ready: bool,
    claim_cursor: String,
    next_claim: Instant,
    /// Stream ids of the batch `next` returned last, to acknowledge.
    batch_ids: Vec<String>,
}

impl StreamDesk {
    pub fn new(
        config: &Config,
        consumer: String,
        writer: Arc<RedisWriter>,
        outage: Arc<Outage>,
        metrics: Arc<Metrics>,
    ) -> Self {
        // The block must end well before the connection's response timeout.
        let block = (config.redis_timeout() / 2).min(Duration::from_secs(1));
        StreamDesk {
            writer,
            outage,
            metrics,
            stream: keys::order_requests(&config.channel_prefix),
            consumer,
            claim_idle_ms: config.request_claim_idle_ms,
            claim_every: config.request_claim_idle() / 2,
            block,
            backoff: outage::backoff(config.redis_backoff_max()),
            conn: None,
            own_pending_first: true,
            group_ready: false,
            claim_cursor: "0-0".into(),
            next_claim: Instant::now(),
            batch_ids: Vec::new(),
        }
    }

    fn failed(&mut self, e: &WriteError) {
        self.own_pending_first = true;
        self.conn = None;
        self.outage.failed("order service", e);
    }

    /// One round: a connection, the group, claimed requests when due,
    /// else this replica's pending ones or new ones (possibly none). The
    /// connection is out of `self` meanwhile, so a round cancelled halfway
    /// drops it rather than leaving a reply unread on it.
    async fn round(&mut self) -> Result<Vec<StreamId>, WriteError> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.writer.dedicated_conn().await?,
        };
        let result = self.round_on(&mut conn).await;
        self.conn = Some(conn);
        result
    }

    async fn round_on(&mut self, conn: &mut Conn) -> Result<Vec<StreamId>, WriteError> {
        if !self.group_ready {
            create_group(conn, &self.stream).await?;
            self.group_ready = true;
        }
        if Instant::now() >= self.next_claim {
            let claimed = self.claim(conn).await?;
            self.next_claim = Instant::now() + self.claim_every;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        let from_own = self.own_pending_first;
        let entries = self.read(conn, from_own).await?;
        if from_own && entries.is_empty() {
            self.own_pending_first = false;
        }
        Ok(entries)
    }

    /// Takes over requests another replica left pending too long.
    async fn claim(&mut self, conn: &mut Conn) -> Result<Vec<StreamId>, WriteError> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(CONSUMER_GROUP)
            .arg(&self.consumer)
            .arg(self.claim_idle_ms)
            .arg(&self.claim_cursor)
            .arg(StreamAutoClaimOptions::default().count(BATCH))
            .query_async(conn)
            .await?;
        self.claim_cursor = reply.next_stream_id;
        if !reply.claimed.is_empty() {
            tracing::info!(count = reply.claimed.len(), "claimed order requests from an idle replica");
            self.metrics.requests_claimed.inc_by(reply.claimed.len() as u64);
        }
        Ok(reply.claimed)
    }

    async fn read(&self, conn: &mut Conn, own_pending: bool) -> Result<Vec<StreamId>, WriteError> {
        let mut opts = StreamReadOptions::default().group(CONSUMER_GROUP, &self.consumer).count(BATCH);
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
}

impl OrderDesk for StreamDesk {
    fn next(&mut self) -> BoxFuture<'_, Option<Vec<Incoming>>> {
        Box::pin(async move {
            loop {
                let entries = match self.round().await {
                    Ok(entries) => {
                        self.outage.succeeded();
                        self.backoff.reset();
                        entries
                    }
                    Err(e) if is_nogroup(&e) => {
                        // Redis answered, but came back empty (no
                        // persistence): recreate the group, no outage.
                        tracing::info!("order request group missing (Redis restarted empty?); recreating it");
                        self.group_ready = false;
                        self.own_pending_first = true;
                        continue;
                    }
                    Err(e) => {
                        self.failed(&e);
                        tokio::time::sleep(self.backoff.next_delay()).await;
                        continue;
                    }
                };
                if entries.is_empty() {
                    continue;
                }
                self.batch_ids = entries.iter().map(|e| e.id.clone()).collect();
                let incoming = entries
                    .iter()
                    .filter_map(|entry| match parse_request(entry) {
                        Some(request) => Some(Incoming { order_id: format!("ord-{}", entry.id), request }),
                        None => {
                            tracing::debug!(id = %entry.id, "unreadable order request skipped");
                            self.metrics.requests_skipped.inc();
                            None
                        }
                    })
                    .collect();
                return Some(incoming);
            }
        })
    }

    fn answer(&mut self, answers: Vec<Answer>) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(async move {
            let ids = std::mem::take(&mut self.batch_ids);
            if ids.is_empty() {
                return Ok(());
            }
            let prefix = self.writer.prefix();
            let mut replies = Vec::with_capacity(answers.len());
            for Answer { node, reply } in answers {
                match serde_json::to_string(&reply) {
                    Ok(json) => replies.push((keys::node_replies(prefix, &node), json)),
                    Err(e) => tracing::error!(error = %e, "order reply could not be encoded"),
                }
            }
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let result = match self.conn.as_mut() {
                Some(conn) => {
                    self.writer.reply_and_ack(conn, &replies, &self.stream, CONSUMER_GROUP, &ids).await
                }
                None => Err(WriteError::Closed),
            };
            if let Err(e) = &result {
                self.failed(e);
            }
            result
        })
    }
}

async fn create_group(conn: &mut Conn, stream: &str) -> Result<(), WriteError> {
    // From id 0, so requests queued before the first replica ever
    // started are served too (stale ones are skipped by age).
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
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

fn is_nogroup(e: &WriteError) -> bool {
    matches!(e, WriteError::Redis(re) if re.code() == Some("NOGROUP"))
}

fn parse_request(entry: &StreamId) -> Option<OrderRequest> {
    let text: String = entry.get(REQUEST_FIELD)?;
    serde_json::from_str(&text).ok()
}
