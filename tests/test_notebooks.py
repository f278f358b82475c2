"""Every notebook, top to bottom, on the offline set with the `test` profile.

Notebooks run one after another (two Kolors processes do not fit a 24 GB machine),
each in its own working folder, sharing one outputs folder. A failure names the
notebook and the cell.
"""

import json

import pytest

from helpers.course import notebooks, profile_parameters, run_notebook

PARAMS = profile_parameters("test")


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", notebooks(), ids=lambda p: p.stem)
def test_notebook_runs(notebook, course_outputs, tmp_path):
    executed = run_notebook(notebook, PARAMS.get(notebook.stem, {}), course_outputs, workdir=tmp_path)
    nb = json.loads(executed.read_text(encoding="utf-8"))
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{notebook.name} recorded errors: {errors}"
    assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), f"{notebook.name} produced no output"
