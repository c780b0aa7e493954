"""The anomaly threshold as a live policy parameter: override, then policy, then the bundle's own.

The brain publishes a small JSON document (`ThresholdPolicy`; see ``policies/edge/README.md``)::

    {"version": "2026-11-21.1", "edge": {"threshold": 0.62, "nodes": {"node-a": 0.70}}}

either as a file on a mounted volume (a ConfigMap) or at an http(s) URL the brain serves.
`LiveThreshold` holds the value the detector compares scores with, resolved in this order:

1. ``override`` — the node's own configuration; always wins;
2. ``policy`` — ``edge.nodes[<this node>]``, else ``edge.threshold`` (either may be absent);
3. ``bundle`` — the calibrated ``manifest.threshold`` of the model being served (`set_bundle_default`).

Reading it on the hot path is a plain attribute read (``live.value``). `refresh` polls the source
once and `run` polls it every ``refresh_s``. A file is re-read only when its inode, size or mtime
moved (or its mtime is too recent to trust, see `_RACY_NS`), and decoded only when its sha256 moved; a
URL is fetched with ``If-None-Match`` so an unchanged document costs a 304.

A source that fails — missing or unreadable file, HTTP error or transport failure, malformed JSON, a
document that does not match the schema (unknown field, a value that is not a number, outside
0..1) — leaves the last good value in force. Each failed attempt is counted by reason in `stats`; it
is logged once per distinct failure, and once more when the source recovers. A bad document stays
remembered (by its stat, sha256 or ETag) and is not decoded or logged again until it changes.

Every change of the value or its origin is logged (``aerie.edge.threshold``: old, new, origin, policy
version) and reported to ``on_change(old, new, origin)``; ``old`` is None for the first value, which
is reported from the constructor.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

import httpx
import msgspec

from aerie.edge.tls import ClientTls, TlsError, client_ssl_context

__all__ = [
    "EdgeThresholds",
    "LiveThreshold",
    "Origin",
    "PolicyError",
    "ThresholdPolicy",
    "ThresholdStats",
    "check_threshold",
    "decode_policy",
]

log = logging.getLogger("aerie.edge.threshold")

Origin = Literal["override", "policy", "bundle"]
OnChange = Callable[[float | None, float, str], None]

# Scores are in (0, 1] (higher = more anomalous): 0 flags everything, 1 nothing.
Threshold = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NodeName = Annotated[str, msgspec.Meta(min_length=1)]

MAX_DOCUMENT_BYTES: Final = 1 << 20
# Failures of the document itself: they last until the document changes.
_DOCUMENT_REASONS: Final = frozenset({"malformed_json", "invalid_document"})
# A file rewritten in place within one mtime tick (coarse on Linux: a few ms) keeps its stat; a
# signature whose mtime is this close to the last read is re-read (and hashed) to be sure.
_RACY_NS: Final = 2_000_000_000


class EdgeThresholds(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The edge's part of the policy: a cluster-wide threshold and per-node ones, both optional."""

    threshold: Threshold | None = None
    nodes: dict[NodeName, Threshold] = msgspec.field(default_factory=dict)


class ThresholdPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The document the brain publishes. Unknown fields and out-of-range values are refused."""

    version: Annotated[str, msgspec.Meta(min_length=1)]
    edge: EdgeThresholds = msgspec.field(default_factory=EdgeThresholds)

    def threshold_for(self, node: str) -> tuple[float, str] | None:
        """The policy's threshold for ``node`` and its scope (``node`` or ``cluster``), if it sets one."""
        specific = self.edge.nodes.get(node)
        if specific is not None:
            return specific, "node"
        if self.edge.threshold is not None:
            return self.edge.threshold, "cluster"
        return None


_DECODER: Final = msgspec.json.Decoder(ThresholdPolicy)


class PolicyError(ValueError):
    """A policy document that cannot be used; ``reason`` is a counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_policy(data: bytes) -> ThresholdPolicy:
    """The policy in ``data``; raises `PolicyError` (reason ``malformed_json`` or ``invalid_document``)."""
    try:
        return _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise PolicyError("invalid_document", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise PolicyError("malformed_json", str(exc)) from None


def check_threshold(value: float, what: str) -> float:
    """``value`` as a float if it is a threshold (finite, within 0..1); `ValueError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{what} must be within 0..1 (scores are in (0, 1]), got {value!r}")
    return float(value)


class ThresholdStats(msgspec.Struct, kw_only=True):
    """What the policy source did. ``failures`` counts failed attempts by reason."""

    polls: int = 0
    applied: int = 0
    """Valid documents that differed from the one before and were taken."""
    unchanged: int = 0
    """Polls that found the same file, body or policy as before (304s included)."""
    not_modified: int = 0
    """HTTP 304 answers to ``If-None-Match``."""
    failures: dict[str, int] = msgspec.field(default_factory=dict)
    last_error: str | None = None
    """The failure in force now (None while the source is healthy)."""


@dataclass(frozen=True)
class _FileSig:
    ino: int
    size: int
    mtime_ns: int


class _Failed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _transport_reason(exc: httpx.HTTPError) -> str:
    """``httpx.ConnectError`` → ``connect_error``: a stable label for counters."""
    name = type(exc).__name__
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


class LiveThreshold:
    """The threshold in force; see the module docstring.

    Args:
        node: this node's name (selects ``edge.nodes[node]``).
        bundle_threshold: the served bundle's ``manifest.threshold``, the fallback.
        source: the policy document: a path, or an ``http://`` / ``https://`` URL; None for none.
        override: a local value that always wins (configuration).
        refresh_s: seconds between polls in `run`.
        tls: CA and client certificate for an https source (None: the system store).
        timeout_s: per HTTP request (connect, read, write, pool each).
        on_change: called ``(old, new, origin)`` on every change, and once from here with ``old=None``.

    Raises `ValueError` for a threshold outside 0..1, a source URL that is not http(s), or
    ``refresh_s``/``timeout_s`` <= 0; `aerie.edge.errors.TlsError` (a ValueError) for TLS files that do
    not load.
    """

    value: float
    """The threshold in force: scores above it are anomalies. A plain attribute: read it freely."""
    origin: Origin
    policy_version: str | None
    """The version of the last valid policy document, None before one was read."""

    def __init__(
        self,
        *,
        node: str,
        bundle_threshold: float,
        source: str | Path | None = None,
        override: float | None = None,
        refresh_s: float = 30.0,
        tls: ClientTls | None = None,
        timeout_s: float = 5.0,
        on_change: OnChange | None = None,
    ) -> None:
        if not refresh_s > 0 or not timeout_s > 0:
            raise ValueError("refresh_s and timeout_s must be > 0")
        self.node = node
        self.refresh_s = refresh_s
        self.stats = ThresholdStats()
        self._bundle = check_threshold(bundle_threshold, "bundle threshold")
        self._override = None if override is None else check_threshold(override, "threshold override")
        self._policy: ThresholdPolicy | None = None
        self._on_change = on_change
        self._url: httpx.URL | None = None
        self._path: Path | None = None
        self._source_text = "" if source is None else str(source)
        if isinstance(source, str) and source.startswith(("http://", "https://")):
            try:
                self._url = httpx.URL(source)
            except httpx.InvalidURL as exc:
                raise ValueError(f"threshold source {source!r} is not a valid URL: {exc}") from None
            if not self._url.host:
                raise ValueError(f"threshold source {source!r} has no host")
        elif isinstance(source, str) and "://" in source:
            raise ValueError(f"threshold source must be a file path or an http(s) URL, got {source!r}")
        elif source is not None:
            self._path = Path(source)
        if tls is not None:
            client_ssl_context(tls)  # refuse TLS material that does not load now, not at the first poll
        self._tls = tls
        self._timeout = httpx.Timeout(timeout_s)
        self._client: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()
        # What the source looked like last time (good or bad): unchanged → nothing to do.
        self._file_sig: _FileSig | None = None
        self._file_read_ns = 0
        self._etag: str | None = None
        self._digest: str | None = None
        self._failure: tuple[str, str] | None = None
        self.policy_version = None
        self.value, self.origin, self._scope = self._resolve()
        self._notify(None)

    # --- reading -------------------------------------------------------------------------------

    @property
    def source(self) -> str:
        return self._source_text

    @property
    def policy(self) -> ThresholdPolicy | None:
        """The last valid policy document, None before one was read."""
        return self._policy

    @property
    def bundle_threshold(self) -> float:
        return self._bundle

    @property
    def override(self) -> float | None:
        return self._override

    # --- inputs other than the source ----------------------------------------------------------

    def set_bundle_default(self, threshold: float) -> None:
        """A model bundle was (re)loaded: its ``manifest.threshold`` is the new fallback.

        Raises `ValueError` if it is outside 0..1 (`load_bundle` does not check it), keeping the old one.
        """
        self._bundle = check_threshold(threshold, "bundle threshold")
        self._update()

    def set_override(self, threshold: float | None) -> None:
        """Set or clear (None) the local override. Raises `ValueError` if outside 0..1."""
        self._override = None if threshold is None else check_threshold(threshold, "threshold override")
        self._update()

    # --- polling -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll the source every ``refresh_s`` until cancelled (first poll at once); returns at once
        when there is no source. Never raises for a failing source (see `stats`)."""
        if self._path is None and self._url is None:
            return
        try:
            while True:
                await self.refresh()
                await asyncio.sleep(self.refresh_s)
        finally:
            await self.aclose()

    async def refresh(self) -> bool:
        """Poll the source once; True when a new valid document was taken (its value may be the same).

        Failures are counted and logged (once per distinct failure), never raised.
        """
        async with self._lock:
            if self._path is None and self._url is None:
                return False
            self.stats.polls += 1
            try:
                data = await (self._read_file() if self._path is not None else self._fetch())
                if data is None:
                    self.stats.unchanged += 1
                    if self._failure is not None and self._failure[0] not in _DOCUMENT_REASONS:
                        self._recovered()  # reachable again, and still the document we had
                    return False
                try:
                    policy = decode_policy(data)
                except PolicyError as exc:
                    raise _Failed(exc.reason, exc.detail) from None
            except _Failed as failure:
                self._failed(failure.reason, failure.detail)
                return False
            self._recovered()
            if policy == self._policy:
                self.stats.unchanged += 1
                return False
            self.stats.applied += 1
            self._policy = policy
            old_version, self.policy_version = self.policy_version, policy.version
            if not self._update():
                log.info(
                    "threshold policy %s applied, threshold unchanged at %.6f (%s)",
                    policy.version,
                    self.value,
                    self.origin,
                    extra={
                        "policy_version": policy.version,
                        "old_policy_version": old_version,
                        "threshold": self.value,
                        "origin": self.origin,
                        "source": self._source_text,
                    },
                )
            return True

    async def aclose(self) -> None:
        """Close the HTTP client, if one was opened (`refresh` opens a new one when called again)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _read_file(self) -> bytes | None:
        assert self._path is not None
        return await asyncio.to_thread(self._read_file_sync, self._path)

    def _read_file_sync(self, path: Path) -> bytes | None:
        """The file's bytes when they may have changed since the last poll; None when they did not."""
        try:
            st = path.stat()  # follows symlinks: a ConfigMap's ..data flip changes the inode
            sig = _FileSig(ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns)
            if sig == self._file_sig and st.st_mtime_ns < self._file_read_ns - _RACY_NS:
                return None
            if st.st_size > MAX_DOCUMENT_BYTES:
                raise _Failed("too_large", f"{path}: {st.st_size} bytes, at most {MAX_DOCUMENT_BYTES}")
            read_ns = time.time_ns()
            with path.open("rb") as handle:
                data = handle.read(MAX_DOCUMENT_BYTES + 1)
        except FileNotFoundError:
            self._file_sig = None
            raise _Failed("missing", f"{path} does not exist") from None
        except OSError as exc:
            self._file_sig = None
            raise _Failed("unreadable", f"{path}: {exc.strerror or exc}") from None
        if len(data) > MAX_DOCUMENT_BYTES:
            raise _Failed("too_large", f"{path}: more than {MAX_DOCUMENT_BYTES} bytes")
        self._file_sig, self._file_read_ns = sig, read_ns
        return self._if_new(data)

    def _if_new(self, data: bytes) -> bytes | None:
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return None
        self._digest = digest
        return data

    async def _fetch(self) -> bytes | None:
        assert self._url is not None
        if self._client is None:
            try:
                verify: ssl.SSLContext | bool = (
                    client_ssl_context(self._tls) if self._tls is not None else True
                )
            except TlsError as exc:
                raise _Failed("tls", str(exc)) from None
            self._client = httpx.AsyncClient(
                verify=verify,
                timeout=self._timeout,
                trust_env=False,
                headers={"accept": "application/json"},
            )
        headers = {"if-none-match": self._etag} if self._etag is not None else {}
        try:
            async with self._client.stream("GET", self._url, headers=headers) as response:
                if response.status_code == 304:
                    # The document we decided on last time (taken, or refused and remembered).
                    self.stats.not_modified += 1
                    return None
                if response.status_code != 200:
                    raise _Failed(f"http_{response.status_code}", f"GET {self._url}: {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _Failed("too_large", f"{self._url}: more than {MAX_DOCUMENT_BYTES} bytes")
                etag = response.headers.get("etag")
        except httpx.HTTPError as exc:
            # A new connection next time, with the TLS files read again (they may have been rotated).
            await self.aclose()
            raise _Failed(_transport_reason(exc), f"GET {self._url}: {exc!r}") from None
        self._etag = etag
        return self._if_new(bytes(body))

    # --- state ---------------------------------------------------------------------------------

    def _resolve(self) -> tuple[float, Origin, str | None]:
        if self._override is not None:
            return self._override, "override", None
        if self._policy is not None:
            found = self._policy.threshold_for(self.node)
            if found is not None:
                return found[0], "policy", found[1]
        return self._bundle, "bundle", None

    def _update(self) -> bool:
        """Re-resolve; log and report a change of value or origin. True when something changed."""
        value, origin, scope = self._resolve()
        if (value, origin) == (self.value, self.origin):
            self._scope = scope
            return False
        old = self.value
        self.value, self.origin, self._scope = value, origin, scope
        self._notify(old)
        return True

    def _notify(self, old: float | None) -> None:
        log.info(
            "threshold %s → %.6f (%s%s, policy %s)",
            "set" if old is None else f"{old:.6f}",
            self.value,
            self.origin,
            f" {self._scope}" if self._scope else "",
            self.policy_version or "none",
            extra={
                "old": old,
                "new": self.value,
                "origin": self.origin,
                "policy_scope": self._scope,
                "policy_version": self.policy_version,
                "node": self.node,
                "source": self._source_text or None,
            },
        )
        if self._on_change is not None:
            try:
                self._on_change(old, self.value, self.origin)
            except Exception:
                log.exception("threshold on_change callback failed", extra={"new": self.value})

    def _failed(self, reason: str, detail: str) -> None:
        self.stats.failures[reason] = self.stats.failures.get(reason, 0) + 1
        self.stats.last_error = f"{reason}: {detail}"
        if self._failure == (reason, detail):
            return
        self._failure = (reason, detail)
        log.warning(
            "threshold source failed (%s), keeping %.6f (%s): %s",
            reason,
            self.value,
            self.origin,
            detail,
            extra={
                "reason": reason,
                "detail": detail,
                "threshold": self.value,
                "origin": self.origin,
                "policy_version": self.policy_version,
                "source": self._source_text,
            },
        )

    def _recovered(self) -> None:
        if self._failure is None:
            return
        log.info(
            "threshold source readable again after %s",
            self._failure[0],
            extra={"reason": self._failure[0], "source": self._source_text},
        )
        self._failure = None
        self.stats.last_error = None
