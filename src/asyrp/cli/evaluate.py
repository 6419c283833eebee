"""``asyrp evaluate``: argparse and printing for :func:`asyrp.pipeline.evaluate.evaluate_run`."""

from __future__ import annotations

import argparse
import difflib
import inspect

from asyrp.attributes import attribute_table
from asyrp.clip_loss import CLIP_ARCHS
from asyrp.models.inception import FID_WEIGHTS_FILE
from asyrp.pipeline.evaluate import evaluate_folders, evaluate_run

# evaluate_folders' defaults are the command's (and a study family's, asyrp.study.families.EVAL_DEFAULTS)
DEFAULTS = {name: p.default for name, p in inspect.signature(evaluate_folders).parameters.items()}


def _attribute_texts(name: str) -> tuple[str, str]:
    table = attribute_table()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "give the texts with --src/--trg"
        raise ValueError(f"unknown attribute {name!r}; {hint}")
    return table[name].src, table[name].trg


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="folder with original/, reconstructed/, edited/")
    parser.add_argument("--edited-dir", help="edited images (default RUN_DIR/edited)")
    parser.add_argument("--edited-suffix", default="", help="edited file of x.png is x<SUFFIX>.png (default none)")
    texts = parser.add_mutually_exclusive_group()
    texts.add_argument("--attr", help="attribute name from the package table (gives the source/target texts)")
    texts.add_argument("--src", help="source text (with --trg)")
    parser.add_argument("--trg", help="target text (with --src)")
    parser.add_argument("--clip-model", default=DEFAULTS["clip_model"], choices=list(CLIP_ARCHS),
                        help="CLIP for S_dir")
    parser.add_argument("--clip-weights", help="CLIP weights file (default: the weights registry)")
    parser.add_argument("--prompts", default=DEFAULTS["prompt_mode"], choices=["templates", "single"],
                        help="text direction: 79-template average (default) or the single raw prompts")
    parser.add_argument("--no-antialias", dest="antialias", action="store_false",
                        help="resize for CLIP without antialiasing (as the training loss does)")
    parser.add_argument("--inception-weights", help=f"FID Inception weights ({FID_WEIGHTS_FILE})")
    parser.add_argument("--weights-dir", help="where the weights registry looks for / stores weights")
    parser.add_argument("--groups", help="CSV of (image name, group label) rows: metrics per group too")
    parser.add_argument("--no-fid", dest="fid", action="store_false", help="skip FID and KID")
    parser.add_argument("--no-sdir", dest="sdir", action="store_false", help="skip S_dir")
    parser.add_argument("--kid-subsets", type=int, default=DEFAULTS["kid_subsets"])
    parser.add_argument("--kid-subset-size", type=int, default=DEFAULTS["kid_subset_size"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="KID subset seed")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: CUDA if available)")
    parser.add_argument("--out", help="output JSON (default RUN_DIR/eval.json; RUN_DIR/eval_<edited dir><suffix>.json "
                        "with --edited-dir / --edited-suffix)")


def main(args: argparse.Namespace) -> int:
    src, trg = args.src, args.trg
    if args.attr:
        if trg:
            raise ValueError("--trg goes with --src, not with --attr")
        src, trg = _attribute_texts(args.attr)
    elif bool(src) != bool(trg):
        raise ValueError("give both --src and --trg (or --attr)")
    result = evaluate_run(args.run_dir, args.edited_dir, out=args.out, src_text=src, trg_text=trg,
                          clip_model=args.clip_model, clip_weights=args.clip_weights, prompt_mode=args.prompts,
                          antialias=args.antialias, inception_weights=args.inception_weights,
                          weights_dir=args.weights_dir, groups=args.groups, fid=args.fid, sdir=args.sdir,
                          kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, seed=args.seed,
                          batch_size=args.batch_size, device=args.device, edited_suffix=args.edited_suffix)
    for m in result["metrics"]:
        if m["metric"] == "directional_clip_loss":
            continue
        group = f" [{m['group']}]" if m["group"] is not None else ""
        std = f" ± {m['std']:.4f}" if m["std"] is not None else ""
        value = f"{m['mean']:.4f}" if m["mean"] is not None else "n/a"
        print(f"{m['metric']:6s} {'→'.join(m['pair']):26s} n={m['n']:<5d} {value}{std}{group}")
    print(f"wrote {result['path']}")
    return 0
