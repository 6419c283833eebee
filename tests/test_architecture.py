"""scripts/check_architecture.py reports the tree's long modules, library → CLI imports and import cycles, and the
whole package keeps all three empty (issue 16's rules: no module over 500 lines, arrows point down, the CLI on top)."""

import importlib.util
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "scripts" / "check_architecture.py"


def _load():
    spec = importlib.util.spec_from_file_location("check_architecture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_prints_the_three_lists_and_exits_0():
    out = subprocess.run([sys.executable, str(SCRIPT), str(REPO / "src")], capture_output=True, text=True, check=True)
    for heading in ("modules over 500 lines:", "library -> CLI imports:", "import cycles:"):
        assert heading in out.stdout


def test_the_package_keeps_the_rules():
    report = _load().analyse(REPO / "src")
    assert report["long"] == []
    assert report["library_to_cli"] == []
    assert report["cycles"] == []
    # one module per command under asyrp.cli, and the layers exist as packages
    assert {"asyrp.cli.train", "asyrp.cli.edit", "asyrp.cli.evaluate", "asyrp.cli.precompute", "asyrp.cli.download",
            "asyrp.cli.bench", "asyrp.pipeline.run_record", "asyrp.io.weights", "asyrp.study.runner"} <= set(report["lines"])


def test_every_command_is_a_cli_module():
    from asyrp.cli import COMMANDS
    assert all(module.startswith("asyrp.cli.") for module, _ in COMMANDS.values()), COMMANDS


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
