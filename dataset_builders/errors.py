"""The problem with one item of a source dataset: which item, which field, what kind, why.

Builders raise :class:`ItemError` for anything wrong with a single item (a missing or corrupt
image, images of different sizes, a reward of the wrong shape). With ``on_error="fail"`` the
build stops and reports it; with ``on_error="skip"`` the item is left out and the dataset card
counts it under its ``kind``. Problems with a whole source (a file that is not Parquet, a column
that does not exist) are :class:`editforge.errors.UsageError` and always stop the build.
"""

from __future__ import annotations

from editforge.errors import UsageError

# The kinds of item problems, as the dataset card counts them.
MISSING_FILE = "missing_file"
CORRUPT_IMAGE = "corrupt_image"
ZERO_SIZE = "zero_size"
SIZE_MISMATCH = "size_mismatch"
BAD_REWARD = "bad_reward"
BAD_FIELD = "bad_field"
AMBIGUOUS = "ambiguous"

KINDS = (MISSING_FILE, CORRUPT_IMAGE, ZERO_SIZE, SIZE_MISMATCH, BAD_REWARD, BAD_FIELD, AMBIGUOUS)


class ItemError(UsageError):
    """One source item cannot be converted; ``str(err)`` names the item, the field and the reason."""

    def __init__(self, item_id: str, kind: str, reason: str, field: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown item problem kind {kind!r}; expected one of {KINDS}")
        self.item_id = str(item_id)
        self.kind = kind
        self.reason = reason
        self.field = field
        where = f" ({field})" if field else ""
        super().__init__(f"item {self.item_id!r}{where}: {reason}")

    def to_dict(self) -> dict:
        return {"id": self.item_id, "kind": self.kind, "field": self.field, "reason": self.reason}
