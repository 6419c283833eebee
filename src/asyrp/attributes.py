"""The attribute table: source / target texts and the reference settings per attribute (package data)."""

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


def resolve_texts(attribute: str | None, src: str | None, trg: str | None) -> Attribute:
    """An attribute by name, or free text (``src`` and ``trg`` both given); explicit texts override the table's."""
    if attribute:
        base = get_attribute(attribute)
        return Attribute(**{**base.__dict__, "src": src or base.src, "trg": trg or base.trg})
    if not (src and trg):
        raise UnknownAttributeError("give an attribute (--attr smiling) or both texts (--src 'face' --trg 'goblin face')")
    return Attribute(name=_slug(trg), src=src, trg=trg)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")[:40] or "custom"
