"""`FalcoEvent`: the one type every Falco input yields.

Falco speaks two representations of the same alert:

* gRPC (Falco <= 0.43): ``output_fields`` is ``map<string, string>`` with non-string values
  JSON-encoded, priority is an enum number, time a protobuf Timestamp;
* JSON (``json_output=true``, ``http_output``, Falcosidekick webhooks, JSON lines): ``output_fields``
  are typed (strings, numbers, bools, ``null``), priority is a name such as ``"Warning"``, time is
  RFC 3339 with nanoseconds in UTC.

Both normalise here into `FalcoEvent`: typed field values, `Priority` as Falco's enum numbers, time
as integer nanoseconds since the epoch.

Failure mode: every decoder raises `DecodeError` with a short, stable ``reason`` (suitable as a
metric label) and a human-readable detail. Nothing else escapes a decoder on bad input.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

__all__ = [
    "DecodeError",
    "FalcoEvent",
    "FieldValue",
    "Priority",
    "decode_json",
    "format_time",
    "normalise_grpc_field",
    "parse_priority",
    "parse_time",
]

FieldValue = str | int | float | bool | None | list[str | int | float | bool | None]


class Priority(enum.IntEnum):
    """Falco's ``falco.schema.priority`` numbers: lower is more severe."""

    EMERGENCY = 0
    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFORMATIONAL = 6
    DEBUG = 7

    @property
    def falco_name(self) -> str:
        """The spelling Falco uses in JSON output ("Warning", "Informational", ...)."""
        return _FALCO_NAMES[self]


_FALCO_NAMES: Final = {p: p.name.capitalize() for p in Priority}
_PRIORITY_BY_NAME: Final = {p.name.lower(): p for p in Priority} | {"info": Priority.INFORMATIONAL}


class DecodeError(ValueError):
    """Input that cannot become a `FalcoEvent`. ``reason`` is a stable label for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FalcoEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One Falco alert, whichever way it arrived."""

    time_ns: int
    priority: Priority
    rule: str
    output: str = ""
    source: str = "syscall"
    hostname: str = ""
    tags: tuple[str, ...] = ()
    output_fields: dict[str, FieldValue] = msgspec.field(default_factory=dict)
    uuid: str = ""

    @property
    def event_id(self) -> str:
        """A stable id for de-duplication and labels: a digest of what identifies the alert (host, time,
        rule, output). It does not use Falcosidekick's ``uuid``, which gRPC does not carry: the same
        alert gets the same id whichever way it arrived, and when it is replayed or re-read."""
        key = f"{self.hostname}\x00{self.time_ns}\x00{self.rule}\x00{self.output}".encode()
        return hashlib.blake2b(key, digest_size=16).hexdigest()

    def field_str(self, name: str) -> str:
        """A field as text; missing and ``null`` become ``""`` (Falco prints ``<NA>``)."""
        value = self.output_fields.get(name)
        if value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value)

    def to_falco_json(self) -> dict[str, Any]:
        """The event as Falco's own JSON output would carry it."""
        return {
            "hostname": self.hostname,
            "output": self.output,
            "output_fields": self.output_fields,
            "priority": self.priority.falco_name,
            "rule": self.rule,
            "source": self.source,
            "tags": list(self.tags),
            "time": format_time(self.time_ns),
            **({"uuid": self.uuid} if self.uuid else {}),
        }


def parse_priority(value: str | int) -> Priority:
    """Falco's name (any case, "Info" too) or enum number → `Priority`."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return Priority(value)
        except ValueError:
            raise DecodeError("bad_priority", f"priority number {value} is not 0..7") from None
    if isinstance(value, str):
        found = _PRIORITY_BY_NAME.get(value.lower())
        if found is not None:
            return found
    raise DecodeError("bad_priority", f"unknown priority {value!r}")


# RFC 3339 as Falco writes it: 2024-05-01T12:34:56.123456789Z (offsets accepted too).
_TIME_RE: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})\Z", re.ASCII
)
# Instants Falco's format can write back: years 0001-9999 in UTC.
_MIN_SECONDS: Final = -62135596800
_MAX_SECONDS: Final = 253402300799
_EPOCH_CACHE: dict[str, int] = {}
_EPOCH_CACHE_MAX: Final = 4096


def parse_time(text: str) -> int:
    """RFC 3339 → integer nanoseconds since the epoch, keeping all nine fraction digits.

    The whole-second part is cached: a node emits many alerts per second, and datetime
    parsing dominates the decode otherwise. Falco's own layout (``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ``)
    skips the regex when its seconds are cached.
    """
    if len(text) == 30 and text[19] == "." and text[29] == "Z" and text.isascii() and text[20:29].isdigit():
        cached = _EPOCH_CACHE.get(text[:19])
        if cached is not None:
            return cached * 1_000_000_000 + int(text[20:29])
    m = _TIME_RE.match(text)
    if m is None:
        raise DecodeError("bad_time", f"not an RFC 3339 timestamp: {text[:64]!r}")
    date, clock, frac, zone = m.groups()
    key = f"{date}T{clock}{zone}"
    seconds = _EPOCH_CACHE.get(key)
    if seconds is None:
        try:
            parsed = datetime.fromisoformat(f"{date}T{clock}{'+00:00' if zone in 'Zz' else zone}")
        except ValueError as exc:
            raise DecodeError("bad_time", f"{text[:64]!r}: {exc}") from None
        seconds = int(parsed.timestamp())
        if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
            raise DecodeError("bad_time", f"{text[:64]!r} is outside years 0001-9999 in UTC")
        if len(_EPOCH_CACHE) >= _EPOCH_CACHE_MAX:
            _EPOCH_CACHE.clear()
        _EPOCH_CACHE[key] = seconds
        if zone == "Z":
            _EPOCH_CACHE[f"{date}T{clock}"] = seconds  # the fast path's key
    nanos = int(frac.ljust(9, "0")) if frac else 0
    return seconds * 1_000_000_000 + nanos


def format_time(time_ns: int) -> str:
    """Integer nanoseconds → RFC 3339 in UTC with nine fraction digits, as Falco writes it."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    t = datetime.fromtimestamp(seconds, UTC)
    # strftime's %Y does not zero-pad years below 1000 on glibc.
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{nanos:09d}Z"


_JSON_SCALAR: Final = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\Z|true\Z|false\Z|null\Z")


def normalise_grpc_field(value: str) -> FieldValue:
    """A gRPC ``output_fields`` value → the typed value Falco's JSON output would carry.

    Falco's gRPC output JSON-encodes non-string values into the string map. A string field whose
    text happens to look like a number (a process literally named ``123``) is indistinguishable on
    the wire; we type it as the number, which is also what feature code expects of numeric text.
    """
    if _JSON_SCALAR.match(value) or (value[:1] == "[" and value[-1:] == "]"):
        try:
            decoded = msgspec.json.decode(value)
        except (msgspec.DecodeError, RecursionError):
            return value
        if isinstance(decoded, float) and not math.isfinite(decoded):
            return value  # "884e15561221" is a container id, not infinity
        if isinstance(decoded, list) and not all(
            x is None or isinstance(x, str | int | float | bool) for x in decoded
        ):
            return value
        return decoded  # type: ignore[no-any-return]
    return value


class _FalcoJson(msgspec.Struct):
    """Falco's JSON alert as it arrives. Unknown keys are ignored: Falco and Falcosidekick add fields
    over time (``uuid``, ``outputs``), and refusing them would lose alerts on upgrade."""

    rule: str
    priority: str | int
    time: str
    output: str = ""
    source: str = "syscall"
    hostname: str = ""
    tags: list[str] | None = None
    output_fields: dict[str, FieldValue] | None = None
    uuid: str = ""


_JSON_DECODER: Final = msgspec.json.Decoder(_FalcoJson)


def decode_json(data: bytes | str) -> FalcoEvent:
    """One Falco JSON alert (``json_output``, ``http_output`` body, a JSON line) → `FalcoEvent`."""
    try:
        raw = _JSON_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise DecodeError("schema", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise DecodeError("invalid_json", str(exc)) from None
    return FalcoEvent(
        time_ns=parse_time(raw.time),
        priority=parse_priority(raw.priority),
        rule=raw.rule,
        output=raw.output,
        source=raw.source,
        hostname=raw.hostname,
        tags=tuple(raw.tags) if raw.tags else (),
        output_fields=raw.output_fields or {},
        uuid=raw.uuid,
    )
