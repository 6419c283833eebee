"""FLOP counting of the benchmark: :class:`torch.utils.flop_counter.FlopCounterMode` on single training and editing
steps, scaled by the step counts (what is counted: :data:`FLOPS_COUNTED`), and the devices' dense bf16 peaks."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from asyrp import diffusion as D
from asyrp import sampling
from asyrp.pipeline import fast
from asyrp.pipeline import train as T
from asyrp.bench.guard import T_0, T_EDIT

FLOPS_COUNTED = ("torch.utils.flop_counter.FlopCounterMode: matrix multiplies (mm, addmm, bmm, baddbmm), convolutions, "
                 "CUDA scaled-dot-product attention, and their backward passes, at 2 FLOPs per multiply-add; "
                 "elementwise ops, normalisations, softmax outside SDPA, resizes and the optimiser are not counted "
                 "(nor, on a CPU, SDPA's flash kernel). Training: per-batch work + (grid steps - 1) typical steps "
                 "(forward, CLIP, L1 target, backward) + the last step, from counted 1-, 2-step and last-step calls "
                 "of _train_batch, per image; editing: one inversion step, one plain and one edited generation "
                 "step, each times its number of steps, per image.")


def bf16_peak_tflops(device_name: str | None) -> float | None:
    """Dense bf16 tensor-core peak of known devices (H100 SXM and H200: 989 TFLOP/s); None otherwise."""
    if not device_name:
        return None
    name = device_name.upper()
    if "NVL" in name or "PCIE" in name:
        return None
    if "H200" in name or ("H100" in name and ("SXM" in name or "HBM3" in name)):
        return 989.0
    return None


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (what is counted: :data:`FLOPS_COUNTED`)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def train_flops_per_image(session: T.Session, entries: list[dict], idx: list[int]) -> float:
    """FLOPs per image of the whole training grid from short counted calls of ``_train_batch``: the first step
    (per-batch work O + a typical step S), the first two (O + 2S) and the last alone (O + L; the last step skips the
    plain decoder in ``chain`` mode): O + (n − 1)·S + L. Runs optimiser steps on the session's block."""
    pairs, bs = session.pairs, len(idx)

    def flops(steps):
        return count_flops(lambda: session.run_batch(entries, idx, steps, eager=True))

    one = flops(pairs[:1])
    if len(pairs) == 1:
        return one / bs
    step = flops(pairs[:2]) - one
    last = flops(pairs[-1:])  # O + L
    return (one + (len(pairs) - 2) * step + last - (one - step)) / bs


def edit_flops_per_image(unet, x0: torch.Tensor, delta, alphas: torch.Tensor, precision: str = "fp32",
                         n_inv_step: int = 40, n_test_step: int = 40, t_0: int = T_0, t_edit: int = T_EDIT) -> float:
    """FLOPs per image of inversion + edited generation from counted single steps: a plain U-Net pass (one inversion
    step) and a 2-step generation (t_0 edited, 0 plain), each scaled by its number of steps."""
    with torch.no_grad(), fast.autocast(x0.device, precision):
        f_plain = count_flops(lambda: sampling.invert(unet, x0, alphas, 2, t_0))
        f_gen2 = count_flops(lambda: sampling.generate(unet, x0, alphas, 2, t_0, delta=delta, t_edit=t_edit))
    f_edit = f_gen2 - f_plain
    n_edited = sum(t >= t_edit for t, _ in D.generative_pairs(n_test_step, t_0))
    return ((n_inv_step - 1) * f_plain + n_edited * f_edit + (n_test_step - n_edited) * f_plain) / x0.shape[0]


