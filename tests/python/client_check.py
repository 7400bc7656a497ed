#!/usr/bin/env python3
"""Checks a Tidings broker from Python, with a client generated from proto/.

Usage: client_check.py ADDR        (for example 127.0.0.1:50051)

Generates the Python code of proto/tidings/v1 with grpc_tools.protoc into a
temporary directory, then publishes, subscribes, acknowledges and nacks on a
broker that must be running at ADDR, checking every answer. Exits 0 and
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

            try:
                admin.GetTopic(admin_pb2.GetTopicRequest(name="missing"))
                raise AssertionError("GetTopic of a missing topic succeeded")
            except grpc.RpcError as err:
                check(err.code() == grpc.StatusCode.NOT_FOUND and "missing" in err.details(),
                      "a missing topic is NOT_FOUND, named in the message")

    print("python client check: ok")


if __name__ == "__main__":
    main()
