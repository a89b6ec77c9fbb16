//! The simulated market: which symbols exist, each symbol's quote as a
//! random walk, and the latest trade price shared with the order side.
//!
//! The feed owns the [`Quote`]s and moves them; order validation asks the
//! [`Market`] whether a symbol is traded, and fills are priced at the
//! symbol's latest trade, which the feed publishes into the market.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

pub struct Market {
    symbols: Vec<String>,
    /// `quotes.<SYMBOL>` for each symbol, built once.
    topics: Vec<String>,
    index: HashMap<String, usize>,
    /// Latest trade price per symbol (f64 bits): written by the feed,
    /// read when orders are priced and filled.
    last: Vec<AtomicU64>,
}

impl Market {
    pub fn new(symbols: Vec<String>) -> Self {
        let topics = symbols.iter().map(|s| format!("quotes.{s}")).collect();
        let index = symbols.iter().enumerate().map(|(i, s)| (s.clone(), i)).collect();
        let last = symbols.iter().map(|s| AtomicU64::new(initial_price(s).to_bits())).collect();
        Market { symbols, topics, index, last }
    }

    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    pub fn topic(&self, i: usize) -> &str {
        &self.topics[i]
    }

    pub fn index_of(&self, symbol: &str) -> Option<usize> {
        self.index.get(symbol).copied()
    }

    pub fn price(&self, i: usize) -> f64 {
        f64::from_bits(self.last[i].load(Ordering::Relaxed))
    }

    pub fn set_price(&self, i: usize, price: f64) {
        self.last[i].store(price.to_bits(), Ordering::Relaxed);
    }
}

/// A stable starting price in 10..510 derived from the symbol's name, so
/// restarts and replicas agree roughly on where prices are.
fn initial_price(symbol: &str) -> f64 {
    // FNV-1a: tiny, stable across Rust versions (unlike DefaultHasher).
    let h = symbol
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    10.0 + (h % 50_000) as f64 / 100.0
}

/// One symbol's quote as the feed moves it.
#[derive(Debug, Clone)]
pub struct Quote {
    pub bid: f64,
    pub ask: f64,
    pub last: f64,
    pub volume: u64,
}

impl Quote {
    pub fn new(price: f64) -> Self {
        let mut q = Quote { bid: 0.0, ask: 0.0, last: price, volume: 0 };
        q.set_spread();
        q
    }

    /// Moves the price by up to ±0.1 % and trades a few hundred shares.
    pub fn step(&mut self, rng: &mut impl Rng) {
        let moved = self.last * (1.0 + rng.random_range(-0.001..0.001));
        self.last = round_cents(moved.max(0.01));
        self.volume += rng.random_range(1..500u64);
        self.set_spread();
    }

    fn set_spread(&mut self) {
        let half = (self.last * 0.0001).max(0.01);
        self.bid = round_cents((self.last - half).max(0.01));
        self.ask = round_cents(self.last + half);
    }

    /// The quote's `data` object, written by hand: it is the hot path.
    pub fn write_json(&self, symbol: &str, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            r#"{{"symbol":"{symbol}","bid":{:.2},"ask":{:.2},"last":{:.2},"volume":{}}}"#,
            self.bid, self.ask, self.last, self.volume
        );
    }
}

pub fn round_cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_its_symbols_and_prices() {
        let m = Market::new(vec!["AAPL".into(), "MSFT".into()]);
        assert_eq!(m.index_of("MSFT"), Some(1));
        assert_eq!(m.index_of("NOPE"), None);
        assert_eq!(m.topic(0), "quotes.AAPL");
        let p = m.price(0);
        assert!((10.0..510.0).contains(&p));
        m.set_price(0, 42.5);
        assert_eq!(m.price(0), 42.5);
    }

    #[test]
    fn quote_walk_stays_sane_and_encodes_as_json() {
        let mut rng = rand::rng();
        let mut q = Quote::new(100.0);
        for _ in 0..10_000 {
            q.step(&mut rng);
            assert!(q.bid < q.ask && q.bid > 0.0);
        }
        let mut s = String::new();
        q.write_json("AAPL", &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["symbol"], "AAPL");
        assert_eq!(v["volume"].as_u64(), Some(q.volume));
    }
}
