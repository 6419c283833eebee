"""The models a benchmark runs on: randomly initialised, so nothing is downloaded. Full size is the CelebA-HQ 256
U-Net and CLIP ViT-B/16 (open_clip, QuickGELU, 224 px); ``tiny`` is a reduced U-Net (16 px, h = 64×4×4) and a tiny
open_clip CLIP (16 px) that run on a CPU in seconds. The tests share them."""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch

from asyrp.backbones import Backbone
from asyrp.clip_loss import OpenClipEncoder
from asyrp.models.unet import CELEBA_HQ_256, DDPMUNet

# A U-Net small enough for a CPU (h is (B, 64, 4, 4)); the layout of the CelebA-HQ model.
TINY_UNET = dict(ch=32, out_ch=3, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0,
                 resamp_with_conv=True, in_channels=3, image_size=16)
# A tiny open_clip CLIP at 16 px (OpenAI's tokenizer: vocabulary 49408, context 77).
TINY_CLIP_CFG = dict(embed_dim=32, vision_cfg=dict(image_size=16, patch_size=4, width=64, layers=2, head_width=32),
                     text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2), quick_gelu=True)


@dataclass
class BenchModels:
    backbone: object        # asyrp.backbones.Backbone
    encoder: object         # asyrp.clip_loss.OpenClipEncoder
    clip_size: int
    description: dict


def build_models(tiny: bool = False, device: str | torch.device = "cpu", seed: int = 0) -> BenchModels:
    """Randomly initialised U-Net and CLIP (full size: CelebA-HQ 256 U-Net, ViT-B/16; ``tiny``: the reduced pair)."""

    device = torch.device(device)
    torch.manual_seed(seed)
    unet = DDPMUNet(TINY_UNET if tiny else CELEBA_HQ_256)
    if tiny:
        clip, clip_name, size = open_clip.model.CLIP(**TINY_CLIP_CFG), "tiny CLIP (open_clip, 16 px)", 16
    else:
        clip = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
        clip_name, size = "ViT-B-16 (open_clip, QuickGELU, 224 px)", 224
    encoder = OpenClipEncoder(clip.float(), open_clip.get_tokenizer("ViT-B-16"), name=clip_name).to(device)
    unet = unet.to(device).eval().requires_grad_(False)
    backbone = Backbone(unet, "bench-tiny" if tiny else "bench-celeba-hq-256", f"random-init-seed{seed}", "celeba",
                        clip_name)
    description = {"unet": "TINY_UNET (16 px)" if tiny else "DDPMUNet(CELEBA_HQ_256)",
                   "unet_config": dict(unet.config), "unet_params": sum(p.numel() for p in unet.parameters()),
                   "clip": clip_name, "clip_params": sum(p.numel() for p in clip.parameters()),
                   "h": [unet.h_channels, unet.h_size, unet.h_size], "weights": f"random (seed {seed})"}
    return BenchModels(backbone, encoder, size, description)


def random_entries(n: int, size: int, seed: int) -> list[dict]:
    """Stand-in training entries (x0 in [−1, 1], x_T ~ N(0, I)): the timing does not depend on their values."""
    g = torch.Generator().manual_seed(seed + 1)
    x0 = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    x_T = torch.randn(n, 3, size, size, generator=g)
    return [{"name": f"bench{i}", "x0": x0[i], "x_T": x_T[i]} for i in range(n)]
