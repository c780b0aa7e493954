"""Topics on the test broker (Tansu): read from the earliest offset in a new group, with Tansu's
consumer timings, until the test has what it waits for or a deadline passes; created with partitions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Message
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from aerie.proto.envelope import decode_anomaly

READER_SETTINGS: dict[str, str | int | bool] = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    # Tansu: a short session, so a group's next member does not wait for a gone one to expire.
    "session.timeout.ms": 2000,
    "heartbeat.interval.ms": 500,
}


def read_until(bootstrap: str, topic: str, done: Callable[[Message], bool], *, within: float = 30.0) -> bool:
    """Hand each message of ``topic`` (errors skipped), read from the earliest offset in a new group,
    to ``done`` until it returns True; False when ``within`` seconds pass first."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}", **READER_SETTINGS}
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for message in consumer.consume(500, 0.2):
                if message.error() is None and done(message):
                    return True
    finally:
        consumer.close()
    return False


def read_messages(bootstrap: str, topic: str, count: int, *, within: float = 30.0) -> list[Message]:
    """The first ``count`` messages of ``topic``; fails the test at the deadline."""
    got: list[Message] = []

    def done(message: Message) -> bool:
        got.append(message)
        return len(got) == count

    if count:
        assert read_until(bootstrap, topic, done, within=within), f"read {len(got)} of {count} from {topic}"
    return got


def read_anomalies(
    bootstrap: str, topic: str, want: set[str], *, within: float = 30.0
) -> dict[str, list[Message]]:
    """Every message of ``topic`` by the event id of its anomaly, until each id in ``want`` was seen
    (a list: delivery is at least once, every copy is kept); fails the test at the deadline."""
    seen: dict[str, list[Message]] = {}

    def done(message: Message) -> bool:
        value = message.value()
        if isinstance(value, bytes):
            seen.setdefault(decode_anomaly(value).event_id, []).append(message)
        return want <= seen.keys()

    if want:
        found = read_until(bootstrap, topic, done, within=within)
        assert found, f"missing {len(want - seen.keys())} of {len(want)} anomalies in {topic}"
    return seen


def create_topic(bootstrap: str, prefix: str, partitions: int) -> str:
    """A new topic named ``prefix.<random>`` with ``partitions`` partitions."""
    topic = f"{prefix}.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions)]).values():
        future.result(20)
    return topic
