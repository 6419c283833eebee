"""Labelled grids (asyrp.plots): the labels sit in bands above and left of the tiles, drawn with PIL's bitmap font."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asyrp.plots import LABEL_PAD, _text_height, _text_width, folder_label, grid

PAD = 2


def tiles(rows: int, cols: int, size: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.rand(cols, 3, size, size) * 2 - 1 for _ in range(rows)]


def test_labelled_grid_adds_a_label_band_above_and_left():
    rows = tiles(2, 3, 96)  # tiles wider than every label: no enlargement
    plain = grid(rows)
    cols, names = ["original", "reconstruction", "s=+1.00"], ["img_000", "img_001"]
    labelled = grid(rows, col_labels=cols, row_labels=names)
    header = _text_height() + 2 * LABEL_PAD
    left = _text_width("img_000") + 2 * LABEL_PAD
    assert (header, left) == (17, 48)  # the bitmap font: 11 px high, 6 px per character
    assert plain.shape == (2 * 98 + PAD, 3 * 98 + PAD, 3)
    assert labelled.shape == (plain.shape[0] + header, plain.shape[1] + left, 3)
    assert np.array_equal(labelled[header:, left:], plain)  # the tiles are untouched
    top, side = labelled[:header, left:], labelled[header:, :left]
    for band in (top, side):
        assert (band < 128).any() and (band == 255).mean() > 0.5  # dark label pixels on white
    # each column label is centred over its own tile
    for j, text in enumerate(cols):
        x0 = left + PAD + j * 98
        dark = np.nonzero((top[:, x0 - left: x0 - left + 96] < 128).any(axis=(0, 2)))[0]
        assert dark.size and abs((dark[0] + dark[-1]) / 2 - 48) <= 4, text


def test_small_tiles_are_enlarged_until_the_labels_fit():
    rows = tiles(1, 2, 32)
    out = grid(rows, col_labels=["original", "reconstruction"])
    assert _text_width("reconstruction") == 84
    assert out.shape == (_text_height() + 2 * LABEL_PAD + 96 + 2 * PAD, 2 * (96 + PAD) + PAD, 3)  # ×3 (nearest)
    assert np.array_equal(out[17 + PAD: 17 + PAD + 96: 3, PAD: PAD + 96: 3], grid(rows)[PAD: PAD + 32, PAD: PAD + 32])
    assert grid(tiles(1, 1, 8), col_labels=["reconstruction"]).shape[1] == 8 * 4 + 2 * PAD  # at most ×4


def test_labels_must_match_the_grid():
    with pytest.raises(ValueError, match="2 column labels for 3 columns"):
        grid(tiles(1, 3, 16), col_labels=["a", "b"])
    assert [folder_label(f) for f in ("original", "reconstructed", "edited", "edited_s-1.00", "edited_a0.50")] == [
        "original", "reconstruction", "edited", "s=-1.00", "a=0.50"]
