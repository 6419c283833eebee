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
from asyrp import fast as F
from asyrp import sampling
from asyrp import train as T
from asyrp.guard import (ATTRIBUTE, GUARD_BOUNDS, SPEED_FIELDS, T_0, T_BOOST, T_EDIT, log_values,  # noqa: F401
                         mode_config, numerical_guard, random_images, speed_switches)

SCHEMA = "asyrp.bench/1"

# A U-Net small enough for a CPU (h is (B, 64, 4, 4)); the layout of the CelebA-HQ model.
TINY_UNET = dict(ch=32, out_ch=3, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0,
                 resamp_with_conv=True, in_channels=3, image_size=16)
# A tiny open_clip CLIP at 16 px (OpenAI's tokenizer: vocabulary 49408, context 77).
TINY_CLIP_CFG = dict(embed_dim=32, vision_cfg=dict(image_size=16, patch_size=4, width=64, layers=2, head_width=32),
                     text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2), quick_gelu=True)

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

# The objects a training run steps with, and its speed settings, exactly as asyrp.train builds them.
TrainSession = T.Session
apply_speed_settings = T.apply_speed_settings
make_direction = T.make_direction


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


_images = random_images


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
    start = time.perf_counter()
    if warmup_steps > 0:  # the first steps pay for compiling (from the on-disk cache when it holds the graphs)
        session.run_batch(entries, idx, pairs[:warmup_steps])
    _sync(device)
    warmup_seconds = time.perf_counter() - start
    _reset_peak(device)
    start = time.perf_counter()
    for _ in range(repeats):
        session.run_batch(entries, idx, timed)
    _sync(device)
    seconds = time.perf_counter() - start
    peak_mem = _peak_memory(device)
    s_per_step = seconds / (repeats * len(timed))
    flops = train_flops_per_image(session, entries, idx)
    out = {"batch_size": bs, "config": speed_switches(cfg), "compiled": session.compiled,
           "objective": {"l1_reference": cfg.l1_reference, "l1_weight": cfg.l1_weight},
           "grid_steps": len(pairs), "warmup_steps": warmup_steps, "warmup_seconds": warmup_seconds,
           "skipped_steps": session.state.get("skipped_steps", 0),
           "timed_steps": len(timed), "repeats": repeats, "extrapolated": len(timed) < len(pairs),
           "seconds_timed": seconds, "s_per_step": s_per_step, "s_per_image": s_per_step * len(pairs) / bs,
           "peak_memory": peak_mem}
    return _finish(out, flops, peak_tflops)


def bench_edit(models: BenchModels, block, precision: str, batch_size: int, device, repeats: int = 2,
               n_inv_step: int = 40, n_test_step: int = 40, peak_tflops: float | None = None, seed: int = 0,
               compile: bool = False, compile_mode: str = "default") -> dict:
    """Editing throughput (inversion + edited generation) of one precision / batch size / compile switch."""
    device = torch.device(device)
    eager_unet = models.backbone.unet
    eager_unet.to(memory_format=torch.contiguous_format)  # asyrp.edit does not change the memory format
    unet = F.maybe_compiled(eager_unet, compile, compile_mode)
    alphas = D.alphas_cumprod(D.linear_betas()).to(device)
    delta = sampling.DeltaSum([block], [1.0])  # strength 1, n_train_step = n_test_step
    x0 = _images(batch_size, unet.image_size, seed, device)
    idx = list(range(batch_size))

    def run(n_inv=n_inv_step, n_test=n_test_step):
        return edit_images(unet, x0, delta, alphas, idx, precision, n_inv, n_test)

    start = time.perf_counter()
    run(4, 4)  # warm-up (not timed; compiles the encoder and decoder graphs: one for every timestep)
    _sync(device)
    warmup_seconds = time.perf_counter() - start
    _reset_peak(device)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    _sync(device)
    seconds = time.perf_counter() - start
    peak_mem = _peak_memory(device)
    flops = edit_flops_per_image(eager_unet, x0, delta, alphas, precision, n_inv_step, n_test_step)
    n_edited = sum(t >= T_EDIT for t, _ in D.generative_pairs(n_test_step, T_0))
    out = {"batch_size": batch_size, "config": {"precision": precision, "batch_size": batch_size, "compile": compile,
                                                "compile_mode": compile_mode},
           "warmup_seconds": warmup_seconds,
           "n_inv_step": n_inv_step, "n_test_step": n_test_step, "edited_steps": n_edited, "repeats": repeats,
           "seconds_timed": seconds, "s_per_image": seconds / (repeats * batch_size), "peak_memory": peak_mem}
    return _finish(out, flops, peak_tflops)


def _ratio(fast: dict, ref: dict) -> dict:
    def r(k):
        a, b = fast.get(k), ref.get(k)
        return a / b if a is not None and b else None
    return {k: r(k) for k in ("images_per_s", "s_per_image", "peak_memory", "flops_per_image", "tflops_achieved")}


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


TRAIN_MODES = ("reference", "reference_batch", "fast")


def run_benchmark(tiny: bool = False, device=None, train_batch: int = 9, edit_batch: int = 16,
                  compile: bool | None = None, tasks=("train", "edit"), modes=TRAIN_MODES, train_warmup: int = 2,
                  train_steps: int = 5, repeats: int = 2, n_inv_step: int = 40, n_test_step: int = 40,
                  guard: bool = False, seed: int = 0, fast_overrides: dict | None = None, progress=None) -> dict:
    """The modes of each task in one process; returns the result record (one JSON object).

    Training modes: ``reference`` (the reference preset at batch 1, the original's work), ``reference_batch`` (the
    reference preset at ``train_batch``: the same batch as the fast mode), ``fast`` (the fast preset at
    ``train_batch``; ``compile`` None = the preset's choice, on CUDA only; ``fast_overrides`` sets other TrainConfig
    fields). Editing: ``reference`` (fp32, batch 1) and ``fast`` (fp16, ``edit_batch``, compiled as ``compile``).

    ``{schema, date, tiny, device{…}, models{…}, settings{…}, memory_kind, flops_counted, method{train, edit},
    train{<mode>…, ratio, ratio_batch1}, edit{reference, fast, ratio}, guard}``; each mode has ``images_per_s,
    s_per_image, peak_memory, flops_per_image, tflops_achieved, peak_fraction, batch_size, config, warmup_seconds``
    and timing details; ``ratio`` is fast / the reference at the same batch size, ``ratio_batch1`` fast / the reference
    at batch 1.
    """
    from asyrp.io import default_device
    device = default_device(device)
    say = progress or (lambda msg: None)
    info = device_info(device)
    peak = info["bf16_peak_tflops"]
    unknown = set(modes) - set(TRAIN_MODES)
    if unknown:
        raise ValueError(f"unknown mode(s) {sorted(unknown)}; choose from {', '.join(TRAIN_MODES)}")
    say(f"building models ({'tiny' if tiny else 'full size'}) on {device}")
    models = build_models(tiny, device, seed)
    edit_compile = F.resolve_compile(compile, device)
    record = {"schema": SCHEMA, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "tiny": tiny, "device": info, "models": models.description,
              "settings": {"attribute": ATTRIBUTE, "t_0": T_0, "t_edit": T_EDIT, "t_boost": T_BOOST,
                           "n_train_step": 40, "train_grid_steps": len(D.training_pairs(40, T_EDIT, T_0)),
                           "n_inv_step": n_inv_step, "n_test_step": n_test_step, "compile": compile,
                           "fast_overrides": fast_overrides or {}, "delta_block": "conv (official)",
                           "compile_cache": str(F.compile_cache_dir())},
              "memory_kind": memory_kind(device), "flops_counted": FLOPS_COUNTED,
              "method": {
                  "train": (f"{train_warmup} warm-up steps (timed apart: warmup_seconds, compile included), then "
                            f"{repeats} × asyrp.train._train_batch over the first {train_steps or 'all'} steps of the "
                            "training grid; s/image = s/step × grid steps / batch size (extrapolated when fewer than "
                            "all grid steps are timed)"),
                  "edit": (f"1 warm-up batch on a 4-step grid (warmup_seconds, compile included), then {repeats} × "
                           f"(sampling.invert, {n_inv_step} steps, + sampling.generate, {n_test_step} steps, Δh for "
                           f"t ≥ {T_EDIT}, η = 1 below {T_BOOST}); s/image = s/batch / batch size")},
              "train": None, "edit": None, "guard": None}
    configs = {"reference": mode_config("reference", device=device),
               "reference_batch": mode_config("reference", batch_size=train_batch, device=device),
               "fast": mode_config("fast", batch_size=train_batch, compile=compile, device=device,
                                   **(fast_overrides or {}))}
    direction = make_direction(models.encoder, models.clip_size, configs["reference"], device)
    if "train" in tasks:
        record["train"] = {}
        for name in modes:
            if name == "reference_batch" and train_batch == 1 and "reference" in modes:
                continue  # the same run as "reference"
            cfg = configs[name]
            say(f"train {name} (batch {cfg.batch_size}, {cfg.precision}, compile {cfg.compile})")
            record["train"][name] = bench_train(models, direction, cfg, device, train_warmup, train_steps, repeats,
                                                peak, seed)
            say(f"  {record['train'][name]['images_per_s']:.3g} images/s, warm-up "
                f"{record['train'][name]['warmup_seconds']:.1f} s")
        tr = record["train"]
        same = tr.get("reference_batch") or (tr.get("reference") if train_batch == 1 else None)
        if "fast" in tr and same:
            tr["ratio"] = _ratio(tr["fast"], same)
        if "fast" in tr and "reference" in tr:
            tr["ratio_batch1"] = _ratio(tr["fast"], tr["reference"])
    if "edit" in tasks:
        from asyrp.models.delta import DeltaBlockConfig
        res = T.resolve_run(configs["reference"], models.backbone, direction)
        block = T.init_block(configs["reference"], DeltaBlockConfig.from_dict(res.delta), device).eval()
        record["edit"] = {}
        edit_modes = {"reference": ("fp32", 1, False), "fast": ("fp16", edit_batch, edit_compile)}
        for name, (precision, bs, comp) in edit_modes.items():
            if name not in modes and not (name == "reference" and "reference_batch" in modes):
                continue
            say(f"edit {name} (batch {bs}, {precision}, compile {comp})")
            apply_speed_settings(configs[name], models.backbone.unet, device)  # TF32 flags of the mode
            record["edit"][name] = bench_edit(models, block, precision, bs, device, repeats, n_inv_step, n_test_step,
                                              peak, seed, compile=comp)
            say(f"  {record['edit'][name]['images_per_s']:.3g} images/s, warm-up "
                f"{record['edit'][name]['warmup_seconds']:.1f} s")
        if {"fast", "reference"} <= set(record["edit"]):
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
             f"{'task':6s} {'mode':16s} {'batch':>5s} {'img/s':>10s} {'s/img':>10s} {'peak MiB':>10s} "
             f"{'GFLOP/img':>11s} {'TFLOP/s':>9s} {'%bf16pk':>8s} {'warm-up s':>9s}"]
    for task in ("train", "edit"):
        block = record.get(task)
        if not block:
            continue
        for mode, m in block.items():
            if mode.startswith("ratio"):
                continue
            mem = m["peak_memory"] / 2 ** 20 if m["peak_memory"] is not None else None
            frac = m["peak_fraction"] * 100 if m["peak_fraction"] is not None else None
            lines.append(f"{task:6s} {mode:16s} {m['batch_size']:5d} {m['images_per_s']:10.4g} "
                         f"{m['s_per_image']:10.4g} "
                         f"{_fmt(mem, '10.1f')} {m['flops_per_image'] / 1e9:11.4g} {m['tflops_achieved']:9.4g} "
                         f"{_fmt(frac, '8.2f')} {_fmt(m.get('warmup_seconds'), '9.1f')}")
        for key, label in (("ratio", "fast/ref"), ("ratio_batch1", "fast/ref b1")):
            r = block.get(key)
            if r:
                lines.append(f"{task:6s} {label:16s} {'':5s} {_fmt(r['images_per_s'], '10.3g')} "
                             f"{_fmt(r['s_per_image'], '10.3g')} {_fmt(r['peak_memory'], '10.3g')} "
                             f"{_fmt(r['flops_per_image'], '11.3g')} {_fmt(r['tflops_achieved'], '9.3g')}")
    g = record.get("guard")
    if g:
        lines.append(f"guard: {'PASSED' if g['passed'] else 'FAILED'} — " + ", ".join(
            f"{k} {c['value']:.4g} ({'≥' if k.startswith('delta_h_cosine') else '≤'} {c['bound']:.4g})"
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
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the fast mode's U-Net (default: the fast preset's choice, on CUDA only)")
    p.add_argument("--tasks", default="train,edit", help="train,edit (default both)")
    p.add_argument("--modes", default=",".join(TRAIN_MODES),
                   help="reference (batch 1), reference_batch (the fast mode's batch), fast (default: all three)")
    p.add_argument("--fast-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set a TrainConfig field of the fast mode, e.g. compile_mode=reduce-overhead (repeatable)")
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


def parse_overrides(items: list[str]) -> dict:
    """``["compile_mode=reduce-overhead", "precision=bf16"]`` → TrainConfig field values (typed as the field)."""
    from asyrp import config as C
    fields = {f.name: f for f in dataclasses.fields(T.TrainConfig)}
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--fast-set {item!r}: expected FIELD=VALUE with a TrainConfig field "
                             f"(e.g. compile_mode=reduce-overhead)")
        out[name] = C.parse_value(T.TrainConfig, name, value)
    return out


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
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    overrides = parse_overrides(args.fast_set)

    def pick(value, full, small):
        return value if value is not None else (small if tiny else full)

    record = run_benchmark(
        tiny=tiny, device=device, train_batch=pick(args.train_batch, 9, 2), edit_batch=pick(args.edit_batch, 16, 4),
        compile=args.compile, tasks=tasks, modes=modes, fast_overrides=overrides, train_warmup=args.train_warmup, train_steps=pick(args.train_steps, 5, 3),
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
