"""Answer a set of ready-made chat requests once each: the answer cache first, then direct
requests with bounded concurrency or the Batch API, every valid answer stored the moment it
arrives.

The annotation engine streams triplets (their images are too large to hold every request at
once); jobs whose requests are small text, such as the prompt generator, hand all of them over
at once as ``{cache key: request body}``::

    answers = await ask_all(client, cache, {key: client.chat_body(messages), ...}, concurrency=16)
    answers.answers[key]   # the parsed answer (client.rubric.parse), from the cache or new
    answers.errors[key]    # why there is none: the item is missing, never filled in

Killed at any moment, a job loses no answer that had arrived: asking again for the same keys
asks the endpoint only for what the cache does not hold (a Batch API job first waits for the
batches it had submitted).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .cache import AnswerCache
from .client import JudgeClient, Usage


@dataclass
class JobAnswers:
    """What :func:`ask_all` got. ``usage``: tokens paid in this run (invalid answers included);
    ``answer_usage``: tokens of the valid answers used, wherever they came from."""

    answers: dict[str, dict] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    asked: int = 0
    cached: int = 0
    usage: Usage = field(default_factory=Usage)
    answer_usage: Usage = field(default_factory=Usage)


def answer_scope(client: JudgeClient) -> dict:
    """The cache's scope of a client's answers: model, answer format and its version."""
    return {"model": client.model, "rubric": client.rubric.name, "rubric_version": client.rubric.version}


async def run_together(coroutines) -> None:
    """Run coroutines concurrently; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _ask_direct(client: JudgeClient, cache: AnswerCache, requests: dict[str, dict], keys: list[str],
                      result: JobAnswers, concurrency: int, bar) -> None:
    scope = answer_scope(client)
    queue = list(reversed(keys))

    async def work():
        while queue:
            key = queue.pop()
            outcome = await client.judge(requests[key])
            result.usage += outcome.usage
            if outcome.rewards is not None:
                usage = outcome.answer_usage
                cache.put(key, rewards=outcome.rewards, prompt_tokens=usage.prompt_tokens,
                          completion_tokens=usage.completion_tokens, **scope)
                result.asked += 1
            else:
                result.errors[key] = outcome.error
            bar.set_postfix_str(f"cached={result.cached} failed={len(result.errors)}", refresh=False)
            bar.update(1)

    await run_together([work() for _ in range(min(concurrency, len(keys)))])


async def _ask_batch(runner, cache: AnswerCache, requests: dict[str, dict], result: JobAnswers, rounds: int) -> None:
    from .batch import BatchResults

    results = BatchResults()
    open_batches = runner.open_batches()
    if open_batches:  # an earlier run's batches: merge them before deciding what to submit
        results.update(await runner.wait(open_batches))
    result.cached = sum(1 for key in requests if key in cache and key not in results.answered)
    retry: set[str] | None = None  # None: the first round, every key not in the cache
    for _ in range(rounds):
        todo = [key for key in requests if key not in cache and (retry is None or key in retry)]
        if not todo:
            break
        with runner.files() as files:
            for key in todo:
                files.add(key, requests[key])
        batch_ids = await runner.submit(files)
        results.update(await runner.wait([b for b in runner.open_batches() if b.id in batch_ids]))
        retry = {k for k, (_, retryable) in results.errors.items() if retryable} & set(todo)
        if not retry:
            break
    result.usage += results.usage
    for key in requests:
        if key not in cache:
            result.errors[key] = results.errors.get(key, ("no answer", False))[0]
    result.asked = len(requests) - result.cached - len(result.errors)


async def ask_all(client: JudgeClient, cache: AnswerCache, requests: dict[str, dict], *, concurrency: int = 16,
                  runner=None, rounds: int = 3, progress: bool = True, desc: str = "ask") -> JobAnswers:
    """Answer every request of ``requests`` ({cache key: chat-completion body}) once.

    Direct mode: ``concurrency`` requests in flight, each through :meth:`JudgeClient.judge`
    (its retries and validation). Batch mode (``runner``, a :class:`~.batch.BatchRunner`): one
    Batch API job for what the cache lacks, then up to ``rounds - 1`` more for the requests that
    failed in a way a new batch may fix. Raises JudgeUnavailable when the endpoint refuses the
    key, model or URL.
    """
    from tqdm.auto import tqdm

    result = JobAnswers()
    if runner is not None:
        await _ask_batch(runner, cache, requests, result, rounds)
    else:
        missing = [key for key in requests if key not in cache]
        result.cached = len(requests) - len(missing)
        with tqdm(total=len(requests), initial=result.cached, desc=desc, unit="request", disable=not progress,
                  dynamic_ncols=True) as bar:
            await _ask_direct(client, cache, requests, missing, result, concurrency, bar)
    for key in requests:
        if key not in result.errors:
            stored = cache.get(key)
            result.answers[key] = stored.rewards
            result.answer_usage += Usage(stored.prompt_tokens, stored.completion_tokens)
    return result
