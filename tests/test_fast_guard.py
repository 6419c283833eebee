"""The fast path is numerically guarded: bf16 stays within the stated bounds of the fp32 reference (asyrp.bench's
numerical guard, on the tiny U-Net / tiny CLIP), and batching and caching are exact in fp32."""

import copy
import math
import time

import pytest
import torch

from asyrp import bench
from asyrp import diffusion as D
from asyrp import sampling
from asyrp.models.delta import build_delta_block
from conftest import tiny_backbone, tiny_clip, torch_threads


@pytest.fixture()
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def models():
    bb = tiny_backbone()
    encoder, size = tiny_clip()
    return bb, encoder, size


def test_numerical_guard_passes_on_tiny_models(models, one_thread):
    bb, encoder, size = models
    t0 = time.perf_counter()
    g = bench.numerical_guard(bb.unet, encoder, size, device="cpu", backbone=bb)
    assert g["passed"], g["checks"]
    assert set(g["checks"]) == {"eps_edit_rel_err", "loss_clip_rel_err", "loss_l1_scaled_err", "loss_scaled_err",
                                "inversion_error", "delta_h_cosine"}
    for name, c in g["checks"].items():
        assert c["passed"] and math.isfinite(c["value"]), name
    assert g["checks"]["inversion_error"]["informative"]  # t_0 = 400 keeps the untrained U-Net out of chaos
    # bf16 is not exact: the errors are of bf16's order, not zero
    assert 1e-3 < g["checks"]["eps_edit_rel_err"]["value"] < 5e-2
    # same_xt is a different objective: it moves the learnt direction more than rounding does
    rep = g["reported"]
    assert rep["delta_h_cosine_same_xt_vs_chain"] < g["checks"]["delta_h_cosine"]["value"]
    assert g["switches"]["fast"]["precision"] == "bf16" and g["switches"]["reference"]["batch_size"] == 1
    assert time.perf_counter() - t0 < 45


def test_numerical_guard_detects_a_changed_computation(models, one_thread):
    """Negative control: a 'fast' mode that drops the L1 term is caught by the loss and the Δh checks."""
    bb, encoder, size = models
    g = bench.numerical_guard(bb.unet, encoder, size, device="cpu", backbone=bb, batch_size=2, n_train_step=10,
                              n_inv_step=10, fast={"l1_weight": 0.0})
    assert not g["passed"]
    assert not g["checks"]["loss_scaled_err"]["passed"]
    assert not g["checks"]["delta_h_cosine"]["passed"]
    assert g["checks"]["eps_edit_rel_err"]["passed"]  # the U-Net itself is unchanged


# --------------------------------------------------------------------------------------------------
# Batching and caching are exact in fp32
# --------------------------------------------------------------------------------------------------

def _entries(n=2, size=16, seed=5):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    x_T = torch.randn(n, 3, size, size, generator=g)
    return [{"name": f"im{i}", "x0": x0[i], "x_T": x_T[i]} for i in range(n)]


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _recorded_run(cfg, bb, direction, entries, idx):
    """Run _train_batch over the whole grid; record every call of direction.cosines (edited images, cosines)."""
    calls = []
    original = direction.cosines

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((kwargs["edited_images"].detach().clone(), out.detach().clone()))
        return out

    direction.cosines = recording
    try:
        session = bench.TrainSession(cfg, bb, direction, "cpu")
        log = bench.log_values(session.run_batch(entries, idx))
    finally:
        del direction.cosines
    return calls, log


@pytest.mark.parametrize("l1_reference,cache", [("chain", False), ("same_xt", True)])
def test_training_batch_equals_definition(models, one_thread, l1_reference, cache):
    """Batch (a, b): per image the same edited predictions and cosines as training each alone (each image paired with
    its own source), the CLIP term −log((1 + mean cos)/2) and the mean L1 term. lr = 0 keeps the block fixed, so the
    whole grid is comparable."""
    bb, encoder, size = models
    cfg = bench.mode_config("reference", device="cpu", n_train_step=10, lr=0.0, l1_reference=l1_reference,
                            cache_source_embeddings=cache)
    direction = bench.make_direction(encoder, size, cfg, "cpu")
    entries = _entries()
    single = [_recorded_run(cfg, bb, direction, entries, [i]) for i in (0, 1)]
    batch_cfg = bench.mode_config("reference", batch_size=2, device="cpu", n_train_step=10, lr=0.0,
                                  l1_reference=l1_reference, cache_source_embeddings=cache)
    for order in ([0, 1], [1, 0]):
        calls, log = _recorded_run(batch_cfg, bb, direction, entries, order)
        assert len(calls) == len(log) == len(single[0][1]) == 5
        for k, ((edited, cos), rec) in enumerate(zip(calls, log)):
            for j, i in enumerate(order):
                e_i, c_i = single[i][0][k]
                # exact up to fp32 rounding of batch-size-dependent kernels (×157 in P_t at t = 999)
                assert _rel(edited[j:j + 1], e_i) < 1e-5, (k, i)
                torch.testing.assert_close(cos[j:j + 1], c_i, rtol=1e-5, atol=1e-6)
            cos_single = [single[i][0][k][1].item() for i in (0, 1)]
            assert rec["loss_clip"] == pytest.approx(-math.log((1 + sum(cos_single) / 2) / 2), rel=1e-5, abs=1e-7)
            # L1 = mean|P_edit − P_ref|, a difference: its rounding is relative to the operands P, not to L1
            assert rec["loss_l1"] == pytest.approx((single[0][1][k]["loss_l1"] + single[1][1][k]["loss_l1"]) / 2,
                                                   rel=1e-5, abs=1e-5 * float(edited.abs().mean()))


def test_cached_source_embeddings_are_exact(models, one_thread):
    bb, encoder, size = models
    entries = _entries()
    logs = []
    for cache in (False, True):
        cfg = bench.mode_config("reference", batch_size=2, device="cpu", n_train_step=10, lr=0.1,
                                cache_source_embeddings=cache)
        session = bench.TrainSession(cfg, bb, bench.make_direction(encoder, size, cfg, "cpu"), "cpu")
        logs.append((bench.log_values(session.run_batch(entries, [0, 1])), session.block.state_dict()))
    assert logs[0][0] == logs[1][0]  # every loss of every step, bit for bit
    for k, v in logs[0][1].items():
        assert torch.equal(v, logs[1][1][k]), k


def test_editing_in_a_batch_equals_one_by_one(models, one_thread):
    """Inversion + edited generation with quality boosting: the same per-image result (same per-image noise).

    In float64: the untrained U-Net's trajectory from t = 999 amplifies fp32 rounding of batch-size-dependent kernels
    (1e-6) to ~1e-2, which would hide whether the algorithm itself is batch-independent."""
    bb, _, _ = models
    unet = copy.deepcopy(bb.unet).double()
    torch.manual_seed(3)
    block = build_delta_block(channels=unet.h_channels, spatial_size=unet.h_size, temb_channels=unet.temb_ch).eval()
    delta = sampling.DeltaSum([block.double()], [1.0])
    alphas = D.alphas_cumprod(D.linear_betas())
    x0 = (torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1).double()
    kw = dict(n_inv_step=6, n_test_step=6, t_boost=500, seed=7)  # grid 999…0: Δh at 999, 799, 599; η = 1 below 500
    x_T, edited = bench.edit_images(unet, x0, delta, alphas, [10, 11], **kw)
    for j, i in enumerate((10, 11)):
        x_T_i, edited_i = bench.edit_images(unet, x0[j:j + 1], delta, alphas, [i], **kw)
        assert x_T.dtype == edited.dtype == torch.float64
        assert _rel(x_T[j:j + 1], x_T_i) < 1e-10 and _rel(edited[j:j + 1], edited_i) < 1e-8
    # the boost noise is per image: another index gives another edit
    _, other = bench.edit_images(unet, x0[:1], delta, alphas, [12], **kw)
    assert (other - edited[:1]).abs().max() > 1e-3
