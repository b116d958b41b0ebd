//! A connection's requests: `PUBLISH` (quota, commit, `PUBACK`), `SUBSCRIBE`/`UNSUBSCRIBE`, and the answers to group deliveries.

use super::*;

impl Connection {
    /// Takes a publish token from the connection's and the topic's quota;
    /// refuses with `rate_limited` and `retry_after_ms` when either is
    /// empty, and closes with 4029 a connection that keeps publishing
    /// while refused.
    pub(super) fn admit_publish(&mut self, topic: &str, rid: Option<&Rid>) -> bool {
        let now = std::time::Instant::now();
        let admitted = match &self.shared.topic_quota {
            Some(topics) => topics.try_take(topic, self.publish_quota.as_mut(), now),
            None => self
                .publish_quota
                .as_mut()
                .map_or(Ok(()), |bucket| bucket.try_take(now)),
        };
        let Err(wait) = admitted else {
            return true;
        };
        COUNTERS.rate_limited();
        let retry_after = retry_after_ms(wait);
        let mut refusal = ErrorFrame::new(
            ErrorCode::RateLimited,
            format!("publish quota exceeded; retry after {retry_after} ms"),
            rid.cloned(),
        );
        refusal.retry_after_ms = Some(retry_after);
        self.send(HubFrame::Err(refusal));
        if self.rate_strikes.record(now) {
            // Come back once the quota has refilled: what waiting would
            // have given, so reconnecting at once gains nothing.
            let refill = self
                .publish_quota
                .as_mut()
                .map_or(wait, |bucket| bucket.until_full(now).max(wait));
            tracing::info!(
                conn = self.id,
                "closing a connection that keeps publishing while rate limited"
            );
            COUNTERS.rate_limit_close();
            self.close(
                close::RATE_LIMITED,
                &close::rate_limited_reason(retry_after_ms(refill)),
            );
        }
        false
    }

    pub(super) async fn publish(&mut self, publish: Publish, policy: &Policy) {
        let Some((event, rid)) = self.admitted_publish(publish, policy) else {
            return;
        };
        // Bound the commits one connection waits for.
        while self.publishes.len() >= self.config().max_pending_publishes {
            if let Some((rid, result)) = self.publishes.next().await {
                self.publish_done(rid, result);
            }
        }
        self.start_publish(event, rid);
    }

    /// The event a PUBLISH stores, once the policy, the event's fields and
    /// the quotas allow it; refusals are answered here.
    pub(super) fn admitted_publish(
        &mut self,
        publish: Publish,
        policy: &Policy,
    ) -> Option<(NewEvent, Option<Rid>)> {
        let Publish {
            topic,
            payload,
            opts,
            rid,
        } = publish;
        if !policy.may_publish(&topic) {
            self.send_error(
                ErrorCode::Forbidden,
                format!("publishing to {topic} is not allowed"),
                rid,
            );
            return None;
        }
        let event = match NewEvent::from_publish(
            topic,
            payload,
            opts.unwrap_or_default(),
            crate::clock::now_ms(),
        ) {
            Ok(event) => event,
            Err(invalid) => {
                self.bad_frame(ErrorCode::BadRequest, invalid.to_string(), rid);
                return None;
            }
        };
        if !self.admit_publish(event.topic.as_str(), rid.as_ref()) {
            return None;
        }
        Some((event, rid))
    }

    /// Hands an admitted event to the writer; its answer comes back
    /// through `publishes`.
    pub(super) fn start_publish(&mut self, event: NewEvent, rid: Option<Rid>) {
        let writer = self.shared.writer.clone();
        self.publishes
            .push(Box::pin(async move { (rid, writer.append(event).await) }));
    }

    /// PUBACK (only when the client gave a `rid`) once durable, ERR if the
    /// store failed.
    pub(super) fn publish_done(&mut self, rid: Option<Rid>, result: Result<Appended, StoreError>) {
        match result {
            Ok(appended) => {
                let Some(rid) = rid else { return };
                let ack = match appended {
                    Appended::Stored { id, seq } => PubAck {
                        rid,
                        id,
                        seq,
                        duplicate: false,
                    },
                    Appended::Duplicate { id, seq } => PubAck {
                        rid,
                        id,
                        seq,
                        duplicate: true,
                    },
                };
                self.send(HubFrame::Puback(ack));
            }
            Err(e) => {
                tracing::warn!(conn = self.id, error = %e, "publish failed");
                self.send_error(
                    ErrorCode::Internal,
                    "the event could not be stored; publish it again",
                    rid,
                );
            }
        }
    }

    // -----------------------------------------------------------------
    // SUBSCRIBE / UNSUBSCRIBE

    pub(super) async fn subscribe(&mut self, subscribe: Subscribe, policy: Arc<Policy>) {
        let Subscribe {
            topic,
            group,
            opts,
            rid,
        } = subscribe;
        if !policy.may_subscribe(&topic, group.as_ref().map(|g| g.as_str())) {
            let what = match &group {
                Some(group) => format!("subscribing to {topic} as group {group} is not allowed"),
                None => format!("subscribing to {topic} is not allowed"),
            };
            self.send_error(ErrorCode::Forbidden, what, rid);
            return;
        }
        let opts = opts.unwrap_or_default();
        let defaults = &self.config().groups;
        let member = MemberOpts {
            max_inflight: opts.max_inflight.unwrap_or(defaults.max_inflight),
            ack_timeout_ms: opts.ack_timeout_ms.unwrap_or(defaults.ack_timeout_ms),
            max_deliver: opts.max_deliver.unwrap_or(defaults.max_deliver),
            max_inflight_bytes: defaults.max_inflight_bytes,
        };
        let problem = if !(1..=MAX_INFLIGHT_LIMIT).contains(&member.max_inflight) {
            Some(format!(
                "opts.max_inflight must be within 1..={MAX_INFLIGHT_LIMIT}"
            ))
        } else if !(1..=MAX_ACK_TIMEOUT_MS).contains(&member.ack_timeout_ms) {
            Some(format!(
                "opts.ack_timeout_ms must be within 1..={MAX_ACK_TIMEOUT_MS}"
            ))
        } else if !(1..=MAX_DELIVER_LIMIT).contains(&member.max_deliver) {
            Some(format!(
                "opts.max_deliver must be within 1..={MAX_DELIVER_LIMIT}"
            ))
        } else if matches!(opts.from, Some(StartFrom::Seq(seq)) if seq > MAX_SEQ) {
            Some(format!("opts.from must be at most {MAX_SEQ}"))
        } else if group.is_some() && opts.snapshot == Some(true) {
            Some("opts.snapshot is only for subscriptions without a group".to_owned())
        } else if opts.snapshot == Some(true)
            && !matches!(opts.from, None | Some(StartFrom::Latest))
        {
            // One catch-up at a time: the latest of every key, or the log
            // from a seq (a resuming client asks for the log).
            Some("opts.snapshot and opts.from cannot be combined".to_owned())
        } else {
            None
        };
        if let Some(problem) = problem {
            self.bad_frame(ErrorCode::BadRequest, problem, rid);
            return;
        }
        let key = (
            topic.as_str().to_owned(),
            group.as_ref().map(|g| g.as_str().to_owned()),
        );
        if !self.subscriptions.contains(&key)
            && self.subscriptions.len() >= self.config().limits.max_subscriptions_per_connection
        {
            crate::refusals::count(crate::refusals::Refusal::SubscriptionCap);
            self.send_error(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} subscriptions per connection (limits.max_subscriptions_per_connection)",
                    self.config().limits.max_subscriptions_per_connection
                ),
                rid,
            );
            return;
        }
        if key.1.is_some() && !self.subscriptions.contains(&key) {
            let max = self.config().limits.max_groups_per_connection;
            if self
                .subscriptions
                .iter()
                .filter(|(_, g)| g.is_some())
                .count()
                >= max
            {
                crate::refusals::count(crate::refusals::Refusal::GroupsPerConnection);
                self.send_error(
                    ErrorCode::LimitExceeded,
                    format!(
                        "at most {max} group subscriptions per connection \
                         (limits.max_groups_per_connection)"
                    ),
                    rid,
                );
                return;
            }
        }
        self.subscriptions.insert(key.clone());
        self.registered = true;
        let (registered, is_registered) = tokio::sync::oneshot::channel();
        let request = SubscribeRequest {
            conn: self.id,
            send_queue: Arc::clone(&self.send_queue),
            policy,
            pattern: topic,
            group,
            opts: member,
            group_bytes: Arc::clone(&self.group_bytes),
            from: opts.from.unwrap_or(StartFrom::Latest),
            snapshot: opts.snapshot.unwrap_or(false),
            rid,
            registered: Some(registered),
        };
        if self.shared.broker.send(Command::Subscribe(request)).await
            && is_registered.await == Ok(Registration::Refused)
        {
            // The broker answered with an ERR: not a subscription.
            self.subscriptions.remove(&key);
        }
    }

    pub(super) async fn unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let Unsubscribe { topic, group, rid } = unsubscribe;
        let key = (
            topic.as_str().to_owned(),
            group.as_ref().map(|g| g.as_str().to_owned()),
        );
        self.subscriptions.remove(&key);
        if !self.registered {
            if rid.is_some() {
                self.send(HubFrame::Unsuback(frames::UnsubAck { rid, topic, group }));
            }
            return;
        }
        let conn = self.id;
        let send_queue = Arc::clone(&self.send_queue);
        self.shared
            .broker
            .send(Command::Unsubscribe {
                conn,
                send_queue,
                pattern: topic,
                group,
                rid,
            })
            .await;
    }

    /// The group key of an ACK / WORKING for one of this connection's
    /// groups; answers for ephemeral or unknown subscriptions are ignored.
    /// The broker command for an ACK or WORKING; `None` for a delivery of a
    /// group this connection is not subscribed to.
    pub(super) fn answer_command(&self, delivery: DeliveryRef, answer: Answer) -> Option<Command> {
        let seq = delivery.seq;
        let (key, id) = self.group_answer(delivery)?;
        let conn = self.id;
        Some(match answer {
            Answer::Ack => Command::Ack { conn, key, id, seq },
            Answer::Working => Command::Working { conn, key, id, seq },
        })
    }

    pub(super) fn group_answer(&self, delivery: DeliveryRef) -> Option<(GroupKey, String)> {
        let group = delivery.group?;
        let key = (
            delivery.topic.as_str().to_owned(),
            Some(group.as_str().to_owned()),
        );
        if !self.subscriptions.contains(&key) {
            return None;
        }
        Some((GroupKey::new(&delivery.topic, &group), delivery.id))
    }

    pub(super) async fn nack(&mut self, nack: Nack) {
        let Some((key, id)) = self.group_answer(DeliveryRef {
            topic: nack.topic,
            group: nack.group,
            id: nack.id,
            seq: nack.seq,
        }) else {
            return;
        };
        let conn = self.id;
        self.shared
            .broker
            .send(Command::Nack {
                conn,
                key,
                id,
                seq: nack.seq,
                reason: nack.reason,
                delay_ms: nack.delay_ms,
                final_: nack.final_.unwrap_or(false),
            })
            .await;
    }

    // -----------------------------------------------------------------
    // AUTH
}
