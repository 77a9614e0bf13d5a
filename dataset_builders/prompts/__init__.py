"""Prompt generation for text-to-image alignment (InstructEngine): the prompt taxonomy."""

from .taxonomy import Taxonomy, Theme, TaxonomyError, load_taxonomy, synthetic_taxonomy

__all__ = ["Taxonomy", "Theme", "TaxonomyError", "load_taxonomy", "synthetic_taxonomy"]
