//! How the writer stages an append to a disk topic: offsets from the
//! topic's head, ids checked against those the topic remembers, messages
//! and their delay entries into the batch. Part of [`Writer`]'s
//! implementation.

use super::*;

impl Writer {
    pub(super) fn stage_append(
        &mut self,
        topic: TopicId,
        messages: &[NewMessage],
        batch: &mut Batch<'_>,
    ) -> StoreResult<Appended> {
        let head = self.claimed_head(topic)?;
        if head.ram.is_some() {
            return Ok(self.stage_ram_append(topic, head, messages, batch));
        }
        let now = codec::truncate_to_micros(SystemTime::now());
        let publish_time = now.max(head.last_publish);
        let now_micros = codec::to_micros(publish_time);
        let window = head.dedup_window;
        let mut ids = if window.is_zero() {
            None
        } else {
            self.remembered.get_mut(&topic)
        };
        if let Some(ids) = ids.as_deref_mut() {
            ids.expire(window, now_micros);
        }
        // This append's ids are those it adds to the batch's.
        let new_ids = self.batch_remembered.len();
        let mut appended = Appended {
            first_offset: head.next_offset,
            publish_time,
            retained_bytes: head.retained_bytes,
            duplicates: Vec::new(),
        };
        if messages.is_empty() {
            return Ok(appended);
        }
        // Every id's hash first, and its slot fetched with the others'.
        self.hashes.clear();
        if let Some(ids) = ids.as_deref() {
            self.hashes.extend(
                messages
                    .iter()
                    .map(|message| (!message.id.is_empty()).then(|| dedup::id_hash(&message.id))),
            );
            ids.touch(self.hashes.iter().flatten().copied());
        }
        self.undo.push(Undo::Topic(topic, Some(head)));
        let head = self.topics.get_mut(&topic).expect("looked up above");
        let mut offset = appended.first_offset;
        for (index, message) in messages.iter().enumerate() {
            if let Some(ids) = ids.as_deref_mut()
                && let Some(id) = self.hashes[index]
            {
                if let Err(original) = ids.insert_new(id, offset, now_micros) {
                    appended.duplicates.push(Duplicate {
                        index,
                        offset: original,
                    });
                    continue;
                }
                self.batch_remembered.push((topic, id, offset));
            }
            codec::encode_message_into(&mut self.scratch, appended.publish_time, message);
            batch.put_message(topic, offset, &self.scratch);
            if let Some(due) = message.due(publish_time) {
                batch.put_delayed(topic, due, offset);
            }
            head.retained_bytes += codec::stored_size(self.scratch.len());
            offset += 1;
        }
        let stored = offset - appended.first_offset;
        if stored == 0 {
            return Ok(appended);
        }
        head.next_offset = offset;
        self.appended += stored;
        head.last_publish = appended.publish_time;
        appended.retained_bytes = head.retained_bytes;
        batch.put_head(topic, head.next_offset, head.retained_bytes);
        let new_ids = &self.batch_remembered[new_ids..];
        if let Some(&(_, _, first)) = new_ids.first() {
            let ids = new_ids.iter().map(|&(_, id, offset)| (id, offset));
            batch.put_ids(topic, publish_time, first, ids);
        }
        Ok(appended)
    }
}
