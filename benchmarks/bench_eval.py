"""Benchmark `asyrp evaluate`: FID + KID + S_dir of N image pairs, end to end from PNG folders.

Full-size models with random weights (nothing is downloaded): the FID InceptionV3 (pool3) and CLIP ViT-B/16
(open_clip, QuickGELU). N random 256² images are written as original/, reconstructed/ and edited/ folders, then
:func:`asyrp.pipeline.evaluate.evaluate_folders` runs once (models built once, batched passes, one read per folder) and the
wall-clock time is printed with images/s. The timings are what the issue asks for ("1000 pairs in well under a
minute on one GPU"); the numbers depend only on shapes, not on the weights.

    python benchmarks/bench_eval.py --n 1000 --device cuda        # the target measurement
    python benchmarks/bench_eval.py --n 16 --clip-model tiny      # a CPU smoke run in seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_folders(root: Path, n: int, size: int, seed: int = 0) -> tuple[Path, Path, Path]:
    from PIL import Image
    rng = np.random.default_rng(seed)
    dirs = [root / name for name in ("original", "reconstructed", "edited")]
    for d in dirs:
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i:05d}.png")
    return tuple(dirs)


def build_clip(name: str, device):
    from asyrp.clip_loss import OpenClipEncoder
    if name == "tiny":  # the shipped shapes-world CLIP: for a CPU smoke run
        from asyrp.worlds.shapes import load_tiny_clip
        return load_tiny_clip(device)[0]
    import open_clip
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True)
    return OpenClipEncoder(model.eval(), open_clip.get_tokenizer(name), name=f"{name} (random weights)").to(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="image pairs")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--clip-model", default="ViT-B-16", help="open_clip name, or 'tiny' (shapes-world CLIP)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--out", help="append the JSON result to this file")
    a = p.parse_args(argv)

    from asyrp.models.inception import build_fid_inception
    from asyrp.pipeline.evaluate import evaluate_folders
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        original, reconstructed, edited = write_folders(Path(tmp), a.n, a.size)
        t_write = time.perf_counter() - t0
        inception = build_fid_inception().to(device)
        clip = build_clip(a.clip_model, device)
        t_models = time.perf_counter() - t0 - t_write
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        result = evaluate_folders(original, edited, reconstructed, src_text="face", trg_text="smiling face",
                                  clip_encoder=clip, inception_model=inception, batch_size=a.batch_size,
                                  device=device, kid_subset_size=min(a.kid_subset_size, a.n))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t1
    record = {"benchmark": "evaluate_folders", "pairs": a.n, "images_read": 3 * a.n, "size": a.size,
              "batch_size": a.batch_size, "clip_model": a.clip_model, "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
              "seconds_evaluate": round(seconds, 2), "pairs_per_second": round(a.n / seconds, 1),
              "seconds_write_pngs": round(t_write, 1), "seconds_build_models": round(t_models, 1),
              "metrics_computed": sorted({m["metric"] for m in result["metrics"]})}
    print(json.dumps(record))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
