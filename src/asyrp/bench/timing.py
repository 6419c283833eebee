"""Throughput of training and editing in the reference and the fast mode, and the numerical guard of
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
  ``TrainConfig.compile`` (which, as in :func:`asyrp.pipeline.train.train`, compiles the delta block).

Training runs the library's own step loop, :func:`asyrp.pipeline.train._train_batch`, on objects built the way
:func:`asyrp.pipeline.train.train` builds them (:class:`asyrp.pipeline.train.Session`). Editing runs :func:`asyrp.sampling.invert` and
:func:`asyrp.sampling.generate` under the precision's autocast, as :func:`asyrp.pipeline.edit.edit` does (:func:`edit_images`).

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

import datetime
import platform
import sys
import time

import torch

from asyrp import diffusion as D
from asyrp.pipeline import fast as F
from asyrp import sampling
from asyrp.pipeline import fast
from asyrp.pipeline import train as T
from asyrp.pipeline.run_record import resolve_training
from asyrp.bench.flops import FLOPS_COUNTED, bf16_peak_tflops, edit_flops_per_image, train_flops_per_image
from asyrp.bench.guard import (ATTRIBUTE, T_0, T_BOOST, T_EDIT, mode_config, numerical_guard, random_images,
                               speed_switches)
from asyrp.bench.models import BenchModels, build_models, random_entries
from asyrp.io.files import default_device
from asyrp.models.delta import DeltaBlockConfig

SCHEMA = "asyrp.bench/1"


@torch.no_grad()
def edit_images(unet, x0: torch.Tensor, delta, alphas: torch.Tensor, indices, precision: str = "fp32",
                n_inv_step: int = 40, n_test_step: int = 40, t_0: int = T_0, t_edit: int = T_EDIT,
                t_boost: int | None = T_BOOST, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inversion then edited generation of a batch: returns (x_T, edited).

    ``indices`` name the images: boost noise comes from one generator per image (``sampling.image_generators``), so an
    image gets the same edit in any batch. ``delta`` is a block or ``sampling.DeltaSum``; under ``precision="bf16"``
    both samplers run in bf16 autocast (the DDIM maths stays fp32, as in asyrp.pipeline.edit).
    """
    with fast.autocast(x0.device, precision):
        x_T = sampling.invert(unet, x0, alphas, n_inv_step, t_0)
        edited = sampling.generate(unet, x_T, alphas, n_test_step, t_0, delta=delta, t_edit=t_edit, t_boost=t_boost,
                                   noise_generators=sampling.image_generators(seed, indices))
    return x_T, edited


# --------------------------------------------------------------------------------------------------
# Timing and memory
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
        import resource  # POSIX only: lazily, so the benchmark still runs (without RSS) elsewhere
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)
    except (ImportError, OSError):
        return None


def memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated over the timed region (bytes)"
    return "process maximum RSS (bytes; ru_maxrss, cumulative over the whole run, not per mode)"



def _finish(out: dict, flops_per_image: float, peak: float | None) -> dict:
    out["images_per_s"] = 1.0 / out["s_per_image"]
    out["flops_per_image"] = flops_per_image
    out["tflops_achieved"] = flops_per_image * out["images_per_s"] / 1e12
    out["peak_fraction"] = out["tflops_achieved"] / peak if peak else None
    return out


def bench_train(models: BenchModels, direction, cfg: T.TrainConfig, device, warmup_steps: int = 2,
                timed_steps: int = 5, repeats: int = 2, peak_tflops: float | None = None, seed: int = 0) -> dict:
    """Training throughput of one mode through ``asyrp.pipeline.train._train_batch``."""
    device = torch.device(device)
    session = T.Session(cfg, models.backbone, direction, device)
    bs, pairs = cfg.batch_size, session.pairs
    entries, idx = random_entries(bs, models.backbone.unet.image_size, seed), list(range(bs))
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
           "skipped_steps": session.sync_state()["skipped_steps"],
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
    eager_unet.to(memory_format=torch.contiguous_format)  # asyrp.pipeline.edit does not change the memory format
    unet = F.maybe_compiled(eager_unet, compile, compile_mode)
    alphas = D.alphas_cumprod(D.linear_betas()).to(device)
    delta = sampling.DeltaSum([block], [1.0])  # strength 1, n_train_step = n_test_step
    x0 = random_images(batch_size, unet.image_size, seed, device)
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
                            f"{repeats} × asyrp.pipeline.train._train_batch over the first {train_steps or 'all'} steps of the "
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
    direction = T.make_direction(models.encoder, models.clip_size, configs["reference"], device)
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
        res = resolve_training(configs["reference"], models.backbone, direction)
        block = T.init_block(configs["reference"], DeltaBlockConfig.from_dict(res.delta), device).eval()
        record["edit"] = {}
        edit_modes = {"reference": ("fp32", 1, False), "fast": ("fp16", edit_batch, edit_compile)}
        for name, (precision, bs, comp) in edit_modes.items():
            if name not in modes and not (name == "reference" and "reference_batch" in modes):
                continue
            say(f"edit {name} (batch {bs}, {precision}, compile {comp})")
            T.apply_speed_settings(configs[name], models.backbone.unet, device)  # TF32 flags of the mode
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
