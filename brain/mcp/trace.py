"""The W3C trace context of the request a process is serving, for the MCP calls it makes meanwhile.

An agent serves an A2A request under the caller's ``traceparent``; every MCP call it makes while
doing so is a child span of that one. `serving_traceparent` marks the block (the agent service sets
it around the logic); `parent_trace` reads it back where the call is made, so the logic's
signature stays the request alone. Kept free of the MCP SDK: the agent service imports it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

from aerie.proto.envelope import EnvelopeError, TraceContext
from aerie.proto.logs import current_trace_id

__all__ = [
    "TRACEPARENT",
    "current_traceparent",
    "inbound_trace",
    "parent_trace",
    "parse",
    "serving_traceparent",
]

TRACEPARENT = "traceparent"
"""The key in an MCP request's ``params._meta`` and the HTTP header, both carrying the same value."""

_SERVING: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aerie_serving_traceparent", default=None
)


@contextlib.contextmanager
def serving_traceparent(traceparent: str | None) -> Iterator[None]:
    """Mark this block (and tasks it starts) as serving a request that arrived under ``traceparent``."""
    token = _SERVING.set(traceparent)
    try:
        yield
    finally:
        _SERVING.reset(token)


def current_traceparent() -> str | None:
    """The ``traceparent`` of the request being served here, if one was marked."""
    return _SERVING.get()


def parse(value: Any) -> TraceContext | None:
    """``value`` as a trace context; None for anything that is not a valid W3C traceparent string."""
    if not isinstance(value, str) or not value or len(value) > 128:
        return None
    try:
        return TraceContext.parse(value)
    except EnvelopeError:
        return None


def parent_trace(traceparent: str | None = None) -> TraceContext:
    """The span an outgoing call descends from: ``traceparent`` when valid, else the request being
    served (`serving_traceparent`), else a new span in the trace being logged (`trace_scope`), else a
    new trace. Never raises: a call without a trace still gets one."""
    for candidate in (traceparent, current_traceparent()):
        parsed = parse(candidate)
        if parsed is not None:
            return parsed
    trace_id = current_trace_id()
    if trace_id is not None:
        parsed = parse(f"00-{trace_id}-{TraceContext.new().span_id}-01")
        if parsed is not None:
            return parsed
    return TraceContext.new()


def inbound_trace(meta: Mapping[str, Any] | None, headers: Mapping[str, str] | None) -> TraceContext | None:
    """The trace an MCP request arrived under: ``params._meta.traceparent`` first (the MCP way,
    it survives proxies), the HTTP ``traceparent`` header second."""
    found = parse(meta.get(TRACEPARENT)) if meta is not None else None
    if found is None and headers is not None:
        found = parse(headers.get(TRACEPARENT))
    return found
