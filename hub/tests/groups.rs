//! Durable consumer groups against a real hub (semantics.md §4).

mod common;

use std::collections::HashSet;

use common::{Client, TestHub};
use promhub_hub::store::sqlite::{SqliteOptions, SqliteStore};
use promhub_hub::store::{GroupKey, Store};
use serde_json::{Value, json};

async fn publish_n(client: &mut Client, topic: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let ack = client.publish(topic, json!({ "i": i }), json!(null)).await;
        assert_eq!(ack["op"], "PUBACK", "{ack}");
        ids.push(ack["id"].as_str().unwrap().to_owned());
    }
    ids
}

fn event_id(event: &Value) -> String {
    event["event"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn two_members_of_one_group_split_the_events() {
    let mut hub = TestHub::start().await;
    let mut a = hub.client().await;
    let mut b = hub.client().await;
    for member in [&mut a, &mut b] {
        let suback = member
            .subscribe("jobs.*", Some("workers"), json!(null))
            .await;
        assert_eq!(suback["op"], "SUBACK", "{suback}");
    }
    let mut publisher = hub.client().await;
    let published = publish_n(&mut publisher, "jobs.run", 10).await;

    let mut seen = Vec::new();
    let mut per_member = [Vec::new(), Vec::new()];
    for _round in 0..1000 {
        if seen.len() >= published.len() {
            break;
        }
        // Each member's frames before its PONG are everything delivered so
        // far (the PING is a barrier behind committed events).
        for (index, member) in [&mut a, &mut b].into_iter().enumerate() {
            for event in member.ping().await {
                assert_eq!(event["op"], "EVENT");
                assert_eq!(event["group"], "workers");
                member.ack(&event).await;
                per_member[index].push(event["event"]["seq"].as_u64().unwrap());
                seen.push(event_id(&event));
            }
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        published.len(),
        "each event goes to one member"
    );
    assert_eq!(unique, published.iter().collect());
    assert!(
        !per_member[0].is_empty() && !per_member[1].is_empty(),
        "{per_member:?}"
    );
    for seqs in &per_member {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "in seq order: {seqs:?}"
        );
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn two_groups_each_get_every_event() {
    let mut hub = TestHub::start().await;
    let mut first = hub.client().await;
    let mut second = hub.client().await;
    first.subscribe("audit.**", Some("g1"), json!(null)).await;
    second.subscribe("audit.**", Some("g2"), json!(null)).await;
    let mut publisher = hub.client().await;
    let published = publish_n(&mut publisher, "audit.login", 5).await;
    for client in [&mut first, &mut second] {
        let mut got = Vec::new();
        for _ in 0..published.len() {
            let event = client.recv_event().await;
            client.ack(&event).await;
            got.push(event_id(&event));
        }
        assert_eq!(got, published, "every event, in order");
        client.assert_alive_and_quiet().await;
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn nack_redelivers_with_the_next_attempt() {
    let mut hub = TestHub::start().await;
    let mut worker = hub.client().await;
    worker
        .subscribe("mail.send", Some("mailer"), json!(null))
        .await;
    let mut publisher = hub.client().await;
    let ids = publish_n(&mut publisher, "mail.send", 1).await;

    let event = worker.recv_event().await;
    assert_eq!(event_id(&event), ids[0]);
    assert_eq!(event["ctx"]["attempt"], 1);
    assert!(event["ctx"]["ack_deadline"].as_u64().is_some());
    // Explicit delay of 0: redelivered at once.
    worker
        .send_json(
            json!({"op": "NACK", "topic": "mail.send", "group": "mailer",
            "id": ids[0], "reason": "smtp down", "delay_ms": 0}),
        )
        .await;
    let again = worker.recv_event().await;
    assert_eq!(event_id(&again), ids[0]);
    assert_eq!(again["ctx"]["attempt"], 2);
    // Without delay_ms (like PromClient's NACK): the group's backoff.
    worker
        .send_json(
            json!({"op": "NACK", "topic": "mail.send", "group": "mailer",
            "id": ids[0], "reason": "still down"}),
        )
        .await;
    let third = worker.recv_event().await;
    assert_eq!(event_id(&third), ids[0]);
    assert_eq!(third["ctx"]["attempt"], 3);
    worker.ack(&third).await;
    worker.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn an_unacked_event_is_redelivered_after_its_deadline() {
    let mut hub = TestHub::start().await;
    let mut worker = hub.client().await;
    let suback = worker
        .subscribe("jobs.slow", Some("w"), json!({"ack_timeout_ms": 200}))
        .await;
    assert_eq!(suback["op"], "SUBACK");
    let mut publisher = hub.client().await;
    let ids = publish_n(&mut publisher, "jobs.slow", 1).await;
    let first = worker.recv_event().await;
    assert_eq!(first["ctx"]["attempt"], 1);
    // No ACK: the deadline passes and the event comes again.
    let second = worker.recv_event().await;
    assert_eq!(event_id(&second), ids[0]);
    assert_eq!(second["ctx"]["attempt"], 2);
    worker.ack(&second).await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn the_fifth_failure_dead_letters_the_event() {
    let mut hub = TestHub::start().await;
    let mut worker = hub.client().await;
    worker
        .subscribe("pay.charge", Some("billing"), json!(null))
        .await;
    let mut publisher = hub.client().await;
    let poison = publish_n(&mut publisher, "pay.charge", 1).await.remove(0);
    for attempt in 1..=5 {
        let event = worker.recv_event().await;
        assert_eq!(event_id(&event), poison);
        assert_eq!(event["ctx"]["attempt"], attempt);
        worker
            .send_json(
                json!({"op": "NACK", "topic": "pay.charge", "group": "billing",
                "id": poison, "reason": "card declined", "delay_ms": 0}),
            )
            .await;
    }
    // Dead-lettered: the next event is the one published after it.
    let next = publish_n(&mut publisher, "pay.charge", 1).await.remove(0);
    let event = worker.recv_event().await;
    assert_eq!(event_id(&event), next);
    assert_eq!(event["ctx"]["attempt"], 1);
    worker.ack(&event).await;
    // PING waits for the group state to be durable.
    worker.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();

    let store = SqliteStore::open(&hub.data, SqliteOptions::default()).unwrap();
    let key = GroupKey {
        pattern: "pay.charge".into(),
        group: "billing".into(),
    };
    let dead = store.dead_letters(&key, 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].event_id, poison);
    assert_eq!(dead[0].attempts, 5);
    assert_eq!(dead[0].reason, "card declined");
    let group = store.load_group(&key).await.unwrap().unwrap();
    assert_eq!(group.cursor, event["event"]["seq"].as_u64().unwrap());
    store.close().await.unwrap();
}

#[tokio::test]
async fn nack_final_dead_letters_at_once() {
    let mut hub = TestHub::start().await;
    let mut worker = hub.client().await;
    worker
        .subscribe("pay.refund", Some("billing"), json!(null))
        .await;
    let mut publisher = hub.client().await;
    let ids = publish_n(&mut publisher, "pay.refund", 2).await;
    let event = worker.recv_event().await;
    worker
        .send_json(
            json!({"op": "NACK", "topic": "pay.refund", "group": "billing",
            "id": event_id(&event), "final": true}),
        )
        .await;
    let next = worker.recv_event().await;
    assert_eq!(event_id(&next), ids[1]);
    worker.ack(&next).await;
    worker.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_disconnected_members_inflight_events_go_to_the_other_member() {
    let mut hub = TestHub::start().await;
    let mut leaver = hub.client().await;
    leaver
        .subscribe("tasks.*", Some("pool"), json!({"max_inflight": 1}))
        .await;
    let mut publisher = hub.client().await;
    let ids = publish_n(&mut publisher, "tasks.a", 1).await;
    let held = leaver.recv_event().await;
    assert_eq!(event_id(&held), ids[0]);

    let mut stayer = hub.client().await;
    stayer.subscribe("tasks.*", Some("pool"), json!(null)).await;
    // Nothing for the second member while the first holds the only event.
    stayer.assert_alive_and_quiet().await;
    drop(leaver);
    let redelivered = stayer.recv_event().await;
    assert_eq!(event_id(&redelivered), ids[0]);
    assert_eq!(redelivered["ctx"]["attempt"], 2);
    stayer.ack(&redelivered).await;
    stayer.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn max_inflight_holds_events_back_until_acked() {
    let mut hub = TestHub::start().await;
    let mut worker = hub.client().await;
    worker
        .subscribe("q.*", Some("slow"), json!({"max_inflight": 2}))
        .await;
    let mut publisher = hub.client().await;
    let ids = publish_n(&mut publisher, "q.x", 4).await;
    // The PING barrier comes after all four were committed and fanned out.
    let first_two = worker.ping().await;
    assert_eq!(
        first_two.iter().map(event_id).collect::<Vec<_>>(),
        ids[..2].to_vec()
    );
    worker.ack(&first_two[0]).await;
    assert_eq!(event_id(&worker.recv_event().await), ids[2]);
    worker.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_new_group_starts_where_from_says_and_an_existing_group_ignores_it() {
    let mut hub = TestHub::start().await;
    let mut publisher = hub.client().await;
    let old = publish_n(&mut publisher, "log.line", 3).await;

    let mut latest = hub.client().await;
    let suback = latest.subscribe("log.*", Some("tail"), json!(null)).await;
    assert_eq!(suback["from_seq"], 4);
    let mut earliest = hub.client().await;
    let suback = earliest
        .subscribe("log.*", Some("replay"), json!({"from": "earliest"}))
        .await;
    assert_eq!(suback["from_seq"], 1);
    let mut from_two = hub.client().await;
    from_two
        .subscribe("log.*", Some("partial"), json!({"from": 2}))
        .await;

    let new = publish_n(&mut publisher, "log.line", 1).await;
    assert_eq!(event_id(&latest.recv_event().await), new[0]);
    let mut replayed = Vec::new();
    for _ in 0..4 {
        let event = earliest.recv_event().await;
        earliest.ack(&event).await;
        replayed.push(event_id(&event));
    }
    assert_eq!(replayed, [old.clone(), new.clone()].concat());
    // The ACKs are applied (and durable) before anyone joins again.
    earliest.assert_alive_and_quiet().await;
    let event = from_two.recv_event().await;
    assert_eq!(event_id(&event), old[1]);

    // The group exists now: `from` is ignored when joining it again.
    let mut again = hub.client().await;
    let suback = again
        .subscribe("log.*", Some("replay"), json!({"from": "latest"}))
        .await;
    assert_eq!(suback["from_seq"], 5);
    again.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn group_state_survives_a_graceful_restart() {
    let dir = common::data_dir();
    let mut hub = TestHub::start_in(dir.path(), |_| {}).await;
    let mut worker = hub.client().await;
    worker
        .subscribe("inv.*", Some("sync"), json!({"from": "earliest"}))
        .await;
    let mut publisher = hub.client().await;
    let ids = publish_n(&mut publisher, "inv.item", 4).await;
    // Ack the 1st and the 3rd: the cursor can only pass the 1st.
    let events: Vec<Value> = {
        let mut list = Vec::new();
        for _ in 0..4 {
            list.push(worker.recv_event().await);
        }
        list
    };
    worker.ack(&events[0]).await;
    worker.ack(&events[2]).await;
    worker.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();

    let mut hub = TestHub::start_in(dir.path(), |_| {}).await;
    let mut worker = hub.client().await;
    let suback = worker.subscribe("inv.*", Some("sync"), json!(null)).await;
    assert_eq!(suback["from_seq"], 2);
    // The 2nd and the 4th come again; the acknowledged 3rd does not.
    let again: Vec<String> = vec![
        event_id(&worker.recv_event().await),
        event_id(&worker.recv_event().await),
    ];
    assert_eq!(again, vec![ids[1].clone(), ids[3].clone()]);
    worker.assert_alive_and_quiet().await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn attempts_count_on_across_a_restart_and_an_idle_group() {
    let dir = common::data_dir();
    let mut hub = TestHub::start_in(dir.path(), |_| {}).await;
    let mut publisher = hub.client().await;
    let ids = publish_n(&mut publisher, "mail.out", 1).await;
    let opts = json!({"from": "earliest", "max_inflight": 1});
    let mut worker = hub.client().await;
    worker
        .subscribe("mail.*", Some("senders"), opts.clone())
        .await;
    let first = worker.recv_event().await;
    assert_eq!(
        (event_id(&first), first["ctx"]["attempt"].clone()),
        (ids[0].clone(), json!(1))
    );
    // The worker dies before its ACK, then the hub restarts.
    drop(worker);
    drop(publisher);
    hub.stop().await.unwrap();

    let mut hub = TestHub::start_in(dir.path(), |_| {}).await;
    let mut worker = hub.client().await;
    worker
        .subscribe("mail.*", Some("senders"), opts.clone())
        .await;
    let second = worker.recv_event().await;
    assert_eq!(
        (event_id(&second), second["ctx"]["attempt"].clone()),
        (ids[0].clone(), json!(2))
    );
    // Dies again; the group has no member left (the hub may unload it).
    drop(worker);
    let mut worker = hub.client().await;
    worker
        .subscribe("mail.*", Some("senders"), opts.clone())
        .await;
    let third = worker.recv_event().await;
    assert_eq!(
        (event_id(&third), third["ctx"]["attempt"].clone()),
        (ids[0].clone(), json!(3))
    );
    worker.ack(&third).await;
    worker.assert_alive_and_quiet().await;
    drop(worker);
    hub.stop().await.unwrap();

    // Done is done: after another restart the next event delivered is a
    // new one, not the acknowledged one again.
    let mut hub = TestHub::start_in(dir.path(), |_| {}).await;
    let mut worker = hub.client().await;
    worker.subscribe("mail.*", Some("senders"), opts).await;
    let mut publisher = hub.client().await;
    let sentinel = publish_n(&mut publisher, "mail.out", 1).await;
    let next = worker.recv_event().await;
    assert_eq!(
        (event_id(&next), next["ctx"]["attempt"].clone()),
        (sentinel[0].clone(), json!(1))
    );
    hub.stop().await.unwrap();
}
