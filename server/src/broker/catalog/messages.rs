//! The [`Broker`]'s calls that carry messages rather than settle them:
//! request/reply (`call`), atomic commits, and reads of a topic or of a
//! subscription's oldest unacknowledged message. The [`Engine`] methods in
//! `catalog.rs` hand over to these.

use super::*;

impl Broker {
    /// [`Engine::call`]: publishes the request and waits for its reply.
    pub(super) async fn do_call(
        &self,
        topic: &TopicName,
        mut message: NewMessage,
        timeout: Option<Duration>,
    ) -> BrokerResult<CallReply> {
        let timeout = timeout.unwrap_or(DEFAULT_CALL_TIMEOUT);
        check_duration("timeout", timeout, Duration::from_millis(1))?;
        check_batch(
            std::slice::from_ref(&message),
            self.inner.config.max_message_bytes,
        )?;
        let started = tokio::time::Instant::now();
        // Registered before the request can be seen: a reply may come
        // before the publish returns.
        let waiting = self.inner.calls.open();
        message
            .attributes
            .extend(waiting.attributes(SystemTime::now() + timeout));
        message.attributes.sort_unstable();
        let offset = self.append(topic, vec![message]).await?.offsets[0];
        let left = timeout.saturating_sub(started.elapsed());
        tokio::select! {
            reply = waiting.reply(left) => match reply {
                Some(reply) => Ok(CallReply { reply, offset }),
                None => Err(BrokerError::CallTimedOut {
                    topic: topic.clone(),
                    offset,
                    timeout,
                }),
            },
            () = self.inner.shutdown.cancelled() => Err(BrokerError::ShuttingDown),
        }
    }

    /// [`Engine::commit`]: checks every part, then hands the whole to the
    /// writer as one commit.
    pub(super) async fn do_commit(&self, spec: CommitSpec) -> BrokerResult<Vec<Published>> {
        if spec.publishes.is_empty() && spec.acks.is_empty() {
            return Err(BrokerError::Invalid(
                "commit holds no publish and no ack; send at least one".into(),
            ));
        }
        let mut appends = Vec::with_capacity(spec.publishes.len());
        for (index, (name, messages)) in spec.publishes.into_iter().enumerate() {
            let part = |err: BrokerError| err.in_part(format!("publishes[{index}]"));
            check_batch(&messages, self.inner.config.max_message_bytes).map_err(part)?;
            let topic = self.topic_to_publish_to(&name).await.map_err(part)?;
            appends.push((topic, messages));
        }
        // One entry per subscription, so that naming a message twice is
        // not taken for two commits claiming it.
        let mut acks: Vec<(Arc<Subscription>, Vec<Offset>)> = Vec::new();
        for (index, given) in spec.acks.into_iter().enumerate() {
            let part = |err: BrokerError| err.in_part(format!("acks[{index}]"));
            let sub = self.subscription(&given.subscription).map_err(part)?;
            let ack_ids = Self::ack_ids(&given.ack_ids).map_err(part)?;
            let offsets = sub.commit_offsets(&given.offsets, &ack_ids).map_err(part)?;
            match acks.iter_mut().find(|(s, _)| s.id == sub.id) {
                Some((_, all)) => {
                    all.extend(offsets);
                    all.sort_unstable();
                    all.dedup();
                }
                None => acks.push((sub, offsets)),
            }
        }
        if !appends.is_empty() {
            // A full disk refuses the publishes; acks alone go on.
            self.inner.store.accepts_messages()?;
        }
        let counts: Vec<usize> = appends.iter().map(|(_, m)| m.len()).collect();
        let appended = self.inner.writer.commit(appends, acks).await?;
        Ok(appended
            .into_iter()
            .zip(counts)
            .map(|(appended, count)| {
                let (offsets, duplicates) = appended.offsets(count);
                Published {
                    offsets,
                    duplicates,
                }
            })
            .collect())
    }

    /// [`Engine::oldest_unacked`]: from the tail cache, else the store.
    pub(super) async fn do_oldest_unacked(
        &self,
        subscription: &SubscriptionName,
    ) -> BrokerResult<Option<SystemTime>> {
        let sub = self.subscription(subscription)?;
        let Some(offset) = sub.oldest_unacked() else {
            return Ok(None);
        };
        let (cached, _) = sub.topic.cached(std::iter::once(offset));
        if let Some(message) = cached.first() {
            return Ok(Some(message.publish_time));
        }
        // The first stored message from there (offsets may hold none).
        let limit = ReadLimit {
            max_messages: 1,
            max_bytes: 1,
        };
        let range = offset..sub.topic.head();
        let read = self.inner.store.read(sub.topic.id, range, limit).await?;
        Ok(read.first().map(|m| m.publish_time))
    }

    /// [`Engine::read_topic`]: a page of the topic from `from`.
    pub(super) async fn do_read_topic(
        &self,
        topic: &TopicName,
        from: Offset,
        max_messages: usize,
    ) -> BrokerResult<TopicRead> {
        let topic = self.topic(topic)?;
        let end_offset = topic.head();
        let from = from.max(topic.first_offset()).min(end_offset);
        let limit = ReadLimit {
            max_messages,
            max_bytes: READ_TOPIC_BYTES,
        };
        let mut messages = self
            .inner
            .store
            .read(topic.id, from..end_offset, limit)
            .await
            .map_err(|e| not_found_as_topic(e, &topic))?;
        let bytes: usize = messages.iter().map(StoredMessage::wire_size).sum();
        let next_offset = match messages.last() {
            Some(last) if messages.len() >= max_messages || bytes >= READ_TOPIC_BYTES => {
                last.offset + 1
            }
            _ => end_offset,
        };
        topic.drop_expired(&mut messages);
        Ok(TopicRead {
            messages,
            next_offset,
            end_offset,
        })
    }
}
