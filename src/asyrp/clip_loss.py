"""CLIP directional loss (training) and directional similarity S_dir (evaluation).

    I  = normalize(E_I(preprocess(image)))                     per image
    ΔT = normalize(mean_k normalize(E_T(template_k(trg))) − normalize(E_T(template_k(src))))   (79 templates)
    ΔI = I(edited) − I(source)                                 **each edited image with its own source**
    cos_b = cos(ΔI_b / (‖ΔI_b‖ + 1e-7), ΔT)
    training loss  = −log((1 + mean_b cos_b) / 2)   (the reference's −log((2 − L_dir)/2), L_dir = mean_b(1 − cos_b))
    S_dir          = cos_b per image (reported as a similarity: higher is better)

Preprocessing (reference): x ∈ [−1, 1] → (x + 1)/2 → bicubic resize of the shorter side to 224 (torchvision tensor
resize; antialias is a recorded choice: the original environments had none) → centre crop 224 → CLIP normalisation.

Encoders are duck-typed: anything with ``encode_image(pixels) -> (B, D)`` and ``encode_text(list[str]) -> (N, D)``
works (tests use stubs; :func:`load_clip` wraps open_clip).
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn
import zipfile
from asyrp.io import weights as registry

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# OpenAI name -> open_clip architecture (QuickGELU is forced when building, to match OpenAI's weights)
CLIP_ARCHS = {"ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14"}


@functools.lru_cache(maxsize=None)
def imagenet_templates() -> tuple[str, ...]:
    """The 79 ImageNet prompt templates ("a bad photo of a {}.", ...) used for the text direction."""
    text = resources.files("asyrp.resources").joinpath("imagenet_templates.txt").read_text()
    return tuple(line for line in text.splitlines() if line)


class ClipEncoderLike(Protocol):
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor: ...
    def encode_text(self, texts: list[str]) -> torch.Tensor: ...


def clip_preprocess(x: torch.Tensor, image_size: int = 224, antialias: bool = False,
                    mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD) -> torch.Tensor:
    """[−1, 1] NCHW images → CLIP input (differentiable; no clamping, as in the reference)."""
    x = (x + 1) / 2
    x = TF.resize(x, image_size, interpolation=TF.InterpolationMode.BICUBIC, antialias=antialias)
    x = TF.center_crop(x, [image_size, image_size])
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s


def directional_similarity(src_img_emb: torch.Tensor, edit_img_emb: torch.Tensor, src_txt_emb: torch.Tensor,
                           trg_txt_emb: torch.Tensor) -> torch.Tensor:
    """Per-image cos(normalize(E_I(edit)) − normalize(E_I(src)), normalize(E_T(trg)) − normalize(E_T(src))).

    Image embeddings are (N, D) and paired row by row; text embeddings are (D,) or (1, D) (one direction for all)
    or (N, D) (one per image). Raw (unnormalised) embeddings are fine: each is L2-normalised first.
    """
    src_img_emb, edit_img_emb = torch.as_tensor(src_img_emb), torch.as_tensor(edit_img_emb)
    if src_img_emb.shape != edit_img_emb.shape:
        raise ValueError(f"source and edited image embeddings must pair row by row, got {tuple(src_img_emb.shape)} "
                         f"and {tuple(edit_img_emb.shape)}")
    d_img = F.normalize(edit_img_emb, dim=-1) - F.normalize(src_img_emb, dim=-1)
    d_txt = F.normalize(torch.as_tensor(trg_txt_emb), dim=-1) - F.normalize(torch.as_tensor(src_txt_emb), dim=-1)
    return F.cosine_similarity(d_img, d_txt.reshape(-1, d_img.shape[-1]).to(d_img.dtype), dim=-1, eps=1e-8)


class CLIPDirection(nn.Module):
    """Directional CLIP loss / similarity for one (source text, target text) pair.

    The text direction is computed once at construction (frozen encoder). ``templates=True`` averages the 79
    ImageNet templates (the reference's training loss); ``templates=None`` uses the raw prompts (single prompt).
    """

    def __init__(self, encoder: ClipEncoderLike, src_text: str, trg_text: str,
                 templates: bool | Sequence[str] | None = True, antialias: bool = False, image_size: int = 224):
        super().__init__()
        self.encoder = encoder
        self.src_text, self.trg_text, self.antialias, self.image_size = src_text, trg_text, antialias, image_size
        if templates is True:
            templates = imagenet_templates()
        self.templates = tuple(templates) if templates else None
        with torch.no_grad():
            if self.templates:
                src = F.normalize(encoder.encode_text([t.format(src_text) for t in self.templates]).float(), dim=-1)
                trg = F.normalize(encoder.encode_text([t.format(trg_text) for t in self.templates]).float(), dim=-1)
                direction = (trg - src).mean(dim=0, keepdim=True)
            else:
                raw = encoder.encode_text([src_text, trg_text]).float()
                direction = F.normalize(raw[1:2], dim=-1) - F.normalize(raw[0:1], dim=-1)
        self.register_buffer("text_direction", F.normalize(direction, dim=-1), persistent=False)

    @property
    def prompt_mode(self) -> str:
        return f"{len(self.templates)}-template average" if self.templates else "single prompt"

    def text_cosine(self) -> float:
        """cos(E_T(src), E_T(trg)) of the raw, un-templated texts: sets t_edit and weights the L1 term."""
        with torch.no_grad():
            raw = self.encoder.encode_text([self.src_text, self.trg_text]).float()
        return float(F.cosine_similarity(raw[0:1], raw[1:2], dim=1, eps=1e-6))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of [−1, 1] images (gradients flow if the input requires them)."""
        pixels = clip_preprocess(images, self.image_size, self.antialias)
        return F.normalize(self.encoder.encode_image(pixels).float(), dim=-1)

    def cosines(self, src_images=None, edited_images=None, src_embeddings=None) -> torch.Tensor:
        """Per-image cos(ΔI_b, ΔT), differentiable with respect to ``edited_images``."""
        return self._cosines(src_images, edited_images, src_embeddings)

    def _cosines(self, src_images, edited_images, src_embeddings) -> torch.Tensor:
        if src_embeddings is None:
            if src_images is None:
                raise ValueError("give src_images or src_embeddings")
            with torch.no_grad():
                src_embeddings = self.encode_images(src_images)
        edit = self.encode_images(edited_images)
        if src_embeddings.shape[0] != edit.shape[0]:
            raise ValueError(f"{edit.shape[0]} edited images need {edit.shape[0]} source images (each edited image is "
                             f"paired with its own source), got {src_embeddings.shape[0]}")
        d = edit - src_embeddings.to(edit.dtype)
        d = d / (d.norm(dim=-1, keepdim=True) + 1e-7)
        return F.cosine_similarity(d, self.text_direction.to(d.dtype), dim=1, eps=1e-8)

    def direction_loss(self, src_images=None, edited_images=None, src_embeddings=None) -> torch.Tensor:
        """Per-image 1 − cos(ΔI, ΔT) (the reference's ``clip_directional_loss`` before the batch mean)."""
        return 1 - self._cosines(src_images, edited_images, src_embeddings)

    def loss(self, src_images=None, edited_images=None, src_embeddings=None) -> torch.Tensor:
        """Training loss −log((1 + mean_b cos_b)/2). ``src_embeddings`` (from :meth:`encode_images`) may be cached."""
        mean_dir_loss = self.direction_loss(src_images, edited_images, src_embeddings).mean()
        return -torch.log((2 - mean_dir_loss) / 2)

    def similarity(self, src_images=None, edited_images=None, src_embeddings=None) -> torch.Tensor:
        """Per-image S_dir = cos(ΔI, ΔT) (no gradients)."""
        with torch.no_grad():
            return self._cosines(src_images, edited_images, src_embeddings)


# --------------------------------------------------------------------------------------------------
# open_clip models
# --------------------------------------------------------------------------------------------------

class OpenClipEncoder(nn.Module):
    """open_clip model + tokenizer behind the ``encode_image`` / ``encode_text(list[str])`` interface."""

    def __init__(self, model: nn.Module, tokenizer, name: str = "custom", frozen: bool = True):
        """``frozen=False`` leaves the model's mode and gradients alone (a probe of a CLIP that is still training)."""
        super().__init__()
        self.model, self.tokenizer, self.name = model, tokenizer, name
        if frozen:
            self.model.eval().requires_grad_(False)

    @property
    def input_dtype(self) -> torch.dtype:
        """The image tower's dtype (its first convolution's, as OpenAI's ``CLIP.dtype``): fp16 after fp16 precision."""
        conv = getattr(getattr(self.model, "visual", None), "conv1", None)
        return conv.weight.dtype if conv is not None else next(self.model.parameters()).dtype

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self.input_dtype))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(next(self.model.parameters()).device)
        return self.model.encode_text(tokens)


CLIP_PRECISIONS = ("fp32", "fp16")


def set_clip_precision(encoder: OpenClipEncoder, precision: str) -> OpenClipEncoder:
    """``fp16``: the weights of convolutions, linear and attention layers and the projections in float16, layer norms
    computing in float32 — what the original's ``clip.load`` does on a GPU (OpenAI's ``convert_weights``); ``fp32``:
    unchanged (``clip.load`` on a CPU, and this package's default). Embeddings are returned as float32 either way."""
    if precision not in CLIP_PRECISIONS:
        raise ValueError(f"clip_precision={precision!r} is not one of {CLIP_PRECISIONS}")
    if precision == "fp16":
        import open_clip  # heavy: imported where a CLIP is built, as in load_clip

        if not isinstance(encoder, OpenClipEncoder):
            raise ValueError(f"clip_precision=fp16 needs an open_clip CLIP, got {type(encoder).__name__}")
        open_clip.model.convert_weights_to_lp(encoder.model, torch.float16)
    return encoder


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def load_clip(name: str = "ViT-B/32", weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
              weights_dir: str | os.PathLike | None = None) -> OpenClipEncoder:
    """OpenAI CLIP (ViT-B/32, ViT-B/16, ViT-L/14) through open_clip with QuickGELU, in fp32.

    ``weights`` is OpenAI's original ``.pt`` (TorchScript) or an open_clip state dict; without it the file comes from
    the weights registry (cache / ``--weights-dir``; a download only where the network is reachable).
    """
    import open_clip  # heavy: imported only where a CLIP is built

    if name not in CLIP_ARCHS:
        raise ValueError(f"unknown CLIP model {name!r}; choose one of {list(CLIP_ARCHS)}")
    if weights is None:
        weights = registry.resolve(f"clip-{name}", weights_dir=weights_dir)
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"CLIP weights {weights} not found; run `asyrp download clip-{name}` or give the path")
    if _is_torchscript(weights):
        model = open_clip.load_openai_model(str(weights), precision="fp32", device="cpu")
    else:
        model = open_clip.create_model(CLIP_ARCHS[name], pretrained=str(weights), force_quick_gelu=True)
    tokenizer = open_clip.get_tokenizer(CLIP_ARCHS[name])
    return OpenClipEncoder(model.float(), tokenizer, name).to(device)
