//! Orders: checking a client's order object, and the lifecycle an accepted
//! order goes through (new → partially_filled → filled, or cancelled),
//! published on `orders.<ACCOUNT>` as execution rows.
//!
//! Validation answers with the contract's stable codes, first failure
//! wins, fields checked in the order account, symbol, side, qty, price:
//! a required field absent (or null) is `missing_field`; `side` other than
//! `buy`/`sell` is `invalid_side`; `qty` other than an integer in
//! 1..=[`MAX_QTY`] is `invalid_quantity`; a `symbol` string not traded here
//! is `unknown_symbol`; anything else wrong (not an object, a field of the
//! wrong type, a price that is not a positive number, an account that
//! cannot name a topic) is `invalid_order`. Unknown fields are ignored.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use wire::{ErrorCode, Topic};

use crate::backplane::OrderUpdate;
use crate::market::{Market, round_cents};
use crate::order_updates::{QueueClosed, UpdateQueue};

/// Largest quantity one order may carry.
pub const MAX_QTY: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// An order that passed validation.
#[derive(Debug, Clone)]
pub struct Order {
    pub order_id: String,
    pub account: String,
    /// `orders.<account>`, where the lifecycle is published.
    pub topic: Topic,
    pub symbol: String,
    /// Index of the symbol in the market.
    pub symbol_index: usize,
    pub side: Side,
    pub qty: u64,
    /// Limit price; `None` is a market order, filled at the latest trade.
    pub limit: Option<f64>,
    /// The trace its lifecycle updates join (the order service's span, or
    /// the simulator's), if any.
    pub traceparent: Option<String>,
}

/// Why an order was refused: a stable code and a human message.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

fn reject(code: ErrorCode, message: impl Into<String>) -> Rejection {
    Rejection { code, message: message.into() }
}

/// Checks a client's `order` object. `account` is the authenticated
/// account when the gateway knows one; it wins over the object's own.
pub fn validate(
    order_json: &str,
    account: Option<&str>,
    market: &Market,
    order_id: String,
) -> Result<Order, Rejection> {
    let obj: Map<String, Value> = serde_json::from_str(order_json)
        .map_err(|_| reject(ErrorCode::InvalidOrder, "order must be a JSON object"))?;
    let field = |name: &str| obj.get(name).filter(|v| !v.is_null());

    let account = match account {
        Some(a) => a.to_owned(),
        None => match field("account") {
            None => return Err(reject(ErrorCode::MissingField, "order needs an \"account\"")),
            Some(Value::String(a)) => a.clone(),
            Some(_) => return Err(reject(ErrorCode::InvalidOrder, "\"account\" must be a string")),
        },
    };
    let topic = Topic::parse(&format!("orders.{account}"))
        .map_err(|e| reject(ErrorCode::InvalidOrder, format!("account cannot name a topic: {e}")))?;

    let (symbol, symbol_index) = match field("symbol") {
        None => return Err(reject(ErrorCode::MissingField, "order needs a \"symbol\"")),
        Some(Value::String(s)) => match market.index_of(s) {
            Some(i) => (s.clone(), i),
            None => {
                return Err(reject(ErrorCode::UnknownSymbol, format!("symbol {:?} is not traded", trunc(s))));
            }
        },
        Some(_) => return Err(reject(ErrorCode::InvalidOrder, "\"symbol\" must be a string")),
    };

    let side = match field("side") {
        None => return Err(reject(ErrorCode::MissingField, "order needs a \"side\"")),
        Some(Value::String(s)) if s == "buy" => Side::Buy,
        Some(Value::String(s)) if s == "sell" => Side::Sell,
        Some(_) => return Err(reject(ErrorCode::InvalidSide, "\"side\" must be \"buy\" or \"sell\"")),
    };

    let qty = match field("qty") {
        None => return Err(reject(ErrorCode::MissingField, "order needs a \"qty\"")),
        Some(v) => match v.as_u64() {
            Some(q) if (1..=MAX_QTY).contains(&q) => q,
            _ => {
                return Err(reject(
                    ErrorCode::InvalidQuantity,
                    format!("\"qty\" must be an integer from 1 to {MAX_QTY}"),
                ));
            }
        },
    };

    let limit = match field("price") {
        None => None,
        Some(v) => match v.as_f64() {
            Some(p) if p.is_finite() && p > 0.0 && p < 1e12 => Some(p),
            _ => return Err(reject(ErrorCode::InvalidOrder, "\"price\" must be a positive number")),
        },
    };

    Ok(Order { order_id, account, topic, symbol, symbol_index, side, qty, limit, traceparent: None })
}

fn trunc(s: &str) -> &str {
    match s.char_indices().nth(32) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl Order {
    /// The price the order is priced and filled at now.
    pub fn price(&self, market: &Market) -> f64 {
        self.limit.unwrap_or_else(|| round_cents(market.price(self.symbol_index)))
    }

    /// The reply's `data` for an accepted order.
    pub fn accepted_json(&self, market: &Market) -> String {
        json!({
            "order_id": self.order_id,
            "status": "accepted",
            "account": self.account,
            "symbol": self.symbol,
            "side": self.side.as_str(),
            "qty": self.qty,
            "price": self.price(market),
        })
        .to_string()
    }
}

/// One step of an order's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    New,
    PartiallyFilled,
    Filled,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::PartiallyFilled => "partially_filled",
            Status::Filled => "filled",
            Status::Cancelled => "cancelled",
        }
    }
}

/// The statuses an order goes through: a partial fill when the quantity
/// allows one, then filled or (when `cancel`) cancelled.
pub fn plan(qty: u64, cancel: bool) -> Vec<Status> {
    let mut steps = vec![Status::New];
    if qty >= 2 {
        steps.push(Status::PartiallyFilled);
    }
    steps.push(if cancel { Status::Cancelled } else { Status::Filled });
    steps
}

/// Walks an order through its lifecycle, keeping the fill state.
pub struct Execution {
    order: Order,
    filled: u64,
    sequence: u32,
}

impl Execution {
    pub fn new(order: Order) -> Self {
        Execution { order, filled: 0, sequence: 0 }
    }

    pub fn order(&self) -> &Order {
        &self.order
    }

    /// The update for `status`. Its id is derived from the order id and
    /// step, so serving the same request twice (after a replica crash)
    /// produces the same ids and the dedupe marker keeps one copy.
    pub fn step(&mut self, status: Status, market: &Market) -> OrderUpdate {
        self.sequence += 1;
        let o = &self.order;
        let price = o.price(market);
        let (last_qty, last_price) = match status {
            Status::New | Status::Cancelled => (0, 0.0),
            Status::PartiallyFilled => (o.qty / 2, price),
            Status::Filled => (o.qty - self.filled, price),
        };
        self.filled += last_qty;
        let data = json!({
            "order_id": o.order_id,
            "account": o.account,
            "symbol": o.symbol,
            "side": o.side.as_str(),
            "qty": o.qty,
            "price": price,
            "status": status.as_str(),
            "filled_qty": self.filled,
            "last_qty": last_qty,
            "last_price": last_price,
            "transaction": format!("{}-x{}", o.order_id, self.sequence),
            "sequence": self.sequence,
        })
        .to_string();
        let id = format!("{}.{}", o.order_id, self.sequence);
        OrderUpdate::traced(o.topic.clone(), id, &data, o.traceparent.as_deref(), status.as_str())
    }
}

/// Publishes an order's whole lifecycle, `delay` apart. The first update
/// is queued before this returns, so a caller that awaits it is paced by
/// the queue (and waits while the outage buffer is full).
pub async fn start_lifecycle(
    order: Order,
    cancel: bool,
    market: Arc<Market>,
    queue: UpdateQueue,
    delay: Duration,
    tracker: &tokio_util::task::TaskTracker,
) -> Result<(), QueueClosed> {
    let steps = plan(order.qty, cancel);
    let mut exec = Execution::new(order);
    queue.push(exec.step(steps[0], &market)).await?;
    tracker.spawn(async move {
        for status in steps.into_iter().skip(1) {
            tokio::time::sleep(delay).await;
            if queue.push(exec.step(status, &market)).await.is_err() {
                tracing::warn!(order_id = %exec.order().order_id, "shutdown cut an order's lifecycle short");
                return;
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn market() -> Market {
        Market::new(vec!["AAPL".into(), "MSFT".into()])
    }

    fn code(order: &str, account: Option<&str>) -> Result<Order, ErrorCode> {
        validate(order, account, &market(), "o1".into()).map_err(|r| r.code)
    }

    #[test]
    fn accepts_good_orders() {
        let o = code(r#"{"account":"a1","symbol":"AAPL","side":"buy","qty":10,"price":1.5,"x":1}"#, None)
            .unwrap();
        assert_eq!(
            (o.account.as_str(), o.topic.as_str(), o.qty, o.limit),
            ("a1", "orders.a1", 10, Some(1.5))
        );
        // The authenticated account wins over the object's.
        let o = code(r#"{"account":"a1","symbol":"MSFT","side":"sell","qty":1000000}"#, Some("tok")).unwrap();
        assert_eq!((o.account.as_str(), o.side, o.limit), ("tok", Side::Sell, None));
        assert!(code(r#"{"symbol":"MSFT","side":"sell","qty":1,"price":null}"#, Some("t")).is_ok());
    }

    #[test]
    fn refuses_with_precise_codes() {
        use ErrorCode::*;
        let cases: [(&str, Option<&str>, ErrorCode); 18] = [
            (r#"{"symbol":"AAPL","side":"buy","qty":1}"#, None, MissingField),
            (r#"{"account":"a","side":"buy","qty":1}"#, None, MissingField),
            (r#"{"account":"a","symbol":"AAPL","qty":1}"#, None, MissingField),
            (r#"{"account":"a","symbol":"AAPL","side":"buy"}"#, None, MissingField),
            (r#"{"account":"a","symbol":"AAPL","side":"buy","qty":null}"#, None, MissingField),
            (r#"{"account":"a","symbol":"AAPL","side":"buy","qty":0}"#, None, InvalidQuantity),
            (r#"{"account":"a","symbol":"AAPL","side":"buy","qty":-5}"#, None, InvalidQuantity),
            (r#"{"account":"a","symbol":"AAPL","side":"buy","qty":1.5}"#, None, InvalidQuantity),
            (r#"{"account":"a","symbol":"AAPL","side":"buy","qty":"10"}"#, None, InvalidQuantity),
            (r#"{"account":"a","symbol":"AAPL","side":"buy","qty":1000001}"#, None, InvalidQuantity),
            (r#"{"account":"a","symbol":"AAPL","side":"hold","qty":1}"#, None, InvalidSide),
            (r#"{"account":"a","symbol":"AAPL","side":1,"qty":1}"#, None, InvalidSide),
            (r#"{"account":"a","symbol":"NOPE","side":"buy","qty":1}"#, None, UnknownSymbol),
            (r#"{"account":"a","symbol":"AAPL","side":"buy","qty":1,"price":-1}"#, None, InvalidOrder),
            (r#"{"account":"a","symbol":"AAPL","side":"buy","qty":1,"price":"1"}"#, None, InvalidOrder),
            (r#"{"account":"a","symbol":7,"side":"buy","qty":1}"#, None, InvalidOrder),
            (r#"{"account":"a b","symbol":"AAPL","side":"buy","qty":1}"#, None, InvalidOrder),
            (r#"[1]"#, Some("a"), InvalidOrder),
        ];
        for (order, account, want) in cases {
            assert_eq!(code(order, account).err(), Some(want), "{order}");
        }
    }

    #[test]
    fn lifecycle_fills_the_whole_quantity() {
        let m = market();
        let order =
            validate(r#"{"symbol":"AAPL","side":"buy","qty":7,"price":2}"#, Some("a"), &m, "o9".into())
                .unwrap();
        let mut exec = Execution::new(order);
        let steps = plan(7, false);
        assert_eq!(steps, [Status::New, Status::PartiallyFilled, Status::Filled]);
        let rows: Vec<serde_json::Value> = steps
            .iter()
            .map(|s| {
                let u = exec.step(*s, &m);
                let env = format!("{}1{}", u.head, u.tail);
                let parsed = wire::Envelope::parse(env.as_bytes(), Some("orders.a")).unwrap();
                serde_json::from_str(parsed.data.get()).unwrap()
            })
            .collect();
        assert_eq!(rows[1]["filled_qty"], 3);
        assert_eq!(rows[2]["filled_qty"], 7);
        assert_eq!(rows[2]["last_qty"], 4);
        assert_eq!(rows[2]["sequence"], 3);
        assert_eq!(rows[2]["transaction"], "o9-x3");
        assert_eq!(plan(1, true), [Status::New, Status::Cancelled]);
    }
}
