//! The order request/reply service: takes order requests from its
//! [`OrderDesk`], checks each, answers every one (accepted, or refused
//! with a stable code), then runs each accepted order's lifecycle on
//! `orders.<ACCOUNT>`.
//!
//! The desk decides where requests come from (the Redis stream shared by
//! replicas, or a gateway in this process); this loop is the same for
//! both. Lifecycles start only once the batch's answers went out, so a
//! batch served again after a failed answer starts each order once (its
//! order ids, hence its update ids, are the same the second time).

use std::sync::Arc;

use serde_json::value::RawValue;
use wire::orders::{OrderReply, ReplyError};

use crate::metrics::REPLY_OK;
use crate::order_desk::{Answer, Incoming, OrderDesk};
use crate::orders::{self, Order};
use crate::state::Shared;

/// Serves order requests until shutdown or the desk closes.
pub async fn run(shared: Arc<Shared>, mut desk: Box<dyn OrderDesk>) {
    tracing::info!(replica = %shared.replica_id, "order service started");
    loop {
        let batch = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            batch = desk.next() => match batch {
                Some(batch) => batch,
                None => break,
            },
        };
        let (answers, accepted, codes) = decide(&shared, batch);
        let served = answers.len() as u64;
        if desk.answer(answers).await.is_err() {
            // The desk logged it and serves the batch again.
            continue;
        }
        shared.metrics.requests_served.inc_by(served);
        for code in codes {
            shared.metrics.reply(code);
        }
        for order in accepted {
            // Waits while the outage buffer is full: requests then stay
            // with the desk rather than piling up in memory.
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
    }
    tracing::info!("order service stopped");
}

/// Checks each request: the answers to send, the orders accepted, and
/// each answer's metrics code. Requests older than `request_max_age_ms`
/// get no answer: the gateway that asked has given up on them.
fn decide(shared: &Shared, batch: Vec<Incoming>) -> (Vec<Answer>, Vec<Order>, Vec<&'static str>) {
    let now = wire::now_ms();
    let mut answers = Vec::with_capacity(batch.len());
    let mut accepted = Vec::new();
    let mut codes = Vec::with_capacity(batch.len());
    for Incoming { order_id, request } in batch {
        if now.saturating_sub(request.ts) > shared.config.request_max_age_ms {
            tracing::debug!(corr = %request.corr, "stale order request skipped");
            shared.metrics.requests_skipped.inc();
            continue;
        }
        let checked =
            orders::validate(request.order.get(), request.account.as_deref(), &shared.market, order_id);
        let reply = match checked {
            Ok(order) => {
                let data = RawValue::from_string(order.accepted_json(&shared.market)).ok();
                accepted.push(order);
                codes.push(REPLY_OK);
                OrderReply { corr: request.corr, data, error: None }
            }
            Err(rejection) => {
                codes.push(rejection.code.as_str());
                let error = ReplyError { code: rejection.code.as_str().into(), message: rejection.message };
                OrderReply { corr: request.corr, data: None, error: Some(error) }
            }
        };
        answers.push(Answer { node: request.node, reply });
    }
    (answers, accepted, codes)
}
