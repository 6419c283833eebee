"""Delta blocks f(h, temb) → Δh: the official 1×1-conv blocks (DDPM and iDDPM / ADM backbones) and the transformer
family of the extension study.

Every block is  in_layer → time-embedding step → out_layer, where

* in_layer / out_layer are a 1×1 conv (``conv``), or transformer encoders over pixel tokens (``pixel``: H·W tokens
  of width C), channel tokens (``channel``: C tokens of width H·W), or both in either order
  (``pixel_channel``, ``channel_pixel``);
* ``adm``: the iDDPM / ADM block of the AFHQ-dog and MetFaces directions, GroupNorm → SiLU → 1×1 conv, + Linear(
  swish(temb)), GroupNorm → SiLU → dropout → 1×1 conv (keys ``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}``;
  only ``add`` / ``none`` time embeddings, group norm and SiLU);
* the time-embedding step is  act(norm(z + P(swish(temb))))  for ``add``, act(norm(z ⊙ P(swish(temb)))) for
  ``mult``, act(AdaGroupNorm(z, temb)) for ``adagn``, and act(norm(z)) for ``none``;
  ``norm`` is GroupNorm(32) (``group``) or per-channel GroupNorm(C) (``instance``), ``act`` is SiLU/GELU/ReLU.

Parameter names follow the official checkpoints (``conv1``, ``temb_proj``, ``norm2``, ``conv2``) and the extension's
state dicts (``in_layer.t_layer.*``, ``in_layer.t_pixel.*``, ``in_layer.t_channel.*``, ``adagn.linear.*``), so both
load strictly. Checkpoints written by this project carry the full :class:`DeltaBlockConfig`; loading rebuilds the
block from it and refuses a block of another configuration.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from asyrp.io.files import atomic_torch_save, atomic_write_bytes
from asyrp.models.adm import normalization
from asyrp.models.checkpoint import CheckpointError, key_mismatch, read_checkpoint
from asyrp.io.weights import resolve_direction

KINDS = ("conv", "pixel", "channel", "pixel_channel", "channel_pixel", "adm")
TIME_EMBEDDINGS = ("add", "mult", "adagn", "none")
NORMS = ("group", "instance")
ACTIVATIONS = ("silu", "gelu", "relu")

# Names used by the extension (seed fork) for the same layer types.
SEED_LAYER_TYPES = {"conv": "conv", "p_transformer_simple": "pixel", "c_transformer_simple": "channel",
                    "pc_transformer_simple": "pixel_channel", "cp_transformer_simple": "channel_pixel"}

CHECKPOINT_FORMAT = "asyrp.delta_block"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class DeltaBlockConfig:
    """Everything needed to rebuild a delta block. Saved inside every checkpoint this project writes."""

    kind: str = "conv"
    channels: int = 512            # C of h
    spatial_size: int = 8          # H = W of h (channel tokens have width H·W)
    temb_channels: int = 512
    heads: int = 1
    layers: int = 1
    ff_dim: int = 2048
    time_embedding: str = "add"
    norm: str = "group"
    activation: str = "silu"
    dropout: float = 0.0
    # Official behaviour: with temb = None (ignore_timestep) the norm + activation still run. The extension's
    # blocks skip both in that case; set True to reproduce them.
    skip_norm_without_temb: bool = False
    # Zero the last layer so that Δh = 0 at initialisation (the original does not).
    zero_init: bool = False
    # Bound ‖Δh‖ ≤ max_ratio · ‖h‖ per image (Δh is rescaled where it is longer), so that the block moves h
    # instead of overwriting it. None: unbounded, as the original.
    max_ratio: float | None = None

    def __post_init__(self):
        for name, allowed in (("kind", KINDS), ("time_embedding", TIME_EMBEDDINGS), ("norm", NORMS),
                              ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"DeltaBlockConfig.{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.kind == "adm" and (self.time_embedding not in ("add", "none") or self.norm != "group"
                                   or self.activation != "silu"):
            raise ValueError("an adm delta block has time_embedding add or none, norm group and activation silu")
        if self.kind not in ("conv", "adm"):
            widths = {"pixel": [self.channels], "channel": [self.spatial_size ** 2]}
            for width in widths.get(self.kind, [self.channels, self.spatial_size ** 2]):
                if width % self.heads:
                    raise ValueError(f"{self.heads} heads do not divide the token width {width} of a {self.kind} block")
        if self.channels % 32 and self.norm == "group":
            raise ValueError(f"GroupNorm(32) needs channels divisible by 32, got {self.channels}")
        if self.max_ratio is not None and not self.max_ratio > 0:
            raise ValueError(f"DeltaBlockConfig.max_ratio must be > 0 (or None: unbounded), got {self.max_ratio}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DeltaBlockConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DeltaBlockConfig fields {unknown}; known: {sorted(known)}")
        return cls(**dict(d))

    def to_dict(self) -> dict:
        return asdict(self)

    def diff(self, other: "DeltaBlockConfig") -> list[str]:
        """Human-readable list of the fields that differ, e.g. ["heads: 8 ≠ 1"]."""
        return [f"{f.name}: {getattr(self, f.name)!r} ≠ {getattr(other, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def bound_delta(h: torch.Tensor, delta: torch.Tensor, max_ratio: float | None) -> torch.Tensor:
    """Δh rescaled per image so that ‖Δh‖ ≤ max_ratio · ‖h‖ (unchanged where shorter, or where max_ratio is None).
    Differentiable: the block learns a direction and a length inside the ball."""
    if max_ratio is None:
        return delta
    limit = max_ratio * h.detach().float().flatten(1).norm(dim=1)
    length = delta.float().flatten(1).norm(dim=1)
    scale = (limit / length.clamp_min(torch.finfo(torch.float32).tiny)).clamp(max=1.0)
    return delta * scale.view(-1, *[1] * (delta.dim() - 1)).to(delta.dtype)


def _activation(name: str):
    return {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}[name]


def _encoder(width: int, cfg: DeltaBlockConfig) -> nn.TransformerEncoder:
    """Post-norm ``nn.TransformerEncoder`` (ReLU FFN) with a final LayerNorm, as the extension's blocks."""
    layer = nn.TransformerEncoderLayer(width, cfg.heads, cfg.ff_dim, cfg.dropout, batch_first=True)
    encoder = nn.TransformerEncoder(layer, cfg.layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)
    for p in encoder.parameters():  # nn.Transformer's initialisation, which the extension used
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    return encoder


def _run_tokens(encoder: nn.TransformerEncoder, tokens: str, h: torch.Tensor) -> torch.Tensor:
    """Pixel tokens: (B, H·W, C); channel tokens: (B, C, H·W). No positional encoding, as in the extension."""
    b, c, hh, ww = h.shape
    z = h.reshape(b, c, hh * ww)
    if tokens == "pixel":
        return encoder(z.transpose(1, 2)).transpose(1, 2).reshape(b, c, hh, ww)
    return encoder(z).reshape(b, c, hh, ww)


def _width(tokens: str, cfg: DeltaBlockConfig) -> int:
    return cfg.channels if tokens == "pixel" else cfg.spatial_size ** 2


class TokenTransformer(nn.Module):
    """One transformer over pixel or channel tokens of h (keys ``t_layer.*``)."""

    def __init__(self, tokens: str, cfg: DeltaBlockConfig):
        super().__init__()
        self.tokens = tokens
        self.t_layer = _encoder(_width(tokens, cfg), cfg)

    def final_norm(self) -> nn.LayerNorm:
        return self.t_layer.norm

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return _run_tokens(self.t_layer, self.tokens, h)


class DualTransformer(nn.Module):
    """Pixel then channel transformer (``pixel_channel``) or the reverse (``channel_pixel``); keys ``t_pixel.*``,
    ``t_channel.*`` for both orders (so the file alone cannot tell them apart)."""

    def __init__(self, order: str, cfg: DeltaBlockConfig):
        super().__init__()
        self.t_pixel = _encoder(_width("pixel", cfg), cfg)
        self.t_channel = _encoder(_width("channel", cfg), cfg)
        self.tokens = ("pixel", "channel") if order == "pixel_channel" else ("channel", "pixel")

    def final_norm(self) -> nn.LayerNorm:
        return getattr(self, f"t_{self.tokens[-1]}").norm

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for tokens in self.tokens:
            h = _run_tokens(getattr(self, f"t_{tokens}"), tokens, h)
        return h


class AdaGroupNorm(nn.Module):
    """[scale | shift] = Linear(temb); z ← GroupNorm(z, no affine)·(1 + scale) + shift (diffusers' AdaGroupNorm
    with act_fn=None, eps 1e-5, on the raw temb)."""

    def __init__(self, temb_channels: int, channels: int, groups: int, eps: float = 1e-5):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.linear = nn.Linear(temb_channels, 2 * channels)

    def forward(self, z: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(temb)[:, :, None, None].chunk(2, dim=1)
        return F.group_norm(z, self.groups, eps=self.eps) * (1 + scale) + shift


def _token_layer(cfg: DeltaBlockConfig) -> nn.Module:
    if cfg.kind in ("pixel", "channel"):
        return TokenTransformer(cfg.kind, cfg)
    return DualTransformer(cfg.kind, cfg)


class DeltaBlock(nn.Module):
    """f(h, temb) → Δh, shape-preserving. Build it with :func:`build_delta_block`."""

    def __init__(self, cfg: DeltaBlockConfig):
        super().__init__()
        self.config = cfg
        c = cfg.channels
        if cfg.kind == "conv":
            self.conv1 = nn.Conv2d(c, c, 1)
            self.conv2 = nn.Conv2d(c, c, 1)
        else:
            self.in_layer = _token_layer(cfg)
            self.out_layer = _token_layer(cfg)
        groups = 32 if cfg.norm == "group" else c
        if cfg.time_embedding in ("add", "mult", "adagn"):
            # kept in "adagn" mode too, unused, so that the extension's state dicts load strictly
            self.temb_proj = nn.Linear(cfg.temb_channels, c)
        self.norm2 = nn.GroupNorm(groups, c, eps=1e-6, affine=True)
        if cfg.time_embedding == "adagn":
            self.adagn = AdaGroupNorm(cfg.temb_channels, c, groups)
        self._act = _activation(cfg.activation)
        if cfg.zero_init:
            self._zero_last_layer()

    def _zero_last_layer(self):
        last = self.conv2 if self.config.kind == "conv" else self.out_layer
        if isinstance(last, nn.Conv2d):
            params = [last.weight, last.bias]
        else:  # transformers end in a LayerNorm: zero its affine so Δh starts at 0
            params = [last.final_norm().weight, last.final_norm().bias]
        with torch.no_grad():
            for p in params:
                p.zero_()

    def _in(self, h):
        return self.conv1(h) if self.config.kind == "conv" else self.in_layer(h)

    def _out(self, z):
        return self.conv2(z) if self.config.kind == "conv" else self.out_layer(z)

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        z = self._in(h)
        if temb is None or cfg.time_embedding == "none":
            if not (temb is None and cfg.skip_norm_without_temb):
                z = self._act(self.norm2(z))
        elif cfg.time_embedding == "adagn":
            z = self._act(self.adagn(z, temb))
        else:
            proj = self.temb_proj(F.silu(temb))[:, :, None, None]
            z = self._act(self.norm2(z + proj if cfg.time_embedding == "add" else z * proj))
        return bound_delta(h, self._out(z), cfg.max_ratio)


class ADMDeltaBlock(nn.Module):
    """The iDDPM / ADM delta block (the original's ``DeltaBlock`` of models/improved_ddpm/unet.py): unlike the DDPM
    block it normalises h before the first conv. Norms are GroupNorm(32) in float32, eps 1e-5, as in that U-Net."""

    def __init__(self, cfg: DeltaBlockConfig):
        super().__init__()
        self.config = c = cfg
        self.in_layers = nn.Sequential(normalization(c.channels), nn.SiLU(), nn.Conv2d(c.channels, c.channels, 1))
        if cfg.time_embedding == "add":
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(c.temb_channels, c.channels))
        self.out_layers = nn.Sequential(normalization(c.channels), nn.SiLU(), nn.Dropout(c.dropout),
                                        nn.Conv2d(c.channels, c.channels, 1))
        if cfg.zero_init:
            with torch.no_grad():
                self.out_layers[3].weight.zero_()
                self.out_layers[3].bias.zero_()

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        z = self.in_layers(h)
        if temb is not None and hasattr(self, "emb_layers"):
            z = z + self.emb_layers(temb).type(z.dtype)[:, :, None, None]
        return bound_delta(h, self.out_layers(z), self.config.max_ratio)


def build_delta_block(cfg: DeltaBlockConfig | Mapping[str, Any] | None = None,
                      **overrides) -> DeltaBlock | ADMDeltaBlock:
    """Build a fresh block from a config (a :class:`DeltaBlockConfig`, a dict, or keyword overrides)."""
    if cfg is None:
        cfg = DeltaBlockConfig()
    elif not isinstance(cfg, DeltaBlockConfig):
        cfg = DeltaBlockConfig.from_dict(cfg)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return ADMDeltaBlock(cfg) if cfg.kind == "adm" else DeltaBlock(cfg)


def seed_config(ctor_kwargs: Mapping[str, Any], spatial_size: int = 8) -> DeltaBlockConfig:
    """The config of an extension (seed fork) ``DeltaBlock(**ctor_kwargs)``: its layer_type, nheads, num_layers,
    dim_feedforward and emb_type, with the extension's temb=None behaviour."""
    if ctor_kwargs.get("use_midblock"):
        raise ValueError("the extension's UNetMidBlock2DCrossAttn delta block (use_midblock) is not supported")
    layer_type = ctor_kwargs.get("layer_type", "conv")
    if layer_type not in SEED_LAYER_TYPES:
        raise ValueError(f"unknown extension layer_type {layer_type!r}; known: {sorted(SEED_LAYER_TYPES)}")
    return DeltaBlockConfig(kind=SEED_LAYER_TYPES[layer_type], channels=ctor_kwargs.get("in_channels", 512),
                            spatial_size=spatial_size, temb_channels=ctor_kwargs.get("temb_channels", 512),
                            heads=ctor_kwargs.get("nheads", 1), layers=ctor_kwargs.get("num_layers", 1),
                            ff_dim=ctor_kwargs.get("dim_feedforward", 2048),
                            time_embedding=ctor_kwargs.get("emb_type", "add"),
                            dropout=ctor_kwargs.get("dropout", 0.0), skip_norm_without_temb=True)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------

def save_delta_block(block: DeltaBlock | ADMDeltaBlock, path: str | os.PathLike, **meta) -> Path:
    """Write ``{"format", "version", "config", "state_dict", "meta"}`` atomically (temp file + rename).

    ``meta`` holds JSON-like extras (attribute, texts, t_edit, training step, ...). A ``.safetensors`` path writes
    the tensors as safetensors with format, version, config and meta as JSON strings in its metadata (a file other
    tools can read without unpickling).
    """
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in block.state_dict().items()}
    if path.suffix == ".safetensors":
        atomic_write_bytes(path, safetensors_bytes({k: v.contiguous() for k, v in state.items()}, metadata={
            "format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION),
            "config": json.dumps(block.config.to_dict()), "meta": json.dumps(dict(meta))}))
        return path
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                  "config": block.config.to_dict(), "state_dict": state, "meta": dict(meta)}, path)
    return path


def _read_safetensors(path: Path) -> dict:
    """A ``.safetensors`` delta block as the dict :func:`save_delta_block` writes with ``torch.save``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())[:120]}); "
                              "re-export it") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        return state  # tensors only: a bare state dict
    try:
        return {"format": meta["format"], "version": int(meta["version"]), "config": json.loads(meta["config"]),
                "state_dict": state, "meta": json.loads(meta.get("meta", "{}"))}
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: broken asyrp metadata in the safetensors header ({e}); re-export it") from None


def _strict_load(block: DeltaBlock | ADMDeltaBlock, state: Mapping[str, torch.Tensor], path: Path,
                 what: str) -> None:
    mismatch = key_mismatch(block.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{path}: {what} does not fit {block.config} — {mismatch}; "
                              "give the config the file was trained with")
    block.load_state_dict(state, strict=True)


ADM_KEYS = {f"{layer}.{p}" for layer in ("in_layers.0", "in_layers.2", "out_layers.0", "out_layers.3")
            for p in ("weight", "bias")}


def _infer_legacy_config(state: Mapping[str, torch.Tensor], path: Path) -> DeltaBlockConfig:
    keys = set(state)
    if keys == ADM_KEYS | {"emb_layers.1.weight", "emb_layers.1.bias"}:  # the released dog_* / metface_* files
        return DeltaBlockConfig(kind="adm", channels=state["in_layers.2.weight"].shape[0],
                                temb_channels=state["emb_layers.1.weight"].shape[1])
    if keys == {"conv1.weight", "conv1.bias", "temb_proj.weight", "temb_proj.bias", "norm2.weight", "norm2.bias",
                "conv2.weight", "conv2.bias"}:
        c = state["conv1.weight"].shape[0]
        return DeltaBlockConfig(kind="conv", channels=c, temb_channels=state["temb_proj.weight"].shape[1])
    raise CheckpointError(f"{path}: a delta-block state dict without a stored config (extension/seed format: heads, "
                          "layer type and time embedding are not in the file); pass its DeltaBlockConfig "
                          "(CLI: --delta-config kind=...,heads=...,time_embedding=...)")


def load_delta_block(path: str | os.PathLike, config: DeltaBlockConfig | Mapping[str, Any] | None = None,
                     return_meta: bool = False, weights_dir: str | os.PathLike | None = None):
    """Load a delta block from a path, a registry name (``asyrp-smiling``) or a bare file name in the weights folders
    (``weights_dir``, ``$ASYRP_WEIGHTS_DIR``, the cache; see :func:`asyrp.io.weights.resolve_direction`):

    * a checkpoint of this project (config inside; ``config``, if given, must equal it);
    * the same exported to ``.safetensors`` (config in the metadata);
    * an official Asyrp ``*_LC_*.pth`` (``{"0": state_dict, "optimizer", "scheduler"}``; conv ``add``, or the
      ``adm`` block of the dog_* / metface_* files);
    * an extension (seed fork) checkpoint or bare state dict: the file does not say its heads or time
      embedding, so ``config`` is required for anything but the conv layout.

    Always strict. Returns the block in eval mode (and the stored meta if ``return_meta``).
    """
    path = resolve_direction(path, weights_dir)
    if config is not None and not isinstance(config, DeltaBlockConfig):
        config = DeltaBlockConfig.from_dict(config)
    obj = _read_safetensors(path) if path.suffix == ".safetensors" and path.is_file() else read_checkpoint(path)
    meta: dict = {}
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        if obj.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{path}: delta-block checkpoint version {obj.get('version')} is not supported "
                                  f"(this asyrp reads version {CHECKPOINT_VERSION}); upgrade asyrp")
        try:
            stored = DeltaBlockConfig.from_dict(obj["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: stored delta-block config is invalid ({e})") from None
        if config is not None and config != stored:
            raise CheckpointError(f"{path}: checkpoint was trained as {'; '.join(stored.diff(config))} "
                                  "(stored vs requested); drop the conflicting options or use a matching checkpoint")
        block, state, what = build_delta_block(stored), obj["state_dict"], "stored weights"
        meta = dict(obj.get("meta", {}))
    else:
        if isinstance(obj, Mapping) and "0" in obj and isinstance(obj["0"], Mapping):
            state, what = obj["0"], "entry '0'"  # official / extension training checkpoint
        elif isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values()):
            state, what = obj, "state dict"
        else:
            raise CheckpointError(f"{path}: not a delta-block checkpoint (top-level keys "
                                  f"{sorted(map(str, obj))[:6] if isinstance(obj, Mapping) else type(obj).__name__}); "
                                  "pass an asyrp, official *_LC_*.pth or extension delta-block file")
        block = build_delta_block(config if config is not None else _infer_legacy_config(state, path))
        meta = {"source_format": "legacy"}
    _strict_load(block, state, path, what)
    block.eval()
    return (block, meta) if return_meta else block
