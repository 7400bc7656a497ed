use super::*;
use bytes::Bytes;
use bytestring::ByteString;

fn head(first_offset: Offset, next_offset: Offset, retained_bytes: u64) -> LogHead {
    LogHead {
        first_offset,
        next_offset,
        retained_bytes,
        last_publish: UNIX_EPOCH,
    }
}

fn sized(offset: Offset, publish_time: SystemTime, size: u64) -> RamMessage {
    RamMessage {
        message: StoredMessage {
            offset,
            publish_time,
            payload: Bytes::from(vec![b'x'; 10]),
            key: String::new(),
            attributes: Vec::new(),
            id: ByteString::new(),
            deliver_at: None,
        },
        size,
    }
}

#[test]
fn a_change_drops_below_its_first_offset_even_what_it_appends() {
    let log = RamLog::starting_at(10, Duration::ZERO, Retention::default());
    let now = SystemTime::now();
    log.apply(LogChange {
        head: head(10, 13, 30),
        appended: (10..13).map(|o| sized(o, now, 10)).collect(),
        ..LogChange::default()
    });
    log.apply(LogChange {
        head: head(14, 16, 20),
        appended: (13..16).map(|o| sized(o, now, 10)).collect(),
        ..LogChange::default()
    });
    assert_eq!(log.bounds(), (14, 16, 20));
    assert_eq!(log.size_at(13), None);
    assert_eq!(log.size_at(15), Some(10));
    let all = ReadLimit {
        max_messages: usize::MAX,
        max_bytes: usize::MAX,
    };
    let offsets: Vec<Offset> = log.read(0..100, all).iter().map(|m| m.offset).collect();
    assert_eq!(offsets, vec![14, 15]);
    let found = log.read_offsets(&[13, 15, 20]);
    assert_eq!(found.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![15]);
}

#[test]
fn ids_are_forgotten_once_their_window_has_passed() {
    let log = RamLog::starting_at(0, Duration::ZERO, Retention::default());
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    let now = SystemTime::now();
    let window = Duration::from_secs(60);
    log.apply(LogChange {
        head: head(0, 2, 0),
        ids: vec![("old".to_owned(), 0, long_ago), ("new".to_owned(), 1, now)],
        window,
        ..LogChange::default()
    });
    assert_eq!(log.remembered("new", window, now), Some(1));
    assert_eq!(log.remembered("old", window, now), None);
    assert!(
        !log.lock().ids.contains_key("old"),
        "an expired id is gone from memory, not only ignored"
    );
}

#[test]
fn offset_at_time_finds_the_first_message_at_or_after_it() {
    let log = RamLog::starting_at(5, Duration::ZERO, Retention::default());
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    let at = |s| t0 + Duration::from_secs(s);
    log.apply(LogChange {
        head: head(5, 8, 0),
        appended: vec![sized(5, at(0), 1), sized(6, at(2), 1), sized(7, at(4), 1)],
        ..LogChange::default()
    });
    assert_eq!(log.offset_at_time(at(0)), 5);
    assert_eq!(log.offset_at_time(at(1)), 6);
    assert_eq!(log.offset_at_time(at(4)), 7);
    assert_eq!(log.offset_at_time(at(5)), 8);
}

/// Remembers what a listener heard: appends as (first offset, count),
/// truncations as the new first offset.
#[derive(Default)]
struct Heard {
    appended: Mutex<Vec<(Offset, usize)>>,
    truncated: Mutex<Vec<Offset>>,
}

impl StoreListener for Heard {
    fn appended(&self, _: TopicId, appended: &Appended, messages: Vec<NewMessage>) {
        let mut heard = self.appended.lock().expect("not poisoned");
        heard.push((appended.first_offset, messages.len()));
    }

    fn truncated(&self, _: TopicId, first_offset: Offset, _: u64) {
        let mut heard = self.truncated.lock().expect("not poisoned");
        heard.push(first_offset);
    }
}

fn message(id: &str) -> NewMessage {
    NewMessage {
        payload: Bytes::from_static(b"m"),
        id: id.into(),
        ..NewMessage::default()
    }
}

fn appended_now(log: &Arc<RamLog>, messages: Vec<NewMessage>, heard: &Heard) -> Appended {
    match log.append_now(TopicId(1), messages, Some(heard), 1) {
        AppendNow::Appended { appended, .. } => appended,
        other => panic!("not appended at once: {other:?}"),
    }
}

#[test]
fn append_now_stores_at_once_and_leaves_out_repeated_ids() {
    let window = Duration::from_secs(60);
    let log = Arc::new(RamLog::starting_at(0, window, Retention::default()));
    log.reserved(Some(100));
    let heard = Heard::default();
    let batch = vec![message("a"), message("b"), message("a")];
    let appended = appended_now(&log, batch, &heard);
    assert_eq!(appended.first_offset, 0);
    let repeated = Duplicate {
        index: 2,
        offset: 0,
    };
    assert_eq!(appended.duplicates, vec![repeated]);
    let appended = appended_now(&log, vec![message("b"), message("c")], &heard);
    assert_eq!(appended.first_offset, 2);
    let repeated = Duplicate {
        index: 0,
        offset: 1,
    };
    assert_eq!(appended.duplicates, vec![repeated]);
    assert_eq!(log.bounds().1, 3);
    let heard = heard.appended.lock().expect("not poisoned").clone();
    assert_eq!(heard, vec![(0, 2), (2, 1)]);
}

#[test]
fn append_now_drops_the_oldest_beyond_the_bound_and_says_so() {
    let retention = Retention {
        max_messages: Some(2),
        ..Retention::default()
    };
    let log = Arc::new(RamLog::starting_at(0, Duration::ZERO, retention));
    log.reserved(Some(100));
    let heard = Heard::default();
    let appended = appended_now(&log, vec![message(""); 3], &heard);
    assert_eq!(appended.retained_bytes, log.bounds().2);
    assert_eq!(log.bounds().0, 1);
    appended_now(&log, vec![message("")], &heard);
    assert_eq!(log.bounds(), (2, 4, appended.retained_bytes));
    let truncated = heard.truncated.lock().expect("not poisoned").clone();
    assert_eq!(truncated, vec![1, 2]);
}

#[test]
fn claims_deletion_and_the_mark_keep_append_now_from_appending() {
    let log = Arc::new(RamLog::starting_at(0, Duration::ZERO, Retention::default()));
    let via_writer = |messages: Vec<NewMessage>| match log.append_now(TopicId(1), messages, None, 1)
    {
        AppendNow::ViaWriter(messages, claim) => (messages.len(), claim),
        other => panic!("appended without the writer: {other:?}"),
    };
    // Nothing is reserved yet.
    let (count, claim) = via_writer(vec![message(""); 2]);
    assert_eq!(count, 2);
    drop(claim);
    log.reserved(Some(4));
    let reserve = |messages| match log.append_now(TopicId(1), messages, None, 1) {
        AppendNow::Appended { reserve, .. } => reserve,
        other => panic!("not appended at once: {other:?}"),
    };
    assert!(!reserve(vec![message(""); 2]), "2 + 1 is within the mark");
    assert!(reserve(vec![message(""); 2]), "4 + 1 is beyond it");
    assert!(!reserve(Vec::new()), "asked once until it is written");
    drop(via_writer(vec![message("")]).1);
    let (claim, head) = log.claim();
    assert_eq!(head.next_offset, 4);
    let (_, queued) = via_writer(vec![message("")]);
    drop(claim);
    let _ = via_writer(vec![message("")]);
    drop(queued);
    log.reserved(Some(10));
    assert!(!reserve(vec![message("")]), "every claim let go of");
    log.delete();
    assert!(matches!(
        log.append_now(TopicId(1), Vec::new(), None, 1),
        AppendNow::Deleted
    ));
}
