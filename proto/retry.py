"""How aerie's clients retry: capped exponential backoff with jitter, and telling a TLS refusal (a
configuration error, not worth retrying) from a transient failure.

Shared by the edge's gRPC input and the brain's A2A and MCP callers, so every component backs off
the same way.
"""

from __future__ import annotations

import random
import ssl

__all__ = ["backoff_delay", "tls_refusal"]


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """The pause before retry ``attempt`` (1 = the first retry): drawn from ``[d/2, d]`` with
    ``d = min(cap_s, base_s * 2**(attempt-1))``. The jitter keeps many clients from retrying in step."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt - 1, 0), 60))
    return (rng if rng is not None else random).uniform(ceiling / 2, ceiling)


def tls_refusal(exc: BaseException, peer: str) -> str | None:
    """Why a TLS handshake failed, when that is what ``exc`` (its causes, or an exception group's
    members) says; None for anything else. ``peer`` names the other side in the message."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"{peer} certificate not trusted: {current.verify_message or current.reason}"
        if isinstance(current, ssl.SSLError) and "ALERT" in str(current.reason or "").upper():
            return f"TLS refused by the {peer}: {current.reason}"
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None
