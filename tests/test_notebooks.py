"""The demo notebooks run end to end on the tiny study of test_figures_report.py (a python3 kernel of this
environment, ASYRP_RESULTS / ASYRP_FIGURES in its environment), show tables and figures, and are stored clean."""

from __future__ import annotations

import json
import os
import re

import pytest

from conftest import REPO
from test_figures_report import shared_study

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

DEMOS = REPO / "demos"
NOTEBOOKS = {  # notebook -> the family of the study it is run on
    "reproduction_tables.ipynb": "reproduction",
    "reproduction_plots.ipynb": "reproduction",
    "ablation_tables.ipynb": "heads",
    "ablation_plots.ipynb": "heads",
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return shared_study(tmp_path_factory)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_stored_clean(name):
    nb = nbformat.read(DEMOS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert 'RESULTS = os.environ.get("ASYRP_RESULTS", "runs/' in code[0].source
    text = json.dumps([c.source for c in nb.cells])
    assert not re.search(r"(/home/|/work/|/tmp/|[A-Z]:\\\\)", text), "absolute path in a notebook"


def test_notebooks_match_their_generator(tmp_path):
    """The .ipynb files are what demos/make_notebooks.py writes (edit the script, not the notebooks)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", DEMOS / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.NOTEBOOKS) == set(NOTEBOOKS)
    for name, make in module.NOTEBOOKS.items():
        stored = nbformat.read(DEMOS / name, as_version=4)
        assert [c.source for c in stored.cells] == [c.source for c in make().cells], name


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes(name, study, tmp_path):
    nb = nbformat.read(DEMOS / name, as_version=4)
    env = {**os.environ, "ASYRP_RESULTS": str(study["results"][NOTEBOOKS[name]]),
           "ASYRP_FIGURES": str(tmp_path / "figures"), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=180,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = {mime for o in outputs if o.output_type == "display_data" for mime in o.get("data", {})}
    if name.endswith("_tables.ipynb"):
        assert "text/markdown" in shown
        markdown = "\n".join(o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
        assert "quoted" in markdown
        assert ("N=3" in markdown) if name.startswith("reproduction") else ("| N |" in markdown)
    else:
        assert "image/png" in shown
        assert list((tmp_path / "figures").rglob("*.json"))  # every figure with its sidecar
