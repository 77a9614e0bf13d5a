"""editforge app in a real browser (Debian's headless Chromium, driven by Playwright; nothing is
downloaded): what the page returns is, pixel for pixel, what the pipeline returns for the same
settings and seed; a painted region is the mask the pipeline receives; bad input gets a message on
the page and the next request still works; requests queue, one at a time, with progress per step."""

import os
import re
import threading

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio", reason="editforge app needs Gradio: pip install -e '.[test]' (or '.[app]')")
pytest.importorskip("playwright.sync_api",
                    reason="the browser tests drive Chromium with Playwright: pip install -e '.[test]'")

from app_browser import AppPage, Recorder, chromium, find_chromium, save_png, serve

from editforge.app import EditingApp, PipelineFeatures, working_size
from editforge.testing.tiny_models import tiny_reward_pix2pix_pipeline, tiny_sd3_instruct_pix2pix_pipeline

INSTRUCTION = "make the red circle blue"


def noise(width, height, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def direct(pipe, image, seed, **settings):
    """The pipeline called as a user of diffusers calls it."""
    return pipe(prompt=INSTRUCTION, image=image, generator=torch.Generator().manual_seed(seed), **settings).images[0]


def assert_same_pixels(served: Image.Image, expected: Image.Image):
    assert served.size == expected.size
    assert np.array_equal(np.asarray(served.convert("RGB")), np.asarray(expected.convert("RGB")))


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
    with chromium(executable) as browser:
        yield browser


@pytest.fixture
def open_page(browser):
    """Opens tabs on an app (``open_page(url)``); closes them after the test."""
    pages = []

    def open_(url):
        pages.append(AppPage(browser, url))
        return pages[-1]

    yield open_
    for page in pages:
        page.page.close()


@pytest.fixture(scope="module")
def reward_pipe():
    return tiny_reward_pix2pix_pipeline(perturb=0.2)


@pytest.fixture(scope="module")
def reward_app(reward_pipe):
    """The tiny reward model's page, the pipeline behind a Recorder, on a loopback port."""
    app = EditingApp(reward_pipe, "tiny-reward")
    app.pipe = recorder = Recorder(reward_pipe)
    with serve(app.build()) as url:
        yield url, recorder


@pytest.fixture
def images(tmp_path):
    return {
        "square": save_png(noise(32, 32), tmp_path / "square.png"),
        "wide": save_png(noise(50, 30, seed=1), tmp_path / "wide.png"),
        "huge": _huge_png(tmp_path / "huge.png"),
        "text": _text_file(tmp_path / "notes.png"),
    }


def _huge_png(path):
    Image.new("RGB", (6000, 4000), "skyblue").save(path)  # 24 megapixels, a few KB
    return path


def _text_file(path):
    path.write_text("a shopping list, not an image\n")
    return path


def test_reward_edits_in_the_browser_equal_the_pipeline_and_sit_side_by_side(open_page, reward_app, reward_pipe,
                                                                            images):
    url, _ = reward_app
    page = open_page(url)
    page.upload(images["square"])
    settings = {"num_inference_steps": 3, "guidance_scale": 5.0, "image_guidance_scale": 1.2, "rewards": [3, 5, 4],
                "reward_feedback": "None; None; slight grain", "reward_guidance_scale": 2.0}
    for elem_id, value in [("instruction", INSTRUCTION), ("seed", 7), ("steps", 3), ("guidance", 5),
                           ("image-guidance", 1.2), ("reward-instruction_following", 3),
                           ("reward-generation_quality", 4), ("reward-feedback", "None; None; slight grain"),
                           ("reward-guidance", 2)]:
        page.set_value(elem_id, value)
    page.run()
    [(first, first_caption)] = page.results(1)
    source = Image.open(images["square"]).convert("RGB")
    assert_same_pixels(first, direct(reward_pipe, source, 7, **settings))

    page.set_value("reward-instruction_following", 5)
    page.run()
    (again, _), (second, second_caption) = page.results(2)
    assert_same_pixels(again, first)
    assert_same_pixels(second, direct(reward_pipe, source, 7, **{**settings, "rewards": [5, 5, 4]}))
    assert not np.array_equal(np.asarray(first), np.asarray(second))  # the rewards steer the edit
    assert "rewards 3/5/4" in first_caption and "rewards 5/5/4" in second_caption
    assert "seed 7" in second_caption and "reward guidance 2" in second_caption
    assert page.outside == []


def test_bad_input_gets_a_message_on_the_page_and_the_next_request_works(open_page, reward_app, reward_pipe, images):
    url, recorder = reward_app
    page = open_page(url)
    page.set_value("steps", 2)
    page.set_value("instruction", INSTRUCTION)

    page.upload(images["text"])
    assert page.error() == "notes.png is not an image (PNG, JPEG, WebP, ...): upload an image file"
    page.upload(images["huge"])
    assert page.error() == ("huge.png is far too large: 6000x4000 = 24,000,000 pixels; this app takes images of up to"
                            " 16,777,216 pixels (4096x4096): scale it down first")
    page.run()
    assert page.error() == ("huge.png is far too large: 6000x4000 = 24,000,000 pixels; this app takes images of up to"
                            " 16,777,216 pixels (4096x4096): scale it down first")

    # any aspect ratio: 50x30 is more than the tiny model's 32x32 pixels, edited at 40x24, served at 50x30
    page.upload(images["wide"])
    page.run()
    [(result, _)] = page.results(1)
    received = recorder.calls[-1]["image"]
    assert received.size == (40, 24) and result.size == (50, 30)
    expected = direct(reward_pipe, received, 0, num_inference_steps=2).resize((50, 30), Image.LANCZOS)
    assert_same_pixels(result, expected)

    page.set_value("instruction", "   ")
    page.run()
    assert page.error() == "Write an instruction: what should change in the image?"
    page.set_value("instruction", INSTRUCTION)
    page.run()
    assert len(page.results(2)) == 2
    assert page.outside == []


def test_requests_queue_one_at_a_time_with_progress_per_step(open_page, reward_app, reward_pipe, images):
    url, recorder = reward_app
    first, second = open_page(url), open_page(url)
    for page, seed in ((first, 1), (second, 2)):
        page.upload(images["square"])
        page.set_value("instruction", INSTRUCTION)
        page.set_value("seed", seed)
        page.set_value("steps", 3)
    recorder.gate = gate = threading.Event()  # the first request is held at its first step, shown as 1/3
    try:
        first.run()
        first.wait_for_text("results", re.compile(r"1/3 steps"))  # per denoising step
        second.run()
        second.wait_for_text("results", re.compile(r"queue: 1/1"))  # waiting behind the first
        gate.set()
        [(one, _)] = first.results(1)
        [(two, _)] = second.results(1)
    finally:
        gate.set()
        recorder.gate = None
    assert recorder.most_at_once == 1
    source = Image.open(images["square"]).convert("RGB")
    assert_same_pixels(one, direct(reward_pipe, source, 1, num_inference_steps=3))
    assert_same_pixels(two, direct(reward_pipe, source, 2, num_inference_steps=3))


@pytest.fixture(scope="module")
def mask_pipe():
    return tiny_sd3_instruct_pix2pix_pipeline(with_mask=True, perturb=0.5)


def test_a_painted_region_is_the_mask_the_pipeline_receives(open_page, mask_pipe, tmp_path):
    app = EditingApp(mask_pipe, "tiny-sd3-mask")
    app.pipe = recorder = Recorder(mask_pipe)
    assert app.features.takes_mask and not app.features.takes_rewards
    source_path = save_png(noise(48, 32), tmp_path / "source.png")
    with serve(app.build()) as url:
        page = open_page(url)
        assert page.page.locator("#reward-instruction_following").count() == 0
        page.upload(source_path, updates="region")  # the editor takes the uploaded image
        page.set_value("instruction", INSTRUCTION)
        page.set_value("steps", 2)
        # the brush's radius is 1 pixel on a 32-pixel side: strokes along y = 10 and 12 from x = 6 to 12
        # cover the pixels whose centres lie within 1 of them, rows 9-12 and columns 5-12
        page.paint([[(6, 10), (12, 10)], [(6, 12), (12, 12)]], image_size=(48, 32))
        page.run()
        [(result, caption)] = page.results(1)
        expected_mask = np.zeros((32, 48), dtype=np.uint8)
        expected_mask[9:13, 5:13] = 255
        received = recorder.calls[-1]["mask_image"]
        assert np.array_equal(np.asarray(received), expected_mask)
        assert np.array_equal(np.asarray(page.image_of("region-used").convert("L")), expected_mask)
        source = Image.open(source_path).convert("RGB")
        settings = {"num_inference_steps": 2, "guidance_scale": 7.0, "image_guidance_scale": 1.5}
        assert_same_pixels(result, direct(mask_pipe, source, 0, mask_image=Image.fromarray(expected_mask), **settings))
        assert not np.array_equal(np.asarray(result), np.asarray(direct(mask_pipe, source, 0, **settings)))
        assert "painted region" in caption

        # a region painted on an image of another size: a message, then the next request works
        page.upload(save_png(noise(32, 32, seed=3), tmp_path / "other.png"), elem_id="region")
        page.page.locator("#region canvas").first.wait_for()
        page.paint([[(4, 4), (6, 4)]], image_size=(32, 32))
        page.run()
        assert page.error() == ("the painted region is 32x32 pixels but the image is 48x32: paint the region on the"
                                " image itself (upload the image again to start over)")
        page.upload(source_path, updates="region")
        page.run()
        (_, (free_form, caption)) = page.results(2)
        assert recorder.calls[-1].get("mask_image") is None and "free-form" in caption
        assert_same_pixels(free_form, direct(mask_pipe, source, 0, **settings))
        page.paint([[(6, 10), (10, 10)]], image_size=(48, 32))
        page.run()
        page.results(3)
        expected_mask[:] = 0
        expected_mask[9:11, 5:11] = 255
        assert np.array_equal(np.asarray(recorder.calls[-1]["mask_image"]), expected_mask)
        assert page.outside == []


def test_what_the_page_offers_follows_the_pipeline(reward_pipe, mask_pipe):
    reward = PipelineFeatures.of(reward_pipe)
    assert reward.perspectives == ("instruction_following", "detail_preserving", "generation_quality")
    assert reward.max_score == 5 and not reward.takes_mask and reward.reports_steps
    assert reward.call_defaults == {"num_inference_steps": 100, "guidance_scale": 7.5, "image_guidance_scale": 1.5}
    assert (reward.size_multiple, reward.native_pixels) == (2, 32 * 32)
    sd3 = PipelineFeatures.of(mask_pipe)
    assert sd3.takes_mask and not sd3.takes_rewards and (sd3.size_multiple, sd3.native_pixels) == (2, 64 * 64)
    free_form = PipelineFeatures.of(tiny_sd3_instruct_pix2pix_pipeline(with_mask=False))
    assert not free_form.takes_mask


@pytest.mark.parametrize("size, multiple, max_pixels, expected", [
    ((32, 32), 2, 1024, (32, 32)),      # native: as it is
    ((50, 30), 2, 1024, (40, 24)),      # too many pixels: scaled down, aspect ratio kept
    ((33, 17), 8, 512 * 512, (32, 16)),  # sides rounded down to the multiple
    ((4000, 10), 8, 512 * 512, (4000, 8)),
    ((3, 3), 8, 512 * 512, (8, 8)),     # never below one multiple
])
def test_working_size(size, multiple, max_pixels, expected):
    assert working_size(size, multiple, max_pixels) == expected


@pytest.fixture(scope="module")
def published(reward_pipe, tmp_path_factory):
    """The tiny reward model, saved and published with its Space app (publish-pipeline --space)."""
    from editforge.cli import main

    root = tmp_path_factory.mktemp("space")
    reward_pipe.save_pretrained(root / "saved")
    assert main(["publish-pipeline", str(root / "saved"), str(root / "tiny-reward"), "--space",
                 "--repo-id", "org/tiny-reward"]) == 0
    return root / "tiny-reward"


def test_publish_pipeline_space_writes_an_app_that_serves_the_published_pipeline(open_page, published, reward_pipe,
                                                                                  images, monkeypatch):
    import runpy
    from pathlib import Path

    from huggingface_hub import ModelCard

    import editforge.app

    assert (published / "editforge_app.py").read_bytes() == Path(editforge.app.__file__).read_bytes()
    requirements = (published / "requirements.txt").read_text().split()
    assert {line.split(">=")[0] for line in requirements} >= {"torch", "diffusers", "transformers", "gradio"}
    card = ModelCard.load(published / "README.md").data
    assert (card.sdk, card.app_file) == ("gradio", "app.py")

    monkeypatch.syspath_prepend(str(published))
    space = runpy.run_path(str(published / "app.py"), run_name="space")  # as the Space runs it, without launch()
    with serve(space["demo"]) as url:
        page = open_page(url)
        assert page.page.title() == "editforge · org/tiny-reward"
        page.upload(images["square"])
        page.set_value("instruction", INSTRUCTION)
        page.set_value("steps", 2)
        page.set_value("reward-detail_preserving", 2)
        page.run()
        [(result, _)] = page.results(1)
    source = Image.open(images["square"]).convert("RGB")
    assert_same_pixels(result, direct(reward_pipe, source, 0, num_inference_steps=2, rewards=[5, 2, 5]))


def test_editforge_app_loads_a_pipeline_folder_and_serves_it(published, monkeypatch, capsys):
    import gradio as gr

    from editforge.cli import main

    launched = {}

    def launch(demo, **kwargs):  # records what `editforge app` asks of Gradio instead of serving
        launched.update(kwargs, demo=demo)
        demo.local_url, demo.share_url = f"http://{kwargs['server_name']}:{kwargs['server_port']}/", None

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda demo: None)
    assert main(["app", str(published), "--host", "0.0.0.0", "--port", "7999"]) == 0
    assert {key: launched[key] for key in ("server_name", "server_port", "share")} == \
        {"server_name": "0.0.0.0", "server_port": 7999, "share": False}
    assert launched["demo"].title == "editforge · tiny-reward"
    assert capsys.readouterr().out == "editforge app: tiny-reward on http://0.0.0.0:7999/ (Ctrl+C stops)\n"
    assert main(["app", str(published.parent / "missing")]) == 2
    missing = published.parent / "missing"
    assert capsys.readouterr().err.strip() == f"editforge app: error: model missing: {missing} does not exist"
