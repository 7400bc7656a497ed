use super::*;

const MAX: Duration = Duration::from_secs(600);

/// A delivery named by its ack_id.
fn id(ack_id: &str) -> Target {
    Target::AckId(ack_id.into())
}

/// A delivery named by its offset (a broker without ack_ids).
fn at(offset: u64) -> Target {
    Target::Offset(offset)
}

/// Records a delivery; returns its serial number and name.
fn receive(ledger: &mut Ledger, epoch: u64, offset: u64, ack_id: &str) -> (u64, Target) {
    let target = Target::new(offset, ack_id.to_owned());
    let serial = ledger.received(epoch, offset, target.clone(), Instant::now());
    (serial, target)
}

/// Queues a settlement made now, nobody waiting for it.
fn settle(ledger: &mut Ledger, offset: u64, serial: u64, target: &Target, how: Settlement) {
    let reply = ledger.settle(offset, serial, target, how, None, Instant::now());
    assert!(reply.is_none());
}

/// The names of queued acks or nacks.
fn names(queued: &[Queued]) -> Vec<Target> {
    queued.iter().map(|q| q.target.clone()).collect()
}

/// The nacks of a round, by delay, as names.
fn nacks(round: &Round) -> Vec<(Duration, Vec<Target>)> {
    round
        .nacks
        .iter()
        .map(|(nack, queued)| (nack.delay, names(queued)))
        .collect()
}

/// The rejects of a round, by error text, as names.
fn rejects(round: &Round) -> Vec<(String, Vec<Target>)> {
    round
        .rejects
        .iter()
        .map(|(error, queued)| (error.clone(), names(queued)))
        .collect()
}

/// A nack after `delay` that says `error`.
fn nack(delay: Duration, error: &str) -> Settlement {
    Settlement::Nack(Nack {
        delay,
        error: error.to_owned(),
    })
}

#[test]
fn a_delivery_is_named_by_its_ack_id_or_else_its_offset() {
    let named = Target::new(7, "a7".to_owned());
    assert_eq!((&named, named.ack_id()), (&id("a7"), "a7"));
    let unnamed = Target::new(7, String::new());
    assert_eq!((&unnamed, unnamed.ack_id()), (&at(7), ""));
}

#[test]
fn acks_and_nacks_are_batched_and_leave_the_lease() {
    let now = Instant::now();
    let mut ledger = Ledger::new(MAX);
    let epoch = ledger.begin_epoch();
    let (a, ta) = receive(&mut ledger, epoch, 10, "");
    let (b, tb) = receive(&mut ledger, epoch, 11, "");
    let (c, tc) = receive(&mut ledger, epoch, 12, "");
    settle(&mut ledger, 10, a, &ta, Settlement::Ack);
    settle(
        &mut ledger,
        11,
        b,
        &tb,
        Settlement::Nack(Nack::after(Duration::ZERO)),
    );
    settle(
        &mut ledger,
        12,
        c,
        &tc,
        Settlement::Nack(Nack::after(Duration::from_secs(5))),
    );
    assert_eq!(ledger.pending(), 3);
    assert_eq!(ledger.outstanding(), 0);
    let round = ledger.take_round(true, now);
    assert_eq!(names(&round.acks), [at(10)]);
    assert_eq!(
        nacks(&round),
        [
            (Duration::ZERO, vec![at(11)]),
            (Duration::from_secs(5), vec![at(12)])
        ]
    );
    assert!(round.extends.is_empty(), "settled leases are not extended");
    assert!(ledger.take_round(false, now).is_empty());
}

#[test]
fn settlements_carry_the_ack_id_and_not_the_offset() {
    let now = Instant::now();
    let mut ledger = Ledger::new(MAX);
    let epoch = ledger.begin_epoch();
    let (a, ta) = receive(&mut ledger, epoch, 10, "ack-10");
    let (b, tb) = receive(&mut ledger, epoch, 11, "ack-11");
    let (c, tc) = receive(&mut ledger, epoch, 12, "ack-12");
    receive(&mut ledger, epoch, 13, "ack-13");
    settle(&mut ledger, 10, a, &ta, Settlement::Ack);
    settle(
        &mut ledger,
        11,
        b,
        &tb,
        Settlement::Nack(Nack::after(Duration::ZERO)),
    );
    settle(&mut ledger, 12, c, &tc, Settlement::Extend);
    let round = ledger.take_round(true, now);
    assert_eq!(names(&round.acks), [id("ack-10")]);
    assert_eq!(nacks(&round), [(Duration::ZERO, vec![id("ack-11")])]);
    assert_eq!(round.extends, [id("ack-12"), id("ack-13")]);
}

#[test]
fn leases_are_let_go_past_the_maximum_extension() {
    let start = Instant::now();
    let mut ledger = Ledger::new(Duration::from_secs(10));
    let epoch = ledger.begin_epoch();
    let one = ledger.received(epoch, 1, id("one"), start);
    ledger.received(epoch, 2, at(2), start + Duration::from_secs(5));
    let round = ledger.take_round(true, start + Duration::from_secs(9));
    assert_eq!(round.extends, [id("one"), at(2)]);
    let late = start + Duration::from_secs(11);
    let round = ledger.take_round(true, late);
    assert_eq!(round.extends, [at(2)], "offset 1 is past its maximum");
    assert_eq!(ledger.outstanding(), 1, "its lease was let go");

    // Neither nacked nor extended any more; its ack still goes.
    for how in [
        Settlement::Extend,
        Settlement::Nack(Nack::after(Duration::ZERO)),
    ] {
        let (reply_tx, _reply_rx) = oneshot::channel();
        let moot = ledger.settle(1, one, &id("one"), how.clone(), Some(reply_tx), late);
        assert!(moot.is_some(), "{how:?} of a lease let go is moot");
    }
    assert_eq!(ledger.pending(), 0);
    let acked = ledger.settle(1, one, &id("one"), Settlement::Ack, None, late);
    assert!(acked.is_none());
    assert_eq!(names(&ledger.take_round(false, late).acks), [id("one")]);
}

#[test]
fn a_lease_past_its_maximum_is_let_go_when_settled_between_ticks() {
    let start = Instant::now();
    let mut ledger = Ledger::new(Duration::from_secs(10));
    let epoch = ledger.begin_epoch();
    let serial = ledger.received(epoch, 1, id("one"), start);
    let late = start + Duration::from_secs(10);
    let how = Settlement::Nack(Nack::after(Duration::ZERO));
    assert!(
        ledger
            .settle(1, serial, &id("one"), how, None, late)
            .is_none()
    );
    assert_eq!(ledger.pending(), 0, "no nack for a lease let go");
    assert_eq!(ledger.outstanding(), 0);
}

#[test]
fn a_queued_nack_whose_lease_was_let_go_is_moot() {
    let start = Instant::now();
    let mut ledger = Ledger::new(Duration::from_secs(10));
    let epoch = ledger.begin_epoch();
    let serial = ledger.received(epoch, 1, id("one"), start);
    let how = Settlement::Nack(Nack::after(Duration::ZERO));
    ledger.settle(1, serial, &id("one"), how, None, start);
    // Sent, failed, queued again; by the retry the lease is past.
    let round = ledger.take_round(false, start);
    ledger.requeue(Round {
        nacks: round.nacks,
        ..Round::default()
    });
    let round = ledger.take_round(false, start + Duration::from_secs(11));
    assert!(round.nacks.is_empty(), "{round:?}");
    assert_eq!(names(&round.moot), [id("one")]);
}

#[test]
fn explicit_extension_only_for_a_held_lease() {
    let now = Instant::now();
    let mut ledger = Ledger::new(MAX);
    let epoch = ledger.begin_epoch();
    let (serial, target) = receive(&mut ledger, epoch, 7, "");
    settle(&mut ledger, 7, serial, &target, Settlement::Extend);
    settle(&mut ledger, 8, serial, &at(8), Settlement::Extend);
    assert_eq!(ledger.take_round(false, now).extends, [at(7)]);
}

#[test]
fn deliveries_of_an_ended_stream_are_acked_but_never_nacked() {
    let now = Instant::now();
    let mut ledger = Ledger::new(MAX);
    let old = ledger.begin_epoch();
    let (a, ta) = receive(&mut ledger, old, 1, "");
    let (b, tb) = receive(&mut ledger, old, 2, "");
    ledger.end_epoch(old);
    assert!(!ledger.is_live(old));
    let new = ledger.begin_epoch();
    assert!(ledger.is_live(new));
    settle(&mut ledger, 1, a, &ta, Settlement::Ack);
    settle(
        &mut ledger,
        2,
        b,
        &tb,
        Settlement::Nack(Nack::after(Duration::ZERO)),
    );
    settle(&mut ledger, 2, b, &tb, Settlement::Extend);
    let round = ledger.take_round(true, now);
    assert_eq!(names(&round.acks), [at(1)]);
    assert!(
        round.nacks.is_empty() && round.extends.is_empty(),
        "{round:?}"
    );
}

#[test]
fn a_nack_queued_before_its_stream_ended_is_moot() {
    let now = Instant::now();
    let mut ledger = Ledger::new(MAX);
    let old = ledger.begin_epoch();
    let (a, ta) = receive(&mut ledger, old, 1, "");
    settle(
        &mut ledger,
        1,
        a,
        &ta,
        Settlement::Nack(Nack::after(Duration::ZERO)),
    );
    ledger.end_epoch(old);
    ledger.begin_epoch();
    let round = ledger.take_round(false, now);
    assert!(round.nacks.is_empty(), "{round:?}");
    assert_eq!(names(&round.moot), [at(1)]);
}

/// After a reconnect the stale delivery of an offset and the fresh one
/// are both held: each is settled under its own ack_id, and only the
/// fresh one's lease is extended.
#[test]
fn a_stale_and_a_fresh_delivery_of_one_offset_each_use_their_own_ack_id() {
    let now = Instant::now();
    let mut ledger = Ledger::new(MAX);
    let old = ledger.begin_epoch();
    let (stale, stale_id) = receive(&mut ledger, old, 5, "old-5");
    ledger.end_epoch(old);
    let new = ledger.begin_epoch();
    let (fresh, fresh_id) = receive(&mut ledger, new, 5, "new-5");

    settle(&mut ledger, 5, stale, &stale_id, Settlement::Extend);
    settle(
        &mut ledger,
        5,
        stale,
        &stale_id,
        Settlement::Nack(Nack::after(Duration::ZERO)),
    );
    let round = ledger.take_round(true, now);
    assert!(
        round.nacks.is_empty(),
        "the stale one holds no lease: {round:?}"
    );
    assert_eq!(round.extends, [id("new-5")]);

    // The work was done: the stale delivery's ack goes out, under its
    // own name, and the fresh lease is still the fresh one's.
    settle(&mut ledger, 5, stale, &stale_id, Settlement::Ack);
    let round = ledger.take_round(true, now);
    assert_eq!(names(&round.acks), [id("old-5")]);
    assert_eq!(round.extends, [id("new-5")]);

    settle(
        &mut ledger,
        5,
        fresh,
        &fresh_id,
        Settlement::Nack(Nack::after(Duration::ZERO)),
    );
    let round = ledger.take_round(true, now);
    assert_eq!(nacks(&round), [(Duration::ZERO, vec![id("new-5")])]);
    assert!(round.extends.is_empty(), "{round:?}");
}

/// A settlement queued by a delivery keeps that delivery's name even
/// when a newer delivery of the offset arrives before it is sent.
#[test]
fn a_queued_nack_keeps_its_ack_id_when_the_offset_comes_again() {
    let now = Instant::now();
    let mut ledger = Ledger::new(MAX);
    let epoch = ledger.begin_epoch();
    let (first, first_id) = receive(&mut ledger, epoch, 3, "first");
    settle(
        &mut ledger,
        3,
        first,
        &first_id,
        Settlement::Nack(Nack::after(Duration::ZERO)),
    );
    receive(&mut ledger, epoch, 3, "second");
    let round = ledger.take_round(true, now);
    assert_eq!(nacks(&round), [(Duration::ZERO, vec![id("first")])]);
    assert_eq!(round.extends, [id("second")]);
}

#[test]
fn an_extension_queued_by_a_superseded_delivery_is_dropped() {
    let now = Instant::now();
    let mut ledger = Ledger::new(MAX);
    let epoch = ledger.begin_epoch();
    let (first, first_id) = receive(&mut ledger, epoch, 3, "first");
    settle(&mut ledger, 3, first, &first_id, Settlement::Extend);
    receive(&mut ledger, epoch, 3, "second");
    assert!(ledger.take_round(false, now).is_empty());
    assert_eq!(ledger.take_round(true, now).extends, [id("second")]);
}

#[test]
fn a_newer_delivery_owns_the_lease() {
    let mut ledger = Ledger::new(MAX);
    let epoch = ledger.begin_epoch();
    let (first, target) = receive(&mut ledger, epoch, 3, "");
    let (second, _) = receive(&mut ledger, epoch, 3, "");
    settle(
        &mut ledger,
        3,
        first,
        &target,
        Settlement::Nack(Nack::after(Duration::ZERO)),
    );
    assert_eq!(ledger.pending(), 0, "the stale delivery does not nack");
    settle(
        &mut ledger,
        3,
        second,
        &target,
        Settlement::Nack(Nack::after(Duration::ZERO)),
    );
    assert_eq!(ledger.pending(), 1);
}

#[test]
fn failed_settlements_are_requeued() {
    let now = Instant::now();
    let mut ledger = Ledger::new(MAX);
    let epoch = ledger.begin_epoch();
    let (serial, held) = receive(&mut ledger, epoch, 9, "held");
    let queued = |target: Target| Queued::new(&target, None, None);
    ledger.requeue(Round {
        acks: vec![queued(at(1)), queued(id("two"))],
        rejects: vec![("bad".to_owned(), vec![queued(id("four"))])],
        nacks: vec![(Nack::after(Duration::ZERO), vec![queued(at(3))])],
        extends: vec![held.clone(), id("gone")],
        moot: Vec::new(),
    });
    let round = ledger.take_round(false, now);
    assert_eq!(names(&round.acks), [at(1), id("two")]);
    assert_eq!(rejects(&round), [("bad".to_owned(), vec![id("four")])]);
    assert_eq!(nacks(&round), [(Duration::ZERO, vec![at(3)])]);
    assert_eq!(round.extends, [held], "only a held lease is extended again");
    assert!(serial > 0);
}

#[test]
fn rejects_are_grouped_by_error_and_leave_the_lease() {
    let now = Instant::now();
    let mut ledger = Ledger::new(MAX);
    let epoch = ledger.begin_epoch();
    let mut reject = |offset, ack_id: &str, error: &str| {
        let (serial, target) = receive(&mut ledger, epoch, offset, ack_id);
        let how = Settlement::Reject(error.to_owned());
        settle(&mut ledger, offset, serial, &target, how);
    };
    reject(1, "r1", "bad json");
    reject(2, "r2", "unknown customer");
    reject(3, "r3", "bad json");
    reject(4, "", "");
    let (acked, acked_id) = receive(&mut ledger, epoch, 5, "a5");
    settle(&mut ledger, 5, acked, &acked_id, Settlement::Ack);
    assert_eq!(ledger.pending(), 5);
    assert_eq!(ledger.outstanding(), 0, "a reject ends the lease");
    let round = ledger.take_round(true, now);
    assert_eq!(
        rejects(&round),
        [
            (String::new(), vec![at(4)]),
            ("bad json".to_owned(), vec![id("r1"), id("r3")]),
            ("unknown customer".to_owned(), vec![id("r2")]),
        ]
    );
    assert_eq!(names(&round.acks), [id("a5")], "acks apart");
    assert!(round.extends.is_empty(), "rejected leases are not extended");
    assert!(ledger.take_round(true, now).is_empty());
}

#[test]
fn nacks_are_grouped_by_delay_and_error() {
    let now = Instant::now();
    let mut ledger = Ledger::new(MAX);
    let epoch = ledger.begin_epoch();
    let later = Duration::from_secs(5);
    for (offset, how) in [
        (1, nack(Duration::ZERO, "timeout")),
        (2, nack(Duration::ZERO, "")),
        (3, nack(later, "timeout")),
        (4, nack(Duration::ZERO, "timeout")),
        (5, nack(Duration::ZERO, "")),
    ] {
        let (serial, target) = receive(&mut ledger, epoch, offset, &format!("n{offset}"));
        settle(&mut ledger, offset, serial, &target, how);
    }
    let round = ledger.take_round(false, now);
    let groups: Vec<(Nack, Vec<Target>)> = round
        .nacks
        .iter()
        .map(|(nack, queued)| (nack.clone(), names(queued)))
        .collect();
    let key = |delay, error: &str| Nack {
        delay,
        error: error.to_owned(),
    };
    assert_eq!(
        groups,
        [
            (key(Duration::ZERO, ""), vec![id("n2"), id("n5")]),
            (key(Duration::ZERO, "timeout"), vec![id("n1"), id("n4")]),
            (key(later, "timeout"), vec![id("n3")]),
        ]
    );
}

/// Like an ack, a reject is terminal: it goes out even when its lease
/// was let go or its stream ended (a stale ack_id is ignored by the
/// broker), and it is never moot.
#[test]
fn a_reject_goes_out_after_its_lease_was_let_go_or_its_stream_ended() {
    let start = Instant::now();
    let mut ledger = Ledger::new(Duration::from_secs(10));
    let old = ledger.begin_epoch();
    let let_go = ledger.received(old, 1, id("let-go"), start);
    let ended = ledger.received(old, 2, id("ended"), start);
    let late = start + Duration::from_secs(11);
    let how = Settlement::Reject("poison".to_owned());
    let moot = ledger.settle(1, let_go, &id("let-go"), how.clone(), None, late);
    assert!(moot.is_none());
    ledger.end_epoch(old);
    ledger.begin_epoch();
    let moot = ledger.settle(2, ended, &id("ended"), how, None, late);
    assert!(moot.is_none());
    let round = ledger.take_round(true, late);
    assert_eq!(
        rejects(&round),
        [("poison".to_owned(), vec![id("let-go"), id("ended")])]
    );
    assert!(round.moot.is_empty(), "{round:?}");
}
