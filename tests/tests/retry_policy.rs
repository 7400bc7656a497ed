//! A subscription's retry policy over gRPC: failed deliveries wait a
//! backoff that doubles with each failure, without holding back other
//! messages; the policy is checked, reported, changed and kept across a
//! restart. Times are asserted as lower bounds only.

use std::time::{Duration, Instant};

use prost_types::FieldMask;
use tidings::v1::{
    CreateSubscriptionRequest, GetSubscriptionRequest, NackRequest, RetryPolicy, Subscription,
    UpdateSubscriptionRequest,
};
use tidings_tests::{
    Deliveries, TestBroker, create_topic, expect_code, get_subscription, publish, subscribe_request,
};
use tonic::Code;

fn seconds(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

fn policy(
    minimum: Option<prost_types::Duration>,
    maximum: Option<prost_types::Duration>,
) -> RetryPolicy {
    RetryPolicy {
        minimum_backoff: minimum,
        maximum_backoff: maximum,
    }
}

fn with_policy(
    name: &str,
    ack_deadline_seconds: u32,
    retry: RetryPolicy,
) -> CreateSubscriptionRequest {
    CreateSubscriptionRequest {
        name: name.into(),
        topic: "t".into(),
        ack_deadline_seconds,
        retry_policy: Some(retry),
        ..CreateSubscriptionRequest::default()
    }
}

async fn nack(client: &tidings_tests::Client, ack_id: &str) -> anyhow::Result<()> {
    client
        .subscriber_service()
        .nack(NackRequest {
            subscription: "s".into(),
            ack_ids: vec![ack_id.to_owned()],
            ..NackRequest::default()
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nacked_messages_wait_a_doubling_backoff_while_others_flow() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let minimum = Duration::from_secs(1);
    client
        .admin_service()
        .create_subscription(with_policy("s", 60, policy(seconds(1, 0), seconds(10, 0))))
        .await?;
    publish(&client, "t", &["poison"]).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;

    let first = stream.next().await?;
    assert_eq!(
        (&first.payload[..], first.delivery_attempt),
        (&b"poison"[..], 1)
    );
    let nacked = Instant::now();
    nack(&client, &first.ack_id).await?;
    // Published after the nack, delivered while the poison waits.
    publish(&client, "t", &["fine"]).await?;
    let fine = stream.next().await?;
    assert_eq!(
        &fine.payload[..],
        b"fine",
        "nothing waits behind the poison"
    );
    tidings_tests::ack(&client, "s", &[fine.offset]).await?;

    let second = stream.next().await?;
    assert_eq!(
        (&second.payload[..], second.delivery_attempt),
        (&b"poison"[..], 2)
    );
    let waited = nacked.elapsed();
    assert!(waited >= minimum, "came back after {waited:?}");
    let nacked = Instant::now();
    nack(&client, &second.ack_id).await?;
    let third = stream.next().await?;
    assert_eq!(third.delivery_attempt, 3);
    let waited = nacked.elapsed();
    assert!(waited >= 2 * minimum, "the second wait doubles: {waited:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_waits_its_backoff_too() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    client
        .admin_service()
        .create_subscription(with_policy("s", 1, policy(seconds(1, 0), None)))
        .await?;
    publish(&client, "t", &["slow"]).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    let first = stream.next().await?;
    let received = Instant::now();
    let again = stream.next().await?;
    assert_eq!(again.delivery_attempt, 2);
    let waited = received.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "the 1 s deadline, then the 1 s backoff: {waited:?}"
    );
    assert_eq!(again.offset, first.offset);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_policies_are_refused_naming_the_field_and_nothing_is_stored() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let mut admin = client.admin_service();
    let cases = [
        (
            policy(seconds(20, 0), seconds(10, 0)),
            "retry_policy.minimum_backoff (20s) is above",
        ),
        (
            policy(seconds(1, 0), seconds(601, 0)),
            "retry_policy.maximum_backoff must be between",
        ),
        (
            policy(seconds(700, 0), None),
            "retry_policy.minimum_backoff must be between",
        ),
        (
            policy(seconds(-1, 0), None),
            "retry_policy.minimum_backoff must be a duration",
        ),
        (
            policy(None, seconds(0, -5)),
            "retry_policy.maximum_backoff must be a duration",
        ),
    ];
    for (retry, words) in cases {
        let refused = admin.create_subscription(with_policy("s", 0, retry)).await;
        let status = expect_code(refused, Code::InvalidArgument)?;
        assert!(status.message().contains(words), "{retry:?}: {status:?}");
        let missing = admin
            .get_subscription(GetSubscriptionRequest { name: "s".into() })
            .await;
        expect_code(missing, Code::NotFound)?;
    }
    // The edges are fine: zero, and 600 s.
    admin
        .create_subscription(with_policy("s", 0, policy(seconds(0, 0), seconds(600, 0))))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_is_reported_changed_removed_and_kept_across_a_restart() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let mut admin = client.admin_service();
    // Unset fields take Pub/Sub's defaults: 10 s and 600 s.
    let created = admin
        .create_subscription(with_policy("s", 0, RetryPolicy::default()))
        .await?
        .into_inner()
        .subscription
        .and_then(|s| s.retry_policy);
    assert_eq!(created, Some(policy(seconds(10, 0), seconds(600, 0))));

    let update = |retry: Option<RetryPolicy>| UpdateSubscriptionRequest {
        subscription: Some(Subscription {
            name: "s".into(),
            retry_policy: retry,
            ..Subscription::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["retry_policy".into()],
        }),
    };
    let changed = policy(seconds(0, 500_000_000), seconds(30, 0));
    admin.update_subscription(update(Some(changed))).await?;
    assert_eq!(
        get_subscription(&client, "s").await?.retry_policy,
        Some(changed)
    );
    let refused = admin
        .update_subscription(update(Some(policy(seconds(5, 0), seconds(1, 0)))))
        .await;
    expect_code(refused, Code::InvalidArgument)?;

    broker.restart().await?;
    let client = broker.client();
    assert_eq!(
        get_subscription(&client, "s").await?.retry_policy,
        Some(changed),
        "kept across a restart"
    );
    client
        .admin_service()
        .update_subscription(update(None))
        .await?;
    assert_eq!(get_subscription(&client, "s").await?.retry_policy, None);
    Ok(())
}
