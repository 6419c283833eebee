"""The report's figures, regenerated from saved runs (``asyrp figures``).

Every function takes explicit inputs (edit folders, log files, results JSONs) and an output path, writes a PNG
there plus a sidecar ``<name>.json`` (function, inputs, command, layout), and returns the PNG's path. Image grids are
composed pixel-exactly with numpy + PIL (each image upscaled by an integer factor, nearest neighbour, so a tile is
the image itself); line plots use matplotlib's object API on the Agg canvas (no pyplot state, no backend switch).

Figure functions:

``editing_grid``       rows = images; columns = original, reconstructed, one per attribute
``linearity_sweep``    one image: original, then the edited_s* folders from −1 to 1 (the 0 column labelled)
``steps_comparison``   rows = original, edit A, edit B (e.g. 40 vs 1000 generation steps); columns = images
``ablation_grid``      rows × columns = two tags of a family (heads × epochs, kind × epochs, strength × heads)
``loss_curves``        a training term (log.jsonl) against the optimiser step, or per image batch
``metric_vs_strength`` S_dir (± std) and FID against the edit strength, N in the legend

``asyrp figures --results R.json --out figures/`` makes every figure the results support (:func:`plan_figures`):

===================================== =============================================================================
``reproduction/in_domain.png``        editing grid of the in-domain attributes (strength 1, or the largest);
                                      ``…_s0.50.png`` at strength 0.5, ``…_retrained[_s0.50].png`` for the
                                      retrained directions when the family also holds released ones
``reproduction/unseen_domain.png``    editing grid of the unseen-domain attributes (pixar, neanderthal, …), same
                                      variants
``reproduction/linearity.png``        strength sweep of one image (the run with most strengths; smiling first)
``reproduction/details.png``          fewest vs most generation steps of one attribute
``reproduction/metric_vs_strength.png``  S_dir and FID against strength
``ablation/heads_vs_epochs.png``      rows = epoch, columns = heads (other varied tags fixed, see the sidecar)
``ablation/layer_types.png``          rows = epoch (or strength), columns = kind of delta block
``ablation/strength_vs_heads.png``    rows = strength, columns = heads
``ablation/grid_<family>.png``        the first two varied tags, for a family none of the above fits
``ablation/metric_vs_strength_<family>.png``
``<section>/loss_curves_<family>.png``  one curve per training run of the family
``shapes/editing_grid.png``, ``shapes/linearity.png``, ``shapes/details.png``, ``shapes/metric_vs_strength.png``
                                      the same for a family of the offline shapes world (and ``shapes/…`` ablation
                                      names for shapes ablations)
===================================== =============================================================================

A family is a "reproduction" when only the attribute, strength, step count or official-ness vary between its runs
(tags that these determine, such as the texts or t_edit of an attribute, do not count), a "shapes" family when its name, config or tags say so, and an "ablation" otherwise. When two families would write
the same file, the later one gets ``_<family>`` appended.
"""

from __future__ import annotations

import argparse
import datetime
import math
import re
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from asyrp.cli import UserError
from asyrp.io import atomic_json, atomic_path, read_jsonl
from asyrp.report import (Entry, as_results, collect_results, entries, family_style, format_tag, load_results, slug,
                          validate_results, value_sort_key, varied_tags)

# Attributes that leave the training domain of a face model (the paper's "unseen domain" edits).
UNSEEN_DOMAIN = frozenset({"pixar", "neanderthal", "modigliani", "frida", "nicolas", "gogh", "sketch", "watercolor",
                           "elf", "super_saiyan", "zombie", "jocker", "goblin", "zuckerberg", "benedict"})
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_TILE = 96       # small images (16-32 px worlds) are upscaled by an integer factor to at least this
PAD = 4
FONT_SIZE = 13


# --------------------------------------------------------------------------------------------------
# Image grids with labels (pixel-exact)
# --------------------------------------------------------------------------------------------------

def _font(size: int = FONT_SIZE):
    """matplotlib's bundled DejaVu Sans (always installed with it); PIL's bitmap font as a fallback."""
    try:
        import matplotlib
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _fit(text: str, font, width: int, max_lines: int) -> list[str]:
    """Wrap into at most ``max_lines`` lines of ``width`` px: at spaces, after "=" (tag=value), and inside a word
    wider than a line (e.g. a file name); text beyond the last line is cut with …"""
    pieces: list[tuple[str, str]] = []  # (separator before the piece, piece)
    for word in str(text).split():
        for k, part in enumerate(p for p in re.split(r"(?<==)", word) if p):
            sep = (" " if pieces else "") if k == 0 else ""
            while font.getlength(part) > width and len(part) > 1:
                n = 1
                while n < len(part) and font.getlength(part[:n + 1]) <= width:
                    n += 1
                pieces.append((sep, part[:n]))
                part, sep = part[n:], ""
            pieces.append((sep, part))
    lines: list[str] = []
    for sep, piece in pieces:
        if lines and font.getlength(lines[-1] + sep + piece) <= width:
            lines[-1] += sep + piece
        else:
            lines.append(piece)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        while len(lines[-1]) > 1 and font.getlength(lines[-1] + "…") > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "…"
    return lines


def load_image(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _upscale(img: np.ndarray, scale: int) -> np.ndarray:
    return img if scale == 1 else np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def compose(cells: Sequence[Sequence[np.ndarray | None]], col_labels: Sequence[str] | None = None,
            row_labels: Sequence[str] | None = None, min_tile: int = MIN_TILE, pad: int = PAD,
            font_size: int = FONT_SIZE) -> tuple[np.ndarray, dict]:
    """Rows of uint8 H×W×3 images (None: an empty grey tile) → (canvas, layout).

    Every image is resized to the first image's size if needed, then upscaled by ``scale = ceil(min_tile / max(H,
    W))`` (nearest). Tile (r, c) starts at x = label_width + pad + c·(tile_w + pad), y = header + pad + r·(tile_h +
    pad); the canvas is label_width + pad + cols·(tile_w + pad) wide and header + pad + rows·(tile_h + pad) high.
    """
    first = next((im for row in cells for im in row if im is not None), None)
    if first is None:
        raise ValueError("no image to show")
    h, w = first.shape[:2]
    scale = max(1, math.ceil(min_tile / max(h, w)))
    th, tw = h * scale, w * scale
    rows, cols = len(cells), max(len(r) for r in cells)
    font = _font(font_size)
    line_h = font_size + 3
    col_lines = [_fit(t, font, tw, 2) for t in col_labels] if col_labels else []
    header = (max((len(x) for x in col_lines), default=0) * line_h + pad) if col_labels else 0
    label_w = 0
    row_lines = []
    if row_labels:
        text_w = math.ceil(min(max(font.getlength(t) for t in row_labels), max(tw, 150)))
        row_lines = [_fit(t, font, text_w, max(1, th // line_h)) for t in row_labels]
        label_w = text_w + 2 * pad
    width, height = label_w + pad + cols * (tw + pad), header + pad + rows * (th + pad)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(cells):
        y = header + pad + r * (th + pad)
        for c, im in enumerate(row):
            x = label_w + pad + c * (tw + pad)
            if im is None:
                draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=(225, 225, 225))
                draw.text((x + tw // 2, y + th // 2), "n/a", fill=(90, 90, 90), font=font, anchor="mm")
                continue
            if im.shape[:2] != (h, w):
                im = np.asarray(Image.fromarray(im).resize((w, h), Image.BICUBIC))
            canvas.paste(Image.fromarray(_upscale(im, scale)), (x, y))
        if row_lines:
            lines = row_lines[r]
            y0 = y + th // 2 - len(lines) * line_h // 2
            for k, line in enumerate(lines):
                draw.text((pad, y0 + k * line_h), line, fill=(0, 0, 0), font=font)
    for c, lines in enumerate(col_lines):
        x = label_w + pad + c * (tw + pad) + tw // 2
        y0 = header - len(lines) * line_h
        for k, line in enumerate(lines):
            draw.text((x, y0 + k * line_h), line, fill=(0, 0, 0), font=font, anchor="ma")
    layout = {"rows": rows, "cols": cols, "image_size": [h, w], "scale": scale, "tile": [th, tw], "pad": pad,
              "header": header, "label_width": label_w, "size": [height, width],
              "col_labels": list(col_labels or []), "row_labels": list(row_labels or [])}
    return np.asarray(canvas), layout


def tile_box(layout: Mapping, r: int, c: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of tile (r, c) in a composed grid."""
    th, tw = layout["tile"]
    top = layout["header"] + layout["pad"] + r * (th + layout["pad"])
    left = layout["label_width"] + layout["pad"] + c * (tw + layout["pad"])
    return top, left, top + th, left + tw


def _sidecar(out: Path, function: str, inputs: Mapping, command: str | None, **extra) -> None:
    """``<name>.json`` beside the figure: what made it, from what."""
    from asyrp import __version__
    atomic_json(out.with_suffix(".json"), {
        "figure": out.name, "function": f"asyrp.figures.{function}", "inputs": _jsonable(inputs),
        "command": command or f"asyrp.figures.{function}(...)", "asyrp_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **_jsonable(extra)})


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _save_grid(out, images, col_labels, row_labels, function, inputs, command, **extra) -> Path:
    out = Path(out)
    canvas, layout = compose(images, col_labels, row_labels)
    with atomic_path(out) as tmp:  # PIL directly: asyrp.plots would import torch just for this
        Image.fromarray(canvas).save(tmp, format="PNG")
    _sidecar(out, function, inputs, command, layout=layout, **extra)
    return out


# --------------------------------------------------------------------------------------------------
# Edit folders
# --------------------------------------------------------------------------------------------------

def _edit_record(edit_dir: Path) -> dict:
    import json
    path = Path(edit_dir) / "edit.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def image_names(folder: str | Path) -> list[str]:
    """File names (sorted) of the images in a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found")
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def image_path(folder: str | Path, image: str) -> Path:
    """``folder/image`` where image is a file name or a stem."""
    folder = Path(folder)
    candidates = [folder / image] + [folder / f"{image}{s}" for s in IMAGE_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    names = image_names(folder) if folder.is_dir() else []
    hint = f" (it has {', '.join(names[:4])}{'…' if len(names) > 4 else ''})" if names else ""
    raise FileNotFoundError(f"no image {image!r} in {folder}{hint}")


def strength_folders(edit_dir: str | Path) -> list[tuple[float, str]]:
    """[(strength, folder)] of an edit run's strength settings, sorted by strength (interpolations left out)."""
    edit_dir = Path(edit_dir)
    record = _edit_record(edit_dir)
    out = []
    for s in record.get("settings", []):
        if "alpha" not in s and isinstance(s.get("strength"), (int, float)) and (edit_dir / s["folder"]).is_dir():
            out.append((float(s["strength"]), s["folder"]))
    if not record:  # no edit.json: the folder names say it
        for p in edit_dir.glob("edited_s*"):
            m = re.fullmatch(r"edited_s([+-]?\d+(?:\.\d+)?)", p.name)
            if m and p.is_dir():
                out.append((float(m.group(1)), p.name))
    return sorted(out)


def pick_folder(edit_dir: str | Path, strength: float | None = None) -> str:
    """The edited folder to show: the one of ``strength``; by default ``edited/``, else strength 1, else the largest."""
    edit_dir = Path(edit_dir)
    sweep = strength_folders(edit_dir)
    if strength is not None:
        for s, folder in sweep:
            if abs(s - strength) < 1e-9:
                return folder
        if (edit_dir / "edited").is_dir() and abs(strength - 1.0) < 1e-9 and not sweep:
            return "edited"
        raise FileNotFoundError(f"{edit_dir} has no edit at strength {strength:+.2f} "
                                f"(it has {', '.join(f'{s:+.2f}' for s, _ in sweep) or 'none'})")
    if (edit_dir / "edited").is_dir():
        return "edited"
    if not sweep:
        raise FileNotFoundError(f"{edit_dir} holds no edited folder (edited/ or edited_s*/)")
    return next((f for s, f in sweep if abs(s - 1.0) < 1e-9), sweep[-1][1])


def _default_images(edit_dirs: Iterable[Path], k: int) -> list[str]:
    """The first k image names that every folder's original/ has."""
    common = None
    for d in edit_dirs:
        names = set(image_names(Path(d) / "original"))
        common = names if common is None else common & names
    if not common:
        raise FileNotFoundError("the edit folders share no image name in original/")
    return sorted(common)[:k]


# --------------------------------------------------------------------------------------------------
# Figure functions
# --------------------------------------------------------------------------------------------------

def editing_grid(edit_dirs_by_attribute: Mapping[str, str | Path], images: Sequence[str] | None, out: str | Path, *,
                 strength: float | None = None, reconstructed: bool = True, command: str | None = None) -> Path:
    """Rows = images; columns = original, reconstructed (both from the first folder), one edit per attribute.

    The folders must have edited the same images (matched by file name). ``images`` None: the first three shared
    names. ``strength`` picks the edited folder of a sweep (default: ``edited/``, else strength 1, else the largest).
    """
    dirs = {str(a): Path(d) for a, d in edit_dirs_by_attribute.items()}
    if not dirs:
        raise ValueError("editing_grid needs at least one edit folder")
    images = list(images) if images else _default_images(dirs.values(), 3)
    first = next(iter(dirs.values()))
    folders = {a: pick_folder(d, strength) for a, d in dirs.items()}
    cols = ["original"] + (["reconstructed"] if reconstructed else []) + list(dirs)
    cells = []
    for name in images:
        row = [load_image(image_path(first / "original", name))]
        if reconstructed:
            row.append(load_image(image_path(first / "reconstructed", name)))
        row += [load_image(image_path(d / folders[a], name)) for a, d in dirs.items()]
        cells.append(row)
    return _save_grid(out, cells, cols, None, "editing_grid",
                      {"edit_dirs": {a: str(d) for a, d in dirs.items()}, "images": images, "strength": strength},
                      command, edited_folders=folders)


def linearity_sweep(edit_dir: str | Path, image: str | None, out: str | Path, *, command: str | None = None) -> Path:
    """One row: the original, then the edits at every strength of the sweep from the most negative to the most
    positive. Strength 0 (no Δh: the reconstruction's sampler) is labelled as such; without an s=0 folder the
    reconstruction stands in its place."""
    edit_dir = Path(edit_dir)
    sweep = strength_folders(edit_dir)
    if len(sweep) < 2:
        raise ValueError(f"{edit_dir} has {len(sweep)} strength setting(s); a linearity sweep needs at least 2 "
                         "(asyrp edit --strengths=-1,-0.5,0,0.5,1)")
    image = image or image_names(edit_dir / "original")[0]
    columns: list[tuple[str, Path]] = [("original", edit_dir / "original")]
    has_zero = any(abs(s) < 1e-9 for s, _ in sweep)
    for s, folder in sweep:
        if not has_zero and s > 0 and not any(lbl.startswith("0") for lbl, _ in columns):
            columns.append(("0: reconstruction", edit_dir / "reconstructed"))
        columns.append(("s=0: no Δh" if abs(s) < 1e-9 else f"s={s:+.2f}", edit_dir / folder))
    cells = [[load_image(image_path(folder, image)) for _, folder in columns]]
    return _save_grid(out, cells, [lbl for lbl, _ in columns], None, "linearity_sweep",
                      {"edit_dir": str(edit_dir), "image": image}, command,
                      strengths=[s for s, _ in sweep], folders=[str(f.name) for _, f in columns])


def steps_comparison(edit_dir_a: str | Path, edit_dir_b: str | Path, images: Sequence[str] | None, out: str | Path,
                     labels: Sequence[str] = ("40 steps", "1000 steps"), *, strength: float | None = None,
                     command: str | None = None) -> Path:
    """Rows = original, the edit of run A, the edit of run B (e.g. 40 vs 1000 generation steps); columns = images."""
    a, b = Path(edit_dir_a), Path(edit_dir_b)
    images = list(images) if images else _default_images([a, b], 5)
    fa, fb = pick_folder(a, strength), pick_folder(b, strength)
    cells = [[load_image(image_path(a / "original", n)) for n in images],
             [load_image(image_path(a / fa, n)) for n in images],
             [load_image(image_path(b / fb, n)) for n in images]]
    return _save_grid(out, cells, [Path(n).stem for n in images], ["original", *labels], "steps_comparison",
                      {"edit_dir_a": str(a), "edit_dir_b": str(b), "images": images, "labels": list(labels),
                       "strength": strength}, command, edited_folders=[fa, fb])


def _matches(value, wanted) -> bool:
    if callable(wanted):
        return bool(wanted(value))
    if isinstance(wanted, (list, tuple, set, frozenset)):
        return any(_matches(value, w) for w in wanted)
    if isinstance(wanted, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return abs(float(value) - float(wanted)) < 1e-9
    return value == wanted or (value is not None and str(value) == str(wanted))


def _load_all(results) -> list[dict]:
    """One results dict / path, or a list of them → loaded results."""
    return [as_results(r) for r in (results if isinstance(results, (list, tuple)) else [results])]


def ablation_grid(results, row_tag: str | None, col_tag: str, image: str | None, out: str | Path, *,
                  filters: Mapping[str, Any] | None = None, show_original: bool = True,
                  command: str | None = None) -> Path:
    """Rows = values of ``row_tag`` (None: one row), columns = values of ``col_tag``, each cell the edit of
    ``image`` by the run (and strength) with those tags. ``filters`` fixes other tags: {tag: value, list of
    values, or predicate}. A missing combination is an empty tile; several matches take the first run by name
    (listed in the sidecar)."""
    loaded = _load_all(results)
    items = [e for r in loaded for e in entries(r)
             if all(_matches(e.tags.get(t), w) for t, w in (filters or {}).items())]
    if not items:
        raise ValueError(f"no run matches the filters {dict(filters or {})}")
    rows = _axis_values(items, row_tag) if row_tag else [None]
    cols = _axis_values(items, col_tag)
    left_out = sorted({f"{e.run}/{e.folder}" for e in items
                       if (row_tag and _hashable(e.tags.get(row_tag)) not in rows)
                       or _hashable(e.tags.get(col_tag)) not in cols})
    items = sorted(items, key=lambda e: (e.run, e.folder))
    image = image or image_names(items[0].edit_dir / "original")[0]
    cells, chosen, ambiguous, missing = [], {}, [], []
    for r in rows:
        in_row = [e for e in items if not row_tag or _hashable(e.tags.get(row_tag)) == r]
        row = [load_image(image_path(in_row[0].edit_dir / "original", image))] if show_original else []
        for c in cols:
            hits = [e for e in in_row if _hashable(e.tags.get(col_tag)) == c]
            if len(hits) > 1:
                ambiguous.append({"row": r, "col": c, "runs": [f"{e.run}/{e.folder}" for e in hits]})
            if not hits:
                missing.append(f"{row_tag}={r}, {col_tag}={c}: no run")
                row.append(None)
                continue
            try:
                row.append(load_image(image_path(hits[0].edit_dir / hits[0].folder, image)))
                chosen[f"{r}|{c}"] = f"{hits[0].run}/{hits[0].folder}"
            except FileNotFoundError:
                missing.append(f"{hits[0].run}/{hits[0].folder}: no image {image}")
                row.append(None)
        cells.append(row)
    col_labels = (["original"] if show_original else []) + [format_tag(col_tag, c) for c in cols]
    row_labels = [format_tag(row_tag, r) for r in rows] if row_tag else None
    return _save_grid(out, cells, col_labels, row_labels, "ablation_grid",
                      {"results": [r["_source"] for r in loaded], "families": sorted({e.family for e in items}),
                       "row_tag": row_tag, "col_tag": col_tag, "image": image,
                       "filters": {k: (v if not callable(v) else repr(v)) for k, v in (filters or {}).items()}},
                      command, cells=chosen, ambiguous=ambiguous, missing=missing, left_out_without_tag=left_out)


def _axis_values(items: Sequence[Entry], tag: str) -> list:
    """Sorted values of a tag. Runs without an epoch (a released or external checkpoint) are left out of an epoch
    axis when others have one (the sidecar lists them); for other tags None is a value (init_from: from scratch)."""
    values = sorted({_hashable(e.tags.get(tag)) for e in items}, key=value_sort_key)
    if tag in ("epoch", "epochs"):
        return [v for v in values if v is not None] or values
    return values


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _ema(values: Sequence[float], weight: float) -> list[float]:
    """Debiased exponential moving average (what wandb calls smoothing): weight 0 = raw values."""
    out, acc = [], 0.0
    for k, v in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** k) if weight > 0 else v)
    return out


def loss_series(log: str | Path, term: str = "loss", per_image: bool = False) -> tuple[list[int], list[float]]:
    """(x, y) of one training log. Default: one point per optimiser step, y = the mean of the term over the timesteps
    whose gradients that step applied (several with gradient accumulation). ``per_image``: one point per image batch,
    y = the sum of the term over the batch's timesteps (the earlier reproduction's "image loss"), x = the step count
    at the batch's end."""
    lines = read_jsonl(log)
    if not lines:
        raise ValueError(f"{log} holds no log lines")
    if term not in lines[0]:
        terms = ", ".join(k for k in lines[0] if k.startswith("loss"))
        raise ValueError(f"{log} has no term {term!r} (it has {terms})")
    groups: list[list[dict]] = []
    current: list[dict] = []
    previous_step = 0  # a log starts with training (asyrp train keeps every line from the first step)
    for k, line in enumerate(lines):
        current.append(line)
        # a line's "step" counts the steps taken so far, so the line that made a step is the one where it grows
        if per_image:
            done = k + 1 == len(lines) or (lines[k + 1]["epoch"], lines[k + 1]["batch"]) != (line["epoch"],
                                                                                            line["batch"])
        else:
            done = line["step"] != previous_step or k + 1 == len(lines)
        previous_step = line["step"]
        if done:
            groups.append(current)
            current = []
    xs = [g[-1]["step"] for g in groups]
    ys = [sum(x[term] for x in g) / (1 if per_image else len(g)) for g in groups]
    return xs, ys


def _new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save_plot(fig, out: Path) -> Path:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def loss_curves(logs_by_label: Mapping[str, str | Path], out: str | Path, term: str = "loss", smoothing: float = 0.0,
                per_image: bool = False, *, command: str | None = None) -> Path:
    """One curve per training log (asyrp train's log.jsonl) of ``term`` (loss, loss_clip or loss_l1) against the
    optimiser step. ``smoothing`` in [0, 1): debiased EMA drawn over the faint raw curve."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if not logs_by_label:
        raise ValueError("loss_curves needs at least one log")
    out = Path(out)
    fig, (ax,) = _new_figure()
    points = {}
    for k, (label, log) in enumerate(logs_by_label.items()):
        xs, ys = loss_series(log, term, per_image)
        color = f"C{k % 10}"
        if smoothing > 0:
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, _ema(ys, smoothing), color=color, label=str(label), linewidth=1.5)
        else:
            ax.plot(xs, ys, color=color, label=str(label), linewidth=1.2)
        points[str(label)] = len(xs)
    what = {"loss": "loss = λ_CLIP·L_CLIP + λ_L1·cos·L1", "loss_clip": "loss_clip = −log((1 + cos)/2)",
            "loss_l1": "loss_l1 = |P_edit − P_ref|₁"}.get(term, term)
    ax.set_xlabel("optimiser step" + (" (end of each image batch)" if per_image else ""))
    ax.set_ylabel(what, fontsize=9)
    ax.set_title(("per image batch: sum over its timesteps" if per_image else
                  "per optimiser step (mean over the timesteps of the step)")
                 + (f"; EMA smoothing {smoothing:g}, raw curve faint" if smoothing else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_plot(fig, out)
    _sidecar(out, "loss_curves", {"logs": {str(k): str(v) for k, v in logs_by_label.items()}, "term": term,
                                  "smoothing": smoothing, "per_image": per_image}, command, points=points)
    return out


METRIC_LABELS = {"s_dir_original": ("S_dir original→edited (cosine; ± std over images)", "s_dir_original_std"),
                 "s_dir_reconstructed": ("S_dir reconstructed→edited (cosine; ± std)", "s_dir_reconstructed_std"),
                 "fid_original_edited": ("FID(original, edited)", None),
                 "fid_reconstructed_edited": ("FID(reconstructed, edited)", None),
                 "kid_original_edited": ("KID(original, edited) (± std over subsets)", "kid_original_edited_std")}


def metric_vs_strength(results, out: str | Path, metrics: Sequence[str] = ("s_dir_original", "fid_original_edited"),
                       *, series_tags: Sequence[str] | None = None, command: str | None = None) -> Path:
    """One panel per metric against the edit strength; one line per series (the varied tags other than strength,
    e.g. the attribute), std error bars where the metric has one, the image count N in the legend."""
    unknown = [m for m in metrics if m not in METRIC_LABELS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(METRIC_LABELS)}")
    loaded = _load_all(results)
    items = [e for r in loaded for e in entries(r) if isinstance(e.tags.get("strength"), (int, float))
             and any(e.metric(m) is not None for m in metrics)]
    if not items:
        raise ValueError("no evaluated edit with a strength in these results")
    metrics = [m for m in metrics if any(e.metric(m) is not None for e in items)]  # e.g. FID switched off
    tags = list(series_tags) if series_tags is not None else [t for t in varied_tags(items) if t != "strength"]
    series: dict[str, list[Entry]] = {}
    for e in sorted(items, key=lambda e: [value_sort_key(e.tags.get(t)) for t in tags]):
        label = ", ".join(format_tag(t, e.tags.get(t)) for t in tags) or e.family
        series.setdefault(label, []).append(e)
    out = Path(out)
    fig, axes = _new_figure(len(metrics), width=5.0)
    plotted = {}
    for ax, metric in zip(axes, metrics, strict=True):
        name, std_key = METRIC_LABELS[metric]
        for k, (label, group) in enumerate(series.items()):
            group = sorted((e for e in group if e.metric(metric) is not None), key=lambda e: e.tags["strength"])
            if not group:
                continue
            xs = [e.tags["strength"] for e in group]
            ys = [e.metric(metric) for e in group]
            err = [e.metric(std_key) or 0.0 for e in group] if std_key else None
            ns = sorted({e.metric("n") for e in group if e.metric("n") is not None})
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=f"C{k % 10}",
                        label=f"{label} (N={'/'.join(map(str, ns)) or '?'})")
            plotted[f"{metric}|{label}"] = {"strength": xs, "value": ys, "n": ns}
        if metric.startswith("s_dir"):
            ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
        if metric.startswith("fid"):
            name += "\n(biased upward for N < 2048; compare at equal N)"
        ax.set_xlabel("edit strength (Δh multiplier)")
        ax.set_ylabel(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save_plot(fig, out)
    _sidecar(out, "metric_vs_strength", {"results": [r["_source"] for r in loaded],
                                         "families": sorted({e.family for e in items}), "metrics": list(metrics),
                                         "series_tags": tags}, command, points=plotted)
    return out


# --------------------------------------------------------------------------------------------------
# Every figure a set of results supports
# --------------------------------------------------------------------------------------------------

def is_shapes_family(results: Mapping, items: Sequence[Entry]) -> bool:
    """A family of the offline shapes world: by its name, its config's backbone or its runs' tags."""
    config = results.get("config") or {}
    backbones = {config.get("backbone"), (config.get("defaults") or {}).get("backbone")}
    backbones |= {e.tags.get("backbone") for e in items}
    return "shapes" in str(results.get("family", "")).lower() or "shapes" in backbones or config.get("world") == \
        "shapes"


def _is_unseen(e: Entry) -> bool:
    domain = e.tags.get("domain")
    if domain is not None:
        return str(domain).lower().startswith("un")
    return str(e.tags.get("attribute")) in UNSEEN_DOMAIN


def _mode(values: list):
    counts = Counter(_hashable(v) for v in values)
    best = max(counts.values())
    return sorted((v for v, c in counts.items() if c == best), key=value_sort_key)[0]


def _preferred(tag: str, values: list):
    """The value a figure fixes a tag at: strength 1 (else the largest), the last epoch, else the commonest."""
    distinct = sorted({_hashable(v) for v in values}, key=value_sort_key)
    if tag == "strength":
        return 1.0 if any(isinstance(v, (int, float)) and abs(v - 1) < 1e-9 for v in distinct) else distinct[-1]
    if tag in ("epoch", "epochs"):
        return distinct[-1]
    return _mode(values)


def _representatives(items: Sequence[Entry], strength) -> dict[str, Entry]:
    """One entry per attribute at ``strength``: the commonest step count, then the first run by name."""
    steps = _mode([e.tags.get("n_test_step") for e in items])
    out: dict[str, Entry] = {}
    for attr in sorted({str(e.tags.get("attribute")) for e in items}):
        cands = [e for e in items
                 if str(e.tags.get("attribute")) == attr and _matches(e.tags.get("strength"), strength)]
        best = [e for e in cands if e.tags.get("n_test_step") == steps] or cands
        if best:
            out[attr] = min(best, key=lambda e: (e.run, e.folder))
    return out


def _editing_grid_jobs(add, section: str, family: str, items: Sequence[Entry]) -> None:
    """Editing grids: released and retrained directions apart (released first, without suffix, as the earlier
    reproduction showed them), at strength 1 (else the largest) and at 0.5 where the runs have it."""
    by_official: dict[bool, list[Entry]] = {}
    for e in items:
        by_official.setdefault(bool(e.tags.get("official")), []).append(e)
    for official, group in sorted(by_official.items(), key=lambda kv: not kv[0]):
        suffix = "_retrained" if not official and len(by_official) > 1 else ""
        main = _preferred("strength", [e.tags.get("strength") for e in group])
        extra = [0.5] if main != 0.5 and any(_matches(e.tags.get("strength"), 0.5) for e in group) else []
        for strength in [main, *extra]:
            reps = _representatives(group, strength)
            tail = suffix + ("" if strength == main else f"_s{strength:.2f}")
            grids = [("editing_grid", reps)] if section == "shapes" else [
                ("in_domain", {a: e for a, e in reps.items() if not _is_unseen(e)}),
                ("unseen_domain", {a: e for a, e in reps.items() if _is_unseen(e)})]
            for name, chosen in grids:
                if chosen:
                    add(f"{section}/{name}{tail}.png", "editing_grid", family,
                        edit_dirs_by_attribute={a: e.edit_dir for a, e in chosen.items()}, images=None,
                        strength=strength)


def _reproduction_jobs(add, section: str, family: str, items: Sequence[Entry]) -> None:
    _editing_grid_jobs(add, section, family, items)
    sweeps = sorted({e.edit_dir for e in items}, key=lambda d: (-len(strength_folders(d)), str(d)))
    sweeps = [d for d in sweeps if len(strength_folders(d)) >= 3]
    if sweeps:
        attr_of = {e.edit_dir: str(e.tags.get("attribute")) for e in items}
        best = next((d for d in sweeps if attr_of.get(d) == "smiling"), sweeps[0])
        add(f"{section}/linearity.png", "linearity_sweep", family, edit_dir=best, image=None)
    # one attribute edited with different step counts by the same kind of direction (released or retrained)
    by_steps: dict[tuple, dict[int, Path]] = {}
    for e in sorted(items, key=lambda e: (e.run, e.folder)):
        if isinstance(e.tags.get("n_test_step"), int):
            key = (str(e.tags.get("attribute")), bool(e.tags.get("official")))
            by_steps.setdefault(key, {}).setdefault(e.tags["n_test_step"], e.edit_dir)
    for key in sorted(by_steps, key=lambda k: (k[0] != "smiling", k)):
        runs = by_steps[key]
        if len(runs) >= 2:
            lo, hi = min(runs), max(runs)
            add(f"{section}/details.png", "steps_comparison", family, edit_dir_a=runs[lo], edit_dir_b=runs[hi],
                images=None, labels=(f"{lo} steps", f"{hi} steps"))
            break


def _ablation_jobs(add, section: str, family: str, items: Sequence[Entry], varied: Sequence[str], results) -> None:
    wanted = []
    if "heads" in varied and "epoch" in varied:
        wanted.append(("heads_vs_epochs.png", "epoch", "heads"))
    if "kind" in varied:
        wanted.append(("layer_types.png", "epoch" if "epoch" in varied else
                       "strength" if "strength" in varied else None, "kind"))
    if "heads" in varied and "strength" in varied:
        wanted.append(("strength_vs_heads.png", "strength", "heads"))
    if not wanted:
        wanted.append((f"grid_{slug(family)}.png", varied[1] if len(varied) > 1 else None, varied[0]))
    for name, row, col in wanted:
        # the other varied tags are fixed at one value each (recorded as filters in the sidecar)
        fixed = {t: _preferred(t, [e.tags.get(t) for e in items if e.tags.get(t) is not None])
                 for t in varied if t not in (row, col)}
        add(f"{section}/{name}", "ablation_grid", family, results=results, row_tag=row, col_tag=col, image=None,
            filters=fixed)


def plan_figures(results_list: Iterable) -> list[dict]:
    """[{name, function, kwargs, family}] for every figure the results support (file names as in the docstring)."""
    jobs: list[dict] = []
    used: set[str] = set()

    def add(name: str, function: str, family: str, **kwargs):
        if name in used:
            stem, ext = name.rsplit(".", 1)
            name = f"{stem}_{slug(family)}.{ext}"
        used.add(name)
        jobs.append({"name": name, "function": function, "family": family, "kwargs": kwargs})

    for results in results_list:
        results = as_results(results)
        items = entries(results)
        if not items:
            continue
        family = results["family"]
        style = family_style(items)
        section = "shapes" if is_shapes_family(results, items) else style
        varied = varied_tags(items)
        plain = [e for e in items if "alpha" not in e.tags]  # interpolations have no strength axis
        if style == "reproduction" and plain:
            _reproduction_jobs(add, section, family, plain)
        elif style == "ablation":
            _ablation_jobs(add, section, family, items, varied, results)
        strengths = {e.tags.get("strength") for e in items if e.metric("s_dir_original") is not None
                     or e.metric("fid_original_edited") is not None}
        if len(strengths) >= 2:
            name = f"{section}/metric_vs_strength.png" if style == "reproduction" else \
                f"{section}/metric_vs_strength_{slug(family)}.png"
            add(name, "metric_vs_strength", family, results=results)
        logs = logs_by_label(items)
        if logs:
            add(f"{section}/loss_curves_{slug(family)}.png", "loss_curves", family, logs_by_label=logs)
    return jobs


def logs_by_label(items: Sequence[Entry]) -> dict[str, Path]:
    """One log per training run, labelled by what differs between the trainings (not strength or epoch, which
    belong to evaluation)."""
    train_tags = [t for t in varied_tags(items) if t not in ("strength", "alpha", "epoch", "n_test_step")]
    logs: dict[str, Path] = {}
    seen = set()
    for e in sorted(items, key=lambda e: e.run):
        if e.log is None or not e.log.is_file() or e.log in seen:
            continue
        seen.add(e.log)
        label = ", ".join(format_tag(t, e.tags.get(t)) for t in train_tags) or e.run
        logs[label if label not in logs else f"{label} ({e.run})"] = e.log
    return logs


FUNCTIONS: dict[str, Callable[..., Path]] = {
    "editing_grid": editing_grid, "linearity_sweep": linearity_sweep, "steps_comparison": steps_comparison,
    "ablation_grid": ablation_grid, "loss_curves": loss_curves, "metric_vs_strength": metric_vs_strength}


def make_figures(results_list: Iterable, out: str | Path, command: str | None = None,
                 sections: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> list[Path]:
    """Make every planned figure under ``out`` (only those of ``sections``, e.g. ("ablation",), if given); a figure
    whose inputs are missing is skipped with a message."""
    out = Path(out)
    loaded = [as_results(r) for r in results_list]
    written = []
    for job in plan_figures(loaded):
        if sections is not None and job["name"].split("/", 1)[0] not in sections:
            continue
        try:
            written.append(FUNCTIONS[job["function"]](**job["kwargs"], out=out / job["name"], command=command))
        except (FileNotFoundError, ValueError) as e:
            (log or (lambda m: print(m, file=sys.stderr)))(f"skipped {job['name']}: {' '.join(str(e).split())}")
    return written


# --------------------------------------------------------------------------------------------------
# CLI: asyrp figures
# --------------------------------------------------------------------------------------------------

def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="figures", help="output folder (default: figures)")
    p.add_argument("--results", action="append", default=[], metavar="RESULTS_JSON",
                   help="a family's results.json; without a single-figure flag: every figure it supports")
    p.add_argument("--run", action="append", default=[], metavar="EDIT_DIR",
                   help="an edit folder used directly as a run of one family (repeat)")
    p.add_argument("--family", default="runs", help="family name of the --run folders (default: runs)")
    g = p.add_argument_group("single figures (each written to --out, named by --name or a default)")
    g.add_argument("--grid", nargs="+", metavar="[LABEL=]EDIT_DIR", help="editing grid of these edit folders")
    g.add_argument("--linearity", metavar="EDIT_DIR", help="strength sweep of one image")
    g.add_argument("--steps", nargs=2, metavar=("EDIT_DIR_A", "EDIT_DIR_B"), help="two runs of one edit, e.g. 40 vs "
                   "1000 generation steps")
    g.add_argument("--labels", nargs=2, default=["40 steps", "1000 steps"], metavar=("LABEL_A", "LABEL_B"),
                   help="row labels of --steps (default: 40 steps, 1000 steps)")
    g.add_argument("--loss", nargs="+", metavar="[LABEL=]LOG", help="loss curves of these log.jsonl files")
    g.add_argument("--term", default="loss", choices=["loss", "loss_clip", "loss_l1"], help="logged term for --loss")
    g.add_argument("--smoothing", type=float, default=0.0, help="EMA weight in [0, 1) for --loss (e.g. 0.4)")
    g.add_argument("--per-image", action="store_true", help="--loss: one point per image batch (sum over timesteps)")
    g.add_argument("--ablation", nargs=2, metavar=("ROW_TAG", "COL_TAG"),
                   help="grid of the --results runs by two tags (ROW_TAG 'none' for one row)")
    g.add_argument("--filter", action="append", default=[], metavar="TAG=VALUE", help="fix a tag for --ablation")
    g.add_argument("--metric-vs-strength", action="store_true", help="S_dir and FID against strength (--results)")
    g.add_argument("--images", nargs="+", metavar="NAME", help="images of --grid / --steps (default: the first ones)")
    g.add_argument("--image", metavar="NAME", help="image of --linearity / --ablation (default: the first)")
    g.add_argument("--strength", type=float, help="strength shown by --grid / --steps (default: 1, or edited/)")
    g.add_argument("--name", help="file name of the figure of a single-figure flag (default: grid.png, "
                   "linearity.png, steps.png, loss_curves.png, ablation_<row>_vs_<col>.png, metric_vs_strength.png)")


def _labelled(items: Sequence[str], default_label: Callable[[Path], str]) -> dict[str, Path]:
    """``LABEL=PATH`` or ``PATH`` (a path that itself contains "=" is taken whole)."""
    out = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or Path(item).exists():
            label, path = "", item
        out[label or default_label(Path(path))] = Path(path)
    return out


def _attribute_label(edit_dir: Path) -> str:
    record = _edit_record(edit_dir)
    attrs = [d.get("attribute") for d in record.get("directions", []) if d.get("attribute")]
    return "+".join(attrs) if attrs else edit_dir.name


def _parse_filter(text: str) -> tuple[str, Any]:
    tag, sep, value = text.partition("=")
    if not sep:
        raise UserError(f"--filter {text!r}: expected TAG=VALUE")
    for cast in (int, float):
        try:
            return tag, cast(value)
        except ValueError:
            pass
    return tag, {"true": True, "false": False, "none": None}.get(value.lower(), value)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this call (recorded in every sidecar)."""
    parts = ["asyrp", "figures"]
    for flag in ("results", "run"):
        for v in getattr(args, flag):
            parts += [f"--{flag}", v]
    if args.run:
        parts += ["--family", args.family]
    for flag in ("grid", "loss", "images"):
        if getattr(args, flag):
            parts += [f"--{flag}", *getattr(args, flag)]
    for flag in ("linearity", "image", "strength", "name"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    if args.steps:
        parts += ["--steps", *args.steps, "--labels", *args.labels]
    if args.loss:
        parts += ["--term", args.term, "--smoothing", str(args.smoothing)] + (["--per-image"] if args.per_image else [])
    if args.ablation:
        parts += ["--ablation", *args.ablation] + [x for f in args.filter for x in ("--filter", f)]
    if args.metric_vs_strength:
        parts.append("--metric-vs-strength")
    return shlex.join(parts + ["--out", args.out])


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    command = _command(args)
    results_list = [load_results(p) for p in args.results]
    if args.run:
        for d in args.run:
            if not Path(d).is_dir():
                raise FileNotFoundError(f"edit folder {d} not found")
        runs = [{"name": Path(d).name, "edit_dir": d} for d in args.run]
        results_list.append(validate_results(collect_results(args.family, runs), origin="--run folders"))
    flags = [args.grid, args.linearity, args.steps, args.loss, args.ablation, args.metric_vs_strength]
    single = any(flags)
    if args.name and sum(bool(f) for f in flags) > 1:
        raise UserError("--name names one figure: give it with a single figure flag (or leave it out)")
    written: list[Path] = []
    if args.grid:
        dirs = _labelled(args.grid, _attribute_label)
        written.append(editing_grid(dirs, args.images, out / (args.name or "grid.png"), strength=args.strength,
                                    command=command))
    if args.linearity:
        written.append(linearity_sweep(args.linearity, args.image, out / (args.name or "linearity.png"),
                                       command=command))
    if args.steps:
        written.append(steps_comparison(args.steps[0], args.steps[1], args.images, out / (args.name or "steps.png"),
                                        labels=tuple(args.labels), strength=args.strength, command=command))
    if args.loss:
        logs = _labelled(args.loss, lambda p: p.parent.name or p.stem)
        written.append(loss_curves(logs, out / (args.name or "loss_curves.png"), term=args.term,
                                   smoothing=args.smoothing, per_image=args.per_image, command=command))
    if (args.ablation or args.metric_vs_strength) and not results_list:
        raise UserError("--ablation and --metric-vs-strength need --results (or --run folders)")
    if args.ablation:
        row, col = args.ablation
        filters = dict(_parse_filter(f) for f in args.filter)
        written.append(ablation_grid(results_list, None if row.lower() == "none" else row, col, args.image,
                                     out / (args.name or f"ablation_{row}_vs_{col}.png"), filters=filters,
                                     command=command))
    if args.metric_vs_strength:
        written.append(metric_vs_strength(results_list, out / (args.name or "metric_vs_strength.png"),
                                          command=command))
    if not single:
        if not results_list:
            raise UserError("nothing to draw: give --results RESULTS_JSON (or --run EDIT_DIR, or a single-figure "
                            "flag such as --grid EDIT_DIR)")
        written = make_figures(results_list, out, command=command)
    for path in written:
        print(path)
    if not written:
        print("no figure made: these inputs support none", file=sys.stderr)
        return 1
    return 0
