"""Reading Hub-style Parquet sources row by row, in small batches, with clear errors.

The public editing datasets ship as Parquet shards (``data/train-00000-of-00262.parquet``) whose
image columns are ``{"bytes", "path"}`` structs (``datasets`` ``Image()``) or raw binary
(Pick-a-Pic's ``jpg_0``). A source is one such file or a folder searched with ``source_files``
(a glob relative to it, default every ``*.parquet`` below it, hidden folders excluded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from datasets.builder import Key

from editforge.errors import UsageError

from ..errors import BAD_FIELD, MISSING_FILE, ItemError
from .base import EditforgeBuilder, EditforgeBuilderConfig

DEFAULT_PATTERN = "**/*.parquet"
# Rows decoded from Parquet at a time; memory is bounded by this and by the source's row groups.
BATCH_ROWS = 16


@dataclass
class ParquetBuilderConfig(EditforgeBuilderConfig):
    """Options of the Parquet layouts.

    Args:
        source_files: glob relative to the source folder selecting the shards to read, e.g.
            ``"data/dev-*.parquet"`` (default: every ``*.parquet`` below it).
    """

    source_files: Optional[str] = None


@dataclass(frozen=True)
class ParquetRow:
    file_index: int
    file: Path
    name: str  # the file's path relative to the source, for ids and messages
    row: int
    values: dict

    @property
    def locator(self) -> str:
        return f"{self.name}:{self.row}"


def parquet_files(source: Path, pattern: str | None = None) -> list[tuple[Path, str]]:
    """``(path, name relative to the source)`` of the shards to read, in a stable order."""
    if source.is_file():
        if pattern:
            raise UsageError(f"source_files applies to a source folder, but {source} is a file")
        return [(source, source.name)]
    found = []
    for path in sorted(source.glob(pattern or DEFAULT_PATTERN)):
        relative = path.relative_to(source)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append((path, relative.as_posix()))
    if not found:
        raise UsageError(f"no Parquet files matching {pattern or DEFAULT_PATTERN!r} under {source}")
    return found


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise UsageError(f"{path}: not a readable Parquet file ({err})") from None


def count_parquet_rows(source: Path, pattern: str | None) -> int:
    return sum(_open_parquet(path).metadata.num_rows for path, _ in parquet_files(source, pattern))


def iter_parquet_rows(
    source: Path,
    pattern: str | None,
    required: Sequence[str],
    optional: Sequence[str] = (),
    skip: int = 0,
) -> Iterator[ParquetRow]:
    """Every row of the selected shards with the required (and present optional) columns.

    The first ``skip`` rows are passed over without reading them where the Parquet metadata
    allows (whole files and row groups).
    """
    for file_index, (path, name) in enumerate(parquet_files(source, pattern)):
        parquet = _open_parquet(path)
        names = parquet.schema_arrow.names
        missing = [c for c in required if c not in names]
        if missing:
            raise UsageError(f"{path}: lacks the column(s) {', '.join(missing)} (it has {', '.join(names)})")
        if skip >= parquet.metadata.num_rows:
            skip -= parquet.metadata.num_rows
            continue
        groups, row = [], 0
        for group in range(parquet.metadata.num_row_groups):
            group_rows = parquet.metadata.row_group(group).num_rows
            if skip >= group_rows and not groups:
                skip -= group_rows
                row += group_rows
            else:
                groups.append(group)
        columns = [c for c in (*required, *optional) if c in names]
        batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns, row_groups=groups)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as err:
                raise UsageError(f"{path}: cannot read the rows after row {row} ({err})") from None
            for values in batch.to_pylist():
                if skip:
                    skip -= 1
                else:
                    yield ParquetRow(file_index, path, name, row, values)
                row += 1


def image_cell(value: Any, base_dir: Path, *, item_id: str, field: str) -> bytes | Path | None:
    """The image of a Parquet cell: ``{"bytes", "path"}`` struct, raw bytes, a path, or null.

    Embedded bytes win over the path (the path of an embedded image is only its file name);
    a path without bytes is read relative to the Parquet file's folder.
    """
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        value = value.get("path")
        if not value:
            raise ItemError(item_id, MISSING_FILE, "the image cell has neither bytes nor a path", field)
    if isinstance(value, str):
        path = Path(value)
        return path if path.is_absolute() else base_dir / path
    raise ItemError(item_id, BAD_FIELD, f"the image cell holds {type(value).__name__}, not an image", field)


class ParquetBuilder(EditforgeBuilder):
    """A layout stored as Parquet shards: subclasses name their columns and map one row."""

    BUILDER_CONFIG_CLASS = ParquetBuilderConfig
    REQUIRED_COLUMNS: tuple[str, ...] = ()
    OPTIONAL_COLUMNS: tuple[str, ...] = ()

    def _iter_items(self, source: Path, skip: int = 0):
        rows = iter_parquet_rows(source, self.config.source_files, self.REQUIRED_COLUMNS, self.OPTIONAL_COLUMNS, skip)
        for row in rows:
            yield Key(row.file_index, row.row), self._item_id(row), row

    def source_files(self, source: Path) -> list[Path]:
        return [path for path, _ in parquet_files(source, self.config.source_files)]

    def count_items(self, source: Path) -> int:
        return count_parquet_rows(source, self.config.source_files)

    def _item_id(self, row: ParquetRow) -> str:
        """The id of a row (default: ``<shard>:<row>``, for sources without an id column)."""
        return row.locator

    def image(self, row: ParquetRow, column: str, item_id: str) -> bytes | Path | None:
        return image_cell(row.values.get(column), row.file.parent, item_id=item_id, field=column)
