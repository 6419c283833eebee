"""Checkpoint files, once for every network: reading a ``torch.save`` file with one-line errors, and the strict
key / shape comparison that every loader (delta blocks, backbones) reports before ``load_state_dict``.

Writing is :func:`asyrp.io.files.atomic_torch_save` (temp file + rename: no partial file on a full disk).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the one-line message names the file and the fix."""


class BackboneLoadError(ValueError):
    """A backbone checkpoint does not fit the network; the message names the file, the keys and the fix."""


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` (weights only, on CPU) with one-line errors for missing, truncated and foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; check the path (or download it: asyrp download)")
    with open(path, "rb") as f:
        head = f.read(2)
    if not head:
        raise CheckpointError(f"{path}: empty file (0 bytes); re-download or re-save it")
    if head == b"PK":  # torch's zip format: a truncated file has no readable central directory
        try:
            with zipfile.ZipFile(path) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({e}); re-download or re-save it") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here; classify them into one actionable line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        if head != b"PK" and head[:1] != b"\x80":
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}); pass a .pth/.pt file") from None
        if isinstance(e, pickle.UnpicklingError) and "weights_only" in str(e):
            raise CheckpointError(f"{path}: holds objects other than tensors and plain data, refused by the safe "
                                  f"loader ({first})") from None
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {first}); "
                              "re-download or re-save it") from None


def key_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                 allow_extra: tuple[str, ...] = (), show: int = 4) -> str:
    """How ``state`` fails to fit a network whose state dict is ``own``: "N missing: …; N unexpected: …; N shape
    mismatch: …" (the first ``show`` keys of each), or "" when every key is there with its shape. Keys starting with
    one of ``allow_extra`` may be extra."""
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own and not k.startswith(allow_extra)]
    wrong = [f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return "; ".join(f"{len(keys)} {name}: {', '.join(keys[:show])}{' …' if len(keys) > show else ''}"
                     for name, keys in (("missing", missing), ("unexpected", extra), ("shape mismatch", wrong))
                     if keys)
