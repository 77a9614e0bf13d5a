"""The prompt taxonomy: built-ins load with their shapes, files round-trip, bad files are named."""

import json

import pytest

from editforge.dataset_builders.prompts import TaxonomyError, load_taxonomy, synthetic_taxonomy
from editforge.dataset_builders.synthetic.world import SHAPE_COLOURS, SHAPE_KINDS
from editforge.vocabulary import CONTRAST_AXES


def test_the_instructengine_taxonomy_is_20_themes_by_20_subtopics():
    taxonomy = load_taxonomy("instructengine")
    assert taxonomy.shape == (20, 20)
    assert all(len(theme.subtopics) == 20 for theme in taxonomy.themes)
    assert len(list(taxonomy.subtopics())) == 400 and taxonomy.contrasts == CONTRAST_AXES


def test_the_synthetic_taxonomy_comes_from_the_world():
    taxonomy = load_taxonomy("synthetic")
    assert taxonomy == synthetic_taxonomy()
    assert [t.name for t in taxonomy.themes][:len(SHAPE_KINDS)] == [f"{k}s" for k in SHAPE_KINDS]
    assert len(taxonomy.themes[0].subtopics) == len(SHAPE_COLOURS)


def test_an_edited_file_round_trips(tmp_path):
    taxonomy = load_taxonomy("instructengine")
    data = taxonomy.to_dict()
    data["themes"][0]["subtopics"].append("a   lighthouse keeper")  # white space is folded
    (tmp_path / "mine.json").write_text(json.dumps(data))
    mine = load_taxonomy(tmp_path / "mine.json")
    assert mine.themes[0].subtopics[-1] == "a lighthouse keeper" and mine.shape == (20, 21)
    assert load_taxonomy(mine.save(tmp_path / "again.json")) == mine


@pytest.mark.parametrize("change, message", [
    (lambda d: d["themes"][1].update(name=""), r"theme 1 name: expected a non-empty string"),
    (lambda d: d["themes"][2].update(name=d["themes"][0]["name"].upper()), r"theme 2 \('.*'\): the theme appears twice"),
    (lambda d: d["themes"][3]["subtopics"].append(d["themes"][3]["subtopics"][0]), r"theme 3 \('.*'\): subtopic '.*' appears twice"),
    (lambda d: d["themes"][4].update(subtopics=[]), r"theme 4 \('.*'\): 'subtopics' must be a non-empty list"),
    (lambda d: d.update(contrasts=["colour"]), r"contrasts must be a non-empty subset of content, counterfactual, aesthetics"),
    (lambda d: d.update(extra=1), r"unknown key\(s\) extra"),
])
def test_bad_files_name_the_theme_and_the_problem(tmp_path, change, message):
    data = load_taxonomy("instructengine").to_dict()
    change(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(TaxonomyError, match=message):
        load_taxonomy(tmp_path / "bad.json")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(TaxonomyError, match="no taxonomy 'nope': not a built-in"):
        load_taxonomy("nope")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(TaxonomyError, match="broken.json: not JSON"):
        load_taxonomy(tmp_path / "broken.json")
