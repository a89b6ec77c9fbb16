//! The topics a run uses and who subscribes to which.
//!
//! Topics are numbered: `0..quotes` are `quotes.SYM<i>` and the next
//! `orders` are `orders.ACC<i>`, so a frame's topic maps back to its
//! index without a lookup table. Each connection draws its quote topics
//! from a uniform or Zipf distribution with an RNG seeded from the run
//! seed and its connection id, so every worker process derives the same
//! assignment for the same connection.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

const QUOTE_PREFIX: &str = "quotes.SYM";
const ORDER_PREFIX: &str = "orders.ACC";

/// How connections pick their quote topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Dist {
    /// Every quote topic equally likely.
    Uniform,
    /// Topic of rank k (SYM0 is rank 1) with probability ∝ 1/k^s: a few
    /// hot symbols, a long tail, as real market-data interest looks.
    Zipf,
}

/// The numbered topic names of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpace {
    pub quotes: u32,
    pub orders: u32,
}

impl TopicSpace {
    pub fn len(&self) -> usize {
        self.quotes as usize + self.orders as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn name(&self, index: u32) -> String {
        if index < self.quotes {
            format!("{QUOTE_PREFIX}{index}")
        } else {
            format!("{ORDER_PREFIX}{}", index - self.quotes)
        }
    }

    /// The index of a topic name of this run, if it is one.
    pub fn index_of(&self, name: &str) -> Option<u32> {
        if let Some(n) = name.strip_prefix(QUOTE_PREFIX) {
            let i = parse_index(n)?;
            (i < self.quotes).then_some(i)
        } else {
            let i = parse_index(name.strip_prefix(ORDER_PREFIX)?)?;
            (i < self.orders).then_some(self.quotes + i)
        }
    }
}

/// Digits only, no sign or leading zero, so each name has one index.
fn parse_index(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// Draws each connection's topics.
#[derive(Debug, Clone)]
pub struct Sampler {
    space: TopicSpace,
    per_conn: u32,
    seed: u64,
    /// Cumulative Zipf probabilities by rank; `None` for uniform.
    zipf_cdf: Option<Vec<f64>>,
}

impl Sampler {
    /// `per_conn` must not exceed `space.quotes` (checked by the settings).
    pub fn new(space: TopicSpace, per_conn: u32, dist: Dist, zipf_s: f64, seed: u64) -> Self {
        let zipf_cdf = (dist == Dist::Zipf).then(|| {
            let weights: Vec<f64> = (1..=space.quotes).map(|k| f64::from(k).powf(-zipf_s)).collect();
            let total: f64 = weights.iter().sum();
            let mut acc = 0.0;
            weights
                .iter()
                .map(|w| {
                    acc += w / total;
                    acc
                })
                .collect()
        });
        Sampler { space, per_conn: per_conn.min(space.quotes), seed, zipf_cdf }
    }

    /// Connection `conn`'s topic indices, sorted: `per_conn` distinct
    /// quote topics, plus its account's orders topic when the run has
    /// order topics (connection c is account `c % orders`).
    pub fn topics_for(&self, conn: u64) -> Box<[u32]> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ conn.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let want = self.per_conn as usize;
        let mut picked: Vec<u32> = Vec::with_capacity(want + 1);
        // Rejection keeps the draw faithful to the distribution; the bound
        // stops a steep Zipf with many topics per connection from spinning.
        let mut tries = 0;
        while picked.len() < want && tries < 64 * want {
            tries += 1;
            let t = self.draw(&mut rng);
            if !picked.contains(&t) {
                picked.push(t);
            }
        }
        let mut next = 0;
        while picked.len() < want {
            if !picked.contains(&next) {
                picked.push(next);
            }
            next += 1;
        }
        if self.space.orders > 0 {
            picked.push(self.space.quotes + (conn % u64::from(self.space.orders)) as u32);
        }
        picked.sort_unstable();
        picked.into_boxed_slice()
    }

    fn draw(&self, rng: &mut StdRng) -> u32 {
        match &self.zipf_cdf {
            None => rng.random_range(0..self.space.quotes),
            Some(cdf) => {
                let u: f64 = rng.random();
                let rank = cdf.partition_point(|&p| p < u);
                rank.min(cdf.len().saturating_sub(1)) as u32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_indices_round_trip() {
        let space = TopicSpace { quotes: 10, orders: 3 };
        for i in 0..13 {
            assert_eq!(space.index_of(&space.name(i)), Some(i));
        }
        assert_eq!(space.name(0), "quotes.SYM0");
        assert_eq!(space.name(12), "orders.ACC2");
        for bad in ["quotes.SYM10", "quotes.SYM01", "quotes.SYM", "quotes.SYM-1", "orders.ACC3", "x"] {
            assert_eq!(space.index_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn each_connection_gets_distinct_sorted_topics_deterministically() {
        let space = TopicSpace { quotes: 20, orders: 4 };
        let s = Sampler::new(space, 5, Dist::Uniform, 1.0, 7);
        for conn in 0..200 {
            let t = s.topics_for(conn);
            assert_eq!(t.len(), 6);
            assert!(t.windows(2).all(|w| w[0] < w[1]), "{t:?}");
            assert_eq!(t[5], 20 + (conn % 4) as u32);
            assert_eq!(t, s.topics_for(conn));
        }
        assert_ne!(s.topics_for(1), s.topics_for(2));
    }

    #[test]
    fn zipf_favours_low_ranks_and_still_fills_every_slot() {
        let space = TopicSpace { quotes: 100, orders: 0 };
        let s = Sampler::new(space, 1, Dist::Zipf, 1.2, 1);
        let mut hits = vec![0u32; 100];
        for conn in 0..20_000 {
            hits[s.topics_for(conn)[0] as usize] += 1;
        }
        assert!(hits[0] > hits[1] && hits[1] > hits[10] && hits[10] > hits[90], "{hits:?}");
        // s = 1.2 over 100 topics gives rank 1 about 27% of draws.
        assert!((4_500..6_500).contains(&hits[0]), "{}", hits[0]);

        let steep = Sampler::new(TopicSpace { quotes: 8, orders: 0 }, 8, Dist::Zipf, 5.0, 1);
        assert_eq!(&*steep.topics_for(3), &[0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn uniform_spreads_evenly() {
        let s = Sampler::new(TopicSpace { quotes: 10, orders: 0 }, 2, Dist::Uniform, 1.0, 3);
        let mut hits = [0u32; 10];
        for conn in 0..10_000 {
            for &t in s.topics_for(conn).iter() {
                hits[t as usize] += 1;
            }
        }
        assert!(hits.iter().all(|&h| (1_700..2_300).contains(&h)), "{hits:?}");
    }
}
