"""``asyrp run-experiment``: argparse and printing; the work is :func:`asyrp.study.runner.run_experiment`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from asyrp.pipeline.distributed import context_from_env
from asyrp.study.families import STAGES, ExperimentError, load_family
from asyrp.study.plan import plan
from asyrp.study.runner import run_experiment


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="family YAML (configs/experiments/<family>.yaml) or its name")
    p.add_argument("--out", default=None, help="results root; runs go to ROOT/<family>/<run>/ "
                                               "(default: $ASYRP_RUNS or ./runs)")
    p.add_argument("--runs", action="append", metavar="A,B", help="only these runs (default: all)")
    p.add_argument("--stage", action="append", metavar="STAGE",
                   help="train, edit, evaluate (repeat or comma-separate; default: all three)")
    p.add_argument("--redo", action="append", metavar="STAGE", help="edit / evaluate again even when complete")
    p.add_argument("--set", action="append", dest="overrides", metavar="KEY=VALUE",
                   help="override a run key for every run (train.lr=0.1) or one run (runs.NAME.train.lr=0.1)")
    p.add_argument("--wave", type=int, help="only the runs of dependency wave K (0: runs needing no other run; "
                                            "k: runs needing wave < k)")
    p.add_argument("--list", action="store_true", help="print the selected run names, one per line, and exit")
    p.add_argument("--waves", action="store_true", help="print 'WAVE NAME' for the selected runs, one per line, "
                                                         "in wave order, and exit (for job scripts)")
    p.add_argument("--dry-run", action="store_true", help="print what would run (from the files; loads nothing)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _split(values: Sequence[str] | None) -> list[str]:
    return [v.strip() for text in values or [] for v in text.split(",") if v.strip()]


def main(args: argparse.Namespace) -> int:
    out_root = args.out or os.environ.get("ASYRP_RUNS") or "runs"
    only = _split(args.runs) or None
    stages = tuple(_split(args.stage)) or STAGES
    redo = tuple(_split(args.redo))
    bad = sorted(set(stages) - set(STAGES)) + sorted(set(redo) - {"edit", "evaluate"})
    if bad:
        raise ExperimentError(f"unknown stage(s) {bad}; stages: {', '.join(STAGES)} (--redo: edit, evaluate)")
    if args.list or args.waves or args.dry_run:
        fam = load_family(args.config, out_root, args.overrides, strict=False)
        runs = fam.select(only, args.wave)
        if args.waves:
            for run in sorted(runs, key=lambda r: r.wave):
                print(run.wave, run.name)
            return 0
        if args.list:
            for run in runs:
                print(run.name)
            return 0
        print(f"family {fam.name} ({fam.path}) → {fam.out_dir}; stages: {', '.join(stages)}")
        if fam.missing:
            print(f"  warning: unset environment variables: {', '.join(fam.missing)}")
        if fam.variables:
            print("  variables: " + ", ".join(f"{k}={v}" for k, v in fam.variables.items()))
        for item in plan(fam, runs, stages, redo):
            needs = f" (needs {', '.join(item['needs'])})" if item["needs"] else ""
            print(f"- {item['run']} [wave {item['wave']}]{needs}: {item['summary']}")
            print(f"    train: {item['train']}")
            for line in item["edit"]:
                print(f"    edit: {line}")
            for line in item["evaluate"]:
                print(f"    evaluate: {line}")
        print(f"  results: {fam.out_dir / 'results.json'}")
        return 0
    dist = context_from_env()
    try:
        results = run_experiment(args.config, out_root, only=only, stages=stages, overrides=args.overrides,
                                 progress=args.progress, distributed=dist, redo=redo, wave=args.wave)
    finally:
        if dist is not None:
            dist.close()
    if dist is None or dist.rank == 0:
        done = {}
        for a in results["actions"]:
            done[a["action"]] = done.get(a["action"], 0) + 1
        print(f"{results['family']}: " + ", ".join(f"{v} {k}" for k, v in sorted(done.items())), file=sys.stderr)
        print(f"results written to {results['path']}")
    return 0

