"""The anomaly envelope: what the edge publishes to Kafka for every event above the threshold.

Value: `Anomaly`, msgspec JSON. Key: `Anomaly.partition_key` (node and container, so one container's
anomalies stay in order on one partition). Headers: `HEADER_SCHEMA` (the schema version) and
``traceparent`` (W3C Trace Context; a new trace starts at the edge, one per anomaly).

Schema evolution follows msgspec's rules: a new field gets a default, and readers ignore fields they
do not know. That is why `Anomaly` does not forbid unknown fields, unlike aerie's internal structs:
an older brain must keep reading what a newer edge writes. ``schema_version`` changes only when a
reader can no longer ignore the difference.

Failure mode: `decode_anomaly` raises `EnvelopeError` with a stable ``reason`` (``invalid_json``,
``schema``, ``unsupported_version``, ``bad_traceparent``), for the consumer's dead-letter topic.
"""

from __future__ import annotations

import re
import secrets
from typing import Final

import msgspec

from aerie.proto.event import FalcoEvent

__all__ = [
    "HEADER_SCHEMA",
    "HEADER_TRACEPARENT",
    "SCHEMA_VERSION",
    "Anomaly",
    "EnvelopeError",
    "TraceContext",
    "decode_anomaly",
    "encode_anomaly",
]

SCHEMA_VERSION: Final = 1
HEADER_SCHEMA: Final = "aerie-schema-version"
HEADER_TRACEPARENT: Final = "traceparent"

_TRACEPARENT: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")


class EnvelopeError(ValueError):
    """A Kafka value or header that is not a usable anomaly; ``reason`` labels counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TraceContext(msgspec.Struct, frozen=True):
    """W3C Trace Context (version 00): the trace and the span that produced this hop."""

    trace_id: str
    span_id: str
    sampled: bool = True

    @classmethod
    def new(cls) -> TraceContext:
        """A new trace, as the edge starts one per anomaly."""
        return cls(trace_id=secrets.token_hex(16), span_id=secrets.token_hex(8))

    def child(self) -> TraceContext:
        """The same trace, a new span: what each hop downstream sends on."""
        return TraceContext(trace_id=self.trace_id, span_id=secrets.token_hex(8), sampled=self.sampled)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    @classmethod
    def parse(cls, header: str | bytes) -> TraceContext:
        """``00-<32 hex>-<16 hex>-<2 hex>``; all-zero ids are invalid (W3C)."""
        text = header.decode("ascii", "replace") if isinstance(header, bytes) else header
        m = _TRACEPARENT.match(text.strip())
        if m is None or set(m.group(1)) == {"0"} or set(m.group(2)) == {"0"}:
            raise EnvelopeError("bad_traceparent", f"not a W3C traceparent: {text[:80]!r}")
        return cls(trace_id=m.group(1), span_id=m.group(2), sampled=bool(int(m.group(3), 16) & 1))


class Anomaly(msgspec.Struct, frozen=True, kw_only=True):
    """One event the edge found anomalous, with everything needed to explain and replay the decision."""

    schema_version: int = SCHEMA_VERSION
    event_id: str
    """`FalcoEvent.event_id`: the de-duplication key downstream."""
    traceparent: str
    node: str
    model_version: str
    feature_spec_hash: str
    score: float
    """Higher = more anomalous."""
    threshold: float
    """The threshold in force when the decision was made (a policy parameter, it can change)."""
    features: list[float]
    detected_at_ns: int
    event: FalcoEvent

    @property
    def trace(self) -> TraceContext:
        return TraceContext.parse(self.traceparent)

    @property
    def partition_key(self) -> bytes:
        """``node/container``: one container's anomalies keep their order on one partition."""
        container = self.event.field_str("container.id") or "host"
        return f"{self.node}/{container}".encode()

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (HEADER_SCHEMA, str(self.schema_version).encode()),
            (HEADER_TRACEPARENT, self.traceparent.encode()),
        ]


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(Anomaly)


def encode_anomaly(anomaly: Anomaly) -> bytes:
    return _ENCODER.encode(anomaly)


def decode_anomaly(data: bytes) -> Anomaly:
    """A Kafka value → `Anomaly`; `EnvelopeError` when it is not one this reader understands."""
    try:
        anomaly = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise EnvelopeError("schema", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise EnvelopeError("invalid_json", str(exc)) from None
    if anomaly.schema_version != SCHEMA_VERSION:
        raise EnvelopeError(
            "unsupported_version",
            f"schema version {anomaly.schema_version}, this reader reads {SCHEMA_VERSION}",
        )
    TraceContext.parse(anomaly.traceparent)
    return anomaly
