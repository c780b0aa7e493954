"""The coordinator's LangGraph checkpointer, chosen by one URL: SQLite by default, PostgreSQL in production.

``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a bare path → `AsyncSqliteSaver` on its own
connection (WAL, 30 s busy timeout, so the brain and an ``aerie cases`` process can share the file);
``postgresql://...`` → `AsyncPostgresSaver` on a connection pool (reconnects after a database restart).
Either way ``setup()`` runs before the saver is handed out.

Failure mode: `aerie.brain.audit.StoreError` when the URL names nothing usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

from aerie.brain.audit import StoreError, open_postgres_pool, parse_store_url

__all__ = ["open_checkpointer"]


@contextlib.asynccontextmanager
async def open_checkpointer(
    url: str, *, create: bool = True, max_connections: int = 8
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """A ready checkpointer for ``url``, closed on exit.

    ``create=False``: a missing SQLite file is a `StoreError` rather than a new, empty store."""
    parsed = parse_store_url(url)
    if parsed.kind == "sqlite":
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        if not create and not await asyncio.to_thread(os.path.isfile, parsed.target):
            raise StoreError(f"no checkpoint store at {parsed.target} (SQLite file not found)")
        try:
            conn = await aiosqlite.connect(parsed.target, timeout=30.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite checkpoints {parsed.target}: {exc}") from None
        try:
            await conn.execute("PRAGMA busy_timeout=30000")
            await conn.execute("PRAGMA synchronous=FULL")
            saver = AsyncSqliteSaver(conn)
            await saver.setup()
            yield saver
        finally:
            await conn.close()
        return

    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row

    # The saver's own requirements: autocommit, no prepared statements (poolers), dict rows.
    pool = await open_postgres_pool(
        parsed.target,
        max_connections=max_connections,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    )
    try:
        pg_saver = AsyncPostgresSaver(pool)
        await pg_saver.setup()
        yield pg_saver
    finally:
        await pool.close()
