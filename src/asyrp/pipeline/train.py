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

import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from asyrp import config as C
from asyrp import diffusion as D
from asyrp.pipeline import fast
from asyrp.errors import UserError
from asyrp.clip_loss import set_clip_precision
from asyrp.io.files import append_jsonl, atomic_json, atomic_torch_save, default_device
from asyrp.models.delta import DeltaBlockConfig, build_delta_block, load_delta_block, save_delta_block
from asyrp.pipeline.run_record import resolve_texts, resolve_training
from asyrp.pipeline.train_config import TrainConfig, make_optimizer, step_precision
from asyrp.clip_loss import CLIPDirection
from asyrp.backbones import load_backbone, load_clip_model
from asyrp.pipeline.inversion import InversionSettings, load_entries
from asyrp import sampling
from asyrp.plots import save_rows


# --------------------------------------------------------------------------------------------------
# Pieces of the loop
# --------------------------------------------------------------------------------------------------

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
        self.res = resolve_training(cfg, backbone, direction)
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
        # fp16 steps skipped for an overflow, counted on the device (no host sync per step) until sync_state()
        self.skipped = torch.zeros((), dtype=torch.int64, device=self.device)

    def run_batch(self, entries: list[dict], idx: list[int], pairs=None, eager: bool = False,
                  pending: list[dict] | None = None, distributed=None, global_batch: int | None = None) -> list[dict]:
        """Walk the grid (or ``pairs``) for the images ``idx``; returns the step records (loss tensors)."""
        pending = [] if pending is None else pending
        _train_batch(self, entries, idx, pending, list(pairs if pairs is not None else self.pairs), distributed,
                     global_batch or len(idx), eager=eager)
        return pending

    def sync_state(self) -> dict:
        """Bring the device-side counters into ``state`` (one host sync); returns ``state``."""
        self.state["skipped_steps"] = self.state.get("skipped_steps", 0) + int(self.skipped)
        self.skipped.zero_()
        return self.state

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

    if backbone is None:
        backbone = load_backbone(cfg.backbone, device=device)
    if clip is None:
        clip = load_clip_model(cfg.clip_model or backbone.default_clip, device=device)
    set_clip_precision(clip[0], cfg.clip_precision)
    direction = make_direction(*clip, cfg, device)
    res = resolve_training(cfg, backbone, direction)
    record = {"config": C.to_dict(cfg), "resolved": res.to_dict()}

    if is_main:
        if check_run_dir(run_dir, record, resume):
            return run_dir / "delta.pt"
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_json(run_dir / "config.json", record)
    if distributed is not None:
        distributed.barrier()

    if entries is None:
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
        session.sync_state()
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
            save_delta_block(block, run_dir / f"delta_epoch{state['epoch'] - 1}.pt", **res.checkpoint_meta(cfg, state))
        save_checkpoint()
    bar.close()
    flush_log()
    session.sync_state()
    final = run_dir / "delta.pt"
    if is_main:
        save_delta_block(block, final, **res.checkpoint_meta(cfg, state))
        atomic_json(run_dir / "done.json", {"seconds": state["seconds"], "images": state["images"],
                                            "steps": state["step"], "skipped_steps": state.get("skipped_steps", 0),
                                            "images_per_second": state["images"] / max(state["seconds"], 1e-9)})
    if distributed is not None:
        distributed.barrier()
    return final


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
    with torch.no_grad(), fast.autocast(device, cfg.precision):
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
        amp = fast.autocast(device, session.precisions.get(t) or step_precision(cfg, t))
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
            if scaler is not None:  # unscale in fp32, skip the step if a gradient overflowed fp16 (on the device)
                finite = torch.stack([torch.isfinite(p.grad).all() for p in session.params if p.grad is not None])
                session.skipped += (~finite.all()).long()
                scaler.step(opt)
                scaler.update()
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
