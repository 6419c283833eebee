"""``asyrp demo``: the whole method end to end.

* ``--world shapes`` (default, offline, a few minutes on a laptop CPU): the tiny DDPM and tiny CLIP shipped in the
  package. Train a direction (e.g. "a red shape" → "a blue shape") on images *sampled from the DDPM*, edit held-out
  *real* (rendered, then DDIM-inverted) images of the source value, and measure what the paper claims with the world's
  exact attribute reader: edit success, preservation of the other attributes, S_dir (tiny CLIP) and linearity over a
  strength sweep. Writes ``grid.png``, ``sweep.png`` and ``metrics.json``.
* ``--world celeba``: the real thing — sample faces from the CelebA-HQ DDPM and edit them with the official smiling
  and pixar directions into one grid (downloads ~460 MB; offline it stops naming the files to fetch).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from asyrp.cli import UserError
from asyrp.io import atomic_json, default_device

# default (source, target) value per attribute of the shapes world
SHAPES_DIRECTIONS = {"color": ("red", "blue"), "shape": ("circle", "square"), "size": ("small", "large"),
                     "background": ("white", "black")}
STRENGTHS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5)


def shapes_text(attribute: str, value: str) -> str:
    from asyrp.worlds.shapes import caption
    return caption({attribute: value}, include={attribute})


def run_shapes_demo(out: Path, attribute: str = "color", src_value: str | None = None, trg_value: str | None = None,
                    kind: str = "conv", seed: int = 0, n_train: int = 24, n_test: int = 16, epochs: int = 1,
                    t_edit: int = 500, t_boost: int | None = None, n_steps: int = 20, lr: float | None = None,
                    strengths=STRENGTHS, device: str | None = None, progress: bool = True) -> dict:
    """Train one direction in the shapes world and measure it; returns the metrics written to metrics.json."""
    from asyrp.backbones import Backbone, fingerprint
    from asyrp.clip_loss import CLIPDirection
    from asyrp.edit import Direction, EditConfig, edit
    from asyrp.inversion import InversionSettings, precompute, precompute_sampled
    from asyrp.models.delta import DeltaBlockConfig
    from asyrp.plots import load_png, save_rows
    from asyrp.train import TrainConfig, train
    from asyrp.worlds import shapes

    if attribute not in SHAPES_DIRECTIONS:
        raise UserError(f"unknown shapes attribute {attribute!r}; choose one of {', '.join(SHAPES_DIRECTIONS)}")
    src_value = src_value or SHAPES_DIRECTIONS[attribute][0]
    trg_value = trg_value or SHAPES_DIRECTIONS[attribute][1]
    for v in (src_value, trg_value):
        if v not in shapes.ATTRIBUTES[attribute]:
            raise UserError(f"{v!r} is not a {attribute} of the shapes world ({', '.join(shapes.ATTRIBUTES[attribute])})")
    started = time.perf_counter()
    device = default_device(device)
    out.mkdir(parents=True, exist_ok=True)
    unet = shapes.load_tiny_ddpm(device)
    backbone = Backbone(unet, "shapes", fingerprint(unet), None, "shapes")
    encoder, clip_size = shapes.load_tiny_clip(device)
    src, trg = shapes_text(attribute, src_value), shapes_text(attribute, trg_value)
    settings = InversionSettings(n_inv_step=n_steps)
    cache = out / "cache"

    # training images: sampled from the DDPM itself (no dataset)
    train_entries = precompute_sampled(unet, n_train, seed, cache, backbone.fingerprint, settings, batch_size=32,
                                       device=device, progress=progress)
    delta = DeltaBlockConfig(kind=kind, heads=2 if kind != "conv" else 1, ff_dim=256, zero_init=kind != "conv")
    cfg = TrainConfig(src=src, trg=trg, backbone="shapes", clip_model="shapes", n_inv_step=n_steps,
                      n_train_step=n_steps, t_edit=t_edit, t_boost=t_boost, delta=delta, n_images=n_train,
                      optimizer="sgd" if kind == "conv" else "adamw",
                      lr=lr if lr is not None else (0.5 if kind == "conv" else 1e-3),
                      clip_weight=1.0, l1_weight=3.0, batch_size=8, epochs=epochs, seed=seed,
                      log_every=50, checkpoint_every=10**6, device=str(device))
    direction_path = train(cfg, out / "train", backbone=backbone, clip=(encoder, clip_size), entries=train_entries,
                           resume=True, progress=progress)

    # held-out real images of the source value: rendered, then DDIM-inverted
    test = shapes.ShapesDataset(n_test, seed + 10_000, constraints={attribute: src_value})
    items = [{"image": test.image(i), "name": f"test_{i:03d}", "source": f"shapes:{test.seed}:{i}",
              "sha256": f"shapes-{test.seed}-{i}"} for i in range(n_test)]
    test_entries = precompute(unet, items, cache, backbone.fingerprint, settings, batch_size=32, device=device,
                              progress=progress)
    from asyrp.models.delta import load_delta_block
    block = load_delta_block(direction_path).to(device)
    ecfg = EditConfig(directions=[str(direction_path)], backbone="shapes", n_images=n_test, n_inv_step=n_steps,
                      n_test_step=n_steps, t_edit=t_edit, t_boost=t_boost, strengths=list(strengths), batch_size=32,
                      device=str(device))
    record = edit(ecfg, out / "edit", backbone=backbone, entries=test_entries,
                  directions=[Direction(block, str(direction_path), None, n_steps, t_edit, t_boost)],
                  progress=progress)

    # measure with the exact reader and the tiny CLIP
    truth = [test.specs[i].attributes for i in range(n_test)]
    direction = CLIPDirection(encoder, src, trg, templates=None, image_size=clip_size).to(device)
    originals = torch.stack([e["x0"] for e in test_entries]).to(device)
    per_strength = []
    for s in record["settings"]:
        images = torch.stack([load_png(out / "edit" / s["folder"] / f"{n}.png") for n in record["images"]])
        reads = shapes.read_attributes(images)
        valid = [r["valid"] for r in reads]
        success = sum(v and r[attribute] == trg_value for v, r in zip(valid, reads)) / n_test
        still_source = sum(v and r[attribute] == src_value for v, r in zip(valid, reads)) / n_test
        others = [k for k in shapes.ATTRIBUTES if k != attribute]
        preserved = sum(v and all(r[k] == t[k] for k in others) for v, r, t in zip(valid, reads, truth)) / n_test
        sdir = direction.similarity(originals, images.to(device)).double()
        per_strength.append({"strength": s["strength"], "folder": s["folder"], "edit_success": success,
                             "source_kept": still_source, "preservation": preserved,
                             "valid": sum(valid) / n_test, "s_dir": float(sdir.mean()), "s_dir_std": float(sdir.std())})
    main = next(p for p in per_strength if p["strength"] == 1.0) if 1.0 in strengths else per_strength[-1]
    successes = [p["edit_success"] for p in sorted(per_strength, key=lambda p: p["strength"])]
    metrics = {
        "world": "shapes", "direction": {"attribute": attribute, "from": src_value, "to": trg_value,
                                         "src_text": src, "trg_text": trg},
        "block": delta.kind, "strength": main["strength"], "edit_success": main["edit_success"],
        "preservation": main["preservation"], "s_dir": main["s_dir"], "valid": main["valid"],
        "linearity": {"strengths": [p["strength"] for p in sorted(per_strength, key=lambda p: p["strength"])],
                      "edit_success": successes,
                      "monotonic": all(a <= b for a, b in zip(successes, successes[1:]))},
        "per_strength": per_strength, "n_train": n_train, "n_test": n_test, "t_edit": t_edit, "t_boost": t_boost,
        "n_steps": n_steps, "seed": seed, "seconds": round(time.perf_counter() - started, 1),
        "device": str(device), "torch_threads": torch.get_num_threads(),
    }
    atomic_json(out / "metrics.json", metrics)
    # figures: the grid of edit, and one row per test image across strengths
    import shutil
    shutil.copyfile(out / "edit" / "grid.png", out / "grid.png")
    folders = ["original"] + [p["folder"] for p in sorted(per_strength, key=lambda p: p["strength"])]
    save_rows(out / "sweep.png", [[load_png(out / "edit" / f / f"{n}.png") for f in folders]
                                  for n in record["images"][:8]])
    return metrics


def run_celeba_demo(out: Path, n: int = 4, seed: int = 0, n_steps: int = 40, weights_dir: str | None = None,
                    device: str | None = None, attributes=("smiling", "pixar")) -> Path:
    """Sample faces from the CelebA-HQ DDPM and edit them with the official directions into ``out/grid.png``."""
    from asyrp.backbones import load_backbone
    from asyrp.edit import EditConfig, edit
    from asyrp.inversion import InversionSettings, load_entries
    from asyrp.plots import load_png, save_rows
    from asyrp import weights as registry

    device = default_device(device)
    # check every file first, so that an offline machine learns all missing names at once
    for name in ["ddpm-celeba-hq"] + [f"asyrp-{a}" for a in attributes]:
        registry.resolve(name, weights_dir=weights_dir)
    backbone = load_backbone("celeba-hq", weights_dir=weights_dir, device=device)
    entries = load_entries(backbone, "sampled", n, out / "cache", seed=seed, settings=InversionSettings(n_steps),
                           batch_size=4, device=device)
    for attr in attributes:
        edit(EditConfig(directions=[f"asyrp-{attr}"], backbone="celeba-hq", n_images=n, n_inv_step=n_steps,
                        n_test_step=n_steps, batch_size=4, device=str(device)), out / attr, backbone=backbone,
             entries=entries, weights_dir=weights_dir)
    names = [e["name"] for e in entries]
    rows = [[load_png(out / attributes[0] / "original" / f"{nm}.png")] +
            [load_png(out / a / "edited" / f"{nm}.png") for a in attributes] for nm in names]
    return save_rows(out / "grid.png", rows)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world", choices=("shapes", "celeba"), default="shapes",
                   help="shapes: offline tiny world shipped in the package (default); celeba: the real CelebA-HQ DDPM")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--direction", choices=sorted(SHAPES_DIRECTIONS), default="color",
                   help="shapes world: which attribute to edit (default: color, red → blue)")
    p.add_argument("--from", dest="src_value", help="source value (e.g. red)")
    p.add_argument("--to", dest="trg_value", help="target value (e.g. blue)")
    p.add_argument("--kind", default="conv", help="delta block: conv (official) or a transformer kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=24)
    p.add_argument("--n-test", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--weights-dir", help="celeba world: folder with downloaded weights")
    p.add_argument("--device")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.world == "celeba":
        path = run_celeba_demo(out, seed=args.seed, weights_dir=args.weights_dir, device=args.device)
        print(f"wrote {path}")
        return 0
    m = run_shapes_demo(out, args.direction, args.src_value, args.trg_value, kind=args.kind, seed=args.seed,
                        n_train=args.n_train, n_test=args.n_test, epochs=args.epochs, device=args.device)
    d = m["direction"]
    print(f"shapes world: {d['src_text']!r} → {d['trg_text']!r} with a {m['block']} delta block, "
          f"{m['n_train']} sampled training images, {m['n_test']} held-out real images")
    print(f"{'strength':>8} {'success':>8} {'kept src':>8} {'preserve':>8} {'valid':>6} {'S_dir':>7}")
    for p in m["per_strength"]:
        print(f"{p['strength']:>8.2f} {p['edit_success']:>8.2f} {p['source_kept']:>8.2f} {p['preservation']:>8.2f} "
              f"{p['valid']:>6.2f} {p['s_dir']:>7.3f}")
    print(f"linearity (success non-decreasing in strength): {m['linearity']['monotonic']}; "
          f"{m['seconds']} s on {m['device']}; wrote {out}/grid.png, {out}/sweep.png, {out}/metrics.json")
    return 0
