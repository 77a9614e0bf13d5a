"""editforge generate-prompts against the loopback server: the request/answer format round trip,
the offline default (the synthetic-world writer through the same client path), malformed answers
recorded as missing and counted, near-duplicates removed, kill -9 and resume (counting the
requests the server saw), the Batch API, the CLI's errors, and the API key written nowhere."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest

from editforge.dataset_builders.annotation import AnswerCache, JudgeClient, LoopbackServer, RetryPolicy
from editforge.dataset_builders.annotation.responders import ChatRequest
from editforge.dataset_builders.annotation.rubrics import InvalidAnswer
from editforge.dataset_builders.prompts import (
    PROMPT_FEATURES,
    MissingPrompts,
    Taxonomy,
    Theme,
    generate_prompts,
    load_taxonomy,
)
from editforge.dataset_builders.prompts.near_duplicates import NearDuplicates, jaccard, shingles
from editforge.dataset_builders.prompts.request_format import AXIS_GUIDES, PromptFormat, PromptRequest, read_request
from editforge.dataset_builders.prompts.synthetic_writer import (
    SYNTHETIC_WRITER_MODEL,
    SyntheticPromptWriter,
    read_subtopic,
)
from editforge.errors import UsageError
from editforge.vocabulary import CONTRAST_AXES

FAST = RetryPolicy(max_attempts=2, max_invalid_answers=2, timeout=5.0, base_delay=0.01, max_delay=0.02)
SYNTHETIC = load_taxonomy("synthetic")
SUBTOPICS = len(list(SYNTHETIC.subtopics()))


def rows_of(out):
    from datasets import load_dataset

    dataset = load_dataset(str(out), split="train")
    assert dataset.features == PROMPT_FEATURES
    return dataset.to_list()


def report_file(out):
    return json.loads((out / "generation.json").read_text())


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "editforge", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """The offline default on the synthetic taxonomy: (report, rows, out)."""
    root = tmp_path_factory.mktemp("offline")
    report = generate_prompts("synthetic", root / "out", per_subtopic=3, cache=root / "c.sqlite", progress=False)
    return report, rows_of(root / "out"), root / "out"


@pytest.fixture
def writer_server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with LoopbackServer(SyntheticPromptWriter()) as server:
        yield server


# --- the request and answer format ---------------------------------------------------------


def test_the_request_round_trips_and_the_writers_answer_parses():
    prompt_format = PromptFormat(4, ("content", "aesthetics"))
    client = JudgeClient(prompt_format, model="m", base_url="http://127.0.0.1:9/v1", api_key="k")
    body = json.loads(json.dumps(client.chat_body(prompt_format.messages('a "quoted"\ntheme', "red circle"), seed=7)))
    assert read_request(body) == PromptRequest('a "quoted"\ntheme', "red circle", 4, ("content", "aesthetics"))
    assert body["seed"] == 7 and body["response_format"]["json_schema"]["strict"] is True
    assert body["response_format"]["json_schema"]["schema"]["properties"]["prompts"]["items"]["required"] == \
        ["base", "content", "aesthetics"]
    answer = SyntheticPromptWriter().respond(ChatRequest.from_body(body))
    completion = {"choices": [{"finish_reason": "stop", "message": {"content": json.dumps(answer)}}]}
    parsed = client.rewards_of(completion)
    assert parsed == answer and len(parsed["prompts"]) == 4
    for item in parsed["prompts"]:
        assert set(item) == {"base", "content", "aesthetics"} and "red circle" in item["base"]
        assert item["content"] != item["base"] and item["aesthetics"] != item["base"]
    assert set(AXIS_GUIDES) == set(CONTRAST_AXES)  # every axis of the vocabulary is explained to the LLM


@pytest.mark.parametrize("content, message", [
    ("not json", "not JSON"),
    (json.dumps({"prompts": [{"base": "a", "content": "b"}]}), "expected 2 prompts, got 1"),
    (json.dumps({"prompts": [{"base": "a", "content": "b"}, {"base": "c"}]}), r"prompts\[1\]: missing content"),
    (json.dumps({"prompts": [{"base": "a", "content": "b"}] * 2, "note": 1}), "unexpected note"),
    (json.dumps({"prompts": [{"base": "a", "content": " "}] * 2}), r"prompts\[0\]: empty content"),
    (json.dumps({"prompts": "a, b"}), "expected an array"),
    ("", "empty answer"),
])
def test_malformed_answers_are_invalid_never_repaired(content, message):
    with pytest.raises(InvalidAnswer, match=message):
        PromptFormat(2, ("content",)).parse(content)


def test_requests_that_are_not_ours_are_refused():
    with pytest.raises(ValueError, match="no json_schema"):
        read_request({"messages": []})
    body = {"response_format": PromptFormat(1).response_format, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ValueError, match="names no theme, subtopic"):
        read_request(body)


# --- the offline default -------------------------------------------------------------------


def test_the_offline_default_writes_a_dataset_of_contrasting_world_prompts(offline):
    report, rows, out = offline
    assert report.subtopics == report.asked == SUBTOPICS and report.missing_subtopics == 0
    assert report.base_prompts == 3 * SUBTOPICS and report.not_contrasting == 0
    assert report.pairs == len(rows) == 3 * (report.base_prompts - report.near_duplicates)
    assert report.pairs_per_axis == {axis: report.pairs // 3 for axis in CONTRAST_AXES}
    assert report.usage.prompt_tokens > 0 and report.cost > 0 and report.answer_usage == report.usage
    assert len({row["pair_id"] for row in rows}) == len(rows)
    for row in rows:
        assert row["model"] == SYNTHETIC_WRITER_MODEL and row["contrast"] in CONTRAST_AXES
        assert row["base_prompt"] != row["contrast_prompt"]
        wishes = read_subtopic(row["subtopic"])
        for word in (wishes.colour, wishes.kind, wishes.background):
            assert word is None or word in row["base_prompt"], row
    card = (out / "README.md").read_text()
    assert f"Pairs: {report.pairs}" in card and "word trigrams" in card and "at least 0.9" in card
    assert report_file(out)["pairs"] == report.pairs


def test_the_writer_is_deterministic_for_a_seed(offline, tmp_path):
    _, rows, _ = offline
    again = generate_prompts("synthetic", tmp_path / "same", per_subtopic=3, cache=tmp_path / "c.sqlite", progress=False)
    assert rows_of(tmp_path / "same") == rows and again.cached == 0  # asked again, the same answers
    generate_prompts("synthetic", tmp_path / "other", per_subtopic=3, seed=1, cache=tmp_path / "c.sqlite", progress=False)
    other = rows_of(tmp_path / "other")
    assert {r["base_prompt"] for r in other} != {r["base_prompt"] for r in rows}


def test_axes_choose_the_variants(tmp_path):
    taxonomy = Taxonomy("small", (Theme("circles", ("red circle", "blue circle")),))
    report = generate_prompts(taxonomy, tmp_path / "out", per_subtopic=2, axes=["aesthetics"],
                              cache=tmp_path / "c.sqlite", progress=False)
    rows = rows_of(tmp_path / "out")
    assert report.pairs == len(rows) == 4 and {r["contrast"] for r in rows} == {"aesthetics"}
    with pytest.raises(UsageError, match="contrast axis 'content' is not one of the taxonomy"):
        generate_prompts(Taxonomy("t", taxonomy.themes, ("aesthetics",)), tmp_path / "x", axes=["content"],
                         cache=tmp_path / "c.sqlite", progress=False)


# --- missing answers and near-duplicates -----------------------------------------------------


def test_malformed_answers_are_missing_and_counted_then_asked_again(writer_server, tmp_path):
    writer_server.faults.add("malformed_json", times=None, match="red circle")
    writer_server.faults.add("truncated_answer", times=None, match="two shapes")
    writer_server.faults.add("invalid_schema", times=1, match="blue square")  # clears on the retry
    options = dict(per_subtopic=2, base_url=writer_server.base_url, model=SYNTHETIC_WRITER_MODEL,
                   cache=tmp_path / "c.sqlite", policy=FAST, progress=False)
    with pytest.raises(MissingPrompts, match=f"2 of {SUBTOPICS} subtopics have no valid answer") as info:
        generate_prompts("synthetic", tmp_path / "out", **options)
    report = info.value.report
    assert writer_server.stats["chat_requests"] == SUBTOPICS + 1 + 2  # one retry each: cleared, and the 2 given up
    assert report.asked == SUBTOPICS - 2 and report.errors == {"2 invalid answers": 2}
    rows = rows_of(tmp_path / "out")  # what there is was written all the same
    assert {"red circle", "two shapes"}.isdisjoint(r["subtopic"] for r in rows)
    assert len([r for r in rows if r["subtopic"] == "blue square"]) == 2 * 3
    missing = report_file(tmp_path / "out")["missing"]
    assert sorted((m["subtopic"], m["contrast"]) for m in missing) == [("red circle", None), ("two shapes", None)]
    assert all("2 invalid answers" in m["error"] for m in missing)
    assert "Subtopics without a valid answer (after retries; recorded as missing, nothing made up): 2" in \
        (tmp_path / "out" / "README.md").read_text()

    writer_server.faults.clear()
    before = writer_server.stats["chat_requests"]
    again = generate_prompts("synthetic", tmp_path / "out", **options)
    assert writer_server.stats["chat_requests"] - before == 2 and again.cached == SUBTOPICS - 2
    assert again.complete and len(rows_of(tmp_path / "out")) == again.pairs > len(rows)


class Repetitive:
    """Answers with near-duplicate base prompts across subtopics and one variant that is no contrast."""

    def respond(self, request):
        asked = read_request(request.body)
        tail = {"first": "on a sunny beach", "second": "on a sunny beach!", "third": "in a dark forest"}[asked.subtopic]
        prompts = [{"base": f"A red fox {tail}", "content": f"two red foxes {tail}", "aesthetics": f"a red fox {tail}, oil painting"},
                   {"base": f"a {asked.subtopic} owl", "content": f"a {asked.subtopic} cat", "aesthetics": f"A {asked.subtopic}  OWL."}]
        return {"prompts": prompts}


def test_near_duplicates_are_removed_and_non_contrasts_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    taxonomy = Taxonomy("foxes", (Theme("animals", ("first", "second", "third")),), ("content", "aesthetics"))
    with LoopbackServer(Repetitive()) as server:
        report = generate_prompts(taxonomy, tmp_path / "out", per_subtopic=2, base_url=server.base_url, model="m",
                                  cache=tmp_path / "c.sqlite", progress=False)
    assert report.base_prompts == 6 and report.near_duplicates == 1  # "... beach!" is "... beach" again
    assert report.not_contrasting == 3  # each "A <subtopic>  OWL." has the same words as "a <subtopic> owl"
    rows = rows_of(tmp_path / "out")
    assert report.pairs == len(rows) == (6 - 1) * 2 - 3
    assert [r["base_prompt"] for r in rows if r["subtopic"] == "second"] == ["a second owl"]
    written = report_file(tmp_path / "out")
    assert written["near_duplicates_removed"] == [{"theme": "animals", "subtopic": "second",
                                                   "base_prompt": "A red fox on a sunny beach!",
                                                   "near_duplicate_of": "A red fox on a sunny beach"}]
    assert sum(m["error"].endswith("(no contrast)") for m in written["missing"]) == 3
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Near-duplicate base prompts removed with their variants: 1" in card
    assert "(no contrast; missing): 3" in card


def test_prefix_filtering_finds_exactly_the_pairs_a_full_comparison_finds():
    rng = random.Random(0)
    vocabulary = "a red blue green circle square at the top bottom left right on white black background".split()
    texts = list(dict.fromkeys(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(3, 9))) for _ in range(400)))
    texts += [t + " background" for t in texts[:50]] + [t.upper() + "!" for t in texts[50:80]]  # near and exact copies
    removed, sets = {}, {text: shingles(text) for text in texts}
    for threshold in (0.5, 0.7, 0.9):
        dedupe, kept_by_brute_force = NearDuplicates(texts, threshold), []
        for text in texts:
            brute = next((k for k in kept_by_brute_force if jaccard(sets[text], sets[k]) >= threshold), None)
            assert dedupe.match(text) == brute, (threshold, text)
            if brute is None:
                kept_by_brute_force.append(text)
        removed[threshold] = len(texts) - len(kept_by_brute_force)
    assert removed[0.5] > removed[0.7] > removed[0.9] >= 30, removed


# --- resume, Batch API, the key ----------------------------------------------------------------


def test_kill_9_then_resume_asks_only_what_was_not_stored(offline, tmp_path):
    out, cache, concurrency = tmp_path / "out", tmp_path / "c.sqlite", 2
    with LoopbackServer(SyntheticPromptWriter(), latency=0.05, api_key="kill-key") as server:
        args = ["generate-prompts", "synthetic", out, "--per-subtopic", 3, "--base-url", server.base_url, "--model",
                SYNTHETIC_WRITER_MODEL, "--concurrency", concurrency, "--cache", cache, "--no-progress"]
        env = {"OPENAI_API_KEY": "kill-key"}
        process = subprocess.Popen([sys.executable, "-m", "editforge", *map(str, args)], env={**os.environ, **env},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.stats.get("chat_answered", 0) < 10 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(0.3)  # what was in flight at the kill is still answered (to nobody)
        answered = server.stats["chat_answered"]
        assert 10 <= answered < SUBTOPICS, answered
        assert not (out / "README.md").exists()  # the dataset is written at the end
        with AnswerCache(cache) as answers:
            stored = len(answers)
        assert answered - concurrency <= stored <= answered
        before = server.stats["chat_requests"]
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr
        assert server.stats["chat_requests"] - before == SUBTOPICS - stored
        assert f"{stored} from the cache" in result.stdout
    assert rows_of(out) == offline[1]  # the same dataset as an uninterrupted run


def test_batch_mode_gives_the_same_dataset_at_half_the_price(writer_server, tmp_path):
    common = dict(per_subtopic=2, base_url=writer_server.base_url, model=SYNTHETIC_WRITER_MODEL, progress=False)
    direct = generate_prompts("synthetic", tmp_path / "direct", cache=tmp_path / "d.sqlite", **common)
    batch = generate_prompts("synthetic", tmp_path / "batch", cache=tmp_path / "b.sqlite", batch=True,
                             poll_interval=0.05, **common)
    assert rows_of(tmp_path / "batch") == rows_of(tmp_path / "direct")
    assert writer_server.stats["batches_created"] == 1 and writer_server.stats["batch_lines_answered"] == SUBTOPICS
    assert batch.asked == SUBTOPICS and batch.usage == direct.usage and batch.cost == pytest.approx(direct.cost / 2)
    assert not list((tmp_path / "batches").glob("*.jsonl"))  # upload files are removed once merged


def test_a_sentinel_api_key_appears_in_no_file_written(tmp_path):
    sentinel = f"sk-sentinel-{uuid.uuid4().hex}"
    home = tmp_path / "home"  # also catches anything written under ~ or the default cache
    env = {"OPENAI_API_KEY": sentinel, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    with LoopbackServer(SyntheticPromptWriter(), api_key=sentinel) as server:
        server.faults.add("out_of_range", times=None, match="green square")  # an error recorded in the output
        for mode, extra in (("direct", []), ("batch", ["--batch", "--poll-interval", "0.05"])):
            result = run_cli("generate-prompts", "synthetic", tmp_path / f"out-{mode}", "--per-subtopic", 1,
                             "--base-url", server.base_url, "--max-invalid", 1, "--allow-missing", "--no-progress",
                             *extra, env=env)
            assert result.returncode == 0, result.stderr
            assert sentinel not in result.stdout + result.stderr
        assert server.api_keys_seen == {sentinel}  # the key was really used
        uploads = [f["data"] for f in server.files.values() if f["purpose"] == "batch"]
    assert uploads and all(sentinel.encode() not in data for data in uploads)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in written) and any(p.suffix == ".parquet" for p in written)
    assert report_file(tmp_path / "out-batch")["missing_subtopics"] == 1
    for path in written:
        assert sentinel.encode() not in path.read_bytes(), path


# --- the command line --------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch):
    """The CLI in this process, without the library quieting that would outlive the test."""
    from editforge import cli

    monkeypatch.setattr(cli, "quiet_libraries", lambda verbose: None)
    return cli


@pytest.mark.parametrize("args, message", [
    (["--per-subtopic", "0"], "--per-subtopic: must be 1 or more"),
    (["--axes", "colour"], "--axes: invalid choice: 'colour'"),
    (["--dedupe-threshold", "2"], "--dedupe-threshold: must be between 0 and 1"),
    (["--concurrency", "x"], "--concurrency: expected a whole number"),
])
def test_bad_flags_are_one_line(cli, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate-prompts", "synthetic", str(tmp_path / "out"), *args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], lines


def test_a_bad_taxonomy_is_one_line_naming_the_problem(cli, tmp_path, capsys):
    data = load_taxonomy("instructengine").to_dict()
    data["themes"][2]["subtopics"] = []
    (tmp_path / "bad.json").write_text(json.dumps(data))
    for taxonomy, message in ((tmp_path / "bad.json", r"theme 2 ('"), ("nope", "no taxonomy 'nope': not a built-in")):
        assert cli.main(["generate-prompts", str(taxonomy), str(tmp_path / "out")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "editforge generate-prompts: error:" in lines[0], lines
    assert not (tmp_path / "out").exists()  # nothing was started


def test_the_offline_writer_refuses_what_is_not_the_synthetic_world(cli, tmp_path, capsys):
    (tmp_path / "mixed.json").write_text(json.dumps(
        {"name": "mixed", "themes": [{"name": "things", "subtopics": ["a red circle", "a lighthouse keeper"]}]}))
    code = cli.main(["generate-prompts", str(tmp_path / "mixed.json"), str(tmp_path / "out"), "--per-subtopic", "1",
                     "--cache", str(tmp_path / "c.sqlite"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1 and "1 of 2 subtopics have no valid answer" in captured.err
    assert "knows only the synthetic world's vocabulary" in captured.err and "1 x HTTP 422" in captured.out
    missing = report_file(tmp_path / "out")["missing"]
    assert [m["subtopic"] for m in missing] == ["a lighthouse keeper"] and "knows no shape" in missing[0]["error"]
