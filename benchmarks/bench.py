#!/usr/bin/env python
"""``python benchmarks/bench.py [ARGS]`` is ``asyrp bench [ARGS]`` with results kept beside this file.

On a GPU the JSON line is appended to ``benchmarks/results/<date>_<gpu>.jsonl`` (unless ``--out`` or
``--results-dir`` says otherwise). See benchmarks/README.md and :mod:`asyrp.bench`.
"""

import sys
from pathlib import Path

from asyrp.cli import main


def run(argv: list[str]) -> int:
    argv = list(argv)
    if not any(a == "--results-dir" or a.startswith("--results-dir=") for a in argv):
        argv += ["--results-dir", str(Path(__file__).resolve().parent / "results")]
    return main(["bench", *argv])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
