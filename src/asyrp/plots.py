"""Image files: tensors in [−1, 1] to PNGs and grids (the figures of the report live in asyrp.figures).

Every grid the workflow writes (``asyrp edit``'s and the demo's grid.png / sweep.png, training previews) carries its
row and column labels in the image — "original", "reconstruction", the strength, the attribute, the image name — so
that a picture explains itself without edit.json. Labels are drawn with PIL's built-in bitmap font (nothing to
download); tiles narrower than their labels are enlarged (nearest neighbour, at most ×4) until the labels fit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from asyrp.io.files import atomic_path

LABEL_FONT = ImageFont.load_default_imagefont()  # PIL's built-in bitmap font: ~6 px per character, 11 px high
LABEL_PAD = 3     # px around a label
MAX_UPSCALE = 4   # tiles are enlarged at most this much to fit their column labels


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


def grid(rows: Sequence[torch.Tensor | Sequence[torch.Tensor]], pad: int = 2, pad_value: int = 255,
         col_labels: Sequence[str] | None = None, row_labels: Sequence[str] | None = None) -> np.ndarray:
    """Rows of images (each row a (N, 3, H, W) tensor or a list of (3, H, W)) → one uint8 grid; with labels, a band
    above the columns and one left of the rows holds them (black on white)."""
    rows = [[to_uint8(im) for im in row] for row in rows]
    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    for name, labels, count in (("column", col_labels, ncols), ("row", row_labels, len(rows))):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{len(labels)} {name} labels for {count} {name}s")
    scale = 1
    if col_labels:  # enlarge small tiles (32 px shapes) until the widest column label fits
        scale = min(MAX_UPSCALE, max(1, math.ceil((max(_text_width(t) for t in col_labels) + 2) / w)))
    if scale > 1:
        rows = [[im.repeat(scale, axis=0).repeat(scale, axis=1) for im in row] for row in rows]
        h, w = h * scale, w * scale
    header = _text_height() + 2 * LABEL_PAD if col_labels else 0
    left = max(_text_width(t) for t in row_labels) + 2 * LABEL_PAD if row_labels else 0
    out = np.full((header + len(rows) * (h + pad) + pad, left + ncols * (w + pad) + pad, 3), pad_value,
                  dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            y, x = header + pad + i * (h + pad), left + pad + j * (w + pad)
            out[y: y + h, x: x + w] = im
    if not (col_labels or row_labels):
        return out
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(col_labels or ()):
        x = left + pad + j * (w + pad) + max(0, (w - _text_width(text)) // 2)
        draw.text((x, LABEL_PAD), text, fill=(0, 0, 0), font=LABEL_FONT)
    for i, text in enumerate(row_labels or ()):
        y = header + pad + i * (h + pad) + max(0, (h - _text_height()) // 2)
        draw.text((LABEL_PAD, y), text, fill=(0, 0, 0), font=LABEL_FONT)
    return np.asarray(canvas)


def _text_width(text: str) -> int:
    return math.ceil(LABEL_FONT.getlength(text))


def _text_height() -> int:
    left, top, right, bottom = LABEL_FONT.getbbox("Ag0")
    return bottom


def folder_label(folder: str) -> str:
    """The column label of an edit folder: original, reconstruction, edited, s=+1.00 (strength), α=0.50."""
    if folder == "reconstructed":
        return "reconstruction"
    if folder.startswith("edited_s"):
        return f"s={folder[len('edited_s'):]}"
    if folder.startswith("edited_a"):
        return f"a={folder[len('edited_a'):]}"  # the bitmap font has no α
    return folder


def save_rows(path: str | os.PathLike, rows: Sequence[torch.Tensor | Sequence[torch.Tensor]], pad: int = 2,
              col_labels: Sequence[str] | None = None, row_labels: Sequence[str] | None = None) -> Path:
    """A grid of ``rows`` as a PNG, with its column and row labels drawn in (see :func:`grid`)."""
    return save_png(path, grid(rows, pad=pad, col_labels=col_labels, row_labels=row_labels))
