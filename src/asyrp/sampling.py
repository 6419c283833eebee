"""Samplers as small functions over a frozen U-Net: DDIM inversion, (edited) generation, sampling from noise, and
two probes of h along a reverse path (the Δh / h ratio of a delta block; regeneration with another image's h).

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


# --- probes of h along a reverse path (η = 0) ---------------------------------------------------------------

@torch.no_grad()
def delta_h_ratio(unet: nn.Module, block: nn.Module, x_T: torch.Tensor, t_edit: int, n_steps: int,
                  alphas: torch.Tensor | None = None, strength: float = 1.0, t_0: int = 999) -> dict:
    """‖strength·Δh‖ / ‖h‖ per image along the edited path of that strength (η = 0, h̃ = h + strength·Δh) from
    ``x_T`` = x_{t_0}, at every t ≥ t_edit (``alphas``: the ᾱ table, default the linear-β DDPM's): how far the learnt
    edit moves h compared with h itself (mean, min and max over images and steps). Strength 0 walks the unedited path
    and gives 0; the edit is small in the paper's sense when the ratio stays well below 1."""
    alphas = (D.alphas_cumprod(D.linear_betas()) if alphas is None else alphas).to(x_T.device)
    x, ratios = x_T, []
    for t, t_next in D.generative_pairs(n_steps, t_0):
        if t < t_edit:
            break
        eps, eps_edited, h, dh = unet.forward_edit(x, t, block, t_edit, c1=strength)
        ratios.append(abs(strength) * dh.flatten(1).norm(dim=1) / h.flatten(1).norm(dim=1))
        x = D.ddim_step(x, eps, D.alpha_bar(alphas, t), D.alpha_bar(alphas, t_next), eps_edited=eps_edited)[0]
    r = torch.cat(ratios)
    return {"mean": round(float(r.mean()), 4), "min": round(float(r.min()), 4), "max": round(float(r.max()), 4)}


@torch.no_grad()
def h_swap(unet: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor, t_edit: int, n_steps: int,
           asymmetric: bool = False, alphas: torch.Tensor | None = None,
           ratios: list[torch.Tensor] | None = None, t_0: int = D.T_0) -> torch.Tensor:
    """Regenerate A from x_a (its x_T) with B's h, taken along B's own reverse path from x_b, replacing A's h at
    every t ≥ t_edit (x_a, x_b: latents at t_0). Symmetric (default): both the predicted x0 and the direction use
    the swapped ε.
    ``asymmetric``: Asyrp's step — only the predicted x0 uses it, the direction keeps A's own ε — i.e. the edit of a
    delta block whose Δh is exactly h_B − h_A. ``ratios``: a list that receives ‖h_B − h_A‖ / ‖h_A‖ per image at each
    swapped step (how long that Δh is against h)."""
    alphas = (D.alphas_cumprod(D.linear_betas()) if alphas is None else alphas).to(x_a.device)
    for t, t_next in D.generative_pairs(n_steps, t_0):
        h_a, skips, temb = unet.encode(x_a, t)
        h_b, skips_b, temb_b = unet.encode(x_b, t)
        a_t, a_next = D.alpha_bar(alphas, t), D.alpha_bar(alphas, t_next)
        eps_b = unet.decode(h_b, skips_b, temb_b, x_b, t)
        if ratios is not None and t >= t_edit:
            ratios.append((h_b - h_a).flatten(1).norm(dim=1) / h_a.flatten(1).norm(dim=1))
        if t < t_edit:
            eps_a, eps_edited = unet.decode(h_a, skips, temb, x_a, t), None
        elif asymmetric:
            eps_a, eps_edited = unet.decode(h_a, skips, temb, x_a, t), unet.decode(h_b, skips, temb, x_a, t)
        else:
            eps_a, eps_edited = unet.decode(h_b, skips, temb, x_a, t), None
        x_a = D.ddim_step(x_a, eps_a, a_t, a_next, eps_edited=eps_edited)[0]
        x_b = D.ddim_step(x_b, eps_b, a_t, a_next)[0]
    return x_a
