//! What a connection sends beyond the live stream so its client misses
//! nothing: the replay after `since` (or a quote snapshot) right after
//! `subscribed`, read through the same [`History`] path as the node's gap
//! filling (`inbound.rs`), and the notice that an order topic's live
//! stream has a hole nothing could fill.

use std::sync::Arc;

use bytes::Bytes;
use wire::envelope::Envelope;
use wire::{ErrorCode, Topic, TopicFamily};

use super::{Connection, End};
use crate::broker::BrokerError;
use crate::history::History;

impl Connection {
    /// After `subscribed`: replays history after `since` (no gap, no
    /// duplicate at the seam with live frames already queued), or for
    /// quotes sends the latest value as a snapshot.
    pub(super) async fn recover(&mut self, topic: Topic, mut since: Option<u64>) -> Option<End> {
        let broker = Arc::clone(&self.node.broker);
        let mut sent_up_to = since;
        let mut behind = false;
        if let Some(since) = since {
            let limit = self.node.config.replay_limit;
            match History::read(broker.as_ref(), &topic, since, limit).await {
                Ok(history) => {
                    if let Some(first) = history.starts_late() {
                        let message = format!(
                            "history starts at seq {first}; updates after {since} before it are gone"
                        );
                        if let Some(end) =
                            self.refuse(ErrorCode::RecoveryFailed, &message, Some(topic.as_str())).await
                        {
                            return Some(end);
                        }
                    }
                    for env in history.envelopes(None) {
                        if let Some(end) = self.reply(env.to_message_frame()).await {
                            return Some(end);
                        }
                        self.node.metrics.recovered.inc();
                        sent_up_to = Some(env.seq);
                    }
                    if !history.complete() {
                        let message = format!(
                            "more than {limit} updates missed; resubscribe with the last seq received"
                        );
                        if let Some(end) =
                            self.refuse(ErrorCode::RecoveryFailed, &message, Some(topic.as_str())).await
                        {
                            return Some(end);
                        }
                    }
                }
                Err(e) => {
                    if let Some(end) =
                        self.refuse(ErrorCode::RecoveryFailed, &e.to_string(), Some(topic.as_str())).await
                    {
                        return Some(end);
                    }
                    // The topic is numbered anew: go on as for a subscribe
                    // without `since`, so no new frame is taken for one
                    // this client saw before.
                    behind = matches!(e, BrokerError::Behind(_));
                }
            }
        }
        if behind {
            since = None;
            sent_up_to = None;
        }
        let replayed = sent_up_to != since;
        if topic.family() == TopicFamily::Quotes && !replayed {
            match broker.last_value(&topic).await {
                Ok(Some(raw)) => {
                    if let Ok(env) = Envelope::parse(&raw, Some(topic.as_str()))
                        && since.is_none_or(|s| env.seq > s)
                    {
                        if let Some(end) = self.reply(env.to_message_frame()).await {
                            return Some(end);
                        }
                        self.node.metrics.recovered.inc();
                        sent_up_to = Some(env.seq);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(%topic, error = %e, "snapshot unavailable"),
            }
        }
        if let Some(floor) = sent_up_to {
            self.subs.set_floor(topic.as_str(), floor);
        }
        None
    }

    /// An order topic's live stream skipped from `after` to `before` and
    /// the node could not fill it (the history no longer had those
    /// updates): tells the client, before the frame that follows the hole.
    pub(super) fn missed(&mut self, topic: &Topic, after: u64, before: u64) {
        let message = format!("updates after {after} before {before} could not be recovered");
        self.node.metrics.client_error(ErrorCode::RecoveryFailed);
        let frame = wire::server::error(ErrorCode::RecoveryFailed, &message, Some(topic.as_str()), None);
        self.socket.feed(Bytes::from(frame));
    }
}
