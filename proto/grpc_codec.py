"""Falco's gRPC ``falco.outputs.response`` ⇄ `FalcoEvent`.

Decoding (`decode_response`, `decode_response_bytes`) is what the gRPC input runs on every alert:

* ``time`` (``google.protobuf.Timestamp``) → ``time_ns``; a missing time or one outside the
  Timestamp's valid range (years 1–9999, nanos 0..999,999,999) is refused (``bad_time``/``schema``);
* ``priority`` (open proto3 enum, so any int32 can arrive) → `Priority`; outside 0..7 is
  refused (``bad_priority``);
* ``output_fields`` values go through `normalise_grpc_field`, which types the JSON-encoded
  non-strings back (``"42"`` → 42, ``"null"`` → None); text it cannot decode stays text. Fields
  that Falco defines as strings and that routinely hold digits (``container.id`` such as
  ``"595856786908"`` or ``"991283509e13"``, ``container.image.tag`` such as ``"1.20"``, process
  names, pod names; see `TEXT_FIELDS`) are kept as text, as Falco's JSON output carries them:
  typing them would change an identity (``"1.20"`` → 1.2); only ``"null"`` becomes None there;
* ``source`` (field 9) wins; a Falco too old to fill it only sends ``source_deprecated``
  (field 3), whose enum name is used instead (``K8S_AUDIT`` → ``"k8s_audit"``);
* an empty ``rule`` is refused (``schema``): every Falco alert names its rule.

Encoding (`encode_response`) fills a response the way Falco's gRPC output does
(``userspace/falco/outputs_grpc.cpp``): string fields as they are, every other value JSON-encoded
with nlohmann's ``dump()`` spelling (compact, non-ASCII kept): numbers → ``"42"``/``"0.5"``,
booleans → ``"true"``/``"false"``, null → ``"null"``. Falco itself refuses list values (it throws,
and the alert never reaches gRPC); we JSON-encode them (``'["a","b"]'``) so nothing is lost, and
`normalise_grpc_field` types them back. ``source_deprecated`` is set from the source name as Falco
does, PLUGIN for any source the enum does not name. ``uuid`` has no field in the response and is
dropped.

Round trip: ``decode_response(encode_response(e)) == e`` for every event whose ``uuid`` is empty,
whose numbers are finite, whose `TEXT_FIELDS` hold text (not the text ``"null"``) or None, and
whose other string values do not themselves read as JSON scalars or scalar lists (an unknown plugin
field holding the text ``"123"`` comes back as the number 123: the wire cannot tell).

Failure mode: decoders raise only `DecodeError`, with one of the stable reasons in
`DECODE_REASONS`. `encode_response` raises `ValueError` for a time outside the Timestamp range.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Final, cast

from google.protobuf import message as _pb_message
from google.protobuf.timestamp_pb2 import Timestamp

from aerie.proto.event import DecodeError, FalcoEvent, FieldValue, normalise_grpc_field, parse_priority
from aerie.proto.falco import outputs_pb2, schema_pb2

__all__ = [
    "DECODE_REASONS",
    "TEXT_FIELDS",
    "decode_response",
    "decode_response_bytes",
    "encode_response",
    "encode_response_bytes",
]

DECODE_REASONS: Final = frozenset({"invalid_protobuf", "schema", "bad_time", "bad_priority"})

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS: Final = -62_135_596_800
_MAX_SECONDS: Final = 253_402_300_799
_NS: Final = 1_000_000_000

# Canonical (upper-case) enum names → the source names Falco prints.
_LEGACY_SOURCE_NAMES: Final = {
    number: schema_pb2.source.Name(number).lower() for number in schema_pb2.source.values()
}
# Every spelling Falco's source_Parse accepts (the aliases included) → enum number.
_SOURCE_NUMBERS: Final = dict(schema_pb2.source.items())
_PLUGIN: Final = schema_pb2.source.Value("PLUGIN")


# Falco fields of string type (CHARBUF, FSPATH, ...) whose values are often all digits or hex:
# identities and names. Indexed variants (proc.aname[2]) match on the name before "[".
TEXT_FIELDS: Final = frozenset(
    {
        "container.id",
        "container.name",
        "container.image",
        "container.image.id",
        "container.image.repository",
        "container.image.tag",
        "container.image.digest",
        "k8s.ns.name",
        "k8s.pod.name",
        "k8s.pod.id",
        "k8s.pod.uid",
        "proc.name",
        "proc.pname",
        "proc.aname",
        "proc.exe",
        "proc.pexe",
        "proc.exepath",
        "proc.pexepath",
        "proc.cmdline",
        "proc.pcmdline",
        "proc.args",
        "proc.cwd",
        "user.name",
        "group.name",
        "fd.name",
        "fd.filename",
        "fd.directory",
        "evt.type",
    }
)

# Every text normalise_grpc_field types starts with one of these (a number, true/false/null, a
# list); anything else it returns unchanged, so skip the call: most field values are plain text.
_TYPED_STARTS: Final = frozenset("-0123456789tfn[")


def _typed(value: str) -> FieldValue:
    try:
        return normalise_grpc_field(value)
    except RecursionError:
        # json.loads recurses per nesting level; a deeply nested list is not a scalar list anyway.
        return value


def _output_fields(items: Iterable[tuple[str, str]]) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    for key, value in items:
        # Cheapest test first: most values are plain text that no rule would type.
        if value[:1] not in _TYPED_STARTS:
            fields[key] = value
        elif key in TEXT_FIELDS or ("[" in key and key.partition("[")[0] in TEXT_FIELDS):
            # A string field is text or null (Falco's JSON has null where a value is missing).
            fields[key] = None if value == "null" else value
        else:
            fields[key] = _typed(value)
    return fields


def decode_response(msg: outputs_pb2.response) -> FalcoEvent:
    """A parsed ``falco.outputs.response`` → `FalcoEvent`. Raises `DecodeError` on bad data."""
    if not msg.HasField("time"):
        raise DecodeError("schema", "response has no time")
    seconds, nanos = msg.time.seconds, msg.time.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < _NS):
        raise DecodeError("bad_time", f"timestamp out of range: seconds={seconds} nanos={nanos}")
    rule = msg.rule
    if not rule:
        raise DecodeError("schema", "response has no rule")
    source = msg.source
    if not source:
        # Falco before the string field existed; an unknown enum number is a source we cannot name.
        legacy = _LEGACY_SOURCE_NAMES.get(msg.source_deprecated)
        if legacy is None:
            raise DecodeError("schema", f"unknown source_deprecated {msg.source_deprecated}")
        source = legacy
    return FalcoEvent(
        time_ns=seconds * _NS + nanos,
        priority=parse_priority(msg.priority),
        rule=rule,
        output=msg.output,
        source=source,
        hostname=msg.hostname,
        tags=tuple(msg.tags),
        output_fields=_output_fields(msg.output_fields.items()),
    )


def decode_response_bytes(data: bytes) -> FalcoEvent:
    """A serialized ``falco.outputs.response`` (as it comes off the wire) → `FalcoEvent`.

    Bytes that are not a valid message (truncated, wrong wire types, invalid UTF-8 in a string)
    raise `DecodeError` with reason ``invalid_protobuf``.
    """
    msg = outputs_pb2.response()
    try:
        msg.ParseFromString(data)
    except _pb_message.DecodeError as exc:
        raise DecodeError("invalid_protobuf", str(exc)) from None
    return decode_response(msg)


def _dump(value: FieldValue) -> str:
    # nlohmann::json::dump() spelling: compact separators, UTF-8 kept as is.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_response(event: FalcoEvent) -> outputs_pb2.response:
    """`FalcoEvent` → ``falco.outputs.response`` filled the way Falco fills it (see module doc)."""
    seconds, nanos = divmod(event.time_ns, _NS)
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise ValueError(f"time_ns {event.time_ns} is outside google.protobuf.Timestamp's range")
    return outputs_pb2.response(
        time=Timestamp(seconds=seconds, nanos=nanos),
        # The stubs type enum fields as their wrapper class; on the wire (and at runtime) an int.
        priority=cast(schema_pb2.priority, int(event.priority)),
        source_deprecated=cast(schema_pb2.source, _SOURCE_NUMBERS.get(event.source, _PLUGIN)),
        rule=event.rule,
        output=event.output,
        output_fields={
            key: value if isinstance(value, str) else _dump(value)
            for key, value in event.output_fields.items()
        },
        hostname=event.hostname,
        tags=event.tags,
        source=event.source,
    )


def encode_response_bytes(event: FalcoEvent) -> bytes:
    """`encode_response`, serialized for the wire."""
    return encode_response(event).SerializeToString()
