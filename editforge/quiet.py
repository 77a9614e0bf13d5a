"""Library noise that editforge knows to be harmless, hidden unless asked for (``--verbose``).

``editforge demo`` and the training scripts print their own progress and results; the libraries
under them add lines that say nothing about the run. Each one is listed in ``KNOWN_NOISE`` and
silenced by its exact message (a logging filter on the logger that emits it) or by that library's
own progress-bar switch; nothing else is touched: any other warning, from any library, still shows.

    quiet_libraries()               # in a command's process, before the heavy imports
    quiet_libraries(verbose=True)   # show everything again

``verbose=None`` reads ``EDITFORGE_VERBOSE`` (``1`` shows everything). The choice is written back
to ``EDITFORGE_VERBOSE``, so child processes (the demo's training runs) make the same one.

This module imports only the standard library. A library that is not imported yet is configured
the moment it is (an import hook), so calling this costs nothing in commands that never load it.
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import re
import sys

ENV = "EDITFORGE_VERBOSE"

# (where, what, why it is harmless) -- the list the README and --help point to.
KNOWN_NOISE = [
    ("transformers", "`XImageProcessor` requires torchvision (not installed); falling back to `XImageProcessorPil` ...",
     "diffusers imports CLIP/Siglip image processors at import; editforge never uses them (no safety checker)"),
    ("transformers", "progress bars 'Loading weights' and 'Writing model shards'",
     "every from_pretrained/save_pretrained of a text encoder; tiny local files, instant"),
    ("diffusers", "'self.text_encoder_3=None of type <class 'NoneType'> cannot be saved.'",
     "save_pretrained of a pipeline with an optional component left out (SD3 without T5): model_index records it as null"),
    ("diffusers", "progress bars of loading ('Loading pipeline components...', checkpoint shards)",
     "every DiffusionPipeline.from_pretrained; editforge reports its own stages"),
    ("datasets", "progress bars ('Generating train split', map, ...)",
     "editforge builds and reloads small local datasets and shows its own progress"),
]

# logger name -> regular expressions of the messages to drop
_MESSAGES = {
    "transformers.utils.import_utils": [
        re.compile(r"`\w+ImageProcessor` requires torchvision \(not installed\); falling back to `\w+ImageProcessorPil`"),
    ],
    "diffusers.pipelines.pipeline_utils": [
        re.compile(r"^self\.\w+=None of type <class 'NoneType'> cannot be saved\.$"),
    ],
}
_TRANSFORMERS_BARS = frozenset({"Loading weights", "Writing model shards"})


class _DropKnownMessages(logging.Filter):
    def __init__(self, patterns):
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def _transformers_bar_hook(previous):
    def hook(factory, args, kwargs):
        if kwargs.get("desc") in _TRANSFORMERS_BARS:
            kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    return hook


class _State:
    quiet = False
    filters: dict = {}
    finder = None
    undo: dict = {}  # module name -> function restoring what quieting changed


def _quiet_transformers(module) -> None:
    if hasattr(module, "set_tqdm_hook"):
        previous = module.set_tqdm_hook(None)
        module.set_tqdm_hook(_transformers_bar_hook(previous))
        _State.undo[module.__name__] = lambda: module.set_tqdm_hook(previous)


def _quiet_diffusers(module) -> None:
    if module.is_progress_bar_enabled():
        module.disable_progress_bar()
        _State.undo[module.__name__] = module.enable_progress_bar


def _quiet_datasets(module) -> None:
    if not module.are_progress_bars_disabled() and module.HF_DATASETS_DISABLE_PROGRESS_BARS is None:
        module.disable_progress_bars()
        _State.undo[module.__name__] = module.enable_progress_bars


# module -> what to do once it is imported (each is the library's public switch)
_ON_IMPORT = {
    "transformers.utils.logging": _quiet_transformers,
    "diffusers.utils.logging": _quiet_diffusers,
    "datasets.utils.tqdm": _quiet_datasets,
}


class _ThenRun(importlib.abc.Loader):
    """A loader that runs the real one, then a function on the fresh module."""

    def __init__(self, loader, after):
        self.loader, self.after = loader, after

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        if _State.quiet:
            self.after(module)

    def __getattr__(self, name):  # get_source, get_resource_reader, ...
        return getattr(self.loader, name)


class _OnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        after = _ON_IMPORT.get(name)
        if after is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenRun(spec.loader, after)
                return spec
        return None


def is_verbose() -> bool:
    """Whether ``EDITFORGE_VERBOSE`` asks for every library message."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def quiet_libraries(verbose: bool | None = None) -> bool:
    """Hide the library noise in ``KNOWN_NOISE`` (``verbose=False``) or show it again (``True``);
    ``None`` reads ``EDITFORGE_VERBOSE``. Returns ``verbose``. Safe to call more than once."""
    verbose = is_verbose() if verbose is None else bool(verbose)
    os.environ[ENV] = "1" if verbose else "0"
    if verbose:
        _loud()
    else:
        _quiet()
    return verbose


def _quiet() -> None:
    if _State.quiet:
        return
    _State.quiet = True
    for name, patterns in _MESSAGES.items():
        log_filter = _DropKnownMessages(patterns)
        logging.getLogger(name).addFilter(log_filter)
        _State.filters[name] = log_filter
    _State.finder = _OnImport()
    sys.meta_path.insert(0, _State.finder)
    for name, after in _ON_IMPORT.items():
        if name in sys.modules:
            after(sys.modules[name])


def _loud() -> None:
    if not _State.quiet:
        return
    _State.quiet = False
    for name, log_filter in _State.filters.items():
        logging.getLogger(name).removeFilter(log_filter)
    _State.filters = {}
    if _State.finder in sys.meta_path:
        sys.meta_path.remove(_State.finder)
    _State.finder = None
    for restore in _State.undo.values():
        restore()
    _State.undo = {}
