"""Fuzzing `decode_json`: whatever arrives, the answer is a `FalcoEvent` or a `DecodeError` with a reason.

Inputs: arbitrary bytes and text, arbitrary JSON documents, and Falco alerts in which any field is
replaced by arbitrary JSON, dropped, or joined by unknown keys. Every example has a deadline, so a
pathological input that makes the decoder hang or crawl fails the test.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aerie.proto.event import DecodeError, FalcoEvent, Priority, decode_json

REASONS = {"invalid_json", "schema", "bad_time", "bad_priority"}
FUZZ = settings(
    deadline=timedelta(seconds=2),  # generous for a shared machine; a hang still fails
    suppress_health_check=[HealthCheck.too_slow],
)
pytestmark = pytest.mark.timeout(240)

ALERT: dict[str, Any] = {
    "hostname": "node-a",
    "output": "12:00:00.123456789: Warning Shell spawned (user=root proc.name=bash)",
    "output_fields": {"proc.name": "bash", "proc.pid": 4242, "container.privileged": False, "fd.name": None},
    "priority": "Warning",
    "rule": "Terminal shell in container",
    "source": "syscall",
    "tags": ["container", "T1059"],
    "time": "2024-05-01T12:00:00.123456789Z",
    "uuid": "9a1f3c0e-5b7d-4e52-9d8e-0c6f2b1a7d44",  # Falcosidekick adds it
}
FIELDS = sorted(ALERT)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
# One level deep: as hostile to the schema as deeper nesting, at a fraction of the generation cost.
flat_json = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=6), st.one_of(scalars, st.lists(scalars, max_size=2)), max_size=3),
)


@st.composite
def rfc3339ish(draw: st.DrawFn) -> str:
    """Timestamps near Falco's shape, valid and not: out-of-range parts, odd zones and separators."""
    year = draw(st.integers(0, 10000))
    parts = [draw(st.integers(0, 13)), draw(st.integers(0, 32))]
    clock = [draw(st.integers(0, 25)), draw(st.integers(0, 61)), draw(st.integers(0, 61))]
    fraction = draw(
        st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=12).map(lambda d: "." + d))
    )
    zone = draw(
        st.one_of(
            st.sampled_from(["Z", "z", "", "+00:00", "-00:00", "UTC"]),
            st.tuples(st.sampled_from("+-"), st.integers(0, 30), st.integers(0, 70)).map(
                lambda t: f"{t[0]}{t[1]:02d}:{t[2]:02d}"
            ),
        )
    )
    sep = draw(st.sampled_from(["T", "t", " ", "_"]))
    width = draw(st.sampled_from([4, 4, 4, 1]))
    return (
        f"{year:0{width}d}-{parts[0]:02d}-{parts[1]:02d}{sep}"
        f"{clock[0]:02d}:{clock[1]:02d}:{clock[2]:02d}{fraction}{zone}"
    )


priorities = st.one_of(
    st.sampled_from([p.falco_name for p in Priority] + ["info", "WARNING", "Loud", ""]),
    st.integers(-3, 10),
    flat_json,
)
replacement = {
    "time": st.one_of(rfc3339ish(), flat_json),
    "priority": priorities,
    "output_fields": st.one_of(flat_json, st.dictionaries(st.text(max_size=10), json_values, max_size=3)),
    "tags": st.one_of(st.lists(st.text(max_size=10), max_size=5), flat_json),
}


def outcome(data: bytes | str) -> FalcoEvent | None:
    """The decoder's answer; fails the test on anything but an event or a reasoned DecodeError."""
    error: DecodeError | None = None
    try:
        event = decode_json(data)
    except DecodeError as exc:
        error = exc
    if error is not None:
        assert error.reason in REASONS, error
        assert isinstance(error.detail, str)
        return None
    assert isinstance(event, FalcoEvent)
    assert isinstance(event.priority, Priority)
    assert isinstance(event.time_ns, int)
    return event


@settings(FUZZ, max_examples=2000)
@given(st.binary(max_size=600))
@example(b"")
@example(b"[" * 50_000)
@example(
    b'{"rule":"r","priority":"Warning","time":"2024-05-01T12:00:00Z","output_fields":{"a":'
    + b"9" * 50_000
    + b"}}"
)
@example(b'{"rule": "r", "priority": "Warning", "time": "2024-05-01T12:00:00Z"}' + b"\x00")
def test_arbitrary_bytes(data: bytes) -> None:
    outcome(data)


@settings(FUZZ, max_examples=500)
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    outcome(text)


@settings(FUZZ, max_examples=800)
@given(json_values)
def test_arbitrary_json_documents(value: Any) -> None:
    assert outcome(json.dumps(value)) is None  # no alert without rule, priority and time


@settings(FUZZ, max_examples=2000)
@given(
    replaced=st.fixed_dictionaries({}, optional={k: replacement.get(k, json_values) for k in FIELDS}),
    dropped=st.sets(st.sampled_from(FIELDS), max_size=3),
    extra=st.dictionaries(st.text(max_size=10).filter(lambda k: k not in ALERT), flat_json, max_size=3),
)
def test_alerts_with_fields_replaced(
    replaced: dict[str, Any], dropped: set[str], extra: dict[str, Any]
) -> None:
    alert = {k: v for k, v in (ALERT | replaced).items() if k not in dropped} | extra
    event = outcome(json.dumps(alert))
    if event is None:
        return
    # Whatever was accepted is what was sent.
    assert event.rule == alert["rule"]
    assert event.output == alert.get("output", "")
    assert event.hostname == alert.get("hostname", "")
    assert list(event.tags) == (alert.get("tags") or [])
    assert event.output_fields == (alert.get("output_fields") or {})
    assert event.uuid == alert.get("uuid", "")
    # ... and it survives a trip through Falco's JSON shape unchanged.
    assert decode_json(msgspec.json.encode(event.to_falco_json())) == event


@pytest.mark.parametrize(
    "time", ["0001-01-01T00:00:00Z", "0999-12-31T23:59:59Z", "9999-12-31T23:59:59.999999999Z"]
)
def test_round_trip_at_the_edges_of_time(time: str) -> None:
    """Years below 1000 are written back zero-padded."""
    event = decode_json(json.dumps(ALERT | {"time": time}))
    assert decode_json(msgspec.json.encode(event.to_falco_json())) == event


@pytest.mark.parametrize(
    "time", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59-01:00", "2024-05-01T12:00:00.\u0661Z"]
)
def test_times_that_cannot_be_written_back_are_refused(time: str) -> None:
    """An offset that pushes the instant outside years 0001-9999 in UTC, or non-ASCII digits."""
    with pytest.raises(DecodeError) as info:
        decode_json(json.dumps(ALERT | {"time": time}))
    assert info.value.reason == "bad_time"
