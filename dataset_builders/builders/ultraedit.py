"""UltraEdit Parquet shards (``BleachNick/UltraEdit``: free-form ``FreeForm_*`` splits and
region-based ``RegionBase``; also ``UltraEdit_500k`` and ``UltraEdit_Region_Based_100k``).

Columns: ``source_image``, ``edited_image``, ``edit_prompt`` (instruction), ``source_caption``,
``target_caption``, ``mask_image`` (null in free-form shards, where the column has Arrow type
null), ``edit_object``, ``idx`` and the filter metrics ``clip_sim_source``, ``clip_sim_target``,
``clip_sim_dir``, ``clip_sim_image``, ``dinov2_sim``, ``ssim``. The task is ``free_form`` or
``region_based`` (a mask is present). ``edit_object`` has no canonical column and is not kept.
An example's id is ``<source split>-<idx>``, the split taken from the shard name
(``FreeForm_0-00000-of-00002.parquet`` -> ``FreeForm_0``).
"""

from __future__ import annotations

from editforge.vocabulary import METRIC_NAMES

from ..rewards import metrics
from .parquet_source import ParquetBuilder, ParquetRow

FREE_FORM = "free_form"
REGION_BASED = "region_based"


def source_split(shard_name: str) -> str:
    """``data/FreeForm_0-00000-of-00002.parquet`` -> ``FreeForm_0``."""
    return shard_name.rsplit("/", 1)[-1].split("-", 1)[0].removesuffix(".parquet")


class UltraEdit(ParquetBuilder):
    SOURCE_NAME = "BleachNick/UltraEdit"
    HOMEPAGE = "https://ultra-editing.github.io"
    DESCRIPTION = "UltraEdit: large-scale free-form and region-based edits anchored on real images."
    REQUIRED_COLUMNS = ("source_image", "edited_image", "edit_prompt")
    OPTIONAL_COLUMNS = ("idx", "source_caption", "target_caption", "mask_image", *METRIC_NAMES)

    def _item_id(self, row: ParquetRow) -> str:
        idx = row.values.get("idx")
        return row.locator if idx is None else f"{source_split(row.name)}-{idx}"

    def _make_example(self, item_id: str, row: ParquetRow) -> dict:
        values = row.values
        mask = self.image(row, "mask_image", item_id)
        return self.edit_example(
            item_id=item_id,
            source_image=self.image(row, "source_image", item_id),
            edited_image=self.image(row, "edited_image", item_id),
            mask_image=mask,
            instruction=values["edit_prompt"],
            source_caption=values.get("source_caption"),
            target_caption=values.get("target_caption"),
            task=FREE_FORM if mask is None else REGION_BASED,
            metrics=metrics({name: values.get(name) for name in METRIC_NAMES}, item_id=item_id),
        )
