"""The loopback OpenAI-compatible server with a responder that is not a judge: chat completions
under a json_schema and the Batch API through the real ``openai`` client, every injected fault as
the client sees it, responder errors as HTTP statuses, and the foreground server module."""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from editforge.dataset_builders.annotation import responders
from editforge.dataset_builders.annotation import server as server_module
from editforge.dataset_builders.annotation.responders import ChatRequest, OracleResponder, ResponderError
from editforge.dataset_builders.annotation.server import FAULT_KINDS, LoopbackServer, load_responder, serve

SCHEMA = {
    "type": "object",
    "properties": {"instruction": {"type": "string"}, "strength": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["instruction", "strength"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "edit_instruction", "strict": True, "schema": SCHEMA}}
SYSTEM = "You write one image-editing instruction for the caption you are given."


class InstructionWriter:
    """Writes an edit instruction from the caption in the user text (what an offline LLM will do)."""

    def __init__(self):
        self.seen: list[ChatRequest] = []

    def respond(self, request: ChatRequest) -> dict:
        self.seen.append(request)
        if request.schema_name != "edit_instruction":
            raise ResponderError(400, "expected the edit_instruction schema")
        caption = request.user_text.removeprefix("Caption: ")
        if "unreadable" in caption:
            raise ResponderError(422, f"cannot write an instruction for {caption!r}")
        return expected(caption)


def expected(caption: str) -> dict:
    return {"instruction": f"make the {caption} blue", "strength": 3}


def messages(caption: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Caption: {caption}"}]


def ask(client, caption, **options):
    return client.chat.completions.create(model="instruction-writer", messages=messages(caption),
                                          response_format=RESPONSE_FORMAT, **options)


@pytest.fixture(scope="module")
def writer():
    return InstructionWriter()


@pytest.fixture(scope="module")
def server(writer):
    with LoopbackServer(writer) as server:
        yield server


@pytest.fixture(autouse=True)
def no_faults(request):
    if "server" in request.fixturenames:
        server = request.getfixturevalue("server")
        server.faults.clear()
        yield
        server.faults.clear()
    else:
        yield


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0, timeout=2.0) as client:
        yield client


def test_a_custom_responder_answers_through_the_openai_client(server, writer, client):
    before = server.stats
    completion = ask(client, "red car")
    choice = completion.choices[0]
    assert json.loads(choice.message.content) == expected("red car")
    assert choice.finish_reason == "stop" and completion.model == "instruction-writer"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    request = writer.seen[-1]
    assert request.model == "instruction-writer" and request.schema_name == "edit_instruction"
    assert request.schema == SCHEMA and request.system_text == SYSTEM and request.image_urls == []
    assert request.response_format == RESPONSE_FORMAT and request.body["messages"] == messages("red car")
    deadline = time.monotonic() + 2  # counted by the server thread once written: the client may read it first
    while server.stats.get("chat_answered", 0) == before.get("chat_answered", 0) and time.monotonic() < deadline:
        time.sleep(0.005)
    after = server.stats
    assert after["chat_requests"] - before.get("chat_requests", 0) == 1
    assert after["chat_answered"] - before.get("chat_answered", 0) == 1
    assert "test-key" in server.api_keys_seen


def test_what_the_responder_refuses_is_its_http_status(server, client):
    with pytest.raises(openai.UnprocessableEntityError, match="cannot write an instruction") as info:
        ask(client, "unreadable scan")
    assert info.value.status_code == 422 and info.value.code == "responder_error"
    with pytest.raises(openai.BadRequestError, match="expected the edit_instruction schema"):
        client.chat.completions.create(model="m", messages=messages("red car"))
    with pytest.raises(openai.BadRequestError, match="no list of messages"):
        client.post("/chat/completions", body={"model": "m"}, cast_to=object)


def test_the_oracle_judge_is_one_responder_among_others():
    assert isinstance(LoopbackServer().responder, OracleResponder)
    for name in ("ChatRequest", "ConstantResponder", "OracleResponder", "ResponderError", "Responder"):
        assert getattr(server_module, name) is getattr(responders, name)
    assert isinstance(InstructionWriter(), responders.Responder)


async def _async_answer(request):
    await asyncio.sleep(0)
    return {"instruction": request.user_text.upper(), "strength": 1}


class ThreadedWriter:
    cpu_bound = True

    def respond(self, request):
        return {"instruction": request.user_text.upper(), "strength": 1}


@pytest.mark.parametrize("responder", [lambda r: {"instruction": r.user_text.upper(), "strength": 1}, _async_answer,
                                       ThreadedWriter()], ids=["function", "async", "cpu_bound"])
def test_functions_coroutines_and_threaded_responders_plug_in(responder):
    with serve(responder) as base_url, openai.OpenAI(base_url=base_url, api_key="k", max_retries=0) as client:
        completion = ask(client, "a cat")
    assert json.loads(completion.choices[0].message.content) == {"instruction": "CAPTION: A CAT", "strength": 1}


def test_a_responder_that_breaks_is_a_500_and_the_server_goes_on(caplog):
    calls = []

    def flaky(request):
        calls.append(request)
        if len(calls) == 1:
            raise RuntimeError("the model fell over")
        return "plain text answer"  # a str goes out as it is

    with serve(flaky) as base_url, openai.OpenAI(base_url=base_url, api_key="k", max_retries=0) as client:
        with pytest.raises(openai.InternalServerError, match="RuntimeError: the model fell over"):
            ask(client, "a cat")
        assert ask(client, "a cat").choices[0].message.content == "plain text answer"
    assert "the model fell over" in caplog.text


def test_a_wrong_key_is_refused(writer):
    with LoopbackServer(writer, api_key="the-right-key") as server:
        with (openai.OpenAI(base_url=server.base_url, api_key="a-wrong-key", max_retries=0) as client,
              pytest.raises(openai.AuthenticationError)):
            ask(client, "red car")
        with openai.OpenAI(base_url=server.base_url, api_key="the-right-key", max_retries=0) as client:
            assert json.loads(ask(client, "red car").choices[0].message.content) == expected("red car")
        assert server.api_keys_seen == {"a-wrong-key", "the-right-key"}


# --------------------------------------------------------------------------------------------
# Faults, as the openai client sees them, for a responder that is not a judge


def _not_json(completion):
    with pytest.raises(json.JSONDecodeError):
        json.loads(completion.choices[0].message.content)


def _out_of_range(completion):
    answer = json.loads(completion.choices[0].message.content)
    assert answer == {**expected("red car"), "strength": SCHEMA["properties"]["strength"]["maximum"] + 2}


def _missing_field(completion):
    assert json.loads(completion.choices[0].message.content) == {"strength": 3}


def _cut_off(completion):
    content, whole = completion.choices[0].message.content, json.dumps(expected("red car"))
    assert completion.choices[0].finish_reason == "length"
    assert 0 < len(content) < len(whole) and whole.startswith(content)


CHECKS = {  # kind: (exception the call raises, or None and a check of the completion)
    "rate_limit": (openai.RateLimitError, None),
    "server_error": (openai.InternalServerError, None),
    "stall": (openai.APITimeoutError, None),
    "truncated_body": (openai.APIConnectionError, None),
    "malformed_body": (json.JSONDecodeError, None),
    "malformed_json": (None, _not_json),
    "out_of_range": (None, _out_of_range),
    "invalid_schema": (None, _missing_field),
    "truncated_answer": (None, _cut_off),
}


def test_every_fault_kind_is_checked():
    assert set(CHECKS) == set(FAULT_KINDS)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_reaches_the_client_once_then_the_true_answer(server, client, kind):
    error, check = CHECKS[kind]
    server.faults.add(kind, times=1, match="red", retry_after=0.05, seconds=1.0)
    faults_before = server.stats.get(f"fault:{kind}", 0)
    assert json.loads(ask(client, "blue sky").choices[0].message.content) == expected("blue sky")  # no match
    if error is not None:
        with pytest.raises(error) as info:
            ask(client, "red car", timeout=0.3)
        if kind == "rate_limit":
            assert info.value.response.headers["retry-after"] == "0.05"
        if kind == "truncated_body":
            assert not isinstance(info.value, openai.APITimeoutError)
    else:
        check(ask(client, "red car"))
    assert server.stats[f"fault:{kind}"] == faults_before + 1
    assert json.loads(ask(client, "red car").choices[0].message.content) == expected("red car")  # cleared


@pytest.mark.parametrize("kind", ["truncated_body", "malformed_body"])
def test_the_body_faults_fail_the_same_on_the_aiohttp_transport(server, kind):
    server.faults.add(kind, times=1)

    async def run():
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=2.0,
                                      http_client=openai.DefaultAioHttpClient()) as client:
            with pytest.raises(CHECKS[kind][0]):
                await client.chat.completions.create(model="m", messages=messages("red car"),
                                                     response_format=RESPONSE_FORMAT)
            return await client.chat.completions.create(model="m", messages=messages("red car"),
                                                        response_format=RESPONSE_FORMAT)

    assert json.loads(asyncio.run(run()).choices[0].message.content) == expected("red car")


def test_out_of_range_breaks_the_first_bounded_value_of_any_schema():
    from editforge.dataset_builders.annotation.server import Fault, _faulty_content

    fault = Fault("out_of_range", 1, None)
    schema = {"type": "object", "properties": {
        "note": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
        "caption": {"type": "string", "maxLength": 8},
    }}
    answer = {"note": "n", "tags": ["a"], "caption": "short"}
    content, _ = _faulty_content(fault, answer, schema)
    assert json.loads(content) == {"note": "n", "tags": ["__out_of_range__"], "caption": "short"}
    assert answer == {"note": "n", "tags": ["a"], "caption": "short"}  # the responder's object is untouched
    content, _ = _faulty_content(fault, {"note": "n", "caption": "short"}, schema)
    assert json.loads(content) == {"note": "n", "caption": "x" * 10}
    content, _ = _faulty_content(fault, {"note": "n", "caption": "short"}, None)  # nothing bounded: a field dropped
    assert json.loads(content) == {"caption": "short"}


def test_stop_does_not_wait_for_a_stalled_request(writer):
    server = LoopbackServer(writer).start()
    server.faults.add("stall", times=1, seconds=30.0)
    with (openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=0.2) as client,
          pytest.raises(openai.APITimeoutError)):
        ask(client, "red car")
    start = time.perf_counter()
    server.stop()
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------------------------
# The Batch API, for any responder


def test_the_batch_api_serves_any_responder(server, client):
    server.faults.add("server_error", times=1, match="green")
    server.faults.add("truncated_body", times=1, match="yellow")  # a transport fault in a batch: a 500 line
    captions = ["red car", "blue sky", "unreadable scan", "green tree", "yellow sun"]
    lines = [{"custom_id": f"item-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "instruction-writer", "messages": messages(c), "response_format": RESPONSE_FORMAT}}
             for i, c in enumerate(captions)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert uploaded.bytes == len(data) and uploaded.purpose == "batch"
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 10
    while batch.status != "completed" and time.monotonic() < deadline:
        time.sleep(0.02)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (5, 2, 3)

    output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    answers = {o["custom_id"]: json.loads(o["response"]["body"]["choices"][0]["message"]["content"]) for o in output}
    assert answers == {"item-0": expected("red car"), "item-1": expected("blue sky")}
    errors = {e["custom_id"]: e["response"] for e in map(json.loads, client.files.content(batch.error_file_id).text.splitlines())}
    assert {k: v["status_code"] for k, v in errors.items()} == {"item-2": 422, "item-3": 500, "item-4": 500}
    assert "cannot write an instruction" in errors["item-2"]["body"]["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_a_batch_whose_file_is_not_json_lines_fails_and_says_why(server, client):
    uploaded = client.files.create(file=("broken.jsonl", b'{"custom_id": "a"}\nnot json\n'), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 5
    while batch.status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.02)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "failed" and batch.failed_at is not None and batch.output_file_id is None
    assert "JSONDecodeError" in batch.errors.data[0].message


# --------------------------------------------------------------------------------------------
# The foreground server: ``python -m editforge.dataset_builders.annotation.server``


def test_the_server_module_serves_a_responder_named_by_import_path(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "editforge.dataset_builders.annotation.server",
                                "--responder", "test_loopback_server:InstructionWriter"],
                               stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with openai.OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=5.0) as client:
            assert json.loads(ask(client, "red car").choices[0].message.content) == expected("red car")
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def test_responder_names():
    assert isinstance(load_responder("oracle"), OracleResponder)
    assert isinstance(load_responder("constant"), responders.ConstantResponder)
    assert isinstance(load_responder("editforge.dataset_builders.annotation.responders:ConstantResponder"),
                      responders.ConstantResponder)
    with pytest.raises(ValueError, match="unknown responder"):
        load_responder("nonsense")
