"""Image files: tensors in [−1, 1] to PNGs and grids (the figures of the report live in asyrp.figures)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from asyrp.io import atomic_path


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (H, W, 3) tensor in [−1, 1] → H×W×3 uint8 (clamped, rounded)."""
    x = x.detach().float().cpu()
    if x.dim() == 3 and x.shape[0] in (1, 3):
        x = x.permute(1, 2, 0)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def save_png(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> Path:
    array = image if isinstance(image, np.ndarray) else to_uint8(image)
    with atomic_path(path) as tmp:
        Image.fromarray(array.squeeze()).save(tmp, format="PNG")
    return Path(path)


def load_png(path: str | os.PathLike) -> torch.Tensor:
    """PNG → (3, H, W) float tensor in [−1, 1] (the inverse of :func:`save_png` up to rounding)."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1


def grid(rows: Sequence[torch.Tensor | Sequence[torch.Tensor]], pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Rows of images (each row a (N, 3, H, W) tensor or a list of (3, H, W)) → one uint8 grid."""
    rows = [[to_uint8(im) for im in row] for row in rows]
    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncols * (w + pad) + pad, 3), pad_value, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            out[pad + i * (h + pad): pad + i * (h + pad) + h, pad + j * (w + pad): pad + j * (w + pad) + w] = im
    return out


def save_rows(path: str | os.PathLike, rows: Sequence[torch.Tensor | Sequence[torch.Tensor]], pad: int = 2) -> Path:
    return save_png(path, grid(rows, pad=pad))
