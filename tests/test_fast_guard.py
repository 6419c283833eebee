"""The fast path is numerically guarded: fp16 stays within the stated bounds of the fp32 reference (asyrp.guard's
numerical guard, on the tiny U-Net / tiny CLIP), and the fast preset's restructurings (the fused chain, batching,
caching, compiled U-Net halves) are exact in fp32."""

import copy
import math

import pytest
import torch

from asyrp import bench
from asyrp.pipeline import train as T
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
    g = bench.numerical_guard(bb.unet, encoder, size, device="cpu", backbone=bb)
    assert g["passed"], g["checks"]
    assert set(g["checks"]) == {"eps_edit_rel_err", "loss_clip_rel_err", "loss_l1_scaled_err", "loss_scaled_err",
                                "inversion_error", "delta_h_cosine", "delta_h_cosine_precision"}
    for name, c in g["checks"].items():
        assert c["passed"] and math.isfinite(c["value"]), name
    assert g["checks"]["inversion_error"]["informative"]  # t_0 = 400 keeps the untrained U-Net out of chaos
    # fp16 is not exact: the errors are of fp16's order, not zero
    assert 1e-4 < g["checks"]["eps_edit_rel_err"]["value"] < 1e-2
    rep = g["reported"]
    # the initial edit was scaled to 0.1 of ε (the tiny U-Net responds linearly here)
    assert rep["edit_size"] == pytest.approx(0.1, rel=0.25)
    # at equal precision the fast preset learns the reference's direction; the paper's same-x_t target does not
    assert g["checks"]["delta_h_cosine"]["value"] > 0.9999
    assert rep["delta_h_cosine_same_xt_vs_chain"] < 0.95
    # both modes at the same batch size, the same objective
    for mode in ("reference", "fast"):
        assert g["switches"][mode]["batch_size"] == 4 and g["switches"][mode]["l1_reference"] == "chain"
    assert g["switches"]["fast"]["precision"] == "fp16" and g["switches"]["fast"]["fused_step"]
    assert rep["skipped_steps"] == {"reference": 0, "fast": 0, "fast_fp32": 0, "fast_same_xt": 0}


@pytest.mark.parametrize("change,failing", [({"l1_weight": 0.0}, ("loss_scaled_err", "delta_h_cosine")),
                                            ({"l1_reference": "same_xt"}, ("delta_h_cosine",))])
def test_numerical_guard_detects_a_changed_computation(models, one_thread, change, failing):
    """Negative controls: a 'fast' mode that drops the L1 term, or learns the paper's same-x_t target instead of the
    reference's chain, is caught."""
    bb, encoder, size = models
    g = bench.numerical_guard(bb.unet, encoder, size, device="cpu", backbone=bb, batch_size=2, n_train_step=10,
                              n_inv_step=10, fast=change)
    assert not g["passed"]
    for name in failing:
        assert not g["checks"][name]["passed"], name
    assert g["checks"]["eps_edit_rel_err"]["passed"]  # the U-Net itself is unchanged


def test_fast_preset_in_fp32_learns_the_reference_weights(models, one_thread):
    """Only precision / compile / memory switches separate the presets: in fp32 at batch 1 the fast preset's learnt
    weights equal the reference's within 1e-5 after 5 SGD steps (the fused chain and the cached source embeddings
    are exact restructurings)."""
    bb, encoder, size = models
    entries = _entries(n=1)
    weights = {}
    for mode in ("reference", "fast"):
        extra = {"precision": "fp32"} if mode == "fast" else {}
        cfg = bench.mode_config(mode, device="cpu", n_train_step=10, lr=0.5, **extra)
        session = T.Session(cfg, bb, T.make_direction(encoder, size, cfg, "cpu"), "cpu")
        assert session.pairs == [(999, 888), (888, 777), (777, 666), (666, 555), (555, -1)]
        session.run_batch(entries, [0])
        assert session.state["step"] == 5
        weights[mode] = {k: v.clone() for k, v in session.block.state_dict().items()}
        init = T.init_block(cfg, T.DeltaBlockConfig.from_dict(session.res.delta), "cpu")
        moved = sum(float((v - init.state_dict()[k]).abs().max()) for k, v in weights[mode].items())
        assert moved > 1e-3  # the block did learn
    assert bench.mode_config("fast", device="cpu").fused_step and bench.mode_config("fast").l1_reference == "chain"
    for k, v in weights["reference"].items():
        torch.testing.assert_close(weights["fast"][k], v, rtol=1e-5, atol=1e-5, msg=k)


def _host_reads_fail(monkeypatch):
    """Make every read of a tensor's value on the host raise (what a device synchronisation is made of)."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was read on the host inside the training step")
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def test_fp16_training_step_never_reads_the_device(models, one_thread, monkeypatch):
    """The fast preset's fp16 grid (loss scaling included) runs without a host read: the fused optimiser skips an
    overflowed step on the device and the skipped steps are counted there until ``sync_state``."""
    bb, encoder, size = models
    cfg = bench.mode_config("fast", batch_size=2, device="cpu", n_train_step=10, lr=0.5)
    assert cfg.precision == "fp16"
    session = T.Session(cfg, bb, T.make_direction(encoder, size, cfg, "cpu"), "cpu")
    assert session.scaler is not None and session.opt.defaults["fused"]
    entries = _entries()
    with monkeypatch.context() as m:
        _host_reads_fail(m)
        records = session.run_batch(entries, [0, 1])
    assert session.state["step"] == 5 and len(records) == 5
    assert session.sync_state()["skipped_steps"] == 0
    # the check has teeth: an unfused optimiser makes the scaler read its overflow flag on the host
    session.opt = torch.optim.SGD(session.params, lr=0.5)
    with monkeypatch.context() as m, pytest.raises(AssertionError, match="read on the host"):
        _host_reads_fail(m)
        session.run_batch(entries, [0, 1])


def test_fp16_overflowed_steps_are_skipped_and_counted(models, one_thread):
    """A loss scale of 2^40 overflows fp16 in the backward pass at every step: each step is skipped (the block keeps its
    initial weights), the scale halves each time, and sync_state() reports the five skipped steps."""
    bb, encoder, size = models
    cfg = bench.mode_config("fast", batch_size=2, device="cpu", n_train_step=10, lr=0.5, fp16_loss_scale=2.0 ** 40)
    session = T.Session(cfg, bb, T.make_direction(encoder, size, cfg, "cpu"), "cpu")
    init = {k: v.clone() for k, v in session.block.state_dict().items()}
    session.run_batch(_entries(), [0, 1])
    assert session.state["step"] == 5
    assert session.sync_state()["skipped_steps"] == 5 and int(session.skipped) == 0
    assert session.scaler.get_scale() == 2.0 ** 35
    for k, v in session.block.state_dict().items():
        assert torch.equal(v, init[k]), k


def test_one_compiled_graph_serves_every_timestep(models, one_thread):
    """Compiled U-Net halves take the timestep as a tensor: a whole training grid (and an edit of another batch)
    compiles each graph once — the encoder and plain decoder on [x; chain], the edited decoder with gradients."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from asyrp.pipeline import fast

    bb, encoder, size = models
    cfg = bench.mode_config("fast", batch_size=2, device="cpu", n_train_step=20, precision="fp32", compile=True)
    session = T.Session(cfg, bb, T.make_direction(encoder, size, cfg, "cpu"), "cpu")
    session.run_unet = fast.CompiledUNet(bb.unet, backend="eager")  # dynamo's graphs without inductor's C++ build
    torch._dynamo.reset()
    counters.clear()
    session.run_batch(_entries(), [0, 1])
    assert len(session.pairs) == 10 and session.state["step"] == 10
    assert counters["stats"]["unique_graphs"] == 3
    assert sum(counters["recompiles"].values()) == 0 if "recompiles" in counters else True
    session.run_batch(_entries(seed=6), [1, 0])
    assert counters["stats"]["unique_graphs"] == 3  # another batch of the same size: no new graph


def test_group_norm_32_is_group_norm_in_fp32_and_computes_fp16_in_fp32():
    from asyrp.models.unet import GroupNorm32
    torch.manual_seed(0)
    g32, ref = GroupNorm32(32, 64, eps=1e-6), torch.nn.GroupNorm(32, 64, eps=1e-6)
    with torch.no_grad():
        for p, q in zip(g32.parameters(), ref.parameters()):
            p.normal_()
            q.copy_(p)
    x = torch.randn(2, 64, 8, 8) * 30 + 100  # a large mean: where reduced-precision statistics break first
    assert torch.equal(g32(x), ref(x))
    y = g32(x.half())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), ref(x.half().float()), rtol=1e-3, atol=1e-3)


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
        session = T.Session(cfg, bb, direction, "cpu")
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
    direction = T.make_direction(encoder, size, cfg, "cpu")
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
        session = T.Session(cfg, bb, T.make_direction(encoder, size, cfg, "cpu"), "cpu")
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
