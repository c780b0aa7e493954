"""The edge's exceptions, in one place.

::

    RuntimeError
     ├── InputError            an input cannot start or continue (bad settings, bind, missing file)
     │    └── TlsError
     ├── ReplayError           a replay cannot start, or could not deliver what it was fed
     │    └── TlsError
     ├── SpoolError            the disk spool's directory or files cannot be used (names the path)
     └── PublishError          a record given to the Kafka publisher was not accepted
          ├── PublishBackpressure  the bounded local queue is full: spool it or shed it (counted)
          ├── RecordRejected       this record can never be produced (too large, ...)
          ├── PublisherClosed      publish after close
          └── PublisherFailed      the producer is in a fatal state: only a new publisher can go on
    ValueError
     ├── TlsError              TLS settings that cannot work: a file that does not exist, a certificate
     │                         without its key, PEM that does not load
     └── KafkaConfigError      settings librdkafka refuses, or that would weaken delivery guarantees

`TlsError` is both an `InputError` and a `ReplayError` because the same TLS settings
(`aerie.edge.tls`) serve inputs and replays alike: each caller's one ``except`` catches it. It is a
`ValueError` too, so that msgspec, when it decodes a configuration tree, turns it into a
``ValidationError`` that names the path of the offending value.

Per-record failures are never exceptions: they are counted with a reason (see `InputStats`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "InputError",
    "KafkaConfigError",
    "PublishBackpressure",
    "PublishError",
    "PublisherClosed",
    "PublisherFailed",
    "RecordRejected",
    "ReplayError",
    "SpoolError",
    "TlsError",
]


class InputError(RuntimeError):
    """An input that cannot start or continue (configuration, bind, missing file)."""


class ReplayError(RuntimeError):
    """A replay cannot start (bad address, URL or TLS material), or could not deliver what it was fed."""


class TlsError(InputError, ReplayError, ValueError):
    """TLS settings that cannot work; the message names the setting and the file."""


class SpoolError(RuntimeError):
    """The spool's directory or files cannot be used; ``path`` names the one that failed."""

    def __init__(self, path: Path | str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = Path(path)
        self.detail = detail


class PublishError(RuntimeError):
    """The record given to `KafkaPublisher.publish` was not accepted."""


class PublishBackpressure(PublishError):
    """The bounded local queue is full: the record was not accepted; spool it or shed it (counted)."""


class RecordRejected(PublishError):
    """This record can never be produced (for instance larger than ``message.max.bytes``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class PublisherClosed(PublishError):
    """`KafkaPublisher.publish` after `KafkaPublisher.close`."""


class PublisherFailed(PublishError):
    """The producer is in a fatal state (idempotence violated, fenced): only a new publisher can go on."""


class KafkaConfigError(ValueError):
    """Settings librdkafka refuses, or that would weaken the delivery guarantees."""
