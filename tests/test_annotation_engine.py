"""The annotation engine end to end: oracle agreement, kill -9 and resume, the Batch API, the
API key written nowhere, image handling and the output contract."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from editforge.dataset_builders.annotation import (
    AnswerCache,
    ConstantResponder,
    LoopbackServer,
    MissingRewards,
    Pricing,
    RetryPolicy,
    annotate_manifest,
)
from editforge.dataset_builders.annotation.images import decode_data_url
from editforge.dataset_builders.annotation.rubrics import read_request
from editforge.dataset_builders.manifest import read_manifest
from editforge.dataset_builders.synthetic import PERSPECTIVES, write_synthetic_dataset

FAST = RetryPolicy(max_attempts=3, max_invalid_answers=3, timeout=5.0, base_delay=0.01, max_delay=0.05)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def run_cli(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "editforge", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kwargs)


@pytest.fixture(scope="module")
def world300(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world300")
    write_synthetic_dataset(folder, n=300, seed=11, imperfect_rate=0.5, progress=False)
    return folder


@pytest.fixture(scope="module")
def world30(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world30")
    write_synthetic_dataset(folder, n=30, seed=5, imperfect_rate=0.7, width=80, height=48, progress=False)
    return folder


@pytest.fixture
def oracle_server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with LoopbackServer() as server:
        yield server


def unique_instructions(world, count):
    records = list(read_manifest(world))
    seen = {}
    for r in records:
        seen.setdefault(r["instruction"], []).append(r["id"])
    chosen = [r for r in records if len(seen[r["instruction"]]) == 1][:count]
    return [(r["id"], r["instruction"]) for r in chosen]


# --- the oracle judge through the whole real path --------------------------------------------


def test_300_triplets_with_the_oracle_judge_match_the_ground_truth(world300, tmp_path):
    out, cache = tmp_path / "rewards.jsonl", tmp_path / "cache.sqlite"
    report = annotate_manifest(world300, out, judge="oracle", cache=cache, concurrency=8, progress=False)
    lines = read_jsonl(out)
    assert [l["id"] for l in lines] == [r["id"] for r in read_manifest(world300)]
    assert report.total == report.judged == 300 and report.failed == report.cached == 0
    all_three = sum(all(l["rewards"][p]["score"] == l["ground_truth"][p]["score"] for p in PERSPECTIVES) for l in lines)
    assert all_three / 300 >= 0.95, all_three
    for line in lines:
        assert line["judge"] == {"model": "editforge-oracle", "rubric": "multi-reward", "rubric_version": "1"}
        assert "error" not in line
        assert all(isinstance(line["rewards"][p]["feedback"], str) for p in PERSPECTIVES)
    # usage per item adds up to the run's total, and the cost is the gpt-4o price of it
    prompt = sum(l["usage"]["prompt_tokens"] for l in lines)
    completion = sum(l["usage"]["completion_tokens"] for l in lines)
    assert (report.usage.prompt_tokens, report.usage.completion_tokens) == (prompt, completion)
    assert report.cost == pytest.approx(prompt * 2.5e-6 + completion * 10e-6)

    # the same command again: everything from the cache, nothing paid, the same bytes
    first = out.read_bytes()
    again = annotate_manifest(world300, out, judge="oracle", cache=cache, concurrency=8, progress=False)
    assert again.cached == 300 and again.judged == 0 and again.usage.prompt_tokens == 0 and again.cost == 0
    assert out.read_bytes() == first


def test_viescore_edit_output_contract(world30, tmp_path):
    out = tmp_path / "vie.jsonl"
    annotate_manifest(world30, out, rubric="viescore-edit", judge="oracle", cache=tmp_path / "c.sqlite", progress=False)
    for line in read_jsonl(out):
        rewards, truth = line["rewards"], line["ground_truth"]
        assert set(rewards) == {"sc", "pq", "o", "sc_scores", "pq_scores", "sc_reasoning", "pq_reasoning"}
        assert rewards["sc_scores"] == [2 * truth["instruction_following"]["score"], 2 * truth["detail_preserving"]["score"]]
        assert rewards["sc"] == min(rewards["sc_scores"]) and rewards["pq"] == min(rewards["pq_scores"])
        assert rewards["o"] == pytest.approx((rewards["sc"] * rewards["pq"]) ** 0.5)
        assert line["judge"]["rubric"] == "viescore-edit"


# --- kill -9 and resume ------------------------------------------------------------------------


def test_kill_9_mid_run_loses_no_answer_and_asks_again_only_what_was_in_flight(tmp_path):
    world = tmp_path / "world"
    write_synthetic_dataset(world, n=500, seed=2, imperfect_rate=0.5, width=32, height=32, progress=False)
    out, cache, concurrency = tmp_path / "out.jsonl", tmp_path / "cache.sqlite", 8
    with LoopbackServer(ConstantResponder(), latency=0.02, api_key="kill-test-key") as server:
        args = ["annotate", world, "--out", out, "--base-url", server.base_url, "--model", "judge-model",
                "--concurrency", concurrency, "--cache", cache, "--no-progress"]
        env = {"OPENAI_API_KEY": "kill-test-key"}
        process = subprocess.Popen([sys.executable, "-m", "editforge", *map(str, args)], env={**os.environ, **env},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.stats.get("chat_answered", 0) < 150 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(0.2)  # what was in flight at the kill is still answered (to nobody)
        answered_before_kill = server.stats["chat_answered"]
        requests_before_rerun = server.stats["chat_requests"]
        assert 150 <= answered_before_kill < 500, answered_before_kill
        assert not out.exists()  # the output is written at the end, atomically
        with AnswerCache(cache) as answers:
            stored = len(answers)
        assert answered_before_kill - concurrency <= stored <= answered_before_kill

        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr
        lines = read_jsonl(out)
        assert len(lines) == 500 and all(line["rewards"] is not None for line in lines)
        assert [l["id"] for l in lines] == [r["id"] for r in read_manifest(world)]
        total_answered = server.stats["chat_answered"]
        assert total_answered <= 500 + concurrency, total_answered
        # the rerun asked only for what was not stored: at most what was in flight at the kill is asked twice
        assert server.stats["chat_requests"] - requests_before_rerun == 500 - stored
        assert f"{stored} from the cache" in result.stdout


# --- the Batch API -----------------------------------------------------------------------------


@pytest.mark.parametrize("rubric", ["multi-reward", "viescore-edit"])
def test_batch_mode_gives_the_same_output_as_direct_mode(world30, tmp_path, oracle_server, rubric):
    common = dict(rubric=rubric, base_url=oracle_server.base_url, model="editforge-oracle", progress=False)
    direct = annotate_manifest(world30, tmp_path / "direct.jsonl", cache=tmp_path / "direct.sqlite", **common)
    batch = annotate_manifest(world30, tmp_path / "batch.jsonl", cache=tmp_path / "batch.sqlite", batch=True,
                              poll_interval=0.05, **common)
    assert (tmp_path / "batch.jsonl").read_bytes() == (tmp_path / "direct.jsonl").read_bytes()
    assert batch.judged == direct.judged == 30
    assert oracle_server.stats["batches_created"] == 1 and oracle_server.stats["batch_lines_answered"] == 30
    assert batch.usage == direct.usage and batch.cost == pytest.approx(direct.cost / 2)
    assert not list((tmp_path / "batches").glob("*.jsonl"))  # upload files are removed once merged


def test_an_interrupted_batch_run_waits_for_its_batch_instead_of_paying_again(world30, tmp_path, oracle_server, monkeypatch):
    from editforge.dataset_builders.annotation.batch import BatchRunner

    def interrupted(self, records):
        raise KeyboardInterrupt

    options = dict(base_url=oracle_server.base_url, model="editforge-oracle", cache=tmp_path / "c.sqlite",
                   batch=True, poll_interval=0.05, progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(BatchRunner, "wait", interrupted)
        with pytest.raises(KeyboardInterrupt):
            annotate_manifest(world30, tmp_path / "out.jsonl", **options)
    assert oracle_server.stats["batches_created"] == 1
    report = annotate_manifest(world30, tmp_path / "out.jsonl", **options)
    assert oracle_server.stats["batches_created"] == 1 and oracle_server.stats["files_uploaded"] == 1
    assert report.judged == 30 and report.failed == 0
    assert all(line["rewards"] for line in read_jsonl(tmp_path / "out.jsonl"))


def test_batch_lines_that_fail_go_in_another_round_and_then_are_missing(world30, tmp_path, oracle_server):
    (first, a), (second, b), (third, c) = unique_instructions(world30, 3)
    oracle_server.faults.add("out_of_range", times=1, match=a)
    oracle_server.faults.add("rate_limit", times=1, match=b)
    oracle_server.faults.add("malformed_json", times=None, match=c)
    report = annotate_manifest(world30, tmp_path / "out.jsonl", base_url=oracle_server.base_url, model="editforge-oracle",
                               cache=tmp_path / "c.sqlite", batch=True, poll_interval=0.05, progress=False,
                               policy=FAST, allow_missing=True)
    lines = {l["id"]: l for l in read_jsonl(tmp_path / "out.jsonl")}
    assert report.failed == 1 and report.judged == 29
    assert lines[third]["rewards"] is None and "not JSON" in lines[third]["error"]
    for item in (first, second):
        assert {p: lines[item]["rewards"][p]["score"] for p in PERSPECTIVES} == \
               {p: lines[item]["ground_truth"][p]["score"] for p in PERSPECTIVES}
    assert oracle_server.stats["batches_created"] == FAST.max_invalid_answers  # round 1, then 2 rounds for the rest


# --- the key is written nowhere ----------------------------------------------------------------


def test_a_sentinel_api_key_appears_in_no_file_editforge_wrote(world30, tmp_path):
    sentinel = f"sk-sentinel-{uuid.uuid4().hex}"
    home = tmp_path / "home"  # also catches anything written under ~ or the default cache
    env = {"OPENAI_API_KEY": sentinel, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    (_, unjudgeable), = unique_instructions(world30, 1)
    with LoopbackServer(api_key=sentinel) as server:
        server.faults.add("out_of_range", times=None, match=unjudgeable)  # an error recorded in the output
        for mode, extra in (("direct", []), ("batch", ["--batch", "--poll-interval", "0.05"])):
            result = run_cli("annotate", world30, "--out", tmp_path / f"out-{mode}.jsonl", "--base-url",
                             server.base_url, "--max-invalid", "2", "--allow-missing", *extra, env=env, cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert sentinel not in result.stdout + result.stderr
        assert server.api_keys_seen == {sentinel}  # the key was really used
        uploads = [f["data"] for f in server.files.values() if f["purpose"] == "batch"]
    assert uploads and all(sentinel.encode() not in data for data in uploads)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in written) and len(read_jsonl(tmp_path / "out-batch.jsonl")) == 30
    for path in written:
        assert sentinel.encode() not in path.read_bytes(), path


# --- images, paths and errors ------------------------------------------------------------------


def test_output_elsewhere_keeps_image_paths_and_bad_images_are_reported_by_id(world30, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(world30, world)
    records = list(read_manifest(world))
    (world / records[3]["edited_image"]).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (world / records[5]["source_image"]).unlink()
    out = tmp_path / "elsewhere" / "deeper" / "rewards.jsonl"
    with pytest.raises(MissingRewards, match="2 of 30 items have no rewards") as info:
        annotate_manifest(world, out, judge="oracle", cache=tmp_path / "c.sqlite", progress=False)
    assert info.value.report.failed == 2
    lines = read_jsonl(out)  # written all the same: nothing done is lost
    assert len(lines) == 30
    assert lines[3]["rewards"] is None and lines[3]["id"] == records[3]["id"]
    assert lines[3]["error"].startswith(f"edited_image '{records[3]['edited_image']}': not a readable image")
    assert lines[5]["rewards"] is None and "source_image" in lines[5]["error"] and "No such file" in lines[5]["error"]
    for line, record in zip(lines, records):
        for field in ("source_image", "edited_image", "mask_image", "ideal_image"):
            if record[field] is not None:
                assert (out.parent / line[field]).resolve() == (world / record[field]).resolve()


class RecordingResponder(ConstantResponder):
    def __init__(self):
        self.images = []

    def answer(self, rubric, instruction, image_urls):
        self.images.append(image_urls)
        return super().answer(rubric, instruction, image_urls)


def test_images_are_downscaled_to_max_side_and_small_ones_sent_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    world = tmp_path / "world"
    write_synthetic_dataset(world, n=4, seed=0, imperfect_rate=0.5, width=200, height=120, progress=False)
    responder = RecordingResponder()
    with LoopbackServer(responder) as server:
        for max_side in (64, 768):
            annotate_manifest(world, tmp_path / f"{max_side}.jsonl", base_url=server.base_url, model="m",
                              cache=tmp_path / "c.sqlite", max_side=max_side, progress=False)
    small, large = responder.images[:4], responder.images[4:]
    assert len(large) == 4  # another max_side is another request (another cache key)
    for urls in small:
        assert [decode_data_url(u).size for u in urls] == [(64, 38), (64, 38)]
    records = {r["instruction"]: r for r in read_manifest(world)}
    import base64
    for urls in large:
        payloads = [base64.b64decode(u.partition(",")[2]) for u in urls]
        record = next(r for r in records.values() if (world / r["source_image"]).read_bytes() == payloads[0])
        assert payloads[1] == (world / record["edited_image"]).read_bytes()


def test_the_request_carries_instruction_and_images_in_order(world30):
    from editforge.dataset_builders.annotation import JudgeClient, prepare_image

    record = next(read_manifest(world30))
    client = JudgeClient("multi-reward", model="m", base_url="http://127.0.0.1:9/v1", api_key="k")
    source, edited = (prepare_image(world30 / record[f]) for f in ("source_image", "edited_image"))
    body = client.request_body('say "hi"\nthen stop', source, edited)
    rubric, instruction, urls = read_request(json.loads(json.dumps(body)))
    assert rubric.name == "multi-reward" and instruction == 'say "hi"\nthen stop'
    assert urls == [source.data_url, edited.data_url]
    assert body["response_format"]["json_schema"]["strict"] is True


# --- the command line --------------------------------------------------------------------------


def test_cli_exits_non_zero_with_a_summary_when_items_are_missing(world30, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(world30, world)
    lines = (world / "manifest.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    record["instruction"] = "make it look like a van gogh painting"
    lines[2] = json.dumps(record)
    (world / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["annotate", world / "manifest.jsonl", "--out", out, "--judge", "oracle", "--cache", tmp_path / "c.sqlite"]
    result = run_cli(*args)
    assert result.returncode == 1
    assert "1 of 30 items have no rewards" in result.stderr and "--allow-missing" in result.stderr
    assert "29 judged" in result.stdout and "1 missing" in result.stdout and "estimated cost $" in result.stdout
    assert "cached=0 failed=1" in result.stderr and "item/s" in result.stderr  # the progress bar
    missing = read_jsonl(out)[2]
    assert missing["rewards"] is None and "oracle cannot judge" in missing["error"]
    again = run_cli(*args, "--allow-missing", "--no-progress")
    assert again.returncode == 0 and "29 from the cache" in again.stdout


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--concurrency", "0"], {}, "--concurrency: must be 1 or more"),
        (["--max-side", "-5"], {}, "--max-side: must be 0 or more"),
        (["--price-in", "cheap"], {}, "--price-in: expected a number"),
        (["--rubric", "vibes"], {}, "--rubric: invalid choice"),
        (["--judge", "oracle", "--base-url", "http://127.0.0.1:1/v1"], {}, "--judge oracle serves its own endpoint"),
        ([], {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}, "OPENAI_API_KEY is not set"),
    ],
)
def test_bad_arguments_are_one_line(world30, tmp_path, args, env, message):
    result = run_cli("annotate", world30, "--out", tmp_path / "o.jsonl", "--cache", tmp_path / "c.sqlite", *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_bad_paths_are_one_line(world30, tmp_path):
    result = run_cli("annotate", tmp_path / "nowhere", "--out", tmp_path / "o.jsonl", "--judge", "oracle")
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("annotate", world30, "--out", tmp_path, "--judge", "oracle")
    assert result.returncode == 2 and "is a folder" in result.stderr and "Traceback" not in result.stderr


def test_pricing_defaults_are_gpt_4o():
    from editforge.dataset_builders.annotation import Usage

    usage = Usage(1_000_000, 100_000)
    assert Pricing().cost(usage) == pytest.approx(2.50 + 1.00)
    assert Pricing().cost(usage, batch=True) == pytest.approx((2.50 + 1.00) / 2)


def test_every_fault_inside_a_run_ends_in_the_true_score_or_a_missing_item(world30, tmp_path, oracle_server):
    from editforge.dataset_builders.annotation.server import FAULT_KINDS

    chosen = unique_instructions(world30, len(FAULT_KINDS) + 2)
    for (_, instruction), kind in zip(chosen, FAULT_KINDS):
        oracle_server.faults.add(kind, times=1, match=instruction, retry_after=0.05, seconds=2.0)
    (stuck, a), (broken, b) = chosen[-2:]
    oracle_server.faults.add("server_error", times=None, match=a)
    oracle_server.faults.add("out_of_range", times=None, match=b)
    policy = RetryPolicy(max_attempts=3, max_invalid_answers=2, timeout=0.5, base_delay=0.01, max_delay=0.05)
    report = annotate_manifest(world30, tmp_path / "out.jsonl", base_url=oracle_server.base_url, model="editforge-oracle",
                               cache=tmp_path / "c.sqlite", concurrency=8, policy=policy, allow_missing=True,
                               progress=False)
    assert report.failed == 2 and report.judged == 28
    assert oracle_server.stats["faults"] == len(FAULT_KINDS) + policy.max_attempts + policy.max_invalid_answers
    for line in read_jsonl(tmp_path / "out.jsonl"):
        if line["id"] == stuck:
            assert line["rewards"] is None and "gave up after 3 failed requests" in line["error"]
        elif line["id"] == broken:
            assert line["rewards"] is None and "2 invalid answers" in line["error"]
        else:
            assert {p: line["rewards"][p]["score"] for p in PERSPECTIVES} == \
                   {p: line["ground_truth"][p]["score"] for p in PERSPECTIVES}, line["id"]
    assert report.errors == {"gave up after 3 failed requests": 1, "2 invalid answers": 1}


def test_an_unreachable_endpoint_stops_the_run_with_one_line(world30, tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("annotate", world30, "--out", tmp_path / "o.jsonl", "--cache", tmp_path / "c.sqlite",
                     "--base-url", f"http://127.0.0.1:{port}/v1", "--max-attempts", "1", "--concurrency", "2",
                     "--no-progress", env={"OPENAI_API_KEY": "k"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach http://127.0.0.1" in lines[0] and "items in a row" in lines[0]
    assert not (tmp_path / "o.jsonl").exists()


def test_a_refused_batch_call_is_one_line_and_names_the_fix(world30, tmp_path):
    with LoopbackServer(api_key="the-right-key") as server:
        result = run_cli("annotate", world30, "--out", tmp_path / "o.jsonl", "--cache", tmp_path / "c.sqlite",
                         "--base-url", server.base_url, "--batch", "--no-progress", env={"OPENAI_API_KEY": "wrong-key"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HTTP 401" in lines[0] and "check OPENAI_API_KEY" in lines[0] and "wrong-key" not in lines[0]


def test_a_triplet_listed_twice_is_asked_once(world30, tmp_path, oracle_server):
    lines = (world30 / "manifest.jsonl").read_text().splitlines()
    duplicated = []
    for line in lines[:5]:
        record = json.loads(line)
        duplicated += [record, {**record, "id": record["id"] + "-again"}]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({**r, **{f: str(world30 / r[f]) for f in ("source_image", "edited_image")}}) + "\n"
                                for r in duplicated))
    before = oracle_server.stats.get("chat_requests", 0)
    report = annotate_manifest(manifest, tmp_path / "out.jsonl", base_url=oracle_server.base_url, model="m",
                               cache=tmp_path / "c.sqlite", concurrency=8, progress=False)
    assert oracle_server.stats["chat_requests"] - before == 5
    assert report.judged == 5 and report.cached == 5
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [l["id"] for l in out] == [r["id"] for r in duplicated]
    assert all(out[i]["rewards"] == out[i + 1]["rewards"] is not None for i in range(0, 10, 2))
