"""InstructEngine's prompt generation: base prompts per subtopic of a taxonomy and a contrasting
variant per axis, from any OpenAI-compatible LLM, written as a Hub-ready dataset of prompt pairs.

    from editforge.dataset_builders.prompts import generate_prompts

    report = generate_prompts("synthetic", "prompts")          # the built-in synthetic-world writer
    report = generate_prompts("instructengine", "prompts", base_url="https://api.openai.com/v1")
    print(report.summary())

One request per (theme, subtopic) (:mod:`.request_format`) goes through the project's judge
client and answer cache (:func:`~editforge.dataset_builders.annotation.ask_all`): bounded
concurrency, retries, every valid answer stored as it arrives (killed and run again, only what
had not arrived is asked), or the Batch API; tokens and cost are counted. Without ``base_url`` the
built-in writer (:mod:`.synthetic_writer`) answers from a loopback server started in-process:
the same client path, no key, no network.

Then, in taxonomy order:

- a subtopic without a valid answer (after the client's retries) is *missing*: its pairs are not
  written and it is listed with its error; nothing is made up for it;
- a base prompt that is a near-duplicate (:mod:`.near_duplicates`) of a base prompt kept before it
  is removed with its variants;
- a variant with the same words as its base prompt is no contrast: that pair is missing.

The dataset (``load_dataset(OUT)``) has one row per (base prompt, axis), in
:data:`PROMPT_FEATURES`; ``OUT/generation.json`` lists every missing item and removed
near-duplicate, and the card counts them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import Features, Value

from editforge.errors import EditforgeError, UsageError

from ..annotation.cache import AnswerCache, cache_key, default_cache_path
from ..annotation.client import DEFAULT_MODEL, JudgeClient, RetryPolicy, Usage
from ..annotation.engine import Pricing, cost_lines, resolve_endpoint
from ..annotation.jobs import JobAnswers, ask_all
from .near_duplicates import DEFAULT_THRESHOLD, NearDuplicates, words
from .request_format import BASE, PromptFormat
from .taxonomy import Taxonomy, load_taxonomy

# One row per (base prompt, contrast axis). ``contrast`` holds the axis, as in the preference
# pairs' features (editforge.dataset_builders.features.PAIR_FEATURES), whose ``pair_id`` this is.
PROMPT_FEATURES = Features({
    "pair_id": Value("string"),
    "theme": Value("string"),
    "subtopic": Value("string"),
    "contrast": Value("string"),
    "base_prompt": Value("string"),
    "contrast_prompt": Value("string"),
    "model": Value("string"),
})
DEFAULT_PER_SUBTOPIC = 5
# Completion tokens budgeted per prompt of an answer (a prompt is one sentence; JSON around it).
TOKENS_PER_PROMPT = 80
REPORT_NAME = "generation.json"
SPLIT = "train"
FORMAT = "generate-prompts"  # the split's format, as the folder's build stats record it
LOOPBACK_KEY = "loopback-synthetic-writer"  # a placeholder: a real OPENAI_API_KEY never leaves
NOT_A_CONTRAST = "the variant has the same words as its base prompt (no contrast)"


@dataclass
class GenerationReport:
    """What a run did. ``usage``/``cost``: tokens paid in this run (invalid answers included);
    ``answer_usage``: tokens of the answers the dataset is made of, from this run or the cache."""

    taxonomy: str = ""
    model: str = ""
    endpoint: str = ""
    per_subtopic: int = DEFAULT_PER_SUBTOPIC
    axes: tuple[str, ...] = ()
    seed: int = 0
    threshold: float = DEFAULT_THRESHOLD
    batch: bool = False
    subtopics: int = 0
    asked: int = 0
    cached: int = 0
    missing_subtopics: int = 0
    base_prompts: int = 0
    near_duplicates: int = 0
    not_contrasting: int = 0
    pairs: int = 0
    pairs_per_axis: dict = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    usage: Usage = field(default_factory=Usage)
    answer_usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    elapsed: float = 0.0
    output: Path | None = None

    @property
    def complete(self) -> bool:
        return self.missing_subtopics == 0

    def summary(self) -> str:
        mode = "batch" if self.batch else "direct"
        lines = [
            f"{self.subtopics} subtopics in {self.elapsed:.1f} s ({mode}, {self.model}): {self.asked} answered, "
            f"{self.cached} from the cache, {self.missing_subtopics} missing",
            f"{self.base_prompts} base prompts: {self.near_duplicates} near-duplicates removed "
            f"(word-trigram Jaccard >= {self.threshold:g}); {self.pairs} pairs written, {self.not_contrasting} "
            f"variants missing as no contrast",
        ]
        return "\n".join(lines + cost_lines(self.usage, self.cost, self.errors, self.output))

    def to_dict(self) -> dict:
        """The report as JSON, without the output's local path (it goes into the published folder)."""
        data = {k: v for k, v in asdict(self).items() if k != "output"}
        data.update(axes=list(self.axes), errors=dict(self.errors), usage=self.usage.as_dict(),
                    answer_usage=self.answer_usage.as_dict())
        return data


class MissingPrompts(EditforgeError):
    """Some subtopics got no valid answer (the output lists them with their errors)."""

    def __init__(self, report: GenerationReport):
        super().__init__(f"{report.missing_subtopics} of {report.subtopics} subtopics have no valid answer: "
                         + "; ".join(f"{n} x {e}" for e, n in report.errors.most_common(3)))
        self.report = report


@dataclass(frozen=True)
class _Subtopic:
    theme: str
    subtopic: str
    key: str


def _short(error: str) -> str:
    """An error reduced to its kind, for the report's tally."""
    return error.split(";")[0].split(": ")[0] if error else "unknown"


def pair_id(theme: str, subtopic: str, base_prompt: str, axis: str) -> str:
    """A stable id of a (base prompt, axis) pair: 16 hex digits of a SHA-256."""
    return hashlib.sha256("\n".join((theme, subtopic, base_prompt, axis)).encode()).hexdigest()[:16]


def _requests(client: JudgeClient, taxonomy: Taxonomy, prompt_format: PromptFormat, seed: int):
    """({cache key: request body}, the subtopics in taxonomy order with their keys)."""
    requests, subtopics = {}, []
    for theme, subtopic in taxonomy.subtopics():
        body = client.chat_body(prompt_format.messages(theme, subtopic), seed=seed)
        key = cache_key(client.model, prompt_format.name, prompt_format.version,
                        json.dumps(body, sort_keys=True, ensure_ascii=False))
        requests[key] = body
        subtopics.append(_Subtopic(theme, subtopic, key))
    return requests, subtopics


def assemble(subtopics: list[_Subtopic], job: JobAnswers, axes: tuple[str, ...], model: str,
             threshold: float, report: GenerationReport) -> tuple[list[dict], list[dict], list[dict]]:
    """(rows, missing items, removed near-duplicates) from the answers, in taxonomy order; the
    counts go into ``report``."""
    answered = [(s, item) for s in subtopics if s.key in job.answers for item in job.answers[s.key]["prompts"]]
    dedupe = NearDuplicates([item[BASE] for _, item in answered], threshold)
    rows, missing, removed = [], [], []
    for s in subtopics:
        if s.key not in job.answers:
            missing.append({"theme": s.theme, "subtopic": s.subtopic, "contrast": None, "base_prompt": None,
                            "error": job.errors[s.key]})
    for s, item in answered:
        base = item[BASE]
        kept = dedupe.match(base)
        if kept is not None:
            removed.append({"theme": s.theme, "subtopic": s.subtopic, "base_prompt": base, "near_duplicate_of": kept})
            continue
        for axis in axes:
            if words(item[axis]) == words(base):
                missing.append({"theme": s.theme, "subtopic": s.subtopic, "contrast": axis, "base_prompt": base,
                                "error": NOT_A_CONTRAST})
                continue
            rows.append({"pair_id": pair_id(s.theme, s.subtopic, base, axis), "theme": s.theme,
                         "subtopic": s.subtopic, "contrast": axis, "base_prompt": base,
                         "contrast_prompt": item[axis], "model": model})
    report.missing_subtopics = sum(s.key not in job.answers for s in subtopics)
    report.base_prompts = len(answered)
    report.near_duplicates = len(removed)
    report.not_contrasting = len(missing) - report.missing_subtopics
    report.pairs = len(rows)
    report.pairs_per_axis = dict(Counter(row["contrast"] for row in rows))
    report.errors = Counter(_short(job.errors[s.key]) for s in subtopics if s.key not in job.answers)
    return rows, missing, removed


def _write_json(path: Path, data) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


def write_prompt_dataset(out: Path, rows: list[dict], missing: list[dict], removed: list[dict],
                         report: GenerationReport) -> None:
    """``rows`` as the ``train`` split of ``out`` (one Parquet shard), ``generation.json`` and the card.

    The README, rewritten last, is the commit point (:class:`~editforge.dataset_builders.hub_folder.HubFolder`).
    """
    from datasets.arrow_writer import ParquetWriter

    from ..build_stats import BuildStats
    from ..hub_folder import DEFAULT_CONFIG, HubFolder
    from .card import render_prompt_card

    folder = HubFolder(out)
    folder.check_features(DEFAULT_CONFIG, PROMPT_FEATURES)
    staging = folder.staging_dir(DEFAULT_CONFIG, SPLIT)
    shard = staging / "prompts.parquet"
    writer = ParquetWriter(features=PROMPT_FEATURES, path=str(shard))
    try:
        for row in rows:
            writer.write(PROMPT_FEATURES.encode_example(row))
        num_examples, num_bytes = writer.finalize()
    finally:
        writer.close()
    data = report.to_dict()
    _write_json(out / REPORT_NAME, {**data, "missing": missing, "near_duplicates_removed": removed})
    stats = BuildStats(kind=FORMAT, num_examples=num_examples, sources=Counter({report.model: num_examples}),
                       themes=Counter(row["theme"] for row in rows))
    folder.publish(config=DEFAULT_CONFIG, split=SPLIT, format=FORMAT, shards=[shard], features=PROMPT_FEATURES,
                   num_bytes=num_bytes, stats=stats,
                   render_card=lambda records: render_prompt_card(data, missing, removed, title=out.resolve().name))
    shutil.rmtree(staging, ignore_errors=True)


def _axes(taxonomy: Taxonomy, axes) -> tuple[str, ...]:
    axes = tuple(axes) if axes else taxonomy.contrasts
    outside = [a for a in axes if a not in taxonomy.contrasts]
    if outside:
        raise UsageError(f"contrast axis {outside[0]!r} is not one of the taxonomy {taxonomy.name!r}'s "
                         f"({', '.join(taxonomy.contrasts)})")
    return axes


def generate_prompts(taxonomy: str | os.PathLike | Taxonomy, out: str | os.PathLike, *,
                     per_subtopic: int = DEFAULT_PER_SUBTOPIC, axes=None, base_url: str | None = None,
                     model: str | None = None, concurrency: int = 16, cache: str | os.PathLike | None = None,
                     batch: bool = False, seed: int = 0, threshold: float = DEFAULT_THRESHOLD,
                     pricing: Pricing | None = None, policy: RetryPolicy | None = None, poll_interval: float = 30.0,
                     allow_missing: bool = False, progress: bool = True) -> GenerationReport:
    """Write base prompts and contrasting variants for every subtopic of ``taxonomy`` (a built-in
    name, a JSON file or a :class:`Taxonomy`) as a dataset folder ``out``.

    ``per_subtopic`` base prompts per subtopic, a variant per axis of ``axes`` (default: the
    taxonomy's contrasts). ``base_url``: an OpenAI-compatible endpoint, its key from
    ``OPENAI_API_KEY`` only; None: the built-in synthetic-world writer. ``model`` (default gpt-4o,
    or the built-in writer's name), ``concurrency``, ``cache`` (SQLite; default
    ``~/.cache/editforge/annotations.sqlite``), ``batch`` (the Batch API), ``seed`` (sent with
    every request), ``threshold`` (near-duplicate word-trigram Jaccard), ``pricing``, ``policy``,
    ``poll_interval`` as for :func:`~editforge.dataset_builders.annotation.annotate_manifest`.
    ``allow_missing`` False: raise :class:`MissingPrompts` (after writing what there is) when a
    subtopic has no valid answer.
    """
    start = time.perf_counter()
    taxonomy = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(taxonomy)
    prompt_format = PromptFormat(per_subtopic, _axes(taxonomy, axes))
    if not 0 < threshold <= 1:
        raise UsageError(f"the near-duplicate threshold must be in (0, 1], got {threshold:g}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if concurrency < 1:
        raise UsageError(f"concurrency must be 1 or more, got {concurrency}")
    policy = policy or RetryPolicy()
    pricing = pricing or Pricing()
    cache_path = Path(cache) if cache is not None else default_cache_path()
    tokens = max(1024, TOKENS_PER_PROMPT * per_subtopic * (1 + len(prompt_format.axes)))

    async def run(url: str | None, api_key: str, model_name: str):
        client = JudgeClient(prompt_format, model=model_name, base_url=url, api_key=api_key, policy=policy,
                             connections=concurrency, max_completion_tokens=tokens)
        try:
            with AnswerCache(cache_path) as answers:
                requests, subtopics = _requests(client, taxonomy, prompt_format, seed)
                runner = None
                if batch:
                    from ..annotation.batch import BatchRunner

                    runner = BatchRunner(client, answers, cache_path.parent / "batches", poll_interval=poll_interval,
                                         progress=progress)
                job = await ask_all(client, answers, requests, concurrency=concurrency, runner=runner,
                                    rounds=policy.max_invalid_answers, progress=progress, desc="generate-prompts")
                return job, subtopics
        finally:
            await client.aclose()

    if base_url is None:
        from ..annotation.server import serve
        from .synthetic_writer import SYNTHETIC_WRITER_MODEL, SyntheticPromptWriter

        model = model or SYNTHETIC_WRITER_MODEL
        endpoint = "the built-in synthetic-world writer (loopback)"
        with serve(SyntheticPromptWriter(), model=SYNTHETIC_WRITER_MODEL) as url:
            job, subtopics = asyncio.run(run(url, LOOPBACK_KEY, model))
    else:
        model = model or DEFAULT_MODEL
        endpoint = "an OpenAI-compatible endpoint"
        job, subtopics = asyncio.run(run(*resolve_endpoint(base_url), model))

    report = GenerationReport(taxonomy=taxonomy.name, model=model, endpoint=endpoint, per_subtopic=per_subtopic,
                              axes=prompt_format.axes, seed=seed, threshold=threshold, batch=batch,
                              subtopics=len(subtopics), asked=job.asked, cached=job.cached, usage=job.usage,
                              answer_usage=job.answer_usage, cost=pricing.cost(job.usage, batch=batch))
    rows, missing, removed = assemble(subtopics, job, prompt_format.axes, model, threshold, report)
    report.elapsed = time.perf_counter() - start
    if rows:
        report.output = out
        write_prompt_dataset(out, rows, missing, removed, report)
    if report.missing_subtopics and (not allow_missing or not rows):
        raise MissingPrompts(report)
    if not rows:
        raise UsageError(f"no prompt pair to write: every variant of the {report.base_prompts} base prompts "
                         f"has the same words as its base prompt")
    return report
