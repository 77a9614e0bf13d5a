"""The one judge client every rubric shares: request building, structured outputs, validation,
retries and token usage, over the official ``openai`` async client.

One chat-completion request per triplet returns all of a rubric's scores, constrained by the
rubric's JSON schema (``response_format`` of type ``json_schema``) and validated again here.
Other jobs (the prompt generator) bring their own answer format and build their own messages;
transport, retries, validation and usage are the same.

Retries (:class:`RetryPolicy`) are ours, not the SDK's (it runs with ``max_retries=0``), so that
one policy covers both kinds of trouble:

- the request failed (429, 5xx, 408/409, a timeout, a dropped connection, a body that is not
  JSON): retried up to ``max_attempts`` requests in all, after an exponential backoff with
  jitter, or after exactly the ``Retry-After`` the server asked for. A 429 with ``Retry-After``
  pauses every request of the client, not only the one that was refused;
- the answer is invalid (not JSON, a missing field, a score out of range, cut off, refused):
  asked again at once, up to ``max_invalid_answers`` answers.

Then the item is given up: :class:`JudgeOutcome` has ``rewards=None`` and the reason in
``error``. A score is never made up. 401, 403 and 404 stop the whole run
(:class:`JudgeUnavailable`): no item can succeed with a wrong key, model or URL; so do
``UNREACHABLE_ITEMS`` items in a row given up because the endpoint could not be reached.

Requests go through ``AsyncOpenAI.post`` with the body as a plain dict, the very body a Batch API
line carries; the SDK's typed ``chat.completions.create`` costs ~2 ms of CPU per call in request
transformation, more than all the rest of a request. The SDK's aiohttp transport
(``openai[aiohttp]``) is used when installed: it needs ~40% less CPU per request than httpx2.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib.util
import json
import random
import time
from dataclasses import dataclass, field

from editforge.errors import EditforgeError
from editforge.vocabulary import MULTI_REWARD as MULTI_REWARD_NAME

from .images import PreparedImage
from .rubrics import InvalidAnswer, Rubric, get_rubric

DEFAULT_MODEL = "gpt-4o"
HTTP_BACKENDS = ("aiohttp", "httpx2")
CHAT_COMPLETIONS = "/chat/completions"
FATAL_STATUSES = {401: "check OPENAI_API_KEY", 403: "check the key's permissions", 404: "check --model and --base-url"}
RETRYABLE_STATUSES = {408, 409, 429}
# Items in a row that could not connect at all before the run stops: the endpoint is down.
UNREACHABLE_ITEMS = 8


class JudgeUnavailable(EditforgeError):
    """The endpoint refuses every request (bad key, unknown model, wrong URL): the run stops."""


@dataclass
class RetryPolicy:
    """How hard to try for one item before recording it as missing.

    ``max_attempts``: failed requests (429, 5xx, timeouts, broken connections or bodies) per item.
    ``max_invalid_answers``: answers that fail validation per item.
    ``timeout``: seconds per request. Backoff before retry *n* (0-based) is uniform in
    ``[d/2, d]`` with ``d = min(max_delay, base_delay * 2**n)``; a ``Retry-After`` header
    replaces it (up to ``max_retry_after`` seconds).
    """

    max_attempts: int = 6
    max_invalid_answers: int = 3
    timeout: float = 120.0
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_retry_after: float = 600.0

    def __post_init__(self):
        if self.max_attempts < 1 or self.max_invalid_answers < 1:
            raise ValueError("max_attempts and max_invalid_answers must be 1 or more")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")

    def backoff(self, retry: int, rng: random.Random) -> float:
        delay = min(self.max_delay, self.base_delay * 2.0 ** retry)
        return delay / 2 + rng.uniform(0, delay / 2)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    @classmethod
    def of(cls, completion: dict) -> "Usage":
        """The usage a completion reports (zeros where it reports none or nonsense)."""
        usage = completion.get("usage") if isinstance(completion, dict) else None
        if not isinstance(usage, dict):
            return cls()
        counts = []
        for name in ("prompt_tokens", "completion_tokens"):
            value = usage.get(name)
            counts.append(value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0)
        return cls(*counts)


@dataclass
class JudgeOutcome:
    """The judgement of one item: rewards, or None and the reason.

    ``usage`` counts every request made for the item (invalid answers are paid for too);
    ``answer_usage`` only the request whose answer was valid.
    """

    rewards: dict | None
    usage: Usage = field(default_factory=Usage)
    answer_usage: Usage | None = None
    error: str | None = None
    requests: int = 0


def default_http_backend() -> str:
    """'aiohttp' when installed (``openai[aiohttp]``: ~40% less CPU per request), else 'httpx2'."""
    return "aiohttp" if importlib.util.find_spec("aiohttp") is not None else "httpx2"


def parse_retry_after(headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _connection_error(err: BaseException) -> ConnectionError | None:
    """The refused, reset or aborted connection behind an SDK error, if that is what it was (the
    aiohttp transport reports a refused connection as a connect *timeout*)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConnectionError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def describe_status_error(err) -> str:
    """'HTTP <status>: <the API's error message>' of an openai.APIStatusError."""
    body = getattr(err, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    return f"HTTP {err.status_code}: {message or err.message}"


class JudgeClient:
    """Judges triplets with one rubric and one model through an OpenAI-compatible endpoint.

    ``rubric`` is a rubric name or :class:`~.rubrics.Rubric`, or any other *answer format*: an
    object with ``name`` and ``version`` (they scope the cache), ``response_format`` and
    ``parse(content) -> dict`` (raising InvalidAnswer), such as the prompt generator's; its
    requests are built with :meth:`chat_body`.

    ``base_url``/``api_key`` default to ``OPENAI_BASE_URL``/``OPENAI_API_KEY`` (the SDK's
    rules). The key is only ever sent as the Authorization header; every error message this
    client records is scrubbed of it.
    """

    def __init__(self, rubric: str | Rubric = MULTI_REWARD_NAME, *, model: str = DEFAULT_MODEL,
                 base_url: str | None = None, api_key: str | None = None,
                 policy: RetryPolicy | None = None, connections: int = 64,
                 max_completion_tokens: int = 1024, seed: int | None = None, http_backend: str | None = None):
        import httpx2
        import openai

        self.rubric = get_rubric(rubric) if isinstance(rubric, str) else rubric
        self.model = model
        self.policy = policy or RetryPolicy()
        self.max_completion_tokens = max_completion_tokens
        self.http_backend = http_backend or default_http_backend()
        if self.http_backend not in HTTP_BACKENDS:
            raise ValueError(f"unknown http_backend {self.http_backend!r}; expected one of {HTTP_BACKENDS}")
        timeout = httpx2.Timeout(self.policy.timeout, connect=min(self.policy.timeout, 10.0))
        limits = httpx2.Limits(max_connections=max(connections, 1), max_keepalive_connections=max(connections, 1))
        http_client = (openai.DefaultAioHttpClient if self.http_backend == "aiohttp"
                       else openai.DefaultAsyncHttpx2Client)(timeout=timeout, limits=limits)
        self.openai = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout,
                                         http_client=http_client)
        self._errors = openai
        self._response_type = httpx2.Response
        self._rng = random.Random(seed)
        self._resume_at = 0.0  # monotonic time before which no request starts (429 Retry-After)
        self._unreachable_items = 0  # items in a row given up on connection errors

    # Requests and answers -------------------------------------------------------------------

    def chat_body(self, messages: list[dict], **options) -> dict:
        """A chat-completion body asking for this client's answer format (also the ``body`` of a
        Batch API line); ``options`` add request fields (``seed``...)."""
        return {
            "model": self.model,
            "messages": messages,
            "response_format": self.rubric.response_format,
            "temperature": 0,
            "max_completion_tokens": self.max_completion_tokens,
            **options,
        }

    def request_body(self, instruction: str, *images: PreparedImage) -> dict:
        """The chat-completion body for one item, its images in the rubric's order (an edit: source,
        edited); also the ``body`` of a Batch API line."""
        return self.chat_body(self.rubric.messages(instruction, *(image.data_url for image in images)))

    def rewards_of(self, completion: dict) -> dict:
        """The parsed answer (a rubric's rewards) in a chat completion (a dict as the API returns
        it); InvalidAnswer if none."""
        choices = completion.get("choices") if isinstance(completion, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise InvalidAnswer("the completion has no choices")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise InvalidAnswer("the completion has no message")
        if message.get("refusal"):
            raise InvalidAnswer(f"the judge refused: {message['refusal']}")
        if choice.get("finish_reason") == "length":
            raise InvalidAnswer("the answer was cut off at the token limit")
        return self.rubric.parse(message.get("content"))

    def scrub(self, text: str) -> str:
        key = self.openai.api_key
        return text.replace(key, "***") if key and len(key) >= 4 else text

    # The retry loop ---------------------------------------------------------------------------

    async def _wait_for_rate_limit(self) -> None:
        while (wait := self._resume_at - time.monotonic()) > 0:
            await asyncio.sleep(wait)

    async def judge(self, body: dict) -> JudgeOutcome:
        """Ask until a valid answer arrives or the policy gives up. Never raises for one item's
        trouble; raises JudgeUnavailable when the endpoint refuses the key, model or URL."""
        errors, policy = self._errors, self.policy
        outcome = JudgeOutcome(rewards=None)
        failed = invalid = 0
        while True:
            await self._wait_for_rate_limit()
            outcome.requests += 1
            delay, unreachable = None, False
            try:
                response = await self.openai.post(CHAT_COMPLETIONS, body=body, cast_to=self._response_type)
                completion = json.loads(response.content)
            except errors.APIStatusError as err:
                status = err.status_code
                problem = self.scrub(describe_status_error(err))
                if status in FATAL_STATUSES:
                    raise JudgeUnavailable(f"{self.openai.base_url} refused the request ({problem}); "
                                           f"{FATAL_STATUSES[status]}") from None
                if status not in RETRYABLE_STATUSES and status < 500:
                    outcome.error = problem
                    return outcome
                retry_after = parse_retry_after(err.response.headers)
                if retry_after is not None:
                    delay = min(retry_after, policy.max_retry_after) * (1 + 0.1 * self._rng.random())
                    if status == 429:
                        self._resume_at = max(self._resume_at, time.monotonic() + delay)
            except errors.APIConnectionError as err:  # timeouts included
                refused = _connection_error(err)
                if isinstance(err, errors.APITimeoutError) and refused is None:
                    problem = f"no answer within the {policy.timeout:g} s timeout"
                else:
                    problem = self.scrub(f"connection failed: {refused or err.__cause__ or err}")
                    unreachable = True
            except (json.JSONDecodeError, UnicodeDecodeError) as err:  # a 200 whose body is not JSON
                problem = f"the response body is not JSON ({err})"
            else:
                usage = Usage.of(completion)
                outcome.usage += usage
                self._unreachable_items = 0
                try:
                    outcome.rewards = self.rewards_of(completion)
                    outcome.answer_usage = usage
                    return outcome
                except InvalidAnswer as err:
                    invalid += 1
                    if invalid >= policy.max_invalid_answers:
                        outcome.error = self.scrub(f"{invalid} invalid answers; last: {err}")
                        return outcome
                    continue
            failed += 1
            if failed >= policy.max_attempts:
                outcome.error = f"gave up after {failed} failed requests; last: {problem}"
                self._unreachable_items = self._unreachable_items + 1 if unreachable else 0
                if self._unreachable_items >= UNREACHABLE_ITEMS:
                    raise JudgeUnavailable(f"cannot reach {self.openai.base_url}: {UNREACHABLE_ITEMS} items in a "
                                           f"row failed to connect ({problem})")
                return outcome
            await asyncio.sleep(delay if delay is not None else policy.backoff(failed - 1, self._rng))

    async def aclose(self) -> None:
        await self.openai.close()

    async def __aenter__(self) -> "JudgeClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
