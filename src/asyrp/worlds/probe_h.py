"""Does the decoder of a shapes-world DDPM listen to h? Measurements behind blogpost.md §4, without any training.

For n rendered pairs (A, B) that differ only in ``attribute`` (A of the source value, B of the target value):

* ``xT_share``: how much of the attribute the DDIM-inverted latent still shows: the mean colour difference between
  x_T(A) and x_T(B) over the pixels where A and B differ, as a share of that difference in the images (the norm over
  the three channels); the forward process keeps √ᾱ_T of it (``forward_process_share``, 0.006);
* per reverse step t along A's path: ``eps_change`` = ‖ε(h_B, skips_A) − ε(h_A, skips_A)‖ / ‖ε(h_A, skips_A)‖, with
  ``h_change`` = ‖h_B − h_A‖ / ‖h_A‖: how much the output moves when h alone carries B; and ``p_share``, the
  colour difference between the predicted x0 (P_t) of A's and of B's own unedited paths as a share of that in the
  images: from which t on the prediction — what Asyrp edits — tells the two apart;
* ``h_linear_probe``: is the attribute in h at all? A ridge-regression read-out of the attribute from h of
  forward-noised images at a few t, fitted on ``n_train`` images and scored on ``n_test`` others (chance 1/values);
* the h-swap ceilings (:func:`asyrp.worlds.demo.h_swap_pairs`, then :func:`asyrp.worlds.demo.h_swap_reads` on one
  set of latents for both swaps), for real (inverted) and sampled images: symmetric (B's ε for the predicted x0 and the direction)
  and asymmetric (Asyrp's step: only the predicted x0 uses B's h).

* ``--readiness`` (issue 19): is h ready for an h-space edit, before any block is trained? The h-swap over 16 real
  pairs, counting the pairs whose attribute moves to the target and those that keep A's other attributes
  (symmetric and asymmetric, with A's plain regeneration as the reference), and the linear read-out at t = t_edit,
  700 and 900, against the issue's thresholds (:data:`READY`); the verdict is :func:`readiness_verdict`. The
  shipped result is ``asyrp/resources/worlds/shapes/readiness.json``, quoted in the model card.
* ``--outline N``: how much of the outline the DDPM's own predicted x0 (P_t, what Asyrp's step edits) shows along
  the edit path (:func:`outline_in_prediction`), per size and background: where P_t does not show it, a change of h
  redraws the object over a guessed outline.

    python -m asyrp.worlds.probe_h                       # the shipped DDPM
    python -m asyrp.worlds.probe_h --ddpm runs/x/checkpoint.pt   # a training checkpoint (its EMA weights)
    python -m asyrp.worlds.probe_h --readiness --out src/asyrp/resources/worlds/shapes/readiness.json
    python -m asyrp.worlds.probe_h --outline 96
"""

from __future__ import annotations

import argparse
import sys

import torch

from asyrp import diffusion as D
from asyrp import sampling
from asyrp.io.files import atomic_json
from asyrp.worlds import shapes
from asyrp.worlds.demo import SHAPES_DIRECTIONS, h_swap_pairs, h_swap_reads

# issue 19's readiness thresholds: shares of the h-swap pairs (12 of 16) and the read-out accuracy
READY = {"n_pairs": 16, "moved_min": 0.75, "others_kept_min": 0.75, "readout_min": 0.9}
READOUT_T = (700, 900)  # besides t_edit: where the edit acts, h is noisier


def load_ddpm(path: str | None, device: str = "cpu"):
    """The shipped DDPM (None), an exported ddpm.pt, or the EMA weights of a train-backbone checkpoint.pt."""
    if path is None:
        return shapes.load_tiny_ddpm(device)
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if "ema" in obj:  # a training checkpoint
        obj = {"config": obj["config"], "state_dict": obj["ema"]}
    return shapes.ddpm_from_checkpoint(obj, device)


@torch.no_grad()
def h_sensitivity(unet, attribute: str = "color", src_value: str = "red", trg_value: str = "blue", n: int = 8,
                  seed: int = 3, n_steps: int = 20) -> dict:
    device = next(unet.parameters()).device
    specs = shapes.sample_specs(n, seed, constraints={attribute: src_value})
    x0_a = shapes.make_batch(specs).to(device)
    x0_b = shapes.make_batch([s.replace(**{attribute: trg_value}) for s in specs]).to(device)
    differs = ((x0_a - x0_b).abs().sum(1, keepdim=True) > 0.5).expand_as(x0_a)
    alphas = D.alphas_cumprod(D.linear_betas()).to(device)
    x_a, x_b = sampling.invert(unet, x0_a, alphas, n_steps), sampling.invert(unet, x0_b, alphas, n_steps)
    steps = []

    def region_colour_gap(a, b):  # per image: ‖mean over the differing pixels of (a − b)‖ over channels
        mask = differs.float()
        return (((a - b) * mask).sum((2, 3)) / mask.sum((2, 3))).norm(dim=1)
    image_gap = region_colour_gap(x0_a, x0_b)
    xT_share = float((region_colour_gap(x_a, x_b) / image_gap).mean())
    for t, t_next in D.generative_pairs(n_steps):
        h_a, skips, temb = unet.encode(x_a, t)
        h_b, skips_b, temb_b = unet.encode(x_b, t)
        eps = unet.decode(h_a, skips, temb, x_a, t)
        eps_swapped = unet.decode(h_b, skips, temb, x_a, t)
        eps_b = unet.decode(h_b, skips_b, temb_b, x_b, t)
        a_t, a_next = D.alpha_bar(alphas, t), D.alpha_bar(alphas, t_next)
        x_a, p_a = D.ddim_step(x_a, eps, a_t, a_next)
        x_b, p_b = D.ddim_step(x_b, eps_b, a_t, a_next)
        steps.append({"t": t, "h_change": round(float((h_b - h_a).norm() / h_a.norm()), 4),
                      "eps_change": round(float((eps_swapped - eps).norm() / eps.norm()), 6),
                      "p_share": round(float((region_colour_gap(p_a, p_b) / image_gap).mean()), 4)})
    return {"attribute": attribute, "from": src_value, "to": trg_value, "n": n, "n_steps": n_steps,
            "xT_share": round(xT_share, 4),
            "forward_process_share": round(float(D.alpha_bar(alphas, 999).sqrt()), 4), "steps": steps}


@torch.no_grad()
def h_linear_probe(unet, attribute: str = "color", timesteps=(420, 600, 800), n_train: int = 512, n_test: int = 256,
                   seed: int = 11, ridge: float = 10.0) -> dict:
    """Held-out accuracy of a linear (ridge, one-hot targets) read-out of ``attribute`` from the flattened h of
    x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε, per t; features standardised on the training images."""
    device = next(unet.parameters()).device
    values = shapes.ATTRIBUTES[attribute]
    x0, specs = shapes.random_batch(n_train + n_test, seed, unet.image_size)
    y = torch.tensor([values.index(getattr(s, attribute)) for s in specs])
    targets = torch.nn.functional.one_hot(y[:n_train], len(values)).double()
    alphas = D.alphas_cumprod(D.linear_betas())
    g = torch.Generator().manual_seed(seed)
    accuracy = {}
    for t in timesteps:
        a = D.alpha_bar(alphas, t)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)
        h = torch.cat([unet.encode(c.to(device), t)[0].flatten(1).double().cpu() for c in x_t.split(128)])
        h = (h - h[:n_train].mean(0)) / (h[:n_train].std(0) + 1e-6)
        train = h[:n_train]
        w = torch.linalg.solve(train.T @ train + ridge * torch.eye(h.shape[1], dtype=h.dtype), train.T @ targets)
        accuracy[t] = round(float(((h[n_train:] @ w).argmax(1) == y[n_train:]).double().mean()), 4)
    return {"attribute": attribute, "n_train": n_train, "n_test": n_test, "seed": seed, "ridge": ridge,
            "chance": round(1 / len(values), 4), "accuracy": accuracy}


def readiness_verdict(swaps: list[dict], readout: dict, thresholds: dict = READY) -> dict:
    """Issue 19's readiness on measured numbers: some h-swap kind (symmetric or asymmetric) moves the attribute in ≥
    ``moved_min`` of the pairs **and** keeps A's other attributes in ≥ ``others_kept_min`` of them, and the linear
    read-out of the attribute from h reaches ``readout_min`` at one of the measured t. ``swaps``: dicts with
    ``asymmetric``, ``n``, ``moved`` and ``others_kept`` (counts of pairs); ``readout``: t → held-out accuracy."""
    kinds = {("asymmetric" if s["asymmetric"] else "symmetric"):
             (s["moved"] / s["n"] >= thresholds["moved_min"]
              and s["others_kept"] / s["n"] >= thresholds["others_kept_min"])
             for s in swaps}
    best_t = max(readout, key=lambda t: readout[t])
    readout_ok = readout[best_t] >= thresholds["readout_min"]
    return {"thresholds": dict(thresholds), "swap_ok": kinds,
            "readout_best": {"t": int(best_t), "accuracy": readout[best_t]},  # int also for t read back from JSON
            "readout_ok": readout_ok, "ready": any(kinds.values()) and readout_ok,
            "rule": "ready = (moved >= moved_min and others_kept >= others_kept_min, as shares of the pairs, for the "
                    "symmetric or the asymmetric h-swap) and (the best read-out accuracy >= readout_min)"}


@torch.no_grad()
def readiness(unet, attribute: str = "color", t_edit: int = shapes.T_EDIT, n: int = READY["n_pairs"],
              n_steps: int = 20, seed: int = 0, readout_t: tuple[int, ...] = READOUT_T, probe_train: int = 512,
              probe_test: int = 256, thresholds: dict = READY, t_0: int = shapes.T_0) -> dict:
    """Does h carry ``attribute`` the way an edit in h needs, before any block is trained? For n real pairs (A of the
    source value, B the same image with the target value; both DDIM-inverted, ``n_steps``), A is regenerated with B's
    h at t ≥ t_edit (symmetric and asymmetric :func:`asyrp.sampling.h_swap`) and read: ``moved`` pairs read as the
    target, ``others_kept`` pairs valid with A's other attributes; ``reconstruction`` is A with its own h (the plain
    regeneration: the most the swap can keep). Plus :func:`h_linear_probe` at t_edit and ``readout_t``. ``t_0``:
    invert the pairs to x_{t_0} and regenerate from there (the partial inversion an edit from t_0 uses)."""
    src, trg = SHAPES_DIRECTIONS[attribute]
    x_a, x_b, truth = h_swap_pairs(unet, attribute, src, trg, "real", n=n, seed=seed, n_steps=n_steps, t_0=t_0)

    def counted(reads: dict) -> dict:
        return {"asymmetric": reads["asymmetric"], "n": n, "moved": round(reads["transferred"] * n),
                "still_source": round(reads["kept"] * n), "others_kept": round(reads["others_kept"] * n),
                "moved_and_others_kept": round(reads["moved_and_others_kept"] * n),
                "delta_h_ratio": reads["delta_h_ratio"], "read_as": reads["read_as"]}
    swaps = [counted(h_swap_reads(unet, x_a, x_b, attribute, src, trg, "real", t_edit, n_steps, asymmetric, truth,
                                  t_0)) for asymmetric in (False, True)]
    reconstruction = counted(h_swap_reads(unet, x_a, x_a, attribute, src, trg, "real", t_edit, n_steps, False, truth,
                                          t_0))
    probe = h_linear_probe(unet, attribute, timesteps=(t_edit, *readout_t), n_train=probe_train, n_test=probe_test)
    return {"attribute": attribute, "from": src, "to": trg, "images": "real", "t_0": t_0, "t_edit": t_edit,
            "n_steps": n_steps, "seed": seed, "h_swap": swaps, "reconstruction": reconstruction, "linear_probe": probe,
            "verdict": readiness_verdict(swaps, probe["accuracy"], thresholds)}


OUTLINE_BY = ("size", "background")  # the values the outline probe counts apart
KEPT = tuple(k for k in shapes.ATTRIBUTES if k != "color")  # what the demo's colour edit must keep


@torch.no_grad()
def outline_in_prediction(unet, n: int = 96, seed: int = 0, n_steps: int = 20, t_0: int = shapes.T_0,
                          t_edit: int = shapes.T_EDIT, color: str = "red") -> dict:
    """Does the DDPM's own predicted x0 show the outline where the edit acts? n rendered images of ``color`` (the
    demo's source colour) are DDIM-inverted to x_{t_0} and regenerated without an edit; at every step t ≥ t_edit, and
    for the regenerated image (``t = "final"``), P_t is read and counted per value of size and background: ``kept``
    (shape, size and background read right: the demo's preservation without its validity check, which a blurry P_t
    at high t would fail whatever its outline) and ``shape`` (the shape read right), of ``n`` images of that value. An asymmetric step moves P_t by what Δh changes in ε; where P_t itself does not show
    the outline, that change is drawn over the decoder's guess of it, which the next steps then keep."""
    device = next(unet.parameters()).device
    specs = shapes.sample_specs(n, seed + 50_000, constraints={"color": color})
    truth = [dict(s.attributes) for s in specs]
    alphas = D.alphas_cumprod(D.linear_betas()).to(device)
    reads: dict = {}

    def on_step(t, _x, x0):
        if t >= t_edit:
            reads[t] = shapes.read_attributes(x0)

    x_t0 = sampling.invert(unet, shapes.make_batch(specs).to(device), alphas, n_steps, t_0)
    reads["final"] = shapes.read_attributes(sampling.generate(unet, x_t0, alphas, n_steps, t_0, on_step=on_step))

    def counted(read: list[dict]) -> dict:
        by = {}
        for key in OUTLINE_BY:
            by[key] = {}
            for value in shapes.ATTRIBUTES[key]:
                idx = [i for i, tr in enumerate(truth) if tr[key] == value]
                by[key][value] = {"kept": sum(all(read[i][k] == truth[i][k] for k in KEPT) for i in idx),
                                  "shape": sum(read[i]["shape"] == truth[i]["shape"] for i in idx), "n": len(idx)}
        return by
    return {"color": color, "n": n, "seed": seed, "t_0": t_0, "t_edit": t_edit, "n_steps": n_steps,
            "steps": [{"t": t, "by": counted(r)} for t, r in reads.items() if t != "final"]
            + [{"t": "final", "by": counted(reads["final"])}]}


def print_outline(r: dict) -> None:
    """One line per step: kept (shape, size and background) / shape right / images, per size and background."""
    print(f"the predicted x0 along the unedited path of {r['n']} {r['color']} images ({r['t_0']} ≥ t ≥ {r['t_edit']},"
          f" then the regenerated image): shape, size and background read right / shape read right / images")
    for row in r["steps"]:
        cells = [f"{value} {c['kept']}/{c['shape']}/{c['n']}"
                 for key in OUTLINE_BY for value, c in row["by"][key].items()]
        print(f"{row['t']:>6} " + " | ".join(cells))


def print_readiness(r: dict) -> None:
    """The readiness numbers and verdict as lines."""
    th, v = r["verdict"]["thresholds"], r["verdict"]
    print(f"readiness of h for {r['attribute']} {r['from']} → {r['to']} (h-swap at {r['t_0']} ≥ t ≥ {r['t_edit']}, "
          f"{r['reconstruction']['n']} real pairs; thresholds: moved and others kept ≥ {th['moved_min']:.0%} / "
          f"{th['others_kept_min']:.0%} of pairs, read-out ≥ {th['readout_min']})")
    rec = r["reconstruction"]
    print(f"  A with its own h (plain regeneration): others kept {rec['others_kept']} of {rec['n']}, still "
          f"{r['from']} {rec['still_source']}")
    for s in r["h_swap"]:
        print(f"  {'asymmetric' if s['asymmetric'] else 'symmetric'} h-swap: moved to {r['to']} {s['moved']} of "
              f"{s['n']}, others kept {s['others_kept']}, both {s['moved_and_others_kept']}, still {r['from']} "
              f"{s['still_source']}" + (f"; ‖h_B − h_A‖/‖h_A‖ {s['delta_h_ratio']:.3f}" if "delta_h_ratio" in s else "")
              + (f"; read as {s['read_as']}" if "read_as" in s else ""))
    accuracy = r["linear_probe"]["accuracy"]
    print("  linear read-out from h: " + ", ".join(f"t = {t}: {a:.3f}" for t, a in accuracy.items())
          + f" (chance {r['linear_probe']['chance']:.3f})")
    print(f"  ready: {v['ready']} (h-swap ok: {v['swap_ok']}; read-out ok: {v['readout_ok']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m asyrp.worlds.probe_h", description=__doc__.split("\n")[0])
    p.add_argument("--ddpm", help="ddpm.pt or a train-backbone checkpoint.pt (default: the shipped DDPM)")
    p.add_argument("--attribute", choices=sorted(SHAPES_DIRECTIONS), default="color")
    p.add_argument("--n", type=int, default=8, help="pairs for the sensitivity; the h-swap uses 2n")
    p.add_argument("--t-edit", type=int, default=shapes.T_EDIT, help=f"default {shapes.T_EDIT}")
    p.add_argument("--t-0", type=int, default=shapes.T_0,
                   help=f"invert real pairs to t_0 and swap h at t_0 ≥ t ≥ t_edit, as an edit from t_0 (default "
                        f"{shapes.T_0}, the shapes world's edit path; 999: the full inversion)")
    p.add_argument("--no-swap", action="store_true", help="skip the h-swap ceilings (the sampled one takes minutes)")
    p.add_argument("--swap-images", default="real,sampled",
                   help="which h-swap ceilings: real, sampled or both (sampled needs a DDPM that generates the values)")
    p.add_argument("--probe-train", type=int, default=512, help="images to fit the linear read-out of h")
    p.add_argument("--probe-test", type=int, default=256, help="held-out images to score it")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--readiness", action="store_true",
                   help="only the readiness probe of issue 19 (2n real h-swap pairs, read-out at t_edit, 700, 900)")
    p.add_argument("--outline", type=int, metavar="N",
                   help="only the outline probe: what the predicted x0 shows of N real images along the edit path")
    p.add_argument("--out", help="also write the results to this JSON file")
    a = p.parse_args(argv)
    if a.outline is not None and a.outline < 1:
        p.error(f"--outline takes a number of images ≥ 1, got {a.outline}")
    if a.outline is not None and a.readiness:
        p.error("--outline runs alone: drop --readiness")
    torch.set_num_threads(a.threads)
    unet = load_ddpm(a.ddpm)
    if a.outline is not None:
        result = {"ddpm": a.ddpm or "shipped", **outline_in_prediction(unet, a.outline, t_0=a.t_0, t_edit=a.t_edit)}
        print_outline(result)
        if a.out:
            atomic_json(a.out, result)
        return 0
    if a.readiness:
        result = {"ddpm": a.ddpm or "shipped", "command": "python -m asyrp.worlds.probe_h "
                  + " ".join(argv if argv is not None else sys.argv[1:]),
                  **readiness(unet, a.attribute, a.t_edit, n=2 * a.n, probe_train=a.probe_train,
                              probe_test=a.probe_test, t_0=a.t_0)}
        print_readiness(result)
        if a.out:
            atomic_json(a.out, result)
        return 0
    src, trg = SHAPES_DIRECTIONS[a.attribute]
    result = {"ddpm": a.ddpm or "shipped", "config": unet.config,
              "sensitivity": h_sensitivity(unet, a.attribute, src, trg, n=a.n)}
    s = result["sensitivity"]
    result["linear_probe"] = lp = h_linear_probe(unet, a.attribute, n_train=a.probe_train, n_test=a.probe_test)
    print(f"{a.attribute} {src} → {trg}: the DDIM-inverted x_T keeps {s['xT_share']:.1%} of the colour difference "
          f"between A and B (the forward process: {s['forward_process_share']:.1%})")
    print(f"{'t':>5} {'|Δh|/|h|':>9} {'|Δε|/|ε|':>9} {'P_t gap':>8}")
    for row in s["steps"]:
        print(f"{row['t']:>5} {row['h_change']:>9.3f} {row['eps_change']:>9.5f} {row['p_share']:>8.3f}")
    print(f"linear read-out of {a.attribute} from h of forward-noised images ({lp['n_test']} held out, chance "
          f"{lp['chance']:.3f}): " + ", ".join(f"t = {t}: {acc:.3f}" for t, acc in lp["accuracy"].items()))
    if not a.no_swap:
        result["h_swap"] = []
        for images in a.swap_images.split(","):  # one set of latents for both kinds of swap
            t_0 = a.t_0 if images == "real" else D.T_0  # sampled pairs start from their noise
            x_a, x_b, _ = h_swap_pairs(unet, a.attribute, src, trg, images, n=2 * a.n, t_0=t_0)
            result["h_swap"] += [h_swap_reads(unet, x_a, x_b, a.attribute, src, trg, images, t_edit=a.t_edit,
                                              asymmetric=asymmetric, t_0=t_0) for asymmetric in (False, True)]
        for hs in result["h_swap"]:
            kind = "asymmetric" if hs["asymmetric"] else "symmetric"
            print(f"{kind} h-swap at {hs['t_0']} ≥ t ≥ {hs['t_edit']}, {hs['images']} images: "
                  f"{hs['transferred']:.2f} read as {trg}, {hs['kept']:.2f} still {src} (n = {hs['n']})")
    if a.out:
        atomic_json(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
