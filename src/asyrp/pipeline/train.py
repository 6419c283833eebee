"""Training a direction: the delta block f_t(h, t) of one attribute on a frozen backbone.

For each batch of cached inversions (x0, x_T), starting at x_T and walking the training grid (t ≥ t_edit):

    ε, ε̃ = U-Net(x_t) with h̃ = h + f(h, t)        one encoder pass; the plain and the edited decoder
    P_edit = (x_t − √(1−ᾱ_t) ε̃)/√ᾱ_t
    loss   = λ_CLIP · −log((1 + mean_b cos(ΔI_b, ΔT))/2)  +  λ_L1 · cos(T_src, T_trg) · |P_edit − P_ref|₁
    one optimiser step per timestep (gradients reach only the block, through the edited decoder)
    x_{t'} = √ᾱ_{t'} P_edit + √(1−ᾱ_{t'}) ε   (asymmetric step), detached

ΔI_b pairs each edited image with **its own** source image x0 (the reference paired a batch with its last image).
P_ref is the predicted x0 of a separate unedited DDIM chain (``l1_reference="chain"``, the reference code and both
presets) or the plain decoder's prediction at the same x_t (``"same_xt"``, the paper's formula: another objective, which
needs no extra U-Net pass; only on request). With ``fused_step`` (the fast preset) the chain costs no separate pass: one
encoder and one plain-decoder call run on [x; chain] together, the edited decoder on x alone (:func:`_fused_forward`).

The run folder holds ``config.json`` (the resolved config), ``log.jsonl`` (every loss term of every step),
``previews/``, ``checkpoints/last.pt`` (written atomically; ``--resume`` continues from it and, on deterministic
settings, ends with the same weights as an uninterrupted run), ``delta_epoch<k>.pt`` and the final ``delta.pt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from asyrp import config as C
from asyrp import diffusion as D
from asyrp.pipeline import fast
from asyrp.attributes import attribute_table, choose_t_boost, choose_t_edit, resolve_texts
from asyrp.errors import UserError
from asyrp.clip_loss import set_clip_precision
from asyrp.io.files import append_jsonl, atomic_json, atomic_torch_save, default_device
from asyrp.models.delta import DeltaBlockConfig, build_delta_block, load_delta_block, save_delta_block


@dataclass
class TrainConfig:
    # what to learn
    attribute: str | None = None          # a name of the attribute table, or None with src/trg
    src: str | None = None
    trg: str | None = None
    # models
    backbone: str = "celeba-hq"
    clip_model: str | None = None         # None: the backbone's default (ViT-B/16 for CelebA-HQ, as the reference)
    clip_templates: bool = True           # 79 ImageNet templates for the text direction
    clip_antialias: bool = False          # the reference resized without antialiasing
    clip_precision: str = "fp32"          # fp32 | fp16 (the original's clip.load on a GPU); the reference preset: fp32
    # data: cached inversions of a folder / LMDB, or images sampled from the backbone
    data: str = "sampled"
    split: str | None = None
    n_images: int = 100
    image_start: int = 0
    sample_seed: int = 0
    cache_dir: str | None = None
    # schedule
    t_0: int = 999
    n_inv_step: int = 40
    n_train_step: int = 40
    t_edit: int | None = None             # None: attribute table, else LPIPS table × text cosine
    t_boost: int | None = None            # None: attribute table, else the backbone's LPIPS table (previews, edits)
    lpips_edit_th: float = 0.33
    lpips_boost_th: float = D.BOOST_LPIPS_TH     # automatic t_boost: first t whose LPIPS reaches this
    lpips_boost_table: str = D.BOOST_LPIPS_TABLE  # "x" = LPIPS(x_t, x0) (167 on CelebA), "x0_t" (original default 0.1)
    # the block
    delta: DeltaBlockConfig | None = None  # channels / spatial size / temb width come from the backbone
    init_from: str | None = None           # transfer learning: start from another direction's weights
    ignore_timestep: bool = False
    # loss
    clip_weight: float | None = None       # None: the attribute table's value, else 1.0 (reference scripts)
    l1_weight: float = 3.0
    l1_reference: str = "chain"            # "chain" (reference code) or "same_xt" (paper; no extra U-Net pass)
    # optimisation
    optimizer: str = "sgd"                 # sgd | adamw
    lr: float = 0.5
    weight_decay: float = 0.0
    momentum: float = 0.0
    scheduler_step: int = 0                # StepLR step in epochs (0: constant learning rate)
    scheduler_gamma: float = 1.0
    epochs: int = 1
    batch_size: int = 1
    accumulation_steps: int = 1            # sum gradients over k timesteps of a batch before a step
    shuffle: bool = False
    seed: int = 1234
    # speed (see asyrp.pipeline.fast and asyrp.bench); all exact restructurings except precision
    precision: str = "fp32"                # fp32 | bf16 | fp16 (autocast for U-Net and CLIP; DDIM maths, loss in fp32)
    # bf16 only where P_t = (x_t − √(1−ᾱ)ε̃)/√ᾱ does not amplify ε's rounding error by more than this factor
    # (√((1−ᾱ)/ᾱ) is 157 at t = 999, 10 at t = 673): higher timesteps run in fp32 (TF32 on GPUs). fp16 runs every step.
    bf16_max_x0_gain: float = 10.0
    fp16_loss_scale: float = 1024.0        # initial dynamic loss scale of fp16 training (asyrp.pipeline.fast.make_grad_scaler)
    fused_step: bool = False               # one encoder and one plain-decoder call on [x; chain] (2B), edit on x
    cache_source_embeddings: bool = True   # E_I(x0) is constant per image: encode it once per batch
    channels_last: bool = False
    compile: bool | None = False           # torch.compile the U-Net's encoder and decoder (None: on CUDA only)
    compile_mode: str = "default"          # default | reduce-overhead (CUDA graphs) | max-autotune-no-cudagraphs
    tf32: bool = True                      # TF32 matmuls on GPUs (cuDNN convolutions use TF32 by PyTorch default)
    # bookkeeping
    log_every: int = 1                     # flush the JSONL log every k steps (every step is logged)
    preview_every: int = 0                 # write a preview every k batches (0: off)
    checkpoint_every: int = 1              # write checkpoints/last.pt every k batches
    device: str | None = None

    def validate(self) -> None:
        for name, value, allowed in (("optimizer", self.optimizer, ("sgd", "adamw")),
                                     ("l1_reference", self.l1_reference, ("chain", "same_xt")),
                                     ("precision", self.precision, fast.PRECISIONS),
                                     ("compile_mode", self.compile_mode, fast.COMPILE_MODES),
                                     ("lpips_boost_table", self.lpips_boost_table, ("x", "x0_t")),
                                     ("clip_precision", self.clip_precision, ("fp32", "fp16"))):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {allowed}")
        for name in ("n_images", "epochs", "batch_size", "accumulation_steps", "n_train_step", "n_inv_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")


PRESETS = {
    # the original's work: fp32, batch 1, a separate unedited chain, nothing cached
    # (CLIP in fp32: the original's clip.load on a CPU; on a GPU it ran fp16, which --clip-precision fp16 gives)
    "reference": dict(precision="fp32", batch_size=1, l1_reference="chain", cache_source_embeddings=False,
                      channels_last=False, compile=False, tf32=False, fused_step=False, clip_precision="fp32"),
    # the same objective (the unedited chain as L1 target) and, unless --batch-size is given, the same batch-1 SGD:
    # fp16 autocast with loss scaling, the chain fused into the plain pass, cached source embeddings, contiguous
    # tensors (channels_last cost 25 % on an H200: issue 18's measurement), the U-Net compiled on CUDA
    "fast": dict(precision="fp16", l1_reference="chain", cache_source_embeddings=True, channels_last=False,
                 compile=None, fused_step=True),
}


# --------------------------------------------------------------------------------------------------
# Pieces of the loop
# --------------------------------------------------------------------------------------------------

def make_optimizer(params, cfg: TrainConfig):
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.scheduler_step, gamma=cfg.scheduler_gamma) \
        if cfg.scheduler_step > 0 else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


autocast = fast.autocast


def step_precision(cfg: "TrainConfig", t: int) -> str:
    """bf16 only where the x0 prediction amplifies ε's error by at most ``bf16_max_x0_gain`` (host-side maths)."""
    if cfg.precision != "bf16":
        return cfg.precision
    a_t = float(D.alpha_bar(D.alphas_cumprod(D.linear_betas()), t))
    return "bf16" if ((1 - a_t) / a_t) ** 0.5 <= cfg.bf16_max_x0_gain else "fp32"


@dataclass
class Resolved:
    """What a run derives from its config and models; saved in config.json beside the config."""
    attribute: str
    src: str
    trg: str
    t_edit: int
    t_boost: int | None
    text_cosine: float
    clip_weight: float
    clip_model: str
    backbone_sha256: str
    delta: dict
    training_steps: list = field(default_factory=list)
    t_edit_source: str = ""       # "flag/config", "attribute table" or "LPIPS table (celeba, x0_t, threshold … × cos …)"
    t_boost_source: str = ""      # the same, or "off: …" where the backbone has no LPIPS table


def resolve_run(cfg: TrainConfig, backbone, clip) -> Resolved:
    """Texts, t_edit, t_boost (with where each came from), λ_CLIP and the block's shape for a run.

    t_edit: the config, else the attribute table, else the LPIPS(P_t, x0) table of the backbone's domain (the
    attribute's for a backbone without one) at lpips_edit_th × text cosine, as the original. t_boost: the config, else
    the attribute table, else the backbone's LPIPS table at lpips_boost_th; a backbone without a table (the shapes world,
    a U-Net file) has no automatic t_boost, and the run records why quality boosting is off.
    """
    attr = resolve_texts(cfg.attribute, cfg.src, cfg.trg)
    text_cosine = clip.text_cosine()
    t_edit, t_edit_source = choose_t_edit(cfg.t_edit, attr.t_edit, lambda: text_cosine,
                                          backbone.lpips_domain or attr.domain, cfg.lpips_edit_th)
    t_boost, t_boost_source = choose_t_boost(cfg.t_boost, attr.t_boost, backbone, cfg.lpips_boost_th,
                                             cfg.lpips_boost_table)
    clip_weight = cfg.clip_weight if cfg.clip_weight is not None else (attr.clip_weight or 1.0)
    kind = getattr(backbone.unet, "default_delta_kind", "conv")  # adm on iDDPM / ADM backbones
    delta = dataclasses.replace(cfg.delta or DeltaBlockConfig(kind=kind), channels=backbone.unet.h_channels,
                                spatial_size=backbone.unet.h_size, temb_channels=backbone.unet.temb_ch)
    steps = D.training_pairs(cfg.n_train_step, t_edit, cfg.t_0)
    return Resolved(attr.name, attr.src, attr.trg, int(t_edit), t_boost, text_cosine, clip_weight,
                    cfg.clip_model or backbone.default_clip, backbone.fingerprint, delta.to_dict(),
                    [list(p) for p in steps], t_edit_source, t_boost_source)


def init_block(cfg: TrainConfig, delta: DeltaBlockConfig, device):
    if cfg.init_from:
        requested = delta if cfg.delta is not None else None
        block = load_delta_block(cfg.init_from, config=requested)
        mismatch = [f for f in ("channels", "spatial_size", "temb_channels")
                    if getattr(block.config, f) != getattr(delta, f)]
        if mismatch:
            raise UserError(f"--init-from {cfg.init_from}: its {', '.join(f'{f}={getattr(block.config, f)}' for f in mismatch)} "
                            f"do not fit this backbone's h-space ({', '.join(f'{f}={getattr(delta, f)}' for f in mismatch)})")
    else:
        torch.manual_seed(cfg.seed)
        block = build_delta_block(delta)
    return block.to(device).train()


def check_run_dir(run_dir: Path, config_record: dict, resume: bool) -> bool:
    """True if the run is already finished. Refuses a folder holding another run."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        if any(run_dir.iterdir()) if run_dir.exists() else False:
            if not resume:
                raise UserError(f"output folder {run_dir} is not empty and holds no asyrp training run; "
                                "choose a new --out")
        return False
    existing = json.loads(cfg_path.read_text())
    if existing.get("config") != config_record["config"]:
        changed = sorted(k for k in set(existing.get("config", {})) | set(config_record["config"])
                         if existing.get("config", {}).get(k) != config_record["config"].get(k))
        raise UserError(f"output folder {run_dir} holds another run (config differs in {', '.join(changed)}); "
                        "choose a new --out")
    if (run_dir / "delta.pt").exists() and (run_dir / "done.json").exists():
        return True
    if not resume:
        raise UserError(f"output folder {run_dir} holds an unfinished run of this config; add --resume to continue it")
    return False


def make_direction(encoder, clip_size: int, cfg: TrainConfig, device):
    """The CLIP direction of a run (text direction computed once)."""
    from asyrp.clip_loss import CLIPDirection
    texts = resolve_texts(cfg.attribute, cfg.src, cfg.trg)
    return CLIPDirection(encoder, texts.src, texts.trg, templates=cfg.clip_templates, antialias=cfg.clip_antialias,
                         image_size=clip_size).to(device)


def apply_speed_settings(cfg: TrainConfig, unet: torch.nn.Module, device: torch.device) -> None:
    """TF32 matmuls and the U-Net's memory format for a run's switches (undo with ``channels_last=False``)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    unet.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)


class Session:
    """Everything one training run steps with: resolved settings, the block, its optimiser, the grid, ᾱ.

    :func:`train` wraps it with a run folder; :mod:`asyrp.bench` times it directly. ``close()`` puts the shared U-Net
    back into its default memory format.
    """

    def __init__(self, cfg: TrainConfig, backbone, direction, device, block=None):
        cfg.validate()
        self.cfg, self.device, self.direction = cfg, torch.device(device), direction
        self.unet = backbone.unet.to(self.device).eval().requires_grad_(False)
        apply_speed_settings(cfg, self.unet, self.device)
        self.res = resolve_run(cfg, backbone, direction)
        self.block = block if block is not None else \
            init_block(cfg, DeltaBlockConfig.from_dict(self.res.delta), self.device)
        self.params = [p for p in self.block.parameters() if p.requires_grad]
        self.opt, self.sched = make_optimizer(self.params, cfg)
        self.compiled = fast.resolve_compile(cfg.compile, self.device)
        self.run_unet = fast.maybe_compiled(self.unet, self.compiled, cfg.compile_mode)
        self.scaler = fast.make_grad_scaler(cfg.precision, self.device, cfg.fp16_loss_scale)
        self.alphas = D.alphas_cumprod(D.linear_betas()).to(self.device)
        self.pairs = [tuple(p) for p in self.res.training_steps]
        self.precisions = {t: step_precision(cfg, t) for t, _ in self.pairs}
        self.state = {"epoch": 0, "batch": 0, "step": 0, "images": 0, "log_lines": 0, "seconds": 0.0,
                      "skipped_steps": 0}

    def run_batch(self, entries: list[dict], idx: list[int], pairs=None, eager: bool = False,
                  pending: list[dict] | None = None, distributed=None, global_batch: int | None = None) -> list[dict]:
        """Walk the grid (or ``pairs``) for the images ``idx``; returns the step records (loss tensors)."""
        pending = [] if pending is None else pending
        _train_batch(self, entries, idx, pending, list(pairs if pairs is not None else self.pairs), distributed,
                     global_batch or len(idx), eager=eager)
        return pending

    def close(self) -> None:
        self.unet.to(memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, run_dir: str | Path, backbone=None, clip=None, entries: list[dict] | None = None,
          resume: bool = False, progress: bool = True, distributed=None) -> Path:
    """Train one direction into ``run_dir``; returns the path of the final ``delta.pt``.

    ``backbone`` (asyrp.backbones.Backbone), ``clip`` (a CLIPDirection-compatible encoder object with image size) and
    ``entries`` (cached inversions) are loaded from the config when not given. ``distributed`` is an
    asyrp.pipeline.distributed.Context for multi-process training (gradients all-reduced; rank 0 writes).
    """
    cfg.validate()
    resolve_texts(cfg.attribute, cfg.src, cfg.trg)  # before loading any model: a typo fails fast
    run_dir = Path(run_dir)
    device = default_device(cfg.device)
    is_main = distributed is None or distributed.rank == 0

    from asyrp.backbones import load_backbone, load_clip_model
    if backbone is None:
        backbone = load_backbone(cfg.backbone, device=device)
    if clip is None:
        clip = load_clip_model(cfg.clip_model or backbone.default_clip, device=device)
    set_clip_precision(clip[0], cfg.clip_precision)
    direction = make_direction(*clip, cfg, device)
    res = resolve_run(cfg, backbone, direction)
    record = {"config": C.to_dict(cfg), "resolved": dataclasses.asdict(res)}

    if is_main:
        if check_run_dir(run_dir, record, resume):
            return run_dir / "delta.pt"
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_json(run_dir / "config.json", record)
    if distributed is not None:
        distributed.barrier()

    if entries is None:
        from asyrp.pipeline.inversion import InversionSettings, load_entries
        entries = load_entries(backbone, cfg.data, cfg.n_images, cfg.cache_dir, cfg.split, cfg.image_start,
                               cfg.sample_seed, InversionSettings(cfg.n_inv_step, cfg.t_0), device=device,
                               progress=progress and is_main, distributed=distributed)
    if len(entries) < 1:
        raise UserError("no training images")
    if distributed is not None:
        smallest = len(entries) % cfg.batch_size or cfg.batch_size
        if smallest < distributed.world_size:
            raise UserError(f"{distributed.world_size} processes need at least {distributed.world_size} images in every "
                            f"batch; with {len(entries)} images and batch size {cfg.batch_size} the last batch has "
                            f"{smallest}: change --n-images or --batch-size")

    session = Session(cfg, backbone, direction, device)
    try:
        return _run(session, run_dir, entries, is_main, distributed, progress)
    finally:
        session.close()


def _run(session: Session, run_dir: Path, entries: list[dict], is_main: bool, distributed, progress: bool) -> Path:
    cfg, res, block, opt, sched = session.cfg, session.res, session.block, session.opt, session.sched
    state = session.state
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    if ckpt_path.exists():  # resume (check_run_dir refused a resume-less restart)
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        block.load_state_dict(ck["block"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if session.scaler is not None and "scaler" in ck:
            session.scaler.load_state_dict(ck["scaler"])
        state.update(ck["state"])
        if is_main and (run_dir / "log.jsonl").exists():  # drop log lines written after the checkpoint
            lines = (run_dir / "log.jsonl").read_text().splitlines(keepends=True)[: state["log_lines"]]
            (run_dir / "log.jsonl").write_text("".join(lines))

    n_batches = math.ceil(len(entries) / cfg.batch_size)
    shard = distributed.shard if distributed is not None else (lambda idx: idx)
    pending: list[dict] = []

    def flush_log():
        if pending and is_main:
            values = torch.stack([torch.stack([r.pop("loss"), r.pop("loss_clip"), r.pop("loss_l1")])
                                  for r in pending]).tolist()  # one host sync per flush
            for r, (loss, lc, l1) in zip(pending, values):
                append_jsonl(run_dir / "log.jsonl", {**r, "loss": loss, "loss_clip": lc, "loss_l1": l1})
            state["log_lines"] += len(pending)
        pending.clear()

    def save_checkpoint():
        flush_log()
        if is_main:
            ck = {"block": block.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                  "state": dict(state)}
            if session.scaler is not None:
                ck["scaler"] = session.scaler.state_dict()
            atomic_torch_save(ck, ckpt_path)

    total = cfg.epochs * n_batches
    bar = tqdm(total=total, initial=state["epoch"] * n_batches + state["batch"], desc=f"train {res.attribute}",
               unit="batch", disable=not (progress and is_main))
    t_start = time.perf_counter() - state["seconds"]
    while state["epoch"] < cfg.epochs:
        order = list(range(len(entries)))
        if cfg.shuffle:
            g = torch.Generator().manual_seed(cfg.seed + state["epoch"])
            order = torch.randperm(len(entries), generator=g).tolist()
        while state["batch"] < n_batches:
            b = state["batch"]
            batch = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            session.run_batch(entries, shard(batch), pending=pending, distributed=distributed, global_batch=len(batch))
            batch_loss = float(pending[-1]["loss"]) if pending else float("nan")
            state["batch"] += 1
            state["images"] += len(batch)
            state["seconds"] = time.perf_counter() - t_start
            if len(pending) >= cfg.log_every:
                flush_log()
            if is_main and cfg.preview_every and state["batch"] % cfg.preview_every == 0:
                write_preview(run_dir / "previews" / f"e{state['epoch']}_b{state['batch']:05d}.png", session, entries,
                              batch)
            if state["batch"] % cfg.checkpoint_every == 0 or state["batch"] == n_batches:
                save_checkpoint()
            bar.update(1)
            bar.set_postfix(loss=f"{batch_loss:.4f}", lr=f"{opt.param_groups[0]['lr']:.2g}")
        sched.step()
        state["epoch"] += 1
        state["batch"] = 0
        if is_main:
            save_delta_block(block, run_dir / f"delta_epoch{state['epoch'] - 1}.pt", **_meta(cfg, res, state))
        save_checkpoint()
    bar.close()
    flush_log()
    final = run_dir / "delta.pt"
    if is_main:
        save_delta_block(block, final, **_meta(cfg, res, state))
        atomic_json(run_dir / "done.json", {"seconds": state["seconds"], "images": state["images"],
                                            "steps": state["step"], "skipped_steps": state.get("skipped_steps", 0),
                                            "images_per_second": state["images"] / max(state["seconds"], 1e-9)})
    if distributed is not None:
        distributed.barrier()
    return final


def _meta(cfg: TrainConfig, res: Resolved, state: dict) -> dict:
    return {"attribute": res.attribute, "src": res.src, "trg": res.trg, "t_edit": res.t_edit, "t_boost": res.t_boost,
            "t_edit_source": res.t_edit_source, "t_boost_source": res.t_boost_source,
            "n_train_step": cfg.n_train_step, "t_0": cfg.t_0, "backbone": cfg.backbone,
            "backbone_sha256": res.backbone_sha256, "clip_model": res.clip_model, "epochs": state["epoch"],
            "steps": state["step"], "images": state["images"]}


def _fused_forward(unet, block, x: torch.Tensor, x_chain: torch.Tensor | None, t: int, amp,
                   ignore_timestep: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(ε at x, ε̃ at x, ε at x_chain) in fp32, the chain's ε only when ``x_chain`` is given.

    The reference runs ``forward_edit(x)`` (encoder, plain and edited decoder) and ``unet(x_chain)`` (encoder and
    decoder) one after the other. Here the encoder and the plain decoder run once on the 2B batch [x; x_chain] (no
    gradients), and the edited decoder on x alone: the same values (up to batch-size-dependent rounding) in two
    batched calls and the edited one. Every training step is edited (t ≥ t_edit), so no per-sample mask is needed.
    """
    b = x.shape[0]
    xx = x if x_chain is None else torch.cat([x, x_chain])
    tt = torch.full((xx.shape[0],), float(t), device=x.device)  # a tensor: one compiled graph for every t
    with amp:
        with torch.no_grad():
            h, skips, temb = unet.encode(xx, tt)
            eps_all = unet.decode(h, skips, temb, xx, tt)
        h_x, temb_x = h[:b], temb[:b]
        delta_h = block(h_x, None if ignore_timestep else temb_x)
        eps_edit = unet.decode(h_x + delta_h, [s[:b] for s in skips], temb_x, x, tt[:b])
    eps_all = eps_all.float()
    return eps_all[:b], eps_edit.float(), (eps_all[b:] if x_chain is not None else None)


def _train_batch(session: Session, entries, idx, pending, pairs, distributed, global_batch, eager=False) -> None:
    """Walk the training grid for one batch; one optimiser step per timestep (or per accumulation window).

    The CLIP term is −log((1 + m)/2) with m the mean cosine over the (global) batch, as the reference (mean before the
    log). Its gradient −1/(1+m) · ∂m is formed from the local images and the global m, so a batch split over several
    processes (gradients summed) gives the same update as one process. Step records (loss tensors, no host sync)
    are appended to ``pending``. ``eager`` runs the uncompiled U-Net (FLOP counting, the numerical guard).
    """
    cfg, res, direction, opt, state, device = (session.cfg, session.res, session.direction, session.opt,
                                               session.state, session.device)
    alphas, block, scaler = session.alphas, session.block, session.scaler
    unet = session.unet if eager else session.run_unet
    cuda_graphs = session.compiled and cfg.compile_mode == "reduce-overhead" and not eager
    x0 = torch.stack([entries[i]["x0"] for i in idx]).to(device)
    x = torch.stack([entries[i]["x_T"] for i in idx]).to(device)
    if cfg.channels_last:
        x0, x = x0.contiguous(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(device, cfg.precision):
        src_emb = direction.encode_images(x0).float() if cfg.cache_source_embeddings else None
    use_chain = cfg.l1_weight > 0 and cfg.l1_reference == "chain"
    x_orig = x.clone() if use_chain else None
    need_l1_eps = cfg.l1_weight > 0 and cfg.l1_reference == "same_xt"
    share = len(idx) / global_batch  # this process's part of the batch mean
    opt.zero_grad(set_to_none=True)
    for k, (t, t_next) in enumerate(pairs):
        if cuda_graphs:
            fast.mark_step()
        a_t, a_next = D.alpha_bar(alphas, t), D.alpha_bar(alphas, t_next)
        amp = autocast(device, session.precisions.get(t) or step_precision(cfg, t))
        eps_o = None
        if cfg.fused_step:
            eps, eps_edit, eps_o = _fused_forward(unet, block, x, x_orig, t, amp, cfg.ignore_timestep)
        else:
            with amp:
                eps, eps_edit, _, _ = unet.forward_edit(x, t, block, res.t_edit, ignore_timestep=cfg.ignore_timestep,
                                                        need_eps=t_next >= 0 or need_l1_eps)
            eps_edit = eps_edit.float()
            eps = eps.float() if eps is not None else None
        p_edit = D.predict_x0(x, eps_edit, a_t)
        with amp:
            if src_emb is None:
                with torch.no_grad():
                    src = direction.encode_images(x0).float()
            else:
                src = src_emb
            cos = direction.cosines(src_embeddings=src, edited_images=p_edit).float()
        if cfg.l1_weight > 0:
            if use_chain:
                if eps_o is None:
                    with torch.no_grad(), amp:
                        eps_o = unet(x_orig, t).float()
                p_ref = D.predict_x0(x_orig, eps_o, a_t)
                if t_next >= 0:
                    x_orig = D.ddim_step(x_orig, eps_o, a_t, a_next)[0]
            else:
                p_ref = D.predict_x0(x, eps, a_t)
            l1_local = (p_edit - p_ref.detach()).abs().mean()
        else:
            l1_local = torch.zeros((), device=device)
        stats = torch.stack([cos.detach().sum(), l1_local.detach() * share])
        if distributed is not None:
            distributed.all_reduce_sum(stats)
        mean_cos, loss_l1 = stats[0] / global_batch, stats[1]
        loss_clip = -torch.log((1 + mean_cos) / 2)
        # surrogate with the gradient of −log((1 + m)/2) w.r.t. this process's images
        clip_grad_term = -(cos.sum() / global_batch) / (1 + mean_cos)
        objective = res.clip_weight * clip_grad_term + cfg.l1_weight * res.text_cosine * l1_local * share
        (scaler.scale(objective) if scaler is not None else objective).backward()
        if (k + 1) % cfg.accumulation_steps == 0 or k == len(pairs) - 1:
            if distributed is not None:
                distributed.all_reduce_grads(session.params)
            if scaler is not None:  # unscale in fp32, skip the step if a gradient overflowed fp16
                scale = scaler.get_scale()
                scaler.step(opt)
                scaler.update()
                state["skipped_steps"] = state.get("skipped_steps", 0) + int(scaler.get_scale() < scale)
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            state["step"] += 1
        if t_next >= 0:
            with torch.no_grad():
                x = D.ddim_step(x, eps, a_t, a_next, eps_edited=eps_edit)[0].detach()
        loss = res.clip_weight * loss_clip + cfg.l1_weight * res.text_cosine * loss_l1
        pending.append({"epoch": state["epoch"], "batch": state["batch"], "step": state["step"], "t": t,
                        "lr": opt.param_groups[0]["lr"], "loss": loss, "loss_clip": loss_clip, "loss_l1": loss_l1})


@torch.no_grad()
def write_preview(path: Path, session: Session, entries, idx) -> None:
    """x0 | reconstruction | edit (strength 1, the training grid, quality boosting below t_boost) for a batch."""
    from asyrp import sampling
    from asyrp.plots import save_rows

    cfg, res, block = session.cfg, session.res, session.block
    was_training = block.training
    block.eval()
    x_T = torch.stack([entries[i]["x_T"] for i in idx]).to(session.device)
    gens = sampling.image_generators(cfg.seed, idx, device="cpu")
    edited = sampling.generate(session.unet, x_T, session.alphas, cfg.n_train_step, cfg.t_0, delta=block,
                               t_edit=res.t_edit, t_boost=res.t_boost, noise_generators=gens,
                               ignore_timestep=cfg.ignore_timestep)
    rows = [torch.stack([entries[i]["x0"] for i in idx]), torch.stack([entries[i]["x_rec"] for i in idx]), edited.cpu()]
    save_rows(path, rows, col_labels=[str(entries[i].get("name", i)) for i in idx],
              row_labels=["original", "reconstruction", "edit s=1"])
    block.train(was_training)


# --------------------------------------------------------------------------------------------------
# CLI: asyrp train
# --------------------------------------------------------------------------------------------------

DELTA_FLAGS = ("kind", "heads", "layers", "ff_dim", "time_embedding", "norm", "activation", "dropout", "zero_init")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="run folder (config, log, previews, checkpoints, delta.pt)")
    p.add_argument("--config", help="YAML of TrainConfig fields (the command line overrides it)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="reference: the original's fp32 batch-1 work (CLIP in "
                                                              "fp32 as the original on a CPU; its GPU runs used fp16: "
                                                              "add --clip-precision fp16); fast: the same objective in "
                                                              "fp16, the unedited chain fused into the plain pass, "
                                                              "compiled on CUDA")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    p.add_argument("--attr", dest="attribute", help="attribute name from the table (e.g. smiling)")
    p.add_argument("--list-attributes", action="store_true", help="print the attribute table and exit")
    p.add_argument("--unet-config", help="YAML `model:` block or create_model arguments, for a bare state-dict backbone")
    p.add_argument("--weights-dir", help="folder holding downloaded weights (offline machines)")
    C.add_arguments(p, TrainConfig, skip=("attribute", "delta"))
    g = p.add_argument_group("delta block (default: the backbone's official block, conv or adm for iDDPM / ADM)")
    C.add_arguments(g, DeltaBlockConfig, skip=("channels", "spatial_size", "temb_channels", "skip_norm_without_temb"),
                    prefix="delta_")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    data = C.load_yaml(args.config)
    if args.preset:
        data = {**data, **PRESETS[args.preset]}
    data.update(C.overrides_from_args(TrainConfig, args))
    delta = C.overrides_from_args(DeltaBlockConfig, args, prefix="delta_")
    delta = {k: v for k, v in delta.items() if k in DELTA_FLAGS}
    if delta or "delta" in data:
        data["delta"] = {**(data.get("delta") or {}), **delta}
    return C.from_dict(TrainConfig, data)


def main(args: argparse.Namespace) -> int:
    if args.list_attributes:
        for name, a in attribute_table().items():
            extra = f"  t_edit={a.t_edit}" if a.t_edit else ""
            print(f"{name:36s} {a.src!r} → {a.trg!r}{extra}")
        return 0
    if not args.out:
        raise UserError("give the run folder with --out")
    cfg = config_from_args(args)
    device = default_device(cfg.device)
    backbone = None
    if args.unet_config or args.weights_dir:
        import yaml

        from asyrp.backbones import load_backbone
        config = yaml.safe_load(Path(args.unet_config).read_text()) if args.unet_config else None
        backbone = load_backbone(cfg.backbone, config=config, weights_dir=args.weights_dir, device=device)
    clip = None
    if args.weights_dir:
        from asyrp.backbones import load_clip_model
        clip = load_clip_model(cfg.clip_model or backbone.default_clip, weights_dir=args.weights_dir, device=device)
    from asyrp.pipeline.distributed import context_from_env
    dist = context_from_env()
    path = train(cfg, args.out, backbone=backbone, clip=clip, resume=args.resume, distributed=dist)
    if dist is None or dist.rank == 0:
        print(f"direction written to {path}")
    if dist is not None:
        dist.close()
    return 0
