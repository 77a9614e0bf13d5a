"""Edit-triplet and preference-pair data: the synthetic world, the manifest interchange format,
annotation by LVLM judges, quality metrics and builders of Hub datasets.

``build_dataset`` and ``BuildReport`` (from :mod:`.build`) are importable from here; they are
loaded on first use so that importing this package stays light (the CLI lists formats from it).
"""

_LAZY = {"build_dataset": "build", "BuildReport": "build", "push_folder_to_hub": "build"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
