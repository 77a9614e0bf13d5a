"""The judge client against the loopback server over real HTTP, through every injected fault:
a fault that clears gives the oracle's own answer, one that persists gives a missing item with
its reason, and never a score that the judge did not give."""

import asyncio
import email.utils
import io
import math
import random
import time

import pytest
from PIL import Image

from editforge.dataset_builders.annotation import (
    RUBRICS,
    JudgeClient,
    JudgeUnavailable,
    LoopbackServer,
    RetryPolicy,
    prepare_image,
)
from editforge.dataset_builders.annotation.client import parse_retry_after
from editforge.dataset_builders.annotation.server import FAULT_KINDS
from editforge.dataset_builders.synthetic import OracleJudge, generate_triplet

FAST = RetryPolicy(max_attempts=3, max_invalid_answers=2, timeout=0.5, base_delay=0.01, max_delay=0.02)
TRANSPORT = ["rate_limit", "server_error", "stall", "truncated_body", "malformed_body"]
INVALID = ["malformed_json", "out_of_range", "invalid_schema", "truncated_answer"]
# What the recorded error says when a fault never clears.
REASONS = {
    "rate_limit": "HTTP 429", "server_error": "HTTP 500", "stall": "timeout",
    "truncated_body": "connection failed", "malformed_body": "not JSON",
    "malformed_json": "not JSON", "out_of_range": "above the maximum 5",
    "invalid_schema": "missing instruction_following", "truncated_answer": "cut off",
}
ITEM = generate_triplet(7, 3, imperfect_rate=1.0)


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def expected_rewards(item, rubric="multi-reward"):
    rubric = RUBRICS[rubric]
    return rubric.to_rewards(rubric.from_perspectives(OracleJudge().judge(item.source, item.instruction, item.edited)))


@pytest.fixture(scope="module")
def server():
    with LoopbackServer() as server:
        yield server


@pytest.fixture(autouse=True)
def no_faults(server):
    server.faults.clear()
    yield
    server.faults.clear()


@pytest.fixture(params=["aiohttp", "httpx2"])
def backend(request):
    """Both HTTP transports of the openai SDK: aiohttp (the default when installed) and httpx2."""
    return request.param


def judge(base_url, item=ITEM, rubric="multi-reward", policy=FAST, instruction=None, api_key="test-key", backend=None):
    async def run():
        async with JudgeClient(rubric, model="editforge-oracle", base_url=base_url, api_key=api_key, policy=policy,
                               http_backend=backend) as client:
            body = client.request_body(instruction or item.instruction, prepare_image(png(item.source)),
                                       prepare_image(png(item.edited)))
            return await client.judge(body)
    return asyncio.run(run())


def requests_made(server, before):
    return server.stats.get("chat_requests", 0) - before


@pytest.mark.parametrize("rubric", ["multi-reward", "viescore-edit"])
def test_a_clean_answer_is_the_oracles(server, rubric, backend):
    outcome = judge(server.base_url, rubric=rubric, backend=backend)
    assert outcome.error is None and outcome.requests == 1
    assert outcome.rewards == expected_rewards(ITEM, rubric)
    assert outcome.usage.prompt_tokens > 500 and outcome.usage.completion_tokens > 10
    assert outcome.answer_usage == outcome.usage


def test_viescore_rewards_follow_the_documented_mapping(server):
    truth = OracleJudge().judge(ITEM.source, ITEM.instruction, ITEM.edited)
    rewards = judge(server.base_url, rubric="viescore-edit").rewards
    following, details, quality = (truth[p]["score"] for p in ("instruction_following", "detail_preserving", "generation_quality"))
    assert rewards["sc_scores"] == [2 * following, 2 * details]
    assert rewards["pq_scores"] == [2 * quality, 2 * quality]
    assert rewards["sc"] == 2 * min(following, details) and rewards["pq"] == 2 * quality
    assert rewards["o"] == pytest.approx(math.sqrt(rewards["sc"] * rewards["pq"]))


def test_every_fault_kind_is_covered():
    assert set(TRANSPORT) | set(INVALID) == set(FAULT_KINDS)


@pytest.mark.parametrize("kind", TRANSPORT + INVALID)
def test_a_fault_that_clears_is_retried_and_gives_the_true_answer(server, kind, backend):
    server.faults.add(kind, times=1, retry_after=0.05, seconds=3.0)
    before = server.stats.get("chat_requests", 0)
    outcome = judge(server.base_url, backend=backend)
    assert outcome.rewards == expected_rewards(ITEM), kind
    assert outcome.error is None
    assert outcome.requests == 2 and requests_made(server, before) == 2


@pytest.mark.parametrize("kind", TRANSPORT + INVALID)
def test_a_fault_that_persists_is_recorded_as_missing_never_filled_in(server, kind, backend):
    server.faults.add(kind, times=None, retry_after=0.05, seconds=3.0)
    before = server.stats.get("chat_requests", 0)
    outcome = judge(server.base_url, backend=backend)
    assert outcome.rewards is None
    assert REASONS[kind] in outcome.error, outcome.error
    bound = FAST.max_invalid_answers if kind in INVALID else FAST.max_attempts
    assert outcome.requests == bound and requests_made(server, before) == bound
    if kind in INVALID:  # invalid answers were delivered, and paid for
        assert outcome.usage.completion_tokens > 0 and outcome.answer_usage is None


def test_retry_after_is_honoured(server):
    server.faults.add("rate_limit", times=1, retry_after=0.6)
    start = time.perf_counter()
    outcome = judge(server.base_url)
    elapsed = time.perf_counter() - start
    assert outcome.rewards == expected_rewards(ITEM)
    assert 0.6 <= elapsed < 0.6 * 1.1 + 0.5, elapsed  # waited what was asked (plus <= 10% jitter), not the 0.01 s backoff


def test_a_429_pauses_every_request_of_the_client(server):
    server.faults.add("rate_limit", times=1, retry_after=0.5)

    async def run():
        async with JudgeClient("multi-reward", model="m", base_url=server.base_url, api_key="k", policy=FAST) as client:
            body = client.request_body(ITEM.instruction, prepare_image(png(ITEM.source)), prepare_image(png(ITEM.edited)))
            first = asyncio.ensure_future(client.judge(body))
            await asyncio.sleep(0.2)  # the first request has had its 429 by now
            start = time.perf_counter()
            second = await client.judge(body)
            return await first, second, time.perf_counter() - start

    first, second, waited = asyncio.run(run())
    assert first.rewards == second.rewards == expected_rewards(ITEM)
    assert waited >= 0.25, waited  # the second request waited for the first one's Retry-After


def test_what_the_oracle_cannot_judge_is_missing_after_one_request(server):
    before = server.stats.get("chat_requests", 0)
    outcome = judge(server.base_url, instruction="make it look like a van gogh painting")
    assert outcome.rewards is None
    assert "HTTP 422" in outcome.error and "oracle cannot judge" in outcome.error
    assert outcome.requests == 1 and requests_made(server, before) == 1


def test_a_refused_key_stops_the_run_without_echoing_the_key():
    with LoopbackServer(api_key="the-right-key") as server:
        with pytest.raises(JudgeUnavailable, match="HTTP 401.*OPENAI_API_KEY") as info:
            judge(server.base_url, api_key="a-wrong-key-1234")
    assert "a-wrong-key-1234" not in str(info.value)


def test_backoff_is_exponential_with_jitter():
    policy = RetryPolicy(base_delay=1.0, max_delay=10.0)
    rng = random.Random(0)
    for retry, cap in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)]:
        delays = [policy.backoff(retry, rng) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) == 50  # jittered


def test_retry_after_header_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after({"retry-after": date}) <= 30
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_a_refused_connection_is_reported_as_such_on_both_transports(backend):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome = judge(f"http://127.0.0.1:{port}/v1", backend=backend)
    assert outcome.rewards is None and outcome.requests == FAST.max_attempts
    assert "connection failed" in outcome.error and "timeout" not in outcome.error, outcome.error
