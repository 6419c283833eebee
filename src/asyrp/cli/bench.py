"""``asyrp bench``: argparse and printing. The benchmark itself is :func:`asyrp.bench.timing.run_benchmark`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import torch

from asyrp import config as C
from asyrp.pipeline import train as T
from asyrp.bench.timing import TRAIN_MODES, format_table, run_benchmark
from asyrp.io.files import default_device

def results_path(results_dir: str | Path, record: dict) -> Path:
    date = record["date"][:10]
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", record["device"]["name"] or record["device"]["type"]).strip("-")
    return Path(results_dir) / f"{date}_{gpu}.jsonl"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tiny", action="store_true", help="reduced U-Net and tiny CLIP: the same code in seconds on a CPU")
    p.add_argument("--device", help="cuda / cpu (default: CUDA when present)")
    p.add_argument("--train-batch", type=int, help="fast-mode training batch size (default 9; tiny 2)")
    p.add_argument("--edit-batch", type=int, help="fast-mode editing batch size (default 16; tiny 4)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the fast mode's U-Net (default: the fast preset's choice, on CUDA only)")
    p.add_argument("--tasks", default="train,edit", help="train,edit (default both)")
    p.add_argument("--modes", default=",".join(TRAIN_MODES),
                   help="reference (batch 1), reference_batch (the fast mode's batch), fast (default: all three)")
    p.add_argument("--fast-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set a TrainConfig field of the fast mode, e.g. compile_mode=reduce-overhead (repeatable)")
    p.add_argument("--train-warmup", type=int, default=2, help="untimed training steps per mode (default 2)")
    p.add_argument("--train-steps", type=int, help="timed steps per repeat, 0 = the whole grid (default 5; tiny 3)")
    p.add_argument("--repeats", type=int, help="timed repeats per mode and task (default 2; tiny 1)")
    p.add_argument("--n-inv-step", type=int, help="inversion steps of an edit (default 40; tiny 10)")
    p.add_argument("--n-test-step", type=int, help="generation steps of an edit (default 40; tiny 10)")
    p.add_argument("--guard", action=argparse.BooleanOptionalAction, default=None,
                   help="run the numerical guard (default: on a GPU)")
    p.add_argument("--out", help="append the JSON line to this file")
    p.add_argument("--results-dir", default="benchmarks/results",
                   help="on a GPU (without --out) append to <results-dir>/<date>_<gpu>.jsonl")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)


def parse_overrides(items: list[str]) -> dict:
    """``["compile_mode=reduce-overhead", "precision=bf16"]`` → TrainConfig field values (typed as the field)."""
    fields = {f.name: f for f in dataclasses.fields(T.TrainConfig)}
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--fast-set {item!r}: expected FIELD=VALUE with a TrainConfig field "
                             f"(e.g. compile_mode=reduce-overhead)")
        out[name] = C.parse_value(T.TrainConfig, name, value)
    return out


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    tiny = args.tiny
    device = default_device(args.device)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = set(tasks) - {"train", "edit"}
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; choose from train, edit")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    overrides = parse_overrides(args.fast_set)

    def pick(value, full, small):
        return value if value is not None else (small if tiny else full)

    record = run_benchmark(
        tiny=tiny, device=device, train_batch=pick(args.train_batch, 9, 2), edit_batch=pick(args.edit_batch, 16, 4),
        compile=args.compile, tasks=tasks, modes=modes, fast_overrides=overrides, train_warmup=args.train_warmup,
        train_steps=pick(args.train_steps, 5, 3),
        repeats=pick(args.repeats, 2, 1), n_inv_step=pick(args.n_inv_step, 40, 10),
        n_test_step=pick(args.n_test_step, 40, 10),
        guard=args.guard if args.guard is not None else device.type == "cuda",
        seed=args.seed, progress=lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True))
    line = json.dumps(record, default=str)
    print(format_table(record), file=sys.stderr)
    targets = [Path(args.out)] if args.out else []
    if device.type == "cuda" and not args.out:
        targets.append(results_path(args.results_dir, record))
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(line + "\n")
        print(f"[bench] appended to {path}", file=sys.stderr)
    print(line, flush=True)
    if record["guard"] is not None and not record["guard"]["passed"]:
        print("[bench] numerical guard FAILED", file=sys.stderr)
        return 1
    return 0
