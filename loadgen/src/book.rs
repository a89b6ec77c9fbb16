//! One order connection's book: when its next order is due, the order
//! frames it sends, and the accounting of everything that comes back.
//!
//! Every order id must get exactly one answer (`reply` or `error`): none
//! is a lost order, two a duplicate. Every accepted order must see its
//! lifecycle on `orders.<account>` exactly once: `new`, `partially_filled`
//! (when its quantity allows a partial fill), then `filled` or
//! `cancelled` (publisher/src/orders.rs), with the topic's `seq` free of
//! gaps and repeats. Updates may arrive before the reply that names their
//! order (they travel on another Redis channel), so both are keyed by the
//! order id the reply carries and matched whenever both are in.
//!
//! No I/O here: the connection task feeds frames and times (Unix µs) in
//! and gets back what happened, for the process-wide [`OrderStats`]
//! (crate::order_stats); so the accounting is unit-tested without sockets.
//!
//! [`OrderStats`]: crate::order_stats::OrderStats

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use service::telemetry::trace::{self, Kind, Role};
use wire::client::Outgoing;

use crate::stats::{SeqCheck, check_seq};

/// If a connection falls this far behind its schedule (a stalled
/// process), it starts afresh from now instead of bursting the backlog.
const MAX_CATCH_UP_US: u64 = 1_000_000;

/// The time between one connection's orders: uniform in `min..=max` µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pace {
    pub min_us: u64,
    pub max_us: u64,
}

impl Pace {
    /// Orders per second one connection places on average.
    pub fn per_second(&self) -> f64 {
        2e6 / (self.min_us + self.max_us).max(1) as f64
    }

    fn draw(&self, rng: &mut StdRng) -> u64 {
        rng.random_range(self.min_us..=self.max_us.max(self.min_us)).max(1)
    }
}

/// What every order of a run looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderShape {
    /// Symbols drawn from uniformly; they must be ones the publisher trades.
    pub symbols: Vec<String>,
    /// Quantities are drawn from 1..=qty_max (1 has no partial fill).
    pub qty_max: u32,
    /// Name the account in the order object: for gateways with
    /// authentication off, where no token says who is ordering.
    pub account_in_order: bool,
}

/// The lifecycle statuses, as indices into [`Track::counts`].
const NEW: usize = 0;
const PARTIAL: usize = 1;
const FILLED: usize = 2;
const CANCELLED: usize = 3;

/// Of the updates an order of `qty` owes, how many `counts` hold.
fn owed_seen(counts: &[u8; 4], qty: u32) -> u64 {
    let partial = if qty >= 2 { u64::from(counts[PARTIAL] > 0) } else { 0 };
    u64::from(counts[NEW] > 0) + partial + u64::from(counts[FILLED] + counts[CANCELLED] > 0)
}

fn status_index(status: &str) -> Option<usize> {
    match status {
        "new" => Some(NEW),
        "partially_filled" => Some(PARTIAL),
        "filled" => Some(FILLED),
        "cancelled" => Some(CANCELLED),
        _ => None,
    }
}

/// Lifecycle updates an accepted order of `qty` owes.
pub fn updates_owed(qty: u32) -> u64 {
    if qty >= 2 { 3 } else { 2 }
}

/// One order this connection placed.
#[derive(Debug, Clone)]
struct Slot {
    sent_us: u64,
    qty: u32,
    /// `reply` and `error` frames received for its id.
    answers: u8,
    /// First answer: when, and its code (`ok` for a reply).
    answer_us: u64,
    code: Option<Box<str>>,
    order_id: Option<Box<str>>,
}

/// What arrived for one order id on the account's topic.
#[derive(Debug, Default, Clone)]
struct Track {
    /// Updates seen per status (new, partially_filled, filled, cancelled).
    counts: [u8; 4],
    /// The order (index into `slots`) whose accepted reply named this id.
    slot: Option<u32>,
    /// `ts` of the `new` update (when the order service wrote it), ms.
    new_ts_ms: u64,
    new_recv_us: u64,
    end_recv_us: u64,
}

/// An order to send now.
#[derive(Debug)]
pub struct Placed {
    pub frame: String,
    /// How long after its slot it goes out, µs.
    pub late_us: u64,
}

/// What an answer frame (`reply`, or `error` with an id) was.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The first answer for its order.
    First {
        sent_us: u64,
        latency_us: u64,
        /// `None` for a reply; the error's code otherwise.
        error: Option<String>,
        /// Lifecycle updates the order now owes (0 unless accepted).
        owed: u64,
        /// Of those, already arrived (updates may beat their reply).
        arrived: u64,
    },
    /// Another answer for an order already answered.
    Duplicate,
    /// An id this connection never sent, or a reply it cannot read.
    Unknown(&'static str),
}

/// What a `message` frame on the account's topic was.
#[derive(Debug, PartialEq, Eq)]
pub enum Update {
    /// The first update of its (order, status).
    Unique,
    /// An (order, status) seen before, or a second terminal status.
    Duplicate,
    /// Not a lifecycle row this run can place.
    Invalid(&'static str),
}

/// The verdict on the whole book when its connection ends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Final {
    /// Orders sent that never got an answer.
    pub unanswered: u64,
    /// Lifecycle updates accepted orders owed that never arrived.
    pub missing: u64,
    /// Updates for order ids no reply of this connection named.
    pub orphans: u64,
    /// Statuses an order cannot have (a partial fill of quantity 1).
    pub unexpected: u64,
}

/// One order's times, for `--order-trace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRow {
    pub conn: u64,
    pub n: u64,
    pub order_id: String,
    pub sent_us: u64,
    /// 0 when unanswered.
    pub answer_us: u64,
    /// `ok`, an error code, or empty when unanswered.
    pub code: String,
    /// `ts` of its `new` update (set by the order service), ms; 0 if none.
    pub new_ts_ms: u64,
    pub new_recv_us: u64,
    /// When its filled/cancelled update arrived; 0 if none.
    pub end_recv_us: u64,
}

impl TraceRow {
    pub const CSV_HEADER: &'static str =
        "conn,n,order_id,sent_us,answer_us,code,new_ts_ms,new_recv_us,end_recv_us";

    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{}",
            self.conn,
            self.n,
            self.order_id,
            self.sent_us,
            self.answer_us,
            self.code,
            self.new_ts_ms,
            self.new_recv_us,
            self.end_recv_us
        )
    }
}

#[derive(Deserialize)]
struct AcceptedData {
    order_id: String,
}

#[derive(Deserialize)]
struct UpdateData {
    order_id: String,
    status: String,
}

/// One order connection's orders and what came back for them.
pub struct Book {
    /// The connection's index among order connections.
    conn: u64,
    account: Box<str>,
    pace: Pace,
    shape: Arc<OrderShape>,
    rng: StdRng,
    /// When the next order is due (Unix µs); `None` while not placing.
    due_us: Option<u64>,
    /// Order `n` (its id is `"n"`) is `slots[n]`.
    slots: Vec<Slot>,
    tracks: HashMap<Box<str>, Track>,
    last_seq: Option<u64>,
    /// Client spans of the sampled orders not answered yet, by order `n`.
    traced: HashMap<u64, tracing::Span>,
}

impl Book {
    pub fn new(conn: u64, account: &str, pace: Pace, shape: Arc<OrderShape>, seed: u64) -> Book {
        Book {
            conn,
            account: account.into(),
            pace,
            shape,
            rng: StdRng::seed_from_u64(seed ^ conn.wrapping_mul(0xA24B_AED4_963E_E407)),
            due_us: None,
            slots: Vec::new(),
            tracks: HashMap::new(),
            traced: HashMap::new(),
            last_seq: None,
        }
    }

    /// Starts placing orders: the first at a random point within one
    /// interval, so connections that became ready together do not fire
    /// together.
    pub fn arm(&mut self, now_us: u64) {
        if self.due_us.is_none() {
            let phase = self.rng.random_range(0..=self.pace.max_us);
            self.due_us = Some(now_us + phase);
        }
    }

    /// Stops placing (the socket went away, or the measured time is over).
    pub fn disarm(&mut self) {
        self.due_us = None;
    }

    pub fn due_us(&self) -> Option<u64> {
        self.due_us
    }

    pub fn sent(&self) -> u64 {
        self.slots.len() as u64
    }

    /// The order due now (call when `now_us` ≥ [`Book::due_us`]); `None`
    /// when not armed.
    pub fn place(&mut self, now_us: u64) -> Option<Placed> {
        let due = self.due_us?;
        let n = self.slots.len() as u64;
        let shape = &self.shape;
        let pick = self.rng.random_range(0..shape.symbols.len().max(1));
        let symbol = shape.symbols.get(pick).map_or("", String::as_str);
        let side = if self.rng.random_bool(0.5) { "buy" } else { "sell" };
        let qty = self.rng.random_range(1..=shape.qty_max.max(1));
        let price = f64::from(self.rng.random_range(10_000u32..20_000)) / 100.0;
        let mut order = serde_json::json!({ "symbol": symbol, "side": side, "qty": qty, "price": price });
        if shape.account_in_order {
            order["account"] = serde_json::Value::from(&*self.account);
        }
        let id = n.to_string();
        // A sampled order is a client span (at the order ratio) whose
        // context the frame carries: the trace then starts at the client.
        let span = trace::start("loadgen.order", Role::Client, Kind::Order, None);
        let traceparent = span.as_ref().and_then(trace::traceparent);
        let frame = Outgoing::Order { id: &id, order: &order, traceparent: traceparent.as_deref() }.to_json();
        if let Some(span) = span {
            self.traced.insert(n, span);
        }
        self.slots.push(Slot { sent_us: now_us, qty, answers: 0, answer_us: 0, code: None, order_id: None });
        let mut next = due + self.pace.draw(&mut self.rng);
        if next + MAX_CATCH_UP_US < now_us {
            next = now_us;
        }
        self.due_us = Some(next);
        Some(Placed { frame, late_us: now_us.saturating_sub(due) })
    }

    /// A `reply` frame: `id` and `data` as sent by the gateway.
    pub fn on_reply(&mut self, id: Option<&RawValue>, data: Option<&RawValue>, now_us: u64) -> Answer {
        let Some(n) = id.and_then(parse_id) else {
            return Answer::Unknown("reply with an id loadgen did not send");
        };
        let Some(slot) = self.slots.get_mut(n as usize) else {
            return Answer::Unknown("reply with an id loadgen did not send");
        };
        slot.answers = slot.answers.saturating_add(1);
        if slot.answers > 1 {
            return Answer::Duplicate;
        }
        self.traced.remove(&n);
        slot.answer_us = now_us;
        slot.code = Some("ok".into());
        let (sent_us, qty) = (slot.sent_us, slot.qty);
        let Some(order_id) = data.and_then(|d| serde_json::from_str::<AcceptedData>(d.get()).ok()) else {
            return Answer::Unknown("reply without data.order_id");
        };
        let key: Box<str> = order_id.order_id.into();
        slot.order_id = Some(key.clone());
        let track = self.tracks.entry(key).or_default();
        track.slot = Some(n as u32);
        Answer::First {
            sent_us,
            latency_us: now_us.saturating_sub(sent_us),
            error: None,
            owed: updates_owed(qty),
            arrived: owed_seen(&track.counts, qty),
        }
    }

    /// An `error` frame that carries an `id` (the answer to an order).
    pub fn on_error(&mut self, id: &RawValue, code: &str, now_us: u64) -> Answer {
        let n = parse_id(id);
        let Some(slot) = n.and_then(|n| self.slots.get_mut(n as usize)) else {
            return Answer::Unknown("error with an id loadgen did not send");
        };
        slot.answers = slot.answers.saturating_add(1);
        if slot.answers > 1 {
            return Answer::Duplicate;
        }
        if let Some(span) = n.and_then(|n| self.traced.remove(&n)) {
            trace::set_attribute(&span, "error.code", code.to_owned());
        }
        slot.answer_us = now_us;
        slot.code = Some(code.into());
        Answer::First {
            sent_us: slot.sent_us,
            latency_us: now_us.saturating_sub(slot.sent_us),
            error: Some(code.to_owned()),
            owed: 0,
            arrived: 0,
        }
    }

    /// A `message` frame on the account's topic. Also says what its `seq`
    /// was against the previous one (`None` without a seq), and whether
    /// it is one an accepted order owed (1) or not (0: a repeat, or an
    /// update whose reply has not come yet; that reply then counts it).
    pub fn on_update(
        &mut self,
        seq: Option<u64>,
        ts_ms: Option<u64>,
        data: Option<&RawValue>,
        now_us: u64,
    ) -> (Option<SeqCheck>, Update, u64) {
        let check = seq.map(|s| check_seq(&mut self.last_seq, s));
        let Some(row) = data.and_then(|d| serde_json::from_str::<UpdateData>(d.get()).ok()) else {
            return (check, Update::Invalid("order update without order_id and status"), 0);
        };
        let Some(status) = status_index(&row.status) else {
            return (check, Update::Invalid("order update with an unknown status"), 0);
        };
        let track = self.tracks.entry(row.order_id.into()).or_default();
        let qty = track.slot.and_then(|i| self.slots.get(i as usize)).map(|s| s.qty);
        let before = qty.map(|q| owed_seen(&track.counts, q));
        track.counts[status] = track.counts[status].saturating_add(1);
        let arrived = match (qty, before) {
            (Some(q), Some(b)) => owed_seen(&track.counts, q) - b,
            _ => 0,
        };
        match status {
            NEW if track.counts[NEW] == 1 => {
                track.new_ts_ms = ts_ms.unwrap_or(0);
                track.new_recv_us = now_us;
            }
            FILLED | CANCELLED if track.end_recv_us == 0 => track.end_recv_us = now_us,
            _ => {}
        }
        let terminals = track.counts[FILLED] + track.counts[CANCELLED];
        let repeated = track.counts[status] > 1 || (matches!(status, FILLED | CANCELLED) && terminals > 1);
        (check, if repeated { Update::Duplicate } else { Update::Unique }, arrived)
    }

    /// Sequence numbers are per socket lifetime of the topic state: after
    /// a reconnect the gateway replays from `since`, so the last seq stays.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Judges every order; with `trace`, also each order's times.
    pub fn finish(&self, trace: bool) -> (Final, Vec<TraceRow>) {
        let mut f = Final::default();
        for slot in &self.slots {
            if slot.answers == 0 {
                f.unanswered += 1;
            }
        }
        for track in self.tracks.values() {
            let seen: u64 = track.counts.iter().map(|&c| u64::from(c)).sum();
            let Some(slot) = track.slot.and_then(|i| self.slots.get(i as usize)) else {
                f.orphans += seen;
                continue;
            };
            let c = &track.counts;
            f.missing += u64::from(c[NEW] == 0) + u64::from(c[FILLED] + c[CANCELLED] == 0);
            if slot.qty >= 2 {
                f.missing += u64::from(c[PARTIAL] == 0);
            } else {
                f.unexpected += u64::from(c[PARTIAL]);
            }
        }
        let rows = if trace {
            self.slots
                .iter()
                .enumerate()
                .map(|(n, slot)| {
                    let track = slot.order_id.as_ref().and_then(|id| self.tracks.get(id));
                    TraceRow {
                        conn: self.conn,
                        n: n as u64,
                        order_id: slot.order_id.as_deref().unwrap_or("").to_owned(),
                        sent_us: slot.sent_us,
                        answer_us: slot.answer_us,
                        code: slot.code.as_deref().unwrap_or("").to_owned(),
                        new_ts_ms: track.map_or(0, |t| t.new_ts_ms),
                        new_recv_us: track.map_or(0, |t| t.new_recv_us),
                        end_recv_us: track.map_or(0, |t| t.end_recv_us),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        (f, rows)
    }
}

/// Ids are sent as JSON strings of the order's number.
fn parse_id(id: &RawValue) -> Option<u64> {
    let text: String = serde_json::from_str(id.get()).ok()?;
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn book(qty_max: u32) -> Book {
        let shape =
            OrderShape { symbols: vec!["AAPL".into(), "MSFT".into()], qty_max, account_in_order: false };
        Book::new(3, "TRD3", Pace { min_us: 50_000, max_us: 250_000 }, Arc::new(shape), 1)
    }

    /// Places one order; returns its id (as the gateway echoes it) and qty.
    fn place(b: &mut Book, now: u64) -> (Box<RawValue>, u32) {
        b.arm(now);
        let placed = b.place(b.due_us().unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&placed.frame).unwrap();
        assert_eq!(v["action"], "order");
        assert!(v["order"].get("account").is_none(), "the token names the account");
        (raw(&v["id"].to_string()), v["order"]["qty"].as_u64().unwrap() as u32)
    }

    fn accepted(order_id: &str) -> Box<RawValue> {
        raw(&format!(r#"{{"order_id":"{order_id}","status":"accepted","qty":5}}"#))
    }

    fn update(order_id: &str, status: &str) -> Box<RawValue> {
        raw(&format!(r#"{{"order_id":"{order_id}","status":"{status}"}}"#))
    }

    #[test]
    fn orders_follow_the_pace_and_the_shape() {
        let mut b = book(500);
        b.arm(1_000_000);
        let first = b.due_us().unwrap();
        assert!((1_000_000..=1_250_000).contains(&first), "{first}");
        let mut due = first;
        for _ in 0..200 {
            let p = b.place(due).unwrap();
            assert_eq!(p.late_us, 0);
            let v: serde_json::Value = serde_json::from_str(&p.frame).unwrap();
            let o = &v["order"];
            assert!(["AAPL", "MSFT"].contains(&o["symbol"].as_str().unwrap()), "{o}");
            assert!(["buy", "sell"].contains(&o["side"].as_str().unwrap()), "{o}");
            assert!((1..=500).contains(&o["qty"].as_u64().unwrap()), "{o}");
            assert!(o["price"].as_f64().unwrap() >= 100.0, "{o}");
            let next = b.due_us().unwrap();
            assert!((50_000..=250_000).contains(&(next - due)), "{}", next - due);
            due = next;
        }
        assert_eq!(b.sent(), 200);
        // A stalled process starts afresh instead of bursting a backlog.
        let now = due + 10_000_000;
        assert_eq!(b.place(now).unwrap().late_us, 10_000_000);
        assert_eq!(b.due_us(), Some(now));
        b.disarm();
        assert!(b.place(now).is_none());
    }

    #[test]
    fn the_account_goes_into_the_order_without_tokens() {
        let shape = OrderShape { symbols: vec!["AAPL".into()], qty_max: 1, account_in_order: true };
        let mut b = Book::new(0, "TRD0", Pace { min_us: 1, max_us: 1 }, Arc::new(shape), 1);
        b.arm(0);
        let p = b.place(10).unwrap();
        let v: serde_json::Value = serde_json::from_str(&p.frame).unwrap();
        assert_eq!(v["order"]["account"], "TRD0");
        assert_eq!(v["id"], "0");
    }

    #[test]
    fn one_answer_per_order_and_every_update_once() {
        let mut b = book(500);
        let (id, qty) = place(&mut b, 0);
        // The `new` update may come before the reply that names the order.
        assert_eq!(
            b.on_update(Some(7), Some(1), Some(&update("ord-1", "new")), 5),
            (Some(SeqCheck::First), Update::Unique, 0),
            "not owed yet: no reply has named the order"
        );
        let sent = b.slots[0].sent_us;
        match b.on_reply(Some(&id), Some(&accepted("ord-1")), sent + 900) {
            Answer::First { latency_us, error: None, owed, arrived, .. } => {
                assert_eq!(latency_us, 900);
                assert_eq!((owed, arrived), (updates_owed(qty), 1), "the early `new` counts now");
            }
            other => panic!("{other:?}"),
        }
        if qty >= 2 {
            assert_eq!(
                b.on_update(Some(8), None, Some(&update("ord-1", "partially_filled")), 6).1,
                Update::Unique
            );
        }
        let last = if qty >= 2 { 9 } else { 8 };
        let (check, u, arrived) = b.on_update(Some(last), None, Some(&update("ord-1", "filled")), 7);
        assert_eq!((check, u, arrived), (Some(SeqCheck::InOrder), Update::Unique, 1));
        assert_eq!(b.finish(false).0, Final::default(), "complete and exactly once");
    }

    #[test]
    fn a_duplicated_reply_is_caught() {
        let mut b = book(10);
        let (id, _) = place(&mut b, 0);
        assert!(matches!(b.on_reply(Some(&id), Some(&accepted("ord-1")), 10), Answer::First { .. }));
        assert_eq!(b.on_reply(Some(&id), Some(&accepted("ord-1")), 11), Answer::Duplicate);
        assert_eq!(
            b.on_error(&id, "timeout", 12),
            Answer::Duplicate,
            "an error after the reply is a second answer"
        );
        assert_eq!(
            b.on_reply(Some(&raw(r#""99""#)), Some(&accepted("ord-9")), 13),
            Answer::Unknown("reply with an id loadgen did not send")
        );
        assert!(matches!(b.on_reply(Some(&raw("7")), None, 13), Answer::Unknown(_)), "ids are strings");
        assert!(matches!(b.on_reply(None, None, 13), Answer::Unknown(_)));
    }

    #[test]
    fn lost_orders_and_missing_or_repeated_updates_are_caught() {
        let mut b = book(1);
        let (lost, _) = place(&mut b, 0);
        let (errored, _) = place(&mut b, 0);
        let (ok, qty) = place(&mut b, 0);
        assert_eq!(qty, 1, "qty_max 1: new then filled, no partial fill");
        let _ = lost;
        match b.on_error(&errored, "timeout", 50) {
            Answer::First { error: Some(code), owed: 0, .. } => assert_eq!(code, "timeout"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(b.on_reply(Some(&ok), Some(&accepted("ord-3")), 60), Answer::First { owed: 2, .. }));
        assert_eq!(b.on_update(Some(1), None, Some(&update("ord-3", "new")), 70).1, Update::Unique);
        let (_, repeat, arrived) = b.on_update(Some(2), None, Some(&update("ord-3", "new")), 71);
        assert_eq!((repeat, arrived), (Update::Duplicate, 0), "a repeat is owed nothing");
        // The timed-out order was served after all: its updates name an
        // order no reply of ours did.
        assert_eq!(
            b.on_update(Some(4), None, Some(&update("ord-2", "new")), 72),
            (Some(SeqCheck::Gap(1)), Update::Unique, 0),
            "an orphan is owed by no order: the drain must not wait on it, nor count it"
        );
        assert_eq!(
            b.on_update(Some(4), None, Some(&update("ord-2", "filled")), 73).0,
            Some(SeqCheck::Duplicate)
        );
        let (_, partial, arrived) =
            b.on_update(Some(5), None, Some(&update("ord-3", "partially_filled")), 74);
        assert_eq!((partial, arrived), (Update::Unique, 0), "quantity 1 owes no partial fill");
        assert!(matches!(b.on_update(Some(6), None, Some(&raw(r#"{"x":1}"#)), 75).1, Update::Invalid(_)));
        assert!(matches!(
            b.on_update(Some(7), None, Some(&update("ord-3", "expired")), 76).1,
            Update::Invalid(_)
        ));
        let (f, rows) = b.finish(true);
        // ord-3 never filled; ord-2's two updates are orphans; a partial
        // fill of quantity 1 cannot happen.
        assert_eq!(f, Final { unanswered: 1, missing: 1, orphans: 2, unexpected: 1 });
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].code.as_str(), rows[0].answer_us), ("", 0));
        assert_eq!((rows[1].code.as_str(), rows[1].order_id.as_str()), ("timeout", ""));
        assert_eq!(
            (rows[2].code.as_str(), rows[2].order_id.as_str(), rows[2].new_recv_us, rows[2].end_recv_us),
            ("ok", "ord-3", 70, 0)
        );
        assert_eq!(rows[2].csv().split(',').count(), TraceRow::CSV_HEADER.split(',').count());
    }

    #[test]
    fn two_terminal_statuses_are_a_duplicate() {
        let mut b = book(1);
        let (id, _) = place(&mut b, 0);
        b.on_reply(Some(&id), Some(&accepted("ord-1")), 1);
        b.on_update(Some(1), None, Some(&update("ord-1", "new")), 2);
        assert_eq!(b.on_update(Some(2), None, Some(&update("ord-1", "cancelled")), 3).1, Update::Unique);
        assert_eq!(b.on_update(Some(3), None, Some(&update("ord-1", "filled")), 4).1, Update::Duplicate);
        assert_eq!(b.finish(false).0, Final::default());
    }

    #[test]
    fn the_pace_averages_to_its_rate() {
        assert_eq!(Pace { min_us: 50_000, max_us: 250_000 }.per_second(), 2e6 / 300_000.0);
        assert_eq!(Pace { min_us: 25_000, max_us: 75_000 }.per_second(), 20.0);
    }
}
