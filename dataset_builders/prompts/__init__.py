"""Prompt generation for text-to-image alignment (InstructEngine): the prompt taxonomy, and base
prompts with contrasting variants written by an LLM (``generate_prompts``).

Modules: ``taxonomy`` (themes and subtopics as data), ``request_format`` (what the LLM is asked,
what a valid answer is), ``synthetic_writer`` (the offline writer for the synthetic world),
``near_duplicates`` (word-trigram Jaccard deduplication), ``generation`` (the run and the
dataset), ``card`` (its dataset card). The generation names are loaded on first use, so that
importing the taxonomy stays light.
"""

from .taxonomy import Taxonomy, TaxonomyError, Theme, load_taxonomy, synthetic_taxonomy

_LAZY = {name: "generation" for name in ("PROMPT_FEATURES", "GenerationReport", "MissingPrompts", "generate_prompts")}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Taxonomy", "Theme", "TaxonomyError", "load_taxonomy", "synthetic_taxonomy",
           "PROMPT_FEATURES", "GenerationReport", "MissingPrompts", "generate_prompts"]
