"""The report's figures, regenerated from saved runs: the pixel-exact image grids (the line plots are
:mod:`asyrp.study.plots`, the choice of figures :mod:`asyrp.study.figure_plan`).

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
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from asyrp import __version__
from asyrp.io.files import atomic_json, atomic_path
from asyrp.study.results import as_results
from asyrp.study.tags import Entry, entries, format_tag, value_sort_key

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
        import matplotlib  # lazily: optional here (a PIL font is the fallback), and slow to import
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


def sidecar(out: Path, function: str, inputs: Mapping, command: str | None, **extra) -> None:
    """``<name>.json`` beside the figure: what made it, from what."""
    atomic_json(out.with_suffix(".json"), {
        "figure": out.name, "function": f"asyrp.figures.{function}", "inputs": jsonable(inputs),
        "command": command or f"asyrp.figures.{function}(...)", "asyrp_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **jsonable(extra)})


def jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def save_grid(out, images, col_labels, row_labels, function, inputs, command, **extra) -> Path:
    out = Path(out)
    canvas, layout = compose(images, col_labels, row_labels)
    with atomic_path(out) as tmp:  # PIL directly: asyrp.plots would import torch just for this
        Image.fromarray(canvas).save(tmp, format="PNG")
    sidecar(out, function, inputs, command, layout=layout, **extra)
    return out


# --------------------------------------------------------------------------------------------------
# Edit folders
# --------------------------------------------------------------------------------------------------

def edit_record(edit_dir: Path) -> dict:
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
    record = edit_record(edit_dir)
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


def default_images(edit_dirs: Iterable[Path], k: int) -> list[str]:
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
    images = list(images) if images else default_images(dirs.values(), 3)
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
    return save_grid(out, cells, cols, None, "editing_grid",
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
    return save_grid(out, cells, [lbl for lbl, _ in columns], None, "linearity_sweep",
                      {"edit_dir": str(edit_dir), "image": image}, command,
                      strengths=[s for s, _ in sweep], folders=[str(f.name) for _, f in columns])


def steps_comparison(edit_dir_a: str | Path, edit_dir_b: str | Path, images: Sequence[str] | None, out: str | Path,
                     labels: Sequence[str] = ("40 steps", "1000 steps"), *, strength: float | None = None,
                     command: str | None = None) -> Path:
    """Rows = original, the edit of run A, the edit of run B (e.g. 40 vs 1000 generation steps); columns = images."""
    a, b = Path(edit_dir_a), Path(edit_dir_b)
    images = list(images) if images else default_images([a, b], 5)
    fa, fb = pick_folder(a, strength), pick_folder(b, strength)
    cells = [[load_image(image_path(a / "original", n)) for n in images],
             [load_image(image_path(a / fa, n)) for n in images],
             [load_image(image_path(b / fb, n)) for n in images]]
    return save_grid(out, cells, [Path(n).stem for n in images], ["original", *labels], "steps_comparison",
                      {"edit_dir_a": str(a), "edit_dir_b": str(b), "images": images, "labels": list(labels),
                       "strength": strength}, command, edited_folders=[fa, fb])


def matches(value, wanted) -> bool:
    if callable(wanted):
        return bool(wanted(value))
    if isinstance(wanted, (list, tuple, set, frozenset)):
        return any(matches(value, w) for w in wanted)
    if isinstance(wanted, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return abs(float(value) - float(wanted)) < 1e-9
    return value == wanted or (value is not None and str(value) == str(wanted))


def load_all(results) -> list[dict]:
    """One results dict / path, or a list of them → loaded results."""
    return [as_results(r) for r in (results if isinstance(results, (list, tuple)) else [results])]


def ablation_grid(results, row_tag: str | None, col_tag: str, image: str | None, out: str | Path, *,
                  filters: Mapping[str, Any] | None = None, show_original: bool = True,
                  command: str | None = None) -> Path:
    """Rows = values of ``row_tag`` (None: one row), columns = values of ``col_tag``, each cell the edit of
    ``image`` by the run (and strength) with those tags. ``filters`` fixes other tags: {tag: value, list of
    values, or predicate}. A missing combination is an empty tile; several matches take the first run by name
    (listed in the sidecar)."""
    loaded = load_all(results)
    items = [e for r in loaded for e in entries(r)
             if all(matches(e.tags.get(t), w) for t, w in (filters or {}).items())]
    if not items:
        raise ValueError(f"no run matches the filters {dict(filters or {})}")
    rows = axis_values(items, row_tag) if row_tag else [None]
    cols = axis_values(items, col_tag)
    left_out = sorted({f"{e.run}/{e.folder}" for e in items
                       if (row_tag and hashable(e.tags.get(row_tag)) not in rows)
                       or hashable(e.tags.get(col_tag)) not in cols})
    items = sorted(items, key=lambda e: (e.run, e.folder))
    image = image or image_names(items[0].edit_dir / "original")[0]
    cells, chosen, ambiguous, missing = [], {}, [], []
    for r in rows:
        in_row = [e for e in items if not row_tag or hashable(e.tags.get(row_tag)) == r]
        row = [load_image(image_path(in_row[0].edit_dir / "original", image))] if show_original else []
        for c in cols:
            hits = [e for e in in_row if hashable(e.tags.get(col_tag)) == c]
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
    return save_grid(out, cells, col_labels, row_labels, "ablation_grid",
                      {"results": [r["_source"] for r in loaded], "families": sorted({e.family for e in items}),
                       "row_tag": row_tag, "col_tag": col_tag, "image": image,
                       "filters": {k: (v if not callable(v) else repr(v)) for k, v in (filters or {}).items()}},
                      command, cells=chosen, ambiguous=ambiguous, missing=missing, left_out_without_tag=left_out)


def axis_values(items: Sequence[Entry], tag: str) -> list:
    """Sorted values of a tag. Runs without an epoch (a released or external checkpoint) are left out of an epoch
    axis when others have one (the sidecar lists them); for other tags None is a value (init_from: from scratch)."""
    values = sorted({hashable(e.tags.get(tag)) for e in items}, key=value_sort_key)
    if tag in ("epoch", "epochs"):
        return [v for v in values if v is not None] or values
    return values


def hashable(value):
    return tuple(value) if isinstance(value, list) else value


