"""The annotation engine: judge every triplet of a source once, resumably, and write the output.

Two phases:

1. **Judge.** Direct mode: ``concurrency`` workers take triplets in order, prepare the two
   images (downscaled, see :mod:`.images`), look the request's key up in the cache and, when
   it is not there, ask the judge (:mod:`.client`) and store the answer at once. Batch mode:
   every uncached request goes into Batch API files (:mod:`.batch`); the results are merged into
   the same cache, and requests that failed in a way a new batch may fix go in another round.
2. **Write.** The output is written in input order, one line per input record, atomically (a
   ``.partial`` file renamed at the end): the record's fields, ``rewards`` (None when missing),
   ``judge`` ({model, rubric, rubric_version}), ``usage`` (tokens of the answer; for a missing
   item, of every attempt) and ``error`` when rewards is None.

Killed at any moment, a run loses no answer that had arrived: the cache has it, and running the
same command again only asks for what is not in the cache.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from editforge.errors import EditforgeError, UsageError
from editforge.vocabulary import MULTI_REWARD as MULTI_REWARD_NAME

from ..manifest import write_manifest
from .cache import AnswerCache, cache_key, default_cache_path
from .client import DEFAULT_MODEL, JudgeClient, JudgeOutcome, RetryPolicy, Usage
from .images import DEFAULT_MAX_SIDE, ImageError, PreparedImage, convert, pass_through, read_image
from .jobs import run_together
from .rubrics import RUBRICS, get_rubric
from .sources import TripletSource, open_source

OUTPUT_FIELDS = ("rewards", "judge", "usage", "error")
# every field a rubric shows the judge an image from (an error naming one is an unreadable image)
IMAGE_FIELDS = tuple(dict.fromkeys(name for rubric in RUBRICS.values() for name in rubric.image_fields))
PENDING, CACHED, JUDGED, FAILED = range(4)


@dataclass
class Pricing:
    """US dollars per million tokens (default: gpt-4o); the Batch API costs ``batch_discount`` of it."""

    input_per_million: float = 2.50
    output_per_million: float = 10.00
    batch_discount: float = 0.5

    def cost(self, usage: Usage, batch: bool = False) -> float:
        dollars = (usage.prompt_tokens * self.input_per_million + usage.completion_tokens * self.output_per_million) / 1e6
        return dollars * (self.batch_discount if batch else 1.0)


@dataclass
class AnnotationReport:
    """What a run did. ``usage``/``cost``: tokens paid in this run (invalid answers included)."""

    total: int = 0
    judged: int = 0
    cached: int = 0
    failed: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    elapsed: float = 0.0
    output: Path | None = None
    batch: bool = False
    model: str = ""
    rubric: str = ""
    errors: Counter = field(default_factory=Counter)

    @property
    def complete(self) -> bool:
        return self.failed == 0

    def summary(self) -> str:
        mode = "batch" if self.batch else "direct"
        rate = self.total / self.elapsed if self.elapsed > 0 else 0.0
        lines = [
            f"{self.total} items in {self.elapsed:.1f} s ({rate:.1f} items/s, {mode}, {self.model}, {self.rubric}): "
            f"{self.judged} judged, {self.cached} from the cache, {self.failed} missing",
        ]
        return "\n".join(lines + cost_lines(self.usage, self.cost, self.errors, self.output))


def cost_lines(usage: Usage, cost: float, errors: Counter, output: Path | None) -> list[str]:
    """The end of a job's summary: tokens and cost, the commonest errors, where it wrote."""
    lines = [f"tokens this run: {usage.prompt_tokens} in + {usage.completion_tokens} out; estimated cost ${cost:.4f}"]
    lines += [f"  {count} x {error}" for error, count in errors.most_common(5)]
    if output is not None:
        lines.append(f"wrote {output}")
    return lines


class MissingRewards(EditforgeError):
    """Some items got no rewards (the output records them with their errors)."""

    def __init__(self, report: AnnotationReport):
        super().__init__(f"{report.failed} of {report.total} items have no rewards: "
                         + "; ".join(f"{n} x {e}" for e, n in report.errors.most_common(3)))
        self.report = report


@dataclass
class _Prepared:
    key: str
    images: list[PreparedImage]  # in the rubric's order (an edit: source, edited)


class _Ledger:
    """Per-item state of a run: cache key, status, and error and usage of missing items."""

    def __init__(self):
        self.keys: list[str | None] = []
        self.status = bytearray()
        self.errors: dict[int, tuple[str, Usage]] = {}

    def add(self) -> int:
        self.keys.append(None)
        self.status.append(PENDING)
        return len(self.keys) - 1

    def fail(self, index: int, error: str, usage: Usage | None = None) -> None:
        self.status[index] = FAILED
        self.errors[index] = (error, usage or Usage())


def _short(error: str) -> str:
    """An error reduced to its kind, for the report's tally."""
    if not error:
        return "unknown"
    if error.startswith(IMAGE_FIELDS):
        return "unreadable image"
    return error.split(";")[0].split(": ")[0]


class Annotator:
    """Judges the triplets of a source with one client and one cache."""

    def __init__(self, client: JudgeClient, cache: AnswerCache, *, concurrency: int = 16,
                 max_side: int = DEFAULT_MAX_SIDE, progress: bool = True, pricing: Pricing | None = None):
        if concurrency < 1:
            raise UsageError(f"concurrency must be 1 or more, got {concurrency}")
        self.client, self.cache = client, cache
        self.concurrency, self.max_side, self.progress = concurrency, max_side, progress
        self.pricing = pricing or Pricing()
        rubric = client.rubric
        self.judge_info = {"model": client.model, "rubric": rubric.name, "rubric_version": rubric.version}

    # One item --------------------------------------------------------------------------------

    def _key(self, record: dict, images: list[PreparedImage]) -> _Prepared:
        info = self.judge_info
        key = cache_key(info["model"], info["rubric"], info["rubric_version"], record["instruction"],
                        *(image.data for image in images))
        return _Prepared(key, images)

    def _read(self, source: TripletSource, record: dict) -> list:
        """The rubric's images, each as a PreparedImage when it can be sent as it is, else as read."""
        images = []
        for name in self.client.rubric.image_fields:
            try:
                raw = read_image(source.load_image(record, name))
                images.append((isinstance(raw, bytes) and pass_through(raw, self.max_side)) or raw)
            except ImageError as err:
                raise ImageError(f"{name} {record.get(name)!r}: {err}") from None
        return images

    def _convert(self, record: dict, images: list) -> list[PreparedImage]:
        converted = []
        for name, image in zip(self.client.rubric.image_fields, images):
            try:
                converted.append(image if isinstance(image, PreparedImage) else convert(image, self.max_side))
            except ImageError as err:
                raise ImageError(f"{name} {record.get(name)!r}: {err}") from None
        return converted

    def prepare(self, source: TripletSource, record: dict) -> _Prepared:
        """The images as sent and the request's cache key. Raises ImageError naming the field."""
        return self._key(record, self._convert(record, self._read(source, record)))

    async def prepare_async(self, source: TripletSource, record: dict, pool) -> _Prepared:
        """As :meth:`prepare`; images that must be converted (too large, another format) are
        converted in ``pool`` so the event loop keeps serving the requests in flight."""
        images = self._read(source, record)
        if not all(isinstance(image, PreparedImage) for image in images):
            images = await asyncio.get_running_loop().run_in_executor(pool, self._convert, record, images)
        return self._key(record, images)

    def _store(self, key: str, rewards: dict, usage: Usage) -> None:
        self.cache.put(key, rewards=rewards, prompt_tokens=usage.prompt_tokens,
                       completion_tokens=usage.completion_tokens, **self.judge_info)

    def _bar(self, total: int | None, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="item", disable=not self.progress, dynamic_ncols=True)

    # Direct mode -----------------------------------------------------------------------------

    async def _judge_one(self, index: int, record: dict, prepared: _Prepared, ledger: _Ledger,
                         report: AnnotationReport, in_flight: dict[str, asyncio.Future]) -> None:
        """Answer one item from the cache, from the same request in flight for another item, or
        by asking the judge (and storing the answer at once)."""
        key = prepared.key
        if key in in_flight:
            outcome = await asyncio.shield(in_flight[key])
            if outcome.rewards is not None:
                ledger.status[index] = CACHED
            else:
                ledger.fail(index, outcome.error)
            return
        if key in self.cache:
            ledger.status[index] = CACHED
            return
        waiting = in_flight[key] = asyncio.get_running_loop().create_future()
        outcome = JudgeOutcome(rewards=None, error="the request was interrupted")
        try:
            body = self.client.request_body(record["instruction"], *prepared.images)
            outcome = await self.client.judge(body)
            report.usage += outcome.usage
            if outcome.rewards is not None:
                self._store(key, outcome.rewards, outcome.answer_usage)
                ledger.status[index] = JUDGED
            else:
                ledger.fail(index, outcome.error, outcome.usage)
        finally:  # items waiting for this request never hang, whatever happened to it
            waiting.set_result(outcome)
            del in_flight[key]

    async def judge_direct(self, source: TripletSource, report: AnnotationReport) -> _Ledger:
        ledger = _Ledger()
        queue: asyncio.Queue = asyncio.Queue(maxsize=2 * self.concurrency)
        tally = Counter()
        in_flight: dict[str, asyncio.Future] = {}  # key -> the outcome of the request being asked

        async def produce():
            for record in source.records():
                await queue.put((ledger.add(), record))
            for _ in range(self.concurrency):
                await queue.put(None)

        async def work(pool, bar):
            while (item := await queue.get()) is not None:
                index, record = item
                try:
                    prepared = await self.prepare_async(source, record, pool)
                except ImageError as err:
                    ledger.fail(index, str(err))
                else:
                    ledger.keys[index] = prepared.key
                    await self._judge_one(index, record, prepared, ledger, report, in_flight)
                tally[ledger.status[index]] += 1
                bar.set_postfix_str(f"cached={tally[CACHED]} failed={tally[FAILED]}", refresh=False)
                bar.update(1)

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="annotate-images") as pool, \
                self._bar(source.total, "annotate") as bar:
            await run_together([produce()] + [work(pool, bar) for _ in range(self.concurrency)])
        return ledger

    # Batch mode ------------------------------------------------------------------------------

    async def judge_batch(self, source: TripletSource, report: AnnotationReport, runner, rounds: int) -> _Ledger:
        from .batch import BatchResults

        results = BatchResults()
        open_batches = runner.open_batches()
        if open_batches:  # an earlier run's batches: merge them before deciding what to submit
            results.update(await runner.wait(open_batches))

        ledger = _Ledger()
        retry: set[str] | None = None  # None: the first round, every uncached item
        for round_number in range(1, rounds + 1):
            submitted: set[str] = set()
            with runner.files() as files, self._bar(source.total, f"prepare (round {round_number})") as bar:
                for index, record in enumerate(source.records()):
                    if round_number == 1:
                        ledger.add()
                    bar.update(1)
                    if ledger.status[index] == FAILED or (retry is not None and ledger.keys[index] not in retry):
                        continue
                    try:
                        prepared = self.prepare(source, record)
                    except ImageError as err:
                        ledger.fail(index, str(err))
                        continue
                    key = ledger.keys[index] = prepared.key
                    if key in self.cache:
                        if round_number == 1 and key not in results.answered:
                            ledger.status[index] = CACHED
                        continue
                    if key not in submitted:
                        files.add(key, self.client.request_body(record["instruction"], *prepared.images))
                        submitted.add(key)
            if not submitted:
                break
            batch_ids = await runner.submit(files)
            results.update(await runner.wait([b for b in runner.open_batches() if b.id in batch_ids]))
            retry = {k for k, (_, retryable) in results.errors.items() if retryable} & submitted
            if not retry:
                break

        report.usage += results.usage
        for index, key in enumerate(ledger.keys):
            if ledger.status[index] != PENDING:
                continue
            if key in self.cache:
                ledger.status[index] = JUDGED
            else:
                error = results.errors.get(key, ("no answer", False))[0]
                ledger.fail(index, error, results.item_usage.get(key))
        return ledger

    # Output ----------------------------------------------------------------------------------

    def outputs(self, source: TripletSource, ledger: _Ledger, out_dir: Path) -> Iterator[dict]:
        """The output records, in input order."""
        for index, record in enumerate(source.records()):
            out = {k: v for k, v in source.relocate(record, out_dir).items() if k not in OUTPUT_FIELDS}
            cached = self.cache.get(ledger.keys[index]) if ledger.status[index] != FAILED else None
            if cached is not None:
                out.update(rewards=cached.rewards, judge=self.judge_info,
                           usage={"prompt_tokens": cached.prompt_tokens, "completion_tokens": cached.completion_tokens})
            else:
                error, usage = ledger.errors.get(index, ("no answer", Usage()))
                out.update(rewards=None, judge=self.judge_info, usage=usage.as_dict(), error=error)
            yield out

    async def annotate(self, source: TripletSource, out: str | os.PathLike, *, batch: bool = False,
                       runner=None) -> AnnotationReport:
        """Judge every triplet of ``source`` and write the output file ``out``."""
        out = Path(out)
        start = time.perf_counter()
        report = AnnotationReport(batch=batch, model=self.client.model, rubric=self.client.rubric.name)
        if batch:
            ledger = await self.judge_batch(source, report, runner, rounds=self.client.policy.max_invalid_answers)
        else:
            ledger = await self.judge_direct(source, report)
        out.parent.mkdir(parents=True, exist_ok=True)
        report.total = write_manifest(out, self.outputs(source, ledger, out.parent))
        report.output = out
        report.judged = ledger.status.count(JUDGED)
        report.cached = ledger.status.count(CACHED)
        report.failed = ledger.status.count(FAILED)
        report.errors = Counter(_short(e) for e, _ in ledger.errors.values())
        report.cost = self.pricing.cost(report.usage, batch=batch)
        report.elapsed = time.perf_counter() - start
        return report


def resolve_endpoint(base_url: str | None) -> tuple[str | None, str]:
    """(base_url, api_key) of a remote judge: the given URL or ``OPENAI_BASE_URL``, the key from
    ``OPENAI_API_KEY`` only; a local endpoint without a key gets the placeholder ``EMPTY``.
    UsageError when there is neither a key nor a URL."""
    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    api_key = os.environ.get("OPENAI_API_KEY") or None
    if api_key is None:
        if base_url is None:
            raise UsageError("OPENAI_API_KEY is not set (or use --base-url for a local endpoint, "
                             "or --judge oracle for the built-in judge)")
        api_key = "EMPTY"  # local OpenAI-compatible servers (vLLM, Ollama) take any key
    return base_url, api_key


def annotate_source(source: TripletSource, out: str | os.PathLike, *, rubric: str = MULTI_REWARD_NAME,
                    judge: str | None = None, base_url: str | None = None, model: str | None = None,
                    concurrency: int = 16, cache: str | os.PathLike | None = None,
                    max_side: int = DEFAULT_MAX_SIDE, batch: bool = False, allow_missing: bool = False,
                    progress: bool = True, pricing: Pricing | None = None, policy: RetryPolicy | None = None,
                    poll_interval: float = 30.0) -> AnnotationReport:
    """Annotate a :class:`TripletSource` (see :func:`annotate_manifest` for the arguments)."""
    rubric = get_rubric(rubric)
    if judge not in (None, "oracle"):
        raise UsageError(f"unknown built-in judge {judge!r}; the only one is 'oracle'")
    if judge == "oracle" and base_url:
        raise UsageError("--judge oracle serves its own endpoint; leave out --base-url")
    cache_path = Path(cache) if cache is not None else default_cache_path()

    async def run(base_url: str | None, api_key: str | None, model: str) -> AnnotationReport:
        client = JudgeClient(rubric, model=model, base_url=base_url, api_key=api_key, policy=policy,
                             connections=concurrency)
        with AnswerCache(cache_path) as answers:
            try:
                annotator = Annotator(client, answers, concurrency=concurrency, max_side=max_side,
                                      progress=progress, pricing=pricing)
                runner = None
                if batch:
                    from .batch import BatchRunner

                    runner = BatchRunner(client, answers, cache_path.parent / "batches",
                                         poll_interval=poll_interval, progress=progress)
                return await annotator.annotate(source, out, batch=batch, runner=runner)
            finally:
                await client.aclose()

    if judge == "oracle":
        from .server import ORACLE_MODEL, serve_oracle

        # The loopback judge needs no key: a placeholder, so a real OPENAI_API_KEY never leaves.
        with serve_oracle() as oracle_url:
            report = asyncio.run(run(oracle_url, "loopback-oracle", model or ORACLE_MODEL))
    else:
        report = asyncio.run(run(*resolve_endpoint(base_url), model or DEFAULT_MODEL))
    if report.failed and not allow_missing:
        raise MissingRewards(report)
    return report


def annotate_manifest(manifest: str | os.PathLike, out: str | os.PathLike, **kwargs) -> AnnotationReport:
    """Judge every triplet of a manifest (file, or folder holding ``manifest.jsonl``), or of a
    canonical dataset folder (``config``, ``split``), into ``out``.

    Keyword arguments: ``rubric`` ("multi-reward" or "viescore-edit"), ``judge`` ("oracle" for
    the built-in loopback judge, or None for ``base_url``/``OPENAI_BASE_URL`` with
    ``OPENAI_API_KEY``), ``model`` (default gpt-4o; the oracle's own name with ``judge="oracle"``),
    ``concurrency`` (16), ``cache`` (SQLite path; default ``~/.cache/editforge/annotations.sqlite``),
    ``max_side`` (768), ``batch`` (False: the Batch API instead of direct requests),
    ``allow_missing`` (False: raise :class:`MissingRewards` after writing the output when an item
    has no rewards), ``progress``, ``pricing`` (:class:`Pricing`), ``policy``
    (:class:`RetryPolicy`), ``poll_interval`` (seconds between batch polls).
    """
    config, split = kwargs.pop("config", None), kwargs.pop("split", "train")
    return annotate_source(open_source(manifest, config=config, split=split), out, **kwargs)
