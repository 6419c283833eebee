"""scripts/check_architecture.py reports the tree's long modules, library → CLI imports and import cycles; the
packages split out of the flat modules (asyrp.study, asyrp.bench) and asyrp.errors keep all three empty."""

import importlib.util
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "scripts" / "check_architecture.py"
OWNED = ("asyrp.study", "asyrp.bench", "asyrp.errors", "asyrp.report", "asyrp.figures")


def _load():
    spec = importlib.util.spec_from_file_location("check_architecture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _owned(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in OWNED)


def test_script_prints_the_three_lists_and_exits_0():
    out = subprocess.run([sys.executable, str(SCRIPT), str(REPO / "src")], capture_output=True, text=True, check=True)
    for heading in ("modules over 500 lines:", "library -> CLI imports:", "import cycles:"):
        assert heading in out.stdout


def test_owned_packages_are_short_acyclic_and_below_the_cli():
    report = _load().analyse(REPO / "src")
    owned = [n for n in report["lines"] if _owned(n)]
    assert {"asyrp.study.families", "asyrp.study.runner", "asyrp.study.results", "asyrp.study.tables",
            "asyrp.bench.timing", "asyrp.bench.flops", "asyrp.bench.guard", "asyrp.bench.models"} <= set(owned)
    assert [n for n, _ in report["long"] if _owned(n)] == []
    assert all(report["lines"][n] <= 500 for n in owned)
    assert [c for c in report["cycles"] if any(_owned(n) for n in c)] == []
    assert [(a, b) for a, b in report["library_to_cli"] if _owned(a)] == []


def test_the_check_sees_a_cycle_and_a_long_module(tmp_path):
    pkg = tmp_path / "asyrp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("def main():\n    pass\n")
    (pkg / "a.py").write_text("from asyrp import b\nfrom asyrp.cli import main\n")
    (pkg / "b.py").write_text("import asyrp.a\n" + "x = 1\n" * 501)
    report = _load().analyse(tmp_path)
    assert report["cycles"] == [["asyrp.a", "asyrp.b"]]
    assert report["long"] == [("asyrp.b", 502)]
    assert report["library_to_cli"] == [("asyrp.a", "asyrp.cli")]


def test_report_and_figures_do_not_import_torch():
    """asyrp report / figures read JSON and draw PNGs: their modules stay free of torch (fast to start, no GPU stack)."""
    code = "import sys, asyrp.report, asyrp.figures; sys.exit('torch' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
