"""A prompt taxonomy: themes, each with subtopics, and the contrast axes of prompt variants.

InstructEngine (arXiv 2504.10329) writes base prompts per subtopic of a 20 x 20 taxonomy and
contrasting variants along three axes (content, counterfactual, aesthetics). The taxonomy is data:
a JSON file ``{"name", "description", "contrasts": [...], "themes": [{"name", "subtopics": [...]}]}``,
editable, checked when loaded. Built in:

- ``instructengine``: 20 themes x 20 subtopics in the shape the paper describes (its own list is
  not published; this one is editforge's) -- ``taxonomies/instructengine.json``;
- ``synthetic``: the synthetic world's vocabulary (shapes, colours, counts, positions,
  backgrounds, styles), made from the world's own constants, for offline runs.

    taxonomy = load_taxonomy("instructengine")          # or a path to your own JSON file
    for theme, subtopic in taxonomy.subtopics(): ...
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from editforge.errors import UsageError
from editforge.vocabulary import CONTRAST_AXES

BUILTIN_DIR = Path(__file__).resolve().parent / "taxonomies"
BUILTIN = ("instructengine", "synthetic")


class TaxonomyError(UsageError):
    """A taxonomy file that cannot be used, with the place and the problem."""


@dataclass(frozen=True)
class Theme:
    name: str
    subtopics: tuple[str, ...]


@dataclass(frozen=True)
class Taxonomy:
    name: str
    themes: tuple[Theme, ...]
    contrasts: tuple[str, ...] = CONTRAST_AXES
    description: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        """(themes, the most subtopics of any theme)."""
        return len(self.themes), max(len(t.subtopics) for t in self.themes)

    def subtopics(self) -> Iterator[tuple[str, str]]:
        for theme in self.themes:
            for subtopic in theme.subtopics:
                yield theme.name, subtopic

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "contrasts": list(self.contrasts),
                "themes": [{"name": t.name, "subtopics": list(t.subtopics)} for t in self.themes]}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TaxonomyError(f"{where}: expected a non-empty string, got {value!r}")
    return " ".join(value.split())


def parse_taxonomy(data, source: str = "taxonomy") -> Taxonomy:
    """A :class:`Taxonomy` from its JSON object; TaxonomyError naming the theme or subtopic at fault
    (a missing or empty name, a duplicate, an unknown contrast axis)."""
    if not isinstance(data, dict):
        raise TaxonomyError(f"{source}: expected a JSON object with 'themes', got {type(data).__name__}")
    unknown = set(data) - {"name", "description", "contrasts", "themes"}
    if unknown:
        raise TaxonomyError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
    contrasts = tuple(data.get("contrasts", CONTRAST_AXES))
    bad = [c for c in contrasts if c not in CONTRAST_AXES]
    if bad or not contrasts:
        raise TaxonomyError(f"{source}: contrasts must be a non-empty subset of {', '.join(CONTRAST_AXES)}, got {list(contrasts)}")
    raw_themes = data.get("themes")
    if not isinstance(raw_themes, list) or not raw_themes:
        raise TaxonomyError(f"{source}: 'themes' must be a non-empty list")
    themes, seen = [], set()
    for i, raw in enumerate(raw_themes):
        where = f"{source}: theme {i}"
        if not isinstance(raw, dict):
            raise TaxonomyError(f"{where}: expected an object with 'name' and 'subtopics'")
        name = _text(raw.get("name"), f"{where} name")
        where = f"{source}: theme {i} ({name!r})"
        if name.lower() in seen:
            raise TaxonomyError(f"{where}: the theme appears twice")
        seen.add(name.lower())
        subtopics = raw.get("subtopics")
        if not isinstance(subtopics, list) or not subtopics:
            raise TaxonomyError(f"{where}: 'subtopics' must be a non-empty list")
        names = [_text(s, f"{where} subtopic {j}") for j, s in enumerate(subtopics)]
        duplicates = sorted({n for n in names if [m.lower() for m in names].count(n.lower()) > 1})
        if duplicates:
            raise TaxonomyError(f"{where}: subtopic {duplicates[0]!r} appears twice")
        themes.append(Theme(name, tuple(names)))
    return Taxonomy(_text(data.get("name", source), f"{source} name"), tuple(themes), contrasts,
                    str(data.get("description", "")))


def load_taxonomy(name_or_path: str | os.PathLike) -> Taxonomy:
    """A built-in taxonomy by name (``instructengine``, ``synthetic``) or a JSON file."""
    if str(name_or_path) == "synthetic":
        return synthetic_taxonomy()
    path = BUILTIN_DIR / f"{name_or_path}.json" if str(name_or_path) in BUILTIN else Path(name_or_path)
    if not path.is_file():
        raise TaxonomyError(f"no taxonomy {str(name_or_path)!r}: not a built-in ({', '.join(BUILTIN)}) nor a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TaxonomyError(f"{path}: not JSON ({err})") from None
    return parse_taxonomy(data, str(path))


def synthetic_taxonomy() -> Taxonomy:
    """The synthetic world's vocabulary as a taxonomy: a theme per shape kind (its colours), and
    themes of counts, positions, backgrounds and styles; made from the world's own constants."""
    from ..synthetic.edits import STYLES
    from ..synthetic.world import BACKGROUND_COLOURS, SHAPE_COLOURS, SHAPE_KINDS, SLOT_NAMES

    themes = [Theme(f"{kind}s", tuple(f"{colour} {kind}" for colour in SHAPE_COLOURS)) for kind in SHAPE_KINDS]
    themes += [
        Theme("counts", tuple(f"{n} shapes" for n in ("one", "two", "three", "four"))),
        Theme("positions", tuple(f"a shape at the {slot}" for slot in SLOT_NAMES)),
        Theme("backgrounds", tuple(f"{colour} background" for colour in BACKGROUND_COLOURS)),
        Theme("styles", tuple(f"{name} style" for name in STYLES)),
    ]
    return Taxonomy("synthetic", tuple(themes), CONTRAST_AXES,
                    "The synthetic editing world's vocabulary (editforge.dataset_builders.synthetic), for offline runs.")
