"""One image file or record to a tensor: decode to RGB (EXIF orientation applied, palette / alpha / 16-bit handled),
centre-crop, resize, scale to [−1, 1]; and the data errors every reader raises."""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
RESAMPLE_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "lanczos": Image.Resampling.LANCZOS}
LMDB_FILES = {"data.mdb", "lock.mdb"}

# Errors PIL raises for files that are not (complete) images.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class DataError(ValueError):
    """A problem with the user's images, LMDB or split file; the CLI prints it as one line (exit code 2)."""


class SkippedFilesWarning(UserWarning):
    """Some files of an image folder were not images (or not readable) and were left out."""


def preview_names(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


# --------------------------------------------------------------------------------------------------
# Decoding and preprocessing
# --------------------------------------------------------------------------------------------------

def decode_rgb(data: bytes, label: str | os.PathLike = "image") -> Image.Image:
    """Decode image bytes to an RGB PIL image; ``label`` names the image in the error message."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            # Phone photos store their rotation in EXIF; without this they come out sideways. (No effect on
            # CelebA-HQ, whose files carry no orientation tag.) Also forces a full decode, so truncated files fail here.
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except DECODE_ERRORS as e:
        raise DataError(f"cannot decode image {label}: {e}") from e


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit greyscale PNGs: Pillow's own conversion clips at 255 (a white image), so rescale to 8 bits.
        grey = np.asarray(img).astype(np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # the direct P → RGB conversion warns about palette transparency
    return img.convert("RGB")  # alpha is dropped, as in the reference


def center_crop_resize(img: Image.Image, size: int,
                       resample: Image.Resampling = Image.Resampling.BILINEAR) -> Image.Image:
    """Crop the centred square of side min(W, H) (left/top offsets rounded down), then resize to (size, size)."""
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    if (width, height) != (side, side):
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), resample)
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB uint8 image → float32 (3, H, W) in [-1, 1]; bit-identical to ToTensor() then Normalize(0.5, 0.5)."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    x = x.to(torch.float32).div(255)
    return (x - 0.5) / 0.5


def check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    return image_size
