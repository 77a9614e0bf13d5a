"""UltraEdit's quality metrics (CLIP, DINOv2, SSIM) for edit triplets, and filtering by them.

- :func:`compute_metrics` (:mod:`.scoring`): score every triplet of a canonical dataset, batched,
  in DataLoader workers, over ``accelerate launch`` processes, resumably; ``editforge metrics``.
- :func:`filter_dataset` (:mod:`.filtering`): thresholds (UltraEdit's presets), top-k per group;
  ``editforge filter``.
- :func:`structural_similarity` (:mod:`.ssim`): scikit-image's SSIM, batched in torch.

Loaded on first use, so importing the package stays light.
"""

_LAZY = {
    "compute_metrics": "scoring", "MetricsReport": "scoring", "score_batch": "scoring",
    "filter_dataset": "filtering", "FilterReport": "filtering", "PRESETS": "filtering",
    "structural_similarity": "ssim", "ClipEncoder": "clip", "Dinov2Encoder": "dinov2",
    "DEFAULT_CLIP_MODEL": "clip", "DEFAULT_DINOV2_MODEL": "dinov2",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
