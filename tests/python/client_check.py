#!/usr/bin/env python3
"""Checks a Tidings broker from Python, with a client generated from proto/.

Usage: client_check.py ADDR        (for example 127.0.0.1:50051)

Generates the Python code of proto/tidings/v1 with grpc_tools.protoc into a
temporary directory, then publishes (one call at a time and over
PublishStream), subscribes, acknowledges and nacks, commits and calls on a
broker that must be running at ADDR, checking every
answer. Exits 0 and
prints "python client check: ok" when all checks pass; any failed check
raises, which exits non-zero with the reason.

Needs grpcio and grpcio-tools (pip install grpcio-tools).
"""

import importlib
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
TOPIC = "py.orders"
SUBSCRIPTION = "py-inventory"
WAIT_SECONDS = 10


def generate(out_dir):
    """Generates the tidings.v1 modules into out_dir and imports them."""
    protos = sorted(
        str(path.relative_to(PROTO_DIR))
        for path in (PROTO_DIR / "tidings" / "v1").glob("*.proto")
    )
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ],
        check=True,
    )
    sys.path.insert(0, str(out_dir))
    names = ["admin_pb2", "admin_pb2_grpc", "publisher_pb2", "publisher_pb2_grpc",
             "subscriber_pb2", "subscriber_pb2_grpc"]
    return {name: importlib.import_module(f"tidings.v1.{name}") for name in names}


class Stream:
    """A Subscribe call read on a thread, so each wait has a timeout."""

    def __init__(self, call):
        self.call = call
        self.messages = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for response in self.call:
                for message in response.messages:
                    self.messages.put(message)
        except Exception as err:  # the call's end, reported to the reader
            self.messages.put(err)

    def next(self):
        item = self.messages.get(timeout=WAIT_SECONDS)
        if isinstance(item, Exception):
            raise AssertionError(f"the stream ended: {item}")
        return item

    def close(self):
        self.call.cancel()


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


def check_failure_handling(pb, admin, publisher, subscriber):
    """A filtered subscription with a retry policy and a dead-letter topic:
    a poison message nacked with an error moves to the dead-letter topic
    with its provenance, and comes back with Redrive."""
    from google.protobuf import duration_pb2
    from google.protobuf import field_mask_pb2

    admin_pb2, publisher_pb2, subscriber_pb2 = (
        pb["admin_pb2"], pb["publisher_pb2"], pb["subscriber_pb2"])
    resources_pb2 = importlib.import_module("tidings.v1.resources_pb2")
    for name in ("py.payments", "py.payments.dead"):
        admin.CreateTopic(admin_pb2.CreateTopicRequest(name=name))
    backoff = duration_pb2.Duration(nanos=100_000_000)
    created = admin.CreateSubscription(admin_pb2.CreateSubscriptionRequest(
        name="py-charger", topic="py.payments",
        filter='attributes.kind = "charge"',
        retry_policy=resources_pb2.RetryPolicy(minimum_backoff=backoff, maximum_backoff=backoff),
        dead_letter_policy=resources_pb2.DeadLetterPolicy(
            dead_letter_topic="py.payments.dead", max_delivery_attempts=2),
        enable_message_ordering=True)).subscription
    check(created.dead_letter_policy.max_delivery_attempts == 2
          and created.filter == 'attributes.kind = "charge"'
          and created.enable_message_ordering,
          "created a subscription with a filter, ordering, a retry and a dead-letter policy")

    publisher.Publish(publisher_pb2.PublishRequest(topic="py.payments", messages=[
        publisher_pb2.PublishMessage(payload=b"refund", attributes={"kind": "refund"}),
        publisher_pb2.PublishMessage(payload=b"charge", key="pay-1",
                                     attributes={"kind": "charge"}),
    ]))
    stream = Stream(subscriber.Subscribe(
        subscriber_pb2.SubscribeRequest(subscription="py-charger"), timeout=60))
    for attempt in (1, 2):
        message = stream.next()
        check(message.payload == b"charge" and message.delivery_attempt == attempt,
              f"the filter let only the charge through, attempt {attempt}")
        subscriber.Nack(subscriber_pb2.NackRequest(
            subscription="py-charger", ack_ids=[message.ack_id], error="card declined"))
    stream.close()

    dead = subscriber.ReadTopic(subscriber_pb2.ReadTopicRequest(topic="py.payments.dead"))
    check(len(dead.messages) == 1, "the poison message moved to the dead-letter topic")
    attributes = dict(dead.messages[0].attributes)
    check(attributes.get("tidings.dead_letter_reason") == "max_delivery_attempts"
          and attributes.get("tidings.last_error") == "card declined"
          and attributes.get("tidings.source_offset") == "1",
          "the dead-letter copy names its reason, error and source offset")
    figures = admin.GetSubscription(
        admin_pb2.GetSubscriptionRequest(name="py-charger")).subscription
    check((figures.dead_lettered, figures.backlog) == (1, 0),
          "dead_lettered 1 and an empty backlog")

    redriven = admin.Redrive(admin_pb2.RedriveRequest(subscription="py-charger")).redriven
    check(redriven == 1, "Redrive brought one message back")
    admin.UpdateSubscription(admin_pb2.UpdateSubscriptionRequest(
        subscription=resources_pb2.Subscription(name="py-charger", filter=""),
        update_mask=field_mask_pb2.FieldMask(paths=["filter"])))
    stream = Stream(subscriber.Subscribe(
        subscriber_pb2.SubscribeRequest(subscription="py-charger"), timeout=60))
    back = stream.next()
    check(back.offset == 1 and back.delivery_attempt == 1,
          "the redriven message came back as a first attempt")
    subscriber.Ack(subscriber_pb2.AckRequest(subscription="py-charger", ack_ids=[back.ack_id]))
    stream.close()


def check_commit_and_call(pb, admin, publisher, subscriber):
    """Commit publishes and acknowledges in one step, and refuses to
    acknowledge twice; Call gets the Reply a responder sends."""
    import grpc
    from google.protobuf import duration_pb2

    admin_pb2, publisher_pb2, subscriber_pb2 = (
        pb["admin_pb2"], pb["publisher_pb2"], pb["subscriber_pb2"])
    for name in ("py.work", "py.results"):
        admin.CreateTopic(admin_pb2.CreateTopicRequest(name=name))
    admin.CreateSubscription(admin_pb2.CreateSubscriptionRequest(
        name="py-workers", topic="py.work"))
    publisher.Publish(publisher_pb2.PublishRequest(
        topic="py.work", messages=[publisher_pb2.PublishMessage(payload=b"job")]))
    commit = publisher_pb2.CommitRequest(
        publishes=[publisher_pb2.PublishRequest(
            topic="py.results", messages=[publisher_pb2.PublishMessage(payload=b"done")])],
        acks=[subscriber_pb2.AckRequest(subscription="py-workers", offsets=[0])])
    committed = publisher.Commit(commit)
    check(list(committed.publishes[0].offsets) == [0], "Commit published the result")
    try:
        publisher.Commit(commit)
        raise AssertionError("a second Commit of the same input succeeded")
    except grpc.RpcError as err:
        check(err.code() == grpc.StatusCode.ABORTED, "a second Commit of the input is ABORTED")

    # A responder on a thread answers the one request it gets.
    admin.CreateSubscription(admin_pb2.CreateSubscriptionRequest(
        name="py-answerers", topic="py.work"))
    requests = Stream(subscriber.Subscribe(
        subscriber_pb2.SubscribeRequest(subscription="py-answerers"), timeout=60))
    requests.next()  # the job published above

    def answer():
        request = requests.next()
        publisher.Reply(publisher_pb2.ReplyRequest(
            reply_to=request.attributes["tidings.reply_to"],
            message=publisher_pb2.PublishMessage(payload=b"42")))

    responder = threading.Thread(target=answer, daemon=True)
    responder.start()
    answered = publisher.Call(publisher_pb2.CallRequest(
        topic="py.work", message=publisher_pb2.PublishMessage(payload=b"how many?"),
        timeout=duration_pb2.Duration(seconds=30)))
    responder.join(timeout=WAIT_SECONDS)
    check(answered.reply.payload == b"42" and answered.offset == 1,
          "Call got the responder's Reply and the request's offset")
    requests.close()


def check_publish_stream(pb, admin, publisher, subscriber):
    """PublishStream: one message per request on one call, answered in
    request order; a request that fails is answered in its place and the
    stream goes on."""
    import grpc

    admin_pb2, publisher_pb2, subscriber_pb2 = (
        pb["admin_pb2"], pb["publisher_pb2"], pb["subscriber_pb2"])
    admin.CreateTopic(admin_pb2.CreateTopicRequest(name="py.events"))
    bad_index = 50

    def requests():
        for i in range(100):
            topic = "py.missing" if i == bad_index else "py.events"
            yield publisher_pb2.PublishRequest(topic=topic, messages=[
                publisher_pb2.PublishMessage(payload=f"event {i}".encode())])

    answers = list(publisher.PublishStream(requests(), timeout=60))
    check(len(answers) == 100, "PublishStream answered every request")
    failed = answers[bad_index]
    check(failed.error_code == grpc.StatusCode.NOT_FOUND.value[0]
          and "py.missing" in failed.error_message and not failed.offsets,
          "the request to a missing topic was answered NOT_FOUND in its place")
    good = [answer for i, answer in enumerate(answers) if i != bad_index]
    check(all(answer.error_code == 0 for answer in good)
          and [list(answer.offsets) for answer in good] == [[i] for i in range(99)],
          "the other requests were stored in request order, at offsets 0 to 98")
    stored = subscriber.ReadTopic(subscriber_pb2.ReadTopicRequest(
        topic="py.events", max_messages=1000)).messages
    check([message.payload for message in stored]
          == [f"event {i}".encode() for i in range(100) if i != bad_index],
          "the stored messages are the requests' in order")


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    addr = sys.argv[1]
    import grpc

    with tempfile.TemporaryDirectory(prefix="tidings-py-") as out_dir:
        pb = generate(Path(out_dir))
        admin_pb2, publisher_pb2, subscriber_pb2 = (
            pb["admin_pb2"], pb["publisher_pb2"], pb["subscriber_pb2"])
        with grpc.insecure_channel(addr) as channel:
            grpc.channel_ready_future(channel).result(timeout=WAIT_SECONDS)
            admin = pb["admin_pb2_grpc"].AdminServiceStub(channel)
            publisher = pb["publisher_pb2_grpc"].PublisherServiceStub(channel)
            subscriber = pb["subscriber_pb2_grpc"].SubscriberServiceStub(channel)

            topic = admin.CreateTopic(admin_pb2.CreateTopicRequest(name=TOPIC)).topic
            check(topic.name == TOPIC and topic.next_offset == 0, "created topic py.orders")

            published = publisher.Publish(publisher_pb2.PublishRequest(
                topic=TOPIC,
                messages=[
                    publisher_pb2.PublishMessage(
                        payload=b'{"order_id": 7}', key="order-7",
                        attributes={"source": "python"}),
                    publisher_pb2.PublishMessage(payload=b'{"order_id": 8}', key="order-8"),
                ]))
            check(list(published.offsets) == [0, 1], "published at offsets 0 and 1")

            stream = Stream(subscriber.Subscribe(
                subscriber_pb2.SubscribeRequest(subscription=SUBSCRIPTION, topic=TOPIC),
                timeout=60))
            first, second = stream.next(), stream.next()
            check([first.offset, second.offset] == [0, 1], "received offsets 0 and 1 in order")
            check(first.payload == b'{"order_id": 7}' and first.key == "order-7",
                  "payload and key arrived unchanged")
            check(dict(first.attributes) == {"source": "python"}, "attributes arrived")
            check(first.delivery_attempt == 1 and second.delivery_attempt == 1,
                  "first deliveries have delivery_attempt 1")
            check(first.publish_time.seconds > 0, "publish_time is set")

            subscriber.Ack(subscriber_pb2.AckRequest(subscription=SUBSCRIPTION, offsets=[0]))
            subscriber.Nack(subscriber_pb2.NackRequest(subscription=SUBSCRIPTION, offsets=[1]))
            again = stream.next()
            check(again.offset == 1 and again.delivery_attempt == 2,
                  "nacked message came back with delivery_attempt 2")
            subscriber.Ack(subscriber_pb2.AckRequest(subscription=SUBSCRIPTION, offsets=[1]))

            figures = admin.GetSubscription(
                admin_pb2.GetSubscriptionRequest(name=SUBSCRIPTION)).subscription
            check((figures.backlog, figures.in_flight, figures.ack_floor) == (0, 0, 2),
                  "backlog 0, in_flight 0 and ack_floor 2 after acking both")
            stream.close()

            check_failure_handling(pb, admin, publisher, subscriber)
            check_commit_and_call(pb, admin, publisher, subscriber)
            check_publish_stream(pb, admin, publisher, subscriber)

            try:
                admin.GetTopic(admin_pb2.GetTopicRequest(name="missing"))
                raise AssertionError("GetTopic of a missing topic succeeded")
            except grpc.RpcError as err:
                check(err.code() == grpc.StatusCode.NOT_FOUND and "missing" in err.details(),
                      "a missing topic is NOT_FOUND, named in the message")

    print("python client check: ok")


if __name__ == "__main__":
    main()
