"""Fill a model card template (``model_cards/templates/<name>.md``, Jinja2) into a Hub ``ModelCard``.

The YAML header comes from ``huggingface_hub.ModelCardData`` (library, pipeline tag, base model,
datasets, license, tags) and the body from the template; every other keyword is a template
variable. Used by ``editforge.hub.publish_pipeline`` (each publishing spec in
``editforge/publishing.py`` names its template) and by the training scripts for their cards.

A template used for publishing shows ``lora_weight_names`` and ``extra_weight_names`` (publishing
refuses a card that leaves a shipped weight file out) and may use the fields its spec's
``card_fields_from_folder`` hook returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

TEMPLATES_DIR = Path(__file__).parent / "templates"


def template_names() -> list[str]:
    return sorted(path.stem for path in TEMPLATES_DIR.glob("*.md"))


def render_model_card(
    template: str,
    *,
    base_model: str | None = None,
    datasets: str | Iterable[str] | None = None,
    license: str = "apache-2.0",
    tags: Iterable[str] = (),
    pipeline_tag: str = "image-to-image",
    library_name: str = "diffusers",
    **fields,
):
    """Render ``templates/<template>.md`` with ``fields`` under a metadata header; returns a
    ``huggingface_hub.ModelCard`` (``str(card)`` is the README text, ``card.save(path)`` writes it)."""
    from huggingface_hub import ModelCard, ModelCardData

    path = TEMPLATES_DIR / f"{template}.md"
    if not path.is_file():
        raise ValueError(f"unknown model card template {template!r}; available: {', '.join(template_names())}")
    if isinstance(datasets, str):
        datasets = [datasets]
    card_data = ModelCardData(
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        license=license,
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        tags=["editforge", *tags],
    )
    return ModelCard.from_template(
        card_data, template_path=str(path), base_model=base_model, datasets=card_data.datasets, **fields
    )
