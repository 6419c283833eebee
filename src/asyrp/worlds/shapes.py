"""The shapes world: a procedural dataset, an exact attribute reader and the shipped tiny DDPM / tiny CLIP.

Every image is one flat-coloured shape on a flat background, described by four attributes

    shape       circle | square | triangle            (triangles point up, squares are axis-aligned)
    color       red | green | blue | yellow | purple | orange
    size        small | large                          (the shape's *area*: 64 / 196 px² at 32×32, whatever the shape)
    background  white | black | gray

and a position (cx, cy) = the centre of the shape's bounding box in pixel units (pixel i spans [i, i+1)). Rendering is
plain float64 numpy (4×4 supersampled coverage, then rounded to uint8), so the same spec gives the same bytes everywhere.

:func:`read_attributes` inverts the renderer from pixels alone: background from the border, colour from the eroded
foreground snapped to the palette, size from the soft foreground area, shape by matching rendered templates of the
measured area and centroid. It is exact on rendered images and returns ``valid=False`` (with reasons) for images that
are not one clean shape on a clean background — the edit-success metric of the shapes world.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asyrp.clip_loss import OpenClipEncoder
from asyrp.models.unet import DDPMUNet, load_backbone_state_dict
from asyrp.worlds.tiny_clip import build_clip, load_clip_state, make_tokenizer

# --------------------------------------------------------------------------------------------------
# Vocabulary and palette
# --------------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 25, 35),
    "green": (30, 170, 40),
    "blue": (30, 70, 230),
    "yellow": (240, 225, 30),
    "purple": (150, 40, 210),
    "orange": (250, 125, 0),
}
SIZES: dict[str, float] = {"small": 64.0, "large": 196.0}  # shape area in px² at 32×32 (scales with image_size²)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": tuple(COLORS), "size": tuple(SIZES),
                                          "background": tuple(BACKGROUNDS)}

BASE_SIZE = 32           # image size the areas, jitter and margin are defined at
JITTER = 4.0             # max offset of the bbox centre from the image centre (px at 32×32)
MARGIN = 2.0             # min distance between the shape's bbox and the image border (px at 32×32)
SUPERSAMPLE = 4          # default anti-aliasing: 4×4 samples per pixel
SIZE_THRESHOLD = math.sqrt(SIZES["small"] * SIZES["large"])  # 112 px²: reader's small/large boundary

# The shapes world's edit path (its demo, the app's direction, the readiness probe): invert to t_0 and edit at
# t_0 ≥ t ≥ t_edit. The world has no LPIPS table to choose them from; measured instead (blogpost.md §4): from
# t_0 = 999 the predicted x0 of the first steps is a blurred blob, so the colour an edit adds there is blob-shaped and
# the outline changes; from the original's partial inversion to 600, with Δh down to t = 300, the outline stays in
# most images.
T_0 = 600
T_EDIT = 300

RESOURCE_PACKAGE = "asyrp.resources"
RESOURCE_DIR = "worlds/shapes"

_PALETTE = np.array(list(COLORS.values()), dtype=np.float64) / 255.0
_BG_PALETTE = np.array(list(BACKGROUNDS.values()), dtype=np.float64) / 255.0


# --------------------------------------------------------------------------------------------------
# Specs, rendering, captions
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    shape: str
    color: str
    size: str
    background: str
    cx: float = 16.0  # bbox centre, in pixels of a 32×32 image (scaled with image_size)
    cy: float = 16.0

    def __post_init__(self):
        for key, vocab in ATTRIBUTES.items():
            if getattr(self, key) not in vocab:
                raise ValueError(f"unknown {key} {getattr(self, key)!r}; choose one of {', '.join(vocab)}")

    @property
    def attributes(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ATTRIBUTES}

    def replace(self, **changes) -> ShapeSpec:
        return dataclasses.replace(self, **changes)


def shape_extent(shape: str, area: float) -> tuple[float, float]:
    """Half width and half height of the bounding box of a shape of the given area."""
    if shape == "circle":
        r = math.sqrt(area / math.pi)
        return r, r
    if shape == "square":
        s = math.sqrt(area) / 2
        return s, s
    if shape == "triangle":  # equilateral, pointing up
        side = math.sqrt(4 * area / math.sqrt(3))
        return side / 2, side * math.sqrt(3) / 4
    raise ValueError(f"unknown shape {shape!r}")


def coverage(shape: str, cx: float, cy: float, area: float, image_size: int = 32,
             supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel covered by the shape (float64 H×W in [0, 1]); coordinates in pixels of this image."""
    n = image_size * supersample
    c = (np.arange(n, dtype=np.float64) + 0.5) / supersample
    x, y = c[None, :], c[:, None]
    hw, hh = shape_extent(shape, area)
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= hw * hw
    elif shape == "square":
        inside = (np.abs(x - cx) <= hw) & (np.abs(y - cy) <= hh)
    else:  # triangle: apex at (cx, cy - hh), base at y = cy + hh
        top, bottom = cy - hh, cy + hh
        inside = (y <= bottom) & (np.abs(x - cx) * (2 * hh) <= (y - top) * hw)
    return inside.reshape(image_size, supersample, image_size, supersample).mean(axis=(1, 3))


def _scale(image_size: int) -> float:
    return image_size / BASE_SIZE


def shape_alpha(spec: ShapeSpec, image_size: int = 32, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """float64 H×W: the share of each pixel that ``spec``'s shape covers at this image size (what :func:`render`
    blends the colours with)."""
    k = _scale(image_size)
    return coverage(spec.shape, spec.cx * k, spec.cy * k, SIZES[spec.size] * k * k, image_size, supersample)


def render(spec: ShapeSpec, image_size: int = 32, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """uint8 H×W×3 image of ``spec`` (``supersample=1``: hard edges). Bit-exact for a given spec."""
    alpha = shape_alpha(spec, image_size, supersample)
    bg = np.array(BACKGROUNDS[spec.background], dtype=np.float64)
    fg = np.array(COLORS[spec.color], dtype=np.float64)
    img = bg + alpha[..., None] * (fg - bg)
    return np.rint(img).clip(0, 255).astype(np.uint8)


def caption(spec: ShapeSpec | Mapping[str, str], include: Iterable[str] | None = None, article: bool = True) -> str:
    """"a small red circle on a white background"; ``include`` names the attributes to mention (others are left
    out: {"color"} → "a red shape", {"background"} → "a shape on a black background")."""
    attrs = spec.attributes if isinstance(spec, ShapeSpec) else dict(spec)
    keys = set(ATTRIBUTES) if include is None else set(include)
    unknown = keys - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; choose from {list(ATTRIBUTES)}")
    words = [attrs[k] for k in ("size", "color") if k in keys]
    words.append(attrs["shape"] if "shape" in keys else "shape")
    text = " ".join(words)
    if "background" in keys:
        text += f" on a {attrs['background']} background"
    return f"a {text}" if article else text


def position_range(shape: str, size: str, image_size: int = 32) -> tuple[tuple[float, float], tuple[float, float]]:
    """Allowed (cx, cy) ranges (pixels of a 32×32 image) for a shape: centre ± JITTER, bbox ≥ MARGIN from the border."""
    hw, hh = shape_extent(shape, SIZES[size])
    c = BASE_SIZE / 2
    xr = (max(c - JITTER, MARGIN + hw), min(c + JITTER, BASE_SIZE - MARGIN - hw))
    yr = (max(c - JITTER, MARGIN + hh), min(c + JITTER, BASE_SIZE - MARGIN - hh))
    return xr, yr


def _allowed(constraints: Mapping[str, Any] | None, key: str) -> tuple[str, ...]:
    vocab = ATTRIBUTES[key]
    if not constraints or constraints.get(key) is None:
        return vocab
    value = constraints[key]
    values = (value,) if isinstance(value, str) else tuple(value)
    bad = [v for v in values if v not in vocab]
    if bad or not values:
        raise ValueError(f"constraint {key}={value!r} is not in {', '.join(vocab)}")
    return values


def sample_specs(n: int, seed: int, constraints: Mapping[str, Any] | None = None) -> list[ShapeSpec]:
    """``n`` specs drawn with ``numpy.random.default_rng(seed)``; ``constraints`` maps an attribute to a value or a
    list of values to draw from (e.g. {"color": "red"}, {"shape": ["circle", "square"]}), and may fix "cx"/"cy"."""
    unknown = set(constraints or {}) - set(ATTRIBUTES) - {"cx", "cy"}
    if unknown:
        raise ValueError(f"unknown constraint keys {sorted(unknown)}; use {list(ATTRIBUTES)} or cx / cy")
    rng = np.random.default_rng(seed)
    choices = {k: _allowed(constraints, k) for k in ATTRIBUTES}
    idx = {k: rng.integers(0, len(choices[k]), size=n) for k in ATTRIBUTES}
    u = rng.random((n, 2))
    specs = []
    for i in range(n):
        attrs = {k: choices[k][int(idx[k][i])] for k in ATTRIBUTES}
        (x0, x1), (y0, y1) = position_range(attrs["shape"], attrs["size"])
        cx = float(constraints["cx"]) if constraints and constraints.get("cx") is not None else x0 + u[i, 0] * (x1 - x0)
        cy = float(constraints["cy"]) if constraints and constraints.get("cy") is not None else y0 + u[i, 1] * (y1 - y0)
        specs.append(ShapeSpec(cx=round(float(cx), 3), cy=round(float(cy), 3), **attrs))
    return specs


# --------------------------------------------------------------------------------------------------
# Tensors and datasets
# --------------------------------------------------------------------------------------------------

def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) or (N, H, W, 3) → float32 (3, H, W) / (N, 3, H, W) in [−1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(images)).float() / 127.5 - 1.0
    return t.permute(2, 0, 1).contiguous() if t.dim() == 3 else t.permute(0, 3, 1, 2).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (3, H, W) / (N, 3, H, W) in [−1, 1] → uint8 (H, W, 3) / (N, H, W, 3) (clamped, rounded)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return (x.permute(1, 2, 0) if x.dim() == 3 else x.permute(0, 2, 3, 1)).numpy()


def make_batch(specs: Sequence[ShapeSpec], image_size: int = 32, supersample: int = SUPERSAMPLE) -> torch.Tensor:
    """(N, 3, S, S) float tensor in [−1, 1] of the rendered specs."""
    return to_tensor(np.stack([render(s, image_size, supersample) for s in specs]))


def object_masks(specs: Sequence[ShapeSpec], image_size: int = 32, supersample: int = SUPERSAMPLE) -> torch.Tensor:
    """(N, 1, S, S) float32: :func:`shape_alpha` of each spec."""
    return torch.from_numpy(np.stack([shape_alpha(s, image_size, supersample) for s in specs])).float().unsqueeze(1)


def random_batch(n: int, seed: int, image_size: int = 32, constraints: Mapping[str, Any] | None = None
                 ) -> tuple[torch.Tensor, list[ShapeSpec]]:
    """A fresh batch (images, specs) from ``seed`` (training streams use seed = f(run seed, step))."""
    specs = sample_specs(n, seed, constraints)
    return make_batch(specs, image_size), specs


class ShapesDataset(torch.utils.data.Dataset):
    """``n`` shapes drawn from ``seed``; items {"image", "name", "caption", "attributes", "spec"}. Images are
    rendered on first access and cached."""

    def __init__(self, n: int, seed: int, image_size: int = 32, constraints: Mapping[str, Any] | None = None):
        self.n, self.seed, self.image_size = n, seed, image_size
        self.specs = sample_specs(n, seed, constraints)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> torch.Tensor:
        if i not in self._cache:
            self._cache[i] = to_tensor(render(self.specs[i], self.image_size))
        return self._cache[i]

    def __getitem__(self, i: int) -> dict:
        if not -self.n <= i < self.n:
            raise IndexError(i)
        i %= self.n
        spec = self.specs[i]
        return {"image": self.image(i), "name": f"shapes_s{self.seed}_{i:06d}", "caption": caption(spec),
                "attributes": spec.attributes, "spec": dataclasses.asdict(spec)}

    def batch(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        indices = range(self.n) if indices is None else indices
        return torch.stack([self.image(i) for i in indices])


def collate(items: Sequence[dict]) -> dict:
    """DataLoader collate: stacks images, keeps the rest as lists."""
    return {"image": torch.stack([it["image"] for it in items]), "name": [it["name"] for it in items],
            "caption": [it["caption"] for it in items], "attributes": [it["attributes"] for it in items],
            "spec": [it["spec"] for it in items]}


# --------------------------------------------------------------------------------------------------
# The attribute reader
# --------------------------------------------------------------------------------------------------

READER_LIMITS = dict(
    border_tol=0.2,        # a border pixel is background when within this RGB distance ([0, 1] units) of the estimate
    border_frac=0.9,       # … and at least this share of border pixels must be
    bg_palette_tol=0.2,    # the border estimate must lie this close to a background colour
    fg_tol=0.2,            # a pixel is foreground when this far from the background
    min_area=0.5 * SIZES["small"],   # soft foreground area limits (px² at 32×32)
    max_area=2.0 * SIZES["large"],
    color_tol=0.25,        # mean core colour within this distance of a palette colour
    min_purity=0.8,        # share of core pixels whose own nearest palette colour is the chosen one
    min_iou=0.75,          # soft IoU with the best shape template
)


def _as_float_images(images) -> np.ndarray:
    """Any of: uint8 (H,W,3) / (N,H,W,3) arrays, float tensors (3,H,W) / (N,3,H,W) in [−1, 1] → float64 (N,H,W,3)
    in [0, 1]."""
    if isinstance(images, torch.Tensor):
        x = images.detach().float().cpu()
        if x.dim() == 3:
            x = x[None]
        return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).double().numpy()
    if isinstance(images, (list, tuple)):
        return np.concatenate([_as_float_images(im) for im in images]) if images else np.zeros((0, 1, 1, 3))
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    raise TypeError("read_attributes takes uint8 H×W×3 arrays or float tensors in [-1, 1] (N, 3, H, W)")


def _erode(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, constant_values=False)
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, constant_values=False)
    return p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def _blur(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge replication."""
    p = np.pad(a, 1, mode="edge")
    p = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    return (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 4


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-8))


def _nearest(colors: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(colors[..., None, :] - palette, axis=-1)
    return d.argmin(-1), d.min(-1)


def _read_one(img: np.ndarray) -> dict:
    lim = READER_LIMITS
    s = img.shape[0]
    k2 = _scale(s) ** 2
    reasons: list[str] = []
    out: dict[str, Any] = {"shape": None, "color": None, "size": None, "background": None}

    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    bg = np.median(border, axis=0)
    bg_i, bg_d = _nearest(bg, _BG_PALETTE)
    out["background"] = list(BACKGROUNDS)[int(bg_i)]
    border_frac = float((np.linalg.norm(border - bg, axis=-1) < lim["border_tol"]).mean())
    if bg_d > lim["bg_palette_tol"]:
        reasons.append(f"background colour off-palette ({bg_d:.2f})")
    if border_frac < lim["border_frac"]:
        reasons.append(f"border not uniform ({border_frac:.2f})")

    dist = np.linalg.norm(img - bg, axis=-1)
    fg = dist > lim["fg_tol"]
    out.update(area=0.0, cx=None, cy=None, iou=0.0, color_dist=None, purity=0.0, border_frac=border_frac)
    if fg.sum() < 3:
        reasons.append("no foreground")
        return dict(out, valid=False, confidence=0.0, reasons=reasons)

    core = _erode(fg)
    if core.sum() < 4:
        core = fg
    mean = img[core].mean(axis=0)
    c_i, c_d = _nearest(mean, _PALETTE)
    # soft coverage: projection on the background → shape-colour segment, restricted to near the foreground
    axis = mean - bg
    alpha = np.clip(((img - bg) @ axis) / max(float(axis @ axis), 1e-8), 0.0, 1.0) * _dilate(fg)
    # purity: each solid pixel is un-blended from the background (bg + (pixel − bg)/alpha), then snapped
    solid = core & (alpha >= 0.5)
    if solid.sum() < 4:
        solid = core & (alpha > 0)
    unblended = bg + (img[solid] - bg) / np.maximum(alpha[solid], 1e-3)[:, None]
    px_i, _ = _nearest(unblended, _PALETTE)
    purity = float((px_i == c_i).mean())
    out.update(color=list(COLORS)[int(c_i)], color_dist=float(c_d), purity=purity)
    if c_d > lim["color_tol"]:
        reasons.append(f"colour off-palette ({c_d:.2f})")
    if purity < lim["min_purity"]:
        reasons.append(f"more than one colour (purity {purity:.2f})")

    area_px = float(alpha.sum())
    area = area_px / k2
    ys, xs = np.mgrid[0:s, 0:s] + 0.5
    mx, my = float((alpha * xs).sum() / area_px), float((alpha * ys).sum() / area_px)
    out.update(area=area, size="small" if area < SIZE_THRESHOLD else "large")
    if not lim["min_area"] <= area <= lim["max_area"]:
        reasons.append(f"foreground area out of range ({area:.0f} px²)")

    ious = {}
    for shape in SHAPES:
        hh = shape_extent(shape, area_px)[1]
        cy = my - hh / 3 if shape == "triangle" else my  # a triangle's centroid is h/6 below its bbox centre
        tmpl = coverage(shape, mx, cy, area_px, s)
        ious[shape] = max(_soft_iou(alpha, tmpl), _soft_iou(alpha, _blur(tmpl)))  # sharp or slightly blurred
    ranked = sorted(ious, key=ious.get, reverse=True)
    best, second = ranked[0], ranked[1]
    out.update(shape=best, iou=ious[best], cx=mx / _scale(s), cy=my / _scale(s))
    if best == "triangle":
        out["cy"] = (my - shape_extent("triangle", area_px)[1] / 3) / _scale(s)
    if ious[best] < lim["min_iou"]:
        reasons.append(f"not a clean shape (IoU {ious[best]:.2f})")

    shape_margin = (ious[best] - ious[second]) / max(1 - ious[second], 1e-8)
    size_margin = min(1.0, abs(math.log(max(area, 1e-8) / SIZE_THRESHOLD)) / math.log(SIZE_THRESHOLD / SIZES["small"]))
    _, c_d2 = np.sort(np.linalg.norm(_PALETTE - mean, axis=-1))[:2]
    color_margin = float(1 - c_d / max(c_d2, 1e-8))
    out["confidence"] = float(max(0.0, min(shape_margin, size_margin, color_margin, purity)))
    out["valid"] = not reasons
    out["reasons"] = reasons
    return out


def read_attributes(images) -> list[dict]:
    """Read shape / color / size / background from pixels, one dict per image.

    Each dict has the four attributes plus ``valid`` (one clean shape on a clean background: every check passed),
    ``confidence`` (0–1: the smallest margin between the chosen and the runner-up value), ``reasons`` (why not
    valid), and the measurements ``area`` (px² at 32×32), ``cx``, ``cy``, ``iou``, ``color_dist``, ``purity``,
    ``border_frac``. Attributes are always filled in when a foreground exists, even for invalid images.
    """
    return [_read_one(img) for img in _as_float_images(images)]


def attribute_accuracy(read: Sequence[Mapping[str, Any]], truth: Sequence[Mapping[str, str]]) -> dict[str, float]:
    """Share of images whose read attribute equals the truth, per attribute, plus "all" (all four and valid)."""
    n = max(len(truth), 1)
    acc = {k: sum(r[k] == t[k] for r, t in zip(read, truth)) / n for k in ATTRIBUTES}
    acc["all"] = sum(bool(r["valid"]) and all(r[k] == t[k] for k in ATTRIBUTES) for r, t in zip(read, truth)) / n
    return acc


def summarize_reads(read: Sequence[Mapping[str, Any]]) -> dict:
    """Validity share and per-attribute value distribution (over valid reads) of a list of reads."""
    valid = [r for r in read if r["valid"]]
    dist = {k: {v: sum(r[k] == v for r in valid) for v in vocab} for k, vocab in ATTRIBUTES.items()}
    reasons: dict[str, int] = {}
    for r in read:
        for why in r["reasons"]:
            key = why.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return {"n": len(read), "valid": len(valid) / max(len(read), 1), "distribution": dist, "invalid_reasons": reasons}


# --------------------------------------------------------------------------------------------------
# The shipped models
# --------------------------------------------------------------------------------------------------

DDPM_FILE, CLIP_FILE = "ddpm.pt", "clip.pt"


def resource_path(name: str):
    """Traversable of a file under asyrp/resources/worlds/shapes/."""
    return resources.files(RESOURCE_PACKAGE).joinpath(RESOURCE_DIR).joinpath(name)


def _load_resource(name: str, command: str, world_dir=None) -> dict:
    """The shipped file ``name``, or ``world_dir/name`` when a folder of retrained models is given."""
    if world_dir is not None:
        ref = Path(world_dir) / name
        missing = f"{ref} does not exist; `asyrp {command}` writes {name} into its --out folder"
    else:
        ref = resource_path(name)
        missing = (f"the shapes world's {name} is not in the package (asyrp/resources/{RESOURCE_DIR}); "
                   f"run `asyrp {command}` to train it and copy its output there")
    if not ref.is_file():
        raise FileNotFoundError(missing)
    with resources.as_file(ref) as path:
        return torch.load(path, map_location="cpu", weights_only=True)


def ddpm_from_checkpoint(obj: Mapping[str, Any], device: str | torch.device = "cpu"):
    """A DDPMUNet (fp32, eval, frozen) from a saved shapes-world DDPM dict ({"config", "state_dict", ...})."""
    model = DDPMUNet(obj["config"])
    load_backbone_state_dict(model, {k: v.float() for k, v in obj["state_dict"].items()}, source="shapes ddpm")
    return model.eval().requires_grad_(False).to(device)


def load_tiny_ddpm(device: str | torch.device = "cpu", world_dir=None):
    """The shipped tiny DDPM of the shapes world (32×32, linear β schedule, T = 1000, ε-prediction); ``world_dir``:
    a folder holding a retrained ``ddpm.pt`` instead."""
    return ddpm_from_checkpoint(_load_resource(DDPM_FILE, "train-backbone", world_dir), device)


def clip_from_checkpoint(obj: Mapping[str, Any], device: str | torch.device = "cpu"):
    """(OpenClipEncoder, image_size) from a saved shapes-world CLIP dict."""
    cfg = obj["config"]
    model = build_clip(cfg)
    load_clip_state(model, obj)
    encoder = OpenClipEncoder(model.float(), make_tokenizer(cfg), name="shapes-tiny-clip")
    return encoder.to(device), int(cfg["image_size"])


def load_tiny_clip(device: str | torch.device = "cpu", world_dir=None):
    """(encoder, image_size) of the shipped tiny CLIP; use ``CLIPDirection(encoder, ..., image_size=image_size)``.
    ``world_dir``: a folder holding a retrained ``clip.pt`` instead."""
    return clip_from_checkpoint(_load_resource(CLIP_FILE, "train-clip", world_dir), device)
