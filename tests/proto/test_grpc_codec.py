"""gRPC response ⇄ FalcoEvent: Falco's encoding, round trips, and fuzzing of the decoder."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TypeVar, cast

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aerie.proto.event import DecodeError, FalcoEvent, Priority, decode_json
from aerie.proto.falco import outputs_pb2, schema_pb2
from aerie.proto.grpc_codec import (
    DECODE_REASONS,
    TEXT_FIELDS,
    decode_response,
    decode_response_bytes,
    encode_response,
    encode_response_bytes,
)

ALERT = {
    "hostname": "node-a",
    "output": "12:00:00.123456789: Warning Shell spawned (user=root proc.name=bash)",
    "output_fields": {
        "proc.name": "bash",
        "proc.pid": 4242,
        "proc.vpid": -1,
        "evt.latency": 0.25,
        "container.privileged": False,
        "fd.name": None,
        "k8s.ns.name": "payments",
        "proc.cmdline": "bash -c 'échec'",
    },
    "priority": "Warning",
    "rule": "Terminal shell in container",
    "source": "syscall",
    "tags": ["container", "mitre_execution", "T1059"],
    "time": "2024-05-01T12:00:00.123456789Z",
}


def _response(**overrides: object) -> outputs_pb2.response:
    """ALERT as Falco sends it, with fields replaced (``output_fields`` replaces the whole map)."""
    msg = outputs_pb2.response()
    msg.CopyFrom(encode_response(decode_json(json.dumps(ALERT))))
    for name, value in overrides.items():
        if name == "output_fields":
            msg.output_fields.clear()
            msg.output_fields.update(cast(dict[str, str], value))
        else:
            setattr(msg, name, value)
    return msg


def test_encode_fills_fields_like_falco() -> None:
    msg = encode_response(decode_json(json.dumps(ALERT)))
    assert msg.time.seconds == 1714564800
    assert msg.time.nanos == 123456789
    assert msg.priority == schema_pb2.priority.Value("WARNING")
    assert msg.source == "syscall"
    assert msg.source_deprecated == schema_pb2.source.Value("SYSCALL")
    assert list(msg.tags) == ["container", "mitre_execution", "T1059"]
    # Non-strings JSON-encoded with nlohmann dump()'s spelling; strings untouched (UTF-8 kept).
    assert dict(msg.output_fields) == {
        "proc.name": "bash",
        "proc.pid": "4242",
        "proc.vpid": "-1",
        "evt.latency": "0.25",
        "container.privileged": "false",
        "fd.name": "null",
        "k8s.ns.name": "payments",
        "proc.cmdline": "bash -c 'échec'",
    }


def test_plugin_sources_map_to_plugin_enum_and_lists_are_json() -> None:
    event = FalcoEvent(
        time_ns=1,
        priority=Priority.NOTICE,
        rule="r",
        source="k8s_audit",
        output_fields={"ka.req.pod.containers.image": ["nginx", "é"]},
    )
    assert encode_response(event).source_deprecated == schema_pb2.source.Value("K8S_AUDIT")
    assert encode_response(event).output_fields["ka.req.pod.containers.image"] == '["nginx","é"]'
    cloudtrail = FalcoEvent(time_ns=1, priority=Priority.NOTICE, rule="r", source="aws_cloudtrail")
    assert encode_response(cloudtrail).source_deprecated == schema_pb2.source.Value("PLUGIN")


def test_round_trip_through_wire_bytes() -> None:
    event = decode_json(json.dumps(ALERT))
    assert decode_response_bytes(encode_response_bytes(event)) == event


def test_legacy_falco_without_source_string_uses_enum_name() -> None:
    msg = _response(source="", source_deprecated=schema_pb2.source.Value("K8S_AUDIT"))
    assert decode_response(msg).source == "k8s_audit"


def test_time_before_epoch_is_kept() -> None:
    msg = _response()
    msg.time.CopyFrom(Timestamp(seconds=-2, nanos=500_000_000))
    assert decode_response(msg).time_ns == -1_500_000_000


def test_encode_refuses_time_outside_timestamp_range() -> None:
    event = FalcoEvent(time_ns=10**30, priority=Priority.DEBUG, rule="r")
    with pytest.raises(ValueError, match="Timestamp"):
        encode_response(event)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"priority": 8}, "bad_priority"),
        ({"priority": -1}, "bad_priority"),
        ({"priority": 2**31 - 1}, "bad_priority"),
        ({"rule": ""}, "schema"),
        ({"source": "", "source_deprecated": 99}, "schema"),
    ],
)
def test_bad_fields_are_refused_with_reason(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_response(_response(**overrides))
    assert info.value.reason == reason


def test_missing_or_out_of_range_time_is_refused() -> None:
    msg = _response()
    msg.ClearField("time")
    with pytest.raises(DecodeError, match="schema"):
        decode_response(msg)
    for seconds, nanos in ((0, 1_000_000_000), (0, -1), (253_402_300_800, 0), (-62_135_596_801, 0)):
        msg = _response()
        msg.time.CopyFrom(Timestamp(seconds=seconds, nanos=nanos))
        with pytest.raises(DecodeError) as info:
            decode_response(msg)
        assert info.value.reason == "bad_time"


@pytest.mark.parametrize("data", [b"\xff", b"\x0a\x05ab", b"\x22\x02\xff\xfe", b"\x08" + b"\xff" * 11])
def test_invalid_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_response_bytes(data)
    assert info.value.reason == "invalid_protobuf"


def test_string_fields_that_look_numeric_stay_text() -> None:
    """Identities must survive gRPC as Falco's JSON output carries them: as text."""
    fields = {
        "container.id": "991283509e13",
        "container.image.tag": "1.20",
        "proc.name": "123",
        "proc.aname[2]": "007",
        "k8s.pod.name": "12345",
        "fd.name": "null",  # missing: null in Falco's JSON too
        "proc.pid": "4242",  # an integer field: typed back
        "custom.plugin.field": "1.20",  # unknown: the normaliser's rule applies
    }
    event = decode_response(_response(output_fields=fields))
    assert event.output_fields == fields | {"proc.pid": 4242, "custom.plugin.field": 1.2, "fd.name": None}
    assert {"container.id", "container.image.tag", "proc.name", "k8s.pod.name"} <= TEXT_FIELDS


def test_deeply_nested_field_text_stays_text() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    event = decode_response(_response(output_fields={"x": deep, "n": "[1,[2]]"}))
    assert event.output_fields == {"x": deep, "n": "[1,[2]]"}


T = TypeVar("T")

# --- fuzzing -------------------------------------------------------------------------------------

# Thousands of cases each; the structured ones cost more to generate than to decode.
_FUZZ = settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_FUZZ_STRUCTURED = settings(_FUZZ, max_examples=1000)


def _check(decode: Callable[[T], FalcoEvent], arg: T) -> None:
    """Either a FalcoEvent or a DecodeError with a known reason; nothing else may escape."""
    outcome: FalcoEvent | DecodeError
    try:
        outcome = decode(arg)
    except DecodeError as exc:
        outcome = exc
    if isinstance(outcome, DecodeError):
        assert outcome.reason in DECODE_REASONS, outcome.reason
        assert outcome.detail
    else:
        assert isinstance(outcome, FalcoEvent)
        assert outcome.rule


@_FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check(decode_response_bytes, data)


@_FUZZ
@given(
    base=st.sampled_from([b"", encode_response_bytes(decode_json(json.dumps(ALERT)))]),
    cut=st.integers(min_value=0, max_value=2000),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
)
def test_fuzz_mutated_valid_messages(base: bytes, cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(base[:cut] if cut < len(base) else base)
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    _check(decode_response_bytes, bytes(data))


_JSONISH = st.one_of(
    st.text(max_size=40),
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["true", "false", "null", "[]", "[1,2]", '["a",null]', "[{}]", "[[1]]", "[", "1e999"]),
)


@st.composite
def _responses(draw: st.DrawFn) -> outputs_pb2.response:
    int32, int64 = st.integers(-(2**31), 2**31 - 1), st.integers(-(2**63), 2**63 - 1)
    msg = outputs_pb2.response(
        rule=draw(st.text(max_size=30)),
        source=draw(st.text(max_size=15)),
        tags=draw(st.lists(st.text(max_size=10), max_size=5)),
        output_fields=draw(st.dictionaries(st.text(max_size=20), _JSONISH, max_size=8)),
    )
    # Open proto3 enums: any int32 can arrive on the wire.
    msg.priority = draw(int32)  # type: ignore[assignment]
    msg.source_deprecated = draw(int32)  # type: ignore[assignment]
    if draw(st.booleans()):
        msg.time.seconds, msg.time.nanos = draw(int64), draw(int32)
    return msg


@_FUZZ_STRUCTURED
@given(_responses())
def test_fuzz_random_field_contents(msg: outputs_pb2.response) -> None:
    _check(decode_response, msg)
    # The same message through the wire, as the gRPC input sees it.
    _check(decode_response_bytes, msg.SerializeToString())


# Strings that would read back as JSON scalars or scalar lists cannot survive the wire as text.
_LOOKS_TYPED = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\Z|true\Z|false\Z|null\Z|\[.*\]\Z", re.DOTALL)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20).filter(lambda s: not _LOOKS_TYPED.match(s)),
)
_value = st.one_of(
    _scalar, st.lists(st.one_of(st.none(), st.booleans(), st.integers(), st.text()), max_size=4)
)
# Falco never sends a non-string in a string field; those keys get text (below) only.
_untyped_key = st.text(max_size=20).filter(lambda k: k.partition("[")[0] not in TEXT_FIELDS)


_events = st.builds(
    FalcoEvent,
    time_ns=st.integers(-62_135_596_800 * 10**9, 253_402_300_799 * 10**9 + 999_999_999),
    priority=st.sampled_from(list(Priority)),
    rule=st.text(min_size=1, max_size=30),
    output=st.text(max_size=60),
    source=st.one_of(st.sampled_from(["syscall", "k8s_audit", "okta"]), st.text(min_size=1, max_size=10)),
    hostname=st.text(max_size=15),
    tags=st.lists(st.text(max_size=10), max_size=5).map(tuple),
    output_fields=st.one_of(
        st.dictionaries(_untyped_key, _value, max_size=12),
        # Fields Falco defines as strings keep any text, numeric-looking or not.
        st.dictionaries(
            st.sampled_from(sorted(TEXT_FIELDS)),
            st.one_of(st.none(), st.text(max_size=20).filter(lambda s: s != "null")),
            max_size=6,
        ),
    ),
)


@_FUZZ_STRUCTURED
@given(_events)
def test_fuzz_round_trip(event: FalcoEvent) -> None:
    assert decode_response_bytes(encode_response_bytes(event)) == event
