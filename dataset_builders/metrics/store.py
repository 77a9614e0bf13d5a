"""The results of a metrics run so far: one SQLite row per item, committed once per batch.

The file lives in the output folder's hidden scratch folder for the split. Killed at any moment,
a run loses at most the batch it was computing; the same command continues with the items that
have no row. Every process of an ``accelerate launch`` writes into the same file (WAL mode, one
short transaction per batch). The run's *signature* (dataset fingerprint, models, options) is
stored with the rows: a run with another signature starts over.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path
from typing import Iterator

from editforge.vocabulary import METRIC_NAMES

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    idx INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    {", ".join(f"{name} REAL" for name in METRIC_NAMES)},
    error_kind TEXT, error_field TEXT, error_reason TEXT
);
"""
COLUMNS = ("idx", "id", *METRIC_NAMES, "error_kind", "error_field", "error_reason")


class MetricsStore:
    """Per-item metrics (or the item's error) by dataset row index."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=120)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    @classmethod
    def prepare(cls, path: str | os.PathLike, signature: dict) -> "MetricsStore":
        """Open the store for ``signature``, emptying it when it holds another run's rows."""
        store = cls(path)
        wanted = json.dumps(signature, sort_keys=True)
        if store.signature_text() != wanted:
            with store._db:
                store._db.execute("BEGIN")
                store._db.execute("DELETE FROM results")
                store._db.execute("INSERT OR REPLACE INTO meta VALUES ('signature', ?)", (wanted,))
        return store

    def signature_text(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'signature'").fetchone()
        return None if row is None else row[0]

    def done(self) -> set[int]:
        """Indices with a row (metrics or an error)."""
        return {row[0] for row in self._db.execute("SELECT idx FROM results")}

    def put(self, rows: list[dict]) -> None:
        """Store one batch in one transaction: dicts with ``idx``, ``id``, metric values (None for
        null) or ``error`` (an ItemError's ``to_dict()``)."""
        values = []
        for row in rows:
            error = row.get("error") or {}
            values.append((row["idx"], row["id"], *(row.get(name) for name in METRIC_NAMES),
                           error.get("kind"), error.get("field"), error.get("reason")))
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(f"INSERT OR REPLACE INTO results VALUES ({', '.join('?' * len(COLUMNS))})", values)

    def errors(self) -> list[dict]:
        rows = self._db.execute(
            "SELECT idx, id, error_kind, error_field, error_reason FROM results WHERE error_kind IS NOT NULL ORDER BY idx"
        )
        return [{"idx": r[0], "id": r[1], "kind": r[2], "field": r[3], "reason": r[4]} for r in rows]

    def results(self, start: int = 0) -> Iterator[dict]:
        """Rows in index order from ``start``: ``{idx, id, metrics}`` or ``{idx, id, error}``."""
        cursor = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM results WHERE idx >= ? ORDER BY idx", (start,))
        for row in cursor:
            record = dict(zip(COLUMNS, row))
            out = {"idx": record["idx"], "id": record["id"]}
            if record["error_kind"] is not None:
                out["error"] = {"id": record["id"], "kind": record["error_kind"], "field": record["error_field"],
                                "reason": record["error_reason"]}
            else:
                out["metrics"] = {name: _value(record[name]) for name in METRIC_NAMES}
            yield out

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def _value(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
