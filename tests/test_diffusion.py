"""Schedule, grids, single steps and t_edit / t_boost selection against timestep_schedule.pt."""

import numpy as np
import pytest
import torch

from asyrp import diffusion as D
from conftest import assert_close_fp32, load_fixture


DDIM_STEP_ULPS = 16  # the tolerance rule of conftest.assert_close_fp32: one DDIM step is ~16 float32 operations


@pytest.fixture(scope="module")
def fx():
    return load_fixture("timestep_schedule.pt")


def test_schedule(fx):
    betas = D.linear_betas()
    assert torch.equal(betas, fx["betas_f32"])
    assert torch.equal(D.alphas_cumprod(betas), fx["alphas_cumprod_f32_step"])
    assert abs(float(D.alphas_cumprod(betas)[999]) - 4.0358e-5) < 1e-8


def test_grids(fx):
    seq = fx["sequences"]
    assert D.timestep_grid(40) == list(seq["seq_inv"]) == list(seq["seq_test"])
    assert D.inversion_pairs(40) == [tuple(p) for p in seq["inversion_pairs_t_to_t_next"]]
    assert D.generative_pairs(40) == [tuple(p) for p in seq["generative_pairs_t_to_t_next"]]
    for n, expected in seq["other_n_step_examples"].items():
        assert D.timestep_grid(int(n)) == list(expected), n
    for t_edit, entry in seq["seq_train_by_t_edit"].items():
        assert D.training_pairs(40, int(t_edit)) == [tuple(p) for p in entry["training_pairs_t_to_t_next"]], t_edit
    assert len(D.training_pairs(40, 513)) == 19 and D.training_pairs(40, 513)[-1] == (537, -1)
    assert D.timestep_grid(10)[7] == 777  # the +1e-6 matters here


def test_alpha_bar(fx):
    a = D.alphas_cumprod(D.linear_betas())
    got = D.alpha_bar(a, torch.tensor([0, 999, -1]))
    assert got.shape == (3, 1, 1, 1)
    assert got.flatten().tolist() == [a[0].item(), a[999].item(), 1.0]
    with pytest.raises(ValueError, match="timesteps must lie in"):
        D.alpha_bar(a, torch.tensor([1000]))


def test_every_single_step(fx):
    a = D.alphas_cumprod(D.linear_betas())
    for step in fx["steps"]:
        a_t, a_next = D.alpha_bar(a, step["t"]), D.alpha_bar(a, step["t_next"])
        assert float(a_t) == pytest.approx(step["a_t"], abs=0) and float(a_next) == pytest.approx(step["a_t_next"], abs=0)
        edit_active = step["index"] >= 0 and step["t"] >= step["t_edit"]
        eps_edited = fx["eps_edited"] if edit_active else None
        # dt_lambda acts only at the first step (t ≥ 999), as in the reference
        dt_lambda = step["dt_lambda"] if step["t"] >= 999 else 1.0
        x_next, x0 = D.ddim_step(fx["x_t"], fx["eps"], a_t, a_next, eps_edited=eps_edited, eta=step["eta"],
                                 noise=step.get("noise"), dt_lambda=dt_lambda)
        # ~16 dependent float32 operations per element (P_t, σ, the update); measured ≤ 0.13 ulps across CPUs
        assert_close_fp32(x0, step["x0_pred"], ulps=DDIM_STEP_ULPS, msg=f"{step['kind']} P_t at t={step['t']}")
        assert_close_fp32(x_next, step["x_t_next"], ulps=DDIM_STEP_ULPS, msg=f"{step['kind']} x_next at t={step['t']}")


def test_asymmetric_step_uses_plain_eps_for_direction():
    a = D.alphas_cumprod(D.linear_betas())
    x, eps, eps_e = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0)).unbind(0)
    a_t, a_n = D.alpha_bar(a, 600), D.alpha_bar(a, 575)
    x_next, x0 = D.ddim_step(x, eps, a_t, a_n, eps_edited=eps_e)
    torch.testing.assert_close(x0, (x - (1 - a_t).sqrt() * eps_e) / a_t.sqrt())
    torch.testing.assert_close(x_next, a_n.sqrt() * x0 + (1 - a_n).sqrt() * eps)


def test_eta_needs_noise():
    a = D.alphas_cumprod(D.linear_betas())
    with pytest.raises(ValueError, match="needs explicit `noise`"):
        D.ddim_step(torch.zeros(1), torch.zeros(1), D.alpha_bar(a, 10), D.alpha_bar(a, 5), eta=1.0)


def test_boost_and_scale():
    assert D.boost_eta(166, 167) == 1.0 and D.boost_eta(167, 167) == 0.0 and D.boost_eta(5, None) == 0.0
    assert D.delta_scale(40, 1000, 1.0) == pytest.approx(0.04)
    assert D.delta_scale(40, 40, 0.5) == 0.5


def test_t_edit_selection(fx):
    for case in fx["t_edit_selection"]:
        assert D.select_t_edit(case["text_cosine"], "celeba", case["lpips_edit_th"]) == case["t_edit"]
        assert D.select_t_boost("celeba", case["lpips_addnoise_th"], case["add_noise_from_xt"]) == case["t_addnoise"]


def test_shipped_tables_equal_fixture(fx):
    for kind in ("x0_t", "x"):
        table = D.lpips_table("celeba", kind)
        assert [t for t, _ in table] == fx["celeba_lpips_tables"][kind]["t"].tolist()
        np.testing.assert_array_equal([v for _, v in table], fx["celeba_lpips_tables"][kind]["lpips"].numpy())


def test_t_edit_table_from_spec():
    # spec §3.5: celeba cos 0.6 / 0.7 / 0.8 / 0.85 / 0.9 / 0.95 / 1.0 → 421 / 459 / 489 / 503 / 514 / 526 / 538
    assert [D.select_t_edit(c) for c in (0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)] == [421, 459, 489, 503, 514, 526, 538]
    assert D.select_t_boost("celeba", 0.1, from_xt=False) == 193
    assert D.select_t_boost("church", 1.2, from_xt=True) == 293
    with pytest.raises(ValueError, match="no timestep reaches LPIPS 1.2"):
        D.select_t_boost("celeba", 1.2, from_xt=False)
    with pytest.raises(ValueError, match="no LPIPS table for dataset 'ffhq'"):
        D.select_t_edit(0.9, "ffhq")
