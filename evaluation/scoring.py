"""From judge answers to figures: per-item metric values, per-group figures, bootstrap intervals.

Every figure is a ratio of sums over the judged (item, seed) rows, so one definition gives the
value, the per-seed values and the bootstrap interval (items resampled with all their seeds):

multi-reward (Multi-Reward as Condition)
    ``following_accuracy`` share with instruction following IF = 5; ``not_edited`` share with
    IF = 0 (the judge saw no edit); ``dp_when_following`` mean detail preserving of the rows with
    IF = 5; ``mean_<perspective>`` the mean score of each perspective (0..5).
viescore-edit (VIEScore, as GEdit-Bench reports it)
    ``sc``, ``pq``, ``o``: the means of the per-item scores (0..10; O = sqrt(SC * PQ) per item).
t2i-alignment (text-to-image suites)
    ``alignment_accuracy`` share of images with alignment 5 (all of the prompt, as asked);
    ``mean_alignment`` the mean score (0..5).

With ``--metrics``, UltraEdit's quality metrics (``clip_sim_dir``, ``dinov2_sim``, ``ssim``...) are
figures too: the mean over the edits that have the value (caption metrics need captions).

A row whose answer is missing is counted (``missing``) and left out of every judge figure, never scored.
"""

from __future__ import annotations

from collections.abc import Callable

from editforge.vocabulary import (
    ALIGNMENT,
    MAX_REWARD,
    METRIC_NAMES,
    MIN_REWARD,
    MULTI_REWARD,
    PERSPECTIVES,
    T2I_ALIGNMENT,
    VIESCORE_EDIT,
    VIESCORE_SCORES,
)

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

# figure -> (numerator, denominator) of one row's metric values
Figure = tuple[Callable[[dict], float], Callable[[dict], float]]
IF, DP = PERSPECTIVES[0], PERSPECTIVES[1]

FIGURES: dict[str, dict[str, Figure]] = {
    MULTI_REWARD: {
        "following_accuracy": (lambda m: float(m[IF] == MAX_REWARD), lambda m: 1.0),
        "not_edited": (lambda m: float(m[IF] == MIN_REWARD), lambda m: 1.0),
        "dp_when_following": (lambda m: m[DP] * (m[IF] == MAX_REWARD), lambda m: float(m[IF] == MAX_REWARD)),
        **{f"mean_{p}": ((lambda m, p=p: float(m[p])), (lambda m: 1.0)) for p in PERSPECTIVES},
    },
    VIESCORE_EDIT: {name: ((lambda m, name=name: float(m[name])), (lambda m: 1.0)) for name in VIESCORE_SCORES},
    T2I_ALIGNMENT: {
        "alignment_accuracy": (lambda m: float(m[ALIGNMENT] == MAX_REWARD), lambda m: 1.0),
        "mean_alignment": (lambda m: float(m[ALIGNMENT]), lambda m: 1.0),
    },
}
# quality figure -> (numerator, denominator) of one row's ``quality`` values
QUALITY_FIGURES: dict[str, Figure] = {
    name: ((lambda q, name=name: q[name] or 0.0), (lambda q, name=name: float(q[name] is not None)))
    for name in METRIC_NAMES
}
# The figure a report's overview shows, and whether higher is better for each figure.
HEADLINE = {MULTI_REWARD: "following_accuracy", VIESCORE_EDIT: "o", T2I_ALIGNMENT: "alignment_accuracy"}
LOWER_IS_BETTER = {"not_edited"}
SHARES = {"following_accuracy", "not_edited", "alignment_accuracy"}


def metric_values(rubric: str, rewards: dict | None) -> dict | None:
    """One judged row's metric values (what items.jsonl records), or None when the answer is missing."""
    if rewards is None:
        return None
    if rubric == MULTI_REWARD:
        return {p: rewards[p]["score"] for p in PERSPECTIVES}
    if rubric == VIESCORE_EDIT:
        return {name: rewards[name] for name in VIESCORE_SCORES}
    if rubric == T2I_ALIGNMENT:
        return {ALIGNMENT: rewards[ALIGNMENT]["score"]}
    raise ValueError(f"no figures for rubric {rubric!r}")


def _ratio(num, den):
    return None if den == 0 else num / den


def summarize(rows: list[dict], rubric: str, seeds: list[int], *, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Figures of a set of rows (each with ``item``, ``seed`` and ``metrics`` or None)::

        {"items": 12, "rows": 24, "judged": 23, "missing": 1,
         "figures": {"following_accuracy": {"value": 0.5, "ci95": [0.3, 0.7], "per_seed": {"0": 0.5, "1": 0.5}}}}
    """
    from .quality import QUALITY

    judged = [r for r in rows if r.get("metrics") is not None]
    items = sorted({r["item"] for r in rows})
    out = {"items": len(items), "rows": len(rows), "judged": len(judged), "missing": len(rows) - len(judged),
           "figures": {}}
    figures = [(name, figure, "metrics") for name, figure in FIGURES[rubric].items()]
    if any(r.get(QUALITY) is not None for r in rows):
        figures += [(name, figure, QUALITY) for name, figure in QUALITY_FIGURES.items()]
    for name, (numerator, denominator), source in figures:
        out["figures"][name] = _figure([r for r in rows if r.get(source) is not None], source, numerator,
                                       denominator, seeds, resamples)
    return out


def _figure(rows: list[dict], source: str, numerator, denominator, seeds: list[int], resamples: int) -> dict:
    """One figure: the ratio of sums, its bootstrap interval (items resampled) and per-seed values."""
    import numpy as np

    index = {item: i for i, item in enumerate(sorted({r["item"] for r in rows}))}
    num = np.zeros(len(index))
    den = np.zeros(len(index))
    per_seed_sums = {seed: [0.0, 0.0] for seed in seeds}
    for row in rows:
        n, d = numerator(row[source]), denominator(row[source])
        num[index[row["item"]]] += n
        den[index[row["item"]]] += d
        sums = per_seed_sums.setdefault(row["seed"], [0.0, 0.0])
        sums[0] += n
        sums[1] += d
    value = _ratio(num.sum(), den.sum())
    ci = None
    if value is not None and len(index) > 1:
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        picks = rng.integers(0, len(index), size=(resamples, len(index)))
        nums, dens = num[picks].sum(axis=1), den[picks].sum(axis=1)
        stats = nums[dens > 0] / dens[dens > 0]
        if len(stats):
            ci = [round(float(np.percentile(stats, 2.5)), 4), round(float(np.percentile(stats, 97.5)), 4)]
    return {
        "value": None if value is None else round(float(value), 4),
        "ci95": ci,
        "per_seed": {str(seed): (None if (v := _ratio(*per_seed_sums[seed])) is None else round(float(v), 4))
                     for seed in sorted(per_seed_sums)},
    }


def score_model(rows: list[dict], suite, rubric: str, seeds: list[int]) -> dict:
    """``{subset: {group: summary}}`` for one model's rows, every subset with its groups and ``all``."""
    from .suites import ALL

    by_id = {item.id: item for item in suite.items}
    order = suite.group_order()
    result = {}
    for subset, member in suite.subsets.items():
        chosen = [r for r in rows if r["item"] in by_id and member(by_id[r["item"]])]
        groups = {group: summarize([r for r in chosen if by_id[r["item"]].group == group], rubric, seeds)
                  for group in order if any(by_id[r["item"]].group == group for r in chosen)}
        if ALL not in groups:
            groups[ALL] = summarize(chosen, rubric, seeds)
        result[subset] = groups
    return result
