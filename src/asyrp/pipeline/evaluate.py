"""Evaluating an edit run (``asyrp evaluate``): pair the image folders by file name, embed each folder once, and
write the eval record (schema ``asyrp.eval/1``) with S_dir, FID and KID — overall and per group.

* Images pair by exact file name across ``original/``, ``reconstructed/`` and the edited folder (never by index or
  substring); each folder's features are computed once, batched, and reused for every pair and group.
* FID's Inception takes float images in [0, 1]; uint8 input is divided by 255, never multiplied (the uint8
  wrap-around of F3). The texts of S_dir are arguments, never a stale global (F8), and the prompt mode
  (79-template average or single prompt) is recorded.

The maths is :mod:`asyrp.metrics`; the networks are injectable, so the tests run offline with random weights.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import math
import os
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from asyrp.backbones import load_clip_model
from asyrp.clip_loss import CLIP_ARCHS, CLIPDirection, load_clip
from asyrp.io.files import atomic_json, default_device
from asyrp.metrics import (DEFINITIONS, FID_SMALL_N, SmallSampleFIDWarning, fid_from_features, kid_from_features,
                           s_dir_cosines, summary)
from asyrp.models.inception import load_fid_inception

SCHEMA = "asyrp.eval/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOLDERS = ("original", "reconstructed", "edited")


class PairingError(ValueError):
    """Image folders whose file names do not pair one to one."""


def load_images_uint8(paths: Sequence[str | os.PathLike]) -> torch.Tensor:
    """RGB images → uint8 (N, 3, H, W); all must share one size."""
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


def _versions() -> dict:
    out = {}
    for key, dist in (("torch", "torch"), ("torchvision", "torchvision"), ("open_clip", "open_clip_torch"),
                      ("scipy", "scipy"), ("numpy", "numpy"), ("pytorch_fid", "pytorch-fid"), ("asyrp", "asyrp")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def clip_image_size(encoder) -> int:
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
            encoder = load_clip_model(clip_model, weights_dir=weights_dir, device=device)[0]
        if isinstance(encoder, nn.Module):
            encoder = encoder.to(device)
        model_name = getattr(encoder, "name", None) or type(encoder).__name__
        clip = CLIPDirection(encoder, src_text, trg_text, templates=True if prompt_mode == "templates" else None,
                             antialias=antialias, image_size=clip_image_size(encoder))
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
                stats = summary(cos[rows])
                loss = summary(1 - cos[rows])
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
