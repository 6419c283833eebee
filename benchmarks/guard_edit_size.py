#!/usr/bin/env python
"""How the numerical guard's ``delta_h_cosine`` depends on the size of the initial edit (CPU, tiny test models).

On the H200 the guard failed only this check (0.635 against ≥ 0.98) on the full-size random-weight U-Net, where the
initial edit moves ε by ``edit_size`` = 1.35e-3, below bf16's ~1e-2 rounding of ε. This script scales the initial conv
delta block's last layer (``conv2``) by k, which scales the initial edit by ~k, and runs the same guard on the tiny U-Net
and tiny CLIP of the tests, so the effect can be seen without a GPU:

    python benchmarks/guard_edit_size.py                       # k = 1, 0.01, 0.001; seeds 0 and 1 (~1 min, CPU)
    python benchmarks/guard_edit_size.py --scales 1 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import asyrp.train as T
from asyrp import bench

TESTS = Path(__file__).resolve().parents[1] / "tests"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scales", default="1,0.01,0.001", help="factors k for the initial block's last layer")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--l1-weight", type=float, default=None,
                   help="set λ_L1 in both modes (e.g. 0: is the L1 term's sign(P_edit − P_ref) what bf16 scrambles?)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(TESTS))
    from conftest import tiny_backbone, tiny_clip  # the tests' tiny models
    build = T.build_delta_block
    scale = {"k": 1.0}

    def scaled_block(cfg):
        block = build(cfg)
        if block.config.kind != "conv":
            raise ValueError("this check scales the conv block's conv2")
        with torch.no_grad():
            block.conv2.weight.mul_(scale["k"])
            block.conv2.bias.mul_(scale["k"])
        return block

    T.build_delta_block = scaled_block  # every initial block of the guard (sessions, training runs, f0) goes through it
    mode_config = bench.mode_config
    if a.l1_weight is not None:
        bench.mode_config = lambda *args, **kw: mode_config(*args, **{**kw, "l1_weight": a.l1_weight})
    try:
        bb = tiny_backbone()
        encoder, size = tiny_clip()
        for k in (float(v) for v in a.scales.split(",")):
            scale["k"] = k
            for seed in (int(v) for v in a.seeds.split(",")):
                g = bench.numerical_guard(bb.unet, encoder, size, device="cpu", backbone=bb, seed=seed)
                r = g["reported"]
                print(json.dumps({"k": k, "seed": seed, "l1_weight": a.l1_weight, "edit_size": r["edit_size"],
                                  "delta_h_cosine": g["checks"]["delta_h_cosine"]["value"],
                                  "delta_h_change_ratio": r["delta_h_change_ratio"],
                                  "eps_edit_rel_err": g["checks"]["eps_edit_rel_err"]["value"],
                                  "passed": g["passed"]}), flush=True)
    finally:
        T.build_delta_block, bench.mode_config = build, mode_config
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
