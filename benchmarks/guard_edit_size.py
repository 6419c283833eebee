#!/usr/bin/env python
"""How the numerical guard's Δh-direction checks depend on the size of the initial edit (CPU, tiny test models).

On the H200 the guard's Δh check of 2026-11-27 failed (0.635, bf16) where the random-weight U-Net's initial edit moves
ε by 1.35e-3, below the reduced precision's rounding of ε; the L1 term's sign(P_edit − P_ref) is then rounding noise.
The guard now scales the initial block's last layer so that the edit is ``init_edit_size`` of ε; this script runs the
guard on the tiny U-Net and tiny CLIP of the tests for several sizes and precisions, so the effect can be seen without
a GPU:

    python benchmarks/guard_edit_size.py                                # sizes 0.1, 0.01, 0.001; fp16 and bf16; seed 0
    python benchmarks/guard_edit_size.py --sizes 0.003 --precisions bf16 --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from asyrp.bench import guard

TESTS = Path(__file__).resolve().parents[1] / "tests"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="0.1,0.01,0.001", help="initial edit sizes ‖ε̃ − ε‖/‖ε‖ at the first step")
    p.add_argument("--precisions", default="fp16,bf16", help="the fast mode's precision(s)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(TESTS))
    from conftest import tiny_backbone, tiny_clip  # the tests' tiny models: a script, not the library, may use them

    bb = tiny_backbone()
    encoder, size = tiny_clip()
    for precision in a.precisions.split(","):
        for edit_size in (float(v) for v in a.sizes.split(",")):
            for seed in (int(v) for v in a.seeds.split(",")):
                g = guard.numerical_guard(bb.unet, encoder, size, device="cpu", backbone=bb, seed=seed,
                                          init_edit_size=edit_size, fast={"precision": precision})
                r, c = g["reported"], g["checks"]
                print(json.dumps({"precision": precision, "init_edit_size": edit_size, "seed": seed,
                                  "edit_size": r["edit_size"],
                                  "delta_h_cosine": c["delta_h_cosine"]["value"],
                                  "delta_h_cosine_precision": c["delta_h_cosine_precision"]["value"],
                                  "delta_h_cosine_same_xt_vs_chain": r["delta_h_cosine_same_xt_vs_chain"],
                                  "eps_edit_rel_err": c["eps_edit_rel_err"]["value"], "passed": g["passed"]}),
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
