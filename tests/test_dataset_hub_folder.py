"""The Hub-ready folder: several configs side by side, rebuilt splits replace old shards, and an
interrupted or killed build never leaves a dataset that loads as if whole."""

import os
import signal
import subprocess
import sys
import time

import pytest
from datasets import load_dataset
from datasets.data_files import EmptyDatasetError

import source_layouts as layouts
from editforge.cli import main
from editforge.dataset_builders.build import build_dataset
from editforge.dataset_builders.builders import Manifest
from editforge.dataset_builders.synthetic import write_synthetic_dataset
from editforge.errors import UsageError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    write_synthetic_dataset(folder, n=210, seed=2, imperfect_rate=0.5, width=32, height=32, progress=False)
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    (folder / "first10.jsonl").write_text("\n".join(lines[:10]) + "\n")
    return folder


def ids(out, config, split, tmp, streaming=False):
    kwargs = {"streaming": True} if streaming else {"cache_dir": str(tmp / f"cache-{time.monotonic_ns()}")}
    return sorted(row["id"] for row in load_dataset(str(out), config, split=split, **kwargs))


def test_rebuilding_a_split_replaces_its_shards_and_keeps_the_others(tmp_path, world):
    out = tmp_path / "out"
    report = build_dataset("manifest", world, out, split="train", max_shard_size="20KB", progress=False)
    assert len(report.shards) > 2
    assert [p.name for p in report.shards][0] == f"train-00000-of-{len(report.shards):05d}.parquet"
    build_dataset("manifest", world / "first10.jsonl", out, split="test", progress=False)

    rebuilt = build_dataset("manifest", world / "first10.jsonl", out, split="train", progress=False)
    assert [p.name for p in rebuilt.shards] == ["train-00000-of-00001.parquet"]
    assert sorted(p.name for p in (out / "data").glob("*.parquet")) == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    assert ids(out, "default", "train", tmp_path) == ids(out, "default", "test", tmp_path) == [f"synth-2-{i:06d}" for i in range(10)]
    card = (out / "README.md").read_text()
    assert card.count("num_examples: 10") == 2 and "num_examples: 210" not in card
    assert not [p for p in out.iterdir() if p.name.startswith(".editforge-") and p.is_dir()]


def test_a_config_of_other_features_is_refused(tmp_path, world):
    out = tmp_path / "out"
    build_dataset("manifest", world / "first10.jsonl", out, progress=False)
    layouts.write_pickapic(tmp_path / "pickapic")
    before = (out / "README.md").read_text()
    with pytest.raises(UsageError, match="config 'default' .* holds rows with other features"):
        build_dataset("pickapic", tmp_path / "pickapic", out, split="test", progress=False)
    assert (out / "README.md").read_text() == before
    build_dataset("pickapic", tmp_path / "pickapic", out, config="pairs", progress=False)
    assert ids(out, "pairs", "train", tmp_path, streaming=True) == ["77000", "77001", "77002"]
    assert len(ids(out, "default", "train", tmp_path)) == 10


def test_keyboard_interrupt_publishes_nothing(tmp_path, world, monkeypatch, capsys):
    from editforge.dataset_builders.builders import base

    calls = {"n": 0}
    real = base.load_image

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "load_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_dataset("manifest", world, tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh").exists()

    monkeypatch.setattr(base, "load_image", real)
    build_dataset("manifest", world / "first10.jsonl", tmp_path / "out", progress=False)
    before = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    monkeypatch.setattr(base, "load_image", interrupted)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        build_dataset("manifest", world, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before
    calls["n"] = 0
    assert main(["build-dataset", "--format", "manifest", str(world), str(tmp_path / "out"), "--no-progress"]) == 130
    assert "interrupted; nothing was published" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before


KILLABLE_BUILD = """
import sys, time
from editforge.dataset_builders.builders import base
real = base.load_image
def slow(*args, **kwargs):
    time.sleep(0.004)
    return real(*args, **kwargs)
base.load_image = slow
from editforge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_and_kill_mid_build(out, *args):
    process = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_BUILD, "build-dataset", *args, str(out), "--no-progress",
         "--max-shard-size", "30KB"],
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if len(list(out.glob(".editforge-staging-*/shards/shard-*.parquet*"))) >= 2:
                break  # one shard complete, the next one being written
            assert process.poll() is None, "the build ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no second shard was started within 60 s")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def test_a_killed_build_never_loads_as_if_whole(tmp_path, world):
    fresh = tmp_path / "fresh"
    start_and_kill_mid_build(fresh, "--format", "manifest", str(world))
    assert len(list(fresh.glob(".editforge-staging-*/shards/shard-*.parquet*"))) >= 2  # shards exist...
    with pytest.raises(EmptyDatasetError, match="doesn't contain any data files"):  # ...but nothing loads
        load_dataset(str(fresh), split="train", cache_dir=str(tmp_path / "cache"))

    out = tmp_path / "out"
    build_dataset("manifest", world / "first10.jsonl", out, progress=False)
    start_and_kill_mid_build(out, "--format", "manifest", str(world))
    assert ids(out, "default", "train", tmp_path) == [f"synth-2-{i:06d}" for i in range(10)]
    # the same build again resumes after the killed one's complete shards, and cleans up
    report = build_dataset("manifest", world, out, progress=False, max_shard_size="30KB")
    assert report.resumed_from in (100, 200)
    streamed = [row["id"] for row in load_dataset(str(out), "default", split="train", streaming=True)]
    assert streamed == [f"synth-2-{i:06d}" for i in range(210)]
    assert not [p for p in out.iterdir() if p.name.startswith(".editforge-staging")]


def test_push_to_hub_uploads_the_folder(tmp_path, world, monkeypatch):
    import huggingface_hub

    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            assert (tmp_path / "out" / "README.md").is_file()  # built before it is uploaded
            return "https://huggingface.co/datasets/org/name/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    code = main(["build-dataset", "--format", "manifest", str(world / "first10.jsonl"), str(tmp_path / "out"),
                 "--push-to-hub", "org/name", "--no-progress"])
    assert code == 0
    assert calls[0] == ("create_repo", "org/name", {"repo_type": "dataset", "exist_ok": True, "private": None})
    upload = calls[1][1]
    assert upload["repo_id"] == "org/name" and upload["repo_type"] == "dataset"
    assert upload["folder_path"] == str(tmp_path / "out")
    assert ".editforge-staging-*" in upload["ignore_patterns"] and upload["delete_patterns"] == ["*.parquet"]


def test_builders_work_in_process_like_any_datasets_builder(tmp_path, world):
    builder = Manifest(cache_dir=str(tmp_path / "cache"), data_dir=str(world / "first10.jsonl"),
                       split="validation", rewards_from="ground_truth")
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="validation")
    assert len(dataset) == 10 and dataset[0]["rewards"] is not None
    streamed = next(iter(builder.as_streaming_dataset(split="validation")))
    assert streamed["id"] == dataset[0]["id"] and streamed["source_image"].size == (32, 32)


def test_the_card_keeps_what_people_wrote(tmp_path, world):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("---\nlicense: cc-by-4.0\npretty_name: My edits\n---\n\n# My edits\n\nHand-written notes.\n")
    build_dataset("manifest", world / "first10.jsonl", out, progress=False)
    build_dataset("manifest", world / "first10.jsonl", out, config="again", progress=False)
    card = (out / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "pretty_name: My edits" in card
    assert card.index("Hand-written notes.") < card.index("## Contents")
    assert card.count("## Contents") == 1 and "| `again` | `train` |" in card and "| `default` | `train` |" in card


def test_bad_shard_size_is_a_one_line_usage_error(tmp_path, world, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["build-dataset", "--format", "manifest", str(world), str(tmp_path / "out"), "--max-shard-size", "12XB"])
    assert caught.value.code == 2
    assert "--max-shard-size: expected a size such as 500MB" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_stopped_build_resumes_after_its_complete_shards(tmp_path, world, monkeypatch):
    from editforge.dataset_builders.builders import base

    real = base.load_image
    seen = []

    def counting(source, *, item_id, field, mask=False):
        seen.append(item_id)
        if item_id == "synth-2-000150" and field == "source_image" and stop["now"]:
            raise KeyboardInterrupt
        return real(source, item_id=item_id, field=field, mask=mask)

    stop = {"now": True}
    monkeypatch.setattr(base, "load_image", counting)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        build_dataset("manifest", world, out, max_shard_size="30KB", progress=False)
    assert not (out / "README.md").exists()
    stop["now"], seen[:] = False, []
    report = build_dataset("manifest", world, out, max_shard_size="30KB", progress=False)
    assert report.resumed_from == 100 and report.num_examples == 210
    assert min(seen) == "synth-2-000100"  # items 0..99 were not converted again
    clean = build_dataset("manifest", world, tmp_path / "clean", max_shard_size="30KB", progress=False)
    assert clean.resumed_from == 0
    resumed_rows = list(load_dataset(str(out), split="train", streaming=True))
    clean_rows = list(load_dataset(str(tmp_path / "clean"), split="train", streaming=True))
    assert [r["id"] for r in resumed_rows] == [r["id"] for r in clean_rows]
    assert all(a["rewards"] == b["rewards"] and a["source_image"].tobytes() == b["source_image"].tobytes()
               for a, b in zip(resumed_rows, clean_rows))
    assert (out / "README.md").read_text().split("---\n", 2)[2] == (tmp_path / "clean" / "README.md").read_text().split("---\n", 2)[2].replace("# clean", "# out")


def test_a_changed_source_starts_over(tmp_path, world, monkeypatch):
    from editforge.dataset_builders.builders import base

    real = base.load_image

    def stop_at_150(source, *, item_id, field, mask=False):
        if item_id == "synth-2-000150":
            raise KeyboardInterrupt
        return real(source, item_id=item_id, field=field, mask=mask)

    source = tmp_path / "manifest.jsonl"
    source.write_text((world / "manifest.jsonl").read_text())
    for name in ("images",):
        (tmp_path / name).symlink_to(world / name)
    monkeypatch.setattr(base, "load_image", stop_at_150)
    with pytest.raises(KeyboardInterrupt):
        build_dataset("manifest", source, tmp_path / "out", max_shard_size="30KB", progress=False)
    monkeypatch.setattr(base, "load_image", real)
    source.write_text((world / "first10.jsonl").read_text())  # the source changed meanwhile
    report = build_dataset("manifest", source, tmp_path / "out", max_shard_size="30KB", progress=False)
    assert report.resumed_from == 0 and report.num_examples == 10
