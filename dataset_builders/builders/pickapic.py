"""Pick-a-Pic-style preference Parquet (``yuvalkirstain/pickapic_v2``) as preference pairs.

Columns used: ``caption`` (the prompt), ``jpg_0`` and ``jpg_1`` (image bytes), ``label_0``
(1 = image 0 preferred, 0 = image 1, 0.5 = tie) and, when present, ``ranking_id`` (the id;
otherwise shard and row) and the taxonomy columns ``theme``, ``subtopic``, ``contrast`` (written
by prompt-taxonomy pipelines such as InstructEngine's) and ``pair_id`` (the contrasting pair a
row belongs to, for cross-validation DPO); null when absent.
"""

from __future__ import annotations

from ..build_stats import PAIR
from .parquet_source import ParquetBuilder, ParquetRow

TAXONOMY_COLUMNS = ("theme", "subtopic", "contrast", "pair_id")


class PickAPic(ParquetBuilder):
    KIND = PAIR
    SOURCE_NAME = "yuvalkirstain/pickapic_v2"
    HOMEPAGE = "https://github.com/yuvalkirstain/PickScore"
    DESCRIPTION = "Text-to-image preference pairs: a prompt, two images and which one people preferred."
    REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
    OPTIONAL_COLUMNS = ("ranking_id", *TAXONOMY_COLUMNS)

    def _item_id(self, row: ParquetRow) -> str:
        ranking = row.values.get("ranking_id")
        return row.locator if ranking is None else str(ranking)

    def _make_example(self, item_id: str, row: ParquetRow) -> dict:
        values = row.values
        return self.pair_example(
            item_id=item_id,
            prompt=values["caption"],
            image_0=self.image(row, "jpg_0", item_id),
            image_1=self.image(row, "jpg_1", item_id),
            label_0=values["label_0"],
            **{name: values.get(name) for name in TAXONOMY_COLUMNS},
        )
