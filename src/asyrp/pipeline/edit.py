"""Editing real (or sampled) images with trained directions.

For each image: x_T from the inversion cache (DDIM inversion, done once), then the reverse process over n_test_step
steps with h̃ = c0·h + Σ_i w_i·f_i(h, t) for t ≥ t_edit and quality boosting (η = 1) below t_boost. The weight of a
direction is  strength × coefficient × n_train_step / n_test_step  (the reference's "non-accelerated" scaling: more
steps, smaller pushes). k directions are summed with coefficients c_i/√k (c_i = 1 unless given), as the reference's
--multiple_hs_coeff, or two are interpolated (coefficients 1 − α and α).

Outputs (stable names, one PNG per image): ``original/``, ``reconstructed/`` (the same sampler without Δh, with the
same boost noise unless --no-boost-reconstruction), ``edited/`` — or ``edited_<label>/`` per setting of a strength
sweep or an interpolation — plus ``grid.png`` and ``edit.json`` (every setting, for asyrp evaluate / figures).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from asyrp import config as C
from asyrp import diffusion as D
from asyrp.pipeline import fast
from asyrp import sampling
from asyrp.errors import UserError
from asyrp.clip_loss import CLIPDirection
from asyrp.io.files import atomic_json, default_device
from asyrp.models.checkpoint import CheckpointError
from asyrp.models.delta import DeltaBlockConfig, load_delta_block
from asyrp.pipeline.run_record import read_direction, resolve_edit_times, resolve_t_0
from asyrp.plots import folder_label, save_png, save_rows
from asyrp.io.weights import MissingWeightsError, resolve_direction
from asyrp.backbones import load_clip_model
from asyrp.backbones import load_backbone
import json
from asyrp.pipeline.inversion import InversionSettings, load_entries
from asyrp.plots import load_png


@dataclass
class EditConfig:
    NUMERIC_LISTS: ClassVar[tuple[str, ...]] = ("coefficients", "strengths", "interpolate")  # checked by asyrp.config
    directions: list = field(default_factory=list)   # delta checkpoints (ours, official *_LC_*.pth, asyrp-<attr>)
    coefficients: list | None = None                 # c_i per direction, applied as c_i/√k (default c_i = 1)
    strengths: list = field(default_factory=lambda: [1.0])  # a sweep (e.g. -1,-0.5,0,0.5,1) writes one folder each
    interpolate: list | None = None                  # α values between exactly two directions
    backbone: str = "celeba-hq"
    data: str = "sampled"
    split: str | None = None
    n_images: int = 8
    image_start: int = 0
    sample_seed: int = 0
    cache_dir: str | None = None
    t_0: int | None = None                           # None: the t_0 the directions were trained with (else 999)
    n_inv_step: int = 40
    n_test_step: int = 40
    n_train_step: int | None = None                  # None: from each direction's checkpoint (or file name)
    t_edit: int | None = None                        # None: checkpoint, attribute table, else LPIPS table × CLIP cos
    t_boost: int | None = None                       # None: checkpoint, attribute table, else the LPIPS table
    lpips_edit_th: float = 0.33                      # automatic t_edit: LPIPS(P_t, x0) ≥ this × text cosine
    lpips_boost_th: float = D.BOOST_LPIPS_TH         # automatic t_boost: first t whose LPIPS reaches this
    lpips_boost_table: str = D.BOOST_LPIPS_TABLE     # "x" = LPIPS(x_t, x0) (167 on CelebA) or "x0_t"
    boost: bool = True                               # quality boosting below t_boost
    boost_reconstruction: bool = True                # same boost (and noise) for the reconstruction
    c0: float = 1.0                                  # multiplier of h (reference: hs_coeff_origin_h)
    seed: int = 0                                    # boost noise, per image
    batch_size: int = 8
    precision: str = "fp32"                          # fp32 | bf16 | fp16 (autocast of the U-Net; DDIM maths in fp32)
    compile: bool | None = False                     # torch.compile the U-Net halves (None: on CUDA only)
    delta_config: str | None = None                  # for extension files: "kind=pixel_channel,heads=8,..."
    device: str | None = None


@dataclass
class Direction:
    block: torch.nn.Module
    path: str
    attribute: str | None
    n_train_step: int
    t_edit: int | None
    t_boost: int | None
    t_edit_source: str = ""   # "checkpoint (…)", "attribute table", "LPIPS table (…)"
    t_boost_source: str = ""
    src: str | None = None    # the texts of the direction (checkpoint or attribute table): an automatic t_edit
    trg: str | None = None    # needs their CLIP cosine
    t_0: int = D.T_0          # the t_0 it was trained with (checkpoint; 999 where it does not say)
    t_0_source: str = ""


def parse_delta_config(text: str | None) -> DeltaBlockConfig | None:
    if not text:
        return None
    values = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        values[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else \
            {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    return DeltaBlockConfig.from_dict(values)


def load_direction(spec: str, backbone, cfg: EditConfig, weights_dir: str | None = None) -> Direction:
    path = resolve_direction(spec, weights_dir)
    block, meta = load_delta_block(path, config=parse_delta_config(cfg.delta_config), return_meta=True)
    unet = backbone.unet
    if (block.config.channels, block.config.spatial_size, block.config.temb_channels) != \
            (unet.h_channels, unet.h_size, unet.temb_ch):
        raise CheckpointError(f"{path}: a direction for h of {block.config.channels}×{block.config.spatial_size}² "
                              f"(temb {block.config.temb_channels}); this backbone has {unet.h_channels}×{unet.h_size}² "
                              f"(temb {unet.temb_ch}) — checkpoint of another architecture")
    if meta.get("backbone_sha256") and meta["backbone_sha256"] != backbone.fingerprint:
        raise CheckpointError(f"{path}: trained on backbone {meta['backbone_sha256'][:12]}…, not on this one "
                              f"({backbone.fingerprint[:12]}…); edit with the backbone it was trained on")
    record = read_direction(meta, path, cfg.n_train_step)
    return Direction(block.to(default_device(cfg.device)).eval(), str(path), **dataclasses.asdict(record))


def choose_timesteps(cfg: EditConfig, directions: list[Direction], backbone, weights_dir: str | None = None,
                     device=None) -> dict:
    """t_0, t_edit, t_boost and where each came from, as the original chooses them.

    t_0: --t-0, else the t_0 the directions were trained with (an error where they differ). t_edit: --t-edit, else
    the largest of the directions' (checkpoint or attribute table; a direction with neither — the released makeup and
    zombie — gets the LPIPS(P_t, x0) table of the backbone's domain at lpips_edit_th × the CLIP cosine of its texts).
    Several directions: the largest t_edit, as the original takes the attribute with the largest text cosine.
    t_boost: --t-boost, else the first direction's, else the backbone's LPIPS table (off, with the reason, for a
    backbone without one, and with --no-boost).
    """
    paths = [d.path for d in directions]
    t_0, t_0_source = resolve_t_0(cfg, directions, paths)
    times = resolve_edit_times(cfg, directions, paths, backbone,
                               lambda i: _text_cosine(directions[i], backbone, weights_dir, device))
    if not times["t_edit"] < t_0:
        raise UserError(f"t_edit {times['t_edit']} must lie below t_0 {t_0} (t_edit from {times['t_edit_source']}, "
                        f"t_0 from {t_0_source}); give --t-edit or --t-0")
    return {"t_0": t_0, "t_0_source": t_0_source, **times}


def _text_cosine(direction: Direction, backbone, weights_dir: str | None, device) -> float:
    """cos(E_T(src), E_T(trg)) of a direction's raw texts with the backbone's CLIP (the original's t_edit input)."""
    try:
        encoder, _ = load_clip_model(backbone.default_clip, weights_dir=weights_dir, device=device or "cpu")
    except MissingWeightsError:
        raise UserError(f"{Path(direction.path).name}: t_edit comes from the CLIP {backbone.default_clip} cosine of "
                        f"{direction.src!r} → {direction.trg!r}, and that CLIP is not available offline; give --t-edit "
                        f"(or `asyrp download clip-{backbone.default_clip}`)") from None
    return CLIPDirection(encoder, direction.src, direction.trg, templates=None).text_cosine()


def settings_for(cfg: EditConfig, directions: list[Direction]) -> list[dict]:
    """One dict per edited folder: label, the weight of each direction, and what produced it."""
    k = len(directions)
    given = cfg.coefficients or [1.0] * k
    if len(given) != k:
        raise UserError(f"{k} directions need {k} coefficients, got {len(given)}")
    coeffs = [c / math.sqrt(k) for c in given]  # the reference divides given coefficients by √k too
    scale = [d.n_train_step / cfg.n_test_step for d in directions]
    out = []
    if cfg.interpolate:
        if k != 2:
            raise UserError(f"interpolation needs exactly two directions, got {k}")
        for a in cfg.interpolate:
            weights = [(1 - a) * scale[0], a * scale[1]]
            out.append({"label": f"a{a:.2f}", "alpha": a, "strength": 1.0, "weights": weights})
    else:
        for s in cfg.strengths:
            weights = [s * c * sc for c, sc in zip(coeffs, scale)]
            out.append({"label": f"s{s:+.2f}", "strength": s, "weights": weights})
    single = len(out) == 1
    for setting in out:
        setting["folder"] = "edited" if single else f"edited_{setting['label']}"
    return out


def edit_times(cfg: EditConfig, directions: list[Direction], backbone, weights_dir: str | None = None,
               device=None) -> tuple[int, int, int | None]:
    """(t_0, t_edit, t_boost) of an edit: :func:`choose_timesteps` without the sources (t_boost None when boosting
    is off)."""
    times = choose_timesteps(cfg, directions, backbone, weights_dir, device)
    return times["t_0"], times["t_edit"], times["t_boost"]


def edit(cfg: EditConfig, out_dir: str | Path, backbone=None, entries: list[dict] | None = None,
         directions: list[Direction] | None = None, weights_dir: str | None = None, progress: bool = True,
         distributed=None) -> dict:
    """Edit images into ``out_dir``; returns the run record written to ``edit.json``."""
    out_dir = Path(out_dir)
    device = default_device(cfg.device)
    is_main = distributed is None or distributed.rank == 0
    if backbone is None:
        backbone = load_backbone(cfg.backbone, weights_dir=weights_dir, device=device)
    unet = backbone.unet.to(device)
    if directions is None:
        if not cfg.directions:
            raise UserError("give at least one direction (--direction runs/smiling/delta.pt)")
        directions = [load_direction(d, backbone, cfg, weights_dir) for d in cfg.directions]
    timesteps = choose_timesteps(cfg, directions, backbone, weights_dir, device)
    t_0, t_edit, t_boost = timesteps["t_0"], timesteps["t_edit"], timesteps["t_boost"]
    settings = settings_for(cfg, directions)
    record = {"config": C.to_dict(cfg), **timesteps,
              "backbone_sha256": backbone.fingerprint,
              "directions": [{"path": d.path, "attribute": d.attribute, "n_train_step": d.n_train_step,
                              "t_0": d.t_0, "t_edit": d.t_edit, "t_edit_source": d.t_edit_source,
                              "config": d.block.config.to_dict()} for d in directions],
              "settings": settings}
    if is_main:
        previous = out_dir / "edit.json"
        if previous.exists():
            old = json.loads(previous.read_text())
            if {k: old.get(k) for k in ("config", "directions")} != {k: record[k] for k in ("config", "directions")}:
                raise UserError(f"output folder {out_dir} holds another edit run; choose a new --out")
        elif out_dir.exists() and any(out_dir.iterdir()):
            raise UserError(f"output folder {out_dir} is not empty and holds no asyrp edit run; choose a new --out")
    if entries is None:
        entries = load_entries(backbone, cfg.data, cfg.n_images, cfg.cache_dir, cfg.split, cfg.image_start,
                               cfg.sample_seed, InversionSettings(cfg.n_inv_step, t_0), cfg.batch_size, device,
                               progress and is_main, distributed=distributed)
    order = list(range(len(entries)))
    mine = distributed.shard(order) if distributed is not None else order
    alphas = D.alphas_cumprod(D.linear_betas()).to(device)
    blocks = [d.block for d in directions]
    amp = fast.autocast(device, cfg.precision)
    unet = fast.maybe_compiled(unet, fast.resolve_compile(cfg.compile, device))  # one graph for every timestep
    bar = tqdm(total=len(mine), desc="edit", unit="img", disable=not (progress and is_main))
    for start in range(0, len(mine), cfg.batch_size):
        idx = mine[start:start + cfg.batch_size]
        x_T = torch.stack([entries[i]["x_T"] for i in idx]).to(device)
        names = [entries[i]["name"] for i in idx]
        results = {}
        with amp:
            results["reconstructed"] = sampling.generate(
                unet, x_T, alphas, cfg.n_test_step, t_0,
                t_boost=t_boost if cfg.boost_reconstruction else None,
                noise_generators=sampling.image_generators(cfg.seed, idx))
            for s in settings:
                delta = sampling.DeltaSum(blocks, s["weights"])
                results[s["folder"]] = sampling.generate(
                    unet, x_T, alphas, cfg.n_test_step, t_0, delta=delta, t_edit=t_edit, c0=cfg.c0,
                    t_boost=t_boost, noise_generators=sampling.image_generators(cfg.seed, idx))
        for j, i in enumerate(idx):
            save_png(out_dir / "original" / f"{names[j]}.png", entries[i]["x0"])
            for folder, images in results.items():
                save_png(out_dir / folder / f"{names[j]}.png", images[j])
        bar.update(len(idx))
    bar.close()
    if distributed is not None:
        distributed.barrier()
    if is_main:
        shown = [entries[i]["name"] for i in order[:8]]
        folders = ["original", "reconstructed"] + [s["folder"] for s in settings]
        save_rows(out_dir / "grid.png", [[load_png(out_dir / f / f"{n}.png") for f in folders] for n in shown],
                  col_labels=[folder_label(f) for f in folders], row_labels=shown)
        record["images"] = [e["name"] for e in entries]
        record["grid_columns"] = folders
        atomic_json(out_dir / "edit.json", record)
    return record
