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

/// `per_topic` updates of each topic, interleaved: t0 #1, t1 #1, …, t0 #2,
/// …; each carries its number within its topic (its expected `seq`).
fn interleaved(topics: &[Topic], per_topic: u32, tag: &str) -> Vec<OrderUpdate> {
    (1..=per_topic)
        .flat_map(|n| topics.iter().map(move |t| update(t, &format!("{tag}-{}-{n}", t.as_str()), n)))
        .collect()
}

fn topics(n: usize) -> Vec<Topic> {
    (0..n).map(|i| Topic::parse(&format!("orders.acct-{i}")).unwrap()).collect()
}

/// Every update of `batch` got its topic's next `seq` (its number), none
/// a duplicate, and each topic's history holds them in order.
async fn assert_contiguous<C: redis::aio::ConnectionLike>(
    c: &mut C,
    prefix: &str,
    batch: &[OrderUpdate],
    written: &[Written],
) {
    assert_eq!(written.len(), batch.len());
    for (u, w) in batch.iter().zip(written) {
        // The id ends with the update's number within its topic.
        let n: u64 = u.id.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(*w, Written { seq: n, duplicate: false }, "{}", u.id);
    }
    for topic in batch.iter().map(|u| &u.topic).collect::<std::collections::BTreeSet<_>>() {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys::history(prefix, topic.as_str()))
            .arg("-")
            .arg("+")
            .query_async(c)
            .await
            .unwrap();
        let want = batch.iter().filter(|u| &u.topic == topic).count() as u64;
        let got: Vec<(u64, u64)> = reply
            .ids
            .iter()
            .map(|e| {
                let env: String = e.get("env").unwrap();
                let env: serde_json::Value = serde_json::from_str(&env).unwrap();
                (keys::seq_of_history_id(&e.id).unwrap(), env["data"]["n"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(got, (1..=want).map(|s| (s, s)).collect::<Vec<_>>(), "history of {}", topic.as_str());
    }
}

#[tokio::test]
async fn a_batch_of_several_topics_is_one_call_with_contiguous_seqs() {
    // A private Redis: its command counts are this test's alone.
    let redis = RedisServer::start(false).await;
    let prefix = unique_prefix();
    let mut config = test_config(&prefix);
    config.redis_url = redis.url();
    let writer = RedisWriter::new(&config).unwrap();
    let topics = topics(3);
    let channels: Vec<String> = topics.iter().map(|t| keys::channel(&prefix, t.as_str())).collect();
    let mut listener = Listener::new(&redis.url(), &channels).await;
    let mut c = redis.connection().await.unwrap();
    // Loads the scripts, so the batch below is not retried after NOSCRIPT.
    writer.write_updates(&[update(&Topic::parse("orders.warm").unwrap(), "w", 1)]).await.unwrap();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut c).await.unwrap();

    // Three topics, four updates each, interleaved as lifecycles are.
    let batch = interleaved(&topics, 4, "a");
    let written = writer.write_updates(&batch).await.unwrap();
    assert_contiguous(&mut c, &prefix, &batch, &written).await;
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut c).await.unwrap();
    let calls = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:")).unwrap_or_default();
    assert!(calls.contains(":calls=1,"), "one script call for the batch: {calls}");

    // Published once each, in order, on each topic's channel.
    let mut got: Vec<Vec<u64>> = vec![Vec::new(); topics.len()];
    for _ in 0..batch.len() {
        let (channel, payload) = listener.next().await;
        let i = channels.iter().position(|c| *c == channel).unwrap();
        got[i].push(seq_of(&payload));
    }
    assert!(got.iter().all(|seqs| *seqs == [1, 2, 3, 4]), "{got:?}");

    // The batch retried with new updates behind it: the old ones keep
    // their seqs and are not published again, the new ones come next.
    let mut retry = batch.clone();
    retry.push(update(&topics[1], "b-1", 5));
    retry.push(update(&topics[0], "b-0", 5));
    let again = writer.write_updates(&retry).await.unwrap();
    assert_eq!(
        &again[..batch.len()],
        written.iter().map(|w| Written { duplicate: true, ..*w }).collect::<Vec<_>>()
    );
    assert_eq!(&again[batch.len()..], [Written { seq: 5, duplicate: false }; 2]);
    let next: Vec<(String, u64)> = vec![listener.next().await, listener.next().await]
        .into_iter()
        .map(|(channel, payload)| (channel, seq_of(&payload)))
        .collect();
    assert_eq!(next, [(channels[1].clone(), 5), (channels[0].clone(), 5)]);
}

#[tokio::test]
async fn a_batch_larger_than_one_call_keeps_each_topic_in_order() {
    let prefix = unique_prefix();
    let writer = RedisWriter::new(&test_config(&prefix)).unwrap();
    // 400 updates of 40 topics: more than one call holds.
    let batch = interleaved(&topics(40), 10, "big");
    assert!(batch.len() > redis_backplane::scripts::UPDATES_PER_CALL);
    let written = writer.write_updates(&batch).await.unwrap();
    assert_contiguous(&mut conn(REDIS_URL).await, &prefix, &batch, &written).await;
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_failed_update_stops_its_call_so_no_later_update_overtakes_it() {
    let prefix = unique_prefix();
    let writer = RedisWriter::new(&test_config(&prefix)).unwrap();
    let (a, b) = (Topic::parse("orders.acct-a").unwrap(), Topic::parse("orders.acct-b").unwrap());
    let mut c = conn(REDIS_URL).await;
    // b's history is not a stream: its XADD fails.
    let b_history = keys::history(&prefix, b.as_str());
    let _: () = redis::cmd("SET").arg(&b_history).arg("x").query_async(&mut c).await.unwrap();
    let batch = [update(&a, "a1", 1), update(&b, "b1", 1), update(&a, "a2", 2)];
    assert!(writer.write_updates(&batch).await.is_err());
    let a_history = keys::history(&prefix, a.as_str());
    let seqs: Vec<u64> = history(&mut c, &a_history).await.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1], "a2 was not written ahead of b1");

    let _: () = redis::cmd("DEL").arg(&b_history).query_async(&mut c).await.unwrap();
    let written = writer.write_updates(&batch).await.unwrap();
    assert_eq!(written[0], Written { seq: 1, duplicate: true });
    assert_eq!(written[2], Written { seq: 2, duplicate: false });
    assert!(!written[1].duplicate);
    let seqs: Vec<u64> = history(&mut c, &a_history).await.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2]);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_batch_on_a_cluster_is_written_per_slot_with_contiguous_seqs() {
    let cluster = testkit::RedisCluster::start(3).await;
    let prefix = unique_prefix();
    let mut config = test_config(&prefix);
    config.redis_url = cluster.url_list();
    config.redis_cluster = true;
    let writer = RedisWriter::new(&config).unwrap();
    // 12 topics over the three masters' slots, three updates each.
    let batch = interleaved(&topics(12), 3, "cl");
    let written = writer.write_updates(&batch).await.unwrap();
    let mut c = cluster.connection().await;
    assert_contiguous(&mut c, &prefix, &batch, &written).await;
    let again = writer.write_updates(&batch).await.unwrap();
    assert!(again.iter().zip(&written).all(|(a, w)| a.duplicate && a.seq == w.seq), "retry: {again:?}");
}
