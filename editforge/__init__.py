"""editforge: instruction-based image editing and text-to-image alignment on the Hugging Face stack.

The root package stays thin on purpose: importing it (or running ``editforge --help``) must not
import diffusers, transformers or torch. The capabilities live in the mapped subpackages
``editforge.pipelines``, ``editforge.dataset_builders``, ``editforge.training`` and
``editforge.model_cards``.
"""

__version__ = "0.1.0"
