//! Retention of one topic: the prefix of its events that the limits no
//! longer keep, and the latest-by-key entries pointing at them.

use super::*;

impl MongoStore {
    /// Removes the prefix of one topic's events that `limits` no longer
    /// keeps (at most `room`), and the latest-by-key entries pointing at
    /// them. Returns how many events went.
    pub(super) async fn retain_topic(
        &self,
        topic: &str,
        limits: RetentionLimits,
        now: Millis,
        room: u64,
    ) -> Result<u64, StoreError> {
        // Only durable events: a batch still being written is left alone.
        let durable = seq_to_bson(self.durable());
        let events = self.collection(queries::EVENTS);
        // (seq, ts) of up to `limit` events after `after`, in seq order.
        let oldest = |after: u64, limit: u64| {
            let events = events.clone();
            async move {
                let mut cursor = events
                    .find(doc! { "topic": topic, "_id": { "$gt": seq_to_bson(after), "$lte": durable } })
                    .sort(doc! { "_id": 1 })
                    .projection(doc! { "_id": 1, "ts": 1 })
                    .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                    .await
                    .map_err(backend)?;
                let mut rows = Vec::new();
                while let Some(doc) = cursor.try_next().await.map_err(backend)? {
                    rows.push((
                        from_bson_int(int_field(&doc, "_id", "an event")?),
                        from_bson_int(int_field(&doc, "ts", "an event")?),
                    ));
                }
                Ok::<_, StoreError>(rows)
            }
        };
        // Cheap reads first, each only when its limit is set: the oldest
        // event's age, and the count.
        let oldest_ts = match limits.max_age_ms {
            Some(_) => oldest(0, 1).await?.first().map(|&(_, ts)| ts),
            None => None,
        };
        let retained = match limits.max_events {
            Some(_) => events
                .count_documents(doc! { "topic": topic, "_id": { "$lte": durable } })
                .await
                .map_err(backend)?,
            None => 0,
        };
        let mut walk = PrefixWalk::new(limits, retained, oldest_ts, room, now);
        while let Some((after, want)) = walk.next_page() {
            walk.feed(&oldest(after, want).await?);
        }
        let Some((boundary, count)) = walk.removal() else {
            return Ok(0);
        };
        let boundary = seq_to_bson(boundary);
        // Recorded before the events go: a crash in between can only make
        // `removed_since` report a loss a moment early, never miss one.
        self.collection(queries::TOPICS)
            .update_one(
                doc! { "_id": topic },
                doc! { "$max": { "removed_upto": boundary } },
            )
            .await
            .map_err(backend)?;
        events
            .delete_many(doc! { "topic": topic, "_id": { "$lte": boundary } })
            .await
            .map_err(backend)?;
        let (low, high) = topic_key_range(topic);
        self.collection(queries::LATEST)
            .delete_many(doc! { "_id": { "$gte": low, "$lt": high }, "seq": { "$lte": boundary } })
            .await
            .map_err(backend)?;
        Ok(count)
    }
}
