"""The InstructPix2Pix CLIP-filtered Parquet release (``timbrooks/instructpix2pix-clip-filtered``).

Columns: ``original_prompt`` (source caption), ``original_image``, ``edit_prompt`` (instruction),
``edited_prompt`` (target caption), ``edited_image``. The release has no id column, so an
example's id is its shard and row, e.g. ``data/train-00000-of-00262.parquet:17``.
"""

from __future__ import annotations

from .parquet_source import ParquetBuilder, ParquetRow


class InstructPix2Pix(ParquetBuilder):
    SOURCE_NAME = "timbrooks/instructpix2pix-clip-filtered"
    HOMEPAGE = "https://www.timothybrooks.com/instruct-pix2pix"
    DESCRIPTION = "InstructPix2Pix CLIP-filtered edit triplets (GPT-3 instructions, Prompt-to-Prompt images)."
    REQUIRED_COLUMNS = ("original_prompt", "original_image", "edit_prompt", "edited_prompt", "edited_image")

    def _make_example(self, item_id: str, row: ParquetRow) -> dict:
        values = row.values
        return self.edit_example(
            item_id=item_id,
            source_image=self.image(row, "original_image", item_id),
            edited_image=self.image(row, "edited_image", item_id),
            instruction=values["edit_prompt"],
            source_caption=values["original_prompt"],
            target_caption=values["edited_prompt"],
        )
