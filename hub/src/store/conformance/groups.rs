//! Consumer-group state: cursors, attempts, pages and dead letters.

use super::*;

pub(crate) async fn groups_paged(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    ensure!(store.group_count().await? == 0);
    ensure!(store.groups_page(None, 10).await?.is_empty());
    // Created out of order; pages come in (pattern, group) order.
    let keys = [
        ("b.*", "x"),
        ("a.*", "z"),
        ("a.**", "a"),
        ("a.*", "b"),
        ("a", "q"),
    ];
    let progress = keys
        .iter()
        .enumerate()
        .map(|(i, (p, g))| GroupProgress {
            key: group_key(p, g),
            cursor: i as u64,
            done_above: vec![100 + i as u64],
            attempt_changes: vec![(200, 2)],
        })
        .collect();
    store
        .commit(CommitBatch {
            progress,
            ..CommitBatch::default()
        })
        .await?;
    ensure!(store.group_count().await? == 5);
    let mut sorted: Vec<GroupKey> = keys.iter().map(|(p, g)| group_key(p, g)).collect();
    sorted.sort();
    let mut seen = Vec::new();
    let mut after: Option<GroupKey> = None;
    loop {
        let page = store.groups_page(after.as_ref(), 2).await?;
        ensure!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        seen.extend(page);
    }
    ensure!(
        seen.iter().map(|r| &r.key).eq(sorted.iter()),
        "{:?}",
        seen.iter().map(|r| &r.key).collect::<Vec<_>>()
    );
    // The same records as one group's load.
    for record in &seen {
        ensure!(Some(record) == store.load_group(&record.key).await?.as_ref());
        ensure!(record.done_above.len() == 1 && record.attempts_above == vec![(200, 2)]);
    }
    let rest = store.groups_page(Some(&group_key("a.*", "b")), 100).await?;
    ensure!(rest.iter().map(|r| &r.key).eq(sorted[2..].iter()));
    store.close().await?;
    Ok(())
}

pub(crate) async fn group_progress(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let key = group_key("orders.*", "billing");
    let other = group_key("orders.*", "shipping");
    ensure!(store.load_group(&key).await?.is_none(), "unknown group");
    let progress = |cursor, done_above: Vec<u64>| GroupProgress {
        key: key.clone(),
        cursor,
        done_above,
        attempt_changes: Vec::new(),
    };
    store
        .commit(CommitBatch {
            progress: vec![
                progress(5, vec![]),
                GroupProgress {
                    key: other.clone(),
                    cursor: 0,
                    done_above: vec![],
                    attempt_changes: Vec::new(),
                },
            ],
            ..CommitBatch::default()
        })
        .await?;
    let rec = store.load_group(&key).await?.context("created")?;
    ensure!(rec.cursor == 5 && rec.done_above.is_empty());
    // Out-of-order acks above the cursor are kept; marks at or below the
    // cursor are ignored.
    store
        .commit(CommitBatch {
            progress: vec![progress(5, vec![9, 7, 5, 3])],
            ..CommitBatch::default()
        })
        .await?;
    let rec = store.load_group(&key).await?.context("exists")?;
    ensure!(rec.cursor == 5 && rec.done_above == vec![7, 9], "{rec:?}");
    // Moving the cursor to 7 removes marks at/below it, keeps 9, adds 12.
    store
        .commit(CommitBatch {
            progress: vec![progress(7, vec![12])],
            ..CommitBatch::default()
        })
        .await?;
    let rec = store.load_group(&key).await?.context("exists")?;
    ensure!(rec.cursor == 7 && rec.done_above == vec![9, 12], "{rec:?}");
    // A cursor beyond any possible seq (a client's absurd `from`) still
    // means "after everything".
    let far = group_key("far.*", "g");
    store
        .commit(CommitBatch {
            progress: vec![GroupProgress {
                key: far.clone(),
                cursor: u64::MAX,
                done_above: vec![u64::MAX],
                attempt_changes: Vec::new(),
            }],
            ..CommitBatch::default()
        })
        .await?;
    let rec = store.load_group(&far).await?.context("far group")?;
    ensure!(
        rec.cursor >= i64::MAX as u64 && rec.done_above.is_empty(),
        "{rec:?}"
    );
    let groups = store.groups().await?;
    ensure!(groups.len() == 3, "all groups listed");
    ensure!(groups.iter().any(|g| g.key == other && g.cursor == 0));
    ensure!(
        groups
            .iter()
            .any(|g| g.key == key && g.done_above == vec![9, 12])
    );
    store.close().await?;
    Ok(())
}

pub(crate) async fn group_attempts(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let key = group_key("jobs.*", "workers");
    let other = group_key("jobs.*", "auditors");
    let progress = |key: &GroupKey, cursor, attempt_changes: Vec<(u64, u32)>| GroupProgress {
        key: key.clone(),
        cursor,
        done_above: vec![],
        attempt_changes,
    };
    let commit = |progress: Vec<GroupProgress>| {
        store.commit(CommitBatch {
            progress,
            ..CommitBatch::default()
        })
    };
    // A new group records none.
    commit(vec![progress(&key, 2, vec![]), progress(&other, 0, vec![])]).await?;
    let rec = store.load_group(&key).await?.context("created")?;
    ensure!(rec.attempts_above.is_empty(), "{rec:?}");
    // Recorded above the cursor (at or below it ignored), kept by progress
    // that changes nothing, updated by a later change.
    commit(vec![progress(&key, 2, vec![(2, 9), (4, 1), (7, 3)])]).await?;
    commit(vec![progress(&key, 3, vec![])]).await?;
    let rec = store.load_group(&key).await?.context("exists")?;
    ensure!(rec.attempts_above == vec![(4, 1), (7, 3)], "{rec:?}");
    commit(vec![progress(&key, 3, vec![(4, 2)])]).await?;
    let rec = store.load_group(&key).await?.context("exists")?;
    ensure!(rec.attempts_above == vec![(4, 2), (7, 3)], "{rec:?}");
    // The cursor passing an entry hides it; 0 forgets one.
    commit(vec![progress(&key, 4, vec![(7, 0), (8, 2)])]).await?;
    let rec = store.load_group(&key).await?.context("exists")?;
    ensure!(rec.attempts_above == vec![(8, 2)], "{rec:?}");
    // Another group's attempts are its own; `groups` lists both.
    commit(vec![progress(&other, 0, vec![(1, 5)])]).await?;
    let groups = store.groups().await?;
    let of = |k: &GroupKey| {
        groups
            .iter()
            .find(|g| &g.key == k)
            .map(|g| g.attempts_above.clone())
    };
    ensure!(of(&key) == Some(vec![(8, 2)]), "{groups:?}");
    ensure!(of(&other) == Some(vec![(1, 5)]), "{groups:?}");
    // Forgetting what was never recorded is harmless.
    commit(vec![progress(&key, 4, vec![(8, 0), (99, 0)])]).await?;
    let rec = store.load_group(&key).await?.context("exists")?;
    ensure!(rec.attempts_above.is_empty(), "{rec:?}");
    store.close().await?;
    // Kept across a reopen.
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let rec = store.load_group(&other).await?.context("reopened")?;
    ensure!(rec.attempts_above == vec![(1, 5)], "{rec:?}");
    store.close().await?;
    Ok(())
}

pub(crate) async fn dead_letters(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let key = group_key("jobs.**", "workers");
    let other = group_key("jobs.**", "auditors");
    let letter = |k: &GroupKey, seq: u64, reason: &str| DeadLetter {
        key: k.clone(),
        seq,
        event_id: format!("ev-{seq}"),
        reason: reason.to_owned(),
        attempts: 5,
        dead_at: 1_700_000_000_000 + seq,
    };
    store
        .commit(CommitBatch {
            dead_letters: vec![
                letter(&key, 8, "boom"),
                letter(&key, 3, "max_deliver"),
                letter(&other, 3, "final"),
            ],
            ..CommitBatch::default()
        })
        .await?;
    let listed = store.dead_letters(&key, 0, 100).await?;
    ensure!(listed == vec![letter(&key, 3, "max_deliver"), letter(&key, 8, "boom")]);
    ensure!(store.dead_letters(&key, 3, 100).await? == vec![letter(&key, 8, "boom")]);
    ensure!(store.dead_letters(&key, 0, 1).await?.len() == 1, "limit");
    ensure!(store.dead_letter_count(&key).await? == 2);
    ensure!(store.dead_letter_count(&other).await? == 1);
    // Dead again after a replay: the newer record replaces the older.
    store
        .commit(CommitBatch {
            dead_letters: vec![letter(&key, 8, "boom again")],
            removed_dead_letters: vec![DeadLetterRef {
                key: key.clone(),
                seq: 3,
            }],
            ..CommitBatch::default()
        })
        .await?;
    ensure!(store.dead_letters(&key, 0, 100).await? == vec![letter(&key, 8, "boom again")]);
    ensure!(
        store.dead_letter_count(&other).await? == 1,
        "other group untouched"
    );
    store.close().await?;
    Ok(())
}
