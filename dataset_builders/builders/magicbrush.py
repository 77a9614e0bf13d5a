"""MagicBrush Parquet shards (``osunlp/MagicBrush``, splits ``train`` and ``dev``).

Columns: ``img_id`` (COCO id), ``turn_index`` (1 = the real image, later turns edit the previous
output), ``source_img``, ``mask_img`` (white = region to edit), ``instruction``, ``target_img``.
An example's id is ``<img_id>-<turn_index>``. Select a split's shards with ``source_files``,
e.g. ``data/dev-*.parquet``.
"""

from __future__ import annotations

from .parquet_source import ParquetBuilder, ParquetRow


class MagicBrush(ParquetBuilder):
    SOURCE_NAME = "osunlp/MagicBrush"
    HOMEPAGE = "https://osu-nlp-group.github.io/MagicBrush"
    DESCRIPTION = "MagicBrush: manually annotated single- and multi-turn mask-guided edits of COCO images."
    REQUIRED_COLUMNS = ("img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img")

    def _item_id(self, row: ParquetRow) -> str:
        return f"{row.values['img_id']}-{row.values['turn_index']}"

    def _make_example(self, item_id: str, row: ParquetRow) -> dict:
        return self.edit_example(
            item_id=item_id,
            source_image=self.image(row, "source_img", item_id),
            edited_image=self.image(row, "target_img", item_id),
            mask_image=self.image(row, "mask_img", item_id),
            instruction=row.values["instruction"],
        )
