"""The judge side of a run: a thread with its own event loop that judges finished edits while the
next batch is generated.

The harness hands it batches of rows (:meth:`JudgeWorker.submit`); each batch becomes a
:class:`~editforge.dataset_builders.annotation.TripletSource` judged by the annotation engine's
:class:`~editforge.dataset_builders.annotation.Annotator` (the same client, rubric, retries and
resumable SQLite answer cache as ``editforge annotate``), and each judged row goes to the
``on_result`` callback as soon as its batch is answered. Several batches are judged at once, so
the requests of one batch's tail overlap the next one's; ``concurrency`` bounds the requests in
flight across all of them.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editforge.errors import UsageError

ORACLE = "oracle"
LOOPBACK_KEY = "loopback-oracle"  # the loopback judge needs no key: a real OPENAI_API_KEY never leaves


@dataclass
class JudgeConfig:
    """Which judge answers: the built-in oracle (``judge="oracle"``) or an OpenAI-compatible endpoint
    (``base_url``, default ``OPENAI_BASE_URL``; key from ``OPENAI_API_KEY``)."""

    rubric: str
    judge: str | None = None
    base_url: str | None = None
    model: str | None = None
    cache: str | os.PathLike | None = None
    concurrency: int = 8
    max_side: int = 768
    policy: Any = None

    def check(self) -> None:
        if self.judge not in (None, ORACLE):
            raise UsageError(f"unknown built-in judge {self.judge!r}; the only one is 'oracle'")
        if self.judge == ORACLE and self.base_url:
            raise UsageError("--judge oracle serves its own endpoint; leave out --base-url")

    def model_name(self) -> str:
        from editforge.dataset_builders.annotation.client import DEFAULT_MODEL
        from editforge.dataset_builders.annotation.server import ORACLE_MODEL

        return self.model or (ORACLE_MODEL if self.judge == ORACLE else DEFAULT_MODEL)

    def endpoint(self) -> tuple[str | None, str | None]:
        """(base_url, api_key) of a remote judge; raises UsageError when there is no key and no URL."""
        from editforge.dataset_builders.annotation.engine import resolve_endpoint

        return resolve_endpoint(self.base_url)


class JudgeWorker:
    """Judges submitted rows in a background thread; ``on_result(row, judged)`` gets each answer
    (``judged``: the annotation engine's output record: ``rewards`` or None with ``error``)."""

    def __init__(self, config: JudgeConfig, base_url: str | None, api_key: str | None,
                 on_result: Callable[[dict, dict], None], *, batches_in_flight: int = 8):
        self.config, self.base_url, self.api_key = config, base_url, api_key
        self.on_result = on_result
        self.batches_in_flight = batches_in_flight
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="eval-judge", daemon=True)

    def start(self) -> JudgeWorker:
        self._thread.start()
        return self

    def submit(self, rows: list[dict], images: dict[str, Any]) -> None:
        """Judge ``rows`` (each with ``key``, ``instruction``, ``source_image``, ``edited_image``);
        ``images`` maps a row's ``source_image`` value to what the judge reads (a path or bytes)."""
        self.raise_error()
        if rows:
            self.queue.put((rows, images))

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Wait until everything submitted is judged; re-raise the judge thread's failure."""
        self.queue.put(None)
        self._thread.join()
        self.raise_error()

    # the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # noqa: BLE001 - handed to the harness thread
            self.error = err

    async def _main(self) -> None:
        from editforge.dataset_builders.annotation import (
            Annotator,
            AnswerCache,
            JudgeClient,
            default_cache_path,
        )

        config = self.config
        client = JudgeClient(config.rubric, model=config.model_name(), base_url=self.base_url, api_key=self.api_key,
                             policy=config.policy, connections=config.concurrency)
        cache_path = Path(config.cache) if config.cache is not None else default_cache_path()
        loop = asyncio.get_running_loop()
        # One bound on the requests in flight across the batches being judged (each batch's
        # annotator would otherwise allow ``concurrency`` of its own).
        requests = asyncio.Semaphore(config.concurrency)
        ask = client.judge

        async def judge(body: dict):
            async with requests:
                return await ask(body)

        client.judge = judge
        try:
            with AnswerCache(cache_path) as answers:
                annotator = Annotator(client, answers, concurrency=config.concurrency, max_side=config.max_side,
                                      progress=False)
                slots = asyncio.Semaphore(self.batches_in_flight)
                tasks: set[asyncio.Task] = set()

                def finished(task: asyncio.Task) -> None:
                    slots.release()
                    if not task.cancelled() and task.exception() is not None and self.error is None:
                        self.error = task.exception()  # seen by the harness at its next submit

                while (work := await loop.run_in_executor(None, self.queue.get)) is not None:
                    if self.error is not None:
                        break
                    await slots.acquire()
                    task = asyncio.ensure_future(self._judge(annotator, *work))
                    task.add_done_callback(finished)
                    tasks.add(task)
                    tasks = {t for t in tasks if not t.done()}
                await asyncio.gather(*tasks, return_exceptions=True)
                if self.error is not None:
                    raise self.error
        finally:
            await client.aclose()

    async def _judge(self, annotator, rows: list[dict], images: dict[str, Any]) -> None:
        from editforge.dataset_builders.annotation import (
            AnnotationReport,
            TripletSource,
        )

        def load_image(record: dict, field: str):  # the source (an edit suite's) or what the model made
            return images.get(record[field], record[field]) if field == "source_image" else Path(record["edited_image"])

        source = TripletSource("eval", lambda: iter(rows), load_image, len(rows))
        ledger = await annotator.judge_direct(source, AnnotationReport())
        for row, judged in zip(rows, annotator.outputs(source, ledger, Path("."))):
            self.on_result(row, judged)
