"""``editforge app``: a Gradio page to edit images with any diffusers editing pipeline.

``build_app(pipe)`` returns the page (a queued ``gr.Blocks``) for a pipeline object; ``editforge app
MODEL`` loads a pipeline folder or Hub id as ``editforge eval`` does and serves its page. This file is
self-contained (gradio, numpy, PIL, torch): ``editforge publish-pipeline --space`` copies it into a
Space. What the page offers depends on the pipeline:

* every editing pipeline (its ``__call__`` takes ``prompt`` and ``image``): the image, the
  instruction, the seed, the number of steps, text guidance and, where ``__call__`` takes it, image
  guidance; the defaults are those of ``__call__``;
* a reward-conditioned pipeline (a ``reward_conditioner`` component, arXiv 2411.04713): one slider
  per reward perspective (0 to the conditioner's ``max_score``), the failure text and reward guidance;
* a mask-conditioned pipeline (``pipe.takes_mask``: a 48-channel SD3 InstructPix2Pix, UltraEdit's
  region model): a white brush to paint the region to edit; nothing painted = free-form.

Every edit is added to the results, side by side with the earlier ones and captioned with its
settings, so that, say, rewards 5/5/5 and 3/5/5 can be compared.

Images may have any aspect ratio. One whose sides are multiples of what the model needs
(``vae_scale_factor`` x ``patch_size``) and that has no more pixels than the model's native
resolution (``sample_size * vae_scale_factor``, squared) goes to the pipeline as it was decoded;
any other is resized for the model (aspect ratio kept, sides rounded down to the multiple) and the
result resized back to the original size. Results are served as PNG: what the page shows is, pixel
for pixel, what the pipeline returned.

Bad input (a file that is not an image, an empty instruction, an image of more than
``max_image_pixels``, a painted region of another size than the image) gets a message on the page
(``gr.Error``), and so does a request the pipeline refuses; the app keeps serving. Requests wait in
Gradio's queue and run one at a time on the one pipeline in memory, with progress shown per
denoising step.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

logger = logging.getLogger(__name__)

# Far beyond any editing model's working size; refused before the pixels are decoded.
MAX_IMAGE_PIXELS = 4096 * 4096
# __call__ arguments the page sets, with the page's fallback where __call__ gives no default.
SAMPLING_DEFAULTS = {"num_inference_steps": 50, "guidance_scale": 7.5, "image_guidance_scale": 1.5}
REGION_HELP = "Region to edit: paint it white (white = edit); paint nothing to edit the whole image"


class EditError(gr.Error):
    """A message the page shows instead of an edit (bad input, or a request the model refused)."""


# --------------------------------------------------------------------------------------------------
# what a pipeline takes


@dataclass(frozen=True)
class PipelineFeatures:
    """What the page offers for one pipeline, read from its components and its ``__call__``."""

    name: str
    pipeline_class: str
    perspectives: tuple[str, ...]  # reward perspectives; empty for a pipeline without rewards
    max_score: float
    takes_mask: bool
    reports_steps: bool  # __call__ takes callback_on_step_end (progress per step)
    call_defaults: dict  # the sampling arguments __call__ takes, with their defaults
    size_multiple: int  # both sides of the model's input must be multiples of this
    native_pixels: int  # the model's native resolution (width x height); larger images are scaled down

    @classmethod
    def of(cls, pipe, name: str | None = None) -> PipelineFeatures:
        parameters = inspect.signature(type(pipe).__call__).parameters
        if "prompt" not in parameters or "image" not in parameters:
            raise ValueError(f"{type(pipe).__name__} takes no prompt and image: not an editing pipeline")
        defaults = {}
        for key, fallback in SAMPLING_DEFAULTS.items():
            if key in parameters:
                default = parameters[key].default
                defaults[key] = fallback if default in (inspect.Parameter.empty, None) else default
        conditioner = getattr(pipe, "reward_conditioner", None)
        perspectives = tuple(conditioner.config.perspectives) if conditioner is not None else ()
        max_score = float(conditioner.config.max_score) if conditioner is not None else 0.0
        takes_mask = "mask_image" in parameters and bool(getattr(pipe, "takes_mask", False))
        scale = int(getattr(pipe, "vae_scale_factor", 8))
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        sample_size = getattr(getattr(denoiser, "config", None), "sample_size", None) or 64
        sample_size = sample_size if isinstance(sample_size, int) else max(sample_size)
        return cls(
            name=name or type(pipe).__name__,
            pipeline_class=type(pipe).__name__,
            perspectives=perspectives,
            max_score=max_score,
            takes_mask=takes_mask,
            reports_steps="callback_on_step_end" in parameters,
            call_defaults=defaults,
            size_multiple=scale * int(getattr(pipe, "patch_size", 1) or 1),
            native_pixels=(sample_size * scale) ** 2,
        )

    @property
    def takes_rewards(self) -> bool:
        return bool(self.perspectives)


def working_size(size: tuple[int, int], multiple: int, max_pixels: int) -> tuple[int, int]:
    """The size (width, height) an image of ``size`` is edited at: scaled down, aspect ratio kept, to
    at most ``max_pixels``, and each side rounded down to a multiple of ``multiple`` (at least one)."""
    width, height = size
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    return tuple(max(multiple, int(side * scale) // multiple * multiple) for side in (width, height))


# --------------------------------------------------------------------------------------------------
# inputs


def region_brush(size: int | None = None) -> gr.Brush:
    """A white brush (white = edit) of radius ``size`` pixels of the image (Gradio's default when None)."""
    return gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=max(1, size) if size is not None else "auto")


class SourceImage(gr.Image):
    """``gr.Image`` (same front end) whose unreadable upload gets a message on the page."""

    is_template = True  # rendered by gr.Image's front end

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except PIL.Image.DecompressionBombError as err:  # PIL refuses to open it at all
            raise EditError(f"{_file_name(payload)} is far too large: {err}") from None
        except (PIL.UnidentifiedImageError, OSError, ValueError):
            raise EditError(_not_an_image(_file_name(payload))) from None


def _file_name(payload) -> str:
    return getattr(payload, "orig_name", None) or Path(getattr(payload, "path", None) or "the file").name


def _not_an_image(name: str) -> str:
    return f"{name} is not an image (PNG, JPEG, WebP, ...): upload an image file"


def read_image(path: str | None, max_pixels: int = MAX_IMAGE_PIXELS) -> PIL.Image.Image:
    """The uploaded image at ``path`` as RGB (EXIF orientation applied, transparency on white), or a
    EditError naming the problem. Its size is checked before its pixels are decoded."""
    if path is None:
        raise EditError("Upload an image to edit first")
    name = Path(path).name
    try:
        image = PIL.Image.open(path)
    except (PIL.UnidentifiedImageError, OSError):
        raise EditError(_not_an_image(name)) from None
    width, height = image.size
    if width * height > max_pixels:
        raise EditError(
            f"{name} is far too large: {width}x{height} = {width * height:,} pixels; this app takes images of up"
            f" to {max_pixels:,} pixels ({math.isqrt(max_pixels)}x{math.isqrt(max_pixels)}): scale it down first"
        )
    try:
        image = PIL.ImageOps.exif_transpose(image)
        if "A" in image.getbands() or "transparency" in image.info:
            image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        return image.convert("RGB")
    except (OSError, ValueError) as err:  # a truncated or corrupt file
        raise EditError(f"{name} cannot be read as an image: {err}") from None


def painted_region(editor_value: dict | None, size: tuple[int, int]) -> PIL.Image.Image | None:
    """The region painted in the editor as a mask ("L", 255 = edit) of ``size``, or ``None`` when
    nothing is painted (free-form). Every pixel a brush stroke touched counts, however faintly."""
    painted = np.zeros((size[1], size[0]), dtype=bool)
    for layer in (editor_value or {}).get("layers") or []:
        alpha = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        if not alpha.any():
            continue
        if layer.size != size:
            raise EditError(
                f"the painted region is {layer.width}x{layer.height} pixels but the image is {size[0]}x{size[1]}:"
                " paint the region on the image itself (upload the image again to start over)"
            )
        painted |= alpha
    return PIL.Image.fromarray(painted.astype(np.uint8) * 255, mode="L") if painted.any() else None


# --------------------------------------------------------------------------------------------------
# the edit


def edit_image(pipe, features: PipelineFeatures, image: PIL.Image.Image, mask: PIL.Image.Image | None, seed: int,
               call_args: dict, progress=None) -> tuple[PIL.Image.Image, PIL.Image.Image | None]:
    """One edit: ``(result at the image's size, the mask the pipeline received or None)``.

    The image (and mask) are resized for the model only where :func:`working_size` says so.
    ``progress`` (a ``gr.Progress``) is told of every denoising step. A request the pipeline refuses
    raises EditError with the pipeline's message.
    """
    size = working_size(image.size, features.size_multiple, features.native_pixels)
    source = image if size == image.size else image.resize(size, PIL.Image.LANCZOS)
    arguments = dict(call_args)
    if mask is not None:
        mask = mask if mask.size == size else mask.resize(size, PIL.Image.NEAREST)
        arguments["mask_image"] = mask
    steps = arguments.get("num_inference_steps")
    if progress is not None and steps and features.reports_steps:
        def on_step_end(pipeline, step, timestep, tensors):
            progress((step + 1, steps), desc="denoising", unit="steps")
            return tensors

        arguments["callback_on_step_end"] = on_step_end
    try:
        result = pipe(image=source, generator=torch.Generator().manual_seed(seed), **arguments).images[0]
    except (ValueError, TypeError) as err:
        raise EditError(f"the model refused the request: {err}") from None
    except Exception as err:  # the page shows a message and keeps serving
        logger.exception("edit failed")
        raise EditError(f"the edit failed: {type(err).__name__}: {err}") from None
    if result.size != image.size:
        result = result.resize(image.size, PIL.Image.LANCZOS)
    return result, mask


def caption(features: PipelineFeatures, instruction: str, seed: int, call_args: dict, masked: bool) -> str:
    """What distinguishes one result from another, the rewards first, for its caption."""
    parts = []
    if features.takes_rewards:
        parts.append("rewards " + "/".join(f"{score:g}" for score in call_args["rewards"]))
        if call_args.get("reward_guidance_scale", 1.0) > 1.0:
            parts.append(f"reward guidance {call_args['reward_guidance_scale']:g}")
        if call_args.get("reward_feedback"):
            parts.append(f"failures: {call_args['reward_feedback']}")
    if features.takes_mask:
        parts.append("painted region" if masked else "free-form")
    parts += [f"seed {seed}", f"{call_args['num_inference_steps']} steps", f"“{instruction}”"]
    return " · ".join(parts)


# --------------------------------------------------------------------------------------------------
# the page


class EditingApp:
    """The page of one pipeline: ``EditingApp(pipe).build()`` is a ``gr.Blocks``, queued one request
    at a time (the pipeline is in memory once)."""

    def __init__(self, pipe, name: str | None = None, max_image_pixels: int | None = None):
        self.pipe = pipe
        self.features = PipelineFeatures.of(pipe, name)
        self.max_image_pixels = max_image_pixels or MAX_IMAGE_PIXELS

    # event handlers

    def start_region(self, path: str | None):
        """The region editor for a newly uploaded image: the image, nothing painted, a brush of a
        twentieth of its shorter side."""
        image = read_image(path, self.max_image_pixels)
        return gr.ImageEditor(value={"background": image, "layers": [], "composite": image},
                              brush=region_brush(min(image.size) // 20))

    def check_upload(self, path: str | None) -> None:
        read_image(path, self.max_image_pixels)

    def edit(self, values: dict, progress=gr.Progress()):  # noqa: B008 - how Gradio passes progress in
        """Run one edit from the page's values; return the results (all of them, this one last)."""
        c = self.components
        image = read_image(values[c["image"]], self.max_image_pixels)
        instruction = (values[c["instruction"]] or "").strip()
        if not instruction:
            raise EditError("Write an instruction: what should change in the image?")
        seed = values[c["seed"]]
        if seed is None or seed != int(seed) or seed < 0:
            raise EditError(f"the seed must be a whole number, 0 or more; got {seed}")
        seed = int(seed)
        mask = painted_region(values[c["region"]], image.size) if self.features.takes_mask else None
        call_args = {"prompt": instruction, "num_inference_steps": int(values[c["num_inference_steps"]])}
        for key in ("guidance_scale", "image_guidance_scale"):
            if key in c:
                call_args[key] = float(values[c[key]])
        if self.features.takes_rewards:
            call_args["rewards"] = [float(values[c[f"reward_{name}"]]) for name in self.features.perspectives]
            call_args["reward_feedback"] = (values[c["reward_feedback"]] or "").strip() or None
            call_args["reward_guidance_scale"] = float(values[c["reward_guidance_scale"]])
        result, mask_used = edit_image(self.pipe, self.features, image, mask, seed, call_args, progress)
        label = caption(self.features, instruction, seed, call_args, mask is not None)
        results = [*values[c["results_state"]], (result, label)]
        outputs = {c["results"]: results, c["results_state"]: results}
        if self.features.takes_mask:
            outputs[c["region_used"]] = mask_used
        return outputs

    # layout

    def build(self) -> gr.Blocks:
        features = self.features
        c = self.components = {}
        with gr.Blocks(title=f"editforge · {features.name}") as demo:
            gr.Markdown(f"## editforge · {features.name}\n{self._summary()}")
            with gr.Row():
                with gr.Column(scale=1):
                    c["image"] = SourceImage(label="Image", type="filepath", image_mode=None, format="png",
                                             sources=["upload", "clipboard"], elem_id="image")
                    if features.takes_mask:
                        c["region"] = gr.ImageEditor(
                            label=REGION_HELP, type="pil", image_mode="RGBA", format="png", sources=["upload"],
                            layers=False, transforms=(), elem_id="region",
                            brush=region_brush(),
                        )
                    c["instruction"] = gr.Textbox(label="Instruction", placeholder="make the sky pink",
                                                  elem_id="instruction")
                    if features.takes_rewards:
                        self._reward_controls(c)
                    self._sampling_controls(c)
                    run = gr.Button("Edit", variant="primary", elem_id="run")
                with gr.Column(scale=1):
                    c["results"] = gr.Gallery(label="Results (the newest last)", format="png", columns=3,
                                              object_fit="contain", elem_id="results")
                    if features.takes_mask:
                        c["region_used"] = gr.Image(label="Region the model received (white = edit)",
                                                    format="png", interactive=False, elem_id="region-used")
                    clear = gr.Button("Clear results", elem_id="clear")
            c["results_state"] = gr.State([])

            if features.takes_mask:
                c["image"].upload(self.start_region, inputs=c["image"], outputs=c["region"])
                c["image"].clear(lambda: None, outputs=c["region"])
            else:
                c["image"].upload(self.check_upload, inputs=c["image"])
            outputs = [c["results"], c["results_state"]] + ([c["region_used"]] if features.takes_mask else [])
            inputs = {component for key, component in c.items() if key not in ("results", "region_used")}
            # one edit at a time, whoever asks: the others wait in the queue, shown their place in it
            gr.on([run.click, c["instruction"].submit], self.edit, inputs=inputs, outputs=outputs, concurrency_limit=1)
            clear.click(lambda: ([], []), outputs=[c["results"], c["results_state"]])
        return demo.queue()

    def _summary(self) -> str:
        features = self.features
        lines = [f"`{features.pipeline_class}`."]
        if features.takes_rewards:
            lines.append(f"Reward-conditioned: set the target scores (0-{features.max_score:g}) and compare the"
                         " results.")
        if features.takes_mask:
            lines.append("Takes a region: paint it on the image, or paint nothing for a free-form edit.")
        return " ".join(lines)

    def _reward_controls(self, c: dict) -> None:
        features = self.features
        with gr.Group():
            for name in features.perspectives:
                c[f"reward_{name}"] = gr.Slider(0, features.max_score, value=features.max_score, step=1,
                                    label=name.replace("_", " ").capitalize(), elem_id=f"reward-{name}")
            c["reward_feedback"] = gr.Textbox(
                label="Failure text (one per perspective, joined with '; '; empty = no failures)",
                placeholder="; ".join("None" for _ in features.perspectives), elem_id="reward-feedback",
            )
            c["reward_guidance_scale"] = gr.Slider(1.0, 5.0, value=1.0, step=0.1, label="Reward guidance (1 = off)",
                                                   elem_id="reward-guidance")

    def _sampling_controls(self, c: dict) -> None:
        defaults = self.features.call_defaults
        with gr.Row():
            c["seed"] = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="seed")
            c["num_inference_steps"] = gr.Slider(1, 100, value=defaults.get("num_inference_steps", 50), step=1,
                                                 label="Steps", elem_id="steps")
        with gr.Row():
            if "guidance_scale" in defaults:
                c["guidance_scale"] = gr.Slider(0.0, 20.0, value=defaults["guidance_scale"], step=0.1,
                                                label="Text guidance", elem_id="guidance")
            if "image_guidance_scale" in defaults:
                c["image_guidance_scale"] = gr.Slider(0.0, 10.0, value=defaults["image_guidance_scale"], step=0.1,
                                                      label="Image guidance", elem_id="image-guidance")


def build_app(pipe, name: str | None = None, max_image_pixels: int | None = None) -> gr.Blocks:
    """The editing page of ``pipe`` (any diffusers editing pipeline), queued one request at a time.
    ``name`` is the title (default: the pipeline's class); uploads of more than ``max_image_pixels``
    (default ``MAX_IMAGE_PIXELS``) are refused."""
    return EditingApp(pipe, name, max_image_pixels).build()

