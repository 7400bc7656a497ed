//! The lease book on its own, with explicit instants, over a stand-in
//! topic: `deliver` does what a stream does (claim, read the scan, admit).

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use bytestring::ByteString;

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);
const ALL: Budget = Budget {
    messages: usize::MAX,
    bytes: usize::MAX,
};

fn window(messages: usize) -> Window {
    Window {
        messages,
        bytes: None,
    }
}

fn start() -> Now {
    Now {
        instant: Instant::now(),
        wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}

fn later(now: Now, by: Duration) -> Now {
    Now {
        instant: now.instant + by,
        wall: now.wall + by,
    }
}

fn message(offset: Offset, key: &str) -> StoredMessage {
    StoredMessage {
        offset,
        publish_time: SystemTime::UNIX_EPOCH,
        payload: Bytes::from_static(b"0123456789"),
        key: key.to_owned(),
        attributes: Vec::new(),
        id: ByteString::new(),
        deliver_at: None,
    }
}

/// A topic of `n` messages without keys.
fn topic(n: Offset) -> Vec<StoredMessage> {
    (0..n).map(|o| message(o, "")).collect()
}

fn book(ordered: bool) -> LeaseBook {
    LeaseBook::new(AckState::starting_at(0), [], ordered, 0)
}

/// What a stream does until it has nothing more to scan: turns.
fn deliver(
    book: &mut LeaseBook,
    topic: &[StoredMessage],
    stream: StreamId,
    max_outstanding: usize,
    budget: Budget,
    now: Now,
) -> Vec<Leased> {
    let mut leased = Vec::new();
    loop {
        let (more, scanned) = turn(book, topic, stream, max_outstanding, budget, now);
        leased.extend(more);
        if !scanned {
            return leased;
        }
    }
}

/// What a stream does in one turn: claims, reads its scan from `topic`
/// within the budget, admits it. Returns the leases, lowest first, and
/// whether it scanned.
fn turn(
    book: &mut LeaseBook,
    topic: &[StoredMessage],
    stream: StreamId,
    max_outstanding: usize,
    budget: Budget,
    now: Now,
) -> (Vec<Leased>, bool) {
    let head = topic.last().map_or(0, |m| m.offset + 1);
    let claim = book.claim(stream, window(max_outstanding), budget, head, now, DEADLINE);
    let mut leased = claim.leased;
    let scanned = claim.scan.is_some();
    if let Some(scan) = claim.scan {
        let room = budget
            .messages
            .min(max_outstanding - book.outstanding(stream) + leased.len())
            - leased.len();
        let read: Vec<StoredMessage> = topic
            .iter()
            .filter(|m| scan.range.contains(&m.offset))
            .take(room)
            .cloned()
            .collect();
        let examined = match read.last() {
            Some(last) if read.len() == room => last.offset + 1,
            _ => scan.range.end,
        };
        let left = Budget {
            messages: budget.messages - leased.len(),
            ..budget
        };
        let scanned = Scanned {
            epoch: book.epoch,
            range: &scan.range,
            messages: &read,
            examined,
            horizon: None,
        };
        leased.extend(book.admit(
            stream,
            scanned,
            window(max_outstanding),
            left,
            now,
            DEADLINE,
        ));
    }
    (leased, scanned)
}

fn offsets(leased: &[Leased]) -> Vec<Offset> {
    leased.iter().map(|l| l.offset).collect()
}

fn attempts(leased: &[Leased]) -> Vec<(Offset, u32)> {
    leased.iter().map(|l| (l.offset, l.attempt)).collect()
}

#[test]
fn new_messages_are_leased_in_offset_order_up_to_max_outstanding() {
    let (mut book, topic, now) = (book(false), topic(10), start());
    let s = book.open_stream();
    let first = deliver(&mut book, &topic, s, 3, ALL, now);
    assert_eq!(attempts(&first), vec![(0, 1), (1, 1), (2, 1)]);
    assert!(
        deliver(&mut book, &topic, s, 3, ALL, now).is_empty(),
        "full"
    );
    assert_eq!(book.outstanding(s), 3);
    book.ack(&[Target::Offset(1)], now);
    assert_eq!(
        offsets(&deliver(&mut book, &topic, s, 3, ALL, now)),
        vec![3]
    );
}

#[test]
fn each_message_goes_to_one_stream_at_a_time() {
    let (mut book, topic, now) = (book(false), topic(4), start());
    let (a, b) = (book.open_stream(), book.open_stream());
    let to_a = offsets(&deliver(&mut book, &topic, a, 2, ALL, now));
    let to_b = offsets(&deliver(&mut book, &topic, b, 5, ALL, now));
    assert_eq!((to_a, to_b), (vec![0, 1], vec![2, 3]));
}

#[test]
fn claims_are_bounded_by_bytes_and_a_single_large_message_still_goes() {
    let (mut book, topic, now) = (book(false), topic(10), start());
    let s = book.open_stream();
    // Each message is 42 bytes on the wire: 100 bytes take two. The scan
    // reads what the budget allows; the book leases two of them and keeps
    // the rest due.
    let small = Budget {
        messages: usize::MAX,
        bytes: 100,
    };
    assert_eq!(
        offsets(&turn(&mut book, &topic, s, 100, small, now).0),
        vec![0, 1]
    );
    let tiny = Budget {
        messages: usize::MAX,
        bytes: 1,
    };
    assert_eq!(
        offsets(&turn(&mut book, &topic, s, 100, tiny, now).0),
        vec![2]
    );
}

#[test]
fn a_full_stream_gets_its_expired_leases_back_when_it_claims() {
    // The stream holds its only slot and never settles: the claim must
    // settle the expired lease first and hand the message out again, or
    // the stream would wait forever for a deadline already past.
    let (mut book, topic, now) = (book(false), topic(1), start());
    let s = book.open_stream();
    assert_eq!(
        offsets(&deliver(&mut book, &topic, s, 1, ALL, now)),
        vec![0]
    );
    let expired = later(now, DEADLINE);
    assert_eq!(book.next_wakeup(), Some(expired.instant));
    let again = deliver(&mut book, &topic, s, 1, ALL, expired);
    assert_eq!(attempts(&again), vec![(0, 2)]);
    assert!(
        book.next_wakeup() > Some(expired.instant),
        "the next wake-up is in the future, not one already past"
    );
}

#[test]
fn skipping_acknowledged_messages_costs_per_range_not_per_offset() {
    // A trillion acknowledged offsets after the first: stepping over them
    // one by one would never finish.
    let acked =
        crate::offsets::OffsetRanges::from_sorted_ranges(std::iter::once(1..1_000_000_000_000))
            .unwrap();
    let acks = AckState { floor: 0, acked };
    let mut book = LeaseBook::new(acks, [], false, 0);
    let s = book.open_stream();
    let now = start();
    let head = 1_000_000_000_010;
    let claim = book.claim(s, window(100), ALL, head, now, DEADLINE);
    assert_eq!(claim.scan.map(|s| s.range), Some(0..1));
    let scanned = Scanned {
        epoch: book.epoch,
        range: &(0..1),
        messages: &[message(0, "")],
        examined: 1,
        horizon: None,
    };
    book.admit(s, scanned, window(100), ALL, now, DEADLINE);
    let claim = book.claim(s, window(100), ALL, head, now, DEADLINE);
    assert_eq!(
        claim.scan.map(|s| s.range),
        Some(1_000_000_000_000..head),
        "one step over the acknowledged range"
    );
}

#[test]
fn a_scan_never_spans_acknowledged_messages_and_is_bounded_by_room() {
    let mut acks = AckState::starting_at(0);
    for offset in 3..7 {
        acks.ack(offset);
    }
    let mut book = LeaseBook::new(acks, [], false, 0);
    let s = book.open_stream();
    let claim = book.claim(s, window(2), ALL, 100, start(), DEADLINE);
    assert_eq!(
        claim.scan.map(|s| s.range),
        Some(0..2),
        "as long as the room"
    );
    book.abandon_scan(book.epoch);
    let claim = book.claim(s, window(50), ALL, 100, start(), DEADLINE);
    assert_eq!(
        claim.scan.map(|s| s.range),
        Some(0..3),
        "up to the acked run"
    );
}

#[test]
fn only_one_stream_scans_at_a_time_and_an_abandoned_scan_is_free_again() {
    let mut book = book(false);
    let (a, b) = (book.open_stream(), book.open_stream());
    let now = start();
    assert!(
        book.claim(a, window(10), ALL, 5, now, DEADLINE)
            .scan
            .is_some()
    );
    assert!(
        book.claim(b, window(10), ALL, 5, now, DEADLINE)
            .scan
            .is_none()
    );
    assert!(
        book.claim(b, window(10), ALL, 5, now, DEADLINE)
            .scan
            .is_none(),
        "a claim without a scan leaves a's scan in place"
    );
    book.abandon_scan(book.epoch);
    assert!(
        book.claim(b, window(10), ALL, 5, now, DEADLINE)
            .scan
            .is_some()
    );
}

#[test]
fn an_admission_never_leases_beyond_the_streams_room() {
    let (mut book, topic, now) = (book(false), topic(5), start());
    let (t, s) = (book.open_stream(), book.open_stream());
    deliver(&mut book, &topic, t, 2, ALL, now);
    let claim = book.claim(s, window(2), ALL, 5, now, DEADLINE);
    let range = claim.scan.expect("s scans").range;
    assert_eq!(range, 2..4);
    // While s reads, t's stream ends: 0 and 1 are due again.
    book.close_stream(t, true, now);
    let scanned = Scanned {
        epoch: book.epoch,
        range: &range,
        messages: &topic[2..4],
        examined: 4,
        horizon: None,
    };
    let leased = book.admit(s, scanned, window(2), ALL, now, DEADLINE);
    assert_eq!(offsets(&leased), vec![0, 1]);
    assert_eq!(book.outstanding(s), 2, "two slots, two leases");
}

#[test]
fn a_byte_window_bounds_what_a_stream_holds_but_never_starves_it() {
    let (mut book, now) = (book(false), start());
    // Each message is 42 bytes on the wire; the last one is far larger.
    let mut topic = topic(5);
    topic.push(StoredMessage {
        offset: 5,
        payload: Bytes::from(vec![0; 1000]),
        ..message(5, "")
    });
    let s = book.open_stream();
    let window = Window {
        messages: 100,
        bytes: Some(100),
    };
    let first = book.claim(s, window, ALL, 6, now, DEADLINE);
    let range = first.scan.expect("a scan").range;
    let scanned = Scanned {
        epoch: book.epoch,
        range: &range,
        messages: &topic[0..6],
        examined: 6,
        horizon: None,
    };
    let leased = book.admit(s, scanned, window, ALL, now, DEADLINE);
    assert_eq!(offsets(&leased), vec![0, 1], "two fit in 100 bytes");
    book.ack(&[Target::Offset(0)], now);
    let claim = book.claim(s, window, ALL, 6, now, DEADLINE);
    assert_eq!(offsets(&claim.leased), vec![2], "room for one more");
    book.ack(&[Target::Offset(1)], now);
    book.ack(&[Target::Offset(2)], now);
    let claim = book.claim(s, window, ALL, 6, now, DEADLINE);
    assert_eq!(offsets(&claim.leased), vec![3, 4]);
    book.ack(&[Target::Offset(3)], now);
    let claim = book.claim(s, window, ALL, 6, now, DEADLINE);
    assert!(
        claim.leased.is_empty(),
        "the large one waits while 4 is held"
    );
    book.ack(&[Target::Offset(4)], now);
    let claim = book.claim(s, window, ALL, 6, now, DEADLINE);
    assert_eq!(
        offsets(&claim.leased),
        vec![5],
        "and goes alone once nothing is"
    );
}

#[test]
fn offsets_without_a_message_are_acknowledged_as_the_scan_passes() {
    let (mut book, now) = (book(false), start());
    let topic = vec![message(0, ""), message(3, ""), message(4, "")];
    let s = book.open_stream();
    assert_eq!(
        offsets(&deliver(&mut book, &topic, s, 10, ALL, now)),
        vec![0, 3, 4]
    );
    assert!(book.ack_state().is_acked(1) && book.ack_state().is_acked(2));
    assert!(book.has_changes(), "the skipped offsets are to be stored");
    assert_eq!(book.ack_state().unacked_below(5), 3);
}

#[test]
fn a_stale_settlement_cannot_touch_the_lease_another_stream_holds_now() {
    let (mut book, topic, now) = (book(false), topic(1), start());
    let (a, b) = (book.open_stream(), book.open_stream());
    let first = deliver(&mut book, &topic, a, 1, ALL, now)[0];
    // A's lease expires and B gets the message.
    let expired = later(now, DEADLINE);
    let second = deliver(&mut book, &topic, b, 1, ALL, expired)[0];
    assert_eq!((second.offset, second.attempt), (0, 2));
    assert_ne!(first.lease, second.lease);
    // A's late nack and extension name its own, expired lease: nothing moves.
    book.nack(&[Target::Lease(0, first.lease)], None, expired);
    book.modify_deadline(&[Target::Lease(0, first.lease)], Duration::ZERO, expired);
    assert_eq!(book.outstanding(b), 1);
    assert!(deliver(&mut book, &topic, a, 1, ALL, expired).is_empty());
    // B's own nack does move it.
    book.nack(&[Target::Lease(0, second.lease)], None, expired);
    assert_eq!(
        attempts(&deliver(&mut book, &topic, a, 1, ALL, expired)),
        vec![(0, 3)]
    );
}

#[test]
fn an_ack_of_a_moved_lease_still_acknowledges_the_message() {
    let (mut book, topic, now) = (book(false), topic(1), start());
    let (a, b) = (book.open_stream(), book.open_stream());
    let first = deliver(&mut book, &topic, a, 1, ALL, now)[0];
    let expired = later(now, DEADLINE);
    deliver(&mut book, &topic, b, 1, ALL, expired);
    book.ack(&[Target::Lease(0, first.lease)], expired);
    assert!(book.ack_state().is_acked(0), "the work was done");
    assert_eq!((book.in_flight(), book.outstanding(b)), (0, 0));
}

#[test]
fn an_extended_lease_is_not_redelivered_at_the_old_deadline() {
    let (mut book, topic, now) = (book(false), topic(1), start());
    let s = book.open_stream();
    let leased = deliver(&mut book, &topic, s, 1, ALL, now)[0];
    book.modify_deadline(&[Target::Lease(0, leased.lease)], DEADLINE * 3, now);
    assert!(deliver(&mut book, &topic, s, 1, ALL, later(now, DEADLINE * 2)).is_empty());
    let expired = later(now, DEADLINE * 3);
    assert_eq!(
        attempts(&deliver(&mut book, &topic, s, 1, ALL, expired)),
        vec![(0, 2)]
    );
}

#[test]
fn a_nack_with_a_delay_waits_without_holding_a_slot() {
    let (mut book, topic, now) = (book(false), topic(2), start());
    let s = book.open_stream();
    deliver(&mut book, &topic, s, 2, ALL, now);
    let delay = Duration::from_secs(5);
    book.nack(&[Target::Offset(0)], Some(delay), now);
    book.modify_deadline(&[Target::Offset(1)], Duration::ZERO, now);
    assert_eq!(book.outstanding(s), 0);
    assert_eq!(
        attempts(&deliver(&mut book, &topic, s, 2, ALL, now)),
        vec![(1, 2)]
    );
    assert_eq!(
        book.next_wakeup(),
        Some(now.instant + delay).min(book.next_wakeup())
    );
    let due = later(now, delay);
    assert_eq!(
        attempts(&deliver(&mut book, &topic, s, 2, ALL, due)),
        vec![(0, 2)]
    );
}

const POLICY: RetryPolicy = RetryPolicy {
    minimum_backoff: Duration::from_secs(2),
    maximum_backoff: Duration::from_secs(5),
};

#[test]
fn backoff_doubles_from_the_minimum_up_to_the_maximum() {
    let waits: Vec<u64> = (1..=5).map(|n| POLICY.backoff(n).as_secs()).collect();
    assert_eq!(waits, [2, 4, 5, 5, 5]);
    assert_eq!(POLICY.backoff(u32::MAX), POLICY.maximum_backoff);
    for offset in 0..1000 {
        let wait = with_jitter(Duration::from_secs(10), offset, 3);
        assert!(
            wait >= Duration::from_secs(10) && wait <= Duration::from_secs(11),
            "{wait:?}"
        );
    }
    let spread: BTreeSet<Duration> = (0..100)
        .map(|o| with_jitter(Duration::from_secs(10), o, 1))
        .collect();
    assert!(spread.len() > 10, "jitter spreads: {spread:?}");
}

/// Redelivers everything due at `now` to a fresh claim by `s`.
fn due_at(
    book: &mut LeaseBook,
    topic: &[StoredMessage],
    s: StreamId,
    now: Now,
) -> Vec<(Offset, u32)> {
    book.reap(now);
    attempts(&deliver(book, topic, s, 10, ALL, now))
}

#[test]
fn failed_deliveries_wait_out_the_retry_policy_without_holding_back_others() {
    let (mut book, topic, now) = (book(false), topic(3), start());
    book.set_retry(Some(POLICY));
    let s = book.open_stream();
    assert_eq!(offsets(&deliver(&mut book, &topic, s, 1, ALL, now)), [0]);
    // A nack without a delay: due after the minimum, plus at most 10 %.
    book.nack(&[Target::Offset(0)], None, now);
    assert_eq!(book.outstanding(s), 0, "a waiting message holds no slot");
    assert_eq!(
        due_at(&mut book, &topic, s, now),
        [(1, 1), (2, 1)],
        "the others flow while it waits"
    );
    book.ack(&[Target::Offset(1), Target::Offset(2)], now);
    let before = later(now, Duration::from_millis(1999));
    assert_eq!(due_at(&mut book, &topic, s, before), []);
    let first = later(now, Duration::from_millis(2200));
    assert_eq!(due_at(&mut book, &topic, s, first), [(0, 2)]);
    // An expired lease is a failure too: the second waits twice as long.
    let expired = later(first, DEADLINE);
    book.reap(expired);
    assert_eq!(
        due_at(
            &mut book,
            &topic,
            s,
            later(expired, Duration::from_millis(3999))
        ),
        []
    );
    assert_eq!(
        due_at(
            &mut book,
            &topic,
            s,
            later(expired, Duration::from_millis(4400))
        ),
        [(0, 3)]
    );
    // A nack's own delay replaces the policy.
    let third = later(expired, Duration::from_millis(4400));
    book.nack(
        &[Target::Offset(0)],
        Some(Duration::from_millis(100)),
        third,
    );
    assert_eq!(
        due_at(
            &mut book,
            &topic,
            s,
            later(third, Duration::from_millis(100))
        ),
        [(0, 4)]
    );
    // The wait is stored with the record, so it survives a restart.
    let fourth = later(third, Duration::from_millis(100));
    book.nack(&[Target::Offset(0)], None, fourth);
    let records = book.take_changes().records;
    let stored = records.iter().find(|(o, _)| *o == 0).and_then(|(_, r)| *r);
    let at = stored.and_then(|r| r.redeliver_at).expect("a stored wait");
    let wait = at.duration_since(fourth.wall).expect("in the future");
    assert!(
        wait >= POLICY.maximum_backoff && wait <= Duration::from_millis(5500),
        "{wait:?}"
    );
}

#[test]
fn without_a_policy_or_for_uncounted_failures_redelivery_is_at_once() {
    let (mut book, topic, now) = (book(false), topic(1), start());
    let s = book.open_stream();
    deliver(&mut book, &topic, s, 1, ALL, now);
    book.nack(&[Target::Offset(0)], None, now);
    assert_eq!(due_at(&mut book, &topic, s, now), [(0, 2)]);
    // The broker's own shutdown counts no failure and waits for nothing.
    book.set_retry(Some(POLICY));
    let (a, b) = (s, book.open_stream());
    book.close_stream(a, false, now);
    assert_eq!(due_at(&mut book, &topic, b, now), [(0, 2)]);
    // The policy can be removed again.
    book.set_retry(None);
    book.nack(&[Target::Offset(0)], None, now);
    assert_eq!(due_at(&mut book, &topic, b, now), [(0, 3)]);
}

#[test]
fn a_closed_stream_hands_its_messages_on_and_counts_the_failure() {
    let (mut book, topic, now) = (book(false), topic(2), start());
    let (a, b) = (book.open_stream(), book.open_stream());
    deliver(&mut book, &topic, a, 2, ALL, now);
    book.close_stream(a, true, now);
    assert_eq!(book.in_flight(), 0);
    assert_eq!(
        attempts(&deliver(&mut book, &topic, b, 5, ALL, now)),
        vec![(0, 2), (1, 2)]
    );
}

#[test]
fn a_stream_ended_by_shutdown_and_unsent_leases_count_no_failure() {
    let (mut book, topic, now) = (book(false), topic(3), start());
    let (a, b) = (book.open_stream(), book.open_stream());
    deliver(&mut book, &topic, a, 3, ALL, now);
    book.release_unsent(a, &[2]);
    book.close_stream(a, false, now);
    assert_eq!(
        attempts(&deliver(&mut book, &topic, b, 5, ALL, now)),
        vec![(0, 1), (1, 1), (2, 1)]
    );
    let records = book.take_changes().records;
    assert!(records.is_empty(), "nothing to store: {records:?}");
}

#[test]
fn a_finished_stream_keeps_its_leases_until_their_deadline() {
    let (mut book, topic, now) = (book(false), topic(2), start());
    let (done, other) = (book.open_stream(), book.open_stream());
    deliver(&mut book, &topic, done, 2, ALL, now);
    book.finish_stream(done);
    assert_eq!(book.in_flight(), 2);
    assert!(deliver(&mut book, &topic, other, 5, ALL, now).is_empty());
    book.ack(&[Target::Offset(0)], now);
    let expired = later(now, DEADLINE);
    assert_eq!(
        attempts(&deliver(&mut book, &topic, other, 5, ALL, expired)),
        vec![(1, 2)]
    );
}

#[test]
fn failures_are_recorded_for_storage_and_cleared_by_the_ack() {
    let (mut book, topic, now) = (book(false), topic(2), start());
    let s = book.open_stream();
    deliver(&mut book, &topic, s, 2, ALL, now);
    let delay = Duration::from_secs(7);
    book.nack(&[Target::Offset(1)], Some(delay), now);
    let records = book.take_changes().records;
    let expected = DeliveryRecord {
        failures: 1,
        redeliver_at: Some(now.wall + delay),
    };
    assert_eq!(records, vec![(1, Some(expected))]);
    assert!(!book.has_changes(), "taken");
    book.ack(&[Target::Offset(1)], now);
    let Changes { acks, records, .. } = book.take_changes();
    assert_eq!(records, vec![(1, None)], "the record is deleted");
    assert!(acks.is_acked(1));
}

#[test]
fn a_restored_book_continues_the_counts_and_waits_out_stored_delays() {
    let mut acks = AckState::starting_at(4);
    acks.ack(6);
    let now = start();
    let records = [
        (
            5,
            DeliveryRecord {
                failures: 2,
                redeliver_at: None,
            },
        ),
        (
            7,
            DeliveryRecord {
                failures: 1,
                redeliver_at: Some(now.wall + Duration::from_secs(5)),
            },
        ),
        // Acknowledged meanwhile: dropped, and deleted from storage.
        (
            6,
            DeliveryRecord {
                failures: 9,
                redeliver_at: None,
            },
        ),
    ];
    let mut book = LeaseBook::new(acks, records, false, 0);
    let s = book.open_stream();
    let topic = topic(9);
    assert_eq!(
        attempts(&deliver(&mut book, &topic, s, 10, ALL, now)),
        vec![(4, 1), (5, 3), (8, 1)]
    );
    let changes = book.take_changes().records;
    assert_eq!(changes, vec![(6, None)]);
    let due = later(now, Duration::from_secs(5));
    assert_eq!(
        attempts(&deliver(&mut book, &topic, s, 10, ALL, due)),
        vec![(7, 2)]
    );
}

#[test]
fn lease_ids_grow_from_their_seed() {
    let mut book = LeaseBook::new(AckState::starting_at(0), [], false, 5_000);
    let s = book.open_stream();
    let leased = deliver(&mut book, &topic(2), s, 2, ALL, start());
    assert!(leased.iter().all(|l| l.lease > 5_000));
    assert!(leased[0].lease < leased[1].lease);
}

#[test]
fn moving_the_first_offset_up_settles_everything_below_it() {
    let (mut book, topic, now) = (book(false), topic(6), start());
    let s = book.open_stream();
    deliver(&mut book, &topic, s, 3, ALL, now);
    book.nack(&[Target::Offset(1)], None, now);
    book.clamp(4, now);
    assert_eq!((book.in_flight(), book.outstanding(s)), (0, 0));
    assert_eq!(book.ack_state().floor, 4);
    assert_eq!(
        attempts(&deliver(&mut book, &topic, s, 10, ALL, now)),
        vec![(4, 1), (5, 1)]
    );
    let records = book.take_changes().records;
    assert_eq!(records, vec![(1, None)], "the failure record of 1 goes");
}

mod ordered {
    use super::*;

    fn keyed(keys: &[&str]) -> Vec<StoredMessage> {
        keys.iter()
            .enumerate()
            .map(|(o, k)| message(o as Offset, k))
            .collect()
    }

    #[test]
    fn one_message_per_key_is_in_flight_across_all_streams() {
        let (mut book, now) = (book(true), start());
        let topic = keyed(&["a", "a", "b", "a", "b", "c"]);
        let (s, t) = (book.open_stream(), book.open_stream());
        assert_eq!(
            offsets(&deliver(&mut book, &topic, s, 10, ALL, now)),
            vec![0, 2, 5]
        );
        assert!(
            deliver(&mut book, &topic, t, 10, ALL, now).is_empty(),
            "a and b are held"
        );
        book.ack(&[Target::Offset(0)], now);
        assert_eq!(
            offsets(&deliver(&mut book, &topic, t, 10, ALL, now)),
            vec![1]
        );
        book.ack(&[Target::Offset(2)], now);
        book.ack(&[Target::Offset(1)], now);
        assert_eq!(
            offsets(&deliver(&mut book, &topic, s, 10, ALL, now)),
            vec![3, 4]
        );
    }

    #[test]
    fn a_failed_message_holds_back_only_its_own_key() {
        let (mut book, now) = (book(true), start());
        let topic = keyed(&["a", "b", "a", "b", "b"]);
        let s = book.open_stream();
        assert_eq!(
            offsets(&deliver(&mut book, &topic, s, 10, ALL, now)),
            vec![0, 1]
        );
        let delay = Duration::from_secs(60);
        book.nack(&[Target::Offset(0)], Some(delay), now);
        // b keeps flowing while a waits out its delay.
        book.ack(&[Target::Offset(1)], now);
        assert_eq!(
            offsets(&deliver(&mut book, &topic, s, 10, ALL, now)),
            vec![3]
        );
        book.ack(&[Target::Offset(3)], now);
        assert_eq!(
            offsets(&deliver(&mut book, &topic, s, 10, ALL, now)),
            vec![4]
        );
        book.ack(&[Target::Offset(4)], now);
        // a's next message never overtakes the failed one.
        let due = later(now, delay);
        assert_eq!(
            attempts(&deliver(&mut book, &topic, s, 10, ALL, due)),
            vec![(0, 2)]
        );
        book.ack(&[Target::Offset(0)], due);
        assert_eq!(
            offsets(&deliver(&mut book, &topic, s, 10, ALL, due)),
            vec![2]
        );
    }

    #[test]
    fn messages_without_a_key_are_not_ordered() {
        let (mut book, now) = (book(true), start());
        let topic = keyed(&["", "", "a", "a"]);
        let s = book.open_stream();
        assert_eq!(
            offsets(&deliver(&mut book, &topic, s, 10, ALL, now)),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn a_message_that_waited_behind_its_key_is_handed_out_from_memory() {
        let (mut book, now) = (book(true), start());
        let topic = keyed(&["a", "a", "a"]);
        let s = book.open_stream();
        let first = deliver(&mut book, &topic, s, 10, ALL, now);
        assert!(book.take_bodies(&first).is_empty(), "0 was read, not kept");
        book.ack(&[Target::Offset(0)], now);
        let next = deliver(&mut book, &topic, s, 10, ALL, now);
        assert_eq!(offsets(&next), vec![1]);
        let kept = book.take_bodies(&next);
        assert_eq!(kept, vec![topic[1].clone()], "1 was kept when it queued");
        assert!(book.take_bodies(&next).is_empty(), "and handed out once");
        // A kept message settled before its turn leaves nothing behind.
        book.ack(&[Target::Offset(2)], now);
        assert_eq!(book.keys.body_bytes(), 0);
    }

    /// Messages of `key` at `offsets`, each with a payload of 1 MiB.
    fn large(key: &str, offsets: Range<Offset>) -> Vec<StoredMessage> {
        offsets
            .map(|o| StoredMessage {
                payload: Bytes::from(vec![0; 1 << 20]),
                ..message(o, key)
            })
            .collect()
    }

    /// Keeps the consumers busy: 64 messages in flight, of keys of their
    /// own, at offsets 0..64.
    fn busy() -> Vec<StoredMessage> {
        (0..64).map(|o| message(o, &format!("busy{o}"))).collect()
    }

    #[test]
    fn scanning_stalls_while_consumers_are_busy_and_it_finds_only_held_keys() {
        let (mut book, now) = (book(true), start());
        let mut topic = busy();
        topic.extend(large("a", 64..74));
        let s = book.open_stream();
        // 64 holds a; of the nine behind it three fit in memory. The scan
        // found free keys, so scanning goes on.
        let first = deliver(&mut book, &topic, s, 100, ALL, now);
        assert_eq!(first.len(), 65);
        assert_eq!(book.keys.queued_count, 9);
        topic.extend(large("a", 74..84));
        let (leased, scanned) = turn(&mut book, &topic, s, 100, ALL, now);
        assert!(
            leased.is_empty() && scanned,
            "74..84 were scanned and queued"
        );
        let (_, scanned) = turn(&mut book, &topic, s, 100, ALL, now);
        assert!(!scanned, "nothing left below the head");
        assert!(
            !book.may_scan(84),
            "stalled: the scan found only a held key"
        );
        assert!(!book.has_work(84), "so no stream is woken to scan");
        // A message published since may be for a free key.
        topic.extend(large("b", 84..85));
        assert_eq!(
            offsets(&deliver(&mut book, &topic, s, 100, ALL, now)),
            vec![84]
        );
        // A free key may be found further on, too.
        topic.extend(large("a", 85..95));
        let (leased, scanned) = turn(&mut book, &topic, s, 100, ALL, now);
        assert!(leased.is_empty() && scanned);
        assert!(!book.may_scan(95), "stalled again");
        book.ack(&[Target::Offset(84)], now);
        assert!(book.may_scan(95), "b is free");
        // And consumers with little left to do scan on whatever they find.
        topic.extend(large("a", 95..105));
        let (leased, scanned) = turn(&mut book, &topic, s, 100, ALL, now);
        assert!(leased.is_empty() && scanned);
        assert!(!book.may_scan(105), "stalled again");
        let idle: Vec<Target> = (0..64).map(Target::Offset).collect();
        book.ack(&idle, now);
        assert!(book.may_scan(105), "no longer busy");
    }

    #[test]
    fn a_failing_key_with_a_long_queue_does_not_hide_the_keys_behind_it() {
        let (mut book, now) = (book(true), start());
        let mut topic = large("a", 0..30);
        topic.extend(large("b", 30..31));
        let s = book.open_stream();
        let ten = Budget {
            messages: 10,
            bytes: usize::MAX,
        };
        assert_eq!(
            offsets(&deliver(&mut book, &topic, s, 100, ten, now)),
            vec![0, 30]
        );
    }

    #[test]
    fn acknowledging_a_queued_message_by_offset_takes_it_out_of_line() {
        let (mut book, now) = (book(true), start());
        let topic = keyed(&["a", "a", "a"]);
        let s = book.open_stream();
        deliver(&mut book, &topic, s, 10, ALL, now);
        book.ack(&[Target::Offset(1)], now);
        book.ack(&[Target::Offset(0)], now);
        assert_eq!(
            offsets(&deliver(&mut book, &topic, s, 10, ALL, now)),
            vec![2]
        );
    }
}

#[test]
fn a_seek_back_delivers_afresh_and_forgets_leases_and_counts() {
    let (mut book, topic, now) = (book(false), topic(6), start());
    let s = book.open_stream();
    let first = deliver(&mut book, &topic, s, 10, ALL, now);
    book.ack(
        &[Target::Offset(0), Target::Offset(1), Target::Offset(2)],
        now,
    );
    book.nack(&[Target::Offset(4)], None, now);
    book.take_changes();
    let other = book.open_stream();

    book.seek(1);
    assert_eq!(book.in_flight(), 0, "leases are gone");
    assert_eq!(book.outstanding(s), 0, "and the stream has room again");
    let Changes { acks, records, .. } = book.take_changes();
    assert_eq!(acks, AckState::starting_at(1));
    assert_eq!(records, vec![(4, None)], "the failure record is deleted");
    // Settling a lease from before the seek changes nothing ...
    let old = first.iter().find(|l| l.offset == 3).expect("leased");
    book.ack(&[Target::Lease(old.offset, old.lease)], now);
    assert!(!book.ack_state().is_acked(3));
    let again = deliver(&mut book, &topic, other, 10, ALL, now);
    assert_eq!(
        attempts(&again),
        vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)],
        "from the position on, each afresh, attempts from 1"
    );
    // ... while the new leases settle as ever.
    let new = again.iter().find(|l| l.offset == 3).expect("leased again");
    book.ack(&[Target::Lease(new.offset, new.lease)], now);
    assert!(book.ack_state().is_acked(3));
}

#[test]
fn a_scan_read_before_a_seek_is_dropped_when_it_comes_back() {
    let (mut book, topic, now) = (book(false), topic(4), start());
    let s = book.open_stream();
    let head = 4;
    let claim = book.claim(s, window(10), ALL, head, now, DEADLINE);
    let scan = claim.scan.expect("a scan");
    book.seek(2);
    let scanned = Scanned {
        range: &scan.range,
        messages: &topic,
        examined: scan.range.end,
        epoch: scan.epoch,
        horizon: None,
    };
    assert!(
        book.admit(s, scanned, window(10), ALL, now, DEADLINE)
            .is_empty()
    );
    book.abandon_scan(scan.epoch);
    // The seek's scan is not disturbed by the stale one.
    assert_eq!(
        offsets(&deliver(&mut book, &topic, s, 10, ALL, now)),
        vec![2, 3]
    );
}

/// Claims and admits the whole of `topic` on `stream` with the delay
/// horizon `horizon`; returns what was leased.
fn admit_with_horizon(
    book: &mut LeaseBook,
    topic: &[StoredMessage],
    stream: StreamId,
    horizon: Option<DuePosition>,
    now: Now,
) -> Vec<Leased> {
    let head = topic.last().map_or(0, |m| m.offset + 1);
    let claim = book.claim(stream, window(100), ALL, head, now, DEADLINE);
    let scan = claim.scan.expect("a scan of the topic");
    let scanned = Scanned {
        epoch: book.epoch,
        range: &scan.range,
        messages: topic,
        examined: head,
        horizon,
    };
    let mut leased = claim.leased;
    leased.extend(book.admit(stream, scanned, window(100), ALL, now, DEADLINE));
    leased
}

#[test]
fn a_delayed_message_waits_for_its_time_or_is_passed_over_beyond_the_horizon() {
    let now = start();
    let mut topic = topic(4);
    // 1 is due in 10 s, within the horizon; 2 in an hour, beyond it.
    topic[1].deliver_at = Some(now.wall + Duration::from_secs(10));
    topic[2].deliver_at = Some(now.wall + Duration::from_secs(3600));
    let horizon = Some(DuePosition {
        due: now.wall + Duration::from_secs(30),
        offset: Offset::MAX,
    });
    let mut book = book(false);
    let s = book.open_stream();
    let leased = admit_with_horizon(&mut book, &topic, s, horizon, now);
    assert_eq!(offsets(&leased), [0, 3], "the delayed ones hold no slot");
    let woken = book.next_wakeup().expect("the near one is waited for");
    assert!(woken >= now.instant + Duration::from_secs(10));
    book.ack(&[Target::Offset(0), Target::Offset(3)], now);

    let at_ten = later(now, Duration::from_secs(10));
    let claim = book.claim(s, window(100), ALL, 4, at_ten, DEADLINE);
    assert_eq!(
        attempts(&claim.leased),
        [(1, 1)],
        "a first delivery, on time"
    );
    book.ack(&[Target::Offset(1)], at_ten);

    // The feed hands the far one back when it comes near; the book takes
    // it once, and not a message it holds or settled.
    let near = later(now, Duration::from_secs(3590));
    let fed = [
        DuePosition {
            due: topic[2].deliver_at.expect("delayed"),
            offset: 2,
        },
        DuePosition {
            due: now.wall,
            offset: 1,
        },
    ];
    assert!(book.delayed_due(&fed, near));
    assert!(!book.delayed_due(&fed, near), "taken once");
    let early = book.claim(s, window(100), ALL, 4, near, DEADLINE);
    assert!(early.leased.is_empty(), "not before its time");
    let due = later(now, Duration::from_secs(3600));
    let claim = book.claim(s, window(100), ALL, 4, due, DEADLINE);
    assert_eq!(attempts(&claim.leased), [(2, 1)]);
}

#[test]
fn an_ordered_book_keeps_every_delayed_message_and_its_key_waits() {
    let now = start();
    let mut topic: Vec<StoredMessage> = (0..2).map(|o| message(o, "k")).collect();
    topic[0].deliver_at = Some(now.wall + Duration::from_secs(3600));
    let horizon = Some(DuePosition {
        due: now.wall,
        offset: Offset::MAX,
    });
    let mut book = book(true);
    let s = book.open_stream();
    let leased = admit_with_horizon(&mut book, &topic, s, horizon, now);
    assert!(
        leased.is_empty(),
        "the key waits behind its delayed message"
    );
    let fed = [DuePosition {
        due: topic[0].deliver_at.expect("delayed"),
        offset: 0,
    }];
    assert!(!book.delayed_due(&fed, now), "kept, so never fed");
    let due = later(now, Duration::from_secs(3600));
    let claim = book.claim(s, window(100), ALL, 2, due, DEADLINE);
    assert_eq!(offsets(&claim.leased), [0]);
}
