"""Samplers as small functions over a frozen U-Net: DDIM inversion, (edited) generation, sampling from noise.

Each takes the model, the ᾱ table and tensors, and returns tensors; the step maths lives in :mod:`asyrp.diffusion`.
Timesteps are applied per sample (a (B,) tensor), so results do not depend on how images are batched. Noise for
quality boosting comes from one ``torch.Generator`` per image (``noise_generators``), for the same reason.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from asyrp import diffusion as D


class DeltaSum(nn.Module):
    """Σ_i w_i · f_i(h, temb): several directions at once, or an interpolation between two (weights 1−α, α)."""

    def __init__(self, blocks: Sequence[nn.Module], weights: Sequence[float]):
        super().__init__()
        if len(blocks) != len(weights) or not blocks:
            raise ValueError(f"need one weight per direction, got {len(blocks)} blocks and {len(weights)} weights")
        self.blocks = nn.ModuleList(blocks)
        self.weights = [float(w) for w in weights]

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        return sum(w * block(h, temb) for w, block in zip(self.weights, self.blocks))


def _t(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device)


def _noise(generators: Sequence[torch.Generator] | None, x: torch.Tensor) -> torch.Tensor:
    if generators is None:
        raise ValueError("quality boosting (η = 1 below t_boost) needs noise_generators, one per image")
    if len(generators) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} images need {x.shape[0]} noise generators, got {len(generators)}")
    return torch.stack([torch.randn(x.shape[1:], generator=g, device=g.device) for g in generators]).to(x)


@torch.no_grad()
def invert(unet: nn.Module, x0: torch.Tensor, alphas: torch.Tensor, n_steps: int = 40, t_0: int = 999,
           progress: bool = False) -> torch.Tensor:
    """Deterministic DDIM inversion x0 → x_{t_0} over n−1 steps; ε is evaluated at the lower timestep."""
    x = x0
    for t, t_next in tqdm(D.inversion_pairs(n_steps, t_0), desc="invert", disable=not progress, leave=False):
        eps = unet(x, _t(t, x))
        x, _ = D.ddim_step(x, eps, D.alpha_bar(alphas, t), D.alpha_bar(alphas, t_next))
    return x


@torch.no_grad()
def generate(unet: nn.Module, x_T: torch.Tensor, alphas: torch.Tensor, n_steps: int = 40, t_0: int = 999,
             delta: nn.Module | None = None, t_edit: int = 0, c0: float = 1.0, c1: float = 1.0,
             t_boost: int | None = None, noise_generators: Sequence[torch.Generator] | None = None,
             ignore_timestep: bool = False, progress: bool = False,
             on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Reverse process from x_{t_0}: plain DDIM, or Asyrp when ``delta`` is given.

    Δh (times c1) is added for t ≥ t_edit (the second decoder runs only there); below t_boost, η = 1 with noise from
    ``noise_generators``. The last step maps t = 0 to the predicted x0.
    """
    x = x_T
    for t, t_next in tqdm(D.generative_pairs(n_steps, t_0), desc="generate", disable=not progress, leave=False):
        a_t, a_next = D.alpha_bar(alphas, t), D.alpha_bar(alphas, t_next)
        if delta is not None and t >= t_edit:
            eps, eps_edited, _, _ = unet.forward_edit(x, t, delta, t_edit, c0=c0, c1=c1,
                                                      ignore_timestep=ignore_timestep)
        else:
            eps = eps_edited = unet(x, _t(t, x))
        eta = D.boost_eta(t, t_boost)
        noise = _noise(noise_generators, x) if eta > 0 and t_next >= 0 else None
        x, x0 = D.ddim_step(x, eps, a_t, a_next, eps_edited=eps_edited, eta=eta if noise is not None else 0.0,
                            noise=noise)
        if on_step is not None:
            on_step(t, x, x0)
    return x


@torch.no_grad()
def sample(unet: nn.Module, noise: torch.Tensor, alphas: torch.Tensor, n_steps: int = 40, t_0: int = 999,
           progress: bool = False) -> torch.Tensor:
    """Images from the DDPM itself: deterministic DDIM (η = 0) from x_{t_0} = ``noise``."""
    return generate(unet, noise, alphas, n_steps, t_0, progress=progress)


def image_generators(seed: int, indices: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per image, seeded by (seed, image index): the same image gets the same noise in any batch."""
    return [torch.Generator(device=device).manual_seed(seed * 1_000_003 + int(i)) for i in indices]
