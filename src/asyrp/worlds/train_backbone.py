"""``asyrp train-backbone``: train the tiny DDPM of the shapes world on the CPU.

Standard DDPM ε-prediction: x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε with t uniform in [0, 999] (linear β, T = 1000, the schedule
of :mod:`asyrp.diffusion`), loss ‖ε_θ(x_t, t) − ε‖², AdamW with warm-up and cosine decay, an EMA of the weights.
Every batch is rendered fresh from a seed that depends only on (run seed, step), and the noise / timesteps come from a
generator seeded the same way, so a resumed run continues exactly where the checkpoint left it.

Outputs in ``--out``:

    checkpoint.pt          full training state (model, EMA, optimiser, step), written atomically every --ckpt-every
    ddpm_train_log.jsonl   one line per --log-every steps: step, loss (mean since the last line), lr, seconds
    ddpm.pt                the EMA weights (fp16 unless --fp32) + config: the file the package ships
    samples.png            64 samples, 40-step DDIM from fixed noise (seed 0), with the shipped weights
    eval.json              reader on --eval-samples generated images; inversion → regeneration of real images
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from asyrp import diffusion, sampling
from asyrp.errors import UserError
from asyrp.io.files import (
    append_jsonl,
    atomic_json,
    atomic_path,
    atomic_torch_save,
    read_jsonl,
)
from asyrp.models.unet import DDPMUNet
from asyrp.worlds import shapes

FORMAT = "asyrp-shapes-ddpm-v1"


# --------------------------------------------------------------------------------------------------
# Sampling helpers (also used by the tests and the model card)
# --------------------------------------------------------------------------------------------------

def ddim_sample(model, x_T: torch.Tensor, n_steps: int = 40, batch_size: int = 250) -> torch.Tensor:
    """:func:`asyrp.sampling.sample` (DDIM, η = 0, t = 999 → x0) in chunks of ``batch_size`` images."""
    alphas = diffusion.alphas_cumprod(diffusion.linear_betas()).to(x_T.device)
    return torch.cat([sampling.sample(model, x, alphas, n_steps) for x in x_T.split(batch_size)])


def ddim_invert(model, x0: torch.Tensor, n_steps: int = 40, batch_size: int = 250) -> torch.Tensor:
    """:func:`asyrp.sampling.invert` (DDIM inversion x0 → x_999) in chunks of ``batch_size`` images."""
    alphas = diffusion.alphas_cumprod(diffusion.linear_betas()).to(x0.device)
    return torch.cat([sampling.invert(model, x, alphas, n_steps) for x in x0.split(batch_size)])


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 2, pad: int = 2) -> None:
    """[−1, 1] images → one PNG grid (nearest-neighbour upscaled ×``scale``), written atomically."""
    arr = shapes.to_uint8(images)
    n, s = arr.shape[0], arr.shape[1]
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (s + pad) + pad, nrow * (s + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (s + pad): pad + r * (s + pad) + s, pad + c * (s + pad): pad + c * (s + pad) + s] = arr[i]
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def fixed_noise(n: int, seed: int = 0, image_size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

def evaluate(model, n_samples: int = 1000, n_invert: int = 200, n_steps: int = 40, noise_seed: int = 1,
             data_seed: int = 987_654, log=print) -> dict:
    """Reader validity / attribute distribution of ``n_samples`` DDIM samples, and the reader's accuracy on
    ``n_invert`` real images after DDIM inversion + regeneration (both with ``n_steps`` steps)."""
    size = model.image_size
    device = next(model.parameters()).device  # noise and images are made on the CPU (seeded), the model may not be
    t0 = time.time()
    result: dict = {"n_steps": n_steps}
    if n_samples:
        x = ddim_sample(model, fixed_noise(n_samples, noise_seed, size).to(device), n_steps).cpu()
        reads = shapes.read_attributes(x)
        result["samples"] = dict(shapes.summarize_reads(reads), noise_seed=noise_seed,
                                 seconds=round(time.time() - t0, 1))
        log(f"reader on {n_samples} samples: valid {result['samples']['valid']:.3f} "
            f"({result['samples']['invalid_reasons']})")
    if n_invert:
        t1 = time.time()
        ds = shapes.ShapesDataset(n_invert, data_seed, size)
        x0 = ds.batch()
        xr = ddim_sample(model, ddim_invert(model, x0.to(device), n_steps), n_steps).cpu()
        reads = shapes.read_attributes(xr)
        acc = shapes.attribute_accuracy(reads, [s.attributes for s in ds.specs])
        result["inversion"] = {"n": n_invert, "data_seed": data_seed, "valid": sum(r["valid"] for r in reads) / n_invert,
                               "accuracy": acc, "mse": float(F.mse_loss(xr, x0)),
                               "seconds": round(time.time() - t1, 1)}
        log(f"inversion → regeneration of {n_invert} real images: valid {result['inversion']['valid']:.3f}, "
            f"all attributes kept {acc['all']:.3f}, mse {result['inversion']['mse']:.4f}")
    return result


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(v) for v in str(text).replace(" ", "").split(",") if v]


def model_config(args) -> dict:
    config = dict(ch=args.ch, out_ch=3, ch_mult=_ints(args.ch_mult), num_res_blocks=args.num_res_blocks,
                  attn_resolutions=_ints(args.attn), dropout=args.dropout, resamp_with_conv=True, in_channels=3,
                  image_size=args.image_size)
    if args.skip_resolutions:
        config["skip_resolutions"] = _ints(args.skip_resolutions)
    if args.h_only_from_t is not None:
        config["h_only_from_t"] = args.h_only_from_t
    if args.x0_from_t is not None:
        config["x0_from_t"] = args.x0_from_t
    return config


def loss_weights(t: torch.Tensor, a: torch.Tensor, x0_from_t: int | None) -> torch.Tensor:
    """Per-sample weights of the ε-MSE: 1, except (1 − ᾱ)/ᾱ at t ≥ ``x0_from_t`` (the model's ``x0_from_t``: where
    its head predicts x0, with ``h_only_from_t`` or ``x0_from_t``), which turns the ε error of an x0 head into the x0
    error ‖x̂0 − x0‖² (the ε weighting ᾱ/(1 − ᾱ) of x0 errors is 4e-5 at t = 999)."""
    w = torch.ones_like(t, dtype=torch.float32)
    if x0_from_t is None:
        return w
    return torch.where(t >= x0_from_t, ((1 - a) / a).view(-1).float(), w)


def hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate every pixel's RGB vector (images in [−1, 1]) about the gray axis (1, 1, 1)/√3 by ``angle`` (radians, one
    per image). Gray, white and black stay where they are and so does each colour's mean over channels; the hue turns.
    The map is orthogonal, so the rotated x_t of a noisy image is a noisy image of the rotated x0 with the same noise
    law (``--skip-hue-rotation``)."""
    k = torch.full((3,), 1 / math.sqrt(3), dtype=x.dtype, device=x.device)
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], dtype=x.dtype, device=x.device)
    cross = cross / math.sqrt(3)  # the matrix of v ↦ k × v
    c, s = angle.cos().view(-1, 1, 1).to(x.dtype), angle.sin().view(-1, 1, 1).to(x.dtype)
    rot = c * torch.eye(3, dtype=x.dtype, device=x.device) + s * cross + (1 - c) * torch.outer(k, k)
    return torch.einsum("bij,bjhw->bihw", rot, x)


def hue_blind_skips(model, x_t: torch.Tensor, t: torch.Tensor, skips: list[torch.Tensor],
                    generator: torch.Generator) -> list[torch.Tensor]:
    """The skips of ``model.encode`` on x_t hue-rotated by a random angle per image where t ≥ ``model.x0_from_t``, the
    given ``skips`` elsewhere: the decoder cannot read the object's hue from its skips there, so it must take it from
    h, while outline, size and background (unchanged by the rotation) stay readable in the skips."""
    angle = torch.rand(x_t.shape[0], generator=generator).to(x_t.device) * (2 * math.pi)
    _, rotated, _ = model.encode(hue_rotate(x_t, angle), t)
    high = (t >= model.x0_from_t).view(-1, 1, 1, 1)
    return [torch.where(high, r, s) for r, s in zip(rotated, skips)]


def color_partners(specs, seed: int) -> list:
    """For each spec, another of the same object colour with shape, size, position and background drawn afresh from
    ``seed`` (``--h-from-color-partner``)."""
    return [dataclasses.replace(p, color=s.color) for s, p in zip(specs, shapes.sample_specs(len(specs), seed))]


def perturb_h(h: torch.Tensor, t: torch.Tensor, h_only_from_t: int, scale: float,
              generator: torch.Generator) -> torch.Tensor:
    """h plus a random direction of length ``scale``·‖h‖ per sample at t ≥ ``h_only_from_t`` (``--h-noise``), h
    itself below: the decoder, which draws x0 from h alone there, learns to draw the same image from a nearby h, so
    that a short Δh changes what the decoder reads as meaningful rather than redrawing the outline."""
    n = torch.randn(h.shape, generator=generator).to(h.device)
    n = n / n.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    length = scale * h.detach().flatten(1).norm(dim=1) * (t >= h_only_from_t).to(h.dtype)
    return h + length.view(-1, 1, 1, 1) * n


def pixel_weights(specs, object_weight: float, image_size: int, per_area: bool = False) -> torch.Tensor:
    """(N, 1, S, S) per-pixel loss weights 1 + ``object_weight`` × the shape's coverage of the pixel (``--object-weight``).
    At t ≥ h_only_from_t the squared error is that of x0, so the object's colour must then come through h.

    ``per_area`` (``--object-weight-per-area``): each shape's coverage is scaled by the batch's mean shape area over
    its own, so every shape carries the same total weight: a small square's outline, which the noisy skips at high t
    hardly show, weighs as much as a large circle's."""
    masks = shapes.object_masks(specs, image_size)
    if per_area:
        area = masks.mean(dim=(1, 2, 3), keepdim=True)
        masks = masks * (area.mean() / area)
    return 1.0 + object_weight * masks


class AttributeReadout(torch.nn.Module):
    """A linear read-out of every attribute from the flattened bottleneck h (``--h-attribute-weight``).

    Trained with the DDPM (cross-entropy, summed over the attributes, on the forward-noised x_t of every step), it asks
    the encoder to write each attribute into h *linearly* — a supervised stand-in for the semantics a large DDPM's h
    holds after long training. Only the encoder feels it; the read-out is not part of the shipped U-Net."""

    def __init__(self, h_features: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(h_features, len(v))
                                          for k, v in shapes.ATTRIBUTES.items()})

    def loss(self, h: torch.Tensor, specs) -> torch.Tensor:
        flat = h.flatten(1).float()
        terms = []
        for key, head in self.heads.items():
            vocab = shapes.ATTRIBUTES[key]
            labels = torch.tensor([vocab.index(getattr(s, key)) for s in specs], device=h.device)
            terms.append(F.cross_entropy(head(flat), labels))
        return torch.stack(terms).sum()


def load_init_weights(model, path: str, config: dict) -> dict:
    """Start from a shipped ddpm.pt (fine-tuning); its config must equal ours apart from the x0 head's keys."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    head_keys = ("h_only_from_t", "x0_from_t")
    theirs = {k: v for k, v in obj["config"].items() if k not in head_keys}
    ours = {k: v for k, v in config.items() if k not in head_keys}
    if theirs != ours:
        raise ValueError(f"--init-from {path} has config {obj['config']}, which differs from {config} in more than "
                         "h_only_from_t / x0_from_t; pass the same network options")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()})
    return {"path": str(path), "steps": obj.get("meta", {}).get("steps")}


def stream_seed(seed: int, step: int) -> int:
    """The data / noise seed of one training step (independent of how the run was interrupted)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def export(ema_state: dict, config: dict, meta: dict, path: Path, fp16: bool = True) -> dict:
    """Write the shipped file: {"format", "config", "state_dict" (fp16 unless told; on the CPU, so that a file trained
    on a GPU loads anywhere), "meta"}."""
    sd = {k: (v.half() if fp16 and v.is_floating_point() else v).detach().cpu().clone() for k, v in ema_state.items()}
    obj = {"format": FORMAT, "config": config, "state_dict": sd, "meta": meta}
    atomic_torch_save(obj, path)
    return obj


def init_antisymmetric_output(model) -> None:
    """Make the output head pass the per-image mean (DC) of its features at initialisation.

    ``norm_out`` is GroupNorm(32) over ``ch × ch_mult[0]`` channels; with 64 channels every group is a pair, and a
    pair's common mean is removed per image. At high t the target ε ≈ x_t carries a per-channel DC of std 1/32 at
    32×32 while √ᾱ_999 = 0.0064, so a head that cannot reproduce that DC turns it into a flat colour shift of ±4.7 in
    the predicted x0 (DDIM from pure noise then ends in saturated flat colours), and Δh at the bottleneck cannot move
    the image's mean colour at all. Here the odd channel of every pair is initialised as the negative of the even one
    (rows of the last up-block's 1×1 shortcut and conv2), and conv_out reads each pair antisymmetrically: a pair
    (f, −f) has zero group mean, so norm gives (f, −f)/rms(f), and silu(z) − silu(−z) = z makes the head a linear,
    DC-preserving readout of f/rms(f). Only initial values change; training is unconstrained.
    """
    groups, channels = model.norm_out.num_groups, model.norm_out.num_channels
    if channels != 2 * groups:
        raise ValueError(f"--antisym-init needs exactly 2 channels per output GroupNorm group (ch × ch_mult[0] = 64), "
                         f"got {channels} channels in {groups} groups")
    block = model.up[0].block[-1]
    with torch.no_grad():
        for conv in (block.nin_shortcut, block.conv2):
            conv.weight[1::2] = -conv.weight[0::2]
            conv.bias[1::2] = -conv.bias[0::2]
        model.conv_out.weight[:, 1::2] = -model.conv_out.weight[:, 0::2]


def open_run(args: argparse.Namespace, log_name: str) -> tuple[torch.device, Path, Path, Path]:
    """Threads, device and the output folder of a training run: (device, out, checkpoint path, log path)."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return torch.device(args.device), out, out / "checkpoint.pt", out / log_name


def load_resume_checkpoint(args: argparse.Namespace, ckpt_path: Path, log_path: Path, config: dict,
                           device: torch.device) -> dict | None:
    """The checkpoint to continue from (``--resume`` and one exists; its config must match), with the log cut back to
    its step; otherwise None, and a stale log from an earlier run is removed."""
    if not (args.resume and ckpt_path.exists()):
        if log_path.exists():
            log_path.unlink()
        return None
    ck = torch.load(ckpt_path, map_location=device, weights_only=True)
    if ck["config"] != config:
        raise ValueError(f"{ckpt_path} was trained with {ck['config']}, not {config}; use the same options")
    print(f"resumed from {ckpt_path} at step {ck['step']}")
    if log_path.exists():  # drop lines written after the checkpoint
        keep = [r for r in read_jsonl(log_path) if r["step"] <= ck["step"]]
        with atomic_path(log_path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return ck


def checkpoint_or_stop(step: int, args: argparse.Namespace, save_checkpoint, bar) -> bool:
    """After a training step: checkpoint every --ckpt-every steps, at the end and at --stop-at; True means stop now
    (--stop-at reached: exit without exporting, as if interrupted)."""
    if step % args.ckpt_every == 0 or step == args.steps or step == args.stop_at:
        save_checkpoint()
    if step != args.stop_at:
        return False
    bar.close()
    print(f"stopped at step {step} (--stop-at); continue with --resume")
    return True


def last_logged_loss(log_path: Path) -> float:
    """Mean loss of the last 10 loss lines of the log (NaN without any): the final loss the shipped file records."""
    records = [r for r in read_jsonl(log_path) if "loss" in r] if log_path.exists() else []  # skip probe lines
    return float(np.mean([r["loss"] for r in records[-10:]])) if records else float("nan")


def train(args: argparse.Namespace) -> int:
    """Train (or resume) the tiny DDPM with the options of ``asyrp train-backbone`` (:mod:`asyrp.cli.train_backbone`);
    writes OUT/ddpm.pt and its log. Returns 0 (an exit status: the CLI returns it)."""
    if args.h_noise and args.h_only_from_t is None:
        raise UserError("--h-noise perturbs h where the decoder reads it alone: give --h-only-from-t T as well")
    if args.skip_hue_rotation and args.x0_from_t is None:
        raise UserError("--skip-hue-rotation rotates the skips where the decoder predicts x0: give --x0-from-t T "
                        "as well")
    if args.h_from_color_partner and not args.skip_hue_rotation:
        raise UserError("--h-from-color-partner leaves the colour to h only if the skips cannot show it: give "
                        "--skip-hue-rotation as well")
    if args.object_weight_per_area and not args.object_weight:
        raise UserError("--object-weight-per-area scales the object's weight: give --object-weight W as well")
    device, out, ckpt_path, log_path = open_run(args, "ddpm_train_log.jsonl")

    config = model_config(args)
    torch.manual_seed(args.seed)
    model = DDPMUNet(config).to(device)
    init_from = None
    if args.init_from:
        init_from = load_init_weights(model, args.init_from, config)
    elif args.antisym_init:
        init_antisymmetric_output(model)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    readout = AttributeReadout(model.h_channels * model.h_size ** 2).to(device) if args.h_attribute_weight else None
    params = list(model.parameters()) + (list(readout.parameters()) if readout is not None else [])
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    step, elapsed = 0, 0.0
    ck = load_resume_checkpoint(args, ckpt_path, log_path, config, device)
    if ck is not None:
        model.load_state_dict(ck["model"])
        if readout is not None:
            readout.load_state_dict(ck["readout"])
        ema = ck["ema"]
        opt.load_state_dict(ck["optimizer"])
        step, elapsed = ck["step"], ck["seconds"]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"DDPMUNet {config}: {n_params:,} parameters, h = ({model.h_channels}, {model.h_size}, {model.h_size})")

    alphas = diffusion.alphas_cumprod(diffusion.linear_betas()).to(device)

    def save_checkpoint():
        state = {"config": config, "model": model.state_dict(), "ema": ema, "optimizer": opt.state_dict(),
                 "step": step, "seconds": elapsed, "args": vars(args)}
        if readout is not None:
            state["readout"] = readout.state_dict()
        atomic_torch_save(state, ckpt_path)

    model.train()
    losses: list[float] = []
    aux_losses: list[float] = []
    t_last = time.time()
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, desc="train-backbone", dynamic_ncols=True)
    while step < args.steps:
        s_seed = stream_seed(args.seed, step)
        x0, specs = shapes.random_batch(args.batch_size, s_seed, args.image_size)
        g = torch.Generator().manual_seed(s_seed)
        t = torch.randint(0, diffusion.NUM_TIMESTEPS, (args.batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        if args.offset_noise:
            eps = eps + args.offset_noise * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=g)
        x0, t, eps = x0.to(device), t.to(device), eps.to(device)
        a = diffusion.alpha_bar(alphas, t)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        lr = lr_at(step, args)
        for group in opt.param_groups:
            group["lr"] = lr
        h_specs = specs
        if args.h_from_color_partner:  # h of a same-colour partner where t ≥ x0_from_t, of the image itself below
            high = t >= model.x0_from_t
            h_specs = [q if hi else p for p, q, hi in zip(specs, color_partners(specs, s_seed + 1), high.tolist())]
            x_h = a.sqrt() * shapes.make_batch(h_specs, args.image_size).to(device) + (1 - a).sqrt() * eps
            h, skips, temb = model.encode(torch.where(high.view(-1, 1, 1, 1), x_h, x_t), t)
        else:
            h, skips, temb = model.encode(x_t, t)
        h_in = perturb_h(h, t, args.h_only_from_t, args.h_noise, g) if args.h_noise else h
        if args.skip_hue_rotation:
            skips = hue_blind_skips(model, x_t, t, skips, g)
        sq_err = (model.decode(h_in, skips, temb, x_t, t) - eps).pow(2)
        if args.object_weight:
            sq_err = sq_err * pixel_weights(specs, args.object_weight, args.image_size,
                                           args.object_weight_per_area).to(device)
        per_sample = sq_err.mean(dim=(1, 2, 3))
        ddpm_loss = (per_sample * loss_weights(t, a, model.x0_from_t)).mean()
        loss = ddpm_loss
        if readout is not None:
            aux = readout.loss(h, h_specs)
            aux_losses.append(float(aux.detach()))
            loss = ddpm_loss + args.h_attribute_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        opt.step()
        step += 1
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        losses.append(float(ddpm_loss.detach()))  # the DDPM loss alone (the read-out's is logged apart)
        now = time.time()
        elapsed += now - t_last
        t_last = now
        bar.update(1)
        if step % args.log_every == 0 or step == args.steps:
            record = {"step": step, "loss": round(sum(losses) / len(losses), 6), "lr": lr, "seconds": round(elapsed, 1)}
            if aux_losses:
                record["h_attribute_loss"] = round(sum(aux_losses) / len(aux_losses), 6)
            append_jsonl(log_path, record)
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
            losses, aux_losses = [], []
        if checkpoint_or_stop(step, args, save_checkpoint, bar):
            return 0
    bar.close()

    final_loss = last_logged_loss(log_path)
    meta = {"steps": step, "batch_size": args.batch_size, "lr": args.lr, "ema_decay": args.ema_decay,
            "seed": args.seed, "train_seconds": round(elapsed, 1), "final_loss_last10_logs": round(final_loss, 6),
            "parameters": n_params, "h_shape": [model.h_channels, model.h_size, model.h_size],
            "weights": "fp32" if args.fp32 else "fp16", "schedule": "linear 1e-4..0.02, T=1000, eps-prediction",
            "offset_noise": args.offset_noise, "antisym_init": args.antisym_init, "threads": args.threads,
            "h_only_from_t": args.h_only_from_t, "init_from": init_from, "object_weight": args.object_weight,
            "object_weight_per_area": args.object_weight_per_area,
            "h_attribute_weight": args.h_attribute_weight, "h_noise": args.h_noise,
            "x0_from_t": args.x0_from_t,
            "skip_hue_rotation": args.skip_hue_rotation, "h_from_color_partner": args.h_from_color_partner,
            "data": "asyrp.worlds.shapes.random_batch(batch, stream_seed(seed, step)), 32x32"}
    obj = export(ema, config, meta, out / "ddpm.pt", fp16=not args.fp32)
    shipped = shapes.ddpm_from_checkpoint(obj, device)
    print(f"trained {step} steps in {elapsed / 60:.1f} min; final loss {final_loss:.4f}; wrote {out / 'ddpm.pt'}")

    noise = fixed_noise(64, 0, args.image_size).to(device)
    grid = ddim_sample(shipped, noise, args.sample_steps)
    save_grid(grid, out / "samples.png")
    ref = DDPMUNet(config).to(device).eval()
    ref.load_state_dict(ema)
    fp_diff = float((ddim_sample(ref, noise, args.sample_steps) - grid).abs().max())
    print(f"wrote {out / 'samples.png'}; max |Δ| of those samples, fp32 EMA vs shipped weights: {fp_diff:.2e}")

    report = {"config": config, "meta": meta, "grid_max_abs_diff_fp32_vs_shipped": fp_diff}
    if args.eval_samples or args.eval_invert:
        report.update(evaluate(shipped, args.eval_samples, args.eval_invert, args.sample_steps))
    atomic_json(out / "eval.json", report)
    print(f"wrote {out / 'eval.json'}")
    return 0
