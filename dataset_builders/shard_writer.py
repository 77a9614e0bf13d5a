"""Parquet shards written one after another, with a journal that lets a stopped build resume.

A shard is written as ``shard-NNNNN.parquet.partial`` and renamed when it is complete (past
``max_shard_size`` bytes, or at the end); then ``journal.json`` records the shards, how many
source items they cover and the :class:`~.build_stats.BuildStats` up to there. A build started
again over the same source and options (the *signature*: format, source path, size and mtime of
the files that define the items, options) keeps the journal's shards and continues with the item
after them; anything else starts over. A partial shard is always discarded, so at most one shard
of work is repeated.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from datasets import Features
from datasets.arrow_writer import ParquetWriter

from .build_stats import BuildStats

JOURNAL = "journal.json"
PARTIAL = ".partial"


def source_stamp(files: list[Path]) -> list[list]:
    """What identifies the version of the files that define a source's items."""
    stamp = []
    for path in files:
        info = path.stat()
        stamp.append([str(path.resolve()), info.st_size, info.st_mtime_ns])
    return stamp


class ShardWriter:
    """Write canonical rows into rotating Parquet shards under ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path, features: Features, max_shard_bytes: int, signature: dict, kind: str):
        self.folder = Path(folder)
        self.features = features
        self.max_shard_bytes = max_shard_bytes
        self.signature = json.loads(json.dumps(signature))  # as it will read back from the journal
        self._writer: ParquetWriter | None = None
        journal = self._read_journal()
        if journal is not None and journal.get("signature") == self.signature:
            self.consumed = journal["consumed"]
            self.shards = journal["shards"]
            self.stats = BuildStats.from_dict(journal["stats"])
            kept = {shard["name"] for shard in self.shards} | {JOURNAL}
            for path in self.folder.iterdir():
                if path.name not in kept:
                    path.unlink()
        else:
            if self.folder.exists():
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True)
            self.consumed = 0
            self.shards = []
            self.stats = BuildStats(kind=kind)
        self.resumed_from = self.consumed

    def _read_journal(self) -> dict | None:
        try:
            return json.loads((self.folder / JOURNAL).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _partial_path(self) -> Path:
        return self.folder / f"shard-{len(self.shards):05d}.parquet{PARTIAL}"

    def write(self, example: dict) -> None:
        if self._writer is None:
            self._writer = ParquetWriter(features=self.features, path=str(self._partial_path()), embed_local_files=True)
        self._writer.write(self.features.encode_example(example))

    def item_done(self, consumed: int) -> None:
        """Called after each source item (``consumed`` items so far): closes a full shard."""
        if self._writer is not None and self._writer._num_bytes > self.max_shard_bytes:
            self._close_shard(consumed)

    def finish(self, consumed: int) -> tuple[list[Path], int]:
        """Close the last shard; returns the shard paths in order and their uncompressed bytes."""
        if self._writer is not None:
            self._close_shard(consumed)
        elif consumed != self.consumed:
            self.consumed = consumed
            self._write_journal()
        return [self.folder / shard["name"] for shard in self.shards], sum(s["num_bytes"] for s in self.shards)

    def _close_shard(self, consumed: int) -> None:
        num_examples, num_bytes = self._writer.finalize()
        self._writer.close()
        self._writer = None
        partial = self._partial_path()
        final = partial.with_name(partial.name[: -len(PARTIAL)])
        os.replace(partial, final)
        self.shards.append({"name": final.name, "num_examples": num_examples, "num_bytes": num_bytes})
        self.consumed = consumed
        self._write_journal()

    def _write_journal(self) -> None:
        journal = {"signature": self.signature, "consumed": self.consumed, "shards": self.shards, "stats": self.stats.to_dict()}
        tmp = self.folder / f"{JOURNAL}{PARTIAL}"
        tmp.write_text(json.dumps(journal), encoding="utf-8")
        os.replace(tmp, self.folder / JOURNAL)

    def abandon(self) -> int:
        """Drop the shard being written; returns how many source items the complete shards kept
        for the next run cover (0: nothing worth resuming)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._partial_path().unlink(missing_ok=True)
        return self.consumed if self.shards else 0
