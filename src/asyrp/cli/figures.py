"""``asyrp figures``: argparse and printing; the figures are :mod:`asyrp.study.grids`, :mod:`asyrp.study.plots` and
:mod:`asyrp.study.figure_plan`."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asyrp.errors import UserError
from asyrp.study.collect import collect_folders
from asyrp.study.figure_plan import make_figures
from asyrp.study.grids import ablation_grid, edit_record, editing_grid, linearity_sweep, steps_comparison
from asyrp.study.plots import loss_curves, metric_vs_strength
from asyrp.study.results import load_results, validate_results


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="figures", help="output folder (default: figures)")
    p.add_argument("--results", action="append", default=[], metavar="RESULTS_JSON",
                   help="a family's results.json; without a single-figure flag: every figure it supports")
    p.add_argument("--run", action="append", default=[], metavar="EDIT_DIR",
                   help="an edit folder used directly as a run of one family (repeat)")
    p.add_argument("--family", default="runs", help="family name of the --run folders (default: runs)")
    g = p.add_argument_group("single figures (each written to --out, named by --name or a default)")
    g.add_argument("--grid", nargs="+", metavar="[LABEL=]EDIT_DIR", help="editing grid of these edit folders")
    g.add_argument("--linearity", metavar="EDIT_DIR", help="strength sweep of one image")
    g.add_argument("--steps", nargs=2, metavar=("EDIT_DIR_A", "EDIT_DIR_B"), help="two runs of one edit, e.g. 40 vs "
                   "1000 generation steps")
    g.add_argument("--labels", nargs=2, default=["40 steps", "1000 steps"], metavar=("LABEL_A", "LABEL_B"),
                   help="row labels of --steps (default: 40 steps, 1000 steps)")
    g.add_argument("--loss", nargs="+", metavar="[LABEL=]LOG", help="loss curves of these log.jsonl files")
    g.add_argument("--term", default="loss", choices=["loss", "loss_clip", "loss_l1"], help="logged term for --loss")
    g.add_argument("--smoothing", type=float, default=0.0, help="EMA weight in [0, 1) for --loss (e.g. 0.4)")
    g.add_argument("--per-image", action="store_true", help="--loss: one point per image batch (sum over timesteps)")
    g.add_argument("--ablation", nargs=2, metavar=("ROW_TAG", "COL_TAG"),
                   help="grid of the --results runs by two tags (ROW_TAG 'none' for one row)")
    g.add_argument("--filter", action="append", default=[], metavar="TAG=VALUE", help="fix a tag for --ablation")
    g.add_argument("--metric-vs-strength", action="store_true", help="S_dir and FID against strength (--results)")
    g.add_argument("--images", nargs="+", metavar="NAME", help="images of --grid / --steps (default: the first ones)")
    g.add_argument("--image", metavar="NAME", help="image of --linearity / --ablation (default: the first)")
    g.add_argument("--strength", type=float, help="strength shown by --grid / --steps (default: 1, or edited/)")
    g.add_argument("--name", help="file name of the figure of a single-figure flag (default: grid.png, "
                   "linearity.png, steps.png, loss_curves.png, ablation_<row>_vs_<col>.png, metric_vs_strength.png)")


def _labelled(items: Sequence[str], default_label: Callable[[Path], str]) -> dict[str, Path]:
    """``LABEL=PATH`` or ``PATH`` (a path that itself contains "=" is taken whole)."""
    out = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or Path(item).exists():
            label, path = "", item
        out[label or default_label(Path(path))] = Path(path)
    return out


def _attribute_label(edit_dir: Path) -> str:
    record = edit_record(edit_dir)
    attrs = [d.get("attribute") for d in record.get("directions", []) if d.get("attribute")]
    return "+".join(attrs) if attrs else edit_dir.name


def _parse_filter(text: str) -> tuple[str, Any]:
    tag, sep, value = text.partition("=")
    if not sep:
        raise UserError(f"--filter {text!r}: expected TAG=VALUE")
    for cast in (int, float):
        try:
            return tag, cast(value)
        except ValueError:
            pass
    return tag, {"true": True, "false": False, "none": None}.get(value.lower(), value)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this call (recorded in every sidecar)."""
    parts = ["asyrp", "figures"]
    for flag in ("results", "run"):
        for v in getattr(args, flag):
            parts += [f"--{flag}", v]
    if args.run:
        parts += ["--family", args.family]
    for flag in ("grid", "loss", "images"):
        if getattr(args, flag):
            parts += [f"--{flag}", *getattr(args, flag)]
    for flag in ("linearity", "image", "strength", "name"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    if args.steps:
        parts += ["--steps", *args.steps, "--labels", *args.labels]
    if args.loss:
        parts += ["--term", args.term, "--smoothing", str(args.smoothing)] + (["--per-image"] if args.per_image else [])
    if args.ablation:
        parts += ["--ablation", *args.ablation] + [x for f in args.filter for x in ("--filter", f)]
    if args.metric_vs_strength:
        parts.append("--metric-vs-strength")
    return shlex.join(parts + ["--out", args.out])


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    command = _command(args)
    results_list = [load_results(p) for p in args.results]
    if args.run:
        for d in args.run:
            if not Path(d).is_dir():
                raise FileNotFoundError(f"edit folder {d} not found")
        runs = [{"name": Path(d).name, "edit_dir": d} for d in args.run]
        results_list.append(validate_results(collect_folders(args.family, runs), origin="--run folders"))
    flags = [args.grid, args.linearity, args.steps, args.loss, args.ablation, args.metric_vs_strength]
    single = any(flags)
    if args.name and sum(bool(f) for f in flags) > 1:
        raise UserError("--name names one figure: give it with a single figure flag (or leave it out)")
    written: list[Path] = []
    if args.grid:
        dirs = _labelled(args.grid, _attribute_label)
        written.append(editing_grid(dirs, args.images, out / (args.name or "grid.png"), strength=args.strength,
                                    command=command))
    if args.linearity:
        written.append(linearity_sweep(args.linearity, args.image, out / (args.name or "linearity.png"),
                                       command=command))
    if args.steps:
        written.append(steps_comparison(args.steps[0], args.steps[1], args.images, out / (args.name or "steps.png"),
                                        labels=tuple(args.labels), strength=args.strength, command=command))
    if args.loss:
        logs = _labelled(args.loss, lambda p: p.parent.name or p.stem)
        written.append(loss_curves(logs, out / (args.name or "loss_curves.png"), term=args.term,
                                   smoothing=args.smoothing, per_image=args.per_image, command=command))
    if (args.ablation or args.metric_vs_strength) and not results_list:
        raise UserError("--ablation and --metric-vs-strength need --results (or --run folders)")
    if args.ablation:
        row, col = args.ablation
        filters = dict(_parse_filter(f) for f in args.filter)
        written.append(ablation_grid(results_list, None if row.lower() == "none" else row, col, args.image,
                                     out / (args.name or f"ablation_{row}_vs_{col}.png"), filters=filters,
                                     command=command))
    if args.metric_vs_strength:
        written.append(metric_vs_strength(results_list, out / (args.name or "metric_vs_strength.png"),
                                          command=command))
    if not single:
        if not results_list:
            raise UserError("nothing to draw: give --results RESULTS_JSON (or --run EDIT_DIR, or a single-figure "
                            "flag such as --grid EDIT_DIR)")
        written = make_figures(results_list, out, command=command)
    for path in written:
        print(path)
    if not written:
        print("no figure made: these inputs support none", file=sys.stderr)
        return 1
    return 0

