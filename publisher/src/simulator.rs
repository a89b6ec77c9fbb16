//! Simulated trading: `order_rate` orders per second from accounts
//! `acct-1` … `acct-<accounts>`, each run through its lifecycle so that
//! `orders.<ACCOUNT>` topics carry a steady flow of execution rows.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use service::telemetry::trace::{self, Kind, Role};
use tokio::time::{Instant, MissedTickBehavior};
use wire::Topic;

use crate::market::round_cents;
use crate::orders::{self, Order, Side};
use crate::state::Shared;

const TICK: Duration = Duration::from_millis(10);

/// Places simulated orders until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let rate = shared.config.order_rate;
    let accounts = shared.config.accounts.max(1);
    tracing::info!(rate, accounts, "order simulator started");
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut owed = 0.0f64;
    let shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        // Time spent waiting on a full buffer is not made up afterwards.
        owed = (owed + rate * (now - last).as_secs_f64()).min(rate.max(1.0));
        last = now;
        while owed >= 1.0 {
            owed -= 1.0;
            let Some(mut order) = random_order(&shared, &mut rng, accounts) else { continue };
            // A simulated order is a trace of its own (at
            // `trace_order_ratio`): its updates are children of this span.
            let placed = trace::start("publisher.order.simulated", Role::Producer, Kind::Order, None);
            order.traceparent = placed.as_ref().and_then(trace::traceparent);
            let cancel = rng.random_bool(shared.config.cancel_ratio);
            let started = orders::start_lifecycle(
                order,
                cancel,
                Arc::clone(&shared.market),
                shared.updates.clone(),
                shared.config.fill_delay(),
                &shared.lifecycles,
            );
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = started => if r.is_err() { break },
            }
        }
    }
    tracing::info!("order simulator stopped");
}

fn random_order(shared: &Shared, rng: &mut SmallRng, accounts: usize) -> Option<Order> {
    let market = &shared.market;
    if market.is_empty() {
        return None;
    }
    let account = format!("acct-{}", rng.random_range(1..=accounts));
    let topic = Topic::parse(&format!("orders.{account}")).ok()?;
    let symbol_index = rng.random_range(0..market.len());
    // Half market orders, half limits within 0.5 % of the last trade.
    let limit = rng
        .random_bool(0.5)
        .then(|| round_cents(market.price(symbol_index) * (1.0 + rng.random_range(-0.005..0.005))).max(0.01));
    Some(Order {
        order_id: uuid::Uuid::new_v4().to_string(),
        account,
        topic,
        symbol: market.symbols()[symbol_index].clone(),
        symbol_index,
        side: if rng.random_bool(0.5) { Side::Buy } else { Side::Sell },
        qty: rng.random_range(1..=10u64) * 100,
        limit,
        traceparent: None,
    })
}
