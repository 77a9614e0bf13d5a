"""Reward, VIEScore and metric values of the sources, validated and put in the canonical shape.

Each function returns the value of one canonical column (see :mod:`.features`) or ``None`` when
the source has nothing, and raises :class:`~.errors.ItemError` (kind ``bad_reward``) naming the
item when the source value has the wrong shape. Nothing is filled in: a missing score stays null.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from editforge.vocabulary import METRIC_NAMES, PERSPECTIVES

from .errors import BAD_FIELD, BAD_REWARD, ItemError

MULTI_REWARD_RANGE = (0.0, 5.0)
VIESCORE_RANGE = (0.0, 10.0)
# RewardEdit_20K.json: per key, a list of three {"Score", "Negative Prompt"} in this order.
REWARDEDIT_ORDER = PERSPECTIVES  # following, preserving, quality
REWARDEDIT_KEYS = ("Score", "Negative Prompt")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _score(value: Any, bounds: tuple[float, float], *, item_id: str, field: str, what: str) -> float:
    low, high = bounds
    if not _is_number(value):
        raise ItemError(item_id, BAD_REWARD, f"{what} must be a number from {low:g} to {high:g}, got {value!r}", field)
    if not low <= value <= high:
        raise ItemError(item_id, BAD_REWARD, f"{what} must be from {low:g} to {high:g}, got {value:g}", field)
    return float(value)


def _text(value: Any, *, item_id: str, field: str, what: str) -> str:
    if not isinstance(value, str):
        raise ItemError(item_id, BAD_REWARD, f"{what} must be a string, got {type(value).__name__}", field)
    return value


def multi_reward(value: Any, *, item_id: str, field: str = "rewards") -> dict | None:
    """``{perspective: {"score": 0..5, "feedback": str}}`` for the three perspectives, or None."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ItemError(
            item_id, BAD_REWARD,
            f"expected an object with {', '.join(PERSPECTIVES)}, got {type(value).__name__}", field,
        )
    missing = [p for p in PERSPECTIVES if p not in value]
    if missing:
        raise ItemError(item_id, BAD_REWARD, f"lacks the perspective(s) {', '.join(missing)}", field)
    rewards = {}
    for perspective in PERSPECTIVES:
        entry = value[perspective]
        if not isinstance(entry, Mapping) or "score" not in entry or "feedback" not in entry:
            raise ItemError(item_id, BAD_REWARD, f"{perspective} must be an object with score and feedback, got {entry!r}", field)
        rewards[perspective] = {
            "score": _score(entry["score"], MULTI_REWARD_RANGE, item_id=item_id, field=field, what=f"{perspective}.score"),
            "feedback": _text(entry["feedback"], item_id=item_id, field=field, what=f"{perspective}.feedback"),
        }
    return rewards


def rewardedit_entry(entry: Any, *, item_id: str, field: str = "RewardEdit_20K.json") -> dict:
    """One value of ``RewardEdit_20K.json`` (three ``{"Score", "Negative Prompt"}``) as canonical rewards."""
    shape = 'a list of 3 {"Score", "Negative Prompt"} objects (following, preserving, quality)'
    if not isinstance(entry, list) or len(entry) != len(REWARDEDIT_ORDER):
        got = f"a list of {len(entry)}" if isinstance(entry, list) else type(entry).__name__
        raise ItemError(item_id, BAD_REWARD, f"expected {shape}, got {got}", field)
    rewards = {}
    for position, (perspective, judgement) in enumerate(zip(REWARDEDIT_ORDER, entry)):
        if not isinstance(judgement, Mapping) or any(k not in judgement for k in REWARDEDIT_KEYS):
            raise ItemError(item_id, BAD_REWARD, f"entry {position} ({perspective}): expected {shape}, got {judgement!r}", field)
        rewards[perspective] = {
            "score": _score(judgement["Score"], MULTI_REWARD_RANGE, item_id=item_id, field=field, what=f"entry {position} Score"),
            "feedback": _text(judgement["Negative Prompt"], item_id=item_id, field=field, what=f"entry {position} Negative Prompt"),
        }
    return rewards


def _score_list(value: Any, *, item_id: str, field: str, what: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ItemError(item_id, BAD_REWARD, f"{what} must be a non-empty list of numbers, got {value!r}", field)
    return [_score(v, VIESCORE_RANGE, item_id=item_id, field=field, what=what) for v in value]


def viescore(value: Any, *, item_id: str, field: str = "rewards") -> dict | None:
    """A VIEScore judgement ``{sc, pq, o, sc_scores, pq_scores, sc_reasoning, pq_reasoning}`` or None."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ItemError(item_id, BAD_REWARD, f"expected a VIEScore object, got {type(value).__name__}", field)
    missing = [k for k in ("sc", "pq", "o", "sc_scores", "pq_scores") if k not in value]
    if missing:
        raise ItemError(item_id, BAD_REWARD, f"VIEScore lacks {', '.join(missing)}", field)
    reasoning = {}
    for key in ("sc_reasoning", "pq_reasoning"):
        text = value.get(key)
        reasoning[key] = None if text is None else _text(text, item_id=item_id, field=field, what=key)
    return {
        **{k: _score(value[k], VIESCORE_RANGE, item_id=item_id, field=field, what=k) for k in ("sc", "pq", "o")},
        "sc_scores": _score_list(value["sc_scores"], item_id=item_id, field=field, what="sc_scores"),
        "pq_scores": _score_list(value["pq_scores"], item_id=item_id, field=field, what="pq_scores"),
        **reasoning,
    }


def metrics(values: Mapping[str, Any] | None, *, item_id: str, field: str = "metrics") -> dict | None:
    """The six similarity metrics (float or None each); None when the source has none of them.

    NaN counts as missing: a metric that could not be computed is not a number to average.
    """
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise ItemError(item_id, BAD_FIELD, f"metrics must be an object, got {type(values).__name__}", field)
    result = {}
    for name in METRIC_NAMES:
        value = values.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            result[name] = None
        elif _is_number(value):
            result[name] = float(value)
        else:
            raise ItemError(item_id, BAD_FIELD, f"{name} must be a number, got {value!r}", field)
    return None if all(v is None for v in result.values()) else result
