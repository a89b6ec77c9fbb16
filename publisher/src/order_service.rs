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
use service::telemetry::trace::{self, Kind, Role};
use tokio::time::Instant;
use tracing::Span;
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
        let taken = Instant::now();
        let Decided { answers, accepted, codes, spans } = decide(&shared, batch);
        let served = answers.len() as u64;
        // Each traced request's reply span covers sending the answers.
        let replying: Vec<Span> =
            spans.iter().map(|span| trace::child("publisher.order.reply", Role::Producer, span)).collect();
        if desk.answer(answers).await.is_err() {
            // The desk logged it and serves the batch again.
            continue;
        }
        drop(replying);
        let service_time = taken.elapsed();
        for _ in 0..served {
            shared.metrics.order_service_seconds.observe(service_time);
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
        // The service spans end once the first update of each accepted
        // order is queued: the trace then shows reply and fills under them.
        drop(spans);
    }
    tracing::info!("order service stopped");
}

/// What [`decide`] made of a batch.
struct Decided {
    answers: Vec<Answer>,
    accepted: Vec<Order>,
    /// Each answer's metrics code.
    codes: Vec<&'static str>,
    /// The traced `publisher.order` spans of the requests sampled.
    spans: Vec<Span>,
}

/// Checks each request: the answers to send, the orders accepted, and
/// each answer's metrics code. Requests older than `request_max_age_ms`
/// get no answer: the gateway that asked has given up on them.
fn decide(shared: &Shared, batch: Vec<Incoming>) -> Decided {
    let now = wire::now_ms();
    let mut d = Decided {
        answers: Vec::with_capacity(batch.len()),
        accepted: Vec::new(),
        codes: Vec::with_capacity(batch.len()),
        spans: Vec::new(),
    };
    for Incoming { order_id, request } in batch {
        shared.metrics.order_request_wait_seconds.observe_since_ms(request.ts);
        // Continues the gateway's span (carried in the request) when it
        // traced the order; else a root at `trace_order_ratio`.
        let span =
            trace::start("publisher.order", Role::Consumer, Kind::Order, request.traceparent.as_deref());
        if let Some(span) = &span {
            trace::set_attribute(span, "order.corr", request.corr.clone());
            trace::set_attribute(span, "gateway.node", request.node.clone());
            trace::set_attribute(span, "publisher.replica", shared.replica_id.clone());
        }
        if now.saturating_sub(request.ts) > shared.config.request_max_age_ms {
            tracing::debug!(corr = %request.corr, "stale order request skipped");
            shared.metrics.requests_skipped.inc();
            if let Some(span) = &span {
                trace::set_attribute(span, "order.result", "stale");
            }
            continue;
        }
        let checked = {
            let _validating =
                span.as_ref().map(|s| trace::child("publisher.order.validate", Role::Internal, s).entered());
            orders::validate(request.order.get(), request.account.as_deref(), &shared.market, order_id)
        };
        let (reply, code) = match checked {
            Ok(mut order) => {
                // Lifecycle updates join this span's trace; a request this
                // service does not trace hands the gateway's context on.
                order.traceparent = trace::hand_on(span.as_ref(), request.traceparent.as_deref());
                let data = RawValue::from_string(order.accepted_json(&shared.market)).ok();
                d.accepted.push(order);
                (OrderReply { corr: request.corr, data, error: None }, REPLY_OK)
            }
            Err(rejection) => {
                let code = rejection.code.as_str();
                let error = ReplyError { code: code.into(), message: rejection.message };
                (OrderReply { corr: request.corr, data: None, error: Some(error) }, code)
            }
        };
        if let Some(span) = span {
            trace::set_attribute(&span, "order.result", code);
            d.spans.push(span);
        }
        d.codes.push(code);
        d.answers.push(Answer { node: request.node, reply });
    }
    d
}
