"""editforge.model_cards: model card templates (``templates/*.md``) and the code that fills them."""

from .render import TEMPLATES_DIR, render_model_card, template_names

__all__ = ["TEMPLATES_DIR", "render_model_card", "template_names"]
