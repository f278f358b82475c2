"""Committed notebooks are clean and follow the course's shape."""

import json

import pytest

from helpers.course import notebooks, profile_parameters


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_there_are_notebooks():
    assert notebooks(), "no notebooks found under notebooks/"


@pytest.mark.parametrize("notebook", notebooks(), ids=lambda p: p.stem)
def test_committed_without_outputs(notebook):
    dirty = [i for i, c in enumerate(load(notebook)["cells"])
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{notebook.name}: cells {dirty} carry outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("notebook", notebooks(), ids=lambda p: p.stem)
def test_has_one_parameters_cell_holding_outputs_dir(notebook):
    cells = [c for c in load(notebook)["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{notebook.name}: needs exactly one cell tagged 'parameters', found {len(cells)}"
    assert "outputs_dir" in "".join(cells[0]["source"]), f"{notebook.name}: parameters cell must define outputs_dir"


@pytest.mark.parametrize("notebook", notebooks(), ids=lambda p: p.stem)
def test_opens_with_what_it_teaches_needs_produces(notebook):
    first = load(notebook)["cells"][0]
    text = "".join(first["source"]).lower()
    assert first["cell_type"] == "markdown"
    for word in ("teach", "need", "produce"):
        assert word in text, f"{notebook.name}: the first cell should say what it {word}s"


@pytest.mark.parametrize("profile", ["quick", "test"])
def test_profiles_name_real_notebooks_and_parameters(profile):
    names = {nb.stem: nb for nb in notebooks()}
    for stem, params in profile_parameters(profile).items():
        assert stem in names, f"profiles.yaml {profile}: no notebook {stem}"
        cell = next(c for c in load(names[stem])["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        source = "".join(cell["source"])
        for key in params:
            assert f"{key} =" in source or f"{key}=" in source, f"{stem}: profile sets {key!r}, which its parameters cell lacks"
