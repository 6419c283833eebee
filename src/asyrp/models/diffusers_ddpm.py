"""diffusers-format DDPM checkpoints (a ``UNet2DModel`` folder) loaded into :class:`DDPMUNet` by key conversion.

``google/ddpm-ema-celebahq-256``, ``-church-256`` and ``-bedroom-256`` hold the same networks as SDEdit's ``.ckpt``
files in the diffusers layout: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or ``.bin``). Only the DDPM
family converts: ``DownBlock2D`` / ``AttnDownBlock2D`` levels, single-head attention, positional time embedding with
[sin | cos] and frequency shift 1, padding-0 downsampling convs and GroupNorm eps 1e-6; any other config is refused
with the field that differs. The conversion is strict: every key of the file is mapped and every parameter of the
network is filled, else a one-line error names the keys.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file

from asyrp.models.checkpoint import read_checkpoint
from asyrp.models.unet import DDPMUNet, load_backbone_state_dict

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# UNet2DModel's defaults for the fields a DDPM conversion depends on (a config.json may omit some), and the value the
# ddim DDPM network needs where it is fixed.
_DEFAULTS = dict(in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="positional",
                 freq_shift=0, flip_sin_to_cos=True, mid_block_scale_factor=1, downsample_padding=1,
                 downsample_type="conv", upsample_type="conv", dropout=0.0, act_fn="silu", attention_head_dim=8,
                 norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5, resnet_time_scale_shift="default",
                 add_attention=True, class_embed_type=None, num_class_embeds=None, time_embedding_dim=None,
                 mid_block_type="UNetMidBlock2D", layers_per_block=2)
_REQUIRED = dict(center_input_sample=False, time_embedding_type="positional", freq_shift=1, flip_sin_to_cos=False,
                 mid_block_scale_factor=1, downsample_padding=0, downsample_type="conv", upsample_type="conv",
                 act_fn="silu", norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-6,
                 resnet_time_scale_shift="default", add_attention=True, class_embed_type=None, num_class_embeds=None,
                 time_embedding_dim=None, mid_block_type="UNetMidBlock2D")

# diffusers module names → ddim names inside a resnet / attention block (both attention namings of diffusers' history)
_RESNET = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj", "norm2": "norm2", "conv2": "conv2",
           "conv_shortcut": "nin_shortcut"}
_ATTENTION = {"group_norm": "norm", "to_q": "q", "query": "q", "to_k": "k", "key": "k", "to_v": "v", "value": "v",
              "to_out.0": "proj_out", "proj_attn": "proj_out"}


class DiffusersFormatError(ValueError):
    """A diffusers folder or state dict that does not convert; the one-line message names what and the fix."""


def ddpm_config(dconf: Mapping[str, Any], source: str = "config.json") -> dict:
    """The DDPMUNet config of a diffusers UNet2DModel config, or DiffusersFormatError naming the first field that
    differs from the DDPM family."""
    if dconf.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise DiffusersFormatError(f"{source}: a {dconf['_class_name']}, not a UNet2DModel; give a DDPM UNet2DModel")
    cfg = {**_DEFAULTS, **dconf}
    for key, want in _REQUIRED.items():
        if cfg[key] != want:
            raise DiffusersFormatError(f"{source}: {key}={cfg[key]!r}, but the DDPM family (ddim layout) has "
                                       f"{want!r}; this diffusers model cannot be loaded into DDPMUNet")
    channels = list(cfg["block_out_channels"])
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    mirrored = [t.replace("Down", "Up") for t in reversed(down)]
    if any(t not in ("DownBlock2D", "AttnDownBlock2D") for t in down) or up != mirrored:
        raise DiffusersFormatError(f"{source}: blocks {down} / {up} are not DownBlock2D / AttnDownBlock2D levels "
                                   "mirrored by UpBlock2D / AttnUpBlock2D; not a DDPM-family UNet2DModel")
    ch = channels[0]
    if any(c % ch for c in channels):
        raise DiffusersFormatError(f"{source}: block_out_channels {channels} are not multiples of {ch}")
    head_dim = cfg["attention_head_dim"]
    attn_channels = [c for c, t in zip(channels, down) if t.startswith("Attn")] + [channels[-1]]
    if head_dim is not None and any(head_dim != c for c in attn_channels):
        raise DiffusersFormatError(f"{source}: attention_head_dim {head_dim} gives multi-head attention; DDPMUNet "
                                   "has one head (attention_head_dim null or equal to the block's channels)")
    size = cfg["sample_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    return dict(ch=ch, out_ch=cfg["out_channels"], ch_mult=[c // ch for c in channels],
                num_res_blocks=cfg["layers_per_block"],
                attn_resolutions=[size // 2 ** i for i, t in enumerate(down) if t.startswith("Attn")],
                dropout=float(cfg["dropout"]), resamp_with_conv=True, in_channels=cfg["in_channels"], image_size=size)


def _convert_key(key: str, levels: int) -> str | None:
    """The ddim name of a diffusers UNet2DModel key, or None when it has no counterpart."""
    fixed = {"time_embedding.linear_1": "temb.dense.0", "time_embedding.linear_2": "temb.dense.1",
             "conv_in": "conv_in", "conv_norm_out": "norm_out", "conv_out": "conv_out"}
    module, _, param = key.rpartition(".")
    if module in fixed:
        return f"{fixed[module]}.{param}"
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", module)
    if m:
        side, level, kind, j, rest = m.groups()
        level = int(level) if side == "down" else levels - 1 - int(level)
        table, target = (_RESNET, "block") if kind == "resnets" else (_ATTENTION, "attn")
        return f"{side}.{level}.{target}.{j}.{table[rest]}.{param}" if rest in table else None
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv", module)
    if m:
        side, level, kind = m.groups()
        level = int(level) if side == "down" else levels - 1 - int(level)
        return f"{side}.{level}.{'downsample' if side == 'down' else 'upsample'}.conv.{param}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", module)
    if m:
        kind, j, rest = m.groups()
        if kind == "resnets" and rest in _RESNET and j in "01":
            return f"mid.block_{int(j) + 1}.{_RESNET[rest]}.{param}"
        if kind == "attentions" and rest in _ATTENTION and j == "0":
            return f"mid.attn_1.{_ATTENTION[rest]}.{param}"
    return None


def convert_state_dict(state: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                       source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """diffusers keys → ddim keys (attention Linear weights become 1×1 conv weights); unmapped keys are an error."""
    levels = len(config["ch_mult"])
    out, unmapped = {}, []
    for key, value in state.items():
        new = _convert_key(key, levels)
        if new is None:
            unmapped.append(key)
            continue
        if ".attn" in new and new.endswith("weight") and value.dim() == 2:
            value = value[:, :, None, None]
        out[new] = value
    if unmapped:
        raise DiffusersFormatError(f"{source}: {len(unmapped)} keys have no DDPMUNet counterpart: "
                                   f"{', '.join(unmapped[:4])}{' …' if len(unmapped) > 4 else ''}; "
                                   "not a DDPM-family UNet2DModel")
    return out


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise DiffusersFormatError(f"{folder}: no {' or '.join(WEIGHT_NAMES)}; give a diffusers UNet2DModel folder "
                               "(the repository's unet/ folder for a pipeline)")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A diffusers weights file: safetensors, or a .bin state dict (read with the weights-only loader)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for truncated / foreign files
            raise DiffusersFormatError(f"{path}: not a readable safetensors file ({e}); re-download it") from None
    return dict(read_checkpoint(path))


def load_diffusers_unet(folder: str | os.PathLike | None = None, config_path: str | os.PathLike | None = None,
                        weights_path: str | os.PathLike | None = None) -> DDPMUNet:
    """DDPMUNet from a diffusers folder (``config.json`` + weights), or from the two files given separately."""
    folder = Path(folder) if folder is not None else None
    config_path = Path(config_path) if config_path is not None else folder / CONFIG_NAME
    weights_path = Path(weights_path) if weights_path is not None else _weights_file(folder)
    if not config_path.is_file():
        raise DiffusersFormatError(f"{config_path}: no such file; a diffusers folder has {CONFIG_NAME} beside "
                                   "the weights")
    try:
        dconf = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DiffusersFormatError(f"{config_path}: not valid JSON ({e})") from None
    config = ddpm_config(dconf, str(config_path))
    state = convert_state_dict(read_weights(weights_path), config, str(weights_path))
    unet = DDPMUNet(config)
    load_backbone_state_dict(unet, {k: v.float() for k, v in state.items()}, source=str(weights_path),
                             allow_prefixes=())
    return unet


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CONFIG_NAME).is_file() and any((path / n).is_file() for n in WEIGHT_NAMES)
