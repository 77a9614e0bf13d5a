"""InstructEngine's preference pairs: an image for each prompt of every contrasting prompt pair,
each image judged against both prompts, the rules, and the pairs that pass written as a Hub
dataset in the canonical pair features.

    editforge generate-pairs PROMPTS OUT --model T2I

:func:`generate_pairs` is the engine. It takes what makes the images and what judges them as
objects (:class:`ImageMaker`, :class:`Judge`): ``editforge generate-pairs``
(:mod:`editforge.commands.generate_pairs`) gives it the evaluation harness's generation loop over
any diffusers text-to-image pipeline (or ``outputs:PATH``, images made elsewhere) and the
harness's judge thread over the annotation engine (the synthetic world's oracle by default, any
OpenAI-compatible VLM with ``--base-url``), which this layer may not import.

The input is a prompt-pair dataset folder (``editforge generate-prompts``,
:data:`.generation.PROMPT_FEATURES`; ``pair_id``, ``base_prompt`` and ``contrast_prompt`` are
required, ``theme``, ``subtopic`` and ``contrast`` kept when present). For each pair, image A is
made for the base prompt and image B for the contrast prompt (image ids ``<pair_id>-base`` and
``<pair_id>-contrast``; the maker seeds each image from the run's seed and its id, so batching
does not matter). Each image is judged with the ``t2i-alignment`` rubric against both prompts of
its pair: four answers per pair.

The rules (InstructEngine's check, :func:`decide`): a pair is kept only when each image matches
its own prompt better than the other prompt, score(A | base) > score(A | contrast) and
score(B | contrast) > score(B | base). A pair that fails is left out and counted by the image that
failed (``base``, ``contrast`` or ``both``); a pair with any of its four answers missing (the
judge's error after its retries) is left out and counted as missing, never assumed.

Each kept pair gives two rows of :data:`~..features.PAIR_FEATURES` with the same two images and
``pair_id`` (cross-validation alignment): the base prompt preferring image A (``image_0``,
``label_0 = 1``), then the contrast prompt preferring image B (``label_0 = 0``), with the pair's
theme, subtopic and contrast axis. ``load_dataset(OUT)`` reads them; the card counts what was made,
judged, kept, dropped per rule and missing; ``OUT/generation.json`` holds the report and every
pair's seeds, scores and outcome.

Resumable at any point (kill -9 included): the images are written atomically in the hidden work
folder ``OUT/.editforge-staging-default-train`` (kept across runs, left out of uploads) and never
made again; every answer is stored in the judge's answer cache (there, ``answers.sqlite``, unless
the judge has its own) as it arrives and never asked again; a missing answer is asked again by the
next run; the dataset is written at the end. A run with other image settings (model, call
arguments, seed, size) in the same OUT is refused rather than mixed.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from editforge.errors import UsageError
from editforge.vocabulary import ALIGNMENT

from ..build import DEFAULT_MAX_SHARD_SIZE
from ..hub_folder import DEFAULT_CONFIG, HubFolder
from .generation import REPORT_NAME, SPLIT, _write_json

BASE, CONTRAST = "base", "contrast"
SIDES = (BASE, CONTRAST)  # image A is made for the base prompt, image B for the contrast prompt
BOTH = "both"
KEPT, DROPPED, MISSING = "kept", "dropped", "missing"
REQUIRED_COLUMNS = ("pair_id", "base_prompt", "contrast_prompt")
TAXONOMY_COLUMNS = ("theme", "subtopic", "contrast")
FORMAT = "generate-pairs"  # the split's format, as the folder's build stats record it
STATE_NAME = "run.json"    # in the work folder: the settings its images were made with
ANSWER_CACHE = "answers.sqlite"  # in the work folder, unless the judge has its own cache


@dataclass(frozen=True)
class PromptPair:
    """One row of a prompt-pair dataset."""

    pair_id: str
    base_prompt: str
    contrast_prompt: str
    theme: str | None = None
    subtopic: str | None = None
    contrast: str | None = None

    def prompt(self, side: str) -> str:
        return self.base_prompt if side == BASE else self.contrast_prompt

    def image_id(self, side: str) -> str:
        return f"{self.pair_id}-{side}"


class ImageMaker(Protocol):
    """Makes the images of a run (``editforge generate-pairs``: the evaluation harness's generation
    loop over a text-to-image pipeline)."""

    def settings(self) -> dict:
        """What the images depend on (model, call arguments, seed, size), as JSON."""

    def path(self, folder: Path, image_id: str) -> Path:
        """Where the image ``image_id`` is, made or to be made, under the run's work folder."""

    def seed(self, image_id: str) -> int | None:
        """The seed of that image's generator (None: an image made elsewhere)."""

    def make(self, folder: Path, images: list[tuple[str, str]], done: Callable[[list[str]], None], bar) -> None:
        """Make the ``(image id, prompt)`` images, each written atomically at its path, calling
        ``done`` with the ids of every finished batch; ``bar`` (a tqdm) advances per image."""


class Judge(Protocol):
    """Judges images against prompts in the background (``editforge generate-pairs``: the
    evaluation harness's judge thread over the annotation engine and its answer cache)."""

    def settings(self) -> dict:
        """``model``, ``rubric`` and ``endpoint`` for the report; ``oracle``: True for the synthetic
        world's oracle (which reads only the world's prompts)."""

    def session(self, folder: Path, on_answer: Callable[[dict, dict], None]) -> AbstractContextManager:
        """A context manager yielding ``submit(rows)``: each row (``id``, ``instruction``: the
        prompt, ``edited_image``: the image's path) is judged with ``t2i-alignment`` and
        ``on_answer(row, judged)`` gets the annotation engine's record (``rewards``, or None and
        ``error``); leaving the block waits for every answer. Answers are cached in
        ``folder / ANSWER_CACHE`` unless the judge has its own cache."""


@dataclass
class PairReport:
    """What a run did (also ``generation.json``, with every pair's record)."""

    prompts: str = ""
    images: dict = field(default_factory=dict)  # the image maker's settings
    judge: dict = field(default_factory=dict)   # the judge's settings
    pairs: int = 0
    made: int = 0         # images made by this run
    reused: int = 0       # images an earlier run had made
    answers: int = 0      # valid answers (four per pair), from the judge or its cache
    missing_answers: int = 0
    kept: int = 0
    dropped: dict = field(default_factory=lambda: {BASE: 0, CONTRAST: 0, BOTH: 0})
    missing: int = 0      # pairs with a missing answer
    rows: int = 0
    errors: Counter = field(default_factory=Counter)
    elapsed: float = 0.0
    output: Path | None = None

    def summary(self) -> str:
        dropped = sum(self.dropped.values())
        return "\n".join([
            f"{self.pairs} pairs in {self.elapsed:.1f} s: {self.made} images made, {self.reused} made before; "
            f"{self.answers} answers, {self.missing_answers} missing",
            f"{self.kept} kept ({self.rows} rows), {dropped} dropped (base image {self.dropped[BASE]}, contrast image "
            f"{self.dropped[CONTRAST]}, both {self.dropped[BOTH]}), {self.missing} missing an answer"
            + (f" ({', '.join(f'{n} x {e}' for e, n in self.errors.most_common(3))})" if self.errors else ""),
        ] + ([f"wrote {self.output}"] if self.output else []))

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "output"}
        data["errors"] = dict(self.errors)
        return data


def read_prompt_pairs(prompts) -> list[PromptPair]:
    """The pairs of a prompt-pair dataset folder (its ``train`` split); UsageError naming the
    folder, or the row, when it cannot be used."""
    path = Path(prompts)
    if not path.is_dir():
        raise UsageError(f"{path} is not a prompt-pair dataset folder (editforge generate-prompts writes one)")
    from datasets import load_dataset

    try:
        dataset = load_dataset(str(path), split=SPLIT)
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; one line naming the folder
        raise UsageError(f"{path}: cannot read a prompt-pair dataset ({type(err).__name__}: "
                         f"{' '.join(str(err).split())})") from None
    absent = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if absent:
        raise UsageError(f"{path} is not a prompt-pair dataset: no column {', '.join(absent)} (it has "
                         f"{', '.join(dataset.column_names)}; editforge generate-prompts writes one)")
    columns = [c for c in REQUIRED_COLUMNS + TAXONOMY_COLUMNS if c in dataset.column_names]
    pairs, seen = [], set()
    for index, row in enumerate(dataset.select_columns(columns).to_list()):
        name = f"{path}, row {index}"
        for column in REQUIRED_COLUMNS:
            if not isinstance(row[column], str) or not row[column].strip():
                raise UsageError(f"{name}: {column} is empty")
        if row["pair_id"] in seen:
            raise UsageError(f"{name}: pair_id {row['pair_id']!r} appears twice")
        if row["base_prompt"] == row["contrast_prompt"]:
            raise UsageError(f"{name} (pair {row['pair_id']}): the two prompts are the same")
        seen.add(row["pair_id"])
        pairs.append(PromptPair(**row))
    if not pairs:
        raise UsageError(f"{path} holds no prompt pair")
    return pairs


def check_oracle_prompts(pairs: list[PromptPair]) -> None:
    """UsageError naming the first prompt the synthetic world's oracle cannot read (before any
    image is made for it)."""
    from ..synthetic import OracleError
    from ..synthetic.alignment import parse_prompt

    for pair in pairs:
        for side in SIDES:
            try:
                parse_prompt(pair.prompt(side))
            except OracleError as err:
                raise UsageError(f"pair {pair.pair_id}: the oracle judge reads only the synthetic world's prompts "
                                 f"({err}); use a VLM judge (--base-url)") from None


def decide(scores: dict) -> tuple[str, str | None]:
    """The rules on one pair's ``scores[(image side, prompt side)]`` (None: missing):
    ``(KEPT, None)``, ``(DROPPED, the image that failed: BASE, CONTRAST or BOTH)`` or
    ``(MISSING, None)`` when any of the four is missing."""
    if any(scores.get((image, prompt)) is None for image in SIDES for prompt in SIDES):
        return MISSING, None
    failed = [image for image, other in ((BASE, CONTRAST), (CONTRAST, BASE))
              if not scores[image, image] > scores[image, other]]
    if not failed:
        return KEPT, None
    return DROPPED, failed[0] if len(failed) == 1 else BOTH


def _judge_rows(pair: PromptPair, side: str, path: Path) -> list[dict]:
    """The two requests of one image: against its own prompt and against the other one."""
    return [{"id": f"{pair.image_id(side)}|{prompt}", "instruction": pair.prompt(prompt), "image": str(path),
             "edited_image": str(path), "pair_id": pair.pair_id, "image_side": side, "prompt_side": prompt}
            for prompt in SIDES]


def _check_state(work: Path, settings: dict, out: Path) -> None:
    """Refuse other image settings than those of the images already in ``work`` (with none there
    yet, the new settings replace the old)."""
    path = work / STATE_NAME
    settings = json.loads(json.dumps(settings))
    if path.is_file() and next(work.rglob("*.png"), None) is not None:
        state = json.loads(path.read_text(encoding="utf-8"))
        for key, value in settings.items():
            if key in state and state[key] != value:
                raise UsageError(f"{out} holds images made with {key} {state[key]!r}, not {value!r}: use another OUT "
                                 f"(or delete {work})")
    _write_json(path, settings)


def generate_pairs(prompts, out, images: ImageMaker, judge: Judge, *,
                   max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, progress: bool = True) -> PairReport:
    """Make, judge and keep the pairs of the prompt-pair folder ``prompts`` into the dataset folder
    ``out`` (see the module docstring). Returns the report; the dataset is written when a pair
    is kept (``report.output``), ``generation.json`` always."""
    from datasets.utils.py_utils import convert_file_size_to_int
    from tqdm.auto import tqdm

    start = time.perf_counter()
    try:
        max_shard_bytes = convert_file_size_to_int(max_shard_size)
    except ValueError:
        raise UsageError(f"max_shard_size {max_shard_size!r}: expected a size such as 500MB or 1GiB") from None
    pairs = read_prompt_pairs(prompts)
    judge_settings = judge.settings()
    if judge_settings.get("oracle"):
        check_oracle_prompts(pairs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    from ..features import PAIR_FEATURES

    folder = HubFolder(out)
    folder.check_features(DEFAULT_CONFIG, PAIR_FEATURES)  # before anything is made, not after
    work = folder.staging_dir(DEFAULT_CONFIG, SPLIT)
    settings = images.settings()
    _check_state(work, settings, out)

    sides = {pair.image_id(side): (pair, side) for pair in pairs for side in SIDES}
    paths = {image_id: images.path(work, image_id) for image_id in sides}
    todo = [(image_id, pair.prompt(side)) for image_id, (pair, side) in sides.items() if not paths[image_id].is_file()]
    report = PairReport(prompts=str(prompts), images=settings, judge=judge_settings, pairs=len(pairs),
                        made=len(todo), reused=len(sides) - len(todo))
    answers: dict[tuple[str, str, str], dict] = {}
    lock = threading.Lock()
    generated = tqdm(total=len(todo), desc="generate", unit="image", position=0, disable=not progress,
                     dynamic_ncols=True)
    judged = tqdm(total=4 * len(pairs), desc="judge", unit="answer", position=1, disable=not progress,
                  dynamic_ncols=True)

    def on_answer(row: dict, record: dict) -> None:
        with lock:
            answers[row["pair_id"], row["image_side"], row["prompt_side"]] = record
            judged.update(1)

    def rows_of(image_ids) -> list[dict]:
        return [row for image_id in image_ids for row in _judge_rows(*sides[image_id], paths[image_id])]

    try:
        with judge.session(work, on_answer) as submit:
            submit(rows_of(image_id for image_id in sides if paths[image_id].is_file()))
            if todo:
                images.make(work, todo, lambda done: submit(rows_of(done)), generated)
    finally:
        generated.close()
        judged.close()

    records = [_assess(pair, answers, images, report) for pair in pairs]
    report.elapsed = round(time.perf_counter() - start, 2)
    kept = [pair for pair, record in zip(pairs, records) if record["outcome"] == KEPT]
    report.rows = 2 * len(kept)
    if kept:
        report.output = out
    _write_json(out / REPORT_NAME, {**report.to_dict(), "pairs_judged": records})
    if kept:
        _publish(folder, out, work, kept, paths, report, max_shard_bytes)
    return report


def _assess(pair: PromptPair, answers: dict, images: ImageMaker, report: PairReport) -> dict:
    """One pair's record (seeds, scores, outcome), counted into ``report``."""
    scores, errors = {}, []
    for image in SIDES:
        for prompt in SIDES:
            record = answers[pair.pair_id, image, prompt]
            rewards = record["rewards"]
            scores[image, prompt] = None if rewards is None else rewards[ALIGNMENT]["score"]
            if rewards is None:
                error = record.get("error") or "no answer"
                errors.append(f"{image} image against the {prompt} prompt: {error}")
                report.errors[error.split(";")[0].split(": ")[0]] += 1
    report.answers += sum(s is not None for s in scores.values())
    report.missing_answers += len(errors)
    outcome, failed = decide(scores)
    if outcome == KEPT:
        report.kept += 1
    elif outcome == DROPPED:
        report.dropped[failed] += 1
    else:
        report.missing += 1
    return {"pair_id": pair.pair_id, "outcome": outcome, "failed": failed,
            "seeds": {side: images.seed(pair.image_id(side)) for side in SIDES},
            "scores": {f"{image}_image": {f"{prompt}_prompt": scores[image, prompt] for prompt in SIDES}
                       for image in SIDES},
            "errors": errors}


def _publish(folder: HubFolder, out: Path, work: Path, kept: list[PromptPair], paths: dict, report: PairReport,
             max_shard_bytes: int) -> None:
    """Two rows per kept pair as the ``train`` split of ``out`` (the README, rewritten last, is the
    commit point)."""
    import shutil

    from ..build_stats import PAIR
    from ..features import PAIR_FEATURES
    from ..images import load_image
    from ..shard_writer import ShardWriter
    from .pair_card import render_pair_card

    shutil.rmtree(work / "shards", ignore_errors=True)  # cheap to assemble again: never resumed
    writer = ShardWriter(work / "shards", PAIR_FEATURES, max_shard_bytes, {"format": FORMAT}, PAIR)
    source = report.images.get("model")
    try:
        for index, pair in enumerate(kept):
            image_0, image_1 = (load_image(paths[pair.image_id(side)], item_id=pair.image_id(side), field=column)
                                for side, column in ((BASE, "image_0"), (CONTRAST, "image_1")))
            for side, label in ((BASE, 1.0), (CONTRAST, 0.0)):
                row = {"id": pair.image_id(side), "prompt": pair.prompt(side), "image_0": image_0.feature_value(),
                       "image_1": image_1.feature_value(), "label_0": label, "theme": pair.theme,
                       "subtopic": pair.subtopic, "contrast": pair.contrast, "pair_id": pair.pair_id,
                       "provenance": {"dataset": source, "original_id": pair.pair_id}}
                writer.write(row)
                writer.stats.add_example(row)
            writer.item_done(index + 1)
        shards, num_bytes = writer.finish(len(kept))
    except BaseException:
        writer.abandon()
        raise
    data = report.to_dict()
    folder.publish(config=DEFAULT_CONFIG, split=SPLIT, format=FORMAT, shards=shards, features=PAIR_FEATURES,
                   num_bytes=num_bytes, stats=writer.stats,
                   render_card=lambda records: render_pair_card(data, title=out.resolve().name))
    shutil.rmtree(work / "shards", ignore_errors=True)
