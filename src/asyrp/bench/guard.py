"""The numerical guard of the fast path: the fast preset against the reference preset on the same inputs.

The presets differ in precision (fp16 against fp32), in how the work is batched (the unedited chain fused into the
plain pass) and in caching; they share the objective (the chain as L1 target) and, here, the batch size. The guard
shows that these switches change only rounding: the U-Net's edited ε, the first step's loss terms, an inversion, and
the direction a short training run learns. See :func:`numerical_guard` for each bound and why it is what it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path

import torch

from asyrp import diffusion as D
from asyrp import sampling
from asyrp.pipeline.fast import autocast
from asyrp.pipeline import train as T
from asyrp.pipeline.run_record import resolve_training, table_times
from asyrp.pipeline.train_config import PRESETS, step_precision
from asyrp.backbones import Backbone
from asyrp.models.delta import DeltaBlockConfig, load_delta_block, save_delta_block

ATTRIBUTE = "smiling"   # the attribute table gives t_edit 513, t_boost 167, λ_CLIP 0.8
T_EDIT, T_BOOST = table_times(ATTRIBUTE)
T_0 = 999

SPEED_FIELDS = ("precision", "batch_size", "l1_reference", "fused_step", "cache_source_embeddings", "channels_last",
                "compile", "compile_mode", "tf32")

GUARD_BOUNDS = {
    "eps_edit_rel_err": 5e-2,
    "loss_clip_rel_err": 5e-2,
    "loss_l1_scaled_err": 5e-2,
    "loss_scaled_err": 5e-2,
    "inversion_ratio": 1.1,
    "inversion_floor": 2e-2,
    "delta_h_cosine": 0.999,
    "delta_h_cosine_precision": 0.95,
}


def mode_config(mode: str, batch_size: int | None = None, compile: bool | None = None, device=None,
                **overrides) -> T.TrainConfig:
    """The TrainConfig of a preset on the benchmark attribute: the schedule, then PRESETS[mode], then the batch size,
    ``compile`` (None: the preset's) and any other field."""
    base = dict(attribute=ATTRIBUTE, t_edit=T_EDIT, t_boost=T_BOOST, t_0=T_0, n_train_step=40,
                device=str(device) if device is not None else None)
    data = {**base, **PRESETS[mode]}
    if batch_size is not None:
        data["batch_size"] = batch_size
    if compile is not None:
        data["compile"] = compile
    data.update(overrides)
    cfg = T.TrainConfig(**data)
    cfg.validate()
    return cfg


def speed_switches(cfg: T.TrainConfig) -> dict:
    return {k: getattr(cfg, k) for k in SPEED_FIELDS}


def log_values(records: list[dict]) -> list[dict]:
    """Log records with their loss tensors as floats."""
    return [{k: (float(v) if torch.is_tensor(v) else v) for k, v in r.items()} for r in records]


def random_images(n: int, size: int, seed: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 2 - 1).to(device)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def output_params(block) -> list[torch.Tensor]:
    """The parameters of a delta block's last layer, through which Δh is linear (conv: conv2; transformers: the final
    LayerNorm's affine)."""
    if block.config.kind == "conv":
        return [block.conv2.weight, block.conv2.bias]
    norm = block.out_layer.final_norm()
    return [norm.weight, norm.bias]


def _edit_size(unet, block, x_T, t, device) -> float:
    """‖ε̃ − ε‖/‖ε‖ in fp32 at timestep t."""
    with torch.no_grad():
        eps, eps_edit, _, _ = unet.forward_edit(x_T, torch.full((x_T.shape[0],), float(t), device=device), block,
                                                T_EDIT)
    return rel_err(eps_edit, eps)


def numerical_guard(unet, encoder, clip_size: int, *, device=None, batch_size: int = 4, n_train_step: int = 20,
                    n_inv_step: int = 40, inversion_t_0: int = 400, lr: float = 5e-4, seed: int = 0,
                    init_edit_size: float | None = 0.1, fast: dict | None = None, bounds: dict | None = None,
                    backbone=None) -> dict:
    """Fast vs reference preset on the same inputs; returns ``{"passed", "checks", "reported", "warnings", ...}``.

    Settings: attribute ``smiling`` (t_edit 513), ``batch_size`` images x0 (uniform in [−1, 1]), x_T their fp32 DDIM
    inversion (40 steps to t = 999, as the cache). *Reference*: PRESETS["reference"] (fp32, chain L1 target, no
    caching, nothing fused) at ``batch_size``; *fast*: PRESETS["fast"] (fp16 autocast with loss scaling, the same
    chain target fused into the plain pass, cached source embeddings) at the same ``batch_size``, with compile off
    unless ``fast`` says otherwise, then updated with ``fast``. Both start from one initial block whose last layer is
    scaled so that its edit ‖ε̃ − ε‖/‖ε‖ at the first training step is ``init_edit_size`` in fp32 (None: as built).
    ``checks`` hold ``value``, ``bound``, ``passed``; ``passed`` is their conjunction. ``bounds`` overrides
    :data:`GUARD_BOUNDS`.

    * ``eps_edit_rel_err`` = ‖ε̃_fast − ε̃_ref‖/‖ε̃_ref‖ at the first training timestep and at t_edit (the max), ≤ 5e-2.
      Autocast rounds the inputs and output of every convolution / matmul to 11 (fp16) or 8 (bf16) significant bits;
      each layer adds about one unit of that and the GroupNorms renormalise between them: measured ~1e-3 (fp16) and
      ~1e-2 (bf16) on the full-size U-Net; a lost Δh, a wrong memory format or a wrong dtype in the maths give errors of
      order 1.
    * The first training step's loss in both modes (same x_T, same block, same batch; at the first step the chain and
      the edited trajectory start from the same x_T, so only rounding differs):

      - ``loss_clip_rel_err``: relative error of the CLIP term, ≤ 5e-2 (an O(1) value; the image embeddings carry the
        error of the edited prediction and of the reduced-precision ViT).
      - ``loss_l1_scaled_err`` = |L1_fast − L1_ref| / S, ≤ 5e-2, with S = √((1−ᾱ_t)/ᾱ_t) · mean|ε_ref| the size of the
        operands of the L1 difference P_edit − P_ref = −√((1−ᾱ_t)/ᾱ_t) (ε̃ − ε): the two decoders round
        independently, so the error of the difference is relative to its operands, not to the difference (its plain
        relative error is reported as ``loss_l1_rel_err``).
      - ``loss_scaled_err`` = |L_fast − L_ref| / (λ_CLIP·L_clip,ref + λ_L1·cos_text·S), ≤ 5e-2: the total loss on the
        same scale.
    * ``inversion_error``: DDIM inversion and reconstruction (``n_inv_step`` steps up to ``inversion_t_0``, η = 0) in
      each mode's precision; e = ‖x_rec − x0‖/‖x0‖; bound ``e_fast ≤ 1.1·e_ref + 2e-2``. e_ref is DDIM's own
      discretisation error; the per-step ε errors of the reduced precision (≤ 1e-2 relative, ‖ε‖ ≲ ‖x0‖) add ≲ 2e-2 of
      ‖x0‖ in quadrature. ``inversion_t_0 = 400`` is for *untrained* networks: with random weights and t_0 = 999 the
      reconstruction is chaotic (``informative`` is False when e_ref ≥ 1); with trained weights use 999.
    * The direction a short training run learns: one epoch over the ``batch_size`` images on an ``n_train_step``
      grid (10 steps at 20, t_edit 513), SGD at ``lr``, through :func:`asyrp.pipeline.train.train`. Compared: the *learnt
      change* of the blocks' outputs, f_a(h) − f_0(h) vs f_b(h) − f_0(h), on the h of every image at every trained
      timestep (the raw outputs, dominated by f_0 after a short run, are reported as ``delta_h_cosine_raw``).

      - ``delta_h_cosine`` ≥ 0.999: the fast preset **at equal precision** (fp32) against the reference: what is
        left is batching, the fused chain and caching, exact up to fp32 rounding (1 within 1e-13 on the tiny models,
        ``python benchmarks/guard_edit_size.py``). A changed objective fails it by far: the paper's same-x_t L1
        target gives 0.905 there and 0.872 on an H200 (``delta_h_cosine_same_xt_vs_chain``, reported); dropping
        the L1 term fails too (tests/test_fast_guard.py).
      - ``delta_h_cosine_precision`` ≥ 0.95: the fast preset as configured (fp16) against itself in fp32. The L1
        term's gradient is sign(P_edit − P_ref) per pixel, so where the edit is not far above the precision's
        resolution of ε the sign, and with it the learnt change, carries rounding noise. A random-weight U-Net's block
        edits ε by ~1e-3, as little as fp16's ε error; the initial block's last layer is therefore scaled towards
        ``init_edit_size``, but a random U-Net's decoder saturates (on the full-size model ×74 gave an edit of 0.0094,
        6× fp16's ε error; the learnt directions then agree to 0.968 on an H200, against 0.87 for a changed
        objective). With trained weights the edit is far above the resolution.
    * Reported with a warning: ``p_edit_err_vs_image`` = √((1−ᾱ_t)/ᾱ_t)·‖δε̃‖/‖x0‖, the mode difference of the
      predicted x0 that the CLIP and L1 terms see, per probed t (the factor is 157 at t = 999, 4.3 at 538).
    """
    bounds = {**GUARD_BOUNDS, **(bounds or {})}
    device = torch.device(device if device is not None else next(unet.parameters()).device)
    unet = unet.to(device).eval().requires_grad_(False)
    if backbone is None:
        backbone = Backbone(unet, "guard", "random-init", "celeba", "custom")
    size = unet.image_size
    alphas = D.alphas_cumprod(D.linear_betas()).to(device)
    if fast and "batch_size" in fast:
        raise ValueError("the guard runs both modes at batch_size (the number of guard images); pass batch_size")
    common = dict(batch_size=batch_size, device=device, n_train_step=n_train_step, lr=lr, seed=seed + 1234)
    ref_cfg = mode_config("reference", **common)
    fast_cfg = mode_config("fast", compile=False, **common, **(fast or {}))
    checks, reported, warnings = {}, {}, []

    def check(name, value, bound, lower=False):
        ok = bool(value >= bound) if lower else bool(value <= bound)
        checks[name] = {"value": value, "bound": bound, "passed": ok and math.isfinite(value)}

    # --- inversion -> reconstruction in each precision (and the training entries: fp32 inversions) -------------------
    x0 = random_images(batch_size, size, seed, device)
    recon = {}
    for name, cfg in (("reference", ref_cfg), ("fast", fast_cfg)):
        T.apply_speed_settings(cfg, unet, device)
        with torch.no_grad(), autocast(device, cfg.precision):
            x_T = sampling.invert(unet, x0, alphas, n_inv_step, inversion_t_0)
            x_rec = sampling.generate(unet, x_T, alphas, n_inv_step, inversion_t_0)
        recon[name] = (x_T.float(), rel_err(x_rec.float(), x0))
    e_ref, e_fast = recon["reference"][1], recon["fast"][1]
    check("inversion_error", e_fast, bounds["inversion_ratio"] * e_ref + bounds["inversion_floor"])
    checks["inversion_error"].update({"e_ref": e_ref, "e_fast": e_fast, "t_0": inversion_t_0,
                                      "n_inv_step": n_inv_step, "informative": e_ref < 1.0})
    reported["x_T_rel_diff"] = rel_err(recon["fast"][0], recon["reference"][0])
    T.apply_speed_settings(ref_cfg, unet, device)
    with torch.no_grad():
        x_T = sampling.invert(unet, x0, alphas, 40, T_0)
    entries = [{"name": f"guard{i}", "x0": x0[i].cpu(), "x_T": x_T[i].cpu()} for i in range(batch_size)]

    # --- one initial block for both modes, its edit above the precision's resolution --------------------------------
    direction = T.make_direction(encoder, clip_size, ref_cfg, device)
    res = resolve_training(ref_cfg, backbone, direction)
    t_first = res.training_steps[0][0]
    f0 = T.init_block(ref_cfg, DeltaBlockConfig.from_dict(res.delta), device).eval()
    reported["edit_size_as_built"] = _edit_size(unet, f0, x_T, t_first, device)
    if init_edit_size is not None:
        k = init_edit_size / max(reported["edit_size_as_built"], 1e-30)
        with torch.no_grad():
            for p in output_params(f0):
                p.mul_(k)
        reported["init_output_scale"] = k
    reported["edit_size"] = _edit_size(unet, f0, x_T, t_first, device)

    with tempfile.TemporaryDirectory(prefix="asyrp-guard-") as tmp:
        init_path = save_delta_block(f0, Path(tmp) / "init.pt")
        ref_cfg, fast_cfg = (dataclasses.replace(c, init_from=str(init_path)) for c in (ref_cfg, fast_cfg))
        sessions = {name: T.Session(cfg, backbone, direction, device)
                    for name, cfg in (("reference", ref_cfg), ("fast", fast_cfg))}

        # --- edited forward and first-step loss on the same inputs ---------------------------------------------------
        eps_out = {}
        for name, s in sessions.items():
            T.apply_speed_settings(s.cfg, unet, device)
            x = x_T.contiguous(memory_format=torch.channels_last) if s.cfg.channels_last else x_T
            outs = []
            for t in (t_first, T_EDIT):  # in the precision training uses at t
                with torch.no_grad(), autocast(device, step_precision(s.cfg, t)):
                    eps, eps_edit, _, _ = unet.forward_edit(x, torch.full((batch_size,), float(t), device=device),
                                                            s.block, T_EDIT)
                outs.append((eps.float(), eps_edit.float()))
            eps_out[name] = outs
        pairs = list(zip(eps_out["fast"], eps_out["reference"]))
        check("eps_edit_rel_err", max(rel_err(f[1], r[1]) for f, r in pairs), bounds["eps_edit_rel_err"])
        reported["eps_rel_err"] = max(rel_err(f[0], r[0]) for f, r in pairs)
        eps_r = eps_out["reference"][0][0]
        p_err = {}
        for t, (f, r) in zip((t_first, T_EDIT), pairs):
            a = D.alpha_bar(alphas, t)
            p_err[str(t)] = float(((1 - a) / a).sqrt() * (f[1] - r[1]).double().norm() / x0.double().norm())
        reported["p_edit_err_vs_image"] = p_err
        reported["eps_rms"] = float(eps_r.double().pow(2).mean().sqrt())
        if p_err[str(t_first)] > 0.1:
            warnings.append(f"P_edit (the predicted x0 that the CLIP and L1 terms see) at t={t_first} differs between "
                            f"the modes by {p_err[str(t_first)]:.2g}× the image norm (ε rms {reported['eps_rms']:.2f}; "
                            "~1 for a trained U-Net)")
        a_t = D.alpha_bar(alphas, t_first)
        scale_l1 = float(((1 - a_t).sqrt() / a_t.sqrt()).mean() * eps_r.abs().mean())
        losses = {}
        for name, s in sessions.items():
            T.apply_speed_settings(s.cfg, unet, device)
            losses[name] = log_values(s.run_batch(entries, list(range(batch_size)), [s.pairs[0]], eager=True))[0]
        lr_, lf = losses["reference"], losses["fast"]
        check("loss_clip_rel_err", abs(lf["loss_clip"] - lr_["loss_clip"]) / abs(lr_["loss_clip"]),
              bounds["loss_clip_rel_err"])
        check("loss_l1_scaled_err", abs(lf["loss_l1"] - lr_["loss_l1"]) / scale_l1, bounds["loss_l1_scaled_err"])
        loss_scale = res.clip_weight * abs(lr_["loss_clip"]) + ref_cfg.l1_weight * abs(res.text_cosine) * scale_l1
        check("loss_scaled_err", abs(lf["loss"] - lr_["loss"]) / loss_scale, bounds["loss_scaled_err"])
        reported.update(loss_reference=lr_["loss"], loss_fast=lf["loss"],
                        loss_rel_err=abs(lf["loss"] - lr_["loss"]) / abs(lr_["loss"]),
                        loss_l1_reference=lr_["loss_l1"], loss_l1_fast=lf["loss_l1"], l1_operand_scale=scale_l1,
                        loss_l1_rel_err=abs(lf["loss_l1"] - lr_["loss_l1"]) / max(abs(lr_["loss_l1"]), 1e-30))

        # --- short training runs through asyrp.pipeline.train.train: the learnt Δh -------------------------------------------
        fast_fp32 = dataclasses.replace(fast_cfg, precision="fp32")
        runs = {"reference": ref_cfg, "fast": fast_cfg, "fast_fp32": fast_fp32,
                "fast_same_xt": dataclasses.replace(fast_fp32, l1_reference="same_xt")}
        blocks, skipped = {}, {}
        for name, cfg in runs.items():
            cfg = dataclasses.replace(cfg, preview_every=0, checkpoint_every=10 ** 9, log_every=10 ** 9)
            T.apply_speed_settings(cfg, unet, device)
            path = T.train(cfg, Path(tmp) / name, backbone=backbone, clip=(encoder, clip_size), entries=entries,
                           progress=False)
            blocks[name] = load_delta_block(path).to(device).eval()
            skipped[name] = _skipped_steps(Path(tmp) / name)
    T.apply_speed_settings(ref_cfg, unet, device)
    with torch.no_grad():
        outs = {k: [] for k in ("init", *blocks)}
        for t, _ in D.training_pairs(n_train_step, T_EDIT, T_0):
            h, _, temb = unet.encode(x_T, torch.full((batch_size,), float(t), device=device))
            outs["init"].append(f0(h, temb))
            for name, b in blocks.items():
                outs[name].append(b(h, temb))
        outs = {k: torch.cat(v) for k, v in outs.items()}
    change = {k: outs[k] - outs["init"] for k in blocks}
    check("delta_h_cosine", cosine(change["fast_fp32"], change["reference"]), bounds["delta_h_cosine"], lower=True)
    check("delta_h_cosine_precision", cosine(change["fast"], change["fast_fp32"]),
          bounds["delta_h_cosine_precision"], lower=True)
    reported.update(
        delta_h_cosine_fast_vs_reference=cosine(change["fast"], change["reference"]),
        delta_h_cosine_raw=cosine(outs["fast"], outs["reference"]),
        delta_h_cosine_same_xt_vs_chain=cosine(change["fast_same_xt"], change["reference"]),
        delta_h_change_ratio=float(change["fast"].norm() / change["reference"].norm().clamp_min(1e-30)),
        skipped_steps=skipped)
    unet.to(memory_format=torch.contiguous_format)
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks, "reported": reported,
            "warnings": warnings, "bounds": bounds,
            "switches": {"reference": speed_switches(ref_cfg), "fast": speed_switches(fast_cfg)},
            "settings": {"batch_size": batch_size, "n_train_step": n_train_step, "lr": lr, "t_edit": T_EDIT,
                         "first_t": t_first, "inversion_t_0": inversion_t_0, "n_inv_step": n_inv_step,
                         "init_edit_size": init_edit_size}}


def _skipped_steps(run_dir: Path) -> int:
    done = run_dir / "done.json"
    return int(json.loads(done.read_text()).get("skipped_steps", 0)) if done.exists() else 0
