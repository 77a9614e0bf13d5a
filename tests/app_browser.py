"""Driving ``editforge app`` in Debian's headless Chromium (Playwright, nothing downloaded), for
tests/test_app.py, and taking the screenshot of the README:

    python tests/app_browser.py MODEL docs/app.png

serves MODEL (a pipeline folder or Hub id; ``tiny`` for a tiny random reward-conditioned pipeline)
on a loopback port, edits a synthetic-world image twice (rewards 5/5/5, then 0/5/5) and saves a
screenshot of the page.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

# Debian's chromium package: the binary itself, then its launcher script.
CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")


def find_chromium() -> str | None:
    for candidate in CHROMIUM_PATHS:
        path = candidate if Path(candidate).is_file() else shutil.which(candidate)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve(demo):
    """Serve a gr.Blocks on a free loopback port; yield its URL."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextlib.contextmanager
def chromium(executable: str):
    """A headless Chromium (Playwright) with software WebGL for the image editor's canvas (about 3x
    faster brush strokes than Chromium's default fallback)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        flags = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=flags)
        try:
            yield browser
        finally:
            browser.close()


class Recorder:
    """Stands in for a pipeline's call: calls it, keeps every call's arguments, counts how many calls
    ran at once and can hold each denoising step, after its progress is reported, until ``gate`` (a
    ``threading.Event``) is set."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.gate: threading.Event | None = None
        self.calls: list[dict] = []
        self.most_at_once = 0
        self._running = 0
        self._lock = threading.Lock()

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        on_step_end, gate = kwargs.get("callback_on_step_end"), self.gate
        if gate is not None and on_step_end is not None:
            def held(pipe, step, timestep, tensors):
                result = on_step_end(pipe, step, timestep, tensors)  # the step's progress is shown, then held
                if not gate.wait(timeout=120):
                    raise TimeoutError("the test never opened the recorder's gate")
                return result

            kwargs = {**kwargs, "callback_on_step_end": held}
        with self._lock:
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        try:
            return self.pipe(**kwargs)
        finally:
            with self._lock:
                self._running -= 1


class AppPage:
    """One browser tab on the app, driven through its elements' ids (``elem_id`` in editforge/app.py)."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.outside: list[str] = []  # requests to anything but the app
        self.page.route(re.compile(r"^(?!http://127\.0\.0\.1[:/]).*"), self._refuse)
        self.page.goto(url)
        self.page.locator("#run").wait_for()

    def _refuse(self, route):
        if not route.request.url.startswith(("data:", "blob:")):
            self.outside.append(route.request.url)
            return route.abort()
        return route.continue_()

    def upload(self, path, elem_id: str = "image", updates: str | None = None) -> None:
        """Upload a file; with ``updates``, wait for the upload's event to have updated that element."""
        self.page.locator(f"#{elem_id} input[type=file]").first.set_input_files(str(path))
        if updates is not None:
            self.wait_for_event(updates)

    def wait_for_event(self, elem_id: str) -> None:
        """Wait for the event that updates an element to finish: its status tracker shows (briefly
        looked for), then hides."""
        tracker = self.page.locator(f"#{elem_id} .wrap.default.full").first
        deadline = time.monotonic() + 2.0
        while "hide" in (tracker.get_attribute("class") or "") and time.monotonic() < deadline:
            time.sleep(0.02)
        self.page.locator(f"#{elem_id} .wrap.default.full.hide").first.wait_for(state="attached", timeout=120_000)

    def set_value(self, elem_id: str, value) -> None:
        """Type into a slider's number box, a number or a text box, as a person does."""
        box = self.page.locator(f"#{elem_id} input[type=number], #{elem_id} textarea").first
        box.fill(str(value))
        box.press("Tab")

    def run(self) -> None:
        self.page.locator("#run").click()

    def results(self, count: int, timeout: float = 180.0) -> list[tuple[Image.Image, str]]:
        """Wait for ``count`` results; return them (the images as served, their captions)."""
        thumbnails = self.page.locator("#results .grid-wrap img")
        deadline = time.monotonic() + timeout
        while thumbnails.count() != count or self._busy():
            if time.monotonic() > deadline:
                errors = self.page.locator("[data-testid=toast-text]").all_inner_texts()
                raise AssertionError(f"{thumbnails.count()} results on the page, waiting for {count};"
                                     f" errors shown: {errors}")
            time.sleep(0.1)
        captions = self.page.locator("#results .caption-label").all_inner_texts()
        return [(self.fetch_image(img.get_attribute("src")), caption)
                for img, caption in zip(thumbnails.all(), captions)]

    def _busy(self) -> bool:
        """Whether the results' status tracker shows an event at work (queued or running)."""
        return self.page.locator("#results .wrap.default.full:not(.hide)").count() > 0

    def fetch_image(self, src: str) -> Image.Image:
        image = Image.open(io.BytesIO(self.page.request.get(src).body()))
        image.load()
        return image

    def image_of(self, elem_id: str) -> Image.Image:
        img = self.page.locator(f"#{elem_id} img").first
        img.wait_for()
        return self.fetch_image(img.get_attribute("src"))

    def error(self, timeout: float = 120.0) -> str:
        """The text of the error message the page shows (waited for), then closes it."""
        toast = self.page.locator(".toast-body.error [data-testid=toast-text]").first
        toast.wait_for(timeout=timeout * 1000)
        text = toast.inner_text()
        for close in self.page.locator("[data-testid=toast-close]").all():
            close.click()
        self.page.locator("[data-testid=toast-body]").first.wait_for(state="detached")
        return text

    def wait_for_text(self, elem_id: str, pattern, timeout: float = 120.0) -> None:
        self.page.locator(f"#{elem_id}", has_text=pattern).wait_for(timeout=timeout * 1000)

    def paint(self, strokes, elem_id: str = "region", image_size: tuple[int, int] | None = None) -> None:
        """Paint with the editor's brush: each stroke from its first (x, y) point (image pixels) through
        the others, one pixel at a time (the editor draws a dot at each pointer position)."""
        editor = self.page.locator(f"#{elem_id}")
        editor.locator("button[aria-label=Brush]").click()
        zoom = float(re.search(r"(\d+)%", editor.inner_text()).group(1)) / 100
        canvas = editor.locator("canvas").first.bounding_box()
        width, height = image_size
        left = canvas["x"] + (canvas["width"] - width * zoom) / 2
        top = canvas["y"] + (canvas["height"] - height * zoom) / 2
        for stroke in strokes:
            (x, y), rest = stroke[0], stroke[1:]
            self.page.mouse.move(left + x * zoom, top + y * zoom)
            self.page.mouse.down()
            for next_x, next_y in rest:
                steps = max(1, round(max(abs(next_x - x), abs(next_y - y))))
                self.page.mouse.move(left + next_x * zoom, top + next_y * zoom, steps=steps)
                x, y = next_x, next_y
            self.page.mouse.up()

    def screenshot(self, path) -> None:
        self.page.screenshot(path=str(path), full_page=True)


def save_png(array: np.ndarray, path) -> Path:
    Image.fromarray(array).save(path)
    return Path(path)


def screenshot(model: str, out: str) -> None:
    """The README's screenshot: ``model`` served, two edits (rewards 5/5/5 and 0/5/5, the demo's text
    guidance 3), one picture."""
    import tempfile

    from editforge.dataset_builders.synthetic import generate_triplet

    from editforge.app import build_app

    if model == "tiny":
        from editforge.testing.tiny_models import tiny_reward_pix2pix_pipeline

        demo = build_app(tiny_reward_pix2pix_pipeline(perturb=0.2), "tiny random reward model")
    else:
        from editforge.evaluation.models import load_pipeline, model_specs

        spec = model_specs([model])[0]
        demo = build_app(load_pipeline(spec, progress=False), spec.name)
    triplet = generate_triplet(0, 7, width=32, height=32, tasks=("background_change",))
    with tempfile.TemporaryDirectory() as folder, serve(demo) as url, chromium(find_chromium()) as browser:
        source = save_png(triplet.source, Path(folder) / "source.png")
        page = AppPage(browser, url)
        page.upload(source)
        page.set_value("instruction", triplet.instruction)
        page.set_value("steps", 20)
        page.set_value("guidance", 3)
        page.run()
        page.results(1, timeout=300)
        page.set_value("reward-instruction_following", 0)
        page.run()
        page.results(2, timeout=300)
        page.screenshot(out)
    print(f"wrote {out} ({Path(out).stat().st_size // 1024} KB): {model}, “{triplet.instruction}”")


if __name__ == "__main__":
    import sys

    screenshot(sys.argv[1], sys.argv[2])
