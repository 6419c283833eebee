"""The inversion cache: every image is DDIM-inverted once and stored as {x0, x_T, x_rec} with the metadata that decides
whether the entry can be reused (backbone fingerprint, n_inv_step, t_0, image size, source and its sha256).

Layout: ``<cache_root>/<backbone fingerprint[:16]>_t<t_0>_ninv<n>_<size>px/<image name>.pt``. A later run reuses the
entries whose metadata match and recomputes only what is missing or stale; each entry is written atomically.
Images can also be *sampled* from the backbone (random x_T, deterministic DDIM): then x0 = x_rec = the sample, as in
the reference's saved-random-noise mode, and a direction can be trained with no dataset at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from asyrp import diffusion as D
from asyrp import sampling
from asyrp.io.files import atomic_torch_save, default_device
from asyrp.io.weights import asyrp_home
from asyrp.io.datasets import open_images

CACHE_VERSION = 1


@dataclass(frozen=True)
class InversionSettings:
    n_inv_step: int = 40
    t_0: int = 999


def default_cache_root() -> Path:
    return asyrp_home() / "inversions"


def cache_dir(root: str | os.PathLike, backbone_fingerprint: str, settings: InversionSettings, image_size: int) -> Path:
    return Path(root) / f"{backbone_fingerprint[:16]}_t{settings.t_0}_ninv{settings.n_inv_step}_{image_size}px"


def _meta(item: dict, fingerprint: str, settings: InversionSettings, image_size: int) -> dict:
    return {"version": CACHE_VERSION, "backbone_sha256": fingerprint, "n_inv_step": settings.n_inv_step,
            "t_0": settings.t_0, "image_size": image_size, "name": item["name"], "source": item["source"],
            "source_sha256": item["sha256"]}


def _load_entry(path: Path, expected_meta: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged entry is stale: recompute it
        return None
    return entry if isinstance(entry, dict) and entry.get("meta") == expected_meta else None


def _fill_cache(folder: Path, names: list[str], metas: list[dict], compute, batch_size: int, desc: str,
                progress: bool) -> list[dict]:
    """Entries for ``names``: matching cache entries are reused; ``compute(indices) -> (x0, x_T, x_rec)`` produces the
    rest batch by batch, and each new entry is written (atomically) as soon as it exists."""
    entries: list[dict | None] = [_load_entry(folder / f"{n}.pt", m) for n, m in zip(names, metas)]
    todo = [i for i, e in enumerate(entries) if e is None]
    bar = tqdm(total=len(names), initial=len(names) - len(todo), desc=desc, unit="img", disable=not progress)
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        x0, x_T, x_rec = compute(idx)
        for j, i in enumerate(idx):
            entry = {"name": names[i], "x0": x0[j].cpu(), "x_T": x_T[j].cpu(), "x_rec": x_rec[j].cpu(),
                     "meta": metas[i]}
            atomic_torch_save(entry, folder / f"{names[i]}.pt")
            entries[i] = entry
        bar.update(len(idx))
    bar.close()
    return entries  # type: ignore[return-value]


def precompute(unet, items: Sequence[dict], root: str | os.PathLike, fingerprint: str,
               settings: InversionSettings = InversionSettings(), batch_size: int = 8,
               device: str | torch.device | None = None, progress: bool = True) -> list[dict]:
    """Entries {"name", "x0", "x_T", "x_rec", "meta"} for ``items`` (dicts with image/name/source/sha256), in order.

    Reuses matching cache entries; inverts (n_inv_step − 1 U-Net calls) and reconstructs (n_inv_step calls) the rest
    in batches, writing each entry as soon as it is done.
    """
    device = default_device(device)
    if not items:
        raise ValueError("no images to invert")
    image_size = int(items[0]["image"].shape[-1])
    names = [it["name"] for it in items]
    if len(set(names)) != len(names):
        raise ValueError("image names must be unique within a run (they name the cache entries and output files)")
    alphas = D.alphas_cumprod(D.linear_betas()).to(device)

    def compute(idx):
        x0 = torch.stack([items[i]["image"] for i in idx]).to(device)
        x_T = sampling.invert(unet, x0, alphas, settings.n_inv_step, settings.t_0)
        return x0, x_T, sampling.generate(unet, x_T, alphas, settings.n_inv_step, settings.t_0)

    return _fill_cache(cache_dir(root, fingerprint, settings, image_size), names,
                       [_meta(it, fingerprint, settings, image_size) for it in items], compute, batch_size,
                       "precompute", progress)


def sampled_items(n: int, seed: int, image_size: int, channels: int = 3, start: int = 0) -> list[dict]:
    """Descriptors of images to be sampled from the backbone: x_T ~ N(0, I) from (seed, index)."""
    return [{"name": f"sample_s{seed}_{i:05d}", "source": f"sampled:seed={seed}:index={i}",
             "sha256": f"sampled-{seed}-{i}", "noise_shape": (channels, image_size, image_size), "index": i,
             "seed": seed} for i in range(start, start + n)]


def sampled_noise(seed: int, indices: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """x_T of the sampled images ``indices`` of ``seed``: N(0, I) of ``shape`` per image, from its own generator."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in sampling.image_generators(seed, indices)])


def precompute_sampled(unet, n: int, seed: int, root: str | os.PathLike, fingerprint: str,
                       settings: InversionSettings = InversionSettings(), batch_size: int = 8, start: int = 0,
                       device: str | torch.device | None = None, progress: bool = True) -> list[dict]:
    """Entries for n images sampled from the backbone (x_T fixed by (seed, index); x0 = x_rec = DDIM(x_T)). The
    noise is x_999 whatever the settings' t_0; for t_0 < 999 the entry's latent is the sample inverted to x_{t_0}
    and its reconstruction the regeneration from there, as for a real image."""
    device = default_device(device)
    size = unet.image_size
    descs = sampled_items(n, seed, size, unet.config["in_channels"], start)
    alphas = D.alphas_cumprod(D.linear_betas()).to(device)

    def compute(idx):
        x_T = sampled_noise(seed, [descs[i]["index"] for i in idx], descs[0]["noise_shape"]).to(device)
        x0 = sampling.sample(unet, x_T, alphas, settings.n_inv_step)
        if settings.t_0 == D.T_0:
            return x0, x_T, x0
        x_t0 = sampling.invert(unet, x0, alphas, settings.n_inv_step, settings.t_0)
        return x0, x_t0, sampling.generate(unet, x_t0, alphas, settings.n_inv_step, settings.t_0)

    return _fill_cache(cache_dir(root, fingerprint, settings, size), [d["name"] for d in descs],
                       [_meta({"name": d["name"], "source": d["source"], "sha256": d["sha256"]}, fingerprint,
                              settings, size) for d in descs], compute, batch_size, "sample", progress)


def load_entries(backbone, data: str, n: int, root: str | os.PathLike | None = None, split: str | None = None,
                 start: int = 0, seed: int = 0, settings: InversionSettings = InversionSettings(),
                 batch_size: int = 8, device=None, progress: bool = True, distributed=None) -> list[dict]:
    """Cached inversions for a data source: ``"sampled"`` (images from the backbone) or a folder / LMDB path.

    With ``distributed`` each rank first fills the cache for its own slice, then every rank reads all entries.
    """
    root = Path(root) if root else default_cache_root()
    if data == "sampled":
        def fill(lo, count, show):
            return precompute_sampled(backbone.unet, count, seed, root, backbone.fingerprint, settings, batch_size,
                                      start + lo, device, show)
        if distributed is not None:
            mine = distributed.shard(range(n))
            if mine:
                fill(mine[0], len(mine), False)
            distributed.barrier()
        return fill(0, n, progress)
    dataset = open_images(data, backbone.unet.image_size, split=split, n=n, start=start)
    items = [dataset[i] for i in range(len(dataset))]
    if distributed is not None:
        mine = distributed.shard(items)
        if mine:
            precompute(backbone.unet, mine, root, backbone.fingerprint, settings, batch_size, device, False)
        distributed.barrier()
    return precompute(backbone.unet, items, root, backbone.fingerprint, settings, batch_size, device, progress)
