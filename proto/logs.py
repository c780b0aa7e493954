"""Structured logs: one JSON object per line, the same shape from every aerie component.

Every line carries ``ts`` (RFC 3339, UTC, microseconds), ``level``, ``component`` (the process's
identity, such as ``spiffe://aerie/edge``), ``logger`` and ``msg``; ``trace_id`` when the line belongs to
a trace (set for a block with `trace_scope`, or per call with ``extra={"trace_id": ...}``); and every
other ``extra`` field as it was given. Log collectors (Loki, Elastic, ``jq``) read the fields directly,
and ``aerie trace`` can join lines to a decision by ``trace_id``.

    configure("spiffe://aerie/edge")
    log.info("threshold changed", extra={"old": 0.61, "new": 0.64, "source": "policy"})
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import re
import sys
from collections.abc import Iterator
from typing import IO, Any, Final

import msgspec

__all__ = [
    "JsonFormatter",
    "RepeatFilter",
    "configure",
    "current_trace_id",
    "quiet_logger",
    "trace_scope",
]

_TRACE_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("aerie_trace_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_ENCODER: Final = msgspec.json.Encoder()
_DIGITS: Final = re.compile(r"\d+")


def current_trace_id() -> str | None:
    return _TRACE_ID.get()


@contextlib.contextmanager
def trace_scope(trace_id: str | None) -> Iterator[None]:
    """Tag every line logged in this block (and in tasks it starts) with ``trace_id``."""
    token = _TRACE_ID.set(trace_id)
    try:
        yield
    finally:
        _TRACE_ID.reset(token)


def _plain(value: Any) -> Any:
    """What msgspec can encode: extras may hold paths, exceptions or other objects."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    return str(value)


class JsonFormatter(logging.Formatter):
    """A `logging.Formatter` that writes one JSON object per record."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="microseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None) or _TRACE_ID.get()
        if trace_id:
            line["trace_id"] = trace_id
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = _plain(value)
        if record.exc_info and record.exc_info[0] is not None:
            line["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line).decode()


def configure(component: str, *, level: str | int = "INFO", stream: IO[str] | None = None) -> None:
    """Send every ``aerie`` logger's records, as JSON lines, to ``stream`` (stderr by default).

    Replaces handlers installed by an earlier call, so a process can call it once per start.
    Libraries' own loggers (uvicorn, httpx, ...) stay at WARNING and go through the same formatter.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old.formatter, JsonFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("aerie").setLevel(level if isinstance(level, int) else level.upper())


class RepeatFilter(logging.Filter):
    """Let the same message through once per ``interval_s``; say how many were held back.

    For chatty sources that repeat one line while a condition lasts (librdkafka logs every failed
    reconnect, many per second while a broker is away). Messages are compared after digits are
    blanked, so ``after 0ms`` and ``after 3ms`` count as the same line.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = _DIGITS.sub("#", record.getMessage())
        now = record.created
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.repeated = last[1]
        if len(self._seen) > 1024:  # bounded: a flood of distinct lines must not grow this forever
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


def quiet_logger(name: str, interval_s: float = 60.0) -> logging.Logger:
    """A logger for a chatty library (librdkafka): each distinct line at most once per interval."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RepeatFilter) for f in logger.filters):
        logger.addFilter(RepeatFilter(interval_s))
    return logger
