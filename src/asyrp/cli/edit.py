"""``asyrp edit``: argparse and printing for :func:`asyrp.pipeline.edit.edit` (the flags are EditConfig's fields)."""

from __future__ import annotations

import argparse

from asyrp import config as C
from asyrp.pipeline.distributed import context_from_env
from asyrp.pipeline.edit import EditConfig, edit


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (original/, reconstructed/, edited*/, grid.png)")
    p.add_argument("--direction", action="append", dest="direction_list", metavar="CKPT",
                   help="a delta checkpoint: a path, a weights name (asyrp-smiling) or a file name in the weights "
                        "folders (repeat for several attributes at once)")
    p.add_argument("--strength", type=float, help="one edit strength (default 1)")
    p.add_argument("--config", help="YAML of EditConfig fields")
    p.add_argument("--weights-dir", help="folder holding downloaded weights (offline machines)")
    C.add_arguments(p, EditConfig, skip=("directions",),
                    help={"t_0": "invert to t_0 and edit from it (default: the t_0 the directions were trained "
                                 "with; 999, the original's, where a checkpoint does not say)"})


def main(args: argparse.Namespace) -> int:
    data = C.load_yaml(args.config)
    data.update(C.overrides_from_args(EditConfig, args))
    if args.direction_list:
        data["directions"] = args.direction_list
    if args.strength is not None:
        data["strengths"] = [args.strength]
    cfg = C.from_dict(EditConfig, data)
    dist = context_from_env()
    record = edit(cfg, args.out, weights_dir=args.weights_dir, distributed=dist)
    if dist is None or dist.rank == 0:
        print(f"edited {len(record['images'])} images × {len(record['settings'])} settings into {args.out}")
    if dist is not None:
        dist.close()
    return 0
