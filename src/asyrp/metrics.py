"""Evaluation of an edit run: directional CLIP similarity S_dir, FID and KID (``asyrp evaluate``).

What the earlier reproduction got wrong, and what this module does instead (spec-seed-extensions §4, §8):

* S_dir is the per-image **cosine** cos(E_I(edited) − E_I(source), E_T(trg) − E_T(src)) (higher is better). The
  loss form 1 − S_dir is reported only under the name ``directional_clip_loss`` (F2). The texts are arguments, never
  a stale global (F8), and the prompt mode (79-template average or single prompt) is recorded.
* FID uses pytorch-fid's FID InceptionV3 (pool3, 2048-d) on float images in [0, 1]; uint8 input is divided by 255,
  never multiplied (the uint8 wrap-around of F3). N is reported, and FID on N < 2048 is flagged as biased; KID
  (unbiased) is reported beside it.
* Images pair by exact file name across ``original/``, ``reconstructed/`` and the edited folder (never by index or
  substring); each folder's features are computed once, batched, and reused for every pair and group.

The maths is in pure functions (:func:`fid_from_features`, :func:`kid_from_features`, :func:`s_dir_cosines`); the
networks are injectable, so the tests run offline with random weights.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import difflib
import hashlib
import json
import math
import os
import warnings
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from asyrp.clip_loss import CLIP_ARCHS, CLIPDirection, directional_similarity, load_clip
from asyrp.io.files import atomic_json, default_device

__all__ = [
    "SCHEMA", "fid_from_features", "frechet_distance", "feature_statistics", "kid_from_features", "s_dir_cosines",
    "directional_similarity", "FIDInceptionV3", "build_fid_inception", "load_fid_inception", "inception_features",
    "pair_images", "read_groups", "evaluate_folders", "evaluate_run", "InceptionWeightsError", "PairingError",
    "SmallSampleFIDWarning",
]

SCHEMA = "asyrp.eval/1"
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_SMALL_N = 2048          # below the feature dimension the FID estimate is dominated by its bias
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOLDERS = ("original", "reconstructed", "edited")

DEFINITIONS = {
    "s_dir": "Per-image cosine between the CLIP image direction normalize(E_I(edited)) - normalize(E_I(source)) and "
             "the CLIP text direction (target minus source text); higher is better, mean/std over images.",
    "directional_clip_loss": "1 - s_dir per image (the directional CLIP loss; lower is better): the quantity the "
                             "earlier reproduction reported under the name 'S_dir'.",
    "fid": "Frechet distance between Gaussians (float64 mean, covariance with ddof=1) fitted to pytorch-fid "
           "InceptionV3 pool3 features of the two image sets; biased upward when n is small.",
    "kid": "Kernel Inception distance: unbiased MMD^2 with kernel (x.y/d + 1)^3 on the same pool3 features, mean and "
           "std (ddof=0) over random subsets drawn without replacement.",
}


class InceptionWeightsError(ValueError):
    """The Inception weights file is not the pytorch-fid FID Inception state dict."""


class PairingError(ValueError):
    """Image folders whose file names do not pair one to one."""


class SmallSampleFIDWarning(UserWarning):
    """FID on fewer than 2048 images: strongly biased, only comparable at equal n."""


# --------------------------------------------------------------------------------------------------
# Maths (pure functions on feature / embedding arrays)
# --------------------------------------------------------------------------------------------------

def _as_float64_2d(feats, name: str) -> np.ndarray:
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().double().numpy()
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be an N x D feature matrix, got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} has {arr.shape[0]} sample(s); FID needs at least 2 (covariance with ddof=1)")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values")
    return arr


def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean and covariance (ddof=1) of an N x D feature matrix."""
    arr = _as_float64_2d(feats, "features")
    return arr.mean(axis=0), np.cov(arr, rowvar=False, ddof=1)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """‖mu1 − mu2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) with scipy's sqrtm, as pytorch-fid computes it.

    A singular product (non-finite square root) is retried with eps·I added to both covariances; an imaginary part
    from round-off is dropped if negligible (diagonal |imag| ≤ 1e-3, pytorch-fid's tolerance), otherwise an error.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in dimension: {mu1.shape} vs {mu2.shape}")
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID square root has a non-negligible imaginary component "
                             f"({np.max(np.abs(covmean.imag)):.3g}); the covariances are ill-conditioned")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(feats_a, feats_b, method: str = "auto") -> float:
    """FID between two N x D feature sets (numpy or torch), statistics in float64 with ddof=1.

    ``method``: "sqrtm" is pytorch-fid's D x D matrix square root (:func:`frechet_distance`). "svd" uses the exact
    identity tr (Σa Σb)^½ = ‖A Bᵀ‖_* / √((Na−1)(Nb−1)) for the centred features A, B (the non-zero eigenvalues of
    Σa Σb are the squared singular values of A Bᵀ / √(...)), which needs no eps and no D x D square root. "auto"
    takes "svd" when min(Na, Nb) < D (the usual case: 100 images vs 2048-d, where Σa Σb is singular and a 2048²
    sqrtm costs seconds), else "sqrtm". Both give the same value up to round-off.
    """
    a, b = _as_float64_2d(feats_a, "feats_a"), _as_float64_2d(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if method == "auto":
        method = "svd" if min(len(a), len(b)) < a.shape[1] else "sqrtm"
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    if method == "sqrtm":
        return frechet_distance(mu_a, np.cov(a, rowvar=False), mu_b, np.cov(b, rowvar=False))
    if method != "svd":
        raise ValueError(f"unknown FID method {method!r}; choose auto, sqrtm or svd")
    ca, cb = a - mu_a, b - mu_b
    na1, nb1 = len(a) - 1, len(b) - 1
    tr_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / math.sqrt(na1 * nb1)
    diff = mu_a - mu_b
    tr_a, tr_b = np.einsum("ij,ij->", ca, ca) / na1, np.einsum("ij,ij->", cb, cb) / nb1
    return float(diff @ diff + tr_a + tr_b - 2 * tr_sqrt)


def _mmd2_unbiased_cubic(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(x, y) = (xᵀy / d + 1)³ (diagonals excluded from the within-set terms)."""
    d, m, n = x.shape[1], len(x), len(y)
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid_from_features(feats_a, feats_b, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """KID: unbiased cubic-kernel MMD² averaged over ``num_subsets`` random subsets (without replacement).

    ``subset_size`` is capped at min(Na, Nb); the subsets are drawn from ``np.random.default_rng(seed)``, so the
    result is deterministic. Returns ``{"mean", "std" (ddof=0 over subsets), "num_subsets", "subset_size"}``.
    When both sets are smaller than ``subset_size`` every subset is the whole of both sets: the spread over subsets is
    not defined, so ``std`` is None (not 0), ``num_subsets`` is 1 and ``note`` says why.
    """
    a, b = _as_float64_2d(feats_a, "feats_a"), _as_float64_2d(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if num_subsets < 1:
        raise ValueError("num_subsets must be at least 1")
    m = min(int(subset_size), len(a), len(b))
    if m < 2:
        raise ValueError("KID needs subsets of at least 2 samples")
    if m == len(a) == len(b):
        return {"mean": _mmd2_unbiased_cubic(a, b), "std": None, "num_subsets": 1, "subset_size": m,
                "note": f"std not defined: N = {m} ≤ subset size {int(subset_size)}, so every subset is the whole set; "
                        "give a smaller --kid-subset-size for a spread"}
    rng = np.random.default_rng(seed)
    values = np.array([_mmd2_unbiased_cubic(a[rng.choice(len(a), m, replace=False)],
                                            b[rng.choice(len(b), m, replace=False)]) for _ in range(num_subsets)])
    return {"mean": float(values.mean()), "std": float(values.std()), "num_subsets": int(num_subsets),
            "subset_size": m}


def s_dir_cosines(src_img_emb, edit_img_emb, text_direction) -> torch.Tensor:
    """Per-image cos(normalize(edit) − normalize(src), text_direction); rows of the image embeddings pair up.

    ``text_direction`` is (D,) or (1, D), e.g. :attr:`asyrp.clip_loss.CLIPDirection.text_direction` (template
    average or single prompt). With a single-prompt direction this equals :func:`directional_similarity`.
    """
    src, edit = torch.as_tensor(src_img_emb).float(), torch.as_tensor(edit_img_emb).float()
    if src.shape != edit.shape:
        raise ValueError(f"source and edited embeddings must pair row by row: {tuple(src.shape)} vs "
                         f"{tuple(edit.shape)}")
    d_img = F.normalize(edit, dim=-1) - F.normalize(src, dim=-1)
    d_txt = torch.as_tensor(text_direction).float().reshape(1, -1).to(d_img.device)
    return F.cosine_similarity(d_img, d_txt, dim=-1, eps=1e-8)


def _summary(values) -> dict:
    """n, mean and both standard deviations, named (ddof=0 is what the earlier reproduction reported)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    n = len(v)
    return {"n": n, "mean": float(v.mean()) if n else None,
            "std_ddof0": float(v.std(ddof=0)) if n else None,
            "std_ddof1": float(v.std(ddof=1)) if n > 1 else None}


# --------------------------------------------------------------------------------------------------
# FID Inception network (pytorch-fid's structure, built without any download)
# --------------------------------------------------------------------------------------------------

class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3 returning pool3 features: (N, 3, H, W) in [0, 1] → (N, 2048).

    Same layers and forward as ``pytorch_fid.inception.InceptionV3(output_blocks=[3])``: bilinear resize to 299
    (align_corners=False), scale to [−1, 1], the torchvision Inception3 trunk with the FID-patched Mixed blocks,
    global average pool. The trunk's modules sit directly on this module, so the state dict has exactly the keys of
    ``pt_inception-2015-12-05-6726825d.pth`` (``fc`` is kept for strict loading and is unused).
    """

    def __init__(self):
        super().__init__()
        from pytorch_fid.inception import (FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2,
                                           _inception_v3)
        net = _inception_v3(num_classes=1008, aux_logits=False, weights=None)  # torchvision, no weights fetched
        net.Mixed_5b = FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = FIDInceptionE_1(1280)
        net.Mixed_7c = FIDInceptionE_2(2048)
        for name, child in net.named_children():
            self.add_module(name, child)
        self.trunk = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                      "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                      "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
        self.name = "pytorch-fid InceptionV3 pool3 (random weights)"
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for name in self.trunk:
            x = getattr(self, name)(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)


def build_fid_inception(state_dict: dict | None = None, seed: int = 0) -> FIDInceptionV3:
    """The FID Inception network; with ``state_dict`` loaded strictly, else random weights (for tests).

    Random weights use a variance-preserving (He) init under a private RNG seeded by ``seed``, so the features are
    O(1) (the default init shrinks them to ~1e-8 over the 90-odd layers) and the caller's RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FIDInceptionV3()
        if state_dict is None:
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    if state_dict is not None:
        _check_state_dict(model, state_dict, "state dict")
        model.load_state_dict(state_dict, strict=True)
        model.name = "pytorch-fid InceptionV3 pool3"
    return model.eval()


def _check_state_dict(model: nn.Module, state_dict, origin: str) -> None:
    """Raise a one-line :class:`InceptionWeightsError` if keys or shapes differ (load_state_dict's are multi-line)."""
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise InceptionWeightsError(f"{origin} is not a state dict of tensors (expected pytorch-fid's "
                                    f"{FID_WEIGHTS_FILE})")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    optional = {k for k in expected if k.endswith("num_batches_tracked")}  # the original file predates them
    missing = sorted(set(expected) - set(state_dict) - optional)
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state_dict) if tuple(state_dict[k].shape) != tuple(expected[k]))
    problems = [f"{len(lst)} {what} (e.g. {', '.join(lst[:3])})"
                for what, lst in (("missing keys", missing), ("unexpected keys", unexpected),
                                  ("shape mismatches", shapes)) if lst]
    if problems:
        raise InceptionWeightsError(f"{origin} is not the pytorch-fid FID Inception weights ({FID_WEIGHTS_FILE}): "
                                    + "; ".join(problems))


def load_fid_inception(weights: str | os.PathLike | None = None,
                       weights_dir: str | os.PathLike | None = None) -> FIDInceptionV3:
    """The FID Inception with the ``pt_inception-2015-12-05-6726825d.pth`` weights (path, or the weights registry)."""
    if weights is None:
        from asyrp.io import weights as registry  # lazily: only when no explicit path is given
        weights = registry.resolve("inception-fid", weights_dir=weights_dir)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights {path} not found; run `asyrp download inception-fid` or give "
                                f"--inception-weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip / EOF errors: all mean "not a torch state dict"
        raise InceptionWeightsError(f"{path} could not be read as a torch state dict "
                                    f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    try:
        model = build_fid_inception(state)
    except InceptionWeightsError as e:
        raise InceptionWeightsError(f"{path}: {e}") from None
    model.name = f"pytorch-fid InceptionV3 pool3 ({path.name})"
    return model


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------

def load_images_uint8(paths: Sequence[str | os.PathLike]) -> torch.Tensor:
    """RGB images → uint8 (N, 3, H, W); all must share one size."""
    from PIL import Image

    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images in one batch differ in size ({sorted(sizes)}); resize them to one size first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _to_unit_float(batch) -> torch.Tensor:
    """uint8 / integer images → /255; float images must already be in [0, 1]. Channels first (N, 3, H, W)."""
    x = torch.as_tensor(batch) if not isinstance(batch, np.ndarray) else torch.from_numpy(np.ascontiguousarray(batch))
    if x.ndim != 4:
        raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)  # channels-last arrays, as numpy/PIL produce them
    if x.shape[1] != 3:
        raise ValueError(f"images must have 3 channels, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > 255):
            raise ValueError("integer images must be in 0..255")
        return x.float() / 255  # divide, never multiply: uint8 * 255 wraps around (F3)
    x = x.float()
    if x.numel() and (float(x.min()) < -1e-3 or float(x.max()) > 1 + 1e-3):
        raise ValueError(f"float images must be in [0, 1] (got {float(x.min()):.3g}..{float(x.max()):.3g}); "
                         "map [-1, 1] images with (x + 1) / 2")
    return x.clamp(0, 1)


def _image_batches(images, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of float [0, 1] (B, 3, H, W) images from a tensor / array or a list of image paths."""
    if isinstance(images, (list, tuple)) and (not images or isinstance(images[0], (str, os.PathLike))):
        for i in range(0, len(images), batch_size):
            yield _to_unit_float(load_images_uint8(images[i:i + batch_size]))
        return
    for i in range(0, len(images), batch_size):
        yield _to_unit_float(images[i:i + batch_size])


@torch.no_grad()
def inception_features(images, weights: str | os.PathLike | None = None, batch_size: int = 50,
                       device: str | torch.device | None = None, model: nn.Module | None = None,
                       weights_dir: str | os.PathLike | None = None) -> np.ndarray:
    """pool3 features (N, 2048) float64 of float [0, 1] or uint8 images (N, 3, H, W), or of a list of image paths.

    ``model`` replaces the network (any module mapping (N, 3, H, W) in [0, 1] to (N, D)); otherwise the FID
    Inception is built from ``weights`` (or the registry's "inception-fid").
    """
    device = default_device(device)
    if model is None:
        model = load_fid_inception(weights, weights_dir)
    model = model.to(device).eval()
    out = [model(x.to(device)).double().cpu() for x in _image_batches(images, batch_size)]
    if not out:
        raise ValueError("no images given")
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------------------------------
# Pairing and groups
# --------------------------------------------------------------------------------------------------

def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _name_list(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def pair_images(original_dir, edited_dir, reconstructed_dir=None, edited_suffix: str = "") -> tuple[list[str], dict]:
    """Pair the folders by exact file name; returns (names, {"original": [paths], "edited": [...], ...}).

    The edited file of ``x.png`` is ``x{edited_suffix}.png``. Any name that does not pair raises one
    :class:`PairingError` listing the names per folder (never pairing by index or by substring).
    """
    folders = {"original": Path(original_dir), "edited": Path(edited_dir)}
    if reconstructed_dir is not None:
        folders["reconstructed"] = Path(reconstructed_dir)
    keyed: dict[str, dict[str, Path]] = {}
    for kind, folder in folders.items():
        files = _image_files(folder)
        if kind == "edited" and edited_suffix:
            # key = the original's name; a file without the suffix gets a key no original has, so it fails to pair
            keyed[kind] = {(p.stem[:-len(edited_suffix)] + p.suffix if p.stem.endswith(edited_suffix)
                            else "\0" + p.name): p for p in files}
        else:
            keyed[kind] = {p.name: p for p in files}
    if not keyed["original"]:
        raise PairingError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folders['original']}")
    common = set.intersection(*(set(v) for v in keyed.values()))
    problems = []
    for kind, files in keyed.items():
        extra = set(files) - common
        if extra:
            problems.append(f"only in {folders[kind]}: {_name_list(files[k].name for k in extra)}")
    if problems:
        hint = f" (edited names are <name>{edited_suffix}<ext>)" if edited_suffix else ""
        raise PairingError("images do not pair by file name: " + "; ".join(problems) + hint)
    names = sorted(common)
    return names, {kind: [files[n] for n in names] for kind, files in keyed.items()}


def read_groups(csv_path, names: Sequence[str]) -> dict[str, list[int]]:
    """Group label → row indices into ``names`` from a CSV of (image name, group label) rows.

    A name matches a file name exactly or its stem exactly; a first row that names no image is a header. Images not
    listed belong to no group; a listed name that matches no image is an error.
    """
    index = {n: i for i, n in enumerate(names)}
    index.update({Path(n).stem: i for i, n in enumerate(names) if Path(n).stem not in index})
    groups: dict[str, list[int]] = {}
    unknown = []
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    for k, row in enumerate(rows):
        if len(row) < 2:
            raise ValueError(f"{csv_path}: row {k + 1} needs two columns (image name, group label)")
        name, label = row[0].strip(), row[1].strip()
        if name not in index:
            if k == 0:
                continue  # header
            unknown.append(name)
            continue
        groups.setdefault(label, [])
        if index[name] not in groups[label]:
            groups[label].append(index[name])
    if unknown:
        raise ValueError(f"{csv_path}: {len(unknown)} name(s) match no evaluated image: {_name_list(unknown)}")
    if not groups:
        raise ValueError(f"{csv_path}: no row names an evaluated image")
    return {label: sorted(idx) for label, idx in sorted(groups.items())}


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

def _versions() -> dict:
    out = {}
    for key, dist in (("torch", "torch"), ("torchvision", "torchvision"), ("open_clip", "open_clip_torch"),
                      ("scipy", "scipy"), ("numpy", "numpy"), ("pytorch_fid", "pytorch-fid"), ("asyrp", "asyrp")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def _clip_image_size(encoder) -> int:
    size = getattr(encoder, "image_size", None) or getattr(getattr(getattr(encoder, "model", None), "visual", None),
                                                           "image_size", None) or 224
    return int(size[0] if isinstance(size, (tuple, list)) else size)


@torch.no_grad()
def _folder_features(paths: Sequence[Path], inception: nn.Module | None, clip: CLIPDirection | None,
                     batch_size: int, device: torch.device) -> tuple[np.ndarray | None, torch.Tensor | None]:
    """One pass over a folder: pool3 features and normalised CLIP embeddings from the same decoded batch."""
    feats, embs = [], []
    for i in range(0, len(paths), batch_size):
        x01 = _to_unit_float(load_images_uint8(paths[i:i + batch_size])).to(device)
        if inception is not None:
            feats.append(inception(x01).double().cpu())
        if clip is not None:
            embs.append(clip.encode_images(x01 * 2 - 1).float().cpu())  # clip_preprocess expects [-1, 1]
    return (torch.cat(feats).numpy() if feats else None), (torch.cat(embs) if embs else None)


def _nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def evaluate_folders(original_dir, edited_dir, reconstructed_dir=None, *, src_text: str | None = None,
                     trg_text: str | None = None, clip_model: str = "ViT-B/32", clip_encoder=None,
                     clip_weights=None, prompt_mode: str = "templates", antialias: bool = True,
                     inception_weights=None, inception_model: nn.Module | None = None, weights_dir=None,
                     groups=None, fid: bool = True, sdir: bool = True, kid_subsets: int = 100,
                     kid_subset_size: int = 1000, seed: int = 0, batch_size: int = 50, device=None,
                     edited_suffix: str = "", fid_method: str = "auto") -> dict:
    """S_dir (sources original and reconstructed), FID and KID of three paired image folders → eval dict.

    ``clip_encoder`` (anything with ``encode_image`` / ``encode_text(list[str])``) replaces ``load_clip(clip_model)``;
    ``inception_model`` replaces the FID Inception. ``groups`` is a CSV of (image name, group label) rows: every
    metric is repeated per group. The result is JSON-able (schema :data:`SCHEMA`); see :func:`evaluate_run`.
    """
    if prompt_mode not in ("templates", "single"):
        raise ValueError(f"prompt mode must be 'templates' or 'single', got {prompt_mode!r}")
    if sdir and not (src_text and trg_text):
        raise ValueError("S_dir needs the source and target texts (--src/--trg or --attr), or pass --no-sdir")
    if not (sdir or fid):
        raise ValueError("nothing to evaluate: both S_dir and FID are switched off")
    names, paths = pair_images(original_dir, edited_dir, reconstructed_dir, edited_suffix)
    group_index = read_groups(groups, names) if groups else {}
    device = default_device(device)

    # models, loaded once (after all cheap checks have passed)
    clip = model_name = None
    if sdir:
        if clip_encoder is not None:
            encoder = clip_encoder
        elif clip_weights is not None or clip_model in CLIP_ARCHS:
            encoder = load_clip(clip_model, clip_weights, device, weights_dir)
        else:  # OpenAI names, the shapes world's tiny CLIP ("shapes"), or an asyrp CLIP file
            from asyrp.backbones import load_clip_model
            encoder = load_clip_model(clip_model, weights_dir=weights_dir, device=device)[0]
        if isinstance(encoder, nn.Module):
            encoder = encoder.to(device)
        model_name = getattr(encoder, "name", None) or type(encoder).__name__
        clip = CLIPDirection(encoder, src_text, trg_text, templates=True if prompt_mode == "templates" else None,
                             antialias=antialias, image_size=_clip_image_size(encoder))
    inception = inception_name = None
    if fid:
        inception = inception_model if inception_model is not None else load_fid_inception(inception_weights,
                                                                                              weights_dir)
        inception = inception.to(device).eval()
        inception_name = getattr(inception, "name", None) or type(inception).__name__

    feats, embs = {}, {}
    for kind, kind_paths in paths.items():
        feats[kind], embs[kind] = _folder_features(kind_paths, inception, clip, batch_size, device)

    all_rows = list(range(len(names)))
    subsets = [(None, all_rows)] + list(group_index.items())
    sources = [k for k in ("original", "reconstructed") if k in paths]
    metrics: list[dict] = []
    per_image: dict[str, Any] = {"names": names}

    if sdir:
        text_dir = clip.text_direction.float().cpu()
        for source in sources:
            cos = s_dir_cosines(embs[source], embs["edited"], text_dir).double().numpy()
            per_image[f"s_dir_{source}"] = cos.tolist()
            for label, rows in subsets:
                stats = _summary(cos[rows])
                loss = _summary(1 - cos[rows])
                common = {"source": source, "pair": [source, "edited"], "model": model_name,
                          "prompt_mode": prompt_mode, "src_text": src_text, "trg_text": trg_text,
                          "antialias": antialias, "group": label}
                for metric, s in (("s_dir", stats), ("directional_clip_loss", loss)):
                    metrics.append({"metric": metric, "definition": DEFINITIONS[metric], **common, "n": s["n"],
                                    "mean": s["mean"], "std": s["std_ddof1"], "std_ddof0": s["std_ddof0"],
                                    "std_ddof1": s["std_ddof1"]})

    if fid:
        pairs = [p for p in (("original", "edited"), ("reconstructed", "edited"), ("original", "reconstructed"))
                 if p[0] in paths and p[1] in paths]
        small = False
        for label, rows in subsets:
            n = len(rows)
            small |= n < FID_SMALL_N
            for a, b in pairs:
                common = {"source": a, "pair": [a, b], "model": inception_name, "prompt_mode": None, "n": n,
                          "group": label, **({} if n >= 2 else {"note": "not computed: needs n >= 2"})}
                fa, fb = feats[a][rows], feats[b][rows]
                method = fid_method if fid_method != "auto" else "svd" if n < fa.shape[1] else "sqrtm"
                fid_value = fid_from_features(fa, fb, method) if n >= 2 else None
                metrics.append({"metric": "fid", "definition": DEFINITIONS["fid"], **common, "mean": fid_value,
                                "std": None, "fid_biased_small_n": n < FID_SMALL_N, "fid_method": method})
                kid = kid_from_features(fa, fb, kid_subsets, kid_subset_size, seed) if n >= 2 else {}
                metrics.append({"metric": "kid", "definition": DEFINITIONS["kid"], **common,
                                "mean": kid.get("mean"), "std": kid.get("std"), "num_subsets": kid.get("num_subsets"),
                                "subset_size": kid.get("subset_size"), "seed": seed,
                                **({"note": kid["note"]} if "note" in kid else {})})
        if small:
            warnings.warn(f"FID on n={len(names)} images (groups down to {min(len(r) for _, r in subsets)}) is biased "
                          f"upward (n < {FID_SMALL_N}); compare FIDs only at equal n, or use KID",
                          SmallSampleFIDWarning, stacklevel=2)

    return _nan_to_none({
        "schema": SCHEMA,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"original": str(original_dir), "reconstructed": str(reconstructed_dir) if reconstructed_dir
                   else None, "edited": str(edited_dir), "edited_suffix": edited_suffix, "n_images": len(names),
                   "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()},
        "settings": {"sdir": sdir, "fid": fid, "clip_model": model_name, "prompt_mode": prompt_mode if sdir else None,
                     "n_templates": len(clip.templates) if clip is not None and clip.templates else None,
                     "src_text": src_text, "trg_text": trg_text, "antialias": antialias,
                     "clip_image_size": clip.image_size if clip is not None else None,
                     "inception": inception_name,
                     "fid_method": fid_method, "kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size,
                     "seed": seed, "groups_csv": str(groups) if groups else None},
        "groups": {label: len(rows) for label, rows in group_index.items()},
        "metrics": metrics,
        "per_image": per_image,
        "versions": _versions(),
    })


def _run_config(run_dir: Path, edited: Path) -> dict:
    """The run's record (config.json, run.json or asyrp edit's edit.json) and, from an edit.json, the setting
    (strength / weights) that produced the evaluated edited folder."""
    for name in ("config.json", "run.json", "edit.json"):
        path = run_dir / name
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from None
            settings = config.get("settings") if isinstance(config, dict) else None
            setting = next((s for s in settings if isinstance(s, dict) and s.get("folder") == edited.name), None) \
                if isinstance(settings, list) else None
            return {"config_file": name, "config": config, "setting": setting}
    return {"config_file": None, "config": None, "setting": None}


def default_eval_path(run_dir, edited_dir=None, edited_suffix: str = "") -> Path:
    """``<run>/eval.json`` for the run's own ``edited/``; ``<run>/eval_<edited folder><suffix>.json`` otherwise,
    so evaluating several strengths / attributes of one run never overwrites a result."""
    run_dir = Path(run_dir)
    if (edited_dir is None or Path(edited_dir).resolve() == (run_dir / "edited").resolve()) and not edited_suffix:
        return run_dir / "eval.json"
    tag = "".join(c if c.isalnum() or c in "+-_." else "_" for c in Path(edited_dir or "edited").name + edited_suffix)
    return run_dir / f"eval_{tag}.json"


def evaluate_run(run_dir, edited_dir=None, *, out=None, write: bool = True, **kwargs) -> dict:
    """Evaluate ``run_dir`` (``original/``, ``reconstructed/``, ``edited/`` or ``edited_dir``) and write the JSON.

    Keyword arguments go to :func:`evaluate_folders`. ``reconstructed/`` is optional (its metrics are then
    absent). The result is written atomically to ``out`` or :func:`default_eval_path` and returned, with the run's
    ``config.json`` / ``run.json`` under ``"run"``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} not found")
    edited = Path(edited_dir) if edited_dir is not None else run_dir / "edited"
    recon = run_dir / "reconstructed"
    result = evaluate_folders(run_dir / "original", edited, recon if recon.is_dir() else None, **kwargs)
    result = {"schema": result["schema"], "run": {"dir": str(run_dir), **_run_config(run_dir, edited)},
              **{k: v for k, v in result.items() if k != "schema"}}
    if write:
        path = Path(out) if out is not None else default_eval_path(run_dir, edited_dir,
                                                                   kwargs.get("edited_suffix", ""))
        atomic_json(path, result)
        result["path"] = str(path)  # where it was written (not part of the file)
    return result


# --------------------------------------------------------------------------------------------------
# CLI: asyrp evaluate
# --------------------------------------------------------------------------------------------------

def _attribute_texts(name: str) -> tuple[str, str]:
    import yaml

    table = yaml.safe_load(resources.files("asyrp.resources").joinpath("attributes.yaml").read_text())["attributes"]
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "give the texts with --src/--trg"
        raise ValueError(f"unknown attribute {name!r}; {hint}")
    return table[name]["src"], table[name]["trg"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="folder with original/, reconstructed/, edited/")
    parser.add_argument("--edited-dir", help="edited images (default RUN_DIR/edited)")
    parser.add_argument("--edited-suffix", default="", help="edited file of x.png is x<SUFFIX>.png (default none)")
    texts = parser.add_mutually_exclusive_group()
    texts.add_argument("--attr", help="attribute name from the package table (gives the source/target texts)")
    texts.add_argument("--src", help="source text (with --trg)")
    parser.add_argument("--trg", help="target text (with --src)")
    parser.add_argument("--clip-model", default="ViT-B/32", choices=list(CLIP_ARCHS), help="CLIP for S_dir")
    parser.add_argument("--clip-weights", help="CLIP weights file (default: the weights registry)")
    parser.add_argument("--prompts", default="templates", choices=["templates", "single"],
                        help="text direction: 79-template average (default) or the single raw prompts")
    parser.add_argument("--no-antialias", dest="antialias", action="store_false",
                        help="resize for CLIP without antialiasing (as the training loss does)")
    parser.add_argument("--inception-weights", help=f"FID Inception weights ({FID_WEIGHTS_FILE})")
    parser.add_argument("--weights-dir", help="where the weights registry looks for / stores weights")
    parser.add_argument("--groups", help="CSV of (image name, group label) rows: metrics per group too")
    parser.add_argument("--no-fid", dest="fid", action="store_false", help="skip FID and KID")
    parser.add_argument("--no-sdir", dest="sdir", action="store_false", help="skip S_dir")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="KID subset seed")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: CUDA if available)")
    parser.add_argument("--out", help="output JSON (default RUN_DIR/eval.json; RUN_DIR/eval_<edited dir><suffix>.json "
                        "with --edited-dir / --edited-suffix)")


def main(args: argparse.Namespace) -> int:
    src, trg = args.src, args.trg
    if args.attr:
        if trg:
            raise ValueError("--trg goes with --src, not with --attr")
        src, trg = _attribute_texts(args.attr)
    elif bool(src) != bool(trg):
        raise ValueError("give both --src and --trg (or --attr)")
    result = evaluate_run(args.run_dir, args.edited_dir, out=args.out, src_text=src, trg_text=trg,
                          clip_model=args.clip_model, clip_weights=args.clip_weights, prompt_mode=args.prompts,
                          antialias=args.antialias, inception_weights=args.inception_weights,
                          weights_dir=args.weights_dir, groups=args.groups, fid=args.fid, sdir=args.sdir,
                          kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, seed=args.seed,
                          batch_size=args.batch_size, device=args.device, edited_suffix=args.edited_suffix)
    for m in result["metrics"]:
        if m["metric"] == "directional_clip_loss":
            continue
        group = f" [{m['group']}]" if m["group"] is not None else ""
        std = f" ± {m['std']:.4f}" if m["std"] is not None else ""
        value = f"{m['mean']:.4f}" if m["mean"] is not None else "n/a"
        print(f"{m['metric']:6s} {'→'.join(m['pair']):26s} n={m['n']:<5d} {value}{std}{group}")
    print(f"wrote {result['path']}")
    return 0
