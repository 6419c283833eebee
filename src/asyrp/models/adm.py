"""The improved-diffusion / guided-diffusion ("ADM") U-Net of the AFHQ-dog, FFHQ and MetFaces backbones, split at h.

Asyrp's AFHQ-dog and FFHQ checkpoints (``afhq_dog_4m.pt``, ``ffhq_10m.pt``) are iDDPM U-Nets and its MetFaces
checkpoint (``metface_p2.pt``, P2 weighting) a guided-diffusion U-Net; both code bases build the same network from the
same ``create_model`` arguments, so one class serves both. It differs from the DDPM U-Net of :mod:`asyrp.models.unet`
in the time embedding ([cos | sin], frequencies exp(−k·ln(10000)/half)), ResBlocks that apply the time embedding as a
GroupNorm scale and shift, ResBlocks that resample (``resblock_updown``), multi-head attention, and six output
channels (ε and the learned variance, which DDIM does not use).

    ADMUNet.from_create_model(**AFHQ_DICT)   # the original create_model arguments; strict original key names
    encode(x, t)            -> (h, skips, temb)       h = middle_block output, (B, 512, 8, 8) at 256²
    decode(h, skips, temb)  -> ε                      the first 3 output channels
    forward_edit(...)       -> (ε, ε̃, h, Δh)          as DDPMUNet.forward_edit (shared in HSpaceUNet)
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from asyrp.models.unet import GroupNorm32, HSpaceUNet, per_sample_timesteps

ARCHITECTURE = "adm"

# The arguments of the original create_model (improved_ddpm / guided_diffusion script_util.py) with their defaults.
CREATE_MODEL_DEFAULTS = dict(
    image_size=256, num_channels=128, num_res_blocks=2, channel_mult="", learn_sigma=False, class_cond=False,
    use_checkpoint=False, attention_resolutions="16", num_heads=1, num_head_channels=-1, num_heads_upsample=-1,
    use_scale_shift_norm=False, dropout=0.0, resblock_updown=False, use_fp16=False, use_new_attention_order=False)

# AFHQ_DICT of the original (AFHQ-dog and FFHQ); METFACE_DICT is identical.
AFHQ_DICT = dict(CREATE_MODEL_DEFAULTS, image_size=256, num_channels=128, num_res_blocks=1, channel_mult="",
                 learn_sigma=True, attention_resolutions="16", num_heads=4, num_head_channels=64,
                 use_scale_shift_norm=True, resblock_updown=True)
METFACE_DICT = dict(AFHQ_DICT)

# channel_mult "" picks one by image size, as create_model does
_DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


def adm_config(kwargs: Mapping[str, Any]) -> dict:
    """Normalise create_model arguments: defaults filled in, unknown names and unsupported options refused.

    The result also carries ``architecture`` ("adm") and ``in_channels`` (3), which the rest of the package reads
    from a U-Net's config; both are accepted back."""
    kwargs = dict(kwargs)
    if kwargs.pop("architecture", ARCHITECTURE) != ARCHITECTURE:
        raise ValueError("not an ADM U-Net config (architecture must be 'adm')")
    if kwargs.pop("in_channels", 3) != 3:
        raise ValueError("create_model builds 3-channel U-Nets only (in_channels must be 3)")
    unknown = sorted(set(kwargs) - set(CREATE_MODEL_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown create_model arguments {unknown}; known: {sorted(CREATE_MODEL_DEFAULTS)}")
    cfg = {**CREATE_MODEL_DEFAULTS, **kwargs}
    if cfg["class_cond"]:
        raise ValueError("class_cond=True (ImageNet's label embedding) is not supported: Asyrp never uses the label; "
                         "build the unconditional model (class_cond=False)")
    cfg["channel_mult"] = ",".join(str(m) for m in _channel_mult(cfg))
    res = cfg["attention_resolutions"]
    cfg["attention_resolutions"] = ",".join(map(str, res)) if isinstance(res, (list, tuple)) else str(res)
    return {"architecture": ARCHITECTURE, "in_channels": 3, **cfg}


def _channel_mult(cfg: Mapping[str, Any]) -> tuple:
    mult = cfg["channel_mult"]
    if mult in ("", None):
        if cfg["image_size"] not in _DEFAULT_CHANNEL_MULT:
            raise ValueError(f"no default channel_mult for image_size {cfg['image_size']}; give channel_mult")
        return _DEFAULT_CHANNEL_MULT[cfg["image_size"]]
    if isinstance(mult, str):
        return tuple(float(m) if "." in m else int(m) for m in mult.split(","))
    return tuple(mult)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """iDDPM's sinusoidal embedding: [cos | sin] of t·exp(−k·ln(max_period)/half), k = 0..half−1."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def normalization(channels: int) -> GroupNorm32:
    """The original's ``normalization``: GroupNorm(32, C), eps 1e-5, computed in float32."""
    return GroupNorm32(32, channels)


class Resample(nn.Module):
    """Nearest ×2 upsampling or ×2 average pooling, optionally followed / replaced by a 3×3 conv (keys ``op`` for
    the strided down conv, ``conv`` for the up conv, as in the original)."""

    def __init__(self, channels: int, up: bool, use_conv: bool):
        super().__init__()
        self.up = up
        if use_conv and up:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        elif use_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            return self.conv(x) if hasattr(self, "conv") else x
        return self.op(x) if hasattr(self, "op") else F.avg_pool2d(x, 2, 2)


class ResBlock(nn.Module):
    """norm → SiLU → (resample) → conv3, the time embedding as a scale/shift of the second norm (or added), norm →
    SiLU → dropout → conv3, plus a skip (identity or 1×1 conv)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int,
                 use_scale_shift_norm: bool, up: bool = False, down: bool = False):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if self.updown:  # parameter-free resampling of both the features and the skip
            self.h_upd, self.x_upd = Resample(channels, up, False), Resample(channels, up, False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.h_upd(self.in_layers[:-1](x))
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions (1-d convs ``qkv`` and ``proj_out``), through SDPA.

    ``new_order`` False (the checkpoints' "legacy" layout) splits qkv per head into [q | k | v]; True splits it into
    [q of all heads | k | v] first."""

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, new_order: bool):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"{self.num_heads} attention heads do not divide {channels} channels")
        self.new_order = new_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))  # (b, 3c, T)
        heads, ch, length = self.num_heads, c // self.num_heads, x.shape[-1]
        if self.new_order:
            q, k, v = (z.reshape(b, heads, ch, length) for z in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b, heads, 3 * ch, length).split(ch, dim=2)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = self.proj_out(out.transpose(-1, -2).reshape(b, c, length))  # default SDPA scale: ch^-1/2, as the original
        return (x + h).reshape(b, c, *spatial)


class TimestepSequential(nn.Sequential):
    """Runs its layers in order, giving the time embedding to the ResBlocks (the original TimestepEmbedSequential)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(HSpaceUNet):
    """iDDPM / ADM U-Net with a reachable bottleneck. ``config``: create_model arguments (see :func:`adm_config`)."""

    default_delta_kind = "adm"  # the released dog_* / metface_* directions are ADM-style delta blocks
    checkpoint_layout = "iDDPM / guided-diffusion"

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.config = cfg = adm_config(config)
        mult = _channel_mult(cfg)
        mc, nrb, dropout = cfg["num_channels"], cfg["num_res_blocks"], cfg["dropout"]
        self.image_size, self.model_channels, self.temb_ch = cfg["image_size"], mc, 4 * mc
        attention_ds = {cfg["image_size"] // int(r) for r in cfg["attention_resolutions"].split(",")}
        heads_up = cfg["num_heads"] if cfg["num_heads_upsample"] == -1 else cfg["num_heads_upsample"]
        ssn, updown = cfg["use_scale_shift_norm"], cfg["resblock_updown"]

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, self.temb_ch, dropout, ch_out, ssn, **kw)

        def attn(ch, heads):
            return AttentionBlock(ch, heads, cfg["num_head_channels"], cfg["use_new_attention_order"])

        self.time_embed = nn.Sequential(nn.Linear(mc, self.temb_ch), nn.SiLU(), nn.Linear(self.temb_ch, self.temb_ch))
        ch = input_ch = int(mult[0] * mc)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(3, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(nrb):
                layers = [res(ch, int(m * mc))]
                ch = int(m * mc)
                if ds in attention_ds:
                    layers.append(attn(ch, cfg["num_heads"]))
                self.input_blocks.append(TimestepSequential(*layers))
                chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(TimestepSequential(
                    res(ch, ch, down=True) if updown else Resample(ch, up=False, use_conv=True)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential(res(ch, ch), attn(ch, cfg["num_heads"]), res(ch, ch))
        self.h_channels, self.h_size = ch, cfg["image_size"] // ds
        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(nrb + 1):
                layers = [res(ch + chans.pop(), int(mc * m))]
                ch = int(mc * m)
                if ds in attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == nrb:
                    layers.append(res(ch, ch, up=True) if updown else Resample(ch, up=True, use_conv=True))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out_channels = 6 if cfg["learn_sigma"] else 3
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(input_ch, self.out_channels, 3, padding=1))

    @classmethod
    def from_create_model(cls, **kwargs) -> "ADMUNet":
        """The network that the original ``create_model(**kwargs)`` builds, with its parameter names."""
        return cls(kwargs)

    # ------------------------------------------------------------------ split forward
    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.model_channels).to(self.time_embed[0].weight.dtype)
        return self.time_embed(emb)

    def encode(self, x: torch.Tensor, t: torch.Tensor | float | int):
        """Input blocks and middle block: returns (h, skips, temb). ``t`` is per sample (or a scalar)."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"input is {tuple(x.shape[-2:])}, this U-Net expects {self.image_size}×{self.image_size}")
        temb = self.time_embedding(per_sample_timesteps(t, x.shape[0], x.device))
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, temb)
            skips.append(h)
        return self.middle_block(h, temb), skips, temb

    def decode_full(self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        """Output blocks from h, consuming ``skips`` from the end (not modified): all output channels."""
        for k, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, skips[-1 - k]], dim=1), temb)
        return self.out(h)

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor,
               x: torch.Tensor | None = None, t: torch.Tensor | float | int | None = None) -> torch.Tensor:
        """ε: the first 3 output channels (the learned-variance channels are dropped). ``x``, ``t``: unused, for
        the signature of DDPMUNet.decode."""
        return self.decode_full(h, skips, temb)[:, :3]

    def forward_full(self, x: torch.Tensor, t: torch.Tensor | float | int) -> torch.Tensor:
        """The original forward: ε and, with learn_sigma, the variance channels."""
        h, skips, temb = self.encode(x, t)
        return self.decode_full(h, skips, temb)
