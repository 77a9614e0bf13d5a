"""A loopback OpenAI-compatible server: real HTTP, for the built-in judge and for tests.

It speaks the part of the OpenAI API the annotation engine uses:

- ``POST /v1/chat/completions`` with a ``json_schema`` ``response_format`` of one of our
  rubrics: the responder reads the instruction and the two images (original first) from the
  request and answers in the rubric's schema, with token usage;
- ``POST /v1/files``, ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``,
  ``POST /v1/batches``, ``GET /v1/batches/{id}``: the Batch API (batches are processed at once);
- ``GET /_loopback/stats``: request counters; ``POST``/``DELETE /_loopback/faults``: faults.

Responders: :class:`OracleResponder` judges with the synthetic world's pixel oracle (its 0..5
scores mapped into the rubric, see :mod:`.rubrics`; a triplet the oracle cannot judge gets
HTTP 422, never a score); :class:`ConstantResponder` gives one fixed valid answer without
looking at the images (for throughput measurements).

Fault injection (:class:`FaultPlan`), per chat request or batch line, in order of addition:
``rate_limit`` (429 with ``Retry-After``), ``server_error`` (500), ``stall`` (answer only after
``seconds``), ``malformed_json`` (the answer text is not JSON), ``out_of_range`` (a score beyond
the schema's maximum), ``invalid_schema`` (a field missing), ``truncated_answer`` (the answer cut
off, ``finish_reason: length``), ``truncated_body`` (the HTTP body ends early and the connection
closes), ``malformed_body`` (the HTTP body is not JSON). Inside a batch the three transport
faults (stall and the two body faults) become a 500 for that line.

``with serve_oracle() as base_url:`` runs the oracle judge on a free loopback port in a
background thread; ``python -m editforge.dataset_builders.annotation.server`` runs a server in
the foreground (it prints its base URL on the first line).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email.parser
import email.policy
import io
import itertools
import json
import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .rubrics import PERSPECTIVES, NO_FAILURE, Rubric, read_request

ORACLE_MODEL = "editforge-oracle"
FAULT_KINDS = (
    "rate_limit", "server_error", "stall", "malformed_json", "out_of_range", "invalid_schema",
    "truncated_answer", "truncated_body", "malformed_body",
)
TRANSPORT_FAULTS = {"stall", "truncated_body", "malformed_body"}
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error"}


class ResponderError(Exception):
    """The responder cannot answer this request; sent as an HTTP error with this status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------
# Responders


class ConstantResponder:
    """The same valid answer to every request: a flawless edit. Does not read the images."""

    cpu_bound = False

    def answer(self, rubric: Rubric, instruction: str, image_urls: list[str]) -> dict:
        return rubric.from_perspectives({p: {"score": 5, "feedback": NO_FAILURE} for p in PERSPECTIVES})


class OracleResponder:
    """The synthetic world's oracle judge, from the pixels of the two images in the request."""

    cpu_bound = True

    def __init__(self):
        from ..synthetic import OracleJudge

        self.judge = OracleJudge()

    def answer(self, rubric: Rubric, instruction: str, image_urls: list[str]) -> dict:
        from ..synthetic import OracleError
        from .images import ImageError, decode_data_url

        try:
            source, edited = (decode_data_url(url) for url in image_urls)
        except ImageError as err:
            raise ResponderError(400, str(err)) from None
        try:
            judgement = self.judge.judge(source, instruction, edited)
        except OracleError as err:
            raise ResponderError(422, f"the oracle cannot judge this triplet: {err}") from None
        return rubric.from_perspectives(judgement)


# --------------------------------------------------------------------------------------------
# Faults


@dataclass
class Fault:
    kind: str
    remaining: int | None  # None: forever
    match: str | None      # only requests whose instruction contains this text
    params: dict = field(default_factory=dict)


class FaultPlan:
    """Faults to inject; each request takes the first fault that matches its instruction."""

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

    def take(self, instruction: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.match is None or fault.match in instruction:
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


def _break_a_score(answer: dict, schema: dict) -> bool:
    """Set the first integer of ``answer`` two above its schema maximum. True if one was found."""
    for name, sub in schema["properties"].items():
        if sub.get("type") == "integer":
            answer[name] = sub["maximum"] + 2
            return True
        if sub.get("type") == "object" and _break_a_score(answer[name], sub):
            return True
    return False


def _faulty_content(fault: Fault | None, answer: dict, rubric: Rubric) -> tuple[str, str]:
    """(content, finish_reason) of an answer, with a content fault applied."""
    kind = fault.kind if fault else None
    if kind == "out_of_range":
        _break_a_score(answer, rubric.schema)
    elif kind == "invalid_schema":
        answer.pop(next(iter(answer)))
    content = json.dumps(answer)
    if kind == "malformed_json":
        return content[: len(content) // 2] + " ...", "stop"
    if kind == "truncated_answer":
        return content[: len(content) // 3], "length"
    return content, "stop"


# --------------------------------------------------------------------------------------------
# Token accounting, the way OpenAI counts it (an estimate; good enough for cost tests)


def _image_size(url: str) -> tuple[int, int]:
    """Width and height of a data-URL image; a PNG's from its header alone (the cheap path)."""
    from PIL import Image

    header, _, payload = url.partition(",")
    if header.startswith("data:image/png"):
        head = base64.b64decode(payload[:32])  # signature, IHDR length and type, width, height
        if head[12:16] == b"IHDR":
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return Image.open(io.BytesIO(base64.b64decode(payload))).size


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


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Reply:
    status: int
    body: Any  # dict (sent as JSON) or bytes
    headers: dict = field(default_factory=dict)
    fault: str | None = None  # truncated_body / malformed_body: how to break it on the wire
    counts_as_answer: bool = False


# --------------------------------------------------------------------------------------------
# The server


class LoopbackServer:
    """An OpenAI-compatible HTTP server on 127.0.0.1 (see the module docstring).

    ``latency`` seconds are added to every chat completion and batch line. ``stats`` counts
    ``chat_requests`` (received), ``chat_answered`` (200 completions fully written),
    ``batch_lines_answered``, ``faults``, ``files_uploaded`` and ``batches_created``.
    ``api_keys_seen`` holds the bearer tokens received (for tests; never written anywhere). With
    ``api_key`` set, any other token gets a 401.
    """

    def __init__(self, responder=None, *, latency: float = 0.0, host: str = "127.0.0.1", port: int = 0,
                 model: str = ORACLE_MODEL, workers: int = 2, api_key: str | None = None):
        self.responder = responder if responder is not None else OracleResponder()
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
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loopback-judge")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
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

    async def start_serving(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._connection, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve_forever(self) -> None:
        """Serve in the running event loop until cancelled (the foreground server)."""
        if self._server is None:
            await self.start_serving()
        async with self._server:
            await self._server.serve_forever()

    def start(self) -> "LoopbackServer":
        """Serve in a background thread; returns once the port is bound."""
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
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="loopback-openai", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "LoopbackServer":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # HTTP -------------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    break
                reply = await self._route(request)
                if not await self._send(writer, reply):
                    break
                if request.headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunks.append(await reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(c[:-2] for c in chunks)
        else:
            body = await reader.readexactly(int(headers.get("content-length", 0)))
        return _Request(method, target.split("?", 1)[0], headers, body)

    async def _send(self, writer: asyncio.StreamWriter, reply: _Reply) -> bool:
        """Write a reply; False when the connection must close afterwards."""
        if isinstance(reply.body, (bytes, bytearray)):
            payload, content_type = bytes(reply.body), "application/octet-stream"
        else:
            payload, content_type = json.dumps(reply.body).encode(), "application/json"
        if reply.fault == "malformed_body":
            payload = b'{"id": "chatcmpl-broken", "choices": [{"message": '
        head = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Unknown')}",
                f"Content-Type: {content_type}", f"Content-Length: {len(payload)}"]
        head += [f"{name}: {value}" for name, value in reply.headers.items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        if reply.fault == "truncated_body":
            writer.write(data[: len(data) - len(payload) // 2])
            await writer.drain()
            return False
        writer.write(data)
        await writer.drain()
        if reply.counts_as_answer:
            self._count("chat_answered")
        return True

    async def _route(self, request: _Request) -> _Reply:
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else None
        if token is not None:
            self.api_keys_seen.add(token)
        path, method = request.path.rstrip("/"), request.method
        parts = path.strip("/").split("/")
        if self.api_key is not None and token != self.api_key and parts[0] == "v1":
            return _Reply(401, _error_body("Incorrect API key provided", "invalid_request_error", "invalid_api_key"))
        try:
            if path == "/v1/chat/completions" and method == "POST":
                return await self._chat(request)
            if path == "/v1/files" and method == "POST":
                return self._upload(request)
            if parts[:2] == ["v1", "files"] and len(parts) in (3, 4) and method == "GET":
                return self._file(parts[2], content=len(parts) == 4 and parts[3] == "content")
            if path == "/v1/batches" and method == "POST":
                return self._create_batch(json.loads(request.body))
            if parts[:2] == ["v1", "batches"] and len(parts) == 3 and method == "GET":
                batch = self.batches.get(parts[2])
                return _Reply(200, batch) if batch else _Reply(404, _error_body("no such batch", "invalid_request_error"))
            if path == "/_loopback/stats" and method == "GET":
                return _Reply(200, self.stats)
            if path == "/_loopback/faults" and method == "POST":
                spec = json.loads(request.body)
                self.faults.add(spec.pop("kind"), spec.pop("times", 1), spec.pop("match", None), **spec)
                return _Reply(200, {"faults": len(self.faults)})
            if path == "/_loopback/faults" and method == "DELETE":
                self.faults.clear()
                return _Reply(200, {"faults": 0})
        except (ValueError, KeyError, TypeError) as err:
            return _Reply(400, _error_body(f"bad request: {err}", "invalid_request_error"))
        return _Reply(404, _error_body(f"no route for {method} {path}", "invalid_request_error"))

    # Chat completions -------------------------------------------------------------------------

    def _take_fault(self, instruction: str) -> Fault | None:
        fault = self.faults.take(instruction)
        if fault is not None:
            self._count("faults")
            self._count(f"fault:{fault.kind}")
        return fault

    async def _judge(self, body: dict, fault: Fault | None) -> tuple[int, dict]:
        """(status, completion or error body) for one chat-completion request body."""
        rubric, instruction, urls = read_request(body)
        if fault is not None:
            if fault.kind == "rate_limit":
                return 429, _error_body("rate limit reached (injected)", "rate_limit_error", "rate_limit_exceeded")
            if fault.kind == "server_error":
                return 500, _error_body("internal error (injected)", "server_error")
        try:
            if getattr(self.responder, "cpu_bound", False):
                answer = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self.responder.answer, rubric, instruction, urls)
            else:
                answer = self.responder.answer(rubric, instruction, urls)
        except ResponderError as err:
            return err.status, _error_body(str(err), "invalid_request_error", "judge_error")
        content, finish_reason = _faulty_content(fault, answer, rubric)
        return 200, {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": estimate_usage(body, content),
        }

    async def _chat(self, request: _Request) -> _Reply:
        self._count("chat_requests")
        body = json.loads(request.body)
        try:
            _, instruction, _ = read_request(body)
        except ValueError as err:
            return _Reply(400, _error_body(str(err), "invalid_request_error"))
        fault = self._take_fault(instruction)
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault is not None and fault.kind == "stall":
            await asyncio.sleep(float(fault.params.get("seconds", 30.0)))
        status, payload = await self._judge(body, fault)
        headers = {}
        if status == 429:
            headers["Retry-After"] = f"{float(fault.params.get('retry_after', 1.0)):g}"
        wire_fault = fault.kind if fault is not None and fault.kind in ("truncated_body", "malformed_body") else None
        return _Reply(status, payload, headers, fault=wire_fault, counts_as_answer=status == 200)

    # Files and batches ------------------------------------------------------------------------

    def _upload(self, request: _Request) -> _Reply:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.body)
        fields, data, filename = {}, None, "upload"
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename() is not None:
                data, filename = part.get_payload(decode=True), part.get_filename()
            else:
                fields[name] = part.get_payload(decode=True).decode()
        if data is None:
            return _Reply(400, _error_body("no file in the upload", "invalid_request_error"))
        self._count("files_uploaded")
        return _Reply(200, self._store_file(data, filename, fields.get("purpose", "batch")))

    def _store_file(self, data: bytes, filename: str, purpose: str) -> dict:
        file_id = f"file-{next(self._ids)}"
        meta = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}
        self.files[file_id] = {**meta, "data": data}
        return meta

    def _file(self, file_id: str, content: bool) -> _Reply:
        stored = self.files.get(file_id)
        if stored is None:
            return _Reply(404, _error_body(f"no such file {file_id}", "invalid_request_error"))
        if content:
            return _Reply(200, stored["data"])
        return _Reply(200, {k: v for k, v in stored.items() if k != "data"})

    def _create_batch(self, spec: dict) -> _Reply:
        if spec.get("input_file_id") not in self.files:
            return _Reply(400, _error_body(f"no such file {spec.get('input_file_id')}", "invalid_request_error"))
        batch_id = f"batch_{next(self._ids)}"
        now = int(time.time())
        batch = {
            "id": batch_id, "object": "batch", "endpoint": spec.get("endpoint", "/v1/chat/completions"),
            "errors": None, "input_file_id": spec["input_file_id"],
            "completion_window": spec.get("completion_window", "24h"), "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + 86400, "completed_at": None, "metadata": spec.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        self.batches[batch_id] = batch
        self._count("batches_created")
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _Reply(200, dict(batch))

    async def _batch_line(self, line: dict) -> tuple[bool, dict]:
        """(ok, output line) for one request of a batch input file."""
        body = line.get("body") or {}
        try:
            _, instruction, _ = read_request(body)
            fault = self._take_fault(instruction)
            if fault is not None and fault.kind in TRANSPORT_FAULTS:
                fault = Fault("server_error", 1, None)
            if self.latency:
                await asyncio.sleep(self.latency)
            status, payload = await self._judge(body, fault)
        except ValueError as err:
            status, payload = 400, _error_body(str(err), "invalid_request_error")
        result = {"id": f"batch_req_{next(self._ids)}", "custom_id": line.get("custom_id"),
                  "response": {"status_code": status, "request_id": f"req_{next(self._ids)}", "body": payload},
                  "error": None}
        if status == 200:
            self._count("batch_lines_answered")
        return status == 200, result

    async def _run_batch(self, batch: dict) -> None:
        batch["status"], batch["in_progress_at"] = "in_progress", int(time.time())
        lines = [json.loads(text) for text in self.files[batch["input_file_id"]]["data"].splitlines() if text.strip()]
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
def serve_oracle(latency: float = 0.0):
    """``with serve_oracle() as base_url:`` the synthetic world's oracle judge on a loopback port."""
    server = LoopbackServer(OracleResponder(), latency=latency).start()
    try:
        yield server.base_url
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a loopback OpenAI-compatible judge server in the foreground.")
    parser.add_argument("--responder", choices=("oracle", "constant"), default="oracle")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every completion")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    responder = OracleResponder() if args.responder == "oracle" else ConstantResponder()
    server = LoopbackServer(responder, latency=args.latency, port=args.port)

    async def run():
        await server.start_serving()
        print(server.base_url, flush=True)
        await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
