"""Fake Hugging Face Hub caches, so ``from_pretrained("org/name")`` runs with no network.

The layout is the one ``huggingface_hub`` writes::

    <cache>/models--org--name/refs/main                   -> "<40 hex commit>"
    <cache>/models--org--name/snapshots/<commit>/...      the repo's files
    <cache>/models--org--name/.no_exist/<commit>/<path>   optional files known to be absent

With ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing at ``<cache>``, every library of the
stack resolves the repo id to the snapshot. ``trees/`` is left out on purpose: with it, custom
pipeline code trips an offline code path of huggingface_hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable, Iterator

_PREFIX = {"model": "models", "dataset": "datasets", "space": "spaces"}
_PATCHED_NAMES = ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")
_PATCHED_MODULES = ("huggingface_hub", "diffusers", "transformers", "datasets", "peft", "accelerate")


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha1()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def repo_folder_name(repo_id: str, repo_type: str = "model") -> str:
    return f"{_PREFIX[repo_type]}--{repo_id.replace('/', '--')}"


def add_repo(
    cache_dir: str | os.PathLike,
    repo_id: str,
    folder: str | os.PathLike,
    repo_type: str = "model",
    revision: str = "main",
    missing: Iterable[str] = (),
) -> Path:
    """Put the files of ``folder`` in the cache as ``repo_id`` at ``revision``; return the snapshot.

    ``missing`` lists repo paths to mark as known-absent (``.no_exist``), which offline loaders
    consult for optional files. The commit hash is a digest of the files, so the same folder
    always gives the same commit.
    """
    if "/" not in repo_id:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    root = Path(cache_dir) / repo_folder_name(repo_id, repo_type)
    commit = _tree_hash(folder)
    snapshot = root / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.copytree(folder, snapshot)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    for path in missing:
        marker = root / ".no_exist" / commit / path
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return snapshot


@contextlib.contextmanager
def offline_hub(cache_dir: str | os.PathLike) -> Iterator[Path]:
    """Within the block, the Hub is offline and its cache is ``cache_dir``.

    Sets the environment variables (for subprocesses) and the copies of ``HF_HUB_OFFLINE`` /
    ``HF_HUB_CACHE`` that already-imported modules of the stack took at import time.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    values = {"HF_HUB_OFFLINE": True, "HF_HUB_CACHE": str(cache_dir), "HUGGINGFACE_HUB_CACHE": str(cache_dir)}
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache_dir)}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_attrs = []
    os.environ.update(env)
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in _PATCHED_MODULES:
            continue
        for attr in _PATCHED_NAMES:
            if attr in getattr(module, "__dict__", {}):
                saved_attrs.append((module, attr, module.__dict__[attr]))
                setattr(module, attr, values[attr])
    try:
        yield cache_dir
    finally:
        for module, attr, value in reversed(saved_attrs):
            setattr(module, attr, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
