"""The run: generate every (model, item, seed) edit in batches, judge them while the next batch is
generated, score, and write ``results.json``, ``items.jsonl``, ``report.md`` and ``grid.png``.

Resumable at any point (kill -9 included): each edit is written atomically to
``images/<model>/seed<k>/<item>.png`` and never generated again; each judged row is appended to
``items.jsonl`` as soon as its answer arrives and never judged again; an edit that was written but
not judged is judged by the next run, through the answer cache (an answer that had arrived is not
asked for again). ``run.json`` keeps what the out folder was run with: a rerun with other settings
for the same model names is refused rather than mixed.

Every edit of an item uses its own generator, seeded from (seed, item id), so a model's edits do not
depend on the batch they fall in, on the other models of the run or on the process that made them
(several under ``accelerate launch``: each generates its share, the main process judges).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editforge.errors import UsageError

from .judging import LOOPBACK_KEY, ORACLE, JudgeConfig, JudgeWorker
from .models import ModelSpec, load_pipeline, model_specs, outputs_folder
from .scoring import metric_values, score_model
from .suites import TEXT_TO_IMAGE, Suite, SuiteItem, load_suite

ITEMS_FILE, RESULTS_FILE, REPORT_FILE, GRID_FILE, STATE_FILE = (
    "items.jsonl", "results.json", "report.md", "grid.png", "run.json")
ON_ERROR_CHOICES = ("fail", "skip")


def item_seed(seed: int, item_id: str) -> int:
    """The generator seed of one item's edit (independent of batching and of the other models)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{item_id}".encode()).digest()[:7], "big")


def _file_stem(item_id: str) -> str:
    from editforge.dataset_builders.annotation.sources import file_stem as stem

    return stem(item_id)


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


@dataclass
class EvalResults:
    """What a run produced (also ``results.json``): per model, per subset, per group, every figure."""

    out: Path
    suite: str
    rubric: str
    judge: dict
    seeds: list[int]
    models: dict[str, dict]
    skipped: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)

    def figure(self, model: str, name: str, group: str = "all", subset: str | None = None) -> float | None:
        subsets = self.models[model]["subsets"]
        return subsets[subset or next(iter(subsets))][group]["figures"][name]["value"]

    def to_dict(self) -> dict:
        return {"suite": self.suite, "rubric": self.rubric, "judge": self.judge, "seeds": self.seeds,
                "groups": self.groups, "models": self.models, "skipped": self.skipped, "timings_s": self.timings}

    @classmethod
    def load(cls, out: str | os.PathLike) -> EvalResults:
        data = json.loads((Path(out) / RESULTS_FILE).read_text())
        return cls(Path(out), data["suite"], data["rubric"], data["judge"], data["seeds"], data["models"],
                   data.get("skipped", []), data.get("timings_s", {}), data.get("groups", []))


class ItemsFile:
    """``items.jsonl``: one line per judged (model, item, seed), appended as answers arrive.

    Reading tolerates a last line cut by a kill (it is dropped, and the row judged again, from the
    cache); :meth:`compact` rewrites the file with one line per key, in a stable order. Not
    ``writable``: only read (what the other processes of a run do while the main one appends)."""

    def __init__(self, path: Path, writable: bool = True):
        self.path = path
        self.rows: dict[tuple, dict] = {}
        self._lock = threading.Lock()
        if path.is_file():
            data = path.read_bytes()
            good = data.rfind(b"\n") + 1
            for line in data[:good].splitlines():
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    self.rows[self.key(row)] = row
            if good < len(data) and writable:
                with open(path, "r+b") as handle:
                    handle.truncate(good)
        self._handle = open(path, "a", encoding="utf-8") if writable else None

    @staticmethod
    def key(row: dict) -> tuple:
        return row["model"], row["item"], row["seed"]

    def done(self, key: tuple) -> bool:
        row = self.rows.get(key)
        return row is not None and row.get("metrics") is not None

    def append(self, row: dict) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            if self._handle.closed:  # the run stopped on an error: the answer stays in the cache
                return
            self._handle.write(line)
            self._handle.flush()
            self.rows[self.key(row)] = row

    def compact(self, order: dict[str, int]) -> None:
        with self._lock:
            self._handle.close()
            rows = sorted(self.rows.values(), key=lambda r: (order.get(r["model"], len(order)), r["model"],
                                                            r["item"], r["seed"]))
            _write_atomic(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            self._handle = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _check_state(out: Path, suite: Suite, rubric: str, judge_model: str, specs: list[ModelSpec]) -> None:
    path = out / STATE_FILE
    state = json.loads(path.read_text()) if path.is_file() else {}
    run = {"suite": suite.spec, "suite_items": suite.fingerprint(), "rubric": rubric, "judge_model": judge_model}
    for key, value in run.items():
        if key in state and state[key] != value:
            raise UsageError(f"{out} holds a run with {key} {state[key]!r}, not {value!r}: use another --out "
                             f"(or delete {out})")
    models = state.get("models", {})
    for spec in specs:
        if spec.name in models and models[spec.name] != spec.signature():
            raise UsageError(f"{out} holds model {spec.name} run with {models[spec.name]}, not {spec.signature()}: "
                             f"use another name or --out")
        models[spec.name] = spec.signature()
    _write_atomic(path, json.dumps({**run, "models": models}, indent=2) + "\n")


def _check_items(suite: Suite, on_error: str) -> tuple[list[SuiteItem], list[dict]]:
    """The items whose source image reads (size filled in), and the skipped ones with their error."""
    from editforge.dataset_builders.errors import ItemError
    from editforge.dataset_builders.images import load_image

    if suite.kind == TEXT_TO_IMAGE:  # prompts: nothing to read
        return list(suite.items), []
    usable, skipped = [], []
    for item in suite.items:
        try:
            image = load_image(item.source_image, item_id=item.id, field="source_image")
        except ItemError as err:
            if on_error != "skip":
                raise UsageError(f"suite {suite.spec or suite.name}: {err} (pass --on-error skip to leave it out)") from None
            skipped.append({"id": item.id, "error": str(err)})
            continue
        item.width, item.height = image.width, image.height
        usable.append(item)
    if not usable:
        raise UsageError(f"suite {suite.spec or suite.name}: no item has a readable source image")
    return usable, skipped


def _open_rgb(source):
    import io

    from PIL import Image

    data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    return Image.open(io.BytesIO(data)).convert("RGB")


def _open_mask(mask, size):
    """An item's region mask as L (white: edit), or all white (free-form) when it has none."""
    import io

    from PIL import Image

    if mask is None:
        return Image.new("L", size, 255)
    data = mask if isinstance(mask, (bytes, bytearray)) else Path(mask).read_bytes()
    return Image.open(io.BytesIO(data)).convert("L")


class _Bars:
    def __init__(self, generate: int, judge: int, enabled: bool):
        from tqdm.auto import tqdm

        self.generate = tqdm(total=generate, desc="generate", unit="edit", position=0, disable=not enabled,
                             dynamic_ncols=True)
        self.judge = tqdm(total=judge, desc="judge", unit="edit", position=1, disable=not enabled,
                          dynamic_ncols=True)
        self._lock = threading.Lock()

    def judged(self) -> None:
        with self._lock:
            self.judge.update(1)

    def close(self) -> None:
        self.generate.close()
        self.judge.close()


def evaluate(models, suite: str | Suite, out: str | os.PathLike, *, rubric: str | None = None,
             judge: str | None = None, base_url: str | None = None, judge_model: str | None = None,
             seeds=(0,), model_args=None, batch_size: int = 8, concurrency: int = 8,
             on_error: str = "fail", cache: str | os.PathLike | None = None, max_side: int = 768,
             policy=None, progress: bool = True, grid_rows: int = 8, device: str | None = None,
             torch_dtype=None, trust_remote_code: bool | None = None, write_outputs: bool = True,
             metrics: bool = False, clip_model: str | None = None, dinov2_model: str | None = None) -> EvalResults | None:
    """Evaluate editing ``models`` on ``suite`` into the folder ``out``; see the module docstring.

    ``models``: ``LOCATION`` / ``NAME=LOCATION`` strings or :class:`ModelSpec`; ``model_args``:
    ``--model-args`` strings or ``{name: {key: value}}``; ``suite``: a spec for
    :func:`~.suites.load_suite` or a :class:`Suite`; ``rubric`` / ``judge`` default to the suite's
    (the synthetic suite: multi-reward by the oracle); ``cache``: the judge's answer cache (default
    ``OUT/cache/answers.sqlite``); ``on_error="skip"`` leaves out items whose source image is
    unreadable (listed in the results) instead of stopping; ``trust_remote_code``: run the code a
    Hub model ships (None: only for local folders that ship code); ``metrics``: also UltraEdit's
    CLIP / DINOv2 / SSIM metrics of every edit (:mod:`.quality`; ``clip_model`` / ``dinov2_model``
    default to ``editforge metrics``' models).

    Under ``accelerate launch`` / ``torchrun`` each process generates its share of the edits
    (:class:`Processes`); the main process returns the results, the others None.
    """
    if on_error not in ON_ERROR_CHOICES:
        raise UsageError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be 1 or more, got {batch_size}")
    seeds = [int(s) for s in (seeds.split(",") if isinstance(seeds, str) else seeds)]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"seeds must be distinct integers, got {seeds}")
    specs = model_specs(models, model_args)
    for spec in specs:
        if spec.trust_remote_code is None:
            spec.trust_remote_code = trust_remote_code
    from .models import check_location

    for spec in specs:
        check_location(spec)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the output folder {out}: {err.strerror or err}") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"cannot write to {out}")
    start = time.perf_counter()
    processes = Processes()
    device = device or processes.device
    with processes.main_first():  # the main process writes the suite's cache and checks the state first
        if not isinstance(suite, Suite):
            suite = load_suite(str(suite), cache_dir=out / "suite")
        prepared = _prepare(out, suite, specs, rubric, judge, base_url, judge_model, cache, concurrency, max_side,
                            policy, on_error, processes)
    config, endpoint, rubric_info, judge_info, items, skipped, store = prepared
    if metrics and suite.kind == TEXT_TO_IMAGE:
        raise UsageError("--metrics (CLIP / DINOv2 / SSIM of an edit against its source) applies to edit suites")
    by_id = {item.id: item for item in items}
    timings: dict[str, float] = {}
    if not processes.is_main:  # generates its share of the edits; the main process does the rest
        _run(specs, items, seeds, out, store, config, endpoint, rubric_info.name, batch_size, progress, device,
             torch_dtype, timings, processes, suite.kind)
        return None
    try:
        if config.judge == ORACLE:
            from editforge.dataset_builders.annotation.server import serve_oracle

            with serve_oracle() as oracle_url:
                _run(specs, items, seeds, out, store, config, (oracle_url, LOOPBACK_KEY), rubric_info.name,
                     batch_size, progress, device, torch_dtype, timings, processes, suite.kind)
        else:
            _run(specs, items, seeds, out, store, config, endpoint, rubric_info.name, batch_size, progress,
                 device, torch_dtype, timings, processes, suite.kind)
        if metrics:
            _score_quality(specs, by_id, seeds, out, store, clip_model, dinov2_model, batch_size, device, progress,
                           timings)
        store.compact({spec.name: i for i, spec in enumerate(specs)})
    finally:
        store.close()

    results = EvalResults(out, suite.spec or suite.name, rubric_info.name, judge_info, seeds, {}, skipped, timings,
                          suite.group_order())
    for spec in specs:
        rows = [row for key, row in store.rows.items() if key[0] == spec.name and key[1] in by_id and key[2] in seeds]
        results.models[spec.name] = {"location": spec.location, "call_args": spec.signature()["call_args"],
                                     "subsets": score_model(rows, suite, rubric_info.name, seeds)}
    timings["total"] = round(time.perf_counter() - start, 2)
    if write_outputs:
        from .report import write_grid, write_report

        _write_atomic(out / RESULTS_FILE, json.dumps(results.to_dict(), indent=2, ensure_ascii=False) + "\n")
        write_report(results, out / REPORT_FILE)
        write_grid(out / GRID_FILE, items[:grid_rows], [s.name for s in specs], seeds[0], out,
                   with_source=suite.kind != TEXT_TO_IMAGE)
    return results


def _prepare(out, suite, specs, rubric, judge, base_url, judge_model, cache, concurrency, max_side, policy, on_error,
             processes):
    """The judge's settings, the usable items and the items file (read only in other processes than the main)."""
    rubric = rubric or suite.rubric
    if judge is None and base_url is None and judge_model is None:
        judge = suite.judge
    config = JudgeConfig(rubric, judge, base_url, judge_model, cache if cache is not None else out / "cache" / "answers.sqlite",
                         concurrency, max_side, policy)
    config.check()
    endpoint = None if config.judge == ORACLE else config.endpoint()
    from editforge.dataset_builders.annotation import get_rubric

    rubric_info = get_rubric(rubric)
    judge_info = {"model": config.model_name(), "rubric": rubric_info.name, "rubric_version": rubric_info.version}
    if processes.is_main:
        _check_state(out, suite, rubric_info.name, judge_info["model"], specs)
    items, skipped = _check_items(suite, on_error)
    store = ItemsFile(out / ITEMS_FILE, writable=processes.is_main)
    return config, endpoint, rubric_info, judge_info, items, skipped, store


def _score_quality(specs, by_id, seeds, out, store, clip_model, dinov2_model, batch_size, device, progress,
                   timings) -> None:
    from editforge.dataset_builders.metrics import DEFAULT_CLIP_MODEL, DEFAULT_DINOV2_MODEL

    from .quality import needs_quality, quality_models, score_quality

    clip_model, dinov2_model = clip_model or DEFAULT_CLIP_MODEL, dinov2_model or DEFAULT_DINOV2_MODEL
    models = quality_models(clip_model, dinov2_model)
    names = {spec.name for spec in specs}
    todo = [row for key, row in sorted(store.rows.items())
            if key[0] in names and key[1] in by_id and key[2] in seeds and needs_quality(row, models)]
    clock = time.perf_counter()
    score_quality(todo, by_id, out, store, clip_model=clip_model, dinov2_model=dinov2_model, batch_size=batch_size,
                  device=device, progress=progress)
    timings["metrics"] = round(time.perf_counter() - clock, 2)


def image_path(out: Path, model: str, seed: int, item_id: str) -> Path:
    return out / "images" / model / f"seed{seed}" / f"{_file_stem(item_id)}.png"


class Processes:
    """The processes of a run started by ``accelerate launch`` / ``torchrun`` (one, otherwise).

    Each (model, item, seed) belongs to one process, by a hash of its key (so the shares do not
    depend on what earlier runs finished); each process generates its own share. The main process
    judges, scores and writes every file but the edits: it judges its own edits while it generates
    them, and the others' once every process has generated its share.
    """

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank, self.state = 0, None
        if self.world > 1:
            import torch
            from accelerate import PartialState

            self.state = PartialState(cpu=not torch.cuda.is_available())
            self.rank = self.state.process_index

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self):
        return None if self.state is None else self.state.device

    def owns(self, key: tuple) -> bool:
        if self.world == 1:
            return True
        digest = hashlib.sha256(json.dumps(list(key), ensure_ascii=False).encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.world == self.rank

    def main_first(self):
        import contextlib

        return self.state.main_process_first() if self.state is not None else contextlib.nullcontext()

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def _run(specs, items, seeds, out, store, config, endpoint, rubric, batch_size, progress, device,
         torch_dtype, timings, processes: Processes, kind: str) -> None:
    # What is left to do: edits to generate here, edits other processes generate, and written
    # edits not judged yet.
    to_generate: dict[str, list[tuple[SuiteItem, int]]] = {spec.name: [] for spec in specs}
    to_judge: list[dict] = []
    theirs: list[dict] = []
    for spec in specs:
        for seed in seeds:
            for item in items:
                key = (spec.name, item.id, seed)
                if store.done(key):
                    continue
                if image_path(out, spec.name, seed, item.id).is_file():
                    to_judge.append(_row(spec, item, seed, out))
                elif processes.owns(key):
                    to_generate[spec.name].append((item, seed))
                else:
                    theirs.append(_row(spec, item, seed, out))
    generate_total = sum(len(v) for v in to_generate.values())
    images = {item.id: item.source_image for item in items}
    if processes.world > 1:
        print(f"eval: process {processes.rank} of {processes.world} makes {generate_total} edit(s)", flush=True)
    if not processes.is_main:
        bars = _Bars(generate_total, 0, False)
        try:
            timings["generation"] = generate_images(specs, to_generate, out, batch_size, progress, device, torch_dtype, bars,
                                              kind, submit=lambda rows: None)
        finally:
            bars.close()
        processes.wait()
        return
    bars = _Bars(generate_total, generate_total + len(to_judge) + len(theirs), progress)

    def on_result(row: dict, judged: dict) -> None:
        answer = judged.get("rewards")
        store.append({**{k: v for k, v in row.items() if k not in ("id", "source_image", "edited_image")},
                      "judge": judged.get("judge"), "answer": answer, "metrics": metric_values(rubric, answer),
                      "usage": judged.get("usage"), "error": judged.get("error")})
        bars.judged()

    worker = JudgeWorker(config, *endpoint, on_result).start()
    try:
        worker.submit(to_judge, images)
        timings["generation"] = generate_images(specs, to_generate, out, batch_size, progress, device, torch_dtype, bars,
                                          kind, submit=lambda rows: worker.submit(rows, images))
        if theirs:
            processes.wait()  # every process has written its share
            missing = [row["id"] for row in theirs if not Path(row["edited_image"]).is_file()]
            if missing:
                raise UsageError(f"{len(missing)} edit(s) another process should have made are missing, e.g. {missing[0]}")
            worker.submit(theirs, images)
        else:
            processes.wait()
        wait = time.perf_counter()
        worker.close()
        timings["judge_wait_after_generation"] = round(time.perf_counter() - wait, 2)
    except BaseException:
        worker.queue.put(None)
        raise
    finally:
        bars.close()


def _write_png(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format="PNG")
    os.replace(partial, path)


def generate_images(specs, to_generate, out, batch_size, progress, device, torch_dtype, bars, kind, submit) -> float:
    """Make the edits (text-to-image suites: the images) of ``to_generate``, each written
    atomically, handing each batch's rows to ``submit``; returns the seconds spent in the pipelines."""
    import inspect

    import torch

    generate_seconds = 0.0
    pipelines: dict[str, Any] = {}
    for index, spec in enumerate(specs):
        pending = to_generate[spec.name]
        if not pending:
            continue
        folder = outputs_folder(spec)
        if folder is not None:  # edits made elsewhere: copied in, then judged like the others
            rows = []
            for item, seed in pending:
                found = [p for p in (folder / f"seed{seed}" / f"{_file_stem(item.id)}.png",
                                     folder / f"{_file_stem(item.id)}.png") if p.is_file()]
                if not found:
                    raise UsageError(f"model {spec.name}: no edit of item {item.id!r} (seed {seed}) in {folder}")
                _write_png(_open_rgb(found[0]), image_path(out, spec.name, seed, item.id))
                rows.append(_row(spec, item, seed, out))
                bars.generate.update(1)
            submit(rows)
            continue
        if spec.location not in pipelines:
            pipelines[spec.location] = load_pipeline(spec, torch_dtype=torch_dtype, device=device, progress=progress,
                                                     kind=kind)
        pipe = pipelines[spec.location]
        parameters = set(inspect.signature(type(pipe).__call__).parameters)
        sized = {"height", "width"} <= parameters
        # region masks go to a pipeline that takes them (a 48-channel SD3 InstructPix2Pix)
        masked = "mask_image" in parameters and getattr(pipe, "takes_mask", False)
        # batches of one seed and one image size, in suite order
        groups: dict[tuple, list[SuiteItem]] = {}
        for item, seed in pending:
            groups.setdefault((seed, item.width, item.height), []).append(item)
        for (seed, width, height), group in groups.items():
            for begin in range(0, len(group), batch_size):
                batch = group[begin: begin + batch_size]
                clock = time.perf_counter()
                generators = [torch.Generator(device="cpu").manual_seed(item_seed(seed, item.id)) for item in batch]
                if kind == TEXT_TO_IMAGE:  # the suite's size where it has one and the pipeline takes it
                    inputs = {"height": height, "width": width} if sized and width and height else {}
                else:
                    sources = [_open_rgb(item.source_image) for item in batch]
                    inputs = {"image": sources}
                    if masked and any(item.mask_image is not None for item in batch):
                        inputs["mask_image"] = [_open_mask(item.mask_image, source.size)
                                                for item, source in zip(batch, sources)]
                result = pipe(prompt=[item.instruction for item in batch], generator=generators, output_type="pil",
                              **inputs, **spec.call_args)
                rows = []
                for item, image in zip(batch, result.images):
                    _write_png(image, image_path(out, spec.name, seed, item.id))
                    rows.append(_row(spec, item, seed, out))
                generate_seconds += time.perf_counter() - clock
                bars.generate.update(len(batch))
                submit(rows)
        if all(s.location != spec.location for s in specs[index + 1:]):
            del pipelines[spec.location]  # free its memory before the next model loads
    return round(generate_seconds, 2)


def _row(spec: ModelSpec, item: SuiteItem, seed: int, out: Path) -> dict:
    path = image_path(out, spec.name, seed, item.id)
    return {"model": spec.name, "item": item.id, "seed": seed, "task": item.task, "tags": item.tags,
            "instruction": item.instruction, "image": path.relative_to(out).as_posix(),
            "id": f"{spec.name}/{seed}/{item.id}", "source_image": item.id, "edited_image": str(path)}
