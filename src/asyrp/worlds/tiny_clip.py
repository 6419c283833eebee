"""The shapes world's tiny CLIP as a network: its config, the open_clip model built from it, the tokenizer, and the
compact state that ships in the package (fp16, only the token rows seen in training).

Apart from :mod:`asyrp.worlds.train_clip` (which trains it) so that loading the shipped model
(:func:`asyrp.worlds.shapes.load_tiny_clip`) does not import the trainer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def default_config(embed_dim: int = 128, width: int = 128, vision_layers: int = 3, text_layers: int = 3,
                   patch_size: int = 4, context_length: int = 24, image_size: int = 32, vision_kind: str = "vit",
                   resnet_width: int = 32) -> dict:
    """``vision_kind``: "vit" (patches of ``patch_size``) or "resnet" (open_clip's ModifiedResNet, one bottleneck
    block per stage, stem width ``resnet_width``; a conv tower sees the small shapes' outlines, which the 4-px-patch
    ViT does not learn to tell apart)."""
    if vision_kind == "vit":
        vision = {"layers": vision_layers, "width": width, "head_width": 32, "patch_size": patch_size,
                  "mlp_ratio": 4.0}
    elif vision_kind == "resnet":
        if image_size % 32:
            raise ValueError(f"a ResNet vision tower needs an image size divisible by 32, got {image_size}")
        vision = {"layers": [1] * 4, "width": resnet_width, "head_width": 64}
    else:
        raise ValueError(f"unknown vision tower {vision_kind!r}: use 'vit' or 'resnet'")
    return {"embed_dim": embed_dim, "image_size": image_size, "context_length": context_length,
            "tokenizer": "ViT-B-32", "vision": vision,
            "text": {"layers": text_layers, "width": width, "heads": max(1, width // 32), "mlp_ratio": 4.0,
                     "vocab_size": 49408}}


def build_clip(cfg: Mapping[str, Any]):
    """open_clip.model.CLIP from a config dict (see :func:`default_config`), QuickGELU, fp32."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # lazy: open_clip takes seconds to import
    vision_kw = dict(cfg["vision"])
    if isinstance(vision_kw["layers"], list):  # a list of per-stage depths selects open_clip's ModifiedResNet
        vision_kw["layers"] = tuple(vision_kw["layers"])
    vision = CLIPVisionCfg(image_size=cfg["image_size"], **vision_kw)
    text = CLIPTextCfg(context_length=cfg["context_length"], **cfg["text"])
    return CLIP(cfg["embed_dim"], vision_cfg=vision, text_cfg=text, quick_gelu=True)


def make_tokenizer(cfg: Mapping[str, Any]):
    """The standard open_clip BPE tokenizer (bundled with open_clip; no network) at the stored context length."""
    import open_clip  # lazy: open_clip takes seconds to import
    return open_clip.get_tokenizer(cfg["tokenizer"], context_length=cfg["context_length"])


def export_state(model, seen_tokens: torch.Tensor, fp16: bool = True) -> tuple[dict, torch.Tensor]:
    """State dict for shipping: floating tensors in fp16 (unless told), token embedding reduced to the seen rows."""
    rows = seen_tokens.nonzero(as_tuple=True)[0]
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if k == "token_embedding.weight":
            v = v[rows]
        sd[k] = v.half() if fp16 and v.is_floating_point() else v.clone()
    return sd, rows


def load_clip_state(model, obj: Mapping[str, Any]) -> None:
    """Load a shipped/exported state (token rows not seen in training are zero) strictly, in fp32."""
    sd = {k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()}
    if "token_rows" in obj:
        full = torch.zeros_like(model.token_embedding.weight)
        full[obj["token_rows"].long()] = sd["token_embedding.weight"]
        sd["token_embedding.weight"] = full
    model.load_state_dict(sd, strict=True)
