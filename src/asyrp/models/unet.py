"""The DDPM U-Net of the CelebA-HQ / LSUN models (ermongroup/ddim "Model" layout, SDEdit's celeba_hq.ckpt).

The forward pass is split at the bottleneck so that Asyrp can reach h-space:

    encode(x, t)            -> (h, skips, temb)      h = output of mid.block_2, e.g. (B, 512, 8, 8) at 256²
    decode(h, skips, temb)  -> ε                     (decode(h, skips, temb, x, t) where the head predicts x0)
    forward_edit(...)       -> (ε, ε̃, h, Δh)         one encoder pass, two decoder passes (h and c0·h + c1·Δh)

Parameter names are exactly those of the original checkpoints (``conv_in``, ``temb.dense.0``, ``down.i.block.j``,
``mid.block_1``, ``up.i.block.j``, ``norm_out``, ``conv_out``), so ``load_state_dict`` is strict.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from asyrp import diffusion
from asyrp.models.checkpoint import BackboneLoadError, key_mismatch

# Keys of the reference YAML ``model:`` block that define the network, plus the image size.
CONFIG_KEYS = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout",
               "resamp_with_conv", "in_channels", "image_size")

CELEBA_HQ_256 = dict(ch=128, out_ch=3, ch_mult=[1, 1, 2, 2, 4, 4], num_res_blocks=2, attn_resolutions=[16],
                     dropout=0.0, resamp_with_conv=True, in_channels=3, image_size=256)


def unet_config(config: Mapping[str, Any]) -> dict:
    """Normalise a config: flat keys, or the reference YAML layout ({"model": {...}, "data": {"image_size"}})."""
    if "model" in config and isinstance(config["model"], Mapping):
        flat = dict(config["model"])
        flat.setdefault("image_size", config.get("data", {}).get("image_size"))
    else:
        flat = dict(config)
    missing = [k for k in CONFIG_KEYS if flat.get(k) is None]
    if missing:
        raise ValueError(f"U-Net config is missing {missing}; needs {list(CONFIG_KEYS)}")
    cfg = {k: flat[k] for k in CONFIG_KEYS}
    cfg["ch_mult"] = list(cfg["ch_mult"])
    cfg["attn_resolutions"] = list(cfg["attn_resolutions"])
    # Optional key ``skip_resolutions``: the resolutions whose encoder features reach the decoder (default: all, as in
    # every published checkpoint, which therefore never carry it). An experiment of blogpost.md §4: with only the
    # full-resolution skips, global content has to pass through h.
    if flat.get("skip_resolutions") is not None:
        resolutions = [cfg["image_size"] // 2 ** i for i in range(len(cfg["ch_mult"]))]
        bad = [r for r in flat["skip_resolutions"] if r not in resolutions]
        if bad:
            raise ValueError(f"skip_resolutions {bad} are not resolutions of this U-Net ({resolutions})")
        cfg["skip_resolutions"] = sorted(set(flat["skip_resolutions"]), reverse=True)
    # Optional key ``h_only_from_t``: at t ≥ this timestep no encoder feature reaches the decoder and the decoder's
    # output is the predicted x0, so ε = (x_t − √ᾱ_t·x̂0(h)) / √(1 − ᾱ_t) (linear β schedule of asyrp.diffusion):
    # the predicted x0 — what Asyrp's asymmetric step edits — is a function of h alone there (blogpost.md §4).
    # Optional key ``x0_from_t``: the same x0 head at t ≥ this timestep, with the skips kept. A world trained with
    # hue-rotated skips there (``asyrp train-backbone --skip-hue-rotation``) draws the outline from the skips and
    # the object's colour from h alone (blogpost.md §4).
    for key in ("h_only_from_t", "x0_from_t"):
        if flat.get(key) is not None:
            value = flat[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < diffusion.NUM_TIMESTEPS:
                raise ValueError(f"{key} must be an integer timestep in [1, {diffusion.NUM_TIMESTEPS - 1}], "
                                 f"got {value!r}")
            cfg[key] = value
    if "h_only_from_t" in cfg and "x0_from_t" in cfg:
        raise ValueError("give h_only_from_t (skips cut) or x0_from_t (skips kept), not both")
    return cfg


def per_sample_timesteps(t: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
    """A (batch,) float tensor of timesteps from a scalar, a 0-d or a (batch,) tensor."""
    if isinstance(t, (int, float)):  # a fill on the device, not a host-to-device copy
        return torch.full((batch,), float(t), device=device)
    t = torch.as_tensor(t, device=device)
    return t.expand(batch) if t.dim() == 0 else t


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [sin | cos] of t·exp(−k·ln(10000)/(dim/2 − 1)), k = 0..dim/2−1 (dim even)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the autocast precision, returned in the input's dtype.

    Its statistics over 32 groups of up to 64k values each are where fp16 / bf16 would lose accuracy first; in fp32
    this is exactly ``nn.GroupNorm`` (same parameters, same state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return GroupNorm32(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions (scale C^-1/2), through SDPA."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = group_norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(b, 1, c, hh * ww).transpose(-1, -2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (b, 1, hw, c); default scale is c^-1/2
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, hh, ww))


class Downsample(nn.Module):
    def __init__(self, ch: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as the original
        return F.avg_pool2d(x, 2, 2)


class Upsample(nn.Module):
    def __init__(self, ch: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class HSpaceUNet(nn.Module):
    """A U-Net split at h: subclasses provide ``encode(x, t) -> (h, skips, temb)`` and ``decode(h, skips, temb, x, t)
    -> ε``; this class builds ``forward`` and the editing pass on them (shared by DDPMUNet and the ADM U-Net)."""

    default_delta_kind = "conv"  # the delta block of the released directions for this family

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | int) -> torch.Tensor:
        h, skips, temb = self.encode(x, t)
        return self.decode(h, skips, temb, x, t)

    def forward_edit(self, x: torch.Tensor, t: torch.Tensor | float | int, delta_block: nn.Module | None,
                     t_edit: int, c0: float = 1.0, c1: float = 1.0, ignore_timestep: bool = False,
                     need_eps: bool = True):
        """(ε, ε̃, h, Δh) from one encoder pass and up to two decoder passes: see :func:`forward_edit_with`."""
        return forward_edit_with(self.encode, self.decode, x, t, delta_block, t_edit, c0, c1, ignore_timestep,
                                 need_eps)


class DDPMUNet(HSpaceUNet):
    """ε-prediction U-Net with a reachable bottleneck. ``config``: see :data:`CONFIG_KEYS`."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.config = cfg = unet_config(config)
        ch, ch_mult, nrb = cfg["ch"], tuple(cfg["ch_mult"]), cfg["num_res_blocks"]
        self.ch, self.temb_ch, self.num_resolutions, self.num_res_blocks = ch, 4 * ch, len(ch_mult), nrb
        self.image_size = cfg["image_size"]
        dropout, conv_resample = cfg["dropout"], cfg["resamp_with_conv"]

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])
        self.conv_in = nn.Conv2d(cfg["in_channels"], ch, 3, padding=1)

        res, in_mult = cfg["image_size"], (1,) + ch_mult
        self.down = nn.ModuleList()
        for i in range(self.num_resolutions):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[i], ch * ch_mult[i]
            for _ in range(nrb):
                level.block.append(ResnetBlock(block_in, block_out, self.temb_ch, dropout))
                block_in = block_out
                if res in cfg["attn_resolutions"]:
                    level.attn.append(AttnBlock(block_in))
            if i != self.num_resolutions - 1:
                level.downsample = Downsample(block_in, conv_resample)
                res //= 2
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, self.temb_ch, dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, self.temb_ch, dropout)
        self.h_channels, self.h_size = block_in, res
        self.h_only_from_t = cfg.get("h_only_from_t")
        # where the decoder's output is x̂0 (h_only_from_t cuts the skips there too, x0_from_t keeps them)
        self.x0_from_t = self.h_only_from_t if self.h_only_from_t is not None else cfg.get("x0_from_t")
        # ᾱ for the x0 head: a plain attribute, not a buffer, so state dicts stay unchanged
        self._alphas_cumprod = diffusion.alphas_cumprod(diffusion.linear_betas())
        skip_res = cfg.get("skip_resolutions")
        # per decoder level (ascending): does it concatenate the encoder features of its resolution?
        self.level_has_skips = [skip_res is None or cfg["image_size"] // 2 ** i in skip_res
                                for i in range(self.num_resolutions)]

        self.up = nn.ModuleList()
        for i in reversed(range(self.num_resolutions)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            block_out, skip_in = ch * ch_mult[i], ch * ch_mult[i]
            for j in range(nrb + 1):
                if j == nrb:
                    skip_in = ch * in_mult[i]
                if not self.level_has_skips[i]:
                    skip_in = 0
                level.block.append(ResnetBlock(block_in + skip_in, block_out, self.temb_ch, dropout))
                block_in = block_out
                if res in cfg["attn_resolutions"]:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in, conv_resample)
                res *= 2
            self.up.insert(0, level)  # stored in ascending level order, as in the checkpoints

        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg["out_ch"], 3, padding=1)

    # ------------------------------------------------------------------ split forward
    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """temb = dense1(swish(dense0(sinusoid(t)))); no swish after dense1 (consumers apply it)."""
        emb = timestep_embedding(t, self.ch).to(self.temb.dense[0].weight.dtype)
        return self.temb.dense[1](F.silu(self.temb.dense[0](emb)))

    def encode(self, x: torch.Tensor, t: torch.Tensor | float | int):
        """Encoder and middle block: returns (h, skips, temb). ``t`` is per sample (or a scalar)."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"input is {tuple(x.shape[-2:])}, this U-Net expects {self.image_size}×{self.image_size}")
        t = per_sample_timesteps(t, x.shape[0], x.device)
        temb = self.time_embedding(t)
        skips = [self.conv_in(x)]
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(skips[-1], temb)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
                skips.append(h)
            if hasattr(level, "downsample"):
                skips.append(level.downsample(skips[-1]))
        h = skips[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, temb)), temb)
        if self.h_only_from_t is not None:  # the decoder sees h alone at t ≥ h_only_from_t
            keep = (t < self.h_only_from_t).to(h.dtype).view(-1, 1, 1, 1)
            skips = [s * keep for s in skips]
        return h, skips, temb

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor,
               x: torch.Tensor | None = None, t: torch.Tensor | float | int | None = None) -> torch.Tensor:
        """Up path from the bottleneck h, consuming ``skips`` from the end (the list is not modified).

        An ``h_only_from_t`` or ``x0_from_t`` model also needs the input ``x`` and ``t`` of :meth:`encode`: from that
        timestep on its decoder predicts x0, turned into ε here."""
        out = self._up(h, skips, temb)
        if self.x0_from_t is None:
            return out
        if x is None or t is None:
            raise ValueError("this U-Net predicts x0 at high t (h_only_from_t / x0_from_t): call decode(h, skips, "
                             "temb, x, t) with the input and timesteps given to encode")
        t = per_sample_timesteps(t, x.shape[0], x.device)
        a = self._alphas_cumprod.to(x.device)[t.long().clamp(0, diffusion.NUM_TIMESTEPS - 1)].view(-1, 1, 1, 1)
        eps_from_x0 = (x.float() - a.sqrt() * out.float()) / (1 - a).sqrt()
        return torch.where((t >= self.x0_from_t).view(-1, 1, 1, 1), eps_from_x0.to(out.dtype), out)

    def _up(self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        k = len(skips)
        for i in reversed(range(self.num_resolutions)):
            level = self.up[i]
            for j, block in enumerate(level.block):
                k -= 1
                h = block(torch.cat([h, skips[k]], dim=1) if self.level_has_skips[i] else h, temb)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def forward_edit_with(encode, decode, x: torch.Tensor, t: torch.Tensor | float | int, delta_block: nn.Module | None,
                      t_edit: int, c0: float = 1.0, c1: float = 1.0, ignore_timestep: bool = False,
                      need_eps: bool = True):
    """(ε, ε̃, h, Δh) of a U-Net given as its ``encode`` and ``decode`` (a ``DDPMUNet``'s or ``ADMUNet``'s, or
    compiled ones).

    ``t`` is a (B,) tensor of per-sample timesteps, or one Python number for the whole batch (then nothing waits
    for the device). The edit h̃ = c0·h + c1·Δh applies **per sample** where t ≥ t_edit; elsewhere ε̃ = ε (the second
    decoder runs only on the samples that are edited). Δh = f(h, temb) is the unscaled block output
    for the whole batch, or ``None`` when no sample is edited. ``ignore_timestep`` calls the block
    with temb = None. ``need_eps=False`` skips the plain decoder and returns ε = None (the last
    training step does not use it).
    """
    batch = x.shape[0]
    if delta_block is None:
        n_edit = 0
    elif isinstance(t, (int, float)):  # one timestep for the batch: decided on the host, no device sync
        n_edit = batch if t >= t_edit else 0
    else:
        t = torch.as_tensor(t, device=x.device)
        edit = (t.expand(batch) if t.dim() == 0 else t) >= t_edit
        n_edit = int(edit.sum())  # a host sync: decides which decoders run on which samples
    if n_edit == 0 and not need_eps:
        raise ValueError("forward_edit with need_eps=False needs at least one edited sample")
    t = per_sample_timesteps(t, batch, x.device)  # a tensor from here on: compiled halves see no Python timestep
    h, skips, temb = encode(x, t)
    eps = decode(h, skips, temb, x, t) if (need_eps or n_edit < batch) else None
    if n_edit == 0:
        return eps, eps, h, None
    delta_h = delta_block(h, None if ignore_timestep else temb)
    h_edit = c0 * h + c1 * delta_h
    if n_edit == batch:
        eps_edited = decode(h_edit, skips, temb, x, t)
    else:
        idx = edit.nonzero(as_tuple=True)[0]
        eps_sub = decode(h_edit[idx], [s[idx] for s in skips], temb[idx], x[idx], t[idx])
        eps_edited = eps.index_copy(0, idx, eps_sub)
    return eps, eps_edited, h, delta_h


# --------------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------------

def load_backbone_state_dict(model: HSpaceUNet, state_dict: Mapping[str, torch.Tensor], source: str = "<state dict>",
                             allow_prefixes: tuple[str, ...] = ("layer_",)) -> None:
    """Strictly load a state dict (ddim layout for DDPMUNet, original key names for ADMUNet). Only keys under
    ``allow_prefixes`` (Asyrp's ``layer_i.*`` delta blocks, which some files carry) may be extra; anything else
    missing or unexpected is an error."""
    state_dict = dict(state_dict)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}  # saved from DataParallel
    own = model.state_dict()
    mismatch = key_mismatch(own, state_dict, allow_extra=allow_prefixes, show=6)
    if mismatch:
        raise BackboneLoadError(f"{source} does not fit {type(model).__name__}{model.config} — {mismatch}. "
                                f"Check that the file is the {getattr(model, 'checkpoint_layout', 'ddim-layout')} "
                                "checkpoint for this config.")
    model.load_state_dict({k: state_dict[k] for k in own}, strict=True)
