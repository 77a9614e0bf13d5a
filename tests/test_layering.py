"""The layers of DESIGN.md hold: lower layers never import higher ones.

pipelines import no training or dataset code; dataset_builders import no pipelines (generation
engines take a pipeline object); training imports pipelines and dataset_builders, never the CLI.
Every import is checked, at module level or inside a function, absolute or relative.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> the editforge packages its code must not import
FORBIDDEN = {
    "pipelines": ("editforge.training", "editforge.dataset_builders", "editforge.commands", "editforge.cli",
                  "editforge.demo", "editforge.evaluation"),
    "dataset_builders": ("editforge.pipelines", "editforge.training", "editforge.commands", "editforge.cli",
                         "editforge.demo", "editforge.evaluation"),
    "training": ("editforge.commands", "editforge.cli", "editforge.demo", "editforge.evaluation"),
    "model_cards": ("editforge.pipelines", "editforge.training", "editforge.dataset_builders", "editforge.commands",
                    "editforge.cli"),
}
PACKAGE_OF = {"pipelines": "editforge.pipelines", "dataset_builders": "editforge.dataset_builders",
              "training": "editforge.training", "model_cards": "editforge.model_cards"}


def imported_modules(path: Path, package: str):
    """Every module a file imports, relative imports resolved against its installed package."""
    parts = [package] + list(path.relative_to(ROOT / path.relative_to(ROOT).parts[0]).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(folder):
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for module in imported_modules(path, PACKAGE_OF[folder]):
            if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN[folder]):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def test_the_resolver_sees_relative_imports():
    found = set(imported_modules(ROOT / "dataset_builders" / "annotation" / "engine.py", "editforge.dataset_builders"))
    assert "editforge.dataset_builders.manifest" in found and "editforge.dataset_builders.annotation.cache" in found
