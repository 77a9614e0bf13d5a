"""Variants of ``editforge demo``: other miniatures that run offline, one module each.

``editforge demo`` itself is the main job (:mod:`editforge.demo`, Multi-Reward as Condition);
``editforge demo VARIANT [--flags]`` runs one of these instead. Each module exposes a config
dataclass (its ``--flags``) and a ``run_*`` function, and reuses the main demo's parts (its
resumable stages, VAE fitting, training processes, VAE ceiling).
"""

from __future__ import annotations

# variant -> (module, config class, run function, one line of help)
VARIANTS = {
    "instructengine": ("editforge.demos.instructengine", "InstructEngineConfig", "run_instructengine_demo",
                       "InstructEngine in miniature: a tiny text-to-image model pre-trained on synthetic scenes, "
                       "preference pairs from the synthetic taxonomy, single-pair vs cross-validation Diffusion-DPO, "
                       "judged through editforge eval (about 14 min on 2 cores)"),
    "region-masks": ("editforge.demos.region_masks", "RegionMasksConfig", "run_region_masks_demo",
                     "UltraEdit's region masks in miniature: SD3 InstructPix2Pix trained with and without a mask "
                     "on local edits, judged through editforge eval (about 10 min on 2 cores)"),
    "ultraedit-filtering": ("editforge.demos.ultraedit_filtering", "FilteringConfig", "run_filtering_demo",
                            "UltraEdit's metric filtering in miniature: InstructPix2Pix trained on metric-filtered vs "
                            "equally many unfiltered candidates, judged through editforge eval"),
}
