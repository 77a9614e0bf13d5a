"""OmniEdit-Filtered Parquet shards (``TIGER-Lab/OmniEdit-Filtered-1.2M``, splits ``train``, ``dev``).

Columns: ``omni_edit_id``, ``task``, ``src_img``, ``edited_img``, ``edited_prompt_list``
(paraphrases of the instruction; the first is used), ``width``, ``height``, ``sc_score_1``,
``sc_score_2`` (VIEScore semantic consistency: editing success, over-editing), ``sc_reasoning``,
``pq_score``, ``pq_reasoning``, ``o_score``. They become the ``viescore`` column with
``sc = min(sc_score_1, sc_score_2)``, ``pq = pq_score``, ``o = o_score`` (as released),
``sc_scores = [sc_score_1, sc_score_2]``, ``pq_scores = [pq_score]``. A row without any score
has ``viescore: null``; one with some scores missing is reported. Width and height are those of
the decoded images.
"""

from __future__ import annotations

from ..errors import BAD_FIELD, BAD_REWARD, ItemError
from ..rewards import viescore
from .parquet_source import ParquetBuilder, ParquetRow

SCORE_COLUMNS = ("sc_score_1", "sc_score_2", "pq_score", "o_score")


def omniedit_viescore(values: dict, item_id: str) -> dict | None:
    scores = {name: values.get(name) for name in SCORE_COLUMNS}
    if all(v is None for v in scores.values()):
        return None
    missing = [name for name, v in scores.items() if v is None]
    if missing:
        raise ItemError(item_id, BAD_REWARD, f"has some VIEScore columns but not {', '.join(missing)}", "viescore")
    sc_scores = [scores["sc_score_1"], scores["sc_score_2"]]
    return viescore(
        {
            "sc": min(sc_scores),
            "pq": scores["pq_score"],
            "o": scores["o_score"],
            "sc_scores": sc_scores,
            "pq_scores": [scores["pq_score"]],
            "sc_reasoning": values.get("sc_reasoning"),
            "pq_reasoning": values.get("pq_reasoning"),
        },
        item_id=item_id,
        field="viescore",
    )


class OmniEdit(ParquetBuilder):
    SOURCE_NAME = "TIGER-Lab/OmniEdit-Filtered-1.2M"
    HOMEPAGE = "https://tiger-ai-lab.github.io/OmniEdit"
    DESCRIPTION = "OmniEdit: seven specialist-generated edit tasks at any aspect ratio, scored with VIEScore."
    REQUIRED_COLUMNS = ("omni_edit_id", "task", "src_img", "edited_img", "edited_prompt_list")
    OPTIONAL_COLUMNS = (*SCORE_COLUMNS, "sc_reasoning", "pq_reasoning")

    def _item_id(self, row: ParquetRow) -> str:
        return str(row.values["omni_edit_id"])

    def _make_example(self, item_id: str, row: ParquetRow) -> dict:
        values = row.values
        prompts = values["edited_prompt_list"]
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts:
            raise ItemError(item_id, BAD_FIELD, f"edited_prompt_list must be a non-empty list, got {prompts!r}", "edited_prompt_list")
        return self.edit_example(
            item_id=item_id,
            source_image=self.image(row, "src_img", item_id),
            edited_image=self.image(row, "edited_img", item_id),
            instruction=prompts[0],
            task=values["task"],
            viescore=omniedit_viescore(values, item_id),
        )
