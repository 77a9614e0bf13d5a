"""The OpenAI Batch API path: upload JSONL request files, create batches, poll, download and
merge every valid answer into the same cache the direct path uses (at half the price).

Each line of an upload file is ``{"custom_id": <cache key>, "method": "POST", "url":
"/v1/chat/completions", "body": <the direct path's request body>}``, so an answer is validated
and stored exactly as in the direct path. Files are split at ``max_requests`` lines or
``max_bytes`` bytes (the API's limits are 50,000 requests and 200 MB).

A batch is recorded in the cache as soon as it is created; a later run (after an interruption,
or the same command again) waits for the batches it finds open instead of submitting those
requests again. The upload file is deleted once its batch is merged.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from editforge.errors import EditforgeError

from .cache import AnswerCache
from .client import FATAL_STATUSES, RETRYABLE_STATUSES, JudgeClient, Usage, describe_status_error
from .rubrics import InvalidAnswer

ENDPOINT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
MAX_REQUESTS = 50_000
MAX_BYTES = 180 * 2**20


class BatchError(EditforgeError):
    """A Batch API call failed for good (after the SDK's retries). Batches already created are
    recorded in the cache: the same command picks them up."""


@dataclass
class BatchResults:
    """What merging batches gave: answered keys, and for the rest the reason and whether a
    new batch may help (429, 5xx, invalid answers, no result) or not (other 4xx)."""

    answered: set[str] = field(default_factory=set)
    errors: dict[str, tuple[str, bool]] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    item_usage: dict[str, Usage] = field(default_factory=dict)

    def update(self, other: "BatchResults") -> None:
        self.answered |= other.answered
        for key in other.answered:
            self.errors.pop(key, None)
        self.errors.update({k: v for k, v in other.errors.items() if k not in self.answered})
        self.usage += other.usage
        for key, usage in other.item_usage.items():
            self.item_usage[key] = self.item_usage.get(key, Usage()) + usage


class BatchFiles:
    """Request lines written to upload files, split at the size limits."""

    def __init__(self, folder: Path, stem: str, max_requests: int, max_bytes: int):
        self.folder, self.stem = folder, stem
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.files: list[tuple[Path, list[str]]] = []
        self._handle = None
        self._bytes = 0

    def add(self, key: str, body: dict) -> None:
        line = (json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}) + "\n").encode()
        if self._handle is None or len(self.files[-1][1]) >= self.max_requests or self._bytes + len(line) > self.max_bytes:
            self._roll()
        self._handle.write(line)
        self._bytes += len(line)
        self.files[-1][1].append(key)

    def _roll(self) -> None:
        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.stem}-{len(self.files):04d}.jsonl"
        self._handle = open(path, "wb")
        self._bytes = 0
        self.files.append((path, []))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "BatchFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BatchRunner:
    """Submits, polls and merges Batch API jobs for one judge client and its cache."""

    def __init__(self, client: JudgeClient, cache: AnswerCache, work_dir: str | Path, *,
                 poll_interval: float = 30.0, max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BYTES,
                 progress: bool = True):
        self.client, self.cache = client, cache
        self.work_dir = Path(work_dir)
        self.poll_interval = poll_interval
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.progress = progress
        # Batch management calls (upload, create, poll, download) use the SDK's own retries.
        self.api = client.openai.with_options(max_retries=5)
        rubric = client.rubric
        self._scope = {"model": client.model, "rubric": rubric.name, "rubric_version": rubric.version}

    def files(self) -> BatchFiles:
        stem = f"{self.client.rubric.name}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}"
        return BatchFiles(self.work_dir, stem, self.max_requests, self.max_bytes)

    def open_batches(self):
        return self.cache.open_batches(**self._scope)

    async def _api(self, what: str, call, *args, **kwargs):
        """One Batch API call; a failure that outlives the SDK's retries becomes one clear BatchError."""
        errors = self.client._errors
        try:
            return await call(*args, **kwargs)
        except errors.APIStatusError as err:
            hint = FATAL_STATUSES.get(err.status_code)
            message = f"{what} failed ({describe_status_error(err)})" + (f"; {hint}" if hint else "")
        except errors.APIConnectionError as err:
            message = f"{what} failed: cannot reach {self.client.openai.base_url} ({err.__cause__ or err})"
        raise BatchError(self.client.scrub(message) + "; run the same command again to resume")

    async def submit(self, files: BatchFiles) -> list[str]:
        """Upload each file and create its batch; each batch is recorded in the cache at once."""
        ids = []
        for path, keys in files.files:
            if not keys:
                path.unlink(missing_ok=True)
                continue
            uploaded = await self._api(f"uploading {path.name}", self.api.files.create, file=path, purpose="batch")
            batch = await self._api(
                "creating a batch", self.api.batches.create,
                input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h",
                metadata={"editforge_rubric": self._scope["rubric"],
                          "editforge_rubric_version": self._scope["rubric_version"]},
            )
            self.cache.add_batch(batch.id, keys=keys, input_file=str(path), **self._scope)
            ids.append(batch.id)
        return ids

    async def wait(self, records) -> BatchResults:
        """Poll the batches (cache BatchRecords) until each ends, merging each as it ends."""
        from tqdm.auto import tqdm

        results = BatchResults()
        waiting = {r.id: r for r in records}
        total = sum(len(r.keys) for r in records)
        counts: dict[str, int] = {}
        with tqdm(total=total, desc="batch", unit="item", disable=not self.progress or not total) as bar:
            while waiting:
                for batch_id, record in list(waiting.items()):
                    batch = await self._api(f"polling {batch_id}", self.api.batches.retrieve, batch_id)
                    if batch.request_counts is not None:
                        counts[batch_id] = batch.request_counts.completed + batch.request_counts.failed
                    if batch.status in TERMINAL:
                        results.update(await self._merge(batch, record))
                        counts[batch_id] = len(record.keys)
                        del waiting[batch_id]
                bar.n = sum(counts.values())
                bar.set_postfix_str(f"open batches={len(waiting)}", refresh=False)
                bar.refresh()
                if waiting:
                    await asyncio.sleep(self.poll_interval)
        return results

    async def _download(self, file_id: str | None) -> list[dict]:
        if not file_id:
            return []
        content = await self._api(f"downloading {file_id}", self.api.files.content, file_id)
        lines = []
        for text in content.text.splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue  # a broken line: its item ends as "no answer" and goes in another round
            if isinstance(line, dict):
                lines.append(line)
        return lines

    async def _merge(self, batch, record) -> BatchResults:
        results = BatchResults()
        wanted = set(record.keys)
        for line in await self._download(batch.output_file_id) + await self._download(batch.error_file_id):
            key = line.get("custom_id")
            if key not in wanted:
                continue
            response = line.get("response") if isinstance(line.get("response"), dict) else {}
            status, body = response.get("status_code"), response.get("body") or {}
            if status == 200:
                usage = Usage.of(body)
                results.usage += usage
                results.item_usage[key] = results.item_usage.get(key, Usage()) + usage
                try:
                    rewards = self.client.rewards_of(body)
                except InvalidAnswer as err:
                    results.errors[key] = (f"invalid answer: {err}", True)
                    continue
                self.cache.put(key, rewards=rewards, prompt_tokens=usage.prompt_tokens,
                               completion_tokens=usage.completion_tokens, **self._scope)
                results.answered.add(key)
            else:
                error = body.get("error") if isinstance(body, dict) else None
                line_error = line.get("error")
                message = ((error or {}).get("message") if isinstance(error, dict) else None) \
                    or (line_error.get("message") if isinstance(line_error, dict) else None) or "no detail"
                retryable = not isinstance(status, int) or status in RETRYABLE_STATUSES or status >= 500
                results.errors[key] = (self.client.scrub(f"HTTP {status}: {message}"), retryable)
        for key in wanted - results.answered - set(results.errors):
            detail = "; ".join(e.message or "" for e in (batch.errors.data or [])) if batch.errors else ""
            results.errors[key] = (f"batch {batch.id} ended {batch.status} without an answer{': ' + detail if detail else ''}", True)
        self.cache.close_batch(batch.id)
        if record.input_file:
            Path(record.input_file).unlink(missing_ok=True)
        return results
