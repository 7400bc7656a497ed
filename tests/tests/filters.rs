//! Subscription filters over gRPC: only matching messages are delivered,
//! the others are settled without delivery; bad filters are refused with
//! the byte where they go wrong; `UpdateSubscription` changes a filter
//! under an open stream; a filter survives a restart.

use prost_types::FieldMask;
use tidings::v1::{
    CreateSubscriptionRequest, GetSubscriptionRequest, NackRequest, PublishMessage, Subscription,
    UpdateSubscriptionRequest,
};
use tidings_tests::{
    Deliveries, TestBroker, create_topic, expect_code, get_subscription, publish_messages,
    subscribe_request, within,
};
use tonic::Code;

fn tagged(payload: &str, attributes: &[(&str, &str)]) -> PublishMessage {
    PublishMessage {
        payload: payload.to_owned().into(),
        attributes: attributes
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect(),
        ..PublishMessage::default()
    }
}

fn filtered(name: &str, topic: &str, filter: &str) -> CreateSubscriptionRequest {
    CreateSubscriptionRequest {
        name: name.into(),
        topic: topic.into(),
        filter: filter.into(),
        ..CreateSubscriptionRequest::default()
    }
}

fn update(name: &str, filter: &str, paths: &[&str]) -> UpdateSubscriptionRequest {
    UpdateSubscriptionRequest {
        subscription: Some(Subscription {
            name: name.into(),
            filter: filter.into(),
            ..Subscription::default()
        }),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|&p| p.to_owned()).collect(),
        }),
    }
}

/// Waits until the subscription's backlog is `backlog`.
async fn backlog_reaches(
    client: &tidings_tests::Client,
    name: &str,
    backlog: u64,
) -> anyhow::Result<()> {
    within(async {
        loop {
            if get_subscription(client, name).await?.backlog == backlog {
                return anyhow::Ok(());
            }
            tokio::task::yield_now().await;
        }
    })
    .await?
}

#[tokio::test(flavor = "multi_thread")]
async fn only_matching_messages_are_delivered_and_the_rest_leave_the_backlog() -> anyhow::Result<()>
{
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    let filter = r#"attributes.region = "eu" AND NOT attributes:test"#;
    let created = client
        .admin_service()
        .create_subscription(filtered("eu", "orders", filter))
        .await?
        .into_inner()
        .subscription
        .expect("the created subscription");
    assert_eq!(created.filter, filter);

    let mut messages = Vec::new();
    let mut expected = Vec::new();
    for n in 0..40 {
        let region = ["eu", "us", "apac"][n % 3];
        let test = n % 4 == 0;
        let payload = format!("{n}");
        let mut attributes = vec![("region", region)];
        if test {
            attributes.push(("test", "yes"));
        }
        if region == "eu" && !test {
            expected.push(payload.clone());
        }
        messages.push(tagged(&payload, &attributes));
    }
    // Unrelated attributes and none at all are turned away too.
    messages.push(tagged("plain", &[]));
    messages.push(tagged("other", &[("Region", "eu")]));
    publish_messages(&client, "orders", messages).await?;
    // The last message matches: once it arrives, everything before it
    // that was going to be delivered has been.
    publish_messages(
        &client,
        "orders",
        vec![tagged("marker", &[("region", "eu")])],
    )
    .await?;
    expected.push("marker".to_owned());

    let mut stream = Deliveries::open(&client, subscribe_request("eu", "")).await?;
    let delivered = stream.next_n(expected.len()).await?;
    let payloads: Vec<String> = delivered
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(
        payloads, expected,
        "the matching messages, in order, and only they"
    );
    let offsets: Vec<u64> = delivered.iter().map(|m| m.offset).collect();
    tidings_tests::ack(&client, "eu", &offsets).await?;
    backlog_reaches(&client, "eu", 0).await?;
    assert_eq!(get_subscription(&client, "eu").await?.ack_floor, 43);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_filter_names_the_byte_and_stores_nothing() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let mut admin = client.admin_service();
    let cases = [
        ("attributes.kind", "at byte 15"),
        (r#"attributes.kind = order"#, "at byte 18"),
        (
            r#"attributes:a AND attributes:b OR attributes:c"#,
            "needs parentheses",
        ),
        (r#"hasPrefix(attributes.a, "p""#, "at byte 27"),
    ];
    for (filter, words) in cases {
        let refused = admin.create_subscription(filtered("s", "t", filter)).await;
        let status = expect_code(refused, Code::InvalidArgument)?;
        assert!(
            status.message().starts_with("filter is not valid") && status.message().contains(words),
            "{filter}: {status:?}"
        );
        let missing = admin
            .get_subscription(GetSubscriptionRequest { name: "s".into() })
            .await;
        expect_code(missing, Code::NotFound)?;
    }
    let long = format!("attributes:{}", "a".repeat(1100));
    let status = expect_code(
        admin.create_subscription(filtered("s", "t", &long)).await,
        Code::InvalidArgument,
    )?;
    assert!(status.message().contains("at most 1024"), "{status:?}");

    // An update with a bad filter changes nothing.
    admin
        .create_subscription(filtered("s", "t", "attributes:a"))
        .await?;
    let refused = admin
        .update_subscription(update("s", "attributes.b =", &["filter"]))
        .await;
    let status = expect_code(refused, Code::InvalidArgument)?;
    assert!(status.message().contains("at byte 14"), "{status:?}");
    assert_eq!(get_subscription(&client, "s").await?.filter, "attributes:a");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn update_masks_name_changeable_fields_only() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let mut admin = client.admin_service();
    admin.create_subscription(filtered("s", "t", "")).await?;

    let cases: [(&[&str], &str); 5] = [
        (&[], "update_mask is empty"),
        (&["topic"], "\"topic\", which is fixed"),
        (&["enable_message_ordering"], "which is fixed"),
        (&["backlog"], "which the broker reports"),
        (&["filter", "colour"], "\"colour\", which is not a field"),
    ];
    for (paths, words) in cases {
        let refused = admin
            .update_subscription(update("s", "attributes:x", paths))
            .await;
        let status = expect_code(refused, Code::InvalidArgument)?;
        assert!(status.message().contains(words), "{paths:?}: {status:?}");
    }
    let no_subscription = UpdateSubscriptionRequest {
        subscription: None,
        update_mask: Some(FieldMask {
            paths: vec!["filter".into()],
        }),
    };
    expect_code(
        admin.update_subscription(no_subscription).await,
        Code::InvalidArgument,
    )?;
    expect_code(
        admin
            .update_subscription(update("nope", "", &["filter"]))
            .await,
        Code::NotFound,
    )?;
    assert_eq!(
        get_subscription(&client, "s").await?.filter,
        "",
        "unchanged"
    );

    // The deadline alone: the filter stays as it is.
    let mut deadline = update("s", "attributes:ignored", &["ack_deadline_seconds"]);
    if let Some(sub) = deadline.subscription.as_mut() {
        sub.ack_deadline_seconds = 45;
    }
    let changed = admin
        .update_subscription(deadline)
        .await?
        .into_inner()
        .subscription
        .expect("the changed subscription");
    assert_eq!(
        (changed.ack_deadline_seconds, changed.filter.as_str()),
        (45, "")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_filter_applies_to_an_open_stream_and_to_redeliveries() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let mut admin = client.admin_service();
    admin
        .create_subscription(filtered("s", "t", r#"attributes.kind = "a""#))
        .await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    publish_messages(
        &client,
        "t",
        vec![
            tagged("a1", &[("kind", "a")]),
            tagged("b1", &[("kind", "b")]),
        ],
    )
    .await?;
    let a1 = stream.next().await?;
    assert_eq!(&a1.payload[..], b"a1");

    let changed = admin
        .update_subscription(update("s", r#"attributes.kind = "b""#, &["filter"]))
        .await?
        .into_inner()
        .subscription
        .expect("the changed subscription");
    assert_eq!(changed.filter, r#"attributes.kind = "b""#);
    publish_messages(
        &client,
        "t",
        vec![
            tagged("a2", &[("kind", "a")]),
            tagged("b2", &[("kind", "b")]),
        ],
    )
    .await?;
    // a1, given back, is judged by the filter as it is now: not again.
    client
        .subscriber_service()
        .nack(NackRequest {
            subscription: "s".into(),
            ack_ids: vec![a1.ack_id.clone()],
            ..NackRequest::default()
        })
        .await?;
    let b2 = stream.next().await?;
    assert_eq!(
        &b2.payload[..],
        b"b2",
        "b1 was settled under the old filter"
    );
    tidings_tests::ack(&client, "s", &[b2.offset]).await?;
    backlog_reaches(&client, "s", 0).await?;
    assert_eq!(stream.buffered(), 0, "a1 and a2 were not delivered");

    // Removing the filter lets everything through again.
    admin
        .update_subscription(update("s", "", &["filter"]))
        .await?;
    publish_messages(&client, "t", vec![tagged("a3", &[("kind", "a")])]).await?;
    let a3 = stream.next().await?;
    assert_eq!(&a3.payload[..], b"a3");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_and_its_changes_survive_a_restart() -> anyhow::Result<()> {
    let mut broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    client
        .admin_service()
        .create_subscription(filtered("s", "t", "attributes:first"))
        .await?;
    client
        .admin_service()
        .update_subscription(update("s", "attributes:wanted", &["filter"]))
        .await?;
    broker.restart().await?;
    let client = broker.client();
    assert_eq!(
        get_subscription(&client, "s").await?.filter,
        "attributes:wanted"
    );
    publish_messages(
        &client,
        "t",
        vec![
            tagged("no", &[("first", "")]),
            tagged("yes", &[("wanted", "")]),
        ],
    )
    .await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    let only = stream.next().await?;
    assert_eq!(&only.payload[..], b"yes");
    tidings_tests::ack(&client, "s", &[only.offset]).await?;
    backlog_reaches(&client, "s", 0).await?;
    Ok(())
}
