"""One vocabulary: the shared names live in editforge.vocabulary; Hub copies are marked and equal."""

import ast
import subprocess
import sys
from pathlib import Path

import editforge.vocabulary as vocabulary

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_FOLDERS = ("editforge", "pipelines", "dataset_builders", "training", "model_cards", "evaluation")
SHARED_NAMES = {
    "PERSPECTIVES", "NO_FAILURE", "FEEDBACK_SEPARATOR", "METRIC_NAMES", "VIESCORE_SCORES",
    "EDIT_IMAGE_COLUMNS", "PAIR_IMAGE_COLUMNS", "RUBRIC_NAMES",
}
# Hub code files stay self-contained: they carry copies, checked equal below.
HUB_COPIES = {ROOT / "pipelines" / "reward_conditioner.py": ("PERSPECTIVES", "NO_FAILURE", "FEEDBACK_SEPARATOR")}
SHARED_VALUES = {
    repr(vocabulary.PERSPECTIVES), repr(vocabulary.METRIC_NAMES), repr(vocabulary.EDIT_IMAGE_COLUMNS),
    repr(vocabulary.PAIR_IMAGE_COLUMNS), repr(vocabulary.RUBRIC_NAMES),
}


def product_files():
    for folder in PRODUCT_FOLDERS:
        yield from (ROOT / folder).rglob("*.py") if (ROOT / folder).is_dir() else ()


def module_assignments(path):
    """(name, literal value or None) of every module-level assignment in a file."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    try:
                        value = ast.literal_eval(node.value) if node.value is not None else None
                    except ValueError:
                        value = None
                    yield target.id, value


def test_no_product_module_defines_the_shared_names_but_the_vocabulary():
    vocabulary_file = ROOT / "editforge" / "vocabulary.py"
    offenders = []
    for path in product_files():
        if path == vocabulary_file:
            continue
        allowed = HUB_COPIES.get(path, ())
        for name, value in module_assignments(path):
            if (name in SHARED_NAMES and name not in allowed) or (
                    name not in allowed and value is not None and repr(value) in SHARED_VALUES):
                offenders.append(f"{path.relative_to(ROOT)}: {name} = {value!r}")
    assert offenders == []


def test_hub_copies_are_marked_and_equal():
    for path, names in HUB_COPIES.items():
        text = path.read_text(encoding="utf-8")
        assert "copy of editforge.vocabulary" in text, path
        values = dict(module_assignments(path))
        for name in names:
            assert values[name] == getattr(vocabulary, name), (path, name)


def test_the_synthetic_world_and_the_schema_use_the_vocabulary():
    from editforge.dataset_builders.annotation import rubrics
    from editforge.dataset_builders.features import EDIT_FEATURES
    from editforge.dataset_builders.synthetic import rubric

    assert rubric.PERSPECTIVES is vocabulary.PERSPECTIVES and rubric.NO_FAILURE is vocabulary.NO_FAILURE
    assert tuple(EDIT_FEATURES["rewards"]) == vocabulary.PERSPECTIVES
    assert tuple(EDIT_FEATURES["metrics"]) == vocabulary.METRIC_NAMES
    assert tuple(rubrics.RUBRICS) == vocabulary.RUBRIC_NAMES


def test_the_vocabulary_imports_nothing():
    code = "import sys, editforge.vocabulary; print(sorted(m for m in ('torch', 'datasets', 'diffusers', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
