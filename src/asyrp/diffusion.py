"""Diffusion maths of Asyrp as small pure functions.

Conventions (those of the reference code, which the fixtures pin down):

* T = 1000 linear betas from 1e-4 to 0.02, built in float64 and kept in float32; ᾱ is the **float32**
  cumulative product of (1 - β), which is what the reference step recomputes.
* Timesteps are integers in [0, 999]; ``-1`` is a sentinel for "clean image" with ᾱ = 1.
* A grid of n steps is ``int(k * t_0 / (n - 1) + 1e-6)`` for k = 0..n-1 (truncated, not rounded).
* Asymmetric step (Asyrp): the predicted x0 P_t uses the edited ε̃, the direction term D_t uses the
  plain ε:  x_{t'} = √ᾱ_{t'} (x_t − √(1−ᾱ_t) ε̃)/√ᾱ_t + √(1−ᾱ_{t'}) ε  (+ σ z when η > 0).

Every function takes tensors and returns tensors; nothing here keeps state.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Sequence

import numpy as np
import torch

NUM_TIMESTEPS = 1000
CLEAN = -1  # "t_next = -1": the final step maps to the predicted x0 (ᾱ = 1)


# --------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------

def linear_betas(beta_start: float = 1e-4, beta_end: float = 0.02,
                 num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """Linear β schedule, computed in float64 like the reference and returned in float32."""
    return torch.from_numpy(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)).float()


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = Π_{s≤t} (1 − β_s) in the dtype of ``betas`` (float32 reproduces the reference step exactly)."""
    return (1.0 - betas).cumprod(dim=0)


def alpha_bar(alphas: torch.Tensor, t: torch.Tensor | int | Sequence[int]) -> torch.Tensor:
    """ᾱ at integer timesteps ``t`` (per sample), as a (B, 1, 1, 1) tensor; t = −1 gives 1.

    A scalar ``t`` gives a 0-d tensor that broadcasts over any batch.
    """
    if isinstance(t, int):  # a Python timestep: checked on the host, no device synchronisation
        if not CLEAN <= t < alphas.numel():
            raise ValueError(f"timesteps must lie in [-1, {alphas.numel() - 1}], got {t}")
        return alphas[t] if t >= 0 else torch.ones((), dtype=alphas.dtype, device=alphas.device)
    t = torch.as_tensor(t, device=alphas.device)
    if t.is_floating_point():
        t = t.long()
    if (t < CLEAN).any() or (t >= alphas.numel()).any():
        raise ValueError(f"timesteps must lie in [-1, {alphas.numel() - 1}], got {t.tolist()}")
    a = torch.where(t >= 0, alphas[t.clamp(min=0)], torch.ones((), dtype=alphas.dtype, device=alphas.device))
    return a.reshape(-1, 1, 1, 1) if a.dim() == 1 else a


# --------------------------------------------------------------------------------------------------
# Timestep grids
# --------------------------------------------------------------------------------------------------

T_0 = 999  # the original's t_0: invert to (and edit from) the last timestep

def _float_grid(n_steps: int, t_0: int) -> np.ndarray:
    if n_steps < 2:
        raise ValueError(f"a timestep grid needs at least 2 steps, got n_steps={n_steps}")
    return np.linspace(0, 1, n_steps) * t_0


def timestep_grid(n_steps: int, t_0: int = 999) -> list[int]:
    """The reference grid ``[int(s + 1e-6) for s in linspace(0, 1, n) * t_0]`` (ascending, floored)."""
    return [int(s + 1e-6) for s in _float_grid(n_steps, t_0)]


def inversion_pairs(n_steps: int, t_0: int = 999) -> list[tuple[int, int]]:
    """DDIM inversion (t → t_next, t < t_next): n−1 steps (0→25), …, (973→999) for n = 40."""
    seq = timestep_grid(n_steps, t_0)
    return list(zip(seq[:-1], seq[1:]))


def generative_pairs(n_steps: int, t_0: int = 999) -> list[tuple[int, int]]:
    """Generation (t → t_next, descending): n steps (999→973), …, (25→0), (0→−1)."""
    seq = timestep_grid(n_steps, t_0)
    seq_next = [CLEAN] + seq[:-1]
    return list(zip(reversed(seq), reversed(seq_next)))


def training_pairs(n_steps: int, t_edit: int, t_0: int = 999) -> list[tuple[int, int]]:
    """Training steps: grid points whose *float* value is ≥ t_edit, walked downwards.

    As in the reference, the filter is applied before truncation and the last step jumps from the
    smallest trained t straight to −1 (its x_next is never used).
    """
    seq = [int(s + 1e-6) for s in _float_grid(n_steps, t_0) if s >= t_edit]
    if not seq:
        raise ValueError(f"t_edit={t_edit} leaves no training step on the {n_steps}-step grid up to t_0={t_0}")
    seq_next = [CLEAN] + seq[:-1]
    return list(zip(reversed(seq), reversed(seq_next)))


# --------------------------------------------------------------------------------------------------
# Single steps
# --------------------------------------------------------------------------------------------------

def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """P_t = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t. Never clipped (the reference does not clip either)."""
    return (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def ddim_sigma(a_t: torch.Tensor, a_next: torch.Tensor, eta: float) -> torch.Tensor:
    """σ = η √((1 − ᾱ_t/ᾱ_next)(1 − ᾱ_next)/(1 − ᾱ_t))."""
    return eta * ((1 - a_t / a_next) * (1 - a_next) / (1 - a_t)).sqrt()


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor, a_next: torch.Tensor,
              eps_edited: torch.Tensor | None = None, eta: float = 0.0,
              noise: torch.Tensor | None = None, dt_lambda: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step; with ``eps_edited`` it is the Asyrp asymmetric step. Returns (x_next, P_t).

    * P_t comes from ``eps_edited`` when given (else ``eps``); the direction term always uses ``eps``.
    * η > 0 ("quality boosting" with η = 1) needs ``noise`` (z ~ N(0, I)); the caller owns the RNG.
    * ``dt_lambda`` scales the direction term (the reference applies it at t = 999 only; the caller
      decides when). It has no effect at its default of 1.
    Inversion is the same formula with t < t_next.
    """
    x0 = predict_x0(x_t, eps if eps_edited is None else eps_edited, a_t)
    if eta == 0:
        direction = (1 - a_next).sqrt() * eps
        if dt_lambda != 1.0:
            direction = direction * dt_lambda
        return a_next.sqrt() * x0 + direction, x0
    if noise is None:
        raise ValueError("ddim_step with eta > 0 needs explicit `noise` (draw it from your own generator)")
    sigma = ddim_sigma(a_t, a_next, eta)
    c = (1 - a_next - sigma ** 2).sqrt()
    return a_next.sqrt() * x0 + c * eps + sigma * noise, x0


def boost_eta(t: int, t_boost: int | None) -> float:
    """Quality boosting: η = 1 strictly below t_boost, 0 elsewhere (and 0 when boosting is off)."""
    return 1.0 if (t_boost is not None and t < t_boost) else 0.0


def delta_scale(n_train_step: int, n_test_step: int, strength: float = 1.0) -> float:
    """"Non-accelerated" Δh coefficient: n_train_step / n_test_step × strength.

    Sampling with more steps than training adds Δh more often, so each addition is scaled down.
    """
    if n_test_step <= 0 or n_train_step <= 0:
        raise ValueError(f"step counts must be positive, got n_train_step={n_train_step}, n_test_step={n_test_step}")
    return n_train_step / n_test_step * strength


# --------------------------------------------------------------------------------------------------
# t_edit / t_boost from the LPIPS tables
# --------------------------------------------------------------------------------------------------

LPIPS_DATASETS = ("celeba", "church", "bedroom", "afhq", "metface")


@functools.lru_cache(maxsize=None)
def lpips_table(dataset: str, kind: str) -> tuple[tuple[int, float], ...]:
    """The shipped LPIPS-vs-t table, ``kind`` = "x0_t" (LPIPS(P_t, x0)) or "x" (LPIPS(x_t, x0)).

    Rows are (t, lpips) in ascending t; as in the reference files t = 998 is missing.
    """
    if dataset not in LPIPS_DATASETS:
        raise ValueError(f"no LPIPS table for dataset {dataset!r}; known: {', '.join(LPIPS_DATASETS)} "
                         "(give t_edit and t_boost explicitly instead)")
    if kind not in ("x0_t", "x"):
        raise ValueError(f"LPIPS table kind must be 'x0_t' or 'x', got {kind!r}")
    text = resources.files("asyrp.resources.lpips").joinpath(f"{dataset}_LPIPS_distance_{kind}.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    return tuple(sorted((int(t), float(v)) for t, v in rows))


def _first_t_reaching(table: tuple[tuple[int, float], ...], threshold: float, what: str) -> int:
    for t, value in table:
        if value >= threshold:
            return t
    raise ValueError(f"no timestep reaches LPIPS {threshold:.4g} for {what} (max {max(v for _, v in table):.4g}); "
                     "lower the threshold or give the timestep explicitly")


def select_t_edit(text_cosine: float, dataset: str = "celeba", lpips_edit_th: float = 0.33) -> int:
    """t_edit = smallest t with LPIPS(P_t, x0) ≥ lpips_edit_th · cos(text_src, text_trg)."""
    return _first_t_reaching(lpips_table(dataset, "x0_t"), lpips_edit_th * text_cosine, f"t_edit on {dataset}")


def select_t_boost(dataset: str = "celeba", lpips_addnoise_th: float = 1.2, from_xt: bool = True) -> int:
    """t_boost (the reference's t_addnoise): smallest t whose LPIPS reaches the threshold.

    ``from_xt`` uses the LPIPS(x_t, x0) table (the reproduction's 167 at 1.2); otherwise the
    LPIPS(P_t, x0) table (193 at the reference default 0.1).
    """
    return _first_t_reaching(lpips_table(dataset, "x" if from_xt else "x0_t"), lpips_addnoise_th,
                             f"t_boost on {dataset}")


# Where an automatic t_boost comes from: the first t with LPIPS(x_t, x0) ≥ 1.2 (167 on CelebA-HQ). The original's
# reproduction scripts pass --add_noise_from_xt --lpips_addnoise_th 1.2; its flag defaults (LPIPS(P_t, x0) ≥ 0.1) give 193.
BOOST_LPIPS_TABLE = "x"
BOOST_LPIPS_TH = 1.2


def t_edit_from_table(text_cosine: float, dataset: str, lpips_edit_th: float = 0.33) -> tuple[int, str]:
    """:func:`select_t_edit` and the sentence that records where the value came from (config.json, edit.json)."""
    return (select_t_edit(text_cosine, dataset, lpips_edit_th),
            f"LPIPS table ({dataset}, x0_t, threshold {lpips_edit_th:g} × cos {text_cosine:.4f})")


def t_boost_from_table(dataset: str, lpips_boost_th: float = BOOST_LPIPS_TH,
                       table: str = BOOST_LPIPS_TABLE) -> tuple[int, str]:
    """:func:`select_t_boost` on the ``table`` ("x" or "x0_t") and the sentence that records the source."""
    if table not in ("x", "x0_t"):
        raise ValueError(f"the t_boost LPIPS table must be 'x' or 'x0_t', got {table!r}")
    return (select_t_boost(dataset, lpips_boost_th, from_xt=table == "x"),
            f"LPIPS table ({dataset}, {table}, threshold {lpips_boost_th:g})")
