"""``asyrp bench``: throughput of training and editing in the reference and the fast mode, and the numerical guard of
the fast path.

What runs
---------
Both modes run in one process on the same randomly initialised models (no download): the CelebA-HQ U-Net
(``DDPMUNet(CELEBA_HQ_256)``, 113.7 M parameters) and CLIP ViT-B/16 (open_clip, QuickGELU, 224 px), or with ``--tiny`` a
reduced U-Net (16 px, h = 64×4×4) and a tiny open_clip CLIP (16 px) that run on a CPU in seconds. The attribute is
``smiling`` (t_edit 513, t_boost 167, λ_CLIP 0.8) with the official conv delta block.

* **reference**: ``TrainConfig`` with ``PRESETS["reference"]`` (fp32, batch 1, the separate unedited DDIM chain as L1
  target, source embeddings re-encoded every step) and editing at batch 1 in fp32.
* **fast**: ``PRESETS["fast"]`` (bf16 autocast, ``same_xt`` L1 target, cached source embeddings, channels_last U-Net)
  at ``--train-batch`` (default 9) and editing in bf16 at ``--edit-batch`` (default 16); ``--compile`` sets
  ``TrainConfig.compile`` (which, as in :func:`asyrp.train.train`, compiles the delta block).

Training runs the library's own step loop, :func:`asyrp.train._train_batch`, on objects built the way
:func:`asyrp.train.train` builds them (:class:`TrainSession`). Editing runs :func:`asyrp.sampling.invert` and
:func:`asyrp.sampling.generate` under the precision's autocast, as :func:`asyrp.edit.edit` does (:func:`edit_images`).

Measurements
------------
* training: ``--train-warmup`` steps first (not timed), then ``--repeats`` calls of ``_train_batch`` over the first
  ``--train-steps`` steps of the training grid (t ≥ t_edit: 19 steps at n_train_step 40, t_edit 513; 0 = the whole
  grid). Seconds per image = seconds per step × grid steps / batch size (extrapolated unless the whole grid is timed);
  images/s = its inverse: images through the full training grid per second.
* editing: one warm-up batch on a 4-step grid (not timed), then ``--repeats`` batches of inversion (n_inv_step = 40:
  39 U-Net passes) + edited generation (n_test_step = 40 passes, Δh where t ≥ 513, η = 1 below 167); per image =
  seconds per batch / batch size. The reconstruction pass of ``asyrp precompute`` is not part of it.
* ``torch.cuda.synchronize`` closes every timed region; peak memory is ``torch.cuda.max_memory_allocated`` over the
  timed region (on a CPU: the process's maximum RSS, which only grows through the run).
* FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` on single steps, scaled by the step counts (see
  :data:`FLOPS_COUNTED`); achieved TFLOP/s = FLOPs per image × images/s; the fraction of the device's dense bf16 peak
  where the device is known (H100 SXM / H200: 989 TFLOP/s).

The result is one JSON line on stdout (a table on stderr); ``--out FILE`` appends it to FILE, and on a GPU it is
appended to ``<results-dir>/<date>_<gpu>.jsonl``. Keys: see :func:`run_benchmark` and ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from asyrp import diffusion as D
from asyrp import sampling
from asyrp import train as T

SCHEMA = "asyrp.bench/1"

# A U-Net small enough for a CPU (h is (B, 64, 4, 4)); the layout of the CelebA-HQ model.
TINY_UNET = dict(ch=32, out_ch=3, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0,
                 resamp_with_conv=True, in_channels=3, image_size=16)
# A tiny open_clip CLIP at 16 px (OpenAI's tokenizer: vocabulary 49408, context 77).
TINY_CLIP_CFG = dict(embed_dim=32, vision_cfg=dict(image_size=16, patch_size=4, width=64, layers=2, head_width=32),
                     text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2), quick_gelu=True)

ATTRIBUTE = "smiling"   # the attribute table gives t_edit 513, t_boost 167, λ_CLIP 0.8
T_EDIT, T_BOOST, T_0 = 513, 167, 999

FLOPS_COUNTED = ("torch.utils.flop_counter.FlopCounterMode: matrix multiplies (mm, addmm, bmm, baddbmm), convolutions, "
                 "CUDA scaled-dot-product attention, and their backward passes, at 2 FLOPs per multiply-add; "
                 "elementwise ops, normalisations, softmax outside SDPA, resizes and the optimiser are not counted "
                 "(nor, on a CPU, SDPA's flash kernel). Training: per-batch work + (grid steps - 1) typical steps "
                 "(forward, CLIP, L1 target, backward) + the last step, from counted 1-, 2-step and last-step calls "
                 "of _train_batch, per image; editing: one inversion step, one plain and one edited generation "
                 "step, each times its number of steps, per image.")


def bf16_peak_tflops(device_name: str | None) -> float | None:
    """Dense bf16 tensor-core peak of known devices (H100 SXM and H200: 989 TFLOP/s); None otherwise."""
    if not device_name:
        return None
    name = device_name.upper()
    if "NVL" in name or "PCIE" in name:
        return None
    if "H200" in name or ("H100" in name and ("SXM" in name or "HBM3" in name)):
        return 989.0
    return None


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------

@dataclass
class BenchModels:
    backbone: object        # asyrp.backbones.Backbone
    encoder: object         # asyrp.clip_loss.OpenClipEncoder
    clip_size: int
    description: dict


def build_models(tiny: bool = False, device: str | torch.device = "cpu", seed: int = 0) -> BenchModels:
    """Randomly initialised U-Net and CLIP (full size: CelebA-HQ 256 U-Net, ViT-B/16; ``tiny``: the reduced pair)."""
    import open_clip

    from asyrp.backbones import Backbone
    from asyrp.clip_loss import OpenClipEncoder
    from asyrp.models.unet import CELEBA_HQ_256, DDPMUNet

    device = torch.device(device)
    torch.manual_seed(seed)
    unet = DDPMUNet(TINY_UNET if tiny else CELEBA_HQ_256)
    if tiny:
        clip, clip_name, size = open_clip.model.CLIP(**TINY_CLIP_CFG), "tiny CLIP (open_clip, 16 px)", 16
    else:
        clip = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
        clip_name, size = "ViT-B-16 (open_clip, QuickGELU, 224 px)", 224
    encoder = OpenClipEncoder(clip.float(), open_clip.get_tokenizer("ViT-B-16"), name=clip_name).to(device)
    unet = unet.to(device).eval().requires_grad_(False)
    backbone = Backbone(unet, "bench-tiny" if tiny else "bench-celeba-hq-256", f"random-init-seed{seed}", "celeba",
                        clip_name)
    description = {"unet": "TINY_UNET (16 px)" if tiny else "DDPMUNet(CELEBA_HQ_256)",
                   "unet_config": dict(unet.config), "unet_params": sum(p.numel() for p in unet.parameters()),
                   "clip": clip_name, "clip_params": sum(p.numel() for p in clip.parameters()),
                   "h": [unet.h_channels, unet.h_size, unet.h_size], "weights": f"random (seed {seed})"}
    return BenchModels(backbone, encoder, size, description)


# --------------------------------------------------------------------------------------------------
# Configs and the training step loop of asyrp.train
# --------------------------------------------------------------------------------------------------

def mode_config(mode: str, batch_size: int | None = None, compile: bool = False, device=None,
                **overrides) -> T.TrainConfig:
    """The TrainConfig of a benchmark mode: the attribute and schedule, then PRESETS[mode], then the batch size."""
    base = dict(attribute=ATTRIBUTE, t_edit=T_EDIT, t_boost=T_BOOST, t_0=T_0, n_train_step=40,
                device=str(device) if device is not None else None)
    data = {**base, **T.PRESETS[mode]}
    if batch_size is not None:
        data["batch_size"] = batch_size
    if compile:
        data["compile"] = True
    data.update(overrides)
    cfg = T.TrainConfig(**data)
    cfg.validate()
    return cfg


SPEED_FIELDS = ("precision", "batch_size", "l1_reference", "cache_source_embeddings", "channels_last", "compile",
                "tf32")


def speed_switches(cfg: T.TrainConfig) -> dict:
    return {k: getattr(cfg, k) for k in SPEED_FIELDS}


# The objects a training run steps with, and its speed settings, exactly as asyrp.train builds them.
TrainSession = T.Session
apply_speed_settings = T.apply_speed_settings
make_direction = T.make_direction


def log_values(records: list[dict]) -> list[dict]:
    """Log records with their loss tensors as floats."""
    return [{k: (float(v) if torch.is_tensor(v) else v) for k, v in r.items()} for r in records]


# --------------------------------------------------------------------------------------------------
# Editing (the library's samplers, as asyrp.edit.edit calls them)
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def edit_images(unet, x0: torch.Tensor, delta, alphas: torch.Tensor, indices, precision: str = "fp32",
                n_inv_step: int = 40, n_test_step: int = 40, t_0: int = T_0, t_edit: int = T_EDIT,
                t_boost: int | None = T_BOOST, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inversion then edited generation of a batch: returns (x_T, edited).

    ``indices`` name the images: boost noise comes from one generator per image (``sampling.image_generators``), so an
    image gets the same edit in any batch. ``delta`` is a block or ``sampling.DeltaSum``; under ``precision="bf16"``
    both samplers run in bf16 autocast (the DDIM maths stays fp32, as in asyrp.edit).
    """
    with T.autocast(x0.device, precision):
        x_T = sampling.invert(unet, x0, alphas, n_inv_step, t_0)
        edited = sampling.generate(unet, x_T, alphas, n_test_step, t_0, delta=delta, t_edit=t_edit, t_boost=t_boost,
                                   noise_generators=sampling.image_generators(seed, indices))
    return x_T, edited


# --------------------------------------------------------------------------------------------------
# Timing, memory, FLOPs
# --------------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)
    except (ImportError, OSError):
        return None


def memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated over the timed region (bytes)"
    return "process maximum RSS (bytes; ru_maxrss, cumulative over the whole run, not per mode)"


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def train_flops_per_image(session: TrainSession, entries: list[dict], idx: list[int]) -> float:
    """FLOPs per image of the whole training grid from short counted calls of ``_train_batch``: the first step
    (per-batch work O + a typical step S), the first two (O + 2S) and the last alone (O + L; the last step skips the
    plain decoder in ``chain`` mode): O + (n − 1)·S + L. Runs optimiser steps on the session's block."""
    pairs, bs = session.pairs, len(idx)

    def flops(steps):
        return count_flops(lambda: session.run_batch(entries, idx, steps, eager=True))

    one = flops(pairs[:1])
    if len(pairs) == 1:
        return one / bs
    step = flops(pairs[:2]) - one
    last = flops(pairs[-1:])  # O + L
    return (one + (len(pairs) - 2) * step + last - (one - step)) / bs


def edit_flops_per_image(unet, x0: torch.Tensor, delta, alphas: torch.Tensor, precision: str = "fp32",
                         n_inv_step: int = 40, n_test_step: int = 40, t_0: int = T_0, t_edit: int = T_EDIT) -> float:
    """FLOPs per image of inversion + edited generation from counted single steps: a plain U-Net pass (one inversion
    step) and a 2-step generation (t_0 edited, 0 plain), each scaled by its number of steps."""
    with torch.no_grad(), T.autocast(x0.device, precision):
        f_plain = count_flops(lambda: sampling.invert(unet, x0, alphas, 2, t_0))
        f_gen2 = count_flops(lambda: sampling.generate(unet, x0, alphas, 2, t_0, delta=delta, t_edit=t_edit))
    f_edit = f_gen2 - f_plain
    n_edited = sum(t >= t_edit for t, _ in D.generative_pairs(n_test_step, t_0))
    return ((n_inv_step - 1) * f_plain + n_edited * f_edit + (n_test_step - n_edited) * f_plain) / x0.shape[0]


def _images(n: int, size: int, seed: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 2 - 1).to(device)


def _entries(n: int, size: int, seed: int) -> list[dict]:
    """Stand-in training entries (x0 in [−1, 1], x_T ~ N(0, I)): the timing does not depend on their values."""
    g = torch.Generator().manual_seed(seed + 1)
    x0 = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    x_T = torch.randn(n, 3, size, size, generator=g)
    return [{"name": f"bench{i}", "x0": x0[i], "x_T": x_T[i]} for i in range(n)]


def _finish(out: dict, flops_per_image: float, peak: float | None) -> dict:
    out["images_per_s"] = 1.0 / out["s_per_image"]
    out["flops_per_image"] = flops_per_image
    out["tflops_achieved"] = flops_per_image * out["images_per_s"] / 1e12
    out["peak_fraction"] = out["tflops_achieved"] / peak if peak else None
    return out


def bench_train(models: BenchModels, direction, cfg: T.TrainConfig, device, warmup_steps: int = 2,
                timed_steps: int = 5, repeats: int = 2, peak_tflops: float | None = None, seed: int = 0) -> dict:
    """Training throughput of one mode through ``asyrp.train._train_batch``."""
    device = torch.device(device)
    session = TrainSession(cfg, models.backbone, direction, device)
    bs, pairs = cfg.batch_size, session.pairs
    entries, idx = _entries(bs, models.backbone.unet.image_size, seed), list(range(bs))
    timed = pairs if timed_steps <= 0 or timed_steps >= len(pairs) else pairs[:timed_steps]
    if warmup_steps > 0:
        session.run_batch(entries, idx, pairs[:warmup_steps])
    _sync(device)
    _reset_peak(device)
    start = time.perf_counter()
    for _ in range(repeats):
        session.run_batch(entries, idx, timed)
    _sync(device)
    seconds = time.perf_counter() - start
    peak_mem = _peak_memory(device)
    s_per_step = seconds / (repeats * len(timed))
    flops = train_flops_per_image(session, entries, idx)
    out = {"batch_size": bs, "config": speed_switches(cfg), "grid_steps": len(pairs), "warmup_steps": warmup_steps,
           "timed_steps": len(timed), "repeats": repeats, "extrapolated": len(timed) < len(pairs),
           "seconds_timed": seconds, "s_per_step": s_per_step, "s_per_image": s_per_step * len(pairs) / bs,
           "peak_memory": peak_mem}
    return _finish(out, flops, peak_tflops)


def bench_edit(models: BenchModels, block, precision: str, batch_size: int, device, repeats: int = 2,
               n_inv_step: int = 40, n_test_step: int = 40, peak_tflops: float | None = None, seed: int = 0) -> dict:
    """Editing throughput (inversion + edited generation) of one precision / batch size."""
    device = torch.device(device)
    unet = models.backbone.unet
    unet.to(memory_format=torch.contiguous_format)  # asyrp.edit does not change the memory format
    alphas = D.alphas_cumprod(D.linear_betas()).to(device)
    delta = sampling.DeltaSum([block], [1.0])  # strength 1, n_train_step = n_test_step
    x0 = _images(batch_size, unet.image_size, seed, device)
    idx = list(range(batch_size))

    def run(n_inv=n_inv_step, n_test=n_test_step):
        return edit_images(unet, x0, delta, alphas, idx, precision, n_inv, n_test)

    run(4, 4)  # warm-up (not timed)
    _sync(device)
    _reset_peak(device)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    _sync(device)
    seconds = time.perf_counter() - start
    peak_mem = _peak_memory(device)
    flops = edit_flops_per_image(unet, x0, delta, alphas, precision, n_inv_step, n_test_step)
    n_edited = sum(t >= T_EDIT for t, _ in D.generative_pairs(n_test_step, T_0))
    out = {"batch_size": batch_size, "config": {"precision": precision, "batch_size": batch_size},
           "n_inv_step": n_inv_step, "n_test_step": n_test_step, "edited_steps": n_edited, "repeats": repeats,
           "seconds_timed": seconds, "s_per_image": seconds / (repeats * batch_size), "peak_memory": peak_mem}
    return _finish(out, flops, peak_tflops)


def _ratio(fast: dict, ref: dict) -> dict:
    def r(k):
        a, b = fast.get(k), ref.get(k)
        return a / b if a is not None and b else None
    return {k: r(k) for k in ("images_per_s", "s_per_image", "peak_memory", "flops_per_image", "tflops_achieved")}


# --------------------------------------------------------------------------------------------------
# Numerical guard
# --------------------------------------------------------------------------------------------------

GUARD_BOUNDS = {
    "eps_edit_rel_err": 5e-2,
    "loss_clip_rel_err": 5e-2,
    "loss_l1_scaled_err": 5e-2,
    "loss_scaled_err": 5e-2,
    "inversion_ratio": 1.1,
    "inversion_floor": 2e-2,
    "delta_h_cosine": 0.98,
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def numerical_guard(unet, encoder, clip_size: int, *, device=None, batch_size: int = 4, n_train_step: int = 20,
                    n_inv_step: int = 40, inversion_t_0: int = 400, lr: float = 5e-4, seed: int = 0,
                    fast: dict | None = None, bounds: dict | None = None, backbone=None) -> dict:
    """Fast vs reference mode on the same inputs; returns ``{"passed", "checks", "reported", "warnings", ...}``.

    Settings: attribute ``smiling`` (t_edit 513), ``batch_size`` images x0 (uniform in [−1, 1]), x_T their fp32 DDIM
    inversion (40 steps to t = 999, as the cache). *Reference*: PRESETS["reference"] (fp32, batch 1, chain L1 target,
    no caching, contiguous). *Fast*: PRESETS["fast"] (bf16 autocast, same_xt, cached source embeddings,
    channels_last) at batch ``batch_size``, updated with ``fast``. ``checks`` hold ``value``, ``bound``, ``passed``;
    ``passed`` is their conjunction. ``bounds`` overrides :data:`GUARD_BOUNDS`. Measured values quoted below are
    from the tiny U-Net / tiny CLIP of the tests (random weights, seeds 0–2) and, for ε, the full CelebA-HQ U-Net on a
    CPU (random weights).

    * ``eps_edit_rel_err`` = ‖ε̃_fast − ε̃_ref‖/‖ε̃_ref‖ of ``forward_edit`` at the first training timestep and at
      t_edit (the max), ≤ 5e-2. bf16 keeps 8 significant bits (unit round-off 2⁻⁹ ≈ 2e-3); autocast rounds the
      inputs and the output of every convolution / matmul, so each layer adds ~1e-3 relative error and the U-Net's
      layers (GroupNorm renormalising between them) add up to ~1e-2: measured 1.8–2.1e-2 (tiny) and 0.93e-2 (full
      size). 5e-2 leaves 2.5× headroom and still fails on real bugs (a lost Δh, a wrong memory format or dtype in
      the maths give errors of order 1).
    * The training loss of the first step of ``_train_batch`` in both modes (same x_T, same initial block, both at
      ``batch_size``: at the first step ``chain`` and ``same_xt`` give the same L1 target and caching is exact, so
      only rounding differs):

      - ``loss_clip_rel_err``: relative error of the CLIP term, ≤ 5e-2. The image embeddings carry the ~1e-2 error of
        the edited prediction and of the bf16 ViT; −log((1 + m)/2) is O(1). Measured 0.25–1.5e-2.
      - ``loss_l1_scaled_err`` = |L1_fast − L1_ref| / S, ≤ 5e-2, with S = √((1−ᾱ_t)/ᾱ_t) · mean|ε_ref| the size of
        the operands of the L1 difference P_edit − P_ref = −√((1−ᾱ_t)/ᾱ_t) (ε̃ − ε). The two decoders round
        independently, so the error of the difference is ~√2 × 1e-2 of its *operands*, not of the difference: where
        the edit moves ε by less than ~1 % (0.25 % at initialisation on the full-size random U-Net) bf16 noise
        dominates the L1 value, whose plain relative error (reported: ``loss_l1_rel_err``) is then of order 1 (3.2 in
        that measurement). Relative to S it is a bf16-sized error. Measured 0.4–1.7e-3 (tiny).
      - ``loss_scaled_err`` = |L_fast − L_ref| / (λ_CLIP·L_clip,ref + λ_L1·cos_text·S), ≤ 5e-2: the total loss on the
        same scale (its plain relative error is reported as ``loss_rel_err``).
    * ``inversion_error``: DDIM inversion and reconstruction (``n_inv_step`` steps up to ``inversion_t_0``, η = 0) in
      each mode's precision; e = ‖x_rec − x0‖/‖x0‖; bound ``e_fast ≤ 1.1·e_ref + 2e-2``. e_ref is DDIM's own
      discretisation error. bf16 adds per-step ε errors of ~1e-2 relative (‖ε‖ ≲ ‖x0‖) entering through the same step
      coefficients, uncorrelated with it and across steps, so they add ≲ 2e-2 of ‖x0‖ in quadrature; the 10 % allows
      for a changed amplification along sensitive trajectories. Measured e_ref 0.059, e_fast 0.064 (tiny,
      t_0 = 400). The default ``inversion_t_0 = 400`` is for *untrained* networks: with random weights and t_0 = 999
      the reconstruction is chaotic (e_ref ≈ 40–70 on the tiny U-Net) and the check vacuous (``informative`` is
      False when e_ref ≥ 1); with trained weights use 999.
    * ``delta_h_cosine`` ≥ 0.98: one epoch over the ``batch_size`` images on an ``n_train_step`` grid (10 steps at
      20, t_edit 513), SGD at ``lr``, through :func:`asyrp.train.train`, in the reference mode and in the fast mode
      **with l1_reference="chain"** (so precision, batching, caching and memory format differ, the objective does
      not). Compared: the *learnt change* of the blocks' outputs, f_fast(h) − f_0(h) vs f_ref(h) − f_0(h) (f_0 the
      common initialisation), on the h of every image at every trained timestep. The raw outputs are dominated by
      f_0 after a short run; their cosine (≥ 0.999 here) is reported as ``delta_h_cosine_raw``. Batch 1 takes
      ``batch_size`` times more SGD steps of single-image gradients than the batch takes of their mean, which is the
      same direction only to first order in ``lr`` — hence the small ``lr`` (at lr 5e-4 fp32 batch 1 vs batch 2 give
      0.9998; at 0.05, 0.74). Why 0.98 and not 0.99: the L1 term's gradient is sign(P_edit − P_ref) per pixel, and
      bf16 flips the sign wherever |P_edit − P_ref| is below its rounding noise, so bf16 perturbs the learnt change by
      ~1 % in angle even at equal batching (fp32 vs bf16, L1 only: 0.986; CLIP only: 0.998). Measured (fast chain vs
      reference): 0.989–0.993; a different objective (``same_xt`` vs ``chain``) gives 0.88–0.90 on the same run, so
      0.98 separates rounding from a changed computation; 0.99 would fail on seed 1. The check needs an initial edit
      above bf16's resolution: on the full-size random-weight U-Net (H200, edit_size 1.35e-3) it gave 0.635, and
      ``benchmarks/guard_edit_size.py`` shows why on the tiny models — with the initial block scaled so that
      edit_size is 2.6e-3 it drops to 0.48–0.56, and to 0.99 again with λ_L1 = 0: the L1 term's sign(P_edit − P_ref)
      is then rounding noise (benchmarks/README.md).
    * Reported, not bounded: the fast mode as shipped (``same_xt``) against the chain run and the reference
      (``delta_h_cosine_same_xt_vs_chain``, ``delta_h_cosine_fast_vs_reference``): ``same_xt`` changes the L1 target
      after the first step (the plain decoder at the edited trajectory's x_t instead of the unedited chain's x_t), a
      different objective, not a rounding effect.
    * Reported with a warning: ``p_edit_err_vs_image`` = √((1−ᾱ_t)/ᾱ_t)·‖δε̃‖/‖x0‖, the mode difference of the
      predicted x0 that the CLIP and L1 terms see, per probed t. The factor is 157 at t = 999, 20 at 768, 4.3 at 538:
      bf16's ~1e-2 ε error becomes an error of the order of the image itself at the top of the training grid
      (measured 1.1 at t = 999 with ε rms 0.32; a trained U-Net has ε rms ≈ 1). Loss values with random weights do
      not show it (their P_t is itself ~157× the image scale), which is why it is reported separately.
    """
    from asyrp.backbones import Backbone
    from asyrp.models.delta import DeltaBlockConfig, load_delta_block

    bounds = {**GUARD_BOUNDS, **(bounds or {})}
    device = torch.device(device if device is not None else next(unet.parameters()).device)
    unet = unet.to(device).eval().requires_grad_(False)
    if backbone is None:
        backbone = Backbone(unet, "guard", "random-init", "celeba", "custom")
    size = unet.image_size
    alphas = D.alphas_cumprod(D.linear_betas()).to(device)
    if fast and "batch_size" in fast:
        raise ValueError("the guard's fast mode runs at batch_size (the number of guard images); pass batch_size")
    ref_cfg = mode_config("reference", device=device, n_train_step=n_train_step, lr=lr, seed=seed + 1234)
    fast_cfg = mode_config("fast", batch_size=batch_size, device=device, n_train_step=n_train_step, lr=lr,
                           seed=seed + 1234, **(fast or {}))
    checks, reported, warnings = {}, {}, []

    def check(name, value, bound, lower=False):
        ok = bool(value >= bound) if lower else bool(value <= bound)
        checks[name] = {"value": value, "bound": bound, "passed": ok and math.isfinite(value)}

    # --- inversion -> reconstruction, fp32 vs bf16 (also gives the training entries: fp32 inversions) ---------------
    x0 = _images(batch_size, size, seed, device)
    recon = {}
    for name, cfg in (("reference", ref_cfg), ("fast", fast_cfg)):
        apply_speed_settings(cfg, unet, device)
        with torch.no_grad(), T.autocast(device, cfg.precision):
            x_T = sampling.invert(unet, x0, alphas, n_inv_step, inversion_t_0)
            x_rec = sampling.generate(unet, x_T, alphas, n_inv_step, inversion_t_0)
        recon[name] = (x_T.float(), _rel(x_rec.float(), x0))
    e_ref, e_fast = recon["reference"][1], recon["fast"][1]
    bound = bounds["inversion_ratio"] * e_ref + bounds["inversion_floor"]
    check("inversion_error", e_fast, bound)
    checks["inversion_error"].update({"e_ref": e_ref, "e_fast": e_fast, "t_0": inversion_t_0,
                                      "n_inv_step": n_inv_step, "informative": e_ref < 1.0})
    reported["x_T_rel_diff"] = _rel(recon["fast"][0], recon["reference"][0])
    apply_speed_settings(ref_cfg, unet, device)
    with torch.no_grad():
        x_T = sampling.invert(unet, x0, alphas, 40, T_0)  # the training entries: fp32 inversions (as the cache)
    entries = [{"name": f"guard{i}", "x0": x0[i].cpu(), "x_T": x_T[i].cpu()} for i in range(batch_size)]

    # --- edited forward and first-step loss on the same inputs ----------------------------------------------------
    direction = make_direction(encoder, clip_size, ref_cfg, device)
    sessions = {}
    for name, cfg in (("reference", dataclasses.replace(ref_cfg, batch_size=batch_size)), ("fast", fast_cfg)):
        sessions[name] = TrainSession(cfg, backbone, direction, device)  # same seed: same initial block
    idx = list(range(batch_size))
    t_first = sessions["reference"].pairs[0][0]
    eps_out = {}
    for name, s in sessions.items():
        apply_speed_settings(s.cfg, unet, device)
        x = x_T.contiguous(memory_format=torch.channels_last) if s.cfg.channels_last else x_T
        outs = []
        for t in (t_first, T_EDIT):  # in the precision training uses at t (T.step_precision)
            with torch.no_grad(), T.autocast(device, T.step_precision(s.cfg, t)):
                eps, eps_edit, _, _ = unet.forward_edit(x, torch.full((batch_size,), float(t), device=device),
                                                        s.block, T_EDIT)
            outs.append((eps.float(), eps_edit.float()))
        eps_out[name] = outs
    check("eps_edit_rel_err", max(_rel(f[1], r[1]) for f, r in zip(eps_out["fast"], eps_out["reference"])),
          bounds["eps_edit_rel_err"])
    reported["eps_rel_err"] = max(_rel(f[0], r[0]) for f, r in zip(eps_out["fast"], eps_out["reference"]))
    eps_r, eps_edit_r = eps_out["reference"][0]
    reported["edit_size"] = _rel(eps_edit_r, eps_r)  # ‖ε̃ − ε‖/‖ε‖ of the fp32 reference at t_first
    # error of the predicted x0 that the CLIP and L1 terms see, in units of the image: √((1−ᾱ)/ᾱ)·‖δε̃‖/‖x0‖
    p_err = {}
    for t, f, r in zip((t_first, T_EDIT), eps_out["fast"], eps_out["reference"]):
        a = D.alpha_bar(alphas, t)
        p_err[str(t)] = float(((1 - a) / a).sqrt() * (f[1] - r[1]).double().norm() / x0.double().norm())
    reported["p_edit_err_vs_image"] = p_err
    reported["eps_rms"] = float(eps_r.double().pow(2).mean().sqrt())
    if p_err[str(t_first)] > 0.1:
        a = D.alpha_bar(alphas, t_first)
        warnings.append(f"P_edit (the predicted x0 that the CLIP and L1 terms see) at t={t_first} differs between "
                        f"the modes by {p_err[str(t_first)]:.2g}× the image norm: ε's error is multiplied by "
                        f"√((1−ᾱ)/ᾱ) = {float(((1 - a) / a).sqrt()):.0f} there "
                        f"(ε rms {reported['eps_rms']:.2f}; ~1 for a trained U-Net)")
    a_t = D.alpha_bar(alphas, t_first)
    scale_l1 = float(((1 - a_t).sqrt() / a_t.sqrt()).mean() * eps_r.abs().mean())
    losses = {}
    for name, s in sessions.items():
        apply_speed_settings(s.cfg, unet, device)
        losses[name] = log_values(s.run_batch(entries, idx, [s.pairs[0]], eager=True))[0]
    lr_, lf = losses["reference"], losses["fast"]
    res = sessions["reference"].res
    check("loss_clip_rel_err", abs(lf["loss_clip"] - lr_["loss_clip"]) / abs(lr_["loss_clip"]),
          bounds["loss_clip_rel_err"])
    check("loss_l1_scaled_err", abs(lf["loss_l1"] - lr_["loss_l1"]) / scale_l1, bounds["loss_l1_scaled_err"])
    loss_scale = res.clip_weight * abs(lr_["loss_clip"]) + ref_cfg.l1_weight * abs(res.text_cosine) * scale_l1
    check("loss_scaled_err", abs(lf["loss"] - lr_["loss"]) / loss_scale, bounds["loss_scaled_err"])
    reported.update(loss_reference=lr_["loss"], loss_fast=lf["loss"],
                    loss_rel_err=abs(lf["loss"] - lr_["loss"]) / abs(lr_["loss"]),
                    loss_l1_reference=lr_["loss_l1"], loss_l1_fast=lf["loss_l1"], l1_operand_scale=scale_l1,
                    loss_l1_rel_err=abs(lf["loss_l1"] - lr_["loss_l1"]) / max(abs(lr_["loss_l1"]), 1e-30))

    # --- short training runs through asyrp.train.train: learnt Δh --------------------------------------------------
    runs = {"reference": ref_cfg, "fast_chain": dataclasses.replace(fast_cfg, l1_reference="chain"),
            "fast": fast_cfg}
    blocks = {}
    with tempfile.TemporaryDirectory(prefix="asyrp-guard-") as tmp:
        for name, cfg in runs.items():
            cfg = dataclasses.replace(cfg, preview_every=0, checkpoint_every=10 ** 9, log_every=10 ** 9)
            apply_speed_settings(cfg, unet, device)  # train() sets channels_last but never unsets it
            path = T.train(cfg, Path(tmp) / name, backbone=backbone, clip=(encoder, clip_size), entries=entries,
                           progress=False)
            blocks[name] = load_delta_block(path).to(device).eval()
    apply_speed_settings(ref_cfg, unet, device)
    f0 = T.init_block(ref_cfg, DeltaBlockConfig.from_dict(res.delta), device).eval()
    with torch.no_grad():
        outs = {k: [] for k in ("init", *blocks)}
        for t, _ in D.training_pairs(n_train_step, T_EDIT, T_0):
            h, _, temb = unet.encode(x_T, torch.full((batch_size,), float(t), device=device))
            outs["init"].append(f0(h, temb))
            for name, b in blocks.items():
                outs[name].append(b(h, temb))
        outs = {k: torch.cat(v) for k, v in outs.items()}
    change = {k: outs[k] - outs["init"] for k in blocks}
    check("delta_h_cosine", _cos(change["fast_chain"], change["reference"]), bounds["delta_h_cosine"], lower=True)
    checks["delta_h_cosine"]["compared"] = "reference vs fast with l1_reference=chain"
    reported.update(
        delta_h_cosine_raw=_cos(outs["fast_chain"], outs["reference"]),
        delta_h_cosine_same_xt_vs_chain=_cos(change["fast"], change["fast_chain"]),
        delta_h_cosine_fast_vs_reference=_cos(change["fast"], change["reference"]),
        delta_h_change_ratio=float(change["fast_chain"].norm() / change["reference"].norm().clamp_min(1e-30)))
    unet.to(memory_format=torch.contiguous_format)
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks, "reported": reported,
            "warnings": warnings, "bounds": bounds,
            "switches": {"reference": speed_switches(ref_cfg), "fast": speed_switches(fast_cfg)},
            "settings": {"batch_size": batch_size, "n_train_step": n_train_step, "lr": lr, "t_edit": T_EDIT,
                         "first_t": t_first, "inversion_t_0": inversion_t_0, "n_inv_step": n_inv_step}}


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------

def device_info(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    info = {"type": device.type, "name": name, "bf16_peak_tflops": bf16_peak_tflops(name), "torch": torch.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None, "threads": torch.get_num_threads()}
    if device.type == "cpu":
        import platform
        info["name"] = platform.processor() or platform.machine()
    return info


def run_benchmark(tiny: bool = False, device=None, train_batch: int = 9, edit_batch: int = 16, compile: bool = False,
                  tasks=("train", "edit"), train_warmup: int = 2, train_steps: int = 5, repeats: int = 2,
                  n_inv_step: int = 40, n_test_step: int = 40, guard: bool = False, seed: int = 0,
                  progress=None) -> dict:
    """Both modes, both tasks; returns the result record (one JSON object).

    ``{schema, date, tiny, device{type, name, bf16_peak_tflops, torch, cuda, threads}, models{…}, settings{…},
    memory_kind, flops_counted, method{train, edit}, train{reference, fast, ratio}, edit{reference, fast, ratio},
    guard}``; each mode has ``images_per_s, s_per_image, peak_memory, flops_per_image, tflops_achieved,
    peak_fraction, batch_size, config`` and timing details; ``ratio`` is fast / reference for each of them.
    """
    from asyrp.io import default_device
    device = default_device(device)
    say = progress or (lambda msg: None)
    info = device_info(device)
    peak = info["bf16_peak_tflops"]
    say(f"building models ({'tiny' if tiny else 'full size'}) on {device}")
    models = build_models(tiny, device, seed)
    record = {"schema": SCHEMA, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "tiny": tiny, "device": info, "models": models.description,
              "settings": {"attribute": ATTRIBUTE, "t_0": T_0, "t_edit": T_EDIT, "t_boost": T_BOOST,
                           "n_train_step": 40, "train_grid_steps": len(D.training_pairs(40, T_EDIT, T_0)),
                           "n_inv_step": n_inv_step, "n_test_step": n_test_step, "compile": compile,
                           "delta_block": "conv (official)"},
              "memory_kind": memory_kind(device), "flops_counted": FLOPS_COUNTED,
              "method": {
                  "train": (f"{train_warmup} warm-up steps, then {repeats} × asyrp.train._train_batch over the first "
                            f"{train_steps or 'all'} steps of the training grid; s/image = s/step × grid steps / "
                            "batch size (extrapolated when fewer than all grid steps are timed)"),
                  "edit": (f"1 warm-up batch on a 4-step grid, then {repeats} × (sampling.invert, {n_inv_step} steps, "
                           f"+ sampling.generate, {n_test_step} steps, Δh for t ≥ {T_EDIT}, η = 1 below {T_BOOST}); "
                           "s/image = s/batch / batch size")},
              "train": None, "edit": None, "guard": None}
    modes = {"reference": mode_config("reference", device=device),
             "fast": mode_config("fast", batch_size=train_batch, compile=compile, device=device)}
    direction = make_direction(models.encoder, models.clip_size, modes["reference"], device)
    if "train" in tasks:
        record["train"] = {}
        for name, cfg in modes.items():
            say(f"train {name} (batch {cfg.batch_size})")
            record["train"][name] = bench_train(models, direction, cfg, device, train_warmup, train_steps, repeats,
                                                peak, seed)
        record["train"]["ratio"] = _ratio(record["train"]["fast"], record["train"]["reference"])
    if "edit" in tasks:
        from asyrp.models.delta import DeltaBlockConfig
        res = T.resolve_run(modes["reference"], models.backbone, direction)
        block = T.init_block(modes["reference"], DeltaBlockConfig.from_dict(res.delta), device).eval()
        record["edit"] = {}
        for name, (precision, bs) in {"reference": ("fp32", 1), "fast": ("bf16", edit_batch)}.items():
            say(f"edit {name} (batch {bs})")
            apply_speed_settings(modes[name], models.backbone.unet, device)  # TF32 flags of the mode
            record["edit"][name] = bench_edit(models, block, precision, bs, device, repeats, n_inv_step, n_test_step,
                                              peak, seed)
        record["edit"]["ratio"] = _ratio(record["edit"]["fast"], record["edit"]["reference"])
    if guard:
        say("numerical guard")
        record["guard"] = numerical_guard(models.backbone.unet, models.encoder, models.clip_size, device=device,
                                          backbone=models.backbone, seed=seed)
    models.backbone.unet.to(memory_format=torch.contiguous_format)
    return record


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(record: dict) -> str:
    lines = [f"asyrp bench — {record['device']['type']} {record['device']['name'] or ''} "
             f"({'tiny models' if record['tiny'] else 'full-size models'}, random weights)",
             f"{'task':6s} {'mode':10s} {'batch':>5s} {'img/s':>10s} {'s/img':>10s} {'peak MiB':>10s} "
             f"{'GFLOP/img':>11s} {'TFLOP/s':>9s} {'%bf16pk':>8s}"]
    for task in ("train", "edit"):
        block = record.get(task)
        if not block:
            continue
        for mode in ("reference", "fast"):
            m = block[mode]
            mem = m["peak_memory"] / 2 ** 20 if m["peak_memory"] is not None else None
            frac = m["peak_fraction"] * 100 if m["peak_fraction"] is not None else None
            lines.append(f"{task:6s} {mode:10s} {m['batch_size']:5d} {m['images_per_s']:10.4g} "
                         f"{m['s_per_image']:10.4g} "
                         f"{_fmt(mem, '10.1f')} {m['flops_per_image'] / 1e9:11.4g} {m['tflops_achieved']:9.4g} "
                         f"{_fmt(frac, '8.2f')}")
        r = block["ratio"]
        lines.append(f"{task:6s} {'fast/ref':10s} {'':5s} {_fmt(r['images_per_s'], '10.3g')} "
                     f"{_fmt(r['s_per_image'], '10.3g')} {_fmt(r['peak_memory'], '10.3g')} "
                     f"{_fmt(r['flops_per_image'], '11.3g')} {_fmt(r['tflops_achieved'], '9.3g')}")
    g = record.get("guard")
    if g:
        lines.append(f"guard: {'PASSED' if g['passed'] else 'FAILED'} — " + ", ".join(
            f"{k} {c['value']:.3g} ({'≥' if k == 'delta_h_cosine' else '≤'} {c['bound']:.3g})"
            for k, c in g["checks"].items()))
        lines += [f"guard warning: {w}" for w in g.get("warnings", [])]
    return "\n".join(lines)


def results_path(results_dir: str | Path, record: dict) -> Path:
    date = record["date"][:10]
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", record["device"]["name"] or record["device"]["type"]).strip("-")
    return Path(results_dir) / f"{date}_{gpu}.jsonl"


# --------------------------------------------------------------------------------------------------
# CLI: asyrp bench
# --------------------------------------------------------------------------------------------------

def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tiny", action="store_true", help="reduced U-Net and tiny CLIP: the same code in seconds on a CPU")
    p.add_argument("--device", help="cuda / cpu (default: CUDA when present)")
    p.add_argument("--train-batch", type=int, help="fast-mode training batch size (default 9; tiny 2)")
    p.add_argument("--edit-batch", type=int, help="fast-mode editing batch size (default 16; tiny 4)")
    p.add_argument("--compile", action="store_true", help="fast mode with TrainConfig.compile (torch.compile)")
    p.add_argument("--tasks", default="train,edit", help="train,edit (default both)")
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


def main(args: argparse.Namespace) -> int:
    from asyrp.io import default_device
    if args.threads:
        torch.set_num_threads(args.threads)
    tiny = args.tiny
    device = default_device(args.device)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = set(tasks) - {"train", "edit"}
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; choose from train, edit")

    def pick(value, full, small):
        return value if value is not None else (small if tiny else full)

    record = run_benchmark(
        tiny=tiny, device=device, train_batch=pick(args.train_batch, 9, 2), edit_batch=pick(args.edit_batch, 16, 4),
        compile=args.compile, tasks=tasks, train_warmup=args.train_warmup, train_steps=pick(args.train_steps, 5, 3),
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
