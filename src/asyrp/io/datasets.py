"""Image sources: folders of images, CelebA-HQ style LMDBs, named splits and batching.

Every dataset here yields items

    {"image": float32 (3, S, S) in [-1, 1], "name": str, "source": str, "sha256": str}

``name`` is unique within a dataset and safe as a file name (outputs are saved as ``{name}.png``); ``source`` is the
absolute file path or ``"lmdb:<path>#<index>"``; ``sha256`` hashes the source bytes, so the inversion cache notices a
changed image. Datasets also carry ``names`` (the list of all names, in order), so a split can be applied without
decoding anything.

Two on-disk sources:

* :class:`ImageFolder` — jpg/jpeg/png/webp files sorted by relative path (the reference used unsorted
  ``os.listdir``), centre-cropped to a square and resized with PIL bilinear.
* :class:`LMDBImages` — the ddim/SDEdit/DiffusionCLIP CelebA-HQ layout: key ``f"{resolution}-{index:05d}"`` → JPEG
  bytes, key ``"length"`` → the count as ASCII. :func:`asyrp.io.lmdb_writer.prepare_lmdb` writes it exactly as the reference's
  ``prepare_lmdb_data.py`` does (files sorted by path, (s, s) resize without crop, JPEG quality 100), but atomically.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
import weakref
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import lmdb
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from asyrp.io.images import (DECODE_ERRORS, IMAGE_EXTENSIONS, DataError, SkippedFilesWarning,
                              center_crop_resize, check_image_size, decode_rgb, preview_names, to_tensor)
from asyrp.io.splits import load_split
from asyrp.layouts import METFACES_TEST_SIZE, LayoutError, find_layout

# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------

class ImageDataset(Dataset):
    """Base of the datasets here: ``names`` lists the items' names in order; ``__getitem__`` returns an item dict."""

    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def _index(self, index: int) -> int:
        n = len(self.names)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {self!r}")
        return index % n


def dataset_names(dataset: Dataset) -> list[str]:
    """The names of ``dataset``'s items, in order (read from ``.names`` when it has one, else from the items)."""
    names = getattr(dataset, "names", None)
    if names is None:
        names = [dataset[i]["name"] for i in range(len(dataset))]
    return list(names)


def _find_files(root: Path, recursive: bool) -> tuple[list[str], list[str]]:
    """(files with an image extension, other files), as sorted posix paths relative to ``root``; hidden entries
    (.DS_Store, ._* resource forks, .ipynb_checkpoints) are ignored."""
    images, others = [], []
    visited = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink loop
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
        for filename in filenames:
            if filename.startswith("."):
                continue
            rel = Path(os.path.relpath(os.path.join(dirpath, filename), root)).as_posix()
            (images if os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS else others).append(rel)
    # Sorting the full relative path string gives the reference prepare_lmdb_data.py numbering.
    return sorted(images), sorted(others)


def _is_readable_image(path: Path) -> bool:
    try:
        with Image.open(path) as img:  # reads the header only: cheap even for large folders
            img.size
        return True
    except DECODE_ERRORS:
        return False


def collect_images(root: Path, recursive: bool) -> list[str]:
    """Readable image files under ``root`` (sorted relative paths). Warns once about skipped files; raises
    :class:`DataError` when nothing readable is left."""
    candidates, unsupported = _find_files(root, recursive)
    readable, unreadable = [], []
    for rel in candidates:
        (readable if _is_readable_image(root / rel) else unreadable).append(rel)
    if not readable:
        if not candidates and not unsupported:
            raise DataError(f"no images in {root}: the folder is empty")
        found = []
        if unreadable:
            found.append(f"{len(unreadable)} unreadable image file(s) ({preview_names(unreadable)})")
        if unsupported:
            found.append(f"{len(unsupported)} file(s) that are not {'/'.join(IMAGE_EXTENSIONS)} "
                         f"({preview_names(unsupported)})")
        raise DataError(f"no readable images in {root}: found " + " and ".join(found))
    if unreadable or unsupported:
        parts = []
        if unreadable:
            parts.append(f"{len(unreadable)} unreadable ({preview_names(unreadable)})")
        if unsupported:
            parts.append(f"{len(unsupported)} not a {'/'.join(IMAGE_EXTENSIONS)} image ({preview_names(unsupported)})")
        total = len(candidates) + len(unsupported)
        warnings.warn(f"skipped {total - len(readable)} of {total} files in {root}: " + "; ".join(parts),
                      SkippedFilesWarning, stacklevel=3)
    return readable


def _unique_names(rel_paths: Sequence[str]) -> list[str]:
    """``a/b.jpg`` → ``a__b``; files that would share a name keep their extension (``x_jpg``, ``x_png``)."""
    stems = [os.path.splitext(rel)[0].replace("/", "__") for rel in rel_paths]
    counts = Counter(stems)
    names, used = [], set()
    for rel, stem in zip(rel_paths, stems):
        name = stem if counts[stem] == 1 else f"{stem}_{os.path.splitext(rel)[1][1:]}"
        candidate, k = name, 2
        while candidate in used:  # only for contrived layouts (a/b.jpg next to a__b.jpg)
            candidate, k = f"{name}~{k}", k + 1
        used.add(candidate)
        names.append(candidate)
    return names


class ImageFolder(ImageDataset):
    """The jpg/jpeg/png/webp images under ``root`` (recursively unless ``recursive=False``), sorted by relative path.

    ``split`` names a subfolder of ``root`` (the reference's ``custom/train`` and ``custom/test`` layout).
    ``root`` may also be a single image file. Each image is converted to RGB, centre-cropped to a square, resized to
    ``image_size`` with PIL bilinear and scaled to [-1, 1]. Names are the relative paths without extension, with
    "/" replaced by "__".
    """

    def __init__(self, root: str | os.PathLike, image_size: int, split: str | None = None, recursive: bool = True):
        self.image_size = check_image_size(image_size)
        root = Path(os.path.abspath(root))
        if split is not None:
            if not (root / split).is_dir():
                raise DataError(f"{root} has no subfolder {split!r} for split {split!r}")
            root = root / split
        if not root.exists():
            raise DataError(f"image folder {root} does not exist")
        if root.is_file():
            if not _is_readable_image(root):
                raise DataError(f"{root} is not a readable image")
            root, relative = root.parent, [root.name]
        else:
            relative = collect_images(root, recursive)
        self.root = root
        self.files = [root / rel for rel in relative]
        self.names = _unique_names(relative)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        path = self.files[index]
        data = path.read_bytes()  # read once: the same bytes are hashed and decoded
        img = center_crop_resize(decode_rgb(data, path), self.image_size)
        return {"image": to_tensor(img), "name": self.names[index], "source": str(path),
                "sha256": hashlib.sha256(data).hexdigest()}

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, {len(self)} images, image_size={self.image_size})"


def lmdb_key(resolution: int, index: int) -> bytes:
    return f"{resolution}-{index:05d}".encode()


def _stored_resolutions(txn: lmdb.Transaction) -> list[int]:
    """The resolutions with image keys in the LMDB, found by jumping from one key prefix to the next."""
    resolutions = []
    cursor = txn.cursor()
    found = cursor.first()
    while found:
        match = re.fullmatch(rb"(\d+)-\d+", cursor.key())
        if match:
            resolutions.append(int(match[1]))
            found = cursor.set_range(match[1] + b"-~")  # "~" sorts after every digit: skips this resolution
        else:
            found = cursor.next()
    return sorted(resolutions)


# py-lmdb refuses to open the same LMDB files twice in one process (LMDB's locks are per process), so all datasets
# over one LMDB share one read-only handle, keyed by the data file's identity. Weak values: the handle closes with
# the last dataset using it. A forked DataLoader worker inherits the registry and keeps using the parent's handle
# (py-lmdb would refuse a second open there too), which is safe as it is read-only, lock=False, and nothing writes.
_READONLY_LMDBS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _shared_readonly_lmdb(path: Path) -> lmdb.Environment:
    stat = (path / "data.mdb").stat()
    key = (stat.st_dev, stat.st_ino)
    env = _READONLY_LMDBS.get(key)
    if env is None:
        try:
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False)
        except lmdb.Error as e:
            raise DataError(f"cannot open LMDB {path}: {e}") from e
        _READONLY_LMDBS[key] = env
    return env


class LMDBImages(ImageDataset):
    """A CelebA-HQ style LMDB (``LMDB_train``/``LMDB_test`` of ddim/SDEdit/DiffusionCLIP/Asyrp).

    ``resolution`` picks which stored size to read; by default ``image_size`` when stored, else the smallest larger
    one, else the largest. Images are resized (bilinear) only when the stored size differs from ``image_size``.
    Names are ``f"{index:05d}"``.
    """

    def __init__(self, path: str | os.PathLike, image_size: int, resolution: int | None = None):
        self.image_size = check_image_size(image_size)
        self.path = Path(os.path.abspath(path))
        if not (self.path / "data.mdb").is_file():
            raise DataError(f"{self.path} is not an LMDB folder (no data.mdb in it)")
        self._env: lmdb.Environment | None = _shared_readonly_lmdb(self.path)
        with self._env.begin() as txn:
            length = self._read_length(txn)
            self.resolution = self._choose_resolution(_stored_resolutions(txn), resolution)
            for index in (0, length - 1):  # catches an LMDB whose writer died half way
                if txn.get(lmdb_key(self.resolution, index)) is None:
                    raise DataError(f"LMDB {self.path} says length={length} but has no key "
                                    f"{lmdb_key(self.resolution, index).decode()!r}")
        self.names = [f"{i:05d}" for i in range(length)]

    def _read_length(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(b"length")
        if raw is None:
            raise DataError(f"LMDB {self.path} has no 'length' key: not a CelebA-HQ style image LMDB")
        try:
            length = int(bytes(raw).decode("ascii"))
        except ValueError:
            raise DataError(f"LMDB {self.path}: 'length' is {bytes(raw)[:20]!r}, not an integer") from None
        if length <= 0:
            raise DataError(f"LMDB {self.path} holds no images (length={length})")
        return length

    def _choose_resolution(self, stored: list[int], requested: int | None) -> int:
        if not stored:
            raise DataError(f"LMDB {self.path} has no '<resolution>-<index>' image keys")
        if requested is not None:
            if requested not in stored:
                raise DataError(f"LMDB {self.path} has no images at resolution {requested} (stored: {stored})")
            return requested
        if self.image_size in stored:
            return self.image_size
        larger = [r for r in stored if r > self.image_size]
        return min(larger) if larger else max(stored)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_env": None}  # a handle does not pickle; fetched again on first use

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        source = f"lmdb:{self.path}#{index}"
        if self._env is None:
            self._env = _shared_readonly_lmdb(self.path)
        with self._env.begin() as txn:
            data = txn.get(lmdb_key(self.resolution, index))
        if data is None:
            raise DataError(f"missing key {lmdb_key(self.resolution, index).decode()!r} in LMDB {self.path}")
        data = bytes(data)
        img = decode_rgb(data, source)
        if img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return {"image": to_tensor(img), "name": self.names[index], "source": source,
                "sha256": hashlib.sha256(data).hexdigest()}

    def __repr__(self) -> str:
        return (f"LMDBImages({str(self.path)!r}, {len(self)} images, resolution={self.resolution}, "
                f"image_size={self.image_size})")


class Subset(ImageDataset):
    """The items of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset: Dataset, indices: Iterable[int]):
        indices = [int(i) for i in indices]
        names = dataset_names(dataset)
        bad = [i for i in indices if not 0 <= i < len(names)]
        if bad:
            raise DataError(f"indices out of range for {dataset!r} (size {len(names)}): {preview_names(bad)}")
        if isinstance(dataset, Subset):  # a view of a view reads the base dataset directly
            indices = [dataset.indices[i] for i in indices]
            names = dataset_names(dataset.dataset)
            dataset = dataset.dataset
        self.dataset = dataset
        self.indices = indices
        self.names = [names[i] for i in indices]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[self.indices[self._index(index)]]

    def __repr__(self) -> str:
        return f"Subset({self.dataset!r}, {len(self)} images)"


def take(dataset: Dataset, n: int | None = None, start: int = 0) -> Subset:
    """Items ``start .. start + n - 1`` in order (all from ``start`` when ``n`` is None), like the reference's
    "first N images". Asking for more than there are is an error, not a silent truncation."""
    total = len(dataset)
    if start < 0 or start > total:
        raise DataError(f"start={start} is outside {dataset!r} ({total} images)")
    stop = total if n is None else start + n
    if n is not None and n < 0:
        raise DataError(f"n must be >= 0, got {n}")
    if stop > total:
        raise DataError(f"asked for {n} images from index {start}, but {dataset!r} has only {total}: ask for at "
                        f"most {total - start} (--n / n_images)")
    return Subset(dataset, range(start, stop))


def select(dataset: Dataset, names: Sequence[str]) -> Subset:
    """The items of ``dataset`` with exactly these ``names``, in the given order."""
    if isinstance(names, str):
        raise DataError("select() takes a list of names, not a single string")
    names = list(names)
    position = {name: i for i, name in enumerate(dataset_names(dataset))}
    unknown = [name for name in names if name not in position]
    if unknown:
        raise DataError(f"{len(unknown)} of {len(names)} names are not in {dataset!r}: {preview_names(unknown)}")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise DataError(f"names listed more than once: {preview_names(repeated)}")
    return Subset(dataset, [position[name] for name in names])


# --------------------------------------------------------------------------------------------------
# One entry point and batching
# --------------------------------------------------------------------------------------------------

def _split_file(split: Any) -> tuple[Path, str] | None:
    """``("file.json", "test")`` or ``"file.json:test"`` → (file, name); a plain name → None."""
    if split is None:
        return None
    if isinstance(split, (tuple, list)) and len(split) == 2:
        return Path(split[0]), str(split[1])
    if isinstance(split, str):
        head, sep, name = split.rpartition(":")
        if sep and head.lower().endswith(".json"):
            return Path(head), name
        if split.lower().endswith(".json"):
            raise DataError(f"split {split!r}: also name the part to use, e.g. '{split}:test'")
        return None
    raise DataError(f"split must be a name, 'file.json:name' or (file, name); got {split!r}")


def _lmdb_splits(folder: Path) -> list[str]:
    return sorted(p.name[len("LMDB_"):] for p in folder.glob("LMDB_*") if (p / "data.mdb").is_file())


def _open_path(path: Path, image_size: int, split: str | None) -> ImageDataset:
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if (path / "data.mdb").is_file():
        if split is not None:
            raise DataError(f"{path} is a single LMDB; split {split!r} needs a folder holding LMDB_{split}")
        return LMDBImages(path, image_size)
    try:
        layout = find_layout(path, split)
    except LayoutError as e:
        raise DataError(str(e)) from None
    if layout is not None:
        dataset = ImageFolder(layout.folder, image_size, recursive=layout.recursive)
        if layout.part is None:
            return dataset
        n_test = min(METFACES_TEST_SIZE, len(dataset))
        return take(dataset, start=len(dataset) - n_test) if layout.part == "test" else \
            take(dataset, len(dataset) - n_test)
    if path.is_dir():
        lmdb_splits = _lmdb_splits(path)
        if split is not None:
            if split in lmdb_splits:
                return LMDBImages(path / f"LMDB_{split}", image_size)
            if (path / split).is_dir():
                return ImageFolder(path, image_size, split=split)
            available = lmdb_splits + sorted(p.name for p in path.iterdir() if p.is_dir() and p.name[0] != ".")
            raise DataError(f"{path} has neither LMDB_{split} nor a subfolder {split!r} "
                            f"(available: {preview_names(available) or 'none'})")
        if lmdb_splits:
            raise DataError(f"{path} holds LMDBs for splits {', '.join(lmdb_splits)}: choose one with split=")
    elif split is not None:
        raise DataError(f"{path} is a single image; split {split!r} does not apply")
    return ImageFolder(path, image_size)


def open_images(spec: str | os.PathLike | Dataset, image_size: int, split: Any = None, n: int | None = None,
                start: int = 0) -> Dataset:
    """Open an image source as a dataset of item dicts.

    ``spec``: a folder of images (or one image file) → :class:`ImageFolder`; an AFHQ or MetFaces root → its images
    of ``split`` (see :mod:`asyrp.layouts`); an LMDB folder (has data.mdb) → :class:`LMDBImages`; a folder holding
    ``LMDB_train``/``LMDB_test`` → the LMDB named by ``split``; an existing dataset is used as it is.
    ``split``: a plain name ("train", "test": ``LMDB_<name>`` or the subfolder ``<name>``), or a split file and
    part, as ``"splits.json:test"`` or ``("splits.json", "test")``, selecting those names in the file's order.
    ``n``/``start``: then keep ``n`` items from ``start`` (see :func:`take`).
    """
    split_file = _split_file(split)
    folder_split = split if split_file is None else None
    if isinstance(spec, Dataset):
        if folder_split is not None:
            raise DataError(f"split {folder_split!r} only applies to a path; use a split file for a dataset")
        dataset = spec
    else:
        dataset = _open_path(Path(spec), image_size, folder_split)
    if split_file is not None:
        file, part = split_file
        parts = load_split(file)
        if part not in parts:
            raise DataError(f"split file {file} has no part {part!r} (it has: {', '.join(parts) or 'none'})")
        dataset = select(dataset, parts[part])
    if n is not None or start:
        dataset = take(dataset, n, start)
    return dataset


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors (``image``) and gather everything else into lists."""
    if not items:
        raise DataError("cannot collate an empty batch")
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if torch.is_tensor(values[0]) else values
    return batch


def batches(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Batches of ``dataset`` in its order (no shuffling; the last batch may be short)."""
    if batch_size <= 0:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=num_workers,
                      collate_fn=collate)
