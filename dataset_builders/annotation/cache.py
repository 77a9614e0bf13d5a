"""The persistent answer cache: every valid answer is stored the moment it arrives.

A SQLite database in WAL mode, one row per answer, committed on its own: killing the process at
any moment loses nothing that was stored, and a run of the same command asks again only for
what had not arrived. The key (:func:`cache_key`) is a SHA-256 over everything that determines
the answer: model, rubric, rubric version, instruction and the exact bytes of both images sent
(for other answer formats, such as the prompt generator's: model, format, version and request).

The cache also remembers the Batch API jobs it has submitted (:meth:`AnswerCache.add_batch`), so
an interrupted ``--batch`` run picks up its batches instead of paying for them again.

Only answers are stored: no request bodies, no headers, no keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    rubric TEXT NOT NULL,
    rubric_version TEXT NOT NULL,
    rewards TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    rubric TEXT NOT NULL,
    rubric_version TEXT NOT NULL,
    keys TEXT NOT NULL,
    input_file TEXT,
    done INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
"""


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/editforge/annotations.sqlite`` (``~/.cache/...`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "editforge" / "annotations.sqlite"


def cache_key(model: str, rubric: str, rubric_version: str, instruction: str, *payloads: bytes) -> str:
    """SHA-256 (hex) over the model, rubric (or other answer format), its version, the request's
    text and its payloads (a triplet's: both images' bytes), each length-prefixed."""
    digest = hashlib.sha256()
    for part in (model.encode(), rubric.encode(), rubric_version.encode(), instruction.encode(), *payloads):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    rewards: dict
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class BatchRecord:
    id: str
    keys: list[str]
    input_file: str | None


class AnswerCache:
    """Answers by cache key, in a SQLite file (created with its folder if missing)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: each put is its own transaction, durable once it returns. WAL with
        # synchronous=NORMAL survives the process being killed (not a power cut) at a fraction
        # of the cost of a full sync per answer.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def get(self, key: str) -> CachedAnswer | None:
        row = self._db.execute(
            "SELECT rewards, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else CachedAnswer(json.loads(row[0]), row[1], row[2])

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, *, model: str, rubric: str, rubric_version: str, rewards: dict,
            prompt_tokens: int, completion_tokens: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, model, rubric, rubric_version, json.dumps(rewards, ensure_ascii=False),
             int(prompt_tokens), int(completion_tokens), time.time()),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    # Batch API jobs -------------------------------------------------------------------------

    def add_batch(self, batch_id: str, *, model: str, rubric: str, rubric_version: str,
                  keys: list[str], input_file: str | None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
            (batch_id, model, rubric, rubric_version, json.dumps(keys), input_file, time.time()),
        )

    def open_batches(self, *, model: str, rubric: str, rubric_version: str) -> list[BatchRecord]:
        """Batches submitted for this model and rubric whose results are not merged yet."""
        rows = self._db.execute(
            "SELECT id, keys, input_file FROM batches WHERE done = 0 AND model = ? AND rubric = ? "
            "AND rubric_version = ? ORDER BY created",
            (model, rubric, rubric_version),
        ).fetchall()
        return [BatchRecord(row[0], json.loads(row[1]), row[2]) for row in rows]

    def close_batch(self, batch_id: str) -> None:
        self._db.execute("UPDATE batches SET done = 1 WHERE id = ?", (batch_id,))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "AnswerCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
