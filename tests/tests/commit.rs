//! `Commit`: publishes to several topics and acknowledgements on several
//! subscriptions stored together or not at all. A commit that acknowledges
//! a message already settled is ABORTED and stores nothing; of commits
//! racing for one message exactly one is stored; bad parts are refused with
//! the part named, before anything is written.

use std::collections::BTreeSet;

use anyhow::Context as _;
use futures::StreamExt as _;
use tidings::v1::{
    AckRequest, CommitRequest, CommitResponse, CreateSubscriptionRequest, CreateTopicRequest,
    DeadLetterPolicy, PublishMessage, PublishRequest, RejectRequest, StorageClass,
};
use tidings_client::Message;
use tidings_tests::{
    Client, Deliveries, TestBroker, create_subscription, create_topic, expect_code,
    get_subscription, get_topic, message, offsets, payloads, publish, subscribe_request, within,
};
use tonic::Code;

fn publishing(topic: &str, payloads: &[&str]) -> PublishRequest {
    PublishRequest {
        topic: topic.into(),
        messages: payloads.iter().map(|p| message(*p)).collect(),
    }
}

fn acking(subscription: &str, offsets: &[u64]) -> AckRequest {
    AckRequest {
        subscription: subscription.into(),
        offsets: offsets.to_vec(),
        ack_ids: Vec::new(),
    }
}

async fn commit(
    client: &Client,
    publishes: Vec<PublishRequest>,
    acks: Vec<AckRequest>,
) -> Result<tonic::Response<CommitResponse>, tonic::Status> {
    client
        .publisher_service()
        .commit(CommitRequest { publishes, acks })
        .await
}

/// Every payload a topic holds, read through a fresh subscription.
async fn contents(client: &Client, topic: &str, reader: &str) -> anyhow::Result<Vec<String>> {
    let count = get_topic(client, topic).await?.next_offset;
    let mut stream = Deliveries::open(client, subscribe_request(reader, topic)).await?;
    let count = usize::try_from(count)?;
    Ok(payloads(&stream.next_n(count).await?))
}

/// Topics `orders`, `decisions` and `audit`; subscription `inventory` on
/// `orders`, which holds `order-0` and `order-1`.
async fn orders_and_decisions(client: &Client) -> anyhow::Result<()> {
    for topic in ["orders", "decisions", "audit"] {
        create_topic(client, topic).await?;
    }
    create_subscription(client, "inventory", "orders", 60).await?;
    publish(client, "orders", &["order-0", "order-1"]).await?;
    Ok(())
}

#[tokio::test]
async fn a_commit_publishes_to_two_topics_and_acknowledges_its_input_together() -> anyhow::Result<()>
{
    let broker = TestBroker::start().await?;
    let client = broker.client();
    orders_and_decisions(&client).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("inventory", "orders")).await?;
    let first = stream.next().await?;
    assert_eq!(first.offset, 0);

    // Acknowledged by its ack id, as a consumer holding the delivery does.
    let ack = AckRequest {
        subscription: "inventory".into(),
        offsets: Vec::new(),
        ack_ids: vec![first.ack_id.clone()],
    };
    let response = within(commit(
        &client,
        vec![
            publishing("decisions", &["reserved-0"]),
            publishing("audit", &["a", "b"]),
            publishing("decisions", &["logged-0"]),
        ],
        vec![ack],
    ))
    .await??
    .into_inner();
    let answered: Vec<Vec<u64>> = response
        .publishes
        .iter()
        .map(|p| p.offsets.clone())
        .collect();
    assert_eq!(answered, vec![vec![0], vec![0, 1], vec![1]]);
    assert!(
        response
            .publishes
            .iter()
            .all(|p| p.duplicates.iter().all(|d| !d))
    );

    assert_eq!(
        contents(&client, "decisions", "d").await?,
        ["reserved-0", "logged-0"]
    );
    assert_eq!(contents(&client, "audit", "a").await?, ["a", "b"]);
    assert_eq!(get_subscription(&client, "inventory").await?.backlog, 1);

    // Committing the same input again is refused, and stores nothing.
    let again = commit(
        &client,
        vec![publishing("decisions", &["reserved-0 again"])],
        vec![acking("inventory", &[0])],
    )
    .await;
    let status = expect_code(again, Code::Aborted)?;
    assert!(status.message().contains("message 0"), "{status:?}");
    assert!(status.message().contains("inventory"), "{status:?}");
    assert_eq!(get_topic(&client, "decisions").await?.next_offset, 2);

    // The acknowledgement holds after a restart; the other order is still
    // to be handled.
    drop(stream);
    let mut broker = broker;
    broker.restart().await?;
    let client = broker.client();
    assert_eq!(get_topic(&client, "decisions").await?.next_offset, 2);
    let mut stream = Deliveries::open(&client, subscribe_request("inventory", "orders")).await?;
    assert_eq!(stream.next().await?.offset, 1);
    Ok(())
}

#[tokio::test]
async fn an_acknowledgement_without_a_publish_and_a_publish_without_one_are_commits_too()
-> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    orders_and_decisions(&client).await?;
    // Not leased (no stream opened): allowed, it is unacknowledged.
    let response = commit(&client, Vec::new(), vec![acking("inventory", &[1])]).await?;
    assert!(response.into_inner().publishes.is_empty());
    assert_eq!(get_subscription(&client, "inventory").await?.backlog, 1);
    let response = commit(&client, vec![publishing("audit", &["x"])], Vec::new()).await?;
    assert_eq!(response.into_inner().publishes[0].offsets, [0]);
    let mut stream = Deliveries::open(&client, subscribe_request("inventory", "orders")).await?;
    assert_eq!(
        stream.next().await?.offset,
        0,
        "only offset 1 was acknowledged"
    );
    Ok(())
}

/// The result of the one racer for `offset` whose commit was stored; the
/// others' were ABORTED.
fn the_one_stored(
    offset: u64,
    outcomes: Vec<(
        String,
        Result<tonic::Response<CommitResponse>, tonic::Status>,
    )>,
) -> String {
    let mut stored = Vec::new();
    for (result, outcome) in outcomes {
        match outcome {
            Ok(_) => stored.push(result),
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert_eq!(stored.len(), 1, "offset {offset}: {stored:?} committed");
    stored.remove(0)
}

#[tokio::test]
async fn of_commits_racing_for_one_message_exactly_one_is_stored() -> anyhow::Result<()> {
    const MESSAGES: u64 = 20;
    const RACERS: usize = 4;
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "work").await?;
    create_topic(&client, "results").await?;
    create_subscription(&client, "workers", "work", 60).await?;
    let payloads: Vec<String> = (0..MESSAGES).map(|i| format!("job-{i}")).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&client, "work", &refs).await?;

    let mut winners = BTreeSet::new();
    for offset in 0..MESSAGES {
        // Every racer handled the message (a redelivery, say) and commits
        // its result with the acknowledgement, all at once.
        let racers = (0..RACERS).map(|racer| {
            let client = client.clone();
            async move {
                let result = format!("{offset}-by-{racer}");
                let outcome = commit(
                    &client,
                    vec![publishing("results", &[&result])],
                    vec![acking("workers", &[offset])],
                )
                .await;
                (result, outcome)
            }
        });
        let outcomes = within(futures::future::join_all(racers)).await?;
        winners.insert(the_one_stored(offset, outcomes));
    }
    let results: BTreeSet<String> = contents(&client, "results", "check")
        .await?
        .into_iter()
        .collect();
    assert_eq!(
        results, winners,
        "the topic holds exactly the winners' results"
    );
    assert_eq!(get_subscription(&client, "workers").await?.backlog, 0);
    Ok(())
}

#[tokio::test]
async fn a_commit_to_a_memory_and_a_disk_topic_stores_in_both_or_neither() -> anyhow::Result<()> {
    const MESSAGES: u64 = 10;
    const RACERS: usize = 3;
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "work").await?;
    create_topic(&client, "audit").await?;
    let memory = CreateTopicRequest {
        name: "results".into(),
        storage: StorageClass::Memory.into(),
        ..CreateTopicRequest::default()
    };
    client.admin_service().create_topic(memory).await?;
    create_subscription(&client, "workers", "work", 60).await?;
    let jobs: Vec<String> = (0..MESSAGES).map(|i| format!("job-{i}")).collect();
    publish(
        &client,
        "work",
        &jobs.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await?;

    let (mut winners, mut plain) = (BTreeSet::new(), BTreeSet::new());
    for offset in 0..MESSAGES {
        // Racers commit a result to both topics with the acknowledgement,
        // while a publisher without a commit writes to the memory topic.
        let racers = (0..RACERS).map(|racer| {
            let client = client.clone();
            async move {
                let result = format!("{offset}-by-{racer}");
                let publishes = vec![
                    publishing("results", &[&result]),
                    publishing("audit", &[&result]),
                ];
                let outcome = commit(&client, publishes, vec![acking("workers", &[offset])]).await;
                (result, outcome)
            }
        });
        let alone = format!("plain-{offset}");
        let (outcomes, published) = within(futures::future::join(
            futures::future::join_all(racers),
            publish(&client, "results", &[&alone]),
        ))
        .await?;
        published?;
        plain.insert(alone);
        winners.insert(the_one_stored(offset, outcomes));
    }
    let audit: BTreeSet<String> = contents(&client, "audit", "check")
        .await?
        .into_iter()
        .collect();
    assert_eq!(audit, winners, "the disk topic holds exactly the winners'");
    let results: BTreeSet<String> = contents(&client, "results", "check-results")
        .await?
        .into_iter()
        .collect();
    let expected: BTreeSet<String> = winners.union(&plain).cloned().collect();
    assert_eq!(
        results, expected,
        "the memory topic: the winners' and the plain publishes"
    );
    Ok(())
}

#[tokio::test]
async fn a_commit_with_a_bad_part_is_refused_whole_with_the_part_named() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    orders_and_decisions(&client).await?;
    let good = || publishing("decisions", &["d"]);
    let cases = [
        (
            commit(
                &client,
                vec![good(), publishing("nowhere", &["x"])],
                Vec::new(),
            )
            .await,
            Code::NotFound,
            "publishes[1]",
        ),
        (
            commit(&client, vec![good()], vec![acking("nobody", &[0])]).await,
            Code::NotFound,
            "acks[0]",
        ),
        (
            commit(
                &client,
                vec![good(), good(), publishing("audit", &[])],
                Vec::new(),
            )
            .await,
            Code::InvalidArgument,
            "publishes[2]",
        ),
        (
            commit(&client, vec![good()], vec![acking("inventory", &[0, 7])]).await,
            Code::InvalidArgument,
            "acks[0]",
        ),
        (
            commit(&client, Vec::new(), Vec::new()).await,
            Code::InvalidArgument,
            "at least one",
        ),
    ];
    for (outcome, code, named) in cases {
        let status = expect_code(outcome, code)?;
        assert!(status.message().contains(named), "{named}: {status:?}");
    }
    let reserved = PublishRequest {
        topic: "decisions".into(),
        messages: vec![PublishMessage {
            attributes: [("tidings.source_topic".to_owned(), "forged".to_owned())].into(),
            ..message("d")
        }],
    };
    let status = expect_code(
        commit(&client, vec![reserved], vec![acking("inventory", &[0])]).await,
        Code::InvalidArgument,
    )?;
    assert!(status.message().contains("publishes[0]"), "{status:?}");

    // An ack id names its subscription: one from another is refused.
    create_subscription(&client, "billing", "orders", 60).await?;
    let mut billing = Deliveries::open(&client, subscribe_request("billing", "orders")).await?;
    let foreign = AckRequest {
        subscription: "inventory".into(),
        offsets: Vec::new(),
        ack_ids: vec![billing.next().await?.ack_id],
    };
    let status = expect_code(
        commit(&client, vec![good()], vec![foreign]).await,
        Code::InvalidArgument,
    )?;
    assert!(status.message().contains("acks[0]"), "{status:?}");
    assert!(status.message().contains("inventory"), "{status:?}");

    // Nothing of any refused commit was stored: no decision, and both
    // orders are still to be delivered.
    assert_eq!(get_topic(&client, "decisions").await?.next_offset, 0);
    let mut stream = Deliveries::open(&client, subscribe_request("inventory", "orders")).await?;
    assert_eq!(offsets(&stream.next_n(2).await?), [0, 1]);
    Ok(())
}

#[tokio::test]
async fn a_dead_lettered_message_cannot_be_committed() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    for topic in ["orders", "decisions", "orders.dead"] {
        create_topic(&client, topic).await?;
    }
    client
        .admin_service()
        .create_subscription(CreateSubscriptionRequest {
            name: "inventory".into(),
            topic: "orders".into(),
            dead_letter_policy: Some(DeadLetterPolicy {
                dead_letter_topic: "orders.dead".into(),
                max_delivery_attempts: 5,
            }),
            ..CreateSubscriptionRequest::default()
        })
        .await?;
    publish(&client, "orders", &["order-0"]).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("inventory", "orders")).await?;
    let delivered = stream.next().await?;
    client
        .subscriber_service()
        .reject(RejectRequest {
            subscription: "inventory".into(),
            offsets: vec![delivered.offset],
            error: "unknown SKU".into(),
            ack_ids: Vec::new(),
        })
        .await?;
    let status = expect_code(
        commit(
            &client,
            vec![publishing("decisions", &["reserved"])],
            vec![acking("inventory", &[delivered.offset])],
        )
        .await,
        Code::Aborted,
    )?;
    assert!(status.message().contains("dead-lettered"), "{status:?}");
    assert_eq!(get_topic(&client, "decisions").await?.next_offset, 0);
    Ok(())
}

#[tokio::test]
async fn the_rust_client_commits_a_delivery_with_its_output_and_learns_when_it_was_too_late()
-> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    orders_and_decisions(&client).await?;
    let mut subscriber = client.subscriber("inventory").subscribe().await?;
    let delivery = within(subscriber.next())
        .await?
        .context("the stream ended")??;
    let offset = delivery.offset();
    assert_eq!(delivery.subscription(), "inventory");
    let stored = within(
        client
            .commit()
            .publish("decisions", [Message::new("reserved").with_key("order-0")])
            .publish("audit", ["one", "two"])
            .ack_delivery(delivery)
            .send(),
    )
    .await??;
    let offsets: Vec<Vec<u64>> = stored
        .iter()
        .map(|batch| batch.iter().map(|p| p.offset).collect())
        .collect();
    assert_eq!(offsets, vec![vec![0], vec![0, 1]]);

    // A second consumer that handled the same message is told so.
    let late = client
        .commit()
        .publish("decisions", ["reserved again"])
        .ack("inventory", [offset])
        .send()
        .await;
    let err = late.expect_err("the message was acknowledged by the first commit");
    assert!(err.is_aborted(), "{err:?}");
    assert_eq!(get_topic(&client, "decisions").await?.next_offset, 1);

    // The committed delivery is settled: the next one is the other order.
    let next = within(subscriber.next())
        .await?
        .context("the stream ended")??;
    assert_eq!(next.offset(), 1);
    next.ack();
    subscriber.close().await?;
    Ok(())
}

#[tokio::test]
async fn ids_deduplicate_in_a_commit_as_in_a_publish_without_aborting_it() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    orders_and_decisions(&client).await?;
    let with_id = || PublishRequest {
        topic: "decisions".into(),
        messages: vec![PublishMessage {
            id: "decision-order-0".into(),
            ..message("reserved")
        }],
    };
    let first = commit(&client, vec![with_id()], vec![acking("inventory", &[0])]).await?;
    let first = &first.into_inner().publishes[0];
    assert_eq!(
        (first.offsets.as_slice(), first.duplicates.as_slice()),
        (&[0][..], &[false][..])
    );
    // The same output again, with another input: stored as a duplicate,
    // and the input is acknowledged all the same.
    let again = commit(&client, vec![with_id()], vec![acking("inventory", &[1])]).await?;
    let again = &again.into_inner().publishes[0];
    assert_eq!(
        (again.offsets.as_slice(), again.duplicates.as_slice()),
        (&[0][..], &[true][..])
    );
    assert_eq!(get_topic(&client, "decisions").await?.next_offset, 1);
    assert_eq!(get_subscription(&client, "inventory").await?.backlog, 0);
    Ok(())
}
