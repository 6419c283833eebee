"""A training run's settings as plain data: :class:`TrainConfig` (every field is a flag of ``asyrp train`` and a key
of its YAML), the named presets (``reference``: the original's work; ``fast``: the same objective, quicker), and
the two settings-derived pieces the loop asks for (the optimiser, the precision of a step)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asyrp import diffusion as D
from asyrp.models.delta import DeltaBlockConfig
from asyrp.pipeline import fast


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


def make_optimizer(params, cfg: TrainConfig):
    """The optimiser and its learning-rate schedule. fp16 training uses the fused implementation: with a loss scaler
    it skips an overflowed step on the device, where the others make the scaler read the overflow flag on the host
    (a synchronisation at every timestep)."""
    fused = True if cfg.precision == "fp16" else None
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.scheduler_step, gamma=cfg.scheduler_gamma) \
        if cfg.scheduler_step > 0 else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def step_precision(cfg: TrainConfig, t: int) -> str:
    """bf16 only where the x0 prediction amplifies ε's error by at most ``bf16_max_x0_gain`` (host-side maths)."""
    if cfg.precision != "bf16":
        return cfg.precision
    a_t = float(D.alpha_bar(D.alphas_cumprod(D.linear_betas()), t))
    return "bf16" if ((1 - a_t) / a_t) ** 0.5 <= cfg.bf16_max_x0_gain else "fp32"
