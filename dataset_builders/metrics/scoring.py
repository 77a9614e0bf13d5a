"""``compute_metrics``: UltraEdit's quality metrics for every triplet of a canonical edit dataset.

    report = compute_metrics("edits/", "scored/", clip_model="openai/clip-vit-large-patch14",
                             dinov2_model="facebook/dinov2-with-registers-large", batch_size=32)
    load_dataset("scored/", split="train")[0]["metrics"]   # {clip_sim_source: ..., ssim: ...}

Per item (``I``: CLIP image embedding, ``T``: CLIP text embedding, both L2-normalised)::

    clip_sim_source = cos(I(source), T(source_caption))
    clip_sim_target = cos(I(edited), T(target_caption))
    clip_sim_dir    = cos(I(edited) - I(source), T(target_caption) - T(source_caption))
    clip_sim_image  = cos(I(source), I(edited))
    dinov2_sim      = cos(D(source), D(edited))     D: DINOv2 pooler_output (normed CLS token)
    ssim            = SSIM(source, edited)          per RGB channel, data range 1, 7x7 uniform
                                                    window, mean over channels (:mod:`.ssim`)

A caption that is null or blank gives null for the metrics that need it (``clip_sim_dir`` needs
both). Images are decoded and run through each model's own processor in DataLoader workers; the
models see batches (sources and edits of ``batch_size`` items together). Under ``accelerate
launch`` the items are shared out among the processes. Each batch's results are committed to a
SQLite store (:mod:`.store`) in the output's scratch folder, so a killed run, started again,
computes only what has no result (at most the batch in flight is computed twice). When every
item has a result, the main process writes the output split: the input rows with ``metrics``
filled in, through the journalled shard writer, published with a card (:mod:`.dataset_io`).

An unreadable image or a source and edit of different sizes is an
:class:`~editforge.dataset_builders.errors.ItemError` naming the item and the field:
``on_error="fail"`` stops there (results already committed are kept; a rerun with
``on_error="skip"`` continues), ``"skip"`` leaves the item out of the output and the card counts it.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F

from editforge.errors import UsageError
from editforge.vocabulary import METRIC_NAMES

from ..errors import BAD_FIELD, CORRUPT_IMAGE, MISSING_FILE, SIZE_MISMATCH, ZERO_SIZE, ItemError
from ..images import to_rgb
from ..shard_writer import source_stamp
from .clip import DEFAULT_CLIP_MODEL, ClipEncoder
from .dinov2 import DEFAULT_DINOV2_MODEL, Dinov2Encoder
from .preprocessing import preprocess_many
from .ssim import WIN_SIZE, structural_similarity

STORE_NAME = "metrics.sqlite"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DINOV2_TOKEN = "pooler_output (the CLS token after the final layer norm)"


@dataclass
class MetricsReport:
    """What one ``compute_metrics`` call did (in this process)."""

    out: Path
    config: str
    split: str
    num_items: int
    computed: int = 0          # items this process scored in this run
    resumed: int = 0           # items an earlier, stopped run had scored
    skipped: list = field(default_factory=list)
    seconds: float = 0.0
    process_index: int = 0
    num_processes: int = 1
    shards: list = field(default_factory=list)

    @property
    def items_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        skipped = f"; skipped {len(self.skipped)}" if self.skipped else ""
        resumed = f"; {self.resumed} scored by an earlier run" if self.resumed else ""
        procs = f" with {self.num_processes} processes" if self.num_processes > 1 else ""
        return (f"scored {self.computed} items in {self.seconds:.1f}s ({self.items_per_second:.1f} items/s{procs}){resumed}"
                f"{skipped}; wrote {self.num_items - len(self.skipped)} examples to {self.out} "
                f"(config {self.config!r}, split {self.split!r})")


# -- decoding and preprocessing (in DataLoader workers) ----------------------------------------

def decode_rgb(value, *, item_id: str, field: str) -> PIL.Image.Image:
    """An ``Image()`` cell (dict of bytes/path) -> RGB PIL image; ItemError when it cannot be read."""
    if value is None:
        raise ItemError(item_id, MISSING_FILE, "the item has no image here", field)
    data = value.get("bytes")
    try:
        if data is None:
            if not value.get("path"):
                raise ItemError(item_id, MISSING_FILE, "the item has no image here", field)
            data = Path(value["path"]).read_bytes()
        image = PIL.Image.open(io.BytesIO(data))
        image.load()
        image = PIL.ImageOps.exif_transpose(image)
        image = to_rgb(image)
    except ItemError:
        raise
    except FileNotFoundError as err:
        raise ItemError(item_id, MISSING_FILE, f"{err.filename} does not exist", field) from None
    except PIL.UnidentifiedImageError:
        raise ItemError(item_id, CORRUPT_IMAGE, "not an image file Pillow can read", field) from None
    except Exception as err:  # truncated data, bad chunks, unsupported modes: Pillow raises many kinds
        raise ItemError(item_id, CORRUPT_IMAGE, f"truncated or corrupt image ({err})", field) from None
    if image.width == 0 or image.height == 0:
        raise ItemError(item_id, ZERO_SIZE, f"the image is {image.width}x{image.height} pixels", field)
    return image


def _caption(text) -> str | None:
    return text if isinstance(text, str) and text.strip() else None


class TripletImages(torch.utils.data.Dataset):
    """Rows ``indices`` of ``dataset`` decoded and preprocessed for both models (or an ItemError)."""

    def __init__(self, dataset, indices, clip_processor, dinov2_processor):
        self.dataset = dataset.select_columns(["id", "source_image", "edited_image", "source_caption", "target_caption"])
        self.indices = list(indices)
        self.clip_processor, self.dinov2_processor = clip_processor, dinov2_processor

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.__getitems__([i])[0]

    def __getitems__(self, positions: list[int]) -> list[dict]:
        """A batch of items (the DataLoader asks for a whole batch at once): one columnar read, then
        each processor called once on all the batch's images."""
        indices = [self.indices[i] for i in positions]
        rows = self.dataset[indices]
        items, images = [], []
        for j, index in enumerate(indices):
            item, pair = self._decode(index, {k: v[j] for k, v in rows.items()})
            items.append(item)
            if pair is not None:
                images.append((item, pair))
        if images:
            prepare_items([item for item, _ in images], [pair for _, pair in images], self.clip_processor,
                          self.dinov2_processor)
        return items

    def _decode(self, index: int, row: dict):
        item_id = row["id"]
        try:
            source = decode_rgb(row["source_image"], item_id=item_id, field="source_image")
            edited = decode_rgb(row["edited_image"], item_id=item_id, field="edited_image")
            if source.size != edited.size:
                raise ItemError(item_id, SIZE_MISMATCH, f"the edited image is {edited.width}x{edited.height}, "
                                f"the source {source.width}x{source.height}", "edited_image")
            if min(source.size) < WIN_SIZE:
                raise ItemError(item_id, BAD_FIELD, f"the images are {source.width}x{source.height}; SSIM needs "
                                f"at least {WIN_SIZE}x{WIN_SIZE} pixels", "source_image")
        except ItemError as err:
            return {"idx": index, "id": item_id, "error": err.to_dict()}, None
        item = {"idx": index, "id": item_id,
                "source_caption": _caption(row["source_caption"]), "target_caption": _caption(row["target_caption"])}
        return item, (source, edited)


def prepare_items(items: list[dict], pairs: list[tuple], clip_processor, dinov2_processor) -> None:
    """Everything :func:`score_batch` needs but the models, for each item and its (source, edited) RGB
    pair: ``item["clip"]`` and ``item["dinov2"]`` (each model's processor output for the two images)
    and ``item["ssim"]`` (same-size pairs in one batched call). DataLoader workers run it beside the
    decoding, so the model's process only runs the models."""
    pictures = [source for source, _ in pairs] + [edited for _, edited in pairs]
    n = len(pairs)
    for name, processor in (("clip", clip_processor), ("dinov2", dinov2_processor)):
        tensors = preprocess_many(processor, pictures)
        for k, item in enumerate(items):
            item[name] = (tensors[k], tensors[n + k])
    groups: dict[tuple, list[int]] = {}
    for k, (source, _) in enumerate(pairs):
        groups.setdefault(source.size, []).append(k)
    for group in groups.values():
        source = torch.from_numpy(np.stack([np.asarray(pairs[k][0]) for k in group])).permute(0, 3, 1, 2).double() / 255.0
        edited = torch.from_numpy(np.stack([np.asarray(pairs[k][1]) for k in group])).permute(0, 3, 1, 2).double() / 255.0
        for k, value in zip(group, structural_similarity(source, edited)):
            items[k]["ssim"] = float(value)


def _as_list(batch):
    return batch


# -- scoring a batch (in the model's process) --------------------------------------------------

def _by_shape(tensors: list[torch.Tensor]) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    return list(groups.values())


def _encode(encode, tensors: list[torch.Tensor]) -> torch.Tensor:
    """``encode`` on stacks of same-shape tensors, results back in input order."""
    out = [None] * len(tensors)
    for group in _by_shape(tensors):
        embeddings = encode(torch.stack([tensors[i] for i in group]))
        for i, e in zip(group, embeddings):
            out[i] = e
    return torch.stack(out)


def score_batch(items: list[dict], clip: ClipEncoder, dinov2: Dinov2Encoder) -> list[dict]:
    """Metrics of prepared items (:func:`prepare_items`): ``{idx, id, <metric>: float | None}``."""
    n = len(items)
    if n == 0:
        return []
    image = _encode(clip.encode_images, [it["clip"][0] for it in items] + [it["clip"][1] for it in items])
    i_src, i_edit = image[:n], image[n:]
    texts, where = {}, {}  # each distinct caption encoded once (candidates of one edit share theirs)
    for k, it in enumerate(items):
        for name in ("source_caption", "target_caption"):
            if it[name] is not None:
                where[(k, name)] = texts.setdefault(it[name], len(texts))
    t = clip.encode_texts(list(texts)) if texts else None
    dino = _encode(dinov2.encode_images, [it["dinov2"][0] for it in items] + [it["dinov2"][1] for it in items])
    dino_sim = F.cosine_similarity(dino[:n], dino[n:], dim=-1)
    image_sim = F.cosine_similarity(i_src, i_edit, dim=-1)

    results = []
    for k, it in enumerate(items):
        s, g = where.get((k, "source_caption")), where.get((k, "target_caption"))
        row = {"idx": it["idx"], "id": it["id"], "clip_sim_image": float(image_sim[k]), "dinov2_sim": float(dino_sim[k]),
               "ssim": it["ssim"], "clip_sim_source": None, "clip_sim_target": None, "clip_sim_dir": None}
        if s is not None:
            row["clip_sim_source"] = float(F.cosine_similarity(i_src[k], t[s], dim=-1))
        if g is not None:
            row["clip_sim_target"] = float(F.cosine_similarity(i_edit[k], t[g], dim=-1))
        if s is not None and g is not None:
            # an unchanged image (or caption) has no direction: its difference is zero by definition
            # (cos = 0), not the float noise two batch rows of one input can differ by
            same_image = torch.equal(it["clip"][0], it["clip"][1])
            same_text = it["source_caption"] == it["target_caption"]
            image_dir = torch.zeros_like(i_src[k]) if same_image else i_edit[k] - i_src[k]
            text_dir = torch.zeros_like(t[s]) if same_text else t[g] - t[s]
            row["clip_sim_dir"] = float(F.cosine_similarity(image_dir, text_dir, dim=-1))
        results.append(row)
    return results


# -- the job -----------------------------------------------------------------------------------

def _model_stamp(model_id: str):
    """A local model folder's file stamp (so replaced weights start the run over); a Hub id as it is."""
    path = Path(model_id)
    if path.is_dir():
        return source_stamp(sorted(p for p in path.rglob("*") if p.is_file()))
    return model_id


def compute_metrics(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: str | None = None,
    split: str = "train",
    out_config: str | None = None,
    clip_model: str = DEFAULT_CLIP_MODEL,
    dinov2_model: str = DEFAULT_DINOV2_MODEL,
    dinov2_normalize: bool = True,
    batch_size: int = 32,
    num_workers: int = 2,
    dtype: str = "float32",
    device: str | None = None,
    on_error: str = "fail",
    max_shard_size: int | str = "500MB",
    progress: bool = True,
    cache_dir: str | None = None,
) -> MetricsReport:
    """Score every triplet of ``dataset`` (``config``/``split``) and write the scored split into ``out``.

    The output has the input's rows with ``metrics`` filled in, as config ``out_config`` (default:
    the input's config name, or ``default``) and the same split. See the module docstring.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from .dataset_io import check_output, load_edit_dataset
    from .store import MetricsStore

    if on_error not in ("fail", "skip"):
        raise UsageError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    if batch_size < 1 or num_workers < 0:
        raise UsageError("batch_size must be 1 or more and num_workers 0 or more")
    if dtype not in DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out_config = out_config or config or "default"
    out = check_output(out, out_config, split)
    data = load_edit_dataset(dataset, config, split, cache_dir=cache_dir)
    total = len(data)
    if total == 0:
        raise UsageError(f"{dataset} (config {config!r}, split {split!r}) has no rows")
    ids = data["id"]
    if len(set(ids)) != total:
        raise UsageError(f"{dataset}: item ids are not unique")

    # Several processes (torchrun, accelerate launch) and no GPU: share the items over CPU processes
    # (gloo). Accelerate only does that when told `cpu=True`; otherwise each process would work alone.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    state = PartialState(cpu=multi_cpu)
    device = device or state.device
    clip = ClipEncoder(clip_model, device=device, dtype=DTYPES[dtype])
    dinov2 = Dinov2Encoder(dinov2_model, device=device, dtype=DTYPES[dtype], normalize=dinov2_normalize)
    signature = {
        "dataset": str(Path(dataset).resolve()) if Path(dataset).exists() else str(dataset),
        "fingerprint": data._fingerprint, "config": config, "split": split, "num_rows": total,
        "clip_model": [clip_model, _model_stamp(clip_model)], "dinov2_model": [dinov2_model, _model_stamp(dinov2_model)],
        "dinov2_normalize": dinov2_normalize, "dtype": dtype,
    }
    signature = json.loads(json.dumps(signature))

    from ..hub_folder import HubFolder

    store_path = None
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        store_path = HubFolder(out).staging_dir(out_config, split) / STORE_NAME
        MetricsStore.prepare(store_path, signature).close()
    state.wait_for_everyone()
    store_path = HubFolder(out).staging_dir(out_config, split) / STORE_NAME
    store = MetricsStore(store_path)
    if store.signature_text() != json.dumps(signature, sort_keys=True):  # pragma: no cover - a concurrent run
        raise UsageError(f"{store_path} belongs to another metrics run started meanwhile")
    done = store.done()
    state.wait_for_everyone()  # every process has read the same set before anyone adds to it
    report = MetricsReport(out=out, config=out_config, split=split, num_items=total, resumed=len(done),
                           process_index=state.process_index, num_processes=state.num_processes)

    def fail_on(error: dict):
        raise ItemError(error["id"], error["kind"], f"{error['reason']}; the results of the other items are kept "
                        "and the same command continues after them (--on-error skip leaves such items out)",
                        error["field"])

    if on_error == "fail" and store.errors():
        fail_on(store.errors()[0])

    pending = [i for i in range(total) if i not in done]
    mine = [int(i) for i in np.array_split(np.asarray(pending, dtype=np.int64), state.num_processes)[state.process_index]]
    loader = torch.utils.data.DataLoader(
        TripletImages(data, mine, clip.image_processor, dinov2.image_processor), batch_size=batch_size,
        num_workers=num_workers, collate_fn=_as_list, persistent_workers=False,
    )
    desc = f"metrics {out_config}/{split}" + (f" (process {state.process_index} of {state.num_processes})"
                                              if state.num_processes > 1 else "")
    start = time.perf_counter()
    with tqdm(total=len(mine) if state.num_processes > 1 else total, initial=0 if state.num_processes > 1 else len(done),
              unit=" items", desc=desc, disable=not progress or not state.is_local_main_process) as bar:
        for batch in loader:
            good = [it for it in batch if "error" not in it]
            failed = [{"idx": it["idx"], "id": it["id"], "error": it["error"]} for it in batch if "error" in it]
            store.put(score_batch(good, clip, dinov2) + failed)
            report.computed += len(good)
            bar.update(len(batch))
            if failed and on_error == "fail":
                fail_on(failed[0]["error"])
    report.seconds = time.perf_counter() - start
    state.wait_for_everyone()

    if state.is_main_process:
        if len(store) != total:  # pragma: no cover - a process stopped without raising
            raise UsageError(f"only {len(store)} of {total} items have results; run the same command again")
        errors = store.errors()
        if errors and on_error == "fail":
            fail_on(errors[0])
        report.skipped = [{k: e[k] for k in ("id", "kind", "field", "reason")} for e in errors]
        report.shards = _write_output(data, out, out_config, split, store, signature, on_error, max_shard_size,
                                      progress, dinov2, clip)
    store.close()
    state.wait_for_everyone()
    return report


def _write_output(data, out, config, split, store, signature, on_error, max_shard_size, progress, dinov2, clip):
    from .card import add_metrics, histograms
    from .dataset_io import publish_rows

    def rows(skip: int):
        results = store.results(skip)
        for index, row in enumerate(data.select(range(skip, len(data))), start=skip):
            result = next(results)
            assert result["idx"] == index and result["id"] == row["id"], "results out of step with the rows"
            if "error" in result:
                e = result["error"]
                yield ItemError(e["id"], e["kind"], e["reason"], e["field"])
            else:
                row["metrics"] = result["metrics"]
                yield row

    def section() -> dict:
        hists = histograms()
        scored = without = 0
        for result in store.results():
            if "error" in result:
                continue
            scored += 1
            add_metrics(hists, result["metrics"])
            without += result["metrics"]["clip_sim_dir"] is None
        return {
            "kind": "metrics", "source": Path(signature["dataset"]).name, "clip_model": clip.model_id,
            "dinov2_model": dinov2.model_id, "dinov2_token": DINOV2_TOKEN, "dinov2_normalize": dinov2.normalize,
            "num_items": len(data), "num_scored": scored, "num_without_captions": without,
            "num_skipped": len(data) - scored, "histograms": {k: h.to_dict() for k, h in hists.items()},
        }

    shards, _ = publish_rows(out, config=config, split=split, kind="metrics", rows=rows, total=len(data),
                             signature={**signature, "on_error": on_error}, section=section,
                             max_shard_size=max_shard_size, progress=progress)
    return shards


__all__ = ["DEFAULT_CLIP_MODEL", "DEFAULT_DINOV2_MODEL", "METRIC_NAMES", "MetricsReport", "compute_metrics", "prepare_items", "score_batch"]
