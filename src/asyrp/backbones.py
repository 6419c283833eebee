"""Named backbones (frozen diffusion U-Nets) and CLIP models, and the files this project writes for its own models.

``load_backbone("celeba-hq")`` builds the CelebA-HQ 256 DDPM and loads SDEdit's checkpoint strictly (from the weights
registry: cache, ``--weights-dir`` or a download); ``afhq-dog``, ``ffhq`` (iDDPM) and ``metfaces`` (guided-diffusion,
P2) build :class:`~asyrp.models.adm.ADMUNet` from the original ``create_model`` arguments and load the original
checkpoints, which are published only behind a OneDrive folder (put them in a weights folder by hand);
``load_backbone("shapes")`` loads the tiny DDPM shipped with the package; ``load_backbone(path)`` reads a file written
by :func:`save_unet` (config inside) or a bare state dict together with ``config`` (a ddim ``model:`` block, or
``create_model`` arguments for an iDDPM / ADM network).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from asyrp.clip_loss import CLIP_ARCHS, OpenClipEncoder, load_clip
from asyrp.io import weights as registry
from asyrp.io.files import atomic_torch_save
from asyrp.models.adm import AFHQ_DICT, METFACE_DICT, ADMUNet, adm_config
from asyrp.models.checkpoint import CheckpointError, read_checkpoint
from asyrp.models.diffusers_ddpm import is_diffusers_folder, load_diffusers_unet
from asyrp.models.unet import CELEBA_HQ_256, DDPMUNet, HSpaceUNet, load_backbone_state_dict, unet_config
from asyrp.worlds import shapes

UNET_FORMAT = "asyrp.unet"
CLIP_FORMAT = "asyrp.clip"


@dataclass(frozen=True)
class BackboneSpec:
    weights: str            # weights-registry name (a diffusers entry also has "<name>-config")
    config: Mapping[str, Any] | None  # None: a diffusers folder, whose config.json defines the network
    lpips_domain: str | None  # LPIPS table for automatic t_edit / t_boost
    default_clip: str


BACKBONES = {
    "celeba-hq": BackboneSpec("ddpm-celeba-hq", CELEBA_HQ_256, "celeba", "ViT-B/16"),
    "lsun-church": BackboneSpec("ddpm-lsun-church", CELEBA_HQ_256, "church", "ViT-B/16"),
    "lsun-bedroom": BackboneSpec("ddpm-lsun-bedroom", CELEBA_HQ_256, "bedroom", "ViT-B/16"),
    "afhq-dog": BackboneSpec("iddpm-afhq-dog", AFHQ_DICT, "afhq", "ViT-B/16"),
    # no FFHQ LPIPS table was released: t_edit / t_boost come from the attribute's domain (celeba) or the CLI
    "ffhq": BackboneSpec("iddpm-ffhq", AFHQ_DICT, None, "ViT-B/16"),
    "metfaces": BackboneSpec("adm-metfaces", METFACE_DICT, "metface", "ViT-B/16"),
    # SDEdit's networks in the diffusers format (google/ddpm-ema-*-256); the config comes from their config.json
    "celeba-hq-diffusers": BackboneSpec("diffusers-ddpm-ema-celebahq-256", None, "celeba", "ViT-B/16"),
    "lsun-church-diffusers": BackboneSpec("diffusers-ddpm-ema-church-256", None, "church", "ViT-B/16"),
    "lsun-bedroom-diffusers": BackboneSpec("diffusers-ddpm-ema-bedroom-256", None, "bedroom", "ViT-B/16"),
}


@dataclass(frozen=True)
class World:
    """An offline world shipped with the package: its tiny DDPM and tiny CLIP, both loaded by name (the backbone's
    default CLIP is the world's own)."""
    load_unet: Callable[[], HSpaceUNet]
    load_clip: Callable[..., tuple]       # (device=...) -> (encoder, image size)


TINY_WORLDS: Mapping[str, World] = {"shapes": World(shapes.load_tiny_ddpm, shapes.load_tiny_clip)}


@dataclass
class Backbone:
    unet: HSpaceUNet
    name: str
    fingerprint: str          # sha256 of the weights (identifies the model in caches and run configs)
    lpips_domain: str | None
    default_clip: str


def fingerprint(model: nn.Module) -> str:
    """sha256 over the state dict (names, shapes, dtypes, bytes): stable across files that hold the same weights."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def is_adm_config(config: Mapping[str, Any]) -> bool:
    """create_model arguments (an iDDPM / ADM network) rather than a ddim ``model:`` block."""
    return config.get("architecture") == "adm" or "num_channels" in config


def normalised_unet_config(config: Mapping[str, Any]) -> dict:
    return adm_config(config) if is_adm_config(config) else unet_config(config)


def build_unet(config: Mapping[str, Any]) -> HSpaceUNet:
    """The U-Net of a config: :class:`ADMUNet` for create_model arguments, else :class:`DDPMUNet`."""
    return ADMUNet(config) if is_adm_config(config) else DDPMUNet(config)


def save_unet(unet: HSpaceUNet, path: str | os.PathLike, dtype: torch.dtype | None = None, **meta) -> Path:
    """Write a U-Net with its config (``dtype=torch.float16`` to ship small files)."""
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu()
             for k, v in unet.state_dict().items()}
    atomic_torch_save({"format": UNET_FORMAT, "version": 1, "config": dict(unet.config), "state_dict": state,
                       "meta": dict(meta)}, path)
    return Path(path)


def load_unet_file(path: str | os.PathLike, config: Mapping[str, Any] | None = None) -> HSpaceUNet:
    """A U-Net from a file of :func:`save_unet` (config inside) or a bare state dict (ddim layout, or the original
    iDDPM / ADM key names) plus ``config``."""
    path = Path(path)
    obj = read_checkpoint(path)
    if isinstance(obj, Mapping) and obj.get("format") == UNET_FORMAT:
        if config is not None and normalised_unet_config(config) != normalised_unet_config(obj["config"]):
            raise CheckpointError(f"{path}: stored U-Net config {obj['config']} differs from the requested {config}")
        config, state = obj["config"], obj["state_dict"]
    else:
        if config is None:
            raise CheckpointError(f"{path}: a bare U-Net state dict; give its config (--unet-config model.yml, "
                                  "the reference YAML or create_model arguments) or use a named backbone (celeba-hq)")
        state = obj
    unet = build_unet(config)
    load_backbone_state_dict(unet, {k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                             source=str(path))
    return unet


def load_backbone(name_or_path: str, config: Mapping[str, Any] | None = None, weights_dir: str | None = None,
                  device: str | torch.device = "cpu") -> Backbone:
    """A frozen backbone in eval mode with its identity (see the module docstring)."""
    if name_or_path in TINY_WORLDS:
        unet, domain, clip = TINY_WORLDS[name_or_path].load_unet(), None, name_or_path
    elif name_or_path in BACKBONES:
        spec = BACKBONES[name_or_path]
        weights = registry.resolve(spec.weights, weights_dir=weights_dir)
        if spec.config is None:
            unet = load_diffusers_unet(config_path=registry.resolve(f"{spec.weights}-config", weights_dir=weights_dir),
                                       weights_path=weights)
        else:
            unet = load_unet_file(weights, config or spec.config)
        domain, clip = spec.lpips_domain, spec.default_clip
    elif is_diffusers_folder(name_or_path):
        unet, domain, clip = load_diffusers_unet(name_or_path), None, "ViT-B/16"
    elif Path(name_or_path).is_file():
        unet, domain, clip = load_unet_file(name_or_path, config), None, "ViT-B/16"
    else:
        raise ValueError(f"unknown backbone {name_or_path!r}: give one of {sorted(BACKBONES) + list(TINY_WORLDS)}, "
                         "the path to a checkpoint or a diffusers UNet2DModel folder")
    unet = unet.to(device).eval().requires_grad_(False)
    return Backbone(unet, name_or_path, fingerprint(unet), domain, clip)


# --------------------------------------------------------------------------------------------------
# CLIP models
# --------------------------------------------------------------------------------------------------

def save_clip(model: nn.Module, model_cfg: Mapping[str, Any], path: str | os.PathLike, image_size: int,
              tokenizer: str = "ViT-B-32", context_length: int = 77, dtype: torch.dtype | None = None, **meta) -> Path:
    """Write a custom open_clip CLIP (built from ``model_cfg`` = kwargs of ``open_clip.model.CLIP``)."""
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu()
             for k, v in model.state_dict().items()}
    atomic_torch_save({"format": CLIP_FORMAT, "version": 1, "model_cfg": dict(model_cfg), "state_dict": state,
                       "image_size": image_size, "tokenizer": tokenizer, "context_length": context_length,
                       "meta": dict(meta)}, path)
    return Path(path)


def load_clip_file(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(encoder, image_size) from a file of :func:`save_clip`."""
    import open_clip  # heavy: imported only where a CLIP file is built

    path = Path(path)
    obj = read_checkpoint(path)
    if not (isinstance(obj, Mapping) and obj.get("format") == CLIP_FORMAT):
        raise CheckpointError(f"{path}: not an asyrp CLIP file; give an OpenAI CLIP name (ViT-B/16) or .pt file")
    model = open_clip.model.CLIP(**obj["model_cfg"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()},
                          strict=True)
    base = open_clip.get_tokenizer(obj["tokenizer"])
    context = obj["context_length"]

    def tokenizer(texts):
        return base(texts, context_length=context)

    return OpenClipEncoder(model, tokenizer, name=str(path)).to(device), int(obj["image_size"])


def load_clip_model(name_or_path: str, weights_dir: str | None = None, device: str | torch.device = "cpu"):
    """(encoder, image_size): an OpenAI CLIP by name (ViT-B/32, ViT-B/16, ViT-L/14), the shapes world's tiny CLIP
    ("shapes"), an OpenAI ``.pt`` file given as ``name=path`` (e.g. ``ViT-B/16=/data/ViT-B-16.pt``), or an asyrp
    CLIP file."""
    if name_or_path in TINY_WORLDS:
        return TINY_WORLDS[name_or_path].load_clip(device=device)
    if name_or_path in CLIP_ARCHS:
        return load_clip(name_or_path, weights_dir=weights_dir, device=device), 224
    if "=" in name_or_path and name_or_path.split("=", 1)[0] in CLIP_ARCHS:
        name, path = name_or_path.split("=", 1)
        return load_clip(name, weights=path, device=device), 224
    if Path(name_or_path).is_file():
        return load_clip_file(name_or_path, device=device)
    raise ValueError(f"unknown CLIP model {name_or_path!r}: give one of {list(CLIP_ARCHS) + list(TINY_WORLDS)}, "
                     "NAME=path/to/openai.pt, or an asyrp CLIP file")
