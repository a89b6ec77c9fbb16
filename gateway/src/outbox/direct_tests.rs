//! The outbox's direct path on real loopback sockets: who writes when
//! (the pushes while parked, the task otherwise), what a partial write
//! leaves, and that concurrent pushes and the task never interleave bytes
//! on the wire. The task's side is modelled as `Connection::serve` does
//! it: park before waiting, claim before writing, the rest of a partial
//! frame first, then the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use wire::Topic;

use super::{Delivery, Limits, Outbox, Pushed};
use crate::ws::frame::{Header, Opcode};

const ROOMY: Limits = Limits { frames: 1_000_000, bytes: 1 << 30 };

/// The server's end (to share with the outbox) and the client's.
async fn pair() -> (Arc<TcpStream>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (Arc::new(server), client)
}

fn outbox(tcp: &Arc<TcpStream>, limits: Limits, topics: &[&str]) -> Outbox {
    let outbox = Outbox::new(limits, Some(Arc::clone(tcp)));
    for t in topics {
        outbox.held(|held| held.insert(Topic::parse(t).unwrap()));
    }
    outbox
}

fn delivery(topic: &str, seq: u64, text: Bytes) -> Arc<Delivery> {
    let topic = Topic::parse(topic).unwrap();
    Arc::new(Delivery { topic, seq, text, conflatable: false, fanned_out: None, direct: true })
}

/// A small frame whose payload names its topic and seq.
fn named(topic: &str, seq: u64) -> Arc<Delivery> {
    delivery(topic, seq, Bytes::from(format!("{topic}#{seq}")))
}

/// Writes whole text frames as the task's flush does (waiting for
/// writability), the first from byte `from` (header included).
async fn write_frames(tcp: &TcpStream, frames: &[Bytes], mut from: usize) {
    for text in frames {
        let header = Header::new(Opcode::Text, text.len());
        let mut bytes = header.as_slice().to_vec();
        bytes.extend_from_slice(text);
        let mut at = from;
        from = 0;
        while at < bytes.len() {
            tcp.writable().await.unwrap();
            match tcp.try_write(&bytes[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write failed: {e}"),
            }
        }
    }
}

/// Reads `n` server frames (unmasked text) and returns their payloads.
async fn read_frames(client: &mut TcpStream, n: usize) -> Vec<Vec<u8>> {
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x81, "a whole text frame starts here");
        let len = match head[1] {
            126 => client.read_u16().await.unwrap() as usize,
            127 => client.read_u64().await.unwrap() as usize,
            len => len as usize,
        };
        let mut payload = vec![0u8; len];
        client.read_exact(&mut payload).await.unwrap();
        frames.push(payload);
    }
    frames
}

/// What the task takes from the queue now, as payloads.
fn take_texts(outbox: &Outbox) -> Vec<Bytes> {
    let mut batch = VecDeque::new();
    outbox.take(&mut batch);
    batch.iter().map(|d| d.text.clone()).collect()
}

/// A frame whose message did not come alone (`Pace::Burst`).
fn in_burst(topic: &str, seq: u64) -> Arc<Delivery> {
    let text = Bytes::from(format!("{topic}#{seq}"));
    let topic = Topic::parse(topic).unwrap();
    Arc::new(Delivery { topic, seq, text, conflatable: false, fanned_out: None, direct: false })
}

#[tokio::test]
async fn a_burst_queues_even_into_a_parked_outbox() {
    let (tcp, mut client) = pair().await;
    let outbox = outbox(&tcp, ROOMY, &["quotes.A"]);
    assert!(outbox.park(true));
    assert_eq!(outbox.push(&named("quotes.A", 1)), Pushed::Written, "alone: written by the push");
    assert_eq!(
        outbox.push(&in_burst("quotes.A", 2)),
        Pushed::Queued,
        "more was waiting: queued for the task"
    );
    assert_eq!(outbox.push(&named("quotes.A", 3)), Pushed::Queued, "no longer parked: behind the queued one");
    assert_eq!(outbox.push(&in_burst("quotes.A", 4)), Pushed::Queued);
    tokio::time::timeout(Duration::from_secs(1), outbox.ready()).await.unwrap();
    assert_eq!(outbox.claim(), None);
    let batch = take_texts(&outbox);
    assert_eq!(batch.len(), 3, "the task takes the burst in one batch");
    write_frames(&tcp, &batch, 0).await;
    let got = read_frames(&mut client, 4).await;
    assert_eq!(got, ["quotes.A#1", "quotes.A#2", "quotes.A#3", "quotes.A#4"].map(|w| w.as_bytes().to_vec()));
}

#[tokio::test]
async fn parked_pushes_write_and_anything_else_queues() {
    let (tcp, mut client) = pair().await;
    let outbox = outbox(&tcp, ROOMY, &["quotes.A", "orders.x"]);

    assert_eq!(outbox.push(&named("quotes.A", 1)), Pushed::Queued, "not parked yet: the task writes");
    assert!(!outbox.park(true), "a frame waits: not parked");
    write_frames(&tcp, &take_texts(&outbox), 0).await;
    assert!(outbox.park(true), "nothing waiting: parked");
    assert_eq!(outbox.push(&named("quotes.A", 2)), Pushed::Written);
    assert_eq!(outbox.push(&named("quotes.A", 3)), Pushed::Written, "a finished write stays parked");
    assert_eq!(outbox.push(&named("quotes.gone", 1)), Pushed::Skipped, "not held: nothing written");
    assert_eq!(outbox.claim(), None, "the task takes the socket back; nothing was left unfinished");
    assert_eq!(outbox.push(&named("quotes.A", 4)), Pushed::Queued, "claimed: queued for the task");
    assert!(!outbox.park(false), "the task's own buffer is not empty: not parked");
    assert_eq!(outbox.push(&named("quotes.A", 5)), Pushed::Queued);
    tokio::time::timeout(Duration::from_secs(1), outbox.ready()).await.unwrap();
    assert!(!outbox.park(true), "frames are waiting: not parked");
    write_frames(&tcp, &take_texts(&outbox), 0).await;

    // An order frame after a hole is queued, for the task to send the notice first.
    assert!(outbox.park(true));
    assert_eq!(outbox.push(&named("orders.x", 1)), Pushed::Written);
    assert_eq!(outbox.push(&named("orders.x", 3)), Pushed::Queued, "a gap: the task tells the client first");
    let mut batch = VecDeque::new();
    assert_eq!(outbox.take(&mut batch).gaps, vec![(0, 1)], "admitted once more by the task, with the gap");
    write_frames(&tcp, &batch.iter().map(|d| d.text.clone()).collect::<Vec<_>>(), 0).await;

    let got = read_frames(&mut client, 7).await;
    let want =
        ["quotes.A#1", "quotes.A#2", "quotes.A#3", "quotes.A#4", "quotes.A#5", "orders.x#1", "orders.x#3"];
    assert_eq!(got, want.map(|w| w.as_bytes().to_vec()));

    let _ = outbox.close();
    assert!(!outbox.park(true), "closed: never parked again");
    assert_eq!(outbox.push(&named("quotes.A", 6)), Pushed::Closed);
}

#[tokio::test]
async fn a_partial_write_leaves_the_rest_for_the_task_before_what_queued_after() {
    let (tcp, mut client) = pair().await;
    let outbox = outbox(&tcp, ROOMY, &["orders.x"]);
    // More than loopback's socket buffers take at once while nobody reads.
    let big = Bytes::from(vec![b'x'; 64 << 20]);
    assert!(outbox.park(true));
    assert_eq!(
        outbox.push(&delivery("orders.x", 1, big.clone())),
        Pushed::Written,
        "the first bytes went out"
    );
    assert_eq!(outbox.push(&named("orders.x", 2)), Pushed::Queued, "no longer parked: behind the rest");
    assert!(!outbox.park(true), "the rest is pending: the task must write it, not park");
    tokio::time::timeout(Duration::from_secs(1), outbox.ready())
        .await
        .expect("the task is woken for the rest");
    let (rest, written) = outbox.claim().expect("the rest of the first frame");
    assert!(written > 0 && written < big.len(), "a partial write ({written} bytes)");
    assert_eq!(rest.as_ptr(), big.as_ptr(), "the same payload, not a copy");
    assert_eq!(outbox.claim(), None, "claimed once");

    let reader = tokio::spawn(async move { read_frames(&mut client, 2).await });
    write_frames(&tcp, &[rest], written).await;
    write_frames(&tcp, &take_texts(&outbox), 0).await;
    let got = reader.await.unwrap();
    assert_eq!(got[0].len(), big.len(), "the big frame whole, first");
    assert!(got[0].iter().all(|&b| b == b'x'));
    assert_eq!(got[1], b"orders.x#2");
}

/// Pushers on several threads (one topic each, as fan-outs of different
/// topics run at once) and the task, parking and claiming, write to one
/// socket while the client reads slowly enough that writes block and
/// split: every frame arrives whole, each topic's in order, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_and_the_task_never_interleave_on_the_wire() {
    const PUSHERS: usize = 4;
    const FRAMES: u64 = 2_000;
    let (tcp, mut client) = pair().await;
    let topics: Vec<String> = (0..PUSHERS).map(|i| format!("orders.t{i}")).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let outbox = Arc::new(outbox(&tcp, ROOMY, &names));
    let pad = "p".repeat(1_500);

    let reader = tokio::spawn(async move {
        let mut frames = Vec::new();
        for _ in 0..PUSHERS * FRAMES as usize / 500 {
            frames.extend(read_frames(&mut client, 500).await);
            // Slow enough that the socket fills and writes block and split.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        frames.into_iter().map(|f| String::from_utf8(f).unwrap()).collect::<Vec<_>>()
    });
    assert!(outbox.park(true));
    let pushers: Vec<_> = topics
        .iter()
        .map(|topic| {
            let (outbox, topic, pad) = (Arc::clone(&outbox), topic.clone(), pad.clone());
            std::thread::spawn(move || {
                let mut counts = HashMap::new();
                for seq in 1..=FRAMES {
                    let d = delivery(&topic, seq, Bytes::from(format!("{topic}#{seq}#{pad}")));
                    *counts.entry(format!("{:?}", outbox.push(&d))).or_insert(0u64) += 1;
                }
                counts
            })
        })
        .collect();

    // The task: park, wait (or wake anyway, as a read or timer would),
    // claim, write the rest of a partial frame, then what queued.
    let task = {
        let (outbox, tcp) = (Arc::clone(&outbox), Arc::clone(&tcp));
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while tokio::time::Instant::now() < deadline {
                outbox.park(true);
                let _ = tokio::time::timeout(Duration::from_millis(2), outbox.ready()).await;
                if let Some((rest, written)) = outbox.claim() {
                    write_frames(&tcp, &[rest], written).await;
                }
                let batch = take_texts(&outbox);
                write_frames(&tcp, &batch, 0).await;
                if Arc::strong_count(&outbox) == 1 {
                    break;
                }
            }
        })
    };
    let mut counts: HashMap<String, u64> = HashMap::new();
    for pusher in pushers {
        for (k, v) in pusher.join().unwrap() {
            *counts.entry(k).or_default() += v;
        }
    }
    let got = tokio::time::timeout(Duration::from_secs(60), reader).await.unwrap().unwrap();
    drop(outbox);
    task.await.unwrap();

    assert_eq!(counts.values().sum::<u64>(), PUSHERS as u64 * FRAMES);
    assert!(counts.get("Written").is_some_and(|&n| n > 0), "some went the direct way: {counts:?}");
    assert!(counts.get("Queued").is_some_and(|&n| n > 0), "some waited for the task: {counts:?}");
    let mut next: HashMap<&str, u64> = names.iter().map(|t| (*t, 1)).collect();
    for frame in &got {
        let mut parts = frame.splitn(3, '#');
        let (topic, seq, rest) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(rest, pad, "a whole frame, not two interleaved");
        let want = next.get_mut(topic).expect("a known topic");
        assert_eq!(seq.parse::<u64>().unwrap(), *want, "{topic} in order, none lost");
        *want += 1;
    }
    assert!(next.values().all(|&n| n == FRAMES + 1));
}
