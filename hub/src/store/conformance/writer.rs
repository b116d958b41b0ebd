//! The group-commit `StoreWriter` over each backend.

use super::*;

pub(crate) async fn writer_concurrent_appends(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let (writer, mut committed) = StoreWriter::new(Arc::clone(&store));
    let fan_out = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while let Some(batch) = committed.recv().await {
            seqs.extend(batch.iter().map(|e| e.seq));
        }
        seqs
    });
    let tasks = 64;
    let per_task = 50;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let writer = writer.clone();
        handles.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..per_task {
                let appended = writer
                    .append(event(&format!("t.{}", t % 4), None, &format!("{t}-{i}")))
                    .await?;
                seqs.push(stored_seq(&appended)?);
            }
            anyhow::Ok(seqs)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        let seqs = h.await??;
        ensure!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one task's appends in order"
        );
        all.extend(seqs);
    }
    drop(writer);
    let fanned = fan_out.await?;
    all.sort_unstable();
    let n = tasks * per_task;
    ensure!(all.len() == n, "all resolved");
    ensure!(all.windows(2).all(|w| w[0] < w[1]), "unique seqs");
    ensure!(fanned.len() == n, "every stored event fanned out once");
    ensure!(
        fanned.windows(2).all(|w| w[0] < w[1]),
        "fan-out in seq order"
    );
    ensure!(store.count_after(0).await? == n as u64);
    store.close().await?;
    Ok(())
}

pub(crate) async fn writer_group_updates(factory: &dyn StoreFactory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = factory.open(dir.path(), DEFAULT_WINDOW).await?;
    let (writer, _committed) = StoreWriter::new(Arc::clone(&store));
    let key = group_key("x.*", "g");
    // Issued concurrently, so they may share a commit: the latest cursor
    // wins and the marks are united.
    let p1 = writer.record_progress(GroupProgress {
        key: key.clone(),
        cursor: 2,
        done_above: vec![4, 6],
        attempt_changes: Vec::new(),
    });
    let p2 = writer.record_progress(GroupProgress {
        key: key.clone(),
        cursor: 4,
        done_above: vec![8],
        attempt_changes: Vec::new(),
    });
    let d = writer.update_group(GroupUpdate {
        dead_letters: vec![DeadLetter {
            key: key.clone(),
            seq: 3,
            event_id: "e3".into(),
            reason: "final".into(),
            attempts: 1,
            dead_at: 10,
        }],
        ..GroupUpdate::default()
    });
    let (r1, r2, r3) = tokio::join!(p1, p2, d);
    r1?;
    r2?;
    r3?;
    let rec = store.load_group(&key).await?.context("group stored")?;
    ensure!(rec.cursor == 4 && rec.done_above == vec![6, 8], "{rec:?}");
    ensure!(store.dead_letter_count(&key).await? == 1);
    writer
        .remove_dead_letter(DeadLetterRef {
            key: key.clone(),
            seq: 3,
        })
        .await?;
    ensure!(store.dead_letter_count(&key).await? == 0, "removed");
    // Duplicates through the writer answer the original seq.
    let a = writer
        .append(with_client_id(event("x.y", None, "1"), "w-1"))
        .await?;
    let b = writer
        .append(with_client_id(event("x.y", None, "2"), "w-1"))
        .await?;
    ensure!(
        b == Appended::Duplicate {
            id: "w-1".into(),
            seq: stored_seq(&a)?
        }
    );
    store.close().await?;
    ensure!(
        matches!(
            writer.append(event("x.y", None, "late")).await,
            Err(StoreError::Closed)
        ),
        "append after the store closed fails with Closed"
    );
    Ok(())
}
