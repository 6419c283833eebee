"""Writing a CelebA-HQ style LMDB exactly as the reference's ``prepare_lmdb_data.py`` does (files sorted by path,
(s, s) resize without crop, JPEG quality 100), but atomically: built in a hidden folder and renamed into place, so an
interrupted run leaves nothing under the output name. The reader is :class:`asyrp.io.datasets.LMDBImages`."""

from __future__ import annotations

import io
import multiprocessing
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import lmdb
from tqdm import tqdm

from asyrp.io.datasets import collect_images, lmdb_key
from asyrp.io.images import LMDB_FILES, RESAMPLE_FILTERS, DataError, decode_rgb, preview_names


def encode_image(path: str | os.PathLike, sizes: Sequence[int], resample: str = "bilinear",
                 quality: int = 100) -> list[bytes]:
    """The reference's record for one file: RGB, resized to (s, s) without crop, JPEG at ``quality``; per size."""
    img = decode_rgb(Path(path).read_bytes(), path)
    records = []
    for size in sizes:
        buffer = io.BytesIO()
        img.resize((size, size), RESAMPLE_FILTERS[resample]).save(buffer, format="JPEG", quality=quality)
        records.append(buffer.getvalue())
    return records


def _encode_task(task: tuple) -> list[bytes]:
    return encode_image(*task)


def _initial_map_size(n_images: int, sizes: Sequence[int]) -> int:
    # Quality-100 JPEGs of photos take well under half the raw RGB size; the map doubles if that is too little.
    # (The reference asked for 1 TiB.)
    return max(16 << 20, n_images * sum(3 * s * s for s in sizes) // 2 + (4 << 20))


def _put_all(env: lmdb.Environment, records: list[tuple[bytes, bytes]]) -> None:
    while True:
        try:
            with env.begin(write=True) as txn:  # aborted on error
                for key, value in records:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def _write_lmdb(folder: Path, files: list[Path], sizes: Sequence[int], resample: str, quality: int, workers: int,
                progress: bool) -> None:
    env = lmdb.open(str(folder), map_size=_initial_map_size(len(files), sizes), readahead=False, meminit=False)
    try:
        tasks = ((str(path), tuple(sizes), resample, quality) for path in files)
        pool = multiprocessing.Pool(workers) if workers > 0 else None
        try:
            encoded = pool.imap(_encode_task, tasks, chunksize=4) if pool else map(_encode_task, tasks)
            pending: list[tuple[bytes, bytes]] = []
            pending_bytes = 0
            for index, records in enumerate(tqdm(encoded, total=len(files), desc="prepare-lmdb", unit="img",
                                                 disable=not progress)):
                for size, record in zip(sizes, records):
                    pending.append((lmdb_key(size, index), record))
                    pending_bytes += len(record)
                if pending_bytes > (64 << 20):  # commit in chunks: few fsyncs, bounded memory
                    _put_all(env, pending)
                    pending, pending_bytes = [], 0
            pending.append((b"length", str(len(files)).encode()))
            _put_all(env, pending)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        env.sync(True)
    finally:
        env.close()


def _check_replaceable(out: Path, overwrite: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    if not out.is_dir() or out.is_symlink():
        raise DataError(f"{out} exists and is not an LMDB folder; refusing to replace it")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in LMDB_FILES)
    if foreign:  # never delete a folder of someone's files because of a mistyped OUT
        raise DataError(f"{out} does not look like an LMDB (it holds {preview_names(foreign)}); refusing to replace it")


def _parse_sizes(sizes: str | int | Iterable[int]) -> tuple[int, ...]:
    if isinstance(sizes, str):
        try:
            sizes = [int(s) for s in sizes.split(",") if s.strip()]
        except ValueError:
            raise DataError(f"sizes must be comma-separated integers, e.g. 256,1024; got {sizes!r}") from None
    elif isinstance(sizes, int):
        sizes = [sizes]
    sizes = tuple(int(s) for s in sizes)
    if not sizes or any(s <= 0 for s in sizes) or len(set(sizes)) != len(sizes):
        raise DataError(f"sizes must be distinct positive integers, got {sizes}")
    return sizes


def prepare_lmdb(src_folder: str | os.PathLike, out: str | os.PathLike, sizes: str | Iterable[int] = (256,),
                 resample: str = "bilinear", quality: int = 100, workers: int = 0, *, overwrite: bool = False,
                 recursive: bool = True, progress: bool = True) -> int:
    """Write the images under ``src_folder`` into a new CelebA-HQ style LMDB at ``out``; returns the image count.

    Files are sorted by relative path and numbered 0..N-1; each is converted to RGB, resized to (s, s) for every
    size with ``resample`` ("bilinear", the reference's default, or "lanczos"), encoded as JPEG at ``quality`` and
    stored under ``"{s}-{i:05d}"``; ``"length"`` holds N. The LMDB is built in a hidden folder beside ``out`` and
    renamed into place at the end, so an interrupted run leaves nothing under ``out``. ``workers`` > 0 encodes in
    that many processes.
    """
    src, out = Path(src_folder), Path(out)
    sizes = _parse_sizes(sizes)
    if resample not in RESAMPLE_FILTERS:
        raise DataError(f"resample must be one of {', '.join(RESAMPLE_FILTERS)}, got {resample!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise DataError(f"quality must be an integer in 1..100, got {quality!r}")
    if not src.is_dir():
        raise DataError(f"source folder {src} " + ("is not a folder" if src.exists() else "does not exist"))
    _check_replaceable(out, overwrite)
    files = [src / rel for rel in collect_images(src, recursive)]

    out.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir (not mkdtemp) so the final folder gets the usual umask permissions rather than 0700.
    partial = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(partial)
    try:
        _write_lmdb(partial, files, sizes, resample, quality, workers, progress)
        _check_replaceable(out, overwrite)  # again: OUT may have appeared while we worked
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(out, old)
            os.replace(partial, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, out)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return len(files)
