"""The demo notebooks run end to end on the offline mini study (scripts/mini.sh: the families mini and
mini_reproduction on the shipped shapes world, here with fewer images; a python3 kernel of this environment,
ASYRP_RESULTS / ASYRP_FIGURES in its environment), each shows a table and a figure, and they are stored clean."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from asyrp.study.runner import run_experiment
from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

DEMOS = REPO / "demos"
NOTEBOOKS = {  # notebook -> the table of the mini study it must show (and every notebook a figure)
    "reproduction_tables.ipynb": "sdir_mini_reproduction",
    "reproduction_plots.ipynb": "sdir_mini_reproduction",
    "ablation_tables.ipynb": "ablation_mini",
    "ablation_plots.ipynb": "ablation_mini",
}
# the mini study of scripts/mini.sh with fewer images and steps (CI time); the family files are the shipped ones
MINI_STUDY = {"mini_reproduction": ["train.epochs=1", "edit.n_images=2", "edit.n_inv_step=3", "edit.n_test_step=3",
                                    "train.n_inv_step=3", "train.n_train_step=3"],
              "mini": ["edit.n_images=2", "edit.n_inv_step=3", "edit.n_test_step=3", "train.n_inv_step=3",
                       "train.n_train_step=3"]}


@pytest.fixture(scope="session")
def mini_study(tmp_path_factory) -> str:
    """Run the offline mini study once per session; its results files joined by os.pathsep (the notebooks' input)."""
    root = tmp_path_factory.mktemp("mini_study")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASYRP_MINI_CACHE", str(root / "cache"))
        mp.setenv("ASYRP_MINI_DEVICE", "cpu")
        for name in ("ASYRP_MINI_BACKBONE", "ASYRP_MINI_CLIP", "ASYRP_MINI_FID"):  # the defaults: shapes, no FID
            mp.delenv(name, raising=False)
        torch.set_num_threads(1)  # tiny convolutions: a second thread only adds contention on shared cores
        try:
            paths = [run_experiment(REPO / "configs" / "experiments" / f"{family}.yaml", root / "runs",
                                    overrides=overrides, progress=False)["path"]
                     for family, overrides in MINI_STUDY.items()]
        finally:
            torch.set_num_threads(threads)
    return os.pathsep.join(paths)


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
def test_notebook_executes(name, mini_study, tmp_path):
    nb = nbformat.read(DEMOS / name, as_version=4)
    env = {**os.environ, "ASYRP_RESULTS": mini_study,
           "ASYRP_FIGURES": str(tmp_path / "figures"), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=180,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = {mime for o in outputs if o.output_type == "display_data" for mime in o.get("data", {})}
    assert "image/png" in shown  # a figure
    markdown = "\n".join(o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    rows = [line for line in markdown.splitlines() if re.match(r"^\|.*\|$", line)]
    assert len(rows) >= 3 and any(re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line) for line in rows)  # a table
    assert f"**{NOTEBOOKS[name]}**" in markdown
    assert "quoted" in markdown or name.endswith("_plots.ipynb")  # the tables notebooks quote the paper too
    assert "(N=2)" in markdown if name.startswith("reproduction") else "| 2 |" in markdown  # N = 2 test images
    if name.endswith("_plots.ipynb"):
        assert list((tmp_path / "figures").rglob("*.json"))  # every figure with its sidecar
    texts = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "no figure" not in texts and f"no {NOTEBOOKS[name].split('_')[0]}_* table" not in texts
