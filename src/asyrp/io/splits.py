"""Named splits of an image set: ``{"train": [...], "test": [...]}`` (any split names), made reproducibly from the
names alone (sha256 ranking, no RNG), checked for overlap, saved and loaded as JSON."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

from asyrp.io.files import atomic_json
from asyrp.io.images import DataError, preview_names


# --------------------------------------------------------------------------------------------------
# Named splits
# --------------------------------------------------------------------------------------------------

def make_split(names: Iterable[str], test_size: int | float, seed: int = 0) -> dict[str, list[str]]:
    """Split ``names`` into sorted, disjoint ``train`` and ``test`` lists.

    ``test_size`` is a count (int) or a fraction in [0, 1] (float, rounded half up). Names are ranked by
    sha256(seed, name), so the split does not depend on Python's RNG or on the input order.
    """
    names = list(names)
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise DataError(f"names must be unique; repeated: {preview_names(repeated)}")
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
        raise DataError(f"test_size must be an int count or a float fraction, got {test_size!r}")
    if not isinstance(test_size, numbers.Integral):
        if not 0.0 <= test_size <= 1.0:
            raise DataError(f"a fractional test_size must lie in [0, 1], got {test_size}")
        n_test = math.floor(test_size * len(names) + 0.5)
    else:
        n_test = int(test_size)
    if not 0 <= n_test <= len(names):
        raise DataError(f"test_size={test_size} does not fit {len(names)} names")
    ranked = sorted(names, key=lambda name: hashlib.sha256(f"{seed}\0{name}".encode()).hexdigest())
    return {"train": sorted(ranked[n_test:]), "test": sorted(ranked[:n_test])}


def _check_split(split: Any, label: str) -> dict[str, list[str]]:
    if not isinstance(split, Mapping) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v)
            for k, v in split.items()):
        raise DataError(f"{label}: a split must map split names to lists of image names")
    owner: dict[str, str] = {}
    for part, names in split.items():
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        if repeated:
            raise DataError(f"{label}: split {part!r} lists names more than once: {preview_names(repeated)}")
        for name in names:
            if name in owner:  # a name in two splits would leak test images into training
                raise DataError(f"{label}: {name!r} is in both {owner[name]!r} and {part!r}")
            owner[name] = part
    return {part: list(names) for part, names in split.items()}


def save_split(path: str | os.PathLike, split: Mapping[str, list[str]]) -> None:
    """Write a split (``{"train": [...], "test": [...]}``, any split names) as JSON, atomically."""
    atomic_json(path, _check_split(split, str(path)))


def load_split(path: str | os.PathLike) -> dict[str, list[str]]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist") from None
    try:
        split = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"split file {path} is not valid JSON: {e}") from None
    return _check_split(split, str(path))
