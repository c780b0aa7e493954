"""`aerie.proto.retry`: the backoff every client uses, and telling a TLS refusal from a transient error."""

from __future__ import annotations

import random
import ssl

from aerie.proto.retry import backoff_delay, tls_refusal


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 2.0), (10_000, 2.0)]:
        delays = [backoff_delay(attempt, 0.1, 2.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert len(set(delays)) > 1  # jittered, so clients do not retry in step


def test_a_tls_refusal_is_found_through_causes_and_exception_groups() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    wrapped = ConnectionError("connect failed")
    wrapped.__cause__ = verify
    grouped = BaseExceptionGroup("task group", [ValueError("other"), wrapped])
    assert (
        tls_refusal(grouped, "agent")
        == "agent certificate not trusted: unable to get local issuer certificate"
    )
    alert = ssl.SSLError(1, "handshake")
    alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
    assert tls_refusal(alert, "server") == "TLS refused by the server: TLSV1_ALERT_UNKNOWN_CA"
    assert tls_refusal(ConnectionRefusedError("down"), "agent") is None
