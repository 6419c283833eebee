"""The metrics' maths: directional CLIP similarity S_dir, FID and KID as pure functions of features / embeddings.

What the earlier reproduction got wrong, and what these functions do instead (spec-seed-extensions §4, §8):

* S_dir is the per-image **cosine** cos(E_I(edited) − E_I(source), E_T(trg) − E_T(src)) (higher is better). The
  loss form 1 − S_dir is reported only under the name ``directional_clip_loss`` (F2).
* FID is the Fréchet distance of float64 Gaussians (covariance ddof 1) of pool3 features; on N < 2048 it is biased
  upward, so KID (unbiased) is reported beside it.

The networks (:mod:`asyrp.models.inception`, :mod:`asyrp.clip_loss`), the reading and pairing of image folders and
the eval record are :mod:`asyrp.pipeline.evaluate`'s; nothing here loads a file.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from asyrp.clip_loss import directional_similarity  # noqa: F401  (the training-time form, beside s_dir_cosines)

FID_SMALL_N = 2048          # below the feature dimension the FID estimate is dominated by its bias

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




class SmallSampleFIDWarning(UserWarning):
    """FID on fewer than 2048 images: strongly biased, only comparable at equal n."""


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


def summary(values) -> dict:
    """n, mean and both standard deviations, named (ddof=0 is what the earlier reproduction reported)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    n = len(v)
    return {"n": n, "mean": float(v.mean()) if n else None,
            "std_ddof0": float(v.std(ddof=0)) if n else None,
            "std_ddof1": float(v.std(ddof=1)) if n > 1 else None}
