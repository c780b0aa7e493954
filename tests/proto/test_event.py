from __future__ import annotations

import json

import pytest

from aerie.proto.event import (
    DecodeError,
    Priority,
    decode_json,
    format_time,
    normalise_grpc_field,
    parse_priority,
    parse_time,
)

ALERT = {
    "hostname": "node-a",
    "output": "12:00:00.123456789: Warning Shell spawned (user=root proc.name=bash)",
    "output_fields": {"proc.name": "bash", "proc.pid": 4242, "container.privileged": False, "fd.name": None},
    "priority": "Warning",
    "rule": "Terminal shell in container",
    "source": "syscall",
    "tags": ["container", "mitre_execution", "T1059", "maturity_stable"],
    "time": "2024-05-01T12:00:00.123456789Z",
}


def test_decode_json_keeps_types_and_nanoseconds() -> None:
    event = decode_json(json.dumps(ALERT))
    assert event.priority is Priority.WARNING
    assert event.time_ns == 1714564800_123456789
    assert event.output_fields["proc.pid"] == 4242
    assert event.output_fields["container.privileged"] is False
    assert event.output_fields["fd.name"] is None
    assert event.field_str("fd.name") == ""
    assert event.tags[-1] == "maturity_stable"


def test_round_trip_through_falco_json() -> None:
    event = decode_json(json.dumps(ALERT))
    assert decode_json(json.dumps(event.to_falco_json())) == event


def test_unknown_keys_ignored_for_forward_compatibility() -> None:
    event = decode_json(json.dumps(ALERT | {"uuid": "abc", "outputs": ["webhook"]}))
    assert event.uuid == "abc"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid_json"),
        (json.dumps({"rule": "x"}).encode(), "schema"),
        (json.dumps(ALERT | {"priority": "Loud"}).encode(), "bad_priority"),
        (json.dumps(ALERT | {"time": "yesterday"}).encode(), "bad_time"),
        (json.dumps(ALERT | {"time": "2024-13-01T00:00:00Z"}).encode(), "bad_time"),
        (json.dumps(ALERT | {"output_fields": {"a": {"nested": 1}}}).encode(), "schema"),
    ],
)
def test_bad_input_is_a_decode_error_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_json(payload)
    assert info.value.reason == reason


def test_priorities_by_name_and_number() -> None:
    assert parse_priority("Informational") is Priority.INFORMATIONAL
    assert parse_priority("info") is Priority.INFORMATIONAL
    assert parse_priority(0) is Priority.EMERGENCY
    assert Priority.INFORMATIONAL.falco_name == "Informational"
    with pytest.raises(DecodeError):
        parse_priority(8)
    with pytest.raises(DecodeError):
        parse_priority(True)  # a bool is not a priority number


def test_time_offsets_and_formatting() -> None:
    assert parse_time("2024-05-01T14:00:00.5+02:00") == parse_time("2024-05-01T12:00:00.500000000Z")
    assert format_time(1714564800_000000007) == "2024-05-01T12:00:00.000000007Z"


@pytest.mark.parametrize(
    ("wire", "typed"),
    [
        ("bash", "bash"),
        ("4242", 4242),
        ("true", True),
        ("null", None),
        ("1.5", 1.5),
        ('["a","b"]', ["a", "b"]),
        ("[oops", "[oops"),
        ("[{}]", "[{}]"),
        ("-", "-"),
    ],
)
def test_grpc_field_values_normalise_like_json(wire: str, typed: object) -> None:
    assert normalise_grpc_field(wire) == typed


def test_event_id_is_a_stable_digest_independent_of_uuid() -> None:
    first = decode_json(json.dumps(ALERT)).event_id
    assert first == decode_json(json.dumps(ALERT)).event_id
    assert first != decode_json(json.dumps(ALERT | {"hostname": "node-b"})).event_id
    assert len(first) == 32
    assert decode_json(json.dumps(ALERT | {"uuid": "u-1"})).event_id == first


def test_fast_and_slow_time_paths_agree() -> None:
    text = "2024-05-01T12:00:00.123456789Z"
    slow = parse_time(text.replace("T", " "))  # the regex path fills the cache
    assert parse_time(text) == slow == 1714564800_123456789


def test_grpc_field_normalisation_survives_hostile_text() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert normalise_grpc_field(deep) == deep
    assert normalise_grpc_field("884e15561221") == "884e15561221"
