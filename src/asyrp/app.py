"""``asyrp app``: an editor in the browser — pick an image, one or more directions and a strength each, see the edit.

Why Gradio: its stock components (images, file upload and download, sliders, a progress bar that follows the
samplers' tqdm bars) make the page about 150 lines of Python served on localhost with no front-end build; it is what
diffusion-editing users know (Hugging Face Spaces) and is actively maintained. Optional (``pip install
'asyrp[app]'``), imported only by :func:`build_ui`. The rest is the UI-independent :class:`Editor` the tests call:

* images are uploaded (decoded and resized as ``asyrp edit --data FILE`` does) or sampled from the backbone (as
  ``--data sampled``); each is DDIM-inverted once to the t_0 the chosen directions were trained with, cached by the
  sha256 of its pixels and the inversion settings (steps, t_0), so moving a slider costs only the generation;
* an edit is an :class:`asyrp.pipeline.edit.EditConfig` (weights from ``settings_for``, times from ``edit_times``, the same
  boost noise), so the exported settings JSON reproduces the PNG with ``asyrp edit --config``;
* metrics of the pair: S_dir (original → edit) per direction; in the shapes world, the attribute reader.

The shapes world's direction (``resources/worlds/shapes/directions/color_red_blue.pt``, 0.3 MB) is the demo's
red → blue: ``asyrp demo --out demo_out``, then copy ``demo_out/train/delta.pt``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from asyrp import config as C
from asyrp import diffusion as D
from asyrp import sampling
from asyrp.io import weights as registry
from asyrp.attributes import attribute_table
from asyrp.backbones import BACKBONES, TINY_WORLDS, load_backbone, load_clip_model
from asyrp.clip_loss import CLIPDirection
from asyrp.errors import UserError
from asyrp.io.datasets import open_images
from asyrp.pipeline.edit import EditConfig, edit_times, load_direction, settings_for
from asyrp.pipeline.inversion import sampled_noise
from asyrp.io.files import atomic_json, default_device
from asyrp.models.delta import load_delta_block
from asyrp.plots import save_png, to_uint8
from asyrp.worlds import shapes

SHAPES_DIRECTION = "directions/color_red_blue.pt"   # under the shapes world's resources
STRIP_STRENGTHS = (-2.0, -1.0, 0.0, 1.0, 2.0)
DISPLAY_SIZE = 256                                  # tiny images are shown enlarged (nearest neighbour)
SLOTS = 3                                           # directions combined at once in the UI
CACHE_SIZE = 128                                    # inversions and reconstructions kept in memory
# backbone -> the dataset category in the file names of its released directions (asyrp-<attribute>)
RELEASED = {"celeba-hq": "CelebA_HQ", "lsun-church": "church_outdoor", "lsun-bedroom": "bedroom"}
EXAMPLES = {"red circle": ("circle", "red", "large", "white"),     # shapes-world images to choose from
            "red square on black": ("square", "red", "large", "black"),
            "small red triangle on gray": ("triangle", "red", "small", "gray"),
            "green circle": ("circle", "green", "large", "white")}


class AppError(UserError):
    """Bad input in the app: shown as a one-line message, and the app keeps working."""


@dataclass
class Picture:
    """An image to edit: pixels, cache key, and ``source``: how ``asyrp edit`` finds it (EditConfig fields)."""
    x0: torch.Tensor
    key: str
    name: str
    source: dict
    x_T: torch.Tensor | None = None  # sampled images: their noise (no inversion needed)


@dataclass
class Result:
    edited: torch.Tensor
    reconstruction: torch.Tensor
    config: EditConfig
    metrics: dict


class Editor:
    """One backbone, its directions, cached inversions; every method is what one control of the app does."""

    def __init__(self, backbone: str = "shapes", n_steps: int = 20, weights_dir: str | None = None,
                 device: str | None = None, progress: bool = False):
        self.device = default_device(device)
        self.weights_dir, self.n_steps, self.progress = weights_dir, n_steps, progress
        try:
            self.backbone = load_backbone(backbone, weights_dir=weights_dir, device=self.device)
        except registry.MissingWeightsError as e:
            raise AppError(f"backbone {backbone}: {e}") from None
        self.unet, self.alphas = self.backbone.unet, D.alphas_cumprod(D.linear_betas()).to(self.device)
        self.directions, self.texts = {}, {}  # label -> asyrp.pipeline.edit.Direction; label -> (src, trg text) or None
        self.pictures, self._cache = {}, OrderedDict()  # pixel key -> Picture; see _cached
        self._clip, self._clip_lock = None, threading.Lock()
        if backbone == "shapes":
            with resources.as_file(shapes.resource_path(SHAPES_DIRECTION)) as path:
                self.add_direction(str(path), label="red → blue (shipped)")
        for name in released_directions(backbone, weights_dir):
            self.add_direction(name)

    # ------------------------------------------------------------------ directions
    def add_direction(self, spec: str, label: str | None = None) -> str:
        """Load a direction (checkpoint file, run folder holding delta.pt, or a released ``asyrp-<attr>``) for this
        backbone; returns its label. Directions of another backbone are refused with the reason."""
        spec = spec.strip()
        path = Path(spec).expanduser()
        if path.is_dir():
            path = path / "delta.pt"
            if not path.is_file():
                raise AppError(f"{spec}: a folder without delta.pt; give a training run folder or a checkpoint file")
        spec = str(path) if path.exists() else spec
        try:
            cfg = EditConfig(n_test_step=self.n_steps, device=str(self.device))
            direction = load_direction(spec, self.backbone, cfg, self.weights_dir)
        except (ValueError, OSError) as e:  # CheckpointError, MissingWeightsError, UserError are ValueErrors
            raise AppError(" ".join(str(e).split())) from None
        _, meta = load_delta_block(direction.path, return_meta=True)
        texts = (meta["src"], meta["trg"]) if meta.get("src") and meta.get("trg") else None
        if texts is None and direction.attribute:
            entry = attribute_table().get(direction.attribute)
            texts = (entry.src, entry.trg) if entry else None
        label = label or (f"{direction.attribute}: {texts[0]} → {texts[1]}" if texts and direction.attribute
                          else Path(direction.path).stem)
        self.directions[label], self.texts[label] = direction, texts
        return label

    # ------------------------------------------------------------------ images
    def load_image(self, path: str | os.PathLike) -> Picture:
        """An uploaded file, decoded, centre-cropped and resized exactly as ``asyrp edit --data FILE`` does."""
        try:
            item = open_images(Path(path), self.unet.image_size)[0]
        except (ValueError, OSError) as e:
            raise AppError(f"{Path(path).name} is not an image this app can read ({' '.join(str(e).split())[:160]});"
                           " upload a PNG, JPEG or WebP") from None
        return self._keep(Picture(item["image"], _pixel_key(item["image"]), item["name"],
                                  {"data": str(Path(path).resolve())}))

    def sample_image(self, seed: int = 0, index: int = 0) -> Picture:
        """Image ``index`` sampled from the backbone with ``seed`` (deterministic DDIM, as ``--data sampled``)."""
        shape = (self.unet.config["in_channels"], self.unet.image_size, self.unet.image_size)
        x_T = sampled_noise(seed, [index], shape).to(self.device)
        x0 = sampling.sample(self.unet, x_T, self.alphas, self.n_steps, progress=self.progress)[0].cpu()
        return self._keep(Picture(x0, _pixel_key(x0), f"sample_s{seed}_{index:05d}",
                                  {"data": "sampled", "sample_seed": seed, "image_start": index}, x_T[0].cpu()))

    def _keep(self, picture: Picture) -> Picture:
        self.pictures[picture.key] = picture
        return picture

    def invert(self, picture: Picture, t_0: int = D.T_0) -> torch.Tensor:
        """x_{t_0} of the picture: DDIM inversion once per (pixels, backbone, steps, t_0), then from the cache. A
        sampled picture's own noise is its x_999; for another t_0 its pixels are inverted like an upload's."""
        if picture.x_T is not None and t_0 == D.T_0:
            return picture.x_T[None].to(self.device)
        return self._cached(("inversion", picture.key, self.backbone.fingerprint, self.n_steps, t_0),
                            lambda: sampling.invert(self.unet, picture.x0[None].to(self.device), self.alphas,
                                                    self.n_steps, t_0, progress=self.progress))

    def reconstruct(self, picture: Picture, t_boost: int | None, seed: int = 0, t_0: int = D.T_0) -> torch.Tensor:
        """The reverse process from x_{t_0} without Δh (what strength 0 gives), with the edit's boost; cached."""
        return self._cached(("reconstruction", picture.key, self.backbone.fingerprint, self.n_steps, t_0, t_boost,
                             seed),
                            lambda: sampling.generate(self.unet, self.invert(picture, t_0), self.alphas, self.n_steps,
                                                      t_0, t_boost=t_boost, progress=self.progress,
                                                      noise_generators=sampling.image_generators(seed, [0])))

    def _cached(self, key: tuple, compute) -> torch.Tensor:
        """An LRU of the last CACHE_SIZE inversions and reconstructions (pixels' sha256 and settings as key)."""
        if key not in self._cache:
            self._cache[key] = compute()
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    # ------------------------------------------------------------------ editing
    def config(self, picture: Picture, choices: list[tuple[str, float]]) -> EditConfig:
        """The EditConfig of this edit: one direction → its strength; several → strength 1 and one coefficient per
        direction (its strength), so ``asyrp edit`` computes the same weights."""
        if not choices:
            raise AppError("choose at least one direction")
        for label, _ in choices:
            if label not in self.directions:
                raise AppError(f"unknown direction {label!r}; add it first (a checkpoint path or run folder)")
        single = len(choices) == 1
        return EditConfig(directions=[self.directions[label].path for label, _ in choices],
                          coefficients=None if single else [float(s) for _, s in choices],
                          strengths=[float(choices[0][1]) if single else 1.0], backbone=self.backbone.name,
                          n_images=1, n_inv_step=self.n_steps, n_test_step=self.n_steps, batch_size=1,
                          **picture.source)

    def generate(self, picture: Picture, choices: list[tuple[str, float]]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      EditConfig]:
        """(edited, reconstruction, config): the reverse process from the cached x_T with and without Δh."""
        cfg = self.config(picture, choices)
        directions = [self.directions[label] for label, _ in choices]
        t_0, t_edit, t_boost = edit_times(cfg, directions, self.backbone, self.weights_dir, self.device)
        cfg.t_0, cfg.t_edit, cfg.t_boost = t_0, t_edit, t_boost
        weights = settings_for(cfg, directions)[0]["weights"]
        recon = self.reconstruct(picture, t_boost, cfg.seed, t_0)
        edited = sampling.generate(self.unet, self.invert(picture, t_0), self.alphas, self.n_steps, t_0,
                                   t_boost=t_boost, delta=sampling.DeltaSum([d.block for d in directions], weights),
                                   t_edit=t_edit, c0=cfg.c0, noise_generators=sampling.image_generators(cfg.seed, [0]),
                                   progress=self.progress)
        return edited[0].cpu(), recon[0].cpu(), cfg

    def edit(self, picture: Picture, choices: list[tuple[str, float]]) -> Result:
        """The edit of ``picture`` with (direction label, strength) ``choices``, its reconstruction and metrics."""
        edited, recon, cfg = self.generate(picture, choices)
        return Result(edited, recon, cfg, self.metrics(picture.x0, edited, [label for label, _ in choices]))

    def strip(self, picture: Picture, choices: list[tuple[str, float]],
              strengths=STRIP_STRENGTHS) -> np.ndarray:
        """The sweep of the first direction's strength (the others as chosen), one labelled tile per strength."""
        tiles = [self.generate(picture, [(choices[0][0], s)] + list(choices[1:]))[0] for s in strengths]
        return labelled_strip(tiles, [f"{s:+g}" for s in strengths])

    def metrics(self, original: torch.Tensor, edited: torch.Tensor, labels: list[str]) -> dict:
        """S_dir (original → edit) per direction with texts, and the shapes world's reading of both images."""
        out: dict = {"s_dir": {}}
        wanted = [label for label in labels if self.texts.get(label)]
        if wanted:
            try:
                clip, size = self.clip()
            except (ValueError, OSError) as e:
                out["s_dir_error"] = " ".join(str(e).split())
            else:
                for label in wanted:
                    direction = CLIPDirection(clip, *self.texts[label], templates=None, image_size=size).to(self.device)
                    out["s_dir"][label] = round(float(direction.similarity(original[None].to(self.device),
                                                                           edited[None].to(self.device))[0]), 4)
        if self.backbone.name == "shapes":
            reads = shapes.read_attributes(torch.stack([original, edited]))
            out["attributes"] = {name: {k: r[k] for k in (*shapes.ATTRIBUTES, "valid")}
                                 for name, r in zip(("original", "edited"), reads)}
        return out

    def clip(self):
        """The CLIP of this backbone for S_dir (the tiny CLIP in the shapes world), loaded once."""
        with self._clip_lock:  # the app warms it up in a thread while the first image is edited
            if self._clip is None:
                self._clip = load_clip_model(self.backbone.default_clip, weights_dir=self.weights_dir,
                                             device=self.device)
        return self._clip

    def export(self, picture: Picture, result: Result, folder: str | os.PathLike) -> list[Path]:
        """edited PNG, settings JSON (``asyrp edit --config``) and, for uploads, the original it points to."""
        folder = Path(folder)
        digest = hashlib.sha256(json.dumps(C.to_dict(result.config), sort_keys=True).encode()).hexdigest()
        stem = f"{picture.name}_{digest[:8]}"  # one file name per image and settings
        files = [save_png(folder / f"{stem}_edited.png", result.edited)]
        cfg = result.config
        if cfg.data != "sampled":
            original = save_png(folder / f"{picture.name}.png", picture.x0)
            cfg = EditConfig(**{**C.to_dict(cfg), "data": original.name})  # run asyrp edit beside the downloads
            files.append(original)
        settings = {k: v for k, v in C.to_dict(cfg).items() if k != "device"}
        atomic_json(folder / f"{stem}_settings.json", settings)
        return [files[0], folder / f"{stem}_settings.json", *files[1:]]


def released_directions(backbone: str, weights_dir: str | None = None) -> list[str]:
    """The released directions of ``backbone`` already on this machine (the weights folders; nothing downloads)."""
    category = RELEASED.get(backbone)
    return [name for name in registry.direction_names()
            if category and f"_LC_{category}_" in registry.get_spec(name).filename
            and registry.locate(name, weights_dir)]


def _pixel_key(x0: torch.Tensor) -> str:
    """The cache key of an image: sha256 of its float32 pixels (the same picture under any file name)."""
    return hashlib.sha256(x0.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def write_examples(folder: Path) -> dict[str, Path]:
    """The shapes-world images of :data:`EXAMPLES` as PNG files, to be loaded like uploads."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, attributes in EXAMPLES.items():
        paths[name] = folder / f"{name.replace(' ', '_')}.png"
        Image.fromarray(shapes.render(shapes.ShapeSpec(*attributes))).save(paths[name])
    return paths


def display(image: torch.Tensor, size: int = DISPLAY_SIZE) -> Image.Image:
    """A [−1, 1] tensor as a PIL image, enlarged with nearest neighbour to ``size`` px when smaller."""
    pil = Image.fromarray(to_uint8(image))
    return pil.resize((size, size), Image.Resampling.NEAREST) if pil.width < size else pil


def labelled_strip(tiles: list[torch.Tensor], labels: list[str], size: int = 128) -> np.ndarray:
    """Tiles side by side, each with its label underneath (strengths of a sweep)."""
    pad, text_h = 4, 18
    strip = Image.new("RGB", (len(tiles) * (size + pad) + pad, size + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(strip)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        x = pad + i * (size + pad)
        strip.paste(display(tile, size).resize((size, size), Image.Resampling.NEAREST), (x, pad))
        draw.text((x + size // 2, pad + size + 3), f"s = {label}", fill="black", anchor="ma")
    return np.asarray(strip)


def parse_choices(labels, strengths) -> list[tuple[str, float]]:
    """(direction, strength) pairs of the filled slots, in order."""
    return [(label, float(s)) for label, s in zip(labels, strengths) if label]


# --------------------------------------------------------------------------------------------------
# The web page
# --------------------------------------------------------------------------------------------------

def build_ui(editors: dict, start: str, export_root: Path, notice: str = "", make=Editor):
    """The Gradio Blocks page over ``editors`` (backbone name → Editor; ``make(name)`` adds one when the user
    switches backbone)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the app is offline and local
    try:
        import gradio as gr  # optional dependency (asyrp[app]); heavy, so imported only when the app runs
    except ImportError:
        raise UserError("asyrp app needs Gradio: pip install 'asyrp[app]'") from None

    def fail(e: Exception):
        gr.Warning(str(e))
        return f"⚠ {e}"

    def editor(name: str) -> Editor:
        if name not in editors:
            editors[name] = make(name)
        return editors[name]

    # explicit slot parameters (SLOTS = 3): Gradio injects the progress tracker only into a plain signature
    def run_edit(name, key, strip_on, d1, d2, d3, s1, s2, s3, progress=gr.Progress(track_tqdm=True)):
        ed, slots = editor(name), (d1, d2, d3, s1, s2, s3)
        if not key or key not in ed.pictures:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), "Upload or sample an image first."
        try:
            picture, choices = ed.pictures[key], parse_choices(slots[:SLOTS], slots[SLOTS:])
            result = ed.edit(picture, choices)
            files = ed.export(picture, result, tempfile.mkdtemp(dir=export_root))
            strip = ed.strip(picture, choices) if strip_on else None
        except UserError as e:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), fail(e)
        return (display(result.reconstruction), display(result.edited), strip, metrics_markdown(result.metrics),
                [str(f) for f in files], "Edited: " + ", ".join(f"{label} at {s:+g}" for label, s in choices))

    def picked(name, picture_fn):
        try:
            picture = picture_fn(editor(name))
        except UserError as e:
            return gr.skip(), gr.skip(), fail(e)
        return display(picture.x0), picture.key, f"Loaded {picture.name}; inverting and editing…"

    def switch(name, current):
        try:
            labels = list(editor(name).directions)
        except UserError as e:
            return (gr.update(value=current), current) + (gr.skip(),) * SLOTS + (fail(e),)
        slots = [gr.update(choices=[""] + labels, value=labels[0] if i == 0 and labels else "") for i in range(SLOTS)]
        return (gr.update(), name, *slots, f"Backbone {name}: {len(labels)} direction(s). Upload or sample an image.")

    def add(name, spec):
        try:
            label = editor(name).add_direction(spec)
        except UserError as e:
            return (gr.skip(),) * SLOTS + (fail(e),)
        labels = [""] + list(editor(name).directions)
        return tuple(gr.update(choices=labels) for _ in range(SLOTS)) + (f"Added direction {label}.",)

    labels, examples = list(editors[start].directions), write_examples(export_root / "examples")
    with gr.Blocks(title="asyrp editor") as page:
        gr.Markdown("## Asyrp: editing in the h-space of a frozen diffusion model")
        status = gr.Markdown(notice or "Upload an image or sample one, then choose directions and strengths.",
                             elem_id="status")
        key, current = gr.State(""), gr.State(start)
        with gr.Row():
            with gr.Column():
                backbone = gr.Dropdown([*TINY_WORLDS, *BACKBONES], value=start, label="Backbone")
                upload = gr.File(label="Upload an image", file_types=["image"], elem_id="upload")
                example = gr.Dropdown(["", *examples], value="", label="… or choose one (shapes world)")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="Sample seed")
                    sample = gr.Button("Sample from the backbone")
                slots_dir, slots_s = [], []
                for i in range(SLOTS):
                    with gr.Row():
                        slots_dir.append(gr.Dropdown([""] + labels, value=labels[0] if i == 0 and labels else "",
                                                     label=f"Direction {i + 1}"))
                        slots_s.append(gr.Slider(-2, 2, value=1.0 if i == 0 else 0.0, step=0.1,
                                                 label=f"Strength {i + 1}", elem_id=f"strength{i + 1}"))
                with gr.Row():
                    spec = gr.Textbox(label="Add a direction", placeholder="runs/smiling/delta.pt, a run folder or "
                                      "asyrp-smiling", elem_id="add_spec")
                    add_btn = gr.Button("Add", elem_id="add_direction")
                strip_on = gr.Checkbox(False, label="Show the strength sweep of direction 1 (−2 … 2)",
                                       elem_id="sweep")
            with gr.Column():
                with gr.Row():
                    original = gr.Image(label="Original", elem_id="original", interactive=False)
                    recon = gr.Image(label="DDIM reconstruction", elem_id="reconstruction", interactive=False)
                    edited = gr.Image(label="Edit", elem_id="edited", interactive=False)
                strip = gr.Image(label="Strength sweep", elem_id="strip", interactive=False)
                metrics = gr.Markdown(elem_id="metrics")
                files = gr.File(label="Download: edited PNG, settings JSON and original; beside them, "
                                "asyrp edit --config NAME_settings.json --out OUT makes the same PNG",
                                file_count="multiple", interactive=False)
        edit_in = [backbone, key, strip_on, *slots_dir, *slots_s]
        edit_out = [recon, edited, strip, metrics, files, status]
        upload.upload(lambda name, f: picked(name, lambda ed: ed.load_image(f)), [backbone, upload],
                      [original, key, status]).then(run_edit, edit_in, edit_out)
        example.input(lambda name, choice: picked(name, lambda ed: ed.load_image(examples[choice])) if choice
                      else (gr.skip(), gr.skip(), gr.skip()), [backbone, example],
                      [original, key, status]).then(run_edit, edit_in, edit_out)
        sample.click(lambda name, s: picked(name, lambda ed: ed.sample_image(int(s or 0))), [backbone, seed],
                     [original, key, status]).then(run_edit, edit_in, edit_out)
        for control in (*slots_s, *slots_dir, strip_on):
            control.change(run_edit, edit_in, edit_out, trigger_mode="always_last")
        backbone.input(switch, [backbone, current], [backbone, current, *slots_dir, status])
        add_btn.click(add, [backbone, spec], [*slots_dir, status])
    return page


def metrics_markdown(m: dict) -> str:
    """:meth:`Editor.metrics` for the page: S_dir per direction, the reader's table of both images."""
    lines = [f"S_dir (original → edit) for **{label}**: {v:+.3f}" for label, v in m["s_dir"].items()]
    if m.get("s_dir_error"):
        lines.append(f"S_dir unavailable: {m['s_dir_error']}")
    if "attributes" in m:
        rows = [["reader", *m["attributes"]["original"]], ["---"] * (len(m["attributes"]["original"]) + 1)]
        rows += [[name, *map(str, m["attributes"][key].values())] for name, key in (("original", "original"),
                                                                                   ("edit", "edited"))]
        lines += [""] + ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------------

def first_editor(args: argparse.Namespace) -> tuple[Editor, str]:
    """The editor of ``--backbone`` with the ``--direction`` s and a notice for the page: the shapes world, with the
    reason, when the backbone's weights are missing (offline); a direction that does not load is left out, with its."""
    notice = ""
    try:
        editor = Editor(args.backbone, args.n_steps, args.weights_dir, args.device, progress=True)
    except AppError as e:
        notice = f"⚠ {e} — showing the shapes world instead."
        editor = Editor("shapes", args.n_steps, None, args.device, progress=True)
    for spec in args.direction:
        try:
            editor.add_direction(spec)
        except AppError as e:
            notice += f"\n\n⚠ direction {spec}: {e}"
    return editor, notice.strip()


def start(args: argparse.Namespace, block: bool = True):
    """Load the backbone (:func:`first_editor`), build the page, serve it; the Gradio app when ``block`` is False."""
    torch.set_num_threads(args.threads)
    editor, notice = first_editor(args)
    export_root = Path(tempfile.mkdtemp(prefix="asyrp_app_"))
    page = build_ui({editor.backbone.name: editor}, editor.backbone.name, export_root, notice,
                    make=lambda name: Editor(name, args.n_steps, args.weights_dir, args.device, progress=True))
    page.queue(default_concurrency_limit=1)  # one generation at a time: the CPU is the bottleneck
    page.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=not block, ssr_mode=False,
                allowed_paths=[str(export_root)], quiet=not block, footer_links=[])
    threading.Thread(target=_warm_clip, args=(editor,), daemon=True).start()
    return page


def _warm_clip(editor: Editor) -> None:
    """Load the CLIP for S_dir in the background (seconds), so that the first edit does not wait for it; a failure
    is reported with the first edit's metrics instead."""
    with contextlib.suppress(ValueError, OSError):
        editor.clip()
