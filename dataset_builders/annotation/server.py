"""A loopback OpenAI-compatible server: real HTTP (aiohttp), for the built-in judge, the offline
responders and tests.

It speaks the part of the OpenAI API that editforge's clients use:

- ``POST /v1/chat/completions``: the request goes to a *responder* (:mod:`.responders`: any
  object with ``respond(request) -> answer``, or a plain function), whose answer comes back as
  the assistant message's content, with an estimated token usage; what the responder refuses
  (:class:`ResponderError`) is an HTTP error with its status (422: cannot answer this one);
- ``POST /v1/files``, ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``,
  ``POST /v1/batches``, ``GET /v1/batches/{id}``: the Batch API (batches are processed at once,
  each line by the same responder);
- ``GET /_loopback/stats``: request counters; ``POST``/``DELETE /_loopback/faults``: faults.

Responders for the judge (:mod:`.responders`): :class:`OracleResponder` judges with the
synthetic world's pixel oracle (its 0..5 scores mapped into the rubric, see :mod:`.rubrics`; a
triplet the oracle cannot judge gets HTTP 422, never a score); :class:`ConstantResponder` gives
one fixed valid answer without looking at the images (for throughput measurements).

Fault injection (:class:`FaultPlan`), per chat request or batch line, in order of addition; a
fault's ``match`` is looked for in the request's *subject* (the editing instruction for the
judges, the user text for other responders unless they say otherwise):
``rate_limit`` (429 with ``Retry-After``), ``server_error`` (500), ``stall`` (answer only after
``seconds``), ``malformed_json`` (the answer text is not JSON), ``out_of_range`` (the first
bounded value of the answer, in the request's ``json_schema``, put beyond its bound: a number
two above its maximum, a string longer than its ``maxLength``...; with nothing bounded, a field
is dropped as ``invalid_schema`` does), ``invalid_schema`` (a field missing), ``truncated_answer``
(the answer cut off, ``finish_reason: length``), ``truncated_body`` (the HTTP body ends early and
the connection closes), ``malformed_body`` (the HTTP body is not JSON). Inside a batch the three
transport faults (stall and the two body faults) become a 500 for that line.

``with serve_oracle() as base_url:`` runs the oracle judge on a free loopback port in a
background thread (with its own event loop), ``with serve(responder) as base_url:`` any other
responder; ``python -m editforge.dataset_builders.annotation.server [--responder
oracle|constant|package.module:name]`` runs a server in the foreground (it prints its base URL
on the first line).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import importlib
import inspect
import io
import itertools
import json
import logging
import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .responders import (  # noqa: F401 - re-exported: the server module's public names
    ChatRequest,
    ConstantResponder,
    FunctionResponder,
    JudgeResponder,
    OracleResponder,
    Responder,
    ResponderError,
    answer_content,
    as_responder,
)

logger = logging.getLogger(__name__)

ORACLE_MODEL = "editforge-oracle"
FAULT_KINDS = (
    "rate_limit", "server_error", "stall", "malformed_json", "out_of_range", "invalid_schema",
    "truncated_answer", "truncated_body", "malformed_body",
)
TRANSPORT_FAULTS = {"stall", "truncated_body", "malformed_body"}
WIRE_FAULTS = {"truncated_body", "malformed_body"}
MALFORMED_BODY = b'{"id": "chatcmpl-broken", "choices": [{"message": '
MAX_BODY = 1 << 40  # request bodies (images, batch files) are not limited in practice
SHUTDOWN_GRACE = 0.25  # seconds stop() lets requests in flight finish (a stall does not)


# --------------------------------------------------------------------------------------------
# Faults


@dataclass
class Fault:
    kind: str
    remaining: int | None  # None: forever
    match: str | None      # only requests whose subject contains this text
    params: dict = field(default_factory=dict)


class FaultPlan:
    """Faults to inject; each request takes the first fault that matches its subject."""

    def __init__(self):
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, kind: str, times: int | None = 1, match: str | None = None, **params) -> None:
        """Inject ``kind`` into the next ``times`` matching requests (None: all of them).

        Parameters: ``retry_after`` (seconds, rate_limit), ``seconds`` (stall).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {FAULT_KINDS}")
        with self._lock:
            self._faults.append(Fault(kind, times, match, params))

    def take(self, subject: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.match is None or fault.match in subject:
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)


_OUT_OF_ENUM = "__out_of_range__"


def _out_of_range(value: Any, schema: Any) -> tuple[bool, Any]:
    """(True, value with its first bounded part put out of bounds) or (False, value): nothing bounded."""
    if not isinstance(schema, dict):
        return False, value
    kind = schema.get("type")
    if kind in ("integer", "number"):
        for bound, step in (("maximum", 2), ("exclusiveMaximum", 1), ("minimum", -2), ("exclusiveMinimum", -1)):
            if isinstance(schema.get(bound), (int, float)):
                return True, schema[bound] + step
    if isinstance(schema.get("enum"), list) and _OUT_OF_ENUM not in schema["enum"]:
        return True, _OUT_OF_ENUM
    if kind == "string":
        if isinstance(schema.get("maxLength"), int):
            return True, "x" * (schema["maxLength"] + 2)
        if isinstance(schema.get("minLength"), int) and schema["minLength"] > 0:
            return True, ""
    if kind == "object" and isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                found, broken = _out_of_range(value[name], sub)
                if found:
                    value[name] = broken
                    return True, value
    if kind == "array" and isinstance(value, list):
        for index, item in enumerate(value):
            found, broken = _out_of_range(item, schema.get("items"))
            if found:
                value[index] = broken
                return True, value
        if isinstance(schema.get("maxItems"), int) and value:
            return True, value + [value[-1]] * (schema["maxItems"] + 2 - len(value))
    return False, value


def _drop_a_field(answer: Any) -> Any:
    if isinstance(answer, dict) and answer:
        answer.pop(next(iter(answer)))
        return answer
    return {"unexpected": answer}


def _faulty_content(fault: Fault | None, answer: Any, schema: dict | None) -> tuple[str, str]:
    """(content, finish_reason) of an answer, with a content fault applied (from the request's schema)."""
    kind = fault.kind if fault else None
    if kind in ("out_of_range", "invalid_schema") and not isinstance(answer, str):
        answer = copy.deepcopy(answer)  # the responder's own object stays as it gave it
        found = False
        if kind == "out_of_range":
            found, answer = _out_of_range(answer, schema)
        if not found:
            answer = _drop_a_field(answer)
    content = answer_content(answer)
    if kind == "malformed_json":
        return content[: len(content) // 2] + " ...", "stop"
    if kind == "truncated_answer":
        return content[: len(content) // 3], "length"
    return content, "stop"


# --------------------------------------------------------------------------------------------
# Token accounting, the way OpenAI counts it (an estimate; good enough for cost tests)


def _image_size(url: str) -> tuple[int, int]:
    """Width and height of a data-URL image; a PNG's from its header alone (the cheap path)."""
    comma = url.find(",")  # no copy of the (large) payload on the cheap path
    if url.startswith("data:image/png") and 0 < comma:
        head = base64.b64decode(url[comma + 1: comma + 33])  # signature, IHDR length and type, width, height
        if head[12:16] == b"IHDR":
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(url[comma + 1:]))).size


def _image_tokens(url: str) -> int:
    """85 + 170 per 512-px tile after fitting in 2048x2048 and the shorter side in 768 (high detail)."""
    try:
        width, height = _image_size(url)
    except Exception:
        return 85
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    tiles = math.ceil(width * scale / 512) * math.ceil(height * scale / 512)
    return 85 + 170 * tiles


def estimate_usage(body: dict, content: str) -> dict:
    text, images = 0, 0
    for message in body.get("messages", ()):
        parts = message.get("content")
        if isinstance(parts, str):
            text += len(parts)
            continue
        for part in parts or ():
            if part.get("type") == "text":
                text += len(part.get("text", ""))
            elif part.get("type") == "image_url":
                images += _image_tokens(part["image_url"]["url"])
    prompt, completion = math.ceil(text / 4) + images, math.ceil(len(content) / 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _error_body(message: str, kind: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _json(status: int, payload: Any, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json",
                        headers=headers)


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> web.Response:
    return _json(status, _error_body(message, kind, code))


# --------------------------------------------------------------------------------------------
# The server


class LoopbackServer:
    """An OpenAI-compatible HTTP server on 127.0.0.1 (see the module docstring), on aiohttp.

    ``responder`` answers the chat completions (:mod:`.responders`; a plain function is wrapped;
    default: the oracle judge). ``latency`` seconds are added to every chat completion and batch
    line. ``stats`` counts ``chat_requests`` (received), ``chat_answered`` (200 completions fully
    written), ``batch_lines_answered``, ``faults``, ``files_uploaded`` and ``batches_created``.
    ``api_keys_seen`` holds the bearer tokens received (for tests; never written anywhere). With
    ``api_key`` set, any other token gets a 401. A ``cpu_bound`` responder runs in ``workers``
    threads; any other one on the server's event loop.
    """

    def __init__(self, responder=None, *, latency: float = 0.0, host: str = "127.0.0.1", port: int = 0,
                 model: str = ORACLE_MODEL, workers: int = 2, api_key: str | None = None):
        self.responder = as_responder(responder) if responder is not None else OracleResponder()
        self.latency = latency
        self.api_key = api_key
        self.host, self.port = host, port
        self.model = model
        self.faults = FaultPlan()
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.api_keys_seen: set[str] = set()
        self._stats: Counter = Counter()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loopback-responder")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()

    # Life cycle -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def stats(self) -> dict:
        with self._lock:
            return dict(self._stats)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._stats[name] += n

    def make_app(self) -> web.Application:
        """The aiohttp application (routes and the auth / error middleware)."""
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        add = app.router.add_route
        add("POST", "/v1/chat/completions", self._chat)
        add("POST", "/v1/files", self._upload)
        add("GET", "/v1/files/{file_id}", self._file)
        add("GET", "/v1/files/{file_id}/content", self._file_content)
        add("POST", "/v1/batches", self._create_batch)
        add("GET", "/v1/batches/{batch_id}", self._batch)
        add("GET", "/_loopback/stats", self._get_stats)
        add("POST", "/_loopback/faults", self._add_fault)
        add("DELETE", "/_loopback/faults", self._clear_faults)
        return app

    async def start_serving(self) -> None:
        """Bind and serve in the running event loop (the port is known once this returns)."""
        self._loop = asyncio.get_running_loop()
        runner = web.AppRunner(self.make_app(), handle_signals=False, access_log=None,
                               shutdown_timeout=SHUTDOWN_GRACE)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def serve_forever(self) -> None:
        """Serve in the running event loop until cancelled (the foreground server)."""
        if self._runner is None:
            await self.start_serving()
        try:
            await asyncio.Event().wait()
        finally:
            await self._shutdown()

    def start(self) -> LoopbackServer:
        """Serve in a background thread with its own event loop; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_serving())
            except BaseException as err:  # noqa: BLE001 - reported to the starting thread
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                # What outlived the shutdown grace (a stalled request whose client hung up) ends here.
                leftover = asyncio.all_tasks(loop)
                for task in leftover:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="loopback-openai", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> LoopbackServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # HTTP -------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else None
        if token is not None:
            self.api_keys_seen.add(token)
        path = request.path
        if self.api_key is not None and token != self.api_key and (path == "/v1" or path.startswith("/v1/")):
            return _error(401, "Incorrect API key provided", code="invalid_api_key")
        try:
            return await handler(request)
        except web.HTTPException as err:  # no such route, or not with this method
            return _error(err.status, f"no route for {request.method} {path}")
        except (ValueError, KeyError, TypeError) as err:  # a body that is not what the endpoint takes
            return _error(400, f"bad request: {err}")
        except Exception as err:  # the server's own bug: a JSON 500, and the server goes on
            logger.exception("%s %s failed", request.method, path)
            return _error(500, f"internal error: {type(err).__name__}: {err}", "server_error")

    async def _get_stats(self, request: web.Request) -> web.Response:
        return _json(200, self.stats)

    async def _add_fault(self, request: web.Request) -> web.Response:
        spec = json.loads(await request.read())
        self.faults.add(spec.pop("kind"), spec.pop("times", 1), spec.pop("match", None), **spec)
        return _json(200, {"faults": len(self.faults)})

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return _json(200, {"faults": 0})

    # Chat completions -------------------------------------------------------------------------

    def _take_fault(self, subject: str) -> Fault | None:
        fault = self.faults.take(subject)
        if fault is not None:
            self._count("faults")
            self._count(f"fault:{fault.kind}")
        return fault

    def _parse(self, body: Any) -> tuple[ChatRequest, str]:
        """(request, subject); ResponderError when the body is not a request this responder takes."""
        try:
            request = ChatRequest.from_body(body)
            subject = getattr(self.responder, "subject", None)
            return request, (subject(request) if subject is not None else request.user_text)
        except ValueError as err:
            raise ResponderError(400, str(err), code=None) from None

    async def _respond(self, request: ChatRequest) -> Any:
        responder = self.responder
        if getattr(responder, "cpu_bound", False):
            answer = await asyncio.get_running_loop().run_in_executor(self._pool, responder.respond, request)
        else:
            answer = responder.respond(request)
        if not isinstance(answer, (dict, list, str)) and inspect.isawaitable(answer):  # an async responder
            answer = await answer
        return answer

    async def _complete(self, request: ChatRequest, fault: Fault | None) -> tuple[int, dict]:
        """(status, completion or error body) for one parsed request, with its fault."""
        if fault is not None:
            if fault.kind == "rate_limit":
                return 429, _error_body("rate limit reached (injected)", "rate_limit_error", "rate_limit_exceeded")
            if fault.kind == "server_error":
                return 500, _error_body("internal error (injected)", "server_error")
        try:
            answer = await self._respond(request)
        except ResponderError as err:
            return err.status, _error_body(str(err), err.kind, err.code)
        except ValueError as err:
            return 400, _error_body(str(err), "invalid_request_error", "responder_error")
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a responder bug is the server's 500, not a crash
            logger.exception("the responder %r failed", self.responder)
            return 500, _error_body(f"the responder failed: {type(err).__name__}: {err}", "server_error")
        try:
            content, finish_reason = _faulty_content(fault, answer, request.schema)
        except (TypeError, ValueError) as err:
            return 500, _error_body(f"the responder's answer is not JSON: {err}", "server_error")
        return 200, {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model or self.model,
            "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": estimate_usage(request.body, content),
        }

    async def _chat(self, http: web.Request) -> web.StreamResponse:
        self._count("chat_requests")
        body = json.loads(await http.read())
        try:
            request, subject = self._parse(body)
        except ResponderError as err:
            return _error(err.status, str(err), err.kind, err.code)
        fault = self._take_fault(subject)
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault is not None and fault.kind == "stall":
            await asyncio.sleep(float(fault.params.get("seconds", 30.0)))
        status, payload = await self._complete(request, fault)
        headers = None
        if status == 429:
            headers = {"Retry-After": f"{float(fault.params.get('retry_after', 1.0)):g}"}
        wire = fault.kind if fault is not None and fault.kind in WIRE_FAULTS else None
        data = json.dumps(payload).encode() if wire != "malformed_body" else MALFORMED_BODY
        try:
            if wire == "truncated_body":  # announce the whole body, send half of it, hang up
                response = web.StreamResponse(status=status, headers=headers)
                response.content_type = "application/json"
                response.content_length = len(data)
                await response.prepare(http)
                await response.write(data[: len(data) - len(data) // 2])
                if http.transport is not None:
                    http.transport.close()
                return response
            response = web.Response(status=status, body=data, content_type="application/json", headers=headers)
            if status == 200:  # written here, so that chat_answered counts what was fully written
                await response.prepare(http)
                await response.write_eof()
                self._count("chat_answered")
        except ConnectionError:  # the client hung up first (a stall it gave up on): nothing to write to
            pass
        return response

    # Files and batches ------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            return _error(400, "no file in the upload (expected multipart/form-data)")
        fields, data, filename = {}, None, "upload"
        async for part in await request.multipart():
            if part.filename is not None:
                data, filename = await part.read(decode=True), part.filename
            else:
                fields[part.name] = (await part.read(decode=True)).decode()
        if data is None:
            return _error(400, "no file in the upload")
        self._count("files_uploaded")
        return _json(200, self._store_file(bytes(data), filename, fields.get("purpose", "batch")))

    def _store_file(self, data: bytes, filename: str, purpose: str) -> dict:
        file_id = f"file-{next(self._ids)}"
        meta = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}
        self.files[file_id] = {**meta, "data": data}
        return meta

    async def _file(self, request: web.Request) -> web.Response:
        stored = self.files.get(request.match_info["file_id"])
        if stored is None:
            return _error(404, f"no such file {request.match_info['file_id']}")
        return _json(200, {k: v for k, v in stored.items() if k != "data"})

    async def _file_content(self, request: web.Request) -> web.Response:
        stored = self.files.get(request.match_info["file_id"])
        if stored is None:
            return _error(404, f"no such file {request.match_info['file_id']}")
        return web.Response(body=stored["data"], content_type="application/octet-stream")

    async def _batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        return _json(200, batch) if batch else _error(404, "no such batch")

    async def _create_batch(self, request: web.Request) -> web.Response:
        spec = json.loads(await request.read())
        if spec.get("input_file_id") not in self.files:
            return _error(400, f"no such file {spec.get('input_file_id')}")
        batch_id = f"batch_{next(self._ids)}"
        now = int(time.time())
        batch = {
            "id": batch_id, "object": "batch", "endpoint": spec.get("endpoint", "/v1/chat/completions"),
            "errors": None, "input_file_id": spec["input_file_id"],
            "completion_window": spec.get("completion_window", "24h"), "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + 86400, "completed_at": None, "failed_at": None, "metadata": spec.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        self.batches[batch_id] = batch
        self._count("batches_created")
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _json(200, batch)

    async def _batch_line(self, line: dict) -> tuple[bool, dict]:
        """(ok, output line) for one request of a batch input file."""
        try:
            request, subject = self._parse(line.get("body") or {})
        except ResponderError as err:
            status, payload = err.status, _error_body(str(err), err.kind, err.code)
        else:
            fault = self._take_fault(subject)
            if fault is not None and fault.kind in TRANSPORT_FAULTS:
                fault = Fault("server_error", 1, None)
            if self.latency:
                await asyncio.sleep(self.latency)
            status, payload = await self._complete(request, fault)
        result = {"id": f"batch_req_{next(self._ids)}", "custom_id": line.get("custom_id"),
                  "response": {"status_code": status, "request_id": f"req_{next(self._ids)}", "body": payload},
                  "error": None}
        if status == 200:
            self._count("batch_lines_answered")
        return status == 200, result

    async def _run_batch(self, batch: dict) -> None:
        try:
            await self._process_batch(batch)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - an input file that is not JSON lines: the batch fails
            logger.warning("batch %s failed: %s: %s", batch["id"], type(err).__name__, err)
            batch["errors"] = {"object": "list", "data": [{"code": "invalid_input", "message": f"{type(err).__name__}: {err}",
                                                            "param": None, "line": None}]}
            batch["status"], batch["failed_at"] = "failed", int(time.time())

    async def _process_batch(self, batch: dict) -> None:
        batch["status"], batch["in_progress_at"] = "in_progress", int(time.time())
        lines = [json.loads(text) for text in self.files[batch["input_file_id"]]["data"].splitlines() if text.strip()]
        if not all(isinstance(line, dict) for line in lines):
            raise ValueError("every line of a batch input file must be a JSON object")
        batch["request_counts"]["total"] = len(lines)
        gate = asyncio.Semaphore(8)

        async def one(line):
            async with gate:
                ok, result = await self._batch_line(line)
                batch["request_counts"]["completed" if ok else "failed"] += 1
                return ok, result

        results = await asyncio.gather(*(one(line) for line in lines))
        output = [json.dumps(r) for ok, r in results if ok]
        errors = [json.dumps(r) for ok, r in results if not ok]
        name = batch["id"]
        if output:
            batch["output_file_id"] = self._store_file(("\n".join(output) + "\n").encode(), f"{name}_output.jsonl", "batch_output")["id"]
        if errors:
            batch["error_file_id"] = self._store_file(("\n".join(errors) + "\n").encode(), f"{name}_error.jsonl", "batch_output")["id"]
        batch["status"], batch["completed_at"] = "completed", int(time.time())


@contextlib.contextmanager
def serve(responder, **options):
    """``with serve(responder) as base_url:`` any responder on a free loopback port (a background thread)."""
    server = LoopbackServer(responder, **options).start()
    try:
        yield server.base_url
    finally:
        server.stop()


@contextlib.contextmanager
def serve_oracle(latency: float = 0.0):
    """``with serve_oracle() as base_url:`` the synthetic world's oracle judge on a loopback port."""
    with serve(OracleResponder(), latency=latency) as base_url:
        yield base_url


def load_responder(spec: str) -> Responder:
    """``oracle``, ``constant`` or ``package.module:name`` (a class is instantiated with no
    arguments; an object with ``respond`` or a plain function is used as it is)."""
    if spec == "oracle":
        return OracleResponder()
    if spec == "constant":
        return ConstantResponder()
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"unknown responder {spec!r}; expected oracle, constant or package.module:name")
    obj = importlib.import_module(module_name)
    for attr in name.split("."):
        obj = getattr(obj, attr)
    return as_responder(obj() if inspect.isclass(obj) else obj)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a loopback OpenAI-compatible server in the foreground.")
    parser.add_argument("--responder", default="oracle",
                        help="oracle (default), constant, or package.module:name of a responder (class, object or function)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every completion")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        responder = load_responder(args.responder)
    except (ValueError, ImportError, AttributeError, TypeError) as err:
        parser.error(str(err))
    server = LoopbackServer(responder, latency=args.latency, port=args.port)

    async def run():
        await server.start_serving()
        print(server.base_url, flush=True)
        await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
