//! De-duplication by (topic, id) within its window.

use super::*;

pub(crate) async fn dedup_within_window(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let first = commit_events(
        store.as_ref(),
        vec![with_client_id(event("a", None, "1"), "client-1")],
    )
    .await?;
    let original = stored(&first[0])?.seq;
    let second = commit_events(
        store.as_ref(),
        vec![
            with_client_id(event("a", None, "again"), "client-1"),
            // Hub-assigned ids are never de-duplicated, even when equal.
            event("a", None, "other"),
        ],
    )
    .await?;
    ensure!(
        second[0]
            == Answer::Duplicate {
                id: "client-1".into(),
                seq: original
            },
        "duplicate answers the original seq: {:?}",
        second[0]
    );
    stored(&second[1])?;
    let mut hub_id = event("a", None, "h");
    hub_id.id = "same-hub-id".into();
    let twice = commit_events(store.as_ref(), vec![hub_id.clone(), hub_id]).await?;
    stored(&twice[0])?;
    stored(&twice[1])?;
    ensure!(store.count_after(0).await? == 4, "duplicate not stored");
    store.close().await?;
    Ok(())
}

pub(crate) async fn dedup_after_window(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let window = Duration::from_millis(50);
    let store = factory.open(dir.path(), window).await?;
    let first = commit_events(
        store.as_ref(),
        vec![with_client_id(event("a", None, "1"), "client-1")],
    )
    .await?;
    let first_seq = stored(&first[0])?.seq;
    // Waiting longer than the window makes the id new again; no assertion
    // depends on how fast anything runs.
    tokio::time::sleep(window * 3).await;
    let again = commit_events(
        store.as_ref(),
        vec![with_client_id(event("a", None, "2"), "client-1")],
    )
    .await?;
    let second_seq = stored(&again[0])?.seq;
    ensure!(second_seq > first_seq, "stored again with a new seq");
    ensure!(store.count_after(0).await? == 2, "both copies stored");
    store.close().await?;
    Ok(())
}

pub(crate) async fn dedup_inside_batch(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let out = commit_events(
        store.as_ref(),
        vec![
            with_client_id(event("a", None, "1"), "dup"),
            with_client_id(event("a", None, "2"), "other"),
            with_client_id(event("a", None, "3"), "dup"),
        ],
    )
    .await?;
    let first = stored(&out[0])?.seq;
    stored(&out[1])?;
    ensure!(
        out[2]
            == Answer::Duplicate {
                id: "dup".into(),
                seq: first
            },
        "second copy in the batch is a duplicate of the first: {:?}",
        out[2]
    );
    ensure!(store.count_after(0).await? == 2, "two stored");
    store.close().await?;
    Ok(())
}

/// semantics.md §3: de-duplication is per topic, so a publisher cannot
/// suppress another topic's event by choosing its id (finding 5), while a
/// real duplicate on the same topic still is one, in a batch, across
/// batches and after a reopen.
pub(crate) async fn dedup_is_per_topic(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let evil = commit_events(
        store.as_ref(),
        vec![with_client_id(event("evil.x", None, "1"), "order-42")],
    )
    .await?;
    let evil_seq = stored(&evil[0])?.seq;
    let victim = commit_events(
        store.as_ref(),
        vec![
            with_client_id(event("orders.created", Some("k"), "2"), "order-42"),
            // In one batch too: the same id on two topics is two events,
            // the same id twice on one topic is one.
            with_client_id(event("a", None, "3"), "both"),
            with_client_id(event("b", None, "4"), "both"),
            with_client_id(event("a", None, "5"), "both"),
        ],
    )
    .await?;
    let victim_event = stored(&victim[0])?.clone();
    ensure!(victim_event.seq > evil_seq, "stored with its own seq");
    ensure!(victim_event.topic.as_str() == "orders.created");
    let in_a = stored(&victim[1])?.seq;
    let in_b = stored(&victim[2])?.seq;
    ensure!(in_a != in_b);
    ensure!(
        victim[3]
            == Answer::Duplicate {
                id: "both".into(),
                seq: in_a
            },
        "{:?}",
        victim[3]
    );
    ensure!(
        store.get(victim_event.seq).await? == Some(victim_event.clone()),
        "the victim's event is readable"
    );
    ensure!(
        store
            .latest_for_key(&topic("orders.created"), "k")
            .await?
            .map(|e| e.seq)
            == Some(victim_event.seq)
    );
    store.close().await?;
    // Across batches and a reopen, each topic keeps its own entry.
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let again = commit_events(
        store.as_ref(),
        vec![
            with_client_id(event("orders.created", None, "6"), "order-42"),
            with_client_id(event("evil.x", None, "7"), "order-42"),
            with_client_id(event("b", None, "8"), "both"),
            with_client_id(event("c", None, "9"), "order-42"),
        ],
    )
    .await?;
    let expected = [
        ("order-42", victim_event.seq),
        ("order-42", evil_seq),
        ("both", in_b),
    ];
    for (answer, (id, seq)) in again.iter().zip(expected) {
        ensure!(
            *answer == Answer::Duplicate { id: id.into(), seq },
            "{answer:?}"
        );
    }
    stored(&again[3])?;
    ensure!(store.count_after(0).await? == 5, "five distinct events");
    store.close().await?;
    Ok(())
}
