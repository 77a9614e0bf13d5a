"""What answers the loopback server's chat completions: the responder interface and the judges.

:class:`~.server.LoopbackServer` owns HTTP, the Batch API, token usage, latency and fault
injection; a *responder* owns the answer. A responder is any object with a ``respond`` method
(or a plain function, wrapped by :func:`as_responder`)::

    class InstructionWriter:
        cpu_bound = False                       # optional: True runs respond() in worker threads

        def subject(self, request):             # optional: where a fault's ``match`` is looked for
            return request.user_text            # (the default); ValueError here is an HTTP 400,
                                                # a ResponderError its own status

        def respond(self, request: ChatRequest):
            if request.schema_name != "edit_instruction":
                raise ResponderError(400, "expected the edit_instruction schema")
            return {"instruction": "..."}       # the JSON answer object

``respond`` gets the parsed request (:class:`ChatRequest`: ``model``, ``messages``,
``response_format``, the ``json_schema`` name and schema, the user text and image URLs, the raw
body) and returns the answer: a JSON object (dict, or a list), sent as the assistant message's
content (``json.dumps``), or a ``str`` sent as it is. It may be ``async`` (awaited on the
server's event loop). To refuse it raises :class:`ResponderError` with an HTTP status (``422``:
"I cannot answer this one"), or ``ValueError`` (a request this responder does not take: HTTP
400); anything else it raises is an HTTP 500. The server wraps the answer into a chat completion
(id, model, ``finish_reason``, estimated usage), and the content faults (``out_of_range``,
``invalid_schema``, ``malformed_json``, ``truncated_answer``) break the answer after the
responder has given it, from the request's own ``json_schema``, so every fault works for every
responder.

The built-in responders are judges (:class:`JudgeResponder`: a rubric request in, a rubric
answer out, the editing instruction as the fault subject): :class:`OracleResponder` judges with
the synthetic world's pixel oracle, :class:`ConstantResponder` gives one fixed flawless answer
(for throughput measurements). Offline responders for the generation engines (instructions from
captions, text-to-image prompts) plug in the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from editforge.vocabulary import ALIGNMENT, NO_FAILURE, PERSPECTIVES, T2I_ALIGNMENT

from .rubrics import Rubric, read_request


class ResponderError(Exception):
    """The responder cannot answer this request; sent as an HTTP error with this status.

    ``kind`` and ``code`` go into the OpenAI-style error body (``error.type``, ``error.code``).
    """

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 code: str | None = "responder_error"):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.code = code


@dataclass
class ChatRequest:
    """One ``POST /v1/chat/completions`` body (or Batch API line body), as a responder sees it."""

    body: dict
    model: str | None
    messages: list[dict]
    response_format: dict | None
    schema_name: str | None   # response_format.json_schema.name, None without a json_schema format
    schema: dict | None       # response_format.json_schema.schema
    state: dict = field(default_factory=dict, repr=False)  # for a responder: what it parsed in subject()

    @classmethod
    def from_body(cls, body: Any) -> ChatRequest:
        """Parse a request body; ValueError when it is not a chat-completions request."""
        if not isinstance(body, dict):
            raise ValueError("the request body is not a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("the request has no list of messages")
        response_format = body.get("response_format")
        schema_name = schema = None
        if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
            spec = response_format.get("json_schema")
            if isinstance(spec, dict):
                schema_name, schema = spec.get("name"), spec.get("schema")
        return cls(body, body.get("model"), messages, response_format if isinstance(response_format, dict) else None,
                   schema_name, schema if isinstance(schema, dict) else None)

    def texts(self, role: str = "user") -> list[str]:
        """The text parts of the messages of ``role``, in order (a plain string content is one)."""
        out = []
        for message in self.messages:
            if message.get("role") != role:
                continue
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out += [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return out

    @property
    def user_text(self) -> str:
        """The text of the user messages, joined by newlines."""
        return "\n".join(self.texts("user"))

    @property
    def system_text(self) -> str:
        return "\n".join(self.texts("system") + self.texts("developer"))

    @property
    def image_urls(self) -> list[str]:
        """The image URLs of the user messages, in order (data URLs for our clients)."""
        urls = []
        for message in self.messages:
            content = message.get("content")
            if message.get("role") == "user" and isinstance(content, list):
                urls += [p["image_url"]["url"] for p in content
                         if isinstance(p, dict) and p.get("type") == "image_url" and isinstance(p.get("image_url"), dict)]
        return urls


@runtime_checkable
class Responder(Protocol):
    """Answers chat completions for :class:`~.server.LoopbackServer` (see the module docstring).

    Optional attributes: ``cpu_bound`` (bool; run in the server's worker threads) and
    ``subject(request) -> str`` (the text a fault's ``match`` is looked for in).
    """

    def respond(self, request: ChatRequest) -> Any: ...


class FunctionResponder:
    """A plain function ``fn(request) -> answer`` as a responder."""

    def __init__(self, fn: Callable[[ChatRequest], Any], *, cpu_bound: bool = False,
                 subject: Callable[[ChatRequest], str] | None = None):
        self.fn = fn
        self.cpu_bound = cpu_bound
        if subject is not None:
            self.subject = subject

    def respond(self, request: ChatRequest) -> Any:
        return self.fn(request)

    def __repr__(self) -> str:
        return f"FunctionResponder({getattr(self.fn, '__qualname__', self.fn)!r})"


def as_responder(obj: Any) -> Responder:
    """A responder as it is, or a plain function wrapped in :class:`FunctionResponder`."""
    if isinstance(obj, type):
        raise TypeError(f"pass a responder instance, not the class {obj.__name__}")
    if callable(getattr(obj, "respond", None)):
        return obj
    if callable(obj):
        return FunctionResponder(obj)
    raise TypeError(f"a responder needs a respond(request) method or must be callable, got {obj!r}")


def answer_content(answer: Any) -> str:
    """The assistant message content of an answer: a str as it is, anything else as JSON."""
    return answer if isinstance(answer, str) else json.dumps(answer)


# --------------------------------------------------------------------------------------------
# The judges


class JudgeResponder:
    """Base of the judges: a rubric request (:func:`.rubrics.read_request`) in, a rubric answer out.

    Subclasses implement ``answer(rubric, instruction, image_urls) -> dict``; the fault subject
    is the editing instruction; a request that is not a rubric request is an HTTP 400.
    """

    cpu_bound = False

    @staticmethod
    def read(request: ChatRequest) -> tuple[Rubric, str, list[str]]:
        parsed = request.state.get("judge")
        if parsed is None:
            parsed = request.state["judge"] = read_request(request.body)
        return parsed

    def subject(self, request: ChatRequest) -> str:
        return self.read(request)[1]

    def respond(self, request: ChatRequest) -> dict:
        rubric, instruction, urls = self.read(request)
        return self.answer(rubric, instruction, urls)

    def answer(self, rubric: Rubric, instruction: str, image_urls: list[str]) -> dict:
        raise NotImplementedError


class ConstantResponder(JudgeResponder):
    """The same valid answer to every request: a flawless edit. Does not read the images."""

    cpu_bound = False

    def answer(self, rubric: Rubric, instruction: str, image_urls: list[str]) -> dict:
        # every rubric's perspectives flawless; each rubric's mapping takes the ones it asks for
        return rubric.from_perspectives({p: {"score": 5, "feedback": NO_FAILURE} for p in (*PERSPECTIVES, ALIGNMENT)})


class OracleResponder(JudgeResponder):
    """The synthetic world's oracle judge, from the pixels of the images in the request: an edit's
    two (the edit oracle), or a generated image against its prompt (``t2i-alignment``: the
    alignment oracle).

    A triplet the oracle cannot judge is an HTTP 422, never a score.
    """

    cpu_bound = True

    def __init__(self):
        from ..synthetic import OracleJudge

        self.judge = OracleJudge()

    def answer(self, rubric: Rubric, instruction: str, image_urls: list[str]) -> dict:
        from ..synthetic import OracleError
        from .images import ImageError, decode_data_url

        try:
            images = [decode_data_url(url) for url in image_urls]
        except ImageError as err:
            raise ResponderError(400, str(err), code="judge_error") from None
        try:
            if rubric.name == T2I_ALIGNMENT:  # a generated image against its prompt
                from ..synthetic.alignment import judge_alignment

                judgement = judge_alignment(instruction, images[0])
            else:
                judgement = self.judge.judge(images[0], instruction, images[1])
        except OracleError as err:
            what = "image" if rubric.name == T2I_ALIGNMENT else "triplet"
            raise ResponderError(422, f"the oracle cannot judge this {what}: {err}", code="judge_error") from None
        return rubric.from_perspectives(judgement)
