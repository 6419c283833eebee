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
* the h-swap ceilings (:func:`asyrp.worlds.demo.h_swap_latents`, then :func:`asyrp.worlds.demo.h_swap_reads` on one set of latents
  for both swaps), for real (inverted) and sampled images: symmetric (B's ε for the predicted x0 and the direction)
  and asymmetric (Asyrp's step: only the predicted x0 uses B's h).

    python -m asyrp.worlds.probe_h                       # the shipped DDPM
    python -m asyrp.worlds.probe_h --ddpm runs/x/checkpoint.pt   # a training checkpoint (its EMA weights)
"""

from __future__ import annotations

import argparse

import torch

from asyrp import diffusion as D
from asyrp import sampling
from asyrp.io.files import atomic_json
from asyrp.worlds import shapes
from asyrp.worlds.demo import SHAPES_DIRECTIONS, h_swap_latents, h_swap_reads


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


def main(argv: list[str] | None = None) -> int:

    p = argparse.ArgumentParser(prog="python -m asyrp.worlds.probe_h", description=__doc__.split("\n")[0])
    p.add_argument("--ddpm", help="ddpm.pt or a train-backbone checkpoint.pt (default: the shipped DDPM)")
    p.add_argument("--attribute", choices=sorted(SHAPES_DIRECTIONS), default="color")
    p.add_argument("--n", type=int, default=8, help="pairs for the sensitivity; the h-swap uses 2n")
    p.add_argument("--t-edit", type=int, default=shapes.T_EDIT)
    p.add_argument("--no-swap", action="store_true", help="skip the h-swap ceilings (the sampled one takes minutes)")
    p.add_argument("--swap-images", default="real,sampled",
                   help="which h-swap ceilings: real, sampled or both (sampled needs a DDPM that generates the values)")
    p.add_argument("--probe-train", type=int, default=512, help="images to fit the linear read-out of h")
    p.add_argument("--probe-test", type=int, default=256, help="held-out images to score it")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the results to this JSON file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    unet = load_ddpm(a.ddpm)
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
            x_a, x_b = h_swap_latents(unet, a.attribute, src, trg, images, n=2 * a.n)
            result["h_swap"] += [h_swap_reads(unet, x_a, x_b, a.attribute, src, trg, images, t_edit=a.t_edit,
                                              asymmetric=asymmetric) for asymmetric in (False, True)]
        for hs in result["h_swap"]:
            kind = "asymmetric" if hs["asymmetric"] else "symmetric"
            print(f"{kind} h-swap at t ≥ {hs['t_edit']}, {hs['images']} images: {hs['transferred']:.2f} read as "
                  f"{trg}, {hs['kept']:.2f} still {src} (n = {hs['n']})")
    if a.out:
        atomic_json(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
