//! The order-update script against a real Redis: each update is written
//! once (history id `0-<seq>`, one PUBLISH) however often it is retried.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use publisher::backplane::{OrderUpdate, Written};
use publisher::redis_writer::{RedisWriter, dedupe_key};
use wire::{Topic, keys};

fn update(topic: &Topic, id: &str, n: u32) -> OrderUpdate {
    OrderUpdate::new(topic.clone(), id.into(), &format!(r#"{{"n":{n}}}"#), None)
}

fn seq_of(payload: &str) -> u64 {
    wire::Envelope::parse(payload.as_bytes(), None).unwrap().seq
}

#[tokio::test]
async fn update_script_is_exactly_once_under_retry() {
    let prefix = unique_prefix();
    let topic = Topic::parse("orders.acct-1").unwrap();
    let channel = keys::channel(&prefix, topic.as_str());
    let mut listener = Listener::new(REDIS_URL, std::slice::from_ref(&channel)).await;
    let writer = RedisWriter::new(&test_config(&prefix)).unwrap();

    let u1 = update(&topic, "u-1", 1);
    assert_eq!(
        writer.write_updates(std::slice::from_ref(&u1)).await.unwrap(),
        [Written { seq: 1, duplicate: false }]
    );
    // The retry after an "ambiguous failure": same update, same id.
    assert_eq!(
        writer.write_updates(std::slice::from_ref(&u1)).await.unwrap(),
        [Written { seq: 1, duplicate: true }]
    );
    // A retried batch: the first was written already, the second was not.
    let u2 = update(&topic, "u-2", 2);
    let u3 = update(&topic, "u-3", 3);
    writer.write_updates(std::slice::from_ref(&u2)).await.unwrap();
    assert_eq!(
        writer.write_updates(&[u2, u3]).await.unwrap(),
        [Written { seq: 2, duplicate: true }, Written { seq: 3, duplicate: false }]
    );

    // Published exactly once each: after 1, 2, 3 comes the sentinel 4.
    writer.write_updates(&[update(&topic, "u-4", 4)]).await.unwrap();
    for want in 1..=4 {
        assert_eq!(seq_of(&listener.next_on(&channel).await), want);
    }

    let mut c = conn(REDIS_URL).await;
    let entries = history(&mut c, &keys::history(&prefix, topic.as_str())).await;
    let seqs: Vec<u64> = entries.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    for (seq, env) in &entries {
        assert_eq!(env["seq"].as_u64(), Some(*seq));
        assert_eq!(env["data"]["n"].as_u64(), Some(*seq));
        assert_eq!(env["topic"], "orders.acct-1");
    }
    let ttl: i64 =
        redis::cmd("TTL").arg(dedupe_key(&prefix, topic.as_str(), "u-1")).query_async(&mut c).await.unwrap();
    assert!((3500..=3600).contains(&ttl), "dedupe marker TTL {ttl}");
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_lost_counter_does_not_block_the_history() {
    let prefix = unique_prefix();
    let topic = Topic::parse("orders.acct-2").unwrap();
    let writer = RedisWriter::new(&test_config(&prefix)).unwrap();
    for i in 1..=3 {
        writer.write_updates(&[update(&topic, &format!("a{i}"), i)]).await.unwrap();
    }
    // The counter disappears (evicted, deleted by hand) but history stays.
    let mut c = conn(REDIS_URL).await;
    let _: () =
        redis::cmd("DEL").arg(keys::seq_counter(&prefix, topic.as_str())).query_async(&mut c).await.unwrap();
    let w = writer.write_updates(&[update(&topic, "a4", 4)]).await.unwrap();
    assert_eq!(w, [Written { seq: 4, duplicate: false }]);
    let seqs: Vec<u64> =
        history(&mut c, &keys::history(&prefix, topic.as_str())).await.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    cleanup(&prefix).await;
}
