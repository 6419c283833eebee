"""The folder layouts of the AFHQ and MetFaces downloads, recognised so that ``--data`` can name the dataset's root.

* AFHQ (``afhq/{train,val}/{cat,dog,wild}/*.jpg``; Asyrp's loader reads ``{train,test}/dog``): a split is required
  (the root mixes splits and species) and the images are those of ``<split>/dog`` (``<split>/cat`` etc. by naming
  the folder itself, or with ``--split train/cat``).
* MetFaces (``metfaces/images/*.png``, maybe beside ``unprocessed/`` and ``metfaces.json``; a root with no other
  image files or folders): the aligned images in ``images/``. The original kept the last 500 files of its listing
  as the test set; here ``test`` is the last 500 in sorted order and ``train`` the rest.

:func:`find_layout` only looks at folder names (nothing is decoded); :func:`asyrp.io.datasets.open_images` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

AFHQ_SPECIES = ("cat", "dog", "wild")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
AFHQ_DEFAULT_SPECIES = "dog"  # the only AFHQ backbone of Asyrp
METFACES_TEST_SIZE = 500


class LayoutError(ValueError):
    """A dataset root used in a way its layout does not allow; the one-line message says what to give."""


@dataclass(frozen=True)
class Layout:
    name: str             # "afhq" | "metfaces"
    folder: Path          # the folder whose images are used (not recursed into for MetFaces)
    recursive: bool
    part: str | None = None  # MetFaces: "train" / "test" (last METFACES_TEST_SIZE sorted files), None = all


def _is_afhq_split(folder: Path) -> bool:
    return folder.is_dir() and (folder / AFHQ_DEFAULT_SPECIES).is_dir() and \
        all((folder / s).is_dir() for s in AFHQ_SPECIES if (folder / s).exists())


def find_layout(path: Path, split: str | None) -> Layout | None:
    """The AFHQ or MetFaces layout at ``path`` (its root), or None for any other folder."""
    if not path.is_dir():
        return None
    afhq_splits = sorted(p.name for p in path.iterdir() if p.is_dir() and _is_afhq_split(p))
    if afhq_splits:
        if split is None:
            raise LayoutError(f"{path} is an AFHQ root ({', '.join(afhq_splits)}): choose a split with --split "
                              f"{afhq_splits[0]} (its {AFHQ_DEFAULT_SPECIES} images are used)")
        if split in afhq_splits:
            return Layout("afhq", path / split / AFHQ_DEFAULT_SPECIES, recursive=False)
        return None  # e.g. split "train/cat": a plain subfolder
    others = [p for p in path.iterdir() if p.name not in ("images", "unprocessed") and not p.name.startswith(".")
              and (p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES)]
    if (path / "images").is_dir() and not others:
        if split not in (None, "train", "test"):
            return None
        return Layout("metfaces", path / "images", recursive=False, part=split)
    return None
