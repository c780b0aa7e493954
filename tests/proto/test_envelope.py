from __future__ import annotations

import json

import msgspec
import pytest

from aerie.proto.envelope import (
    HEADER_SCHEMA,
    HEADER_TRACEPARENT,
    Anomaly,
    EnvelopeError,
    TraceContext,
    decode_anomaly,
    encode_anomaly,
)
from aerie.proto.event import FalcoEvent, Priority

EVENT = FalcoEvent(
    time_ns=1_714_564_800_123_456_789,
    priority=Priority.NOTICE,
    rule="aerie: process spawned",
    output="bash spawned",
    hostname="node-a",
    output_fields={"container.id": "3f2a9c1b7d4e", "proc.name": "bash", "proc.pid": 4242},
)


def _anomaly(**changes: object) -> Anomaly:
    base = Anomaly(
        event_id=EVENT.event_id,
        traceparent=TraceContext.new().traceparent,
        node="node-a",
        model_version="20261121T000000Z-abc",
        feature_spec_hash="f" * 64,
        score=0.71,
        threshold=0.59,
        features=[0.5] * 17,
        detected_at_ns=1_714_564_800_200_000_000,
        event=EVENT,
    )
    return msgspec.structs.replace(base, **changes)


def test_round_trip_with_key_and_headers() -> None:
    anomaly = _anomaly()
    assert decode_anomaly(encode_anomaly(anomaly)) == anomaly
    assert anomaly.partition_key == b"node-a/3f2a9c1b7d4e"
    headers = dict(anomaly.headers())
    assert headers[HEADER_SCHEMA] == b"1"
    assert TraceContext.parse(headers[HEADER_TRACEPARENT]) == anomaly.trace


def test_host_events_key_by_node() -> None:
    host_event = msgspec.structs.replace(EVENT, output_fields={})
    assert _anomaly(event=host_event).partition_key == b"node-a/host"


def test_newer_writers_fields_are_ignored() -> None:
    data = json.loads(encode_anomaly(_anomaly()))
    data["added_by_a_newer_edge"] = {"x": 1}
    assert decode_anomaly(json.dumps(data).encode()).score == 0.71


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{oops", "invalid_json"),
        (b'{"event_id": "x"}', "schema"),
        (encode_anomaly(_anomaly(schema_version=2)), "unsupported_version"),
        (encode_anomaly(_anomaly(traceparent="00-" + "0" * 32 + "-" + "1" * 16 + "-01")), "bad_traceparent"),
        (encode_anomaly(_anomaly(traceparent="not a trace")), "bad_traceparent"),
    ],
)
def test_bad_values_are_envelope_errors_with_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_anomaly(data)
    assert info.value.reason == reason


def test_child_spans_keep_the_trace() -> None:
    root = TraceContext.new()
    child = root.child()
    assert child.trace_id == root.trace_id
    assert child.span_id != root.span_id
    assert TraceContext.parse(child.traceparent) == child
    assert not TraceContext.parse("00-" + "a" * 32 + "-" + "b" * 16 + "-00").sampled
