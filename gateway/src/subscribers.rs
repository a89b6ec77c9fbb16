//! One topic's local subscribers, as the hub keeps them: adding and
//! removing one is amortised O(1) however many the topic has, and a
//! fan-out takes a [`Snapshot`] (one reference count) and walks it
//! without any lock.
//!
//! The list is a vector of chunks of at most [`CHUNK`] subscribers, each
//! chunk and the vector behind an `Arc`. A change mutates in place when no
//! fan-out holds a snapshot (`Arc::make_mut`); while one does, only the
//! chunk touched and the vector of chunk pointers are copied, never the
//! whole list. A plain copy-on-write slice (what this replaced) copied
//! every subscriber on every subscribe: quadratic for a hot symbol that
//! 100,000 clients join.
//!
//! Removal swaps the last subscriber into the hole, so order is not kept
//! (fan-out order carries no meaning). Positions are found through a map
//! once the topic has more than [`MAP_FROM`] subscribers; below that a
//! scan is cheaper than a map per topic (most topics, e.g. each account's
//! `orders.*`, have one or two).

use std::collections::HashMap;
use std::sync::Arc;

use crate::hub::{ConnId, Subscriber};

/// Subscribers per chunk: what one change copies at most while a
/// fan-out holds a snapshot.
pub const CHUNK: usize = 256;

/// From this many subscribers on, positions are kept in a map.
pub const MAP_FROM: usize = 16;

type Chunks = Arc<Vec<Arc<Vec<Subscriber>>>>;

/// A topic's subscribers; never empty while in the hub.
#[derive(Default)]
pub struct Subscribers {
    chunks: Chunks,
    len: usize,
    /// Position of each connection, once `len` > [`MAP_FROM`].
    at: Option<HashMap<ConnId, usize>>,
}

/// The subscribers at one moment, for one fan-out.
pub struct Snapshot(Chunks);

impl Snapshot {
    pub fn iter(&self) -> impl Iterator<Item = &Subscriber> {
        self.0.iter().flat_map(|chunk| chunk.iter())
    }
}

impl Subscribers {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot(Arc::clone(&self.chunks))
    }

    /// Adds `sub`, or replaces the entry of its connection if it has one.
    pub fn insert(&mut self, sub: Subscriber) {
        if let Some(i) = self.position(sub.conn) {
            *self.slot(i) = sub;
            return;
        }
        let conn = sub.conn;
        let chunks = Arc::make_mut(&mut self.chunks);
        match chunks.last_mut() {
            Some(last) if last.len() < CHUNK => Arc::make_mut(last).push(sub),
            _ => chunks.push(Arc::new(vec![sub])),
        }
        let i = self.len;
        self.len += 1;
        match &mut self.at {
            Some(at) => {
                at.insert(conn, i);
            }
            None if self.len > MAP_FROM => self.at = Some(self.index()),
            None => {}
        }
    }

    /// Removes `conn`'s entry; false if it had none.
    pub fn remove(&mut self, conn: ConnId) -> bool {
        let Some(i) = self.position(conn) else {
            return false;
        };
        let chunks = Arc::make_mut(&mut self.chunks);
        let Some(last_chunk) = chunks.last_mut() else {
            return false;
        };
        let last_chunk = Arc::make_mut(last_chunk);
        let Some(moved) = last_chunk.pop() else {
            return false;
        };
        if last_chunk.is_empty() {
            chunks.pop();
        }
        self.len -= 1;
        if let Some(at) = &mut self.at {
            at.remove(&conn);
        }
        if i < self.len {
            // The last one fills the hole.
            if let Some(at) = &mut self.at {
                at.insert(moved.conn, i);
            }
            *self.slot(i) = moved;
        }
        if self.len <= MAP_FROM / 2 {
            // Hysteresis: a topic hovering at MAP_FROM does not rebuild its map.
            self.at = None;
        }
        true
    }

    fn position(&self, conn: ConnId) -> Option<usize> {
        match &self.at {
            Some(at) => at.get(&conn).copied(),
            None => self.snapshot().iter().position(|s| s.conn == conn),
        }
    }

    fn slot(&mut self, i: usize) -> &mut Subscriber {
        let chunk = Arc::make_mut(&mut Arc::make_mut(&mut self.chunks)[i / CHUNK]);
        &mut chunk[i % CHUNK]
    }

    fn index(&self) -> HashMap<ConnId, usize> {
        self.snapshot().iter().enumerate().map(|(i, s)| (s.conn, i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Limits, Outbox};
    use std::collections::BTreeSet;

    fn sub(id: u64) -> Subscriber {
        Subscriber {
            conn: ConnId(id),
            outbox: Arc::new(Outbox::new(Limits { frames: 1, bytes: 1 << 10 }, None)),
        }
    }

    fn conns(s: &Subscribers) -> BTreeSet<u64> {
        s.snapshot().iter().map(|s| s.conn.0).collect()
    }

    /// Every position the map (or the scan) answers is where the
    /// connection really is, and chunks are full but the last.
    fn check(s: &Subscribers) {
        let listed: Vec<u64> = s.snapshot().iter().map(|s| s.conn.0).collect();
        assert_eq!(listed.len(), s.len());
        assert_eq!(listed.iter().collect::<BTreeSet<_>>().len(), s.len(), "no connection twice");
        for (i, c) in listed.iter().enumerate() {
            assert_eq!(s.position(ConnId(*c)), Some(i));
        }
        let n = s.chunks.len();
        for (k, chunk) in s.chunks.iter().enumerate() {
            assert!(!chunk.is_empty() && chunk.len() <= CHUNK);
            assert!(k + 1 == n || chunk.len() == CHUNK, "only the last chunk is partial");
        }
        assert!(s.at.is_none() || s.len() > MAP_FROM / 2, "the map goes when the topic shrinks");
        assert!(s.at.is_some() || s.len() <= MAP_FROM, "a large topic has its map");
    }

    #[test]
    fn adds_and_removes_across_chunks_and_the_map_threshold() {
        let mut s = Subscribers::default();
        let mut want = BTreeSet::new();
        // A deterministic walk: grow past two chunks, shrink, grow again.
        let mut x: u64 = 7;
        for step in 0..5_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let id = (x >> 33) % 700;
            let grow = (step / 1_000) % 2 == 0;
            if grow != x.is_multiple_of(4) {
                s.insert(sub(id));
                want.insert(id);
            } else {
                assert_eq!(s.remove(ConnId(id)), want.remove(&id));
            }
            if step.is_multiple_of(97) {
                check(&s);
                assert_eq!(conns(&s), want);
            }
        }
        check(&s);
        assert_eq!(conns(&s), want);
        for id in want.clone() {
            assert!(s.remove(ConnId(id)));
        }
        assert!(s.is_empty() && s.chunks.is_empty());
        assert!(!s.remove(ConnId(1)));
    }

    #[test]
    fn a_snapshot_is_unchanged_by_later_changes() {
        let mut s = Subscribers::default();
        for id in 0..600 {
            s.insert(sub(id));
        }
        let before = s.snapshot();
        s.remove(ConnId(3));
        s.insert(sub(1_000));
        let seen: BTreeSet<u64> = before.iter().map(|s| s.conn.0).collect();
        assert_eq!(seen, (0..600).collect());
        assert!(conns(&s).contains(&1_000) && !conns(&s).contains(&3));
        check(&s);
    }

    #[test]
    fn inserting_a_connection_again_replaces_its_entry() {
        let mut s = Subscribers::default();
        s.insert(sub(1));
        let again = sub(1);
        s.insert(again.clone());
        assert_eq!(s.len(), 1);
        assert!(s.snapshot().iter().all(|x| Arc::ptr_eq(&x.outbox, &again.outbox)));
    }
}
