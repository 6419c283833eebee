"""How the fast path runs the same computation quicker: precision, loss scaling, and compiled U-Net halves.

* :func:`autocast` — fp16 or bf16 autocast for the U-Net and CLIP (the DDIM maths and the loss stay fp32: callers cast
  ε to fp32 before they use it; the U-Net's GroupNorms compute in fp32, see ``asyrp.models.unet.GroupNorm32``).
  fp16 keeps 11 significant bits against bf16's 8: on the full-size U-Net the guard measured ε̃'s error against fp32
  as 1.5e-3 in fp16 and 1.1e-2 in bf16 (two H200 runs, benchmarks/README.md), which is why the fast preset uses fp16
  on every training step.
* :func:`make_grad_scaler` — fp16 has a narrow exponent range. The L1 term's gradient per pixel is
  λ_L1·cos/N (N = B·3·256² values) times √((1−ᾱ)/ᾱ) ≥ 4: about 1e-5/B at the edited decoder's output, below fp16's
  smallest normal number (6.1e-5). The backward pass therefore runs on the loss times a scale (dynamic loss scaling,
  initial 1024), and the gradients are unscaled in fp32 before the optimiser step; a step whose gradients overflow is
  skipped and counted (``skipped_steps`` in the run's ``done.json``).
* :class:`CompiledUNet` — ``torch.compile`` of the U-Net's ``encode`` and ``decode`` with the timesteps passed as a
  (B,) tensor, so that one graph serves every timestep of a grid (a Python timestep would be baked into the graph and
  recompile at each step). It offers the U-Net's call signatures, so the samplers and the training step run on it
  unchanged.
* :func:`use_compile_cache` — inductor's caches under ``$ASYRP_HOME/compile``: a second run on the same machine
  loads the compiled kernels instead of compiling them again.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from asyrp.models.unet import forward_edit_with, per_sample_timesteps
from asyrp.io.weights import asyrp_home

PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def autocast(device: torch.device | str, precision: str):
    """The autocast context of a precision (``fp32``: none)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def make_grad_scaler(precision: str, device: torch.device | str, init_scale: float = 1024.0):
    """A dynamic loss scaler for fp16 (None for fp32 / bf16, whose exponent range is fp32's)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type, init_scale=init_scale)


def resolve_compile(compile: bool | None, device: torch.device | str) -> bool:
    """``None`` means "on CUDA": compiling pays off there; on a CPU the warm-up costs more than it saves."""
    return torch.device(device).type == "cuda" if compile is None else bool(compile)


def compile_cache_dir() -> Path:
    return asyrp_home() / "compile"


def use_compile_cache() -> Path:
    """Point inductor's (and Triton's) caches at ``$ASYRP_HOME/compile`` unless the user set them; returns the folder."""
    folder = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or compile_cache_dir())
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    return folder


class CompiledUNet(nn.Module):
    """A U-Net whose encoder and decoder run as compiled graphs; same call signatures as ``DDPMUNet``.

    ``unet(x, t)``, ``forward_edit(...)``, ``encode(x, t)`` and ``decode(h, skips, temb, x, t)`` take Python or tensor
    timesteps; Python ones become a (B,) tensor *before* the compiled call, so the graph does not depend on t. Each new
    batch size or gradient mode (the training step's no-grad plain pass vs its edited pass) is a graph of its own.
    """

    def __init__(self, unet: nn.Module, mode: str = "default", backend: str = "inductor"):
        super().__init__()
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r} is not one of {COMPILE_MODES}")
        use_compile_cache()
        self.unet = unet
        self.mode = mode
        kwargs = dict(dynamic=False, backend=backend, mode=None if mode == "default" else mode)
        self._encode = torch.compile(unet.encode, **kwargs)
        self._decode = torch.compile(unet.decode, **kwargs)

    # the attributes callers read from a DDPMUNet
    @property
    def image_size(self) -> int:
        return self.unet.image_size

    @property
    def h_channels(self) -> int:
        return self.unet.h_channels

    @property
    def h_size(self) -> int:
        return self.unet.h_size

    @property
    def temb_ch(self) -> int:
        return self.unet.temb_ch

    @property
    def config(self) -> dict:
        return self.unet.config

    def encode(self, x: torch.Tensor, t):
        return self._encode(x, per_sample_timesteps(t, x.shape[0], x.device))

    def decode(self, h, skips, temb, x=None, t=None):
        if t is not None and x is not None:
            t = per_sample_timesteps(t, x.shape[0], x.device)
        return self._decode(h, skips, temb, x, t)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = per_sample_timesteps(t, x.shape[0], x.device)
        h, skips, temb = self._encode(x, t)
        return self._decode(h, skips, temb, x, t)

    def forward_edit(self, x, t, delta_block, t_edit, c0=1.0, c1=1.0, ignore_timestep=False, need_eps=True):
        return forward_edit_with(self.encode, self.decode, x, t, delta_block, t_edit, c0, c1, ignore_timestep,
                                 need_eps)


def maybe_compiled(unet: nn.Module, compile: bool, mode: str = "default") -> nn.Module:
    return CompiledUNet(unet, mode) if compile else unet


def mark_step() -> None:
    """Tell CUDA-graph trees (``reduce-overhead``) that a new iteration begins (a no-op elsewhere)."""
    if hasattr(torch, "compiler") and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
        torch.compiler.cudagraph_mark_step_begin()
