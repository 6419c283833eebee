"""Several directions at once: the weight of direction i is strength × c_i/√k × n_train/n_test, with c_i = 1 unless
given — the reference's hs_coeff = (c0, s·c_1/√k, …, s·c_k/√k) for --multiple_hs_coeff (spec §6.2)."""

import math

import pytest

from asyrp.cli import UserError
from asyrp.pipeline.edit import Direction, EditConfig, settings_for


def _directions(k, n_train_step=40):
    return [Direction(None, f"d{i}.pt", f"a{i}", n_train_step, 500, None) for i in range(k)]


def test_default_coefficients_are_one_over_sqrt_k():
    (s,) = settings_for(EditConfig(n_test_step=40), _directions(3))
    assert s["weights"] == pytest.approx([1 / math.sqrt(3)] * 3, abs=1e-15)


def test_explicit_coefficients_are_divided_by_sqrt_k_as_the_reference():
    (s,) = settings_for(EditConfig(n_test_step=20, coefficients=[1.0, 0.5], strengths=[2.0]), _directions(2))
    # strength 2 × c_i/√2 × 40/20
    assert s["weights"] == pytest.approx([2 * 1.0 / math.sqrt(2) * 2, 2 * 0.5 / math.sqrt(2) * 2], abs=1e-15)
    (one,) = settings_for(EditConfig(n_test_step=40, coefficients=[0.7]), _directions(1))
    assert one["weights"] == [0.7]  # k = 1: √1 = 1


def test_a_wrong_number_of_coefficients_is_an_error():
    with pytest.raises(UserError, match="^3 directions need 3 coefficients, got 2$"):
        settings_for(EditConfig(coefficients=[1.0, 1.0]), _directions(3))
