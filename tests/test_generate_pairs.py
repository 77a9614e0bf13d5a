"""editforge generate-pairs: images for both prompts of each pair, judged against both prompts, the
rules, and the kept pairs as a Hub dataset in the canonical pair features. Images made elsewhere
(``outputs:``, the synthetic world's drawing of a prompt) make the decisions known; a tiny random
pipeline makes real images; a loopback judge refuses some prompts or counts the requests across a
kill -9; the DPO trainer trains on the output."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from editforge.cli import main as cli
from editforge.dataset_builders.annotation import AnswerCache, LoopbackServer
from editforge.dataset_builders.annotation.responders import OracleResponder, ResponderError
from editforge.dataset_builders.annotation.sources import file_stem
from editforge.dataset_builders.features import PAIR_FEATURES
from editforge.dataset_builders.prompts import Taxonomy, Theme, generate_prompts
from editforge.dataset_builders.prompts.pairs import BASE, CONTRAST, SIDES, decide, read_prompt_pairs
from editforge.dataset_builders.synthetic.alignment import render_prompt

WORK = ".editforge-staging-default-train"
SD_ARGS = ("--model-args", "steps=4", "--size", "32", "--no-progress")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """12 prompt pairs of the synthetic world (2 subtopics x 2 base prompts x 3 axes) and a tiny
    random text-to-image pipeline: (root, pairs)."""
    from editforge.testing.tiny_models import tiny_text_to_image_pipeline

    root = tmp_path_factory.mktemp("pairs")
    taxonomy = Taxonomy("pairs", (Theme("circles", ("red circle", "blue circle")),))
    generate_prompts(taxonomy, root / "prompts", per_subtopic=2, cache=root / "prompts.sqlite", progress=False)
    tiny_text_to_image_pipeline(seed=0).save_pretrained(root / "sd")
    return root, read_prompt_pairs(root / "prompts")


def draw(folder, image_id, prompt):
    folder.mkdir(exist_ok=True)
    Image.fromarray(render_prompt(prompt, 32, 32)).save(folder / f"{file_stem(image_id)}.png")


def ideal_images(pairs, folder, drawn_for=None):
    """Each image drawn by the world; ``drawn_for[(pair index, side)]``: the side whose prompt
    that image shows instead of its own."""
    for index, pair in enumerate(pairs):
        for side in SIDES:
            draw(folder, pair.image_id(side), pair.prompt((drawn_for or {}).get((index, side), side)))
    return folder


def report_of(out):
    return json.loads((out / "generation.json").read_text())


def rows_of(out):
    from datasets import load_dataset

    dataset = load_dataset(str(out), split="train")
    assert dataset.features == PAIR_FEATURES
    return dataset


def pixels(value):
    image = value if isinstance(value, Image.Image) else Image.open(io.BytesIO(value))
    return np.asarray(image.convert("RGB"))


def images_in(out):
    return {p.name: p for p in (out / WORK / "images").rglob("*.png")}


# The known decisions: pair 0's base image shows the contrast prompt, pair 1's contrast image the
# base prompt, pair 2's both images the other prompt; every other image is drawn for its own prompt.
DRAWN_FOR = {(0, BASE): CONTRAST, (1, CONTRAST): BASE, (2, BASE): CONTRAST, (2, CONTRAST): BASE}


@pytest.fixture(scope="module")
def controlled(world):
    root, pairs = world
    outputs = ideal_images(pairs, root / "controlled", DRAWN_FOR)
    assert cli(["generate-pairs", str(root / "prompts"), str(root / "controlled-out"), "--model",
                f"outputs:{outputs}", "--no-progress"]) == 0
    return root / "controlled-out"


def test_the_rules_are_known_from_the_scores():
    scores = {(BASE, BASE): 5, (BASE, CONTRAST): 3, (CONTRAST, CONTRAST): 4, (CONTRAST, BASE): 2}
    assert decide(scores) == ("kept", None)
    assert decide({**scores, (BASE, CONTRAST): 5}) == ("dropped", "base")  # a tie is not better
    assert decide({**scores, (CONTRAST, BASE): 4}) == ("dropped", "contrast")
    assert decide({**scores, (BASE, CONTRAST): 5, (CONTRAST, BASE): 5}) == ("dropped", "both")
    assert decide({**scores, (CONTRAST, BASE): None}) == ("missing", None)  # never assumed


def test_the_rules_keep_only_pairs_whose_images_each_match_their_own_prompt_better(world, controlled):
    _, pairs = world
    report = report_of(controlled)
    assert report["pairs"] == 12 and report["answers"] == 48 and report["missing"] == 0
    assert report["kept"] == 9 and report["dropped"] == {"base": 1, "contrast": 1, "both": 1}
    outcomes = {record["pair_id"]: (record["outcome"], record["failed"]) for record in report["pairs_judged"]}
    assert [outcomes[pairs[i].pair_id] for i in range(3)] == [("dropped", "base"), ("dropped", "contrast"),
                                                              ("dropped", "both")]
    assert {outcomes[pair.pair_id] for pair in pairs[3:]} == {("kept", None)}
    scores = report["pairs_judged"][3]["scores"]
    assert scores["base_image"]["base_prompt"] == scores["contrast_image"]["contrast_prompt"] == 5
    assert max(scores["base_image"]["contrast_prompt"], scores["contrast_image"]["base_prompt"]) < 5
    card = (controlled / "README.md").read_text()
    assert "Kept: 9 pairs, 18 rows." in card and "Dropped by the rules: 3" in card and "made elsewhere" in card


def test_each_kept_pair_is_two_rows_with_the_same_images_each_preferring_its_own(world, controlled):
    _, pairs = world
    rows = rows_of(controlled)
    assert len(rows) == 18
    by_id = {pair.pair_id: pair for pair in pairs}
    for first, second in zip(rows.select(range(0, 18, 2)), rows.select(range(1, 18, 2))):
        pair = by_id[first["pair_id"]]
        assert second["pair_id"] == pair.pair_id
        assert (first["prompt"], first["label_0"]) == (pair.base_prompt, 1.0)        # image_0, A, wins
        assert (second["prompt"], second["label_0"]) == (pair.contrast_prompt, 0.0)  # image_1, B, wins
        for row in (first, second):
            assert (row["theme"], row["subtopic"], row["contrast"]) == (pair.theme, pair.subtopic, pair.contrast)
            assert np.array_equal(pixels(row["image_0"]), render_prompt(pair.base_prompt, 32, 32))
            assert np.array_equal(pixels(row["image_1"]), render_prompt(pair.contrast_prompt, 32, 32))
    assert {pair.pair_id for pair in pairs[:3]}.isdisjoint(rows["pair_id"])


@pytest.mark.parametrize("alignment", ["cross_validation", "single_pair"])
def test_the_dpo_trainer_trains_on_the_output(world, controlled, tmp_path, alignment):
    from editforge.training.train_diffusion_dpo import main

    root, _ = world
    summary = main(["--pretrained_model_name_or_path", str(root / "sd"), "--dataset_name", str(controlled),
                    "--output_dir", str(tmp_path / "run"), "--resolution", "32", "--train_batch_size", "2",
                    "--max_train_steps", "2", "--num_validation_images", "0", "--logging_steps", "1",
                    "--no-progress", "--alignment", alignment])
    assert summary["losses"][1] == pytest.approx(math.log(2), abs=1e-6)  # LoRA at zero: the model is its reference
    assert sorted(summary["losses"]) == [1, 2] and all(math.isfinite(v) for v in summary["losses"].values())


class Refusing(OracleResponder):
    """The oracle, refusing (HTTP 422) every request whose prompt is one of ``refused``."""

    def __init__(self, refused):
        super().__init__()
        self.refused = set(refused)

    def answer(self, rubric, instruction, image_urls):
        if instruction in self.refused:
            raise ResponderError(422, "refused by the test", code="judge_error")
        return super().answer(rubric, instruction, image_urls)


def test_a_pair_missing_an_answer_is_kept_out_counted_and_asked_again(world, tmp_path, capsys):
    root, pairs = world
    outputs = ideal_images(pairs, tmp_path / "ideal")
    prompts = [pair.prompt(side) for pair in pairs for side in SIDES]
    refused = next(pair for pair in pairs if prompts.count(pair.contrast_prompt) == 1)
    args = ["generate-pairs", str(root / "prompts"), str(tmp_path / "out"), "--model", f"outputs:{outputs}",
            "--judge-model", "editforge-oracle", "--no-progress"]
    with LoopbackServer(Refusing([refused.contrast_prompt])) as server:
        assert cli([*args, "--base-url", server.base_url]) == 1
    assert "1 of 12 pairs are missing an answer" in capsys.readouterr().err
    report = report_of(tmp_path / "out")
    assert (report["kept"], report["missing"], report["missing_answers"], report["answers"]) == (11, 1, 2, 46)
    record = next(r for r in report["pairs_judged"] if r["pair_id"] == refused.pair_id)
    assert record["outcome"] == "missing" and record["scores"]["base_image"]["contrast_prompt"] is None
    assert len(record["errors"]) == 2 and all("HTTP 422" in error for error in record["errors"])
    assert refused.pair_id not in rows_of(tmp_path / "out")["pair_id"]  # never assumed to pass
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Missing an answer (left out, never assumed; a rerun asks again): 1 (`HTTP 422` 2)." in card

    with LoopbackServer(OracleResponder()) as server:  # the judge answers now: only the two are asked
        assert cli([*args, "--base-url", server.base_url]) == 0
        assert server.stats["chat_requests"] == 2
    assert report_of(tmp_path / "out")["kept"] == 12 and len(rows_of(tmp_path / "out")) == 24


@pytest.fixture(scope="module")
def sd_run(world):
    """The tiny random pipeline, uninterrupted, 5 images per call."""
    root, _ = world
    out = root / "sd-out"
    cli(["generate-pairs", str(root / "prompts"), str(out), "--model", str(root / "sd"), "--batch-size", "5", *SD_ARGS])
    return out


def test_a_pipeline_makes_every_image_with_its_seed_recorded(world, sd_run):
    from editforge.evaluation import item_seed

    _, pairs = world
    report = report_of(sd_run)
    assert report["made"] == 24 and report["answers"] == 48 and report["images"]["seed"] == 0
    assert report["kept"] + sum(report["dropped"].values()) + report["missing"] == 12
    seeds = {record["pair_id"]: record["seeds"] for record in report["pairs_judged"]}
    for pair in pairs:
        assert seeds[pair.pair_id] == {side: item_seed(0, pair.image_id(side)) for side in SIDES}
    made = images_in(sd_run)
    assert len(made) == 24 and Image.open(next(iter(made.values()))).size == (32, 32)


def test_kill_9_then_rerun_makes_no_image_and_asks_no_answer_twice(world, sd_run, tmp_path):
    root, _ = world
    out, batch = tmp_path / "out", 2
    args = ["generate-pairs", str(root / "prompts"), str(out), "--model", str(root / "sd"), "--batch-size", str(batch),
            "--judge-model", "editforge-oracle", *SD_ARGS]
    with LoopbackServer(OracleResponder()) as server:
        args += ["--base-url", server.base_url]
        process = subprocess.Popen([sys.executable, "-m", "editforge", *args], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 60
        while len(images_in(out)) < 4 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(0.3)  # what was in flight at the kill is still answered (to nobody)
        before = {name: path.stat().st_mtime_ns for name, path in images_in(out).items()}
        assert 4 <= len(before) < 24, len(before)
        assert not (out / "generation.json").exists() and not (out / "README.md").exists()
        with AnswerCache(out / WORK / "answers.sqlite") as answers:
            stored = len(answers)
        asked = server.stats["chat_requests"]
        cli(args)
        assert server.stats["chat_requests"] - asked == 48 - stored  # every stored answer came from the cache
    report = report_of(out)
    # only the images not written before the kill are made: the batch in flight then is lost, no more
    assert (report["made"], report["reused"]) == (24 - len(before), len(before))
    after = images_in(out)
    assert all(after[name].stat().st_mtime_ns == mtime for name, mtime in before.items())  # never made again
    # the same images as the uninterrupted run with another batch size: each image has its own generator
    # (up to the float rounding a CPU's batched convolutions change with the batch size: 2 levels of 255)
    for name, path in images_in(sd_run).items():
        difference = np.abs(pixels(path.read_bytes()).astype(int) - pixels(after[name].read_bytes()).astype(int))
        assert difference.max() <= 2, (name, difference.max())
    uninterrupted = report_of(sd_run)
    assert all(report[k] == uninterrupted[k] for k in ("kept", "dropped", "answers"))


def test_cli_errors_are_one_line_with_exit_2(world, sd_run, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from editforge.testing.tiny_models import tiny_instruct_pix2pix_pipeline

    root, pairs = world
    tiny_instruct_pix2pix_pipeline(seed=0).save_pretrained(tmp_path / "ip2p")
    (tmp_path / "cats" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"pair_id": "cat", "base_prompt": "a cat", "contrast_prompt": "two cats"}]),
                   tmp_path / "cats" / "data" / "train.parquet")
    ideal = ideal_images(pairs[:1], tmp_path / "ideal")
    cases = [
        ([tmp_path / "nowhere", "--model", root / "sd"], "is not a prompt-pair dataset folder"),
        ([ideal, "--model", root / "sd"], "is not a prompt-pair dataset: no column pair_id"),
        ([tmp_path / "cats", "--model", root / "sd"], "pair cat: the oracle judge reads only the synthetic world's"),
        ([root / "prompts", "--model", tmp_path / "ip2p", "--size", "32"],
         "StableDiffusionInstructPix2PixPipeline is not a text-to-image pipeline (its __call__ takes an input image)"),
        ([root / "prompts", "--model", root / "sd", "--size", "32", "--model-args", "height=32"],
         "give the image size once"),
    ]
    outs = [tmp_path / f"out{index}" for index in range(len(cases))]
    cases.append(([root / "prompts", "--model", root / "sd", "--size", "32", "--model-args", "steps=3"],
                  "holds images made with call_args {'num_inference_steps': 4}, not {'num_inference_steps': 3}"))
    outs.append(sd_run)  # its images were made with steps=4: never mixed with others
    for (args, message), out in zip(cases, outs):
        assert cli(["generate-pairs", str(args[0]), str(out), *map(str, args[1:]), "--no-progress"]) == 2, message
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
