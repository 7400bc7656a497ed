//! The admin service: live figures, listings a page at a time, and deletion
//! of topics and subscriptions with their open streams.

use tidings::v1::{
    DeleteSubscriptionRequest, DeleteTopicRequest, GetTopicRequest, ListSubscriptionsRequest,
};
use tidings_tests::{
    Deliveries, TestBroker, ack, create_subscription, create_topic, expect_code, get_subscription,
    get_topic, offsets, payloads, publish, subscribe_request, subscription_pages, topic_pages,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn topic_reports_next_offset_and_creation_time() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    let created = create_topic(&client, "order.placed").await?;
    assert_eq!(
        (created.name.as_str(), created.next_offset),
        ("order.placed", 0)
    );
    assert!(created.create_time.is_some());
    publish(&client, "order.placed", &["a", "b"]).await?;
    publish(&client, "order.placed", &["c"]).await?;
    let topic = get_topic(&client, "order.placed").await?;
    assert_eq!(topic.next_offset, 3);
    assert_eq!(topic.create_time, created.create_time);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_reports_backlog_in_flight_and_ack_floor() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    let created = create_subscription(&client, "s", "t", 0).await?;
    assert_eq!(created.ack_deadline_seconds, 30, "the default deadline");
    assert_eq!(
        (created.backlog, created.in_flight, created.ack_floor),
        (0, 0, 0)
    );
    assert!(created.create_time.is_some());
    publish(&client, "t", &["0", "1", "2", "3", "4"]).await?;

    let waiting = get_subscription(&client, "s").await?;
    assert_eq!(
        (waiting.backlog, waiting.in_flight, waiting.open_streams),
        (5, 0, 0),
        "{waiting:?}"
    );
    let mut stream = Deliveries::open(&client, subscribe_request("s", "")).await?;
    stream.next_n(5).await?;
    let leased = get_subscription(&client, "s").await?;
    assert_eq!(
        (
            leased.backlog,
            leased.in_flight,
            leased.ack_floor,
            leased.open_streams
        ),
        (5, 5, 0, 1),
        "{leased:?}"
    );

    ack(&client, "s", &[0, 2]).await?;
    let partly = get_subscription(&client, "s").await?;
    assert_eq!(
        (partly.backlog, partly.in_flight, partly.ack_floor),
        (3, 3, 1),
        "{partly:?}"
    );
    ack(&client, "s", &[1]).await?;
    let floor = get_subscription(&client, "s").await?;
    assert_eq!(
        (floor.backlog, floor.in_flight, floor.ack_floor),
        (2, 2, 3),
        "{floor:?}"
    );

    drop(stream);
    let mut reopened = Deliveries::open(&client, subscribe_request("s", "")).await?;
    reopened.next_n(2).await?;
    ack(&client, "s", &[3, 4]).await?;
    let done = get_subscription(&client, "s").await?;
    assert_eq!(
        (done.backlog, done.in_flight, done.ack_floor),
        (0, 0, 5),
        "{done:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_topics_pages_through_every_topic_in_name_order() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    for name in ["delta", "alpha", "echo", "charlie", "bravo"] {
        create_topic(&client, name).await?;
    }
    let pages = topic_pages(&client, 2).await?;
    assert_eq!(
        pages,
        [
            vec!["alpha", "bravo"],
            vec!["charlie", "delta"],
            vec!["echo"]
        ]
    );
    let one_page = topic_pages(&client, 0).await?;
    assert_eq!(one_page, [["alpha", "bravo", "charlie", "delta", "echo"]]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_subscriptions_pages_and_filters_by_topic() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "orders").await?;
    create_topic(&client, "stock").await?;
    for name in ["c-orders", "e-orders", "a-orders", "d-orders", "b-orders"] {
        create_subscription(&client, name, "orders", 0).await?;
    }
    create_subscription(&client, "a-stock", "stock", 0).await?;

    let of_orders = subscription_pages(&client, "orders", 2).await?;
    assert_eq!(
        of_orders,
        [
            vec!["a-orders", "b-orders"],
            vec!["c-orders", "d-orders"],
            vec!["e-orders"]
        ]
    );
    // Pages of every topic: the other topic's subscription sits between.
    let all = subscription_pages(&client, "", 3).await?;
    assert_eq!(
        all,
        [
            vec!["a-orders", "a-stock", "b-orders"],
            vec!["c-orders", "d-orders", "e-orders"]
        ]
    );

    let everything = client
        .admin_service()
        .list_subscriptions(ListSubscriptionsRequest::default())
        .await?
        .into_inner();
    let names: Vec<(&str, &str)> = everything
        .subscriptions
        .iter()
        .map(|s| (s.name.as_str(), s.topic.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("a-orders", "orders"),
            ("a-stock", "stock"),
            ("b-orders", "orders"),
            ("c-orders", "orders"),
            ("d-orders", "orders"),
            ("e-orders", "orders")
        ]
    );
    assert!(everything.next_page_token.is_empty(), "one page");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_topic_ends_its_streams_with_not_found_and_removes_its_subscriptions()
-> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "doomed").await?;
    create_topic(&client, "kept").await?;
    publish(&client, "doomed", &["old"]).await?;
    publish(&client, "kept", &["stays"]).await?;
    create_subscription(&client, "on-kept", "kept", 0).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("on-doomed", "doomed")).await?;
    stream.next().await?;
    create_subscription(&client, "also-on-doomed", "doomed", 0).await?;

    client
        .admin_service()
        .delete_topic(DeleteTopicRequest {
            name: "doomed".into(),
        })
        .await?;
    let status = stream
        .end()
        .await?
        .expect("the stream must end with an error");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("doomed"), "{status:?}");

    let gone = client
        .admin_service()
        .get_topic(GetTopicRequest {
            name: "doomed".into(),
        })
        .await;
    expect_code(gone, Code::NotFound)?;
    for name in ["on-doomed", "also-on-doomed"] {
        let err = get_subscription(&client, name).await.expect_err("deleted");
        let status = err.downcast_ref::<tonic::Status>().expect("a status");
        assert_eq!(status.code(), Code::NotFound, "{name}: {status:?}");
    }
    let left = client
        .admin_service()
        .list_subscriptions(ListSubscriptionsRequest::default())
        .await?
        .into_inner();
    let names: Vec<&str> = left.subscriptions.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["on-kept"]);

    // A new topic of the same name starts empty; the other topic is intact.
    assert_eq!(create_topic(&client, "doomed").await?.next_offset, 0);
    assert_eq!(publish(&client, "doomed", &["new"]).await?, [0]);
    let mut fresh = Deliveries::open(&client, subscribe_request("on-doomed", "doomed")).await?;
    assert_eq!(payloads(&fresh.next_n(1).await?), ["new"]);
    let mut kept = Deliveries::open(&client, subscribe_request("on-kept", "")).await?;
    assert_eq!(payloads(&kept.next_n(1).await?), ["stays"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_subscription_ends_its_streams_and_keeps_the_topic() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let client = broker.client();
    create_topic(&client, "t").await?;
    publish(&client, "t", &["0", "1"]).await?;
    let mut stream = Deliveries::open(&client, subscribe_request("s", "t")).await?;
    stream.next_n(2).await?;
    ack(&client, "s", &[0, 1]).await?;

    client
        .admin_service()
        .delete_subscription(DeleteSubscriptionRequest { name: "s".into() })
        .await?;
    let status = stream
        .end()
        .await?
        .expect("the stream must end with an error");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let err = get_subscription(&client, "s").await.expect_err("deleted");
    let status = err.downcast_ref::<tonic::Status>().expect("a status");
    assert_eq!(status.code(), Code::NotFound);
    let again = client
        .admin_service()
        .delete_subscription(DeleteSubscriptionRequest { name: "s".into() })
        .await;
    expect_code(again, Code::NotFound)?;

    // The topic keeps its messages; a new subscription of the same name
    // starts afresh rather than inheriting the old acknowledgements.
    assert_eq!(get_topic(&client, "t").await?.next_offset, 2);
    let mut reborn = Deliveries::open(&client, subscribe_request("s", "t")).await?;
    let received = reborn.next_n(2).await?;
    assert_eq!(offsets(&received), [0, 1]);
    assert!(received.iter().all(|m| m.delivery_attempt == 1));
    Ok(())
}
