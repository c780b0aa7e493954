"""The edge's exceptions, in one place.

::

    RuntimeError
     ├── InputError       an input cannot start or continue (bad settings, bind, missing file)
     │    └── TlsError
     └── ReplayError      a replay cannot start, or could not deliver what it was fed
          └── TlsError
    ValueError
     └── TlsError         TLS settings that cannot work: a file that does not exist, a certificate
                          without its key, PEM that does not load

`TlsError` is both an `InputError` and a `ReplayError` because the same TLS settings
(`aerie.edge.tls`) serve inputs and replays alike: each caller's one ``except`` catches it. It is a
`ValueError` too, so that msgspec, when it decodes a configuration tree, turns it into a
``ValidationError`` that names the path of the offending value.

Per-record failures are never exceptions: they are counted with a reason (see `InputStats`).
"""

from __future__ import annotations

__all__ = ["InputError", "ReplayError", "TlsError"]


class InputError(RuntimeError):
    """An input that cannot start or continue (configuration, bind, missing file)."""


class ReplayError(RuntimeError):
    """A replay cannot start (bad address, URL or TLS material), or could not deliver what it was fed."""


class TlsError(InputError, ReplayError, ValueError):
    """TLS settings that cannot work; the message names the setting and the file."""
