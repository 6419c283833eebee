"""The attribute table: source / target texts and the reference settings per attribute (package data). The rules
that turn it into a run's texts and schedule are :mod:`asyrp.pipeline.run_record`'s."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from importlib import resources

import yaml



@dataclass(frozen=True)
class Attribute:
    name: str
    src: str
    trg: str
    domain: str = "celeba"          # LPIPS table for the automatic t_edit / t_boost
    t_edit: int | None = None       # None: from the LPIPS table and the CLIP text cosine
    t_boost: int | None = None
    clip_weight: float | None = None


class UnknownAttributeError(ValueError):
    pass


@functools.lru_cache(maxsize=None)
def attribute_table() -> dict[str, Attribute]:
    text = resources.files("asyrp.resources").joinpath("attributes.yaml").read_text()
    return {name: Attribute(name=name, **entry) for name, entry in yaml.safe_load(text)["attributes"].items()}


def get_attribute(name: str) -> Attribute:
    table = attribute_table()
    if name not in table:
        close = difflib.get_close_matches(name, table, n=4)
        hint = f"did you mean {', '.join(close)}?" if close else "see `asyrp train --list-attributes`"
        raise UnknownAttributeError(f"unknown attribute {name!r}; {hint} (or give free text with --src/--trg)")
    return table[name]


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")[:40] or "custom"
