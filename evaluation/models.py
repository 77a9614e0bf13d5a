"""Models under evaluation: a name, where the pipeline is (a folder or a Hub id) and its call arguments.

Any diffusers editing pipeline loads with ``DiffusionPipeline.from_pretrained``: ours
(``RewardConditionedPix2PixPipeline``, whose published folders ship their code, hence
``trust_remote_code``), the stock ``StableDiffusionInstructPix2PixPipeline`` or whatever class a
folder's ``model_index.json`` names, as long as its ``__call__`` takes ``prompt`` and ``image``.
A model may also be edits made elsewhere, ``outputs:PATH`` (``PATH/<item>.png`` for every seed, or
``PATH/seed<k>/<item>.png``): an API editor's outputs, or a reference such as the demo's VAE ceiling.

Model arguments are ``key=value`` pairs separated by commas; a value may itself be a comma list
(``rewards=5,5,5,guidance_scale=3``: the bare ``5`` items belong to ``rewards``). ``steps`` is
short for ``num_inference_steps``. ``NAME:key=value,...`` (or ``NAME=key=value,...``) applies to
the model called NAME, a bare ``key=value,...`` to every model.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editforge.errors import UsageError

ALIASES = {"steps": "num_inference_steps"}
# Set by the harness for every item: not model arguments.
RESERVED = ("prompt", "image", "generator", "output_type", "return_dict", "num_images_per_prompt")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ModelSpec:
    """One model of a run. ``location``: a pipeline folder or a Hub id."""

    name: str
    location: str
    call_args: dict = field(default_factory=dict)
    trust_remote_code: bool | None = None  # None: when a local folder ships code

    def signature(self) -> dict:
        """What makes two runs of this model the same run (kept in the out folder's state)."""
        return {"location": self.location, "call_args": json.loads(json.dumps(self.call_args, default=str))}


def parse_value(text: str) -> Any:
    """``5`` -> 5, ``1.5`` -> 1.5, ``5,5,5`` -> [5, 5, 5], ``none`` -> None, ``true`` -> True, else text."""
    if "," in text:
        return [parse_value(part) for part in text.split(",")]
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_call_args(text: str) -> dict:
    """``key=value,key=v1,v2`` -> {key: value, key: [v1, v2]} (see the module docstring)."""
    pairs: list[list[str]] = []
    for token in (t for t in text.split(",") if t != ""):
        if "=" in token:
            key, value = token.split("=", 1)
            if not key.strip():
                raise UsageError(f"model argument {token!r} has no name")
            pairs.append([key.strip(), value.strip()])
        elif pairs:
            pairs[-1][1] += "," + token.strip()
        else:
            raise UsageError(f"model argument {token!r} is not key=value")
    args = {}
    for key, value in pairs:
        key = ALIASES.get(key, key)
        if key in RESERVED:
            raise UsageError(f"model argument {key!r} is set by the harness for every item")
        args[key] = parse_value(value)
    return args


def parse_model_args(values: list[str] | None, names: list[str]) -> dict[str, dict]:
    """``--model-args`` values -> {model name: call arguments}; a bare list applies to every model."""
    result: dict[str, dict] = {name: {} for name in names}
    for value in values or ():
        head, _, tail = value.partition("=")
        if ":" in head:
            name, _, rest = value.partition(":")
            if name not in result:
                raise UsageError(f"--model-args {value!r}: no model is called {name!r} "
                                 f"(the models are {', '.join(names)})")
            result[name].update(parse_call_args(rest))
        elif head in result and "=" in tail:  # the spelling: NAME=key=value,...
            result[head].update(parse_call_args(tail))
        else:
            for name in names:
                result[name].update(parse_call_args(value))
    return result


def _default_name(location: str) -> str:
    name = Path(location.rstrip("/\\")).name or location
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def model_specs(models, model_args: list[str] | dict | None = None) -> list[ModelSpec]:
    """ModelSpecs from ``NAME=LOCATION`` / ``LOCATION`` strings (or ModelSpecs), with their arguments.

    A model without a name is called after its folder (or the Hub id's last part); two models of
    the same name get ``-2``, ``-3``... A model may appear twice under two names with two sets of
    arguments (the pipeline is loaded once).
    """
    specs: list[ModelSpec] = []
    for model in models:
        if isinstance(model, ModelSpec):
            specs.append(ModelSpec(model.name, model.location, dict(model.call_args), model.trust_remote_code))
            continue
        model = str(model)
        name, sep, location = model.partition("=")
        if not sep or not _NAME.match(name) or os.path.exists(model):
            name, location = _default_name(model), model
        specs.append(ModelSpec(name, location))
    if not specs:
        raise UsageError("give at least one model")
    seen: dict[str, int] = {}
    for spec in specs:
        if not _NAME.match(spec.name):
            raise UsageError(f"model name {spec.name!r}: use letters, digits, '.', '_' and '-'")
        seen[spec.name] = seen.get(spec.name, 0) + 1
        if seen[spec.name] > 1:
            spec.name = f"{spec.name}-{seen[spec.name]}"
    names = [s.name for s in specs]
    if isinstance(model_args, dict):
        unknown = sorted(set(model_args) - set(names))
        if unknown:
            raise UsageError(f"model arguments for {', '.join(unknown)}: no such model (the models are {', '.join(names)})")
        per_model = {name: dict(model_args.get(name, {})) for name in names}
    else:
        per_model = parse_model_args(model_args, names)
    for spec in specs:
        spec.call_args = {**spec.call_args, **{ALIASES.get(k, k): v for k, v in per_model[spec.name].items()}}
    return specs


def _ships_code(folder: Path) -> bool:
    return any(folder.glob("*.py")) or any(folder.glob("*/*.py"))


OUTPUTS_PREFIX = "outputs:"


def outputs_folder(spec: ModelSpec) -> Path | None:
    """The folder of a model given as edits made elsewhere (``outputs:PATH``), else None."""
    return Path(spec.location[len(OUTPUTS_PREFIX):]) if spec.location.startswith(OUTPUTS_PREFIX) else None


def check_location(spec: ModelSpec) -> None:
    """A local location must be a pipeline folder (with model_index.json), or ``outputs:PATH`` a
    folder of edits (``<item>.png`` or ``seed<k>/<item>.png``); raises UsageError."""
    folder = outputs_folder(spec)
    if folder is not None:
        if not folder.is_dir():
            raise UsageError(f"model {spec.name}: {folder} is not a folder of edited images")
        if spec.call_args:
            raise UsageError(f"model {spec.name}: edits made elsewhere take no model arguments")
        return
    path = Path(spec.location)
    if path.exists():
        if not path.is_dir() or not (path / "model_index.json").is_file():
            raise UsageError(f"model {spec.name}: {spec.location} is not a diffusers pipeline folder "
                             f"(no model_index.json)")
    elif spec.location.startswith((".", "/", "~")) or spec.location.count("/") > 1:
        raise UsageError(f"model {spec.name}: {spec.location} does not exist")


def load_pipeline(spec: ModelSpec, *, torch_dtype=None, device: str | None = None, progress: bool = True,
                  kind: str = "edit"):
    """The pipeline of ``spec`` (``DiffusionPipeline.from_pretrained``), progress bar off.

    Raises UsageError naming the model when it is not a pipeline, cannot be loaded, or does not do
    what the suite's models do (``kind``): an editing pipeline's ``__call__`` takes ``prompt`` and
    ``image``, a text-to-image one's ``prompt`` and no ``image``.
    """
    check_location(spec)
    from diffusers import DiffusionPipeline

    path = Path(spec.location)
    trust = spec.trust_remote_code if spec.trust_remote_code is not None else (path.is_dir() and _ships_code(path))
    options = {"trust_remote_code": True} if trust else {}
    if torch_dtype is not None:
        options["torch_dtype"] = torch_dtype
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    shown = [library.is_progress_bar_enabled() for library in libraries]
    if not progress:
        for library in libraries:
            library.disable_progress_bar()
    try:
        pipe = DiffusionPipeline.from_pretrained(spec.location, **options)
    except Exception as err:  # noqa: BLE001 - one message naming the model
        message = " ".join(str(err).split())
        hint = " (a Hub model with custom code needs --trust-remote-code)" if "trust_remote_code" in message else ""
        raise UsageError(f"model {spec.name}: cannot load a pipeline from {spec.location}: "
                         f"{type(err).__name__}: {message}{hint}") from None
    finally:
        for library, enabled in zip(libraries, shown):
            if enabled:
                library.enable_progress_bar()
    parameters = inspect.signature(type(pipe).__call__).parameters
    if kind == "text-to-image":
        if "prompt" not in parameters or "image" in parameters:
            raise UsageError(f"model {spec.name}: {type(pipe).__name__} is not a text-to-image pipeline "
                             f"(its __call__ {'takes an input image' if 'image' in parameters else 'takes no prompt'}); "
                             f"the suite is text-to-image")
    elif "image" not in parameters or "prompt" not in parameters:
        raise UsageError(f"model {spec.name}: {type(pipe).__name__} takes no prompt and image: not an editing pipeline")
    check_call_args(spec, pipe)
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_call_args(spec: ModelSpec, pipe) -> None:
    # Named parameters only: diffusers' **kwargs hold deprecated callbacks, and a misspelt argument
    # there would be dropped silently.
    parameters = inspect.signature(type(pipe).__call__).parameters
    named = {name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    unknown = sorted(set(spec.call_args) - named - {"callback", "callback_steps"})
    if unknown:
        raise UsageError(f"model {spec.name}: {type(pipe).__name__} takes no argument(s) {', '.join(unknown)}")
