"""The source layouts ``editforge build-dataset --format`` knows, and where their builders live.

Standard library only, so that the CLI can list the formats without importing ``datasets``.
"""

from __future__ import annotations

import importlib

# --format name -> (builder module, builder class, what it reads)
FORMATS = {
    "manifest": ("manifest", "Manifest", "editforge manifest.jsonl (synth or annotate output)"),
    "rewardedit20k": ("rewardedit20k", "RewardEdit20K", "RewardEdit_20K.json + InstructPix2Pix folders"),
    "instructpix2pix": ("instructpix2pix", "InstructPix2Pix", "InstructPix2Pix clip-filtered Parquet"),
    "magicbrush": ("magicbrush", "MagicBrush", "MagicBrush Parquet"),
    "ultraedit": ("ultraedit", "UltraEdit", "UltraEdit Parquet (free-form and region-based)"),
    "omniedit": ("omniedit", "OmniEdit", "OmniEdit-Filtered Parquet"),
    "pickapic": ("pickapic", "PickAPic", "Pick-a-Pic-style preference Parquet"),
}


def builder_class(format: str):
    """The ``datasets.GeneratorBasedBuilder`` subclass reading ``format``."""
    from editforge.errors import UsageError

    if format not in FORMATS:
        raise UsageError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    module, name, _ = FORMATS[format]
    return getattr(importlib.import_module(f"{__package__}.builders.{module}"), name)
