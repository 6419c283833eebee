"""``asyrp report``: argparse and file writing; the tables are :mod:`asyrp.study.tables`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asyrp.errors import UserError
from asyrp.io.files import atomic_write_text
from asyrp.study.collect import collect_folders
from asyrp.study.results import load_results, validate_results
from asyrp.study.tables import build_tables, load_anchors, replace_blocks

def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", action="append", default=[], metavar="RESULTS_JSON",
                   help="a family's results.json (asyrp run-experiment); repeat for several families")
    p.add_argument("--run", action="append", default=[], metavar="EDIT_DIR",
                   help="an edit folder with its eval*.json files, used directly (repeat; one family)")
    p.add_argument("--family", default="runs", help="family name of the --run folders (default: runs)")
    p.add_argument("--eval", action="append", default=[], metavar="EVAL_JSON",
                   help="an eval.json of asyrp evaluate: a table of all its metrics")
    p.add_argument("--anchors", help="YAML of quoted numbers (default: the package's anchors.yaml)")
    p.add_argument("--out", help="folder: one <table>.md per table")
    p.add_argument("--into", metavar="MARKDOWN",
                   help="replace the blocks <!-- asyrp:table NAME --> … <!-- /asyrp:table --> of this file")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these tables")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")


def main(args: argparse.Namespace) -> int:
    if not (args.results or args.run or args.eval):
        raise UserError("nothing to report: give --results RESULTS_JSON, --run EDIT_DIR or --eval EVAL_JSON")
    results_list = [load_results(p) for p in args.results]
    if args.run:
        runs = [{"name": Path(d).name, "edit_dir": d} for d in args.run]
        for d in args.run:
            if not Path(d).is_dir():
                raise FileNotFoundError(f"edit folder {d} not found")
        results_list.append(validate_results(collect_folders(args.family, runs), origin="--run folders"))
    tables = build_tables(results_list, args.eval, load_anchors(args.anchors))
    if args.only:
        unknown = sorted(set(args.only) - set(tables))
        if unknown:
            raise UserError(f"no table named {', '.join(unknown)}; these inputs give: {', '.join(tables)}")
        tables = {k: v for k, v in tables.items() if k in args.only}
    if args.out:
        for name, table in tables.items():
            atomic_write_text(Path(args.out) / f"{name}.md", table)
    if args.into:
        target = Path(args.into)
        if not target.is_file():
            raise FileNotFoundError(f"{target} not found (--into edits an existing Markdown file)")
        text, replaced, missing = replace_blocks(target.read_text(), tables)
        atomic_write_text(target, text)
        print(f"{target}: replaced {len(replaced)} table block(s)" + (f": {', '.join(replaced)}" if replaced else ""),
              file=sys.stderr)
        if missing:
            print(f"{target}: no table for marker(s) {', '.join(missing)}; left unchanged", file=sys.stderr)
    if not args.quiet:
        for name, table in tables.items():
            print(f"<!-- {name} -->\n{table}")
    if args.out:
        print(f"wrote {len(tables)} table(s) to {args.out}", file=sys.stderr)
    return 0
