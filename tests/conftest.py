"""Test-wide settings: everything runs offline, with no telemetry and quiet progress bars."""

import os
import sys
import tempfile

import pytest

# Set before any library of the stack is imported, so their import-time copies see them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPENAI_API_KEY", "")
# custom pipeline code that tests load is copied here, not into ~/.cache/huggingface/modules
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="editforge-test-modules-"))


@pytest.fixture(autouse=True)
def _fresh_custom_pipeline_modules():
    """diffusers imports every local custom pipeline file as ``diffusers_modules.local.<name>`` and
    re-executes a cached module in place, so a second, different ``pipeline.py`` in one process
    keeps the first one's classes and fails ("Multiple classes that inherit from DiffusionPipeline").
    Each test starts without those modules."""
    yield
    for name in [m for m in sys.modules if m.startswith("diffusers_modules.local")]:
        del sys.modules[name]
