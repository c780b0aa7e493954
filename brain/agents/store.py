"""Durable idempotency records: the first result for a key, kept in SQLite across restarts.

`IdempotentStore.once` runs a producer only when its key has no record yet and stores what it
returned in the same transaction; every later call with that key gets the stored value back, also
after the process restarts. Remediate keeps its actions here and notify its outbox (the stand-in for
Mattermost), so a retried or resumed coordinator step never acts or posts twice.

All SQLite work happens on one worker thread per store: calls are serialised (so check-then-insert
is atomic without relying on SQLite's locking) and the event loop never waits on an fsync.
Commits use ``synchronous=FULL``: a record acknowledged to the caller survives a power cut.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

__all__ = ["IdempotentStore", "Record", "StoreError"]

_T = TypeVar("_T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    request_digest TEXT NOT NULL,
    value BLOB NOT NULL,
    created_ns INTEGER NOT NULL
)
"""


class StoreError(Exception):
    """The state directory or its database cannot be opened or written."""


@dataclass(frozen=True)
class Record:
    """A stored result and whether this call created it."""

    value: bytes
    first_time: bool
    same_request: bool
    """False when the key was first used for a different request (the first result still wins)."""


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class IdempotentStore:
    """One SQLite file of ``key → first value``. Create it, call `open`, `close` when done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"aerie-store-{path.stem}")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Create the directory, the file and the table. Raises `StoreError`."""
        await self._run(self._open)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        self._db = db

    async def once(self, key: str, request: bytes, produce: Callable[[], bytes]) -> Record:
        """The stored value for ``key``, or ``produce()`` stored under it now.

        ``request`` is the request's canonical bytes; only its digest is kept, to notice a key
        reused for a different request. ``produce`` runs on the store's thread inside the
        transaction and must not block for long. Raises `StoreError`.
        """
        return await self._run(lambda: self._once(key, digest(request), produce))

    def _once(self, key: str, request_digest: str, produce: Callable[[], bytes]) -> Record:
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT value, request_digest FROM records WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    db.execute("COMMIT")
                    return Record(
                        value=bytes(row[0]), first_time=False, same_request=row[1] == request_digest
                    )
                value = produce()
                db.execute(
                    "INSERT INTO records (key, request_digest, value, created_ns) VALUES (?, ?, ?, ?)",
                    (key, request_digest, value, time.time_ns()),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        return Record(value=value, first_time=True, same_request=True)

    async def values(self) -> list[bytes]:
        """Every stored value, oldest first (the notify outbox reads its messages this way)."""
        return await self._run(self._values)

    def _values(self) -> list[bytes]:
        try:
            rows = self._connection().execute("SELECT value FROM records ORDER BY created_ns, key").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        return [bytes(r[0]) for r in rows]

    async def close(self) -> None:
        """Close the database and stop the worker thread. Safe to call twice."""
        if self._db is not None:
            await self._run(self._close)
        self._pool.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self.path}: store is not open")
        return self._db

    async def _run(self, call: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)
