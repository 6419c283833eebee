"""The attribute table: source / target texts and the reference settings per attribute (package data), and the rule
that chooses t_edit / t_boost where the table has none (:func:`choose_t_edit`, :func:`choose_t_boost`)."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from importlib import resources

import yaml

from asyrp import diffusion as D
from asyrp.errors import UserError


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


def choose_t_edit(given: int | None, table_value: int | None, text_cosine, domain: str,
                  lpips_edit_th: float) -> tuple[int, str]:
    """(t_edit, source): ``given`` (flag or config), else ``table_value`` (attribute table), else the LPIPS table of
    ``domain`` at lpips_edit_th × ``text_cosine()`` (a callable: editing loads CLIP only when it is needed)."""
    if given is not None:
        return int(given), "flag/config"
    if table_value is not None:
        return int(table_value), "attribute table"
    try:
        return D.t_edit_from_table(text_cosine(), domain, lpips_edit_th)
    except ValueError as e:
        raise UserError(f"cannot choose t_edit automatically ({e}); give --t-edit") from None


def choose_t_boost(given: int | None, table_value: int | None, backbone, lpips_boost_th: float,
                   lpips_boost_table: str) -> tuple[int | None, str]:
    """(t_boost, source): ``given``, else ``table_value``, else the backbone's LPIPS table; None (boosting off, with
    the reason) for a backbone without an LPIPS table."""
    if given is not None:
        return int(given), "flag/config"
    if table_value is not None:
        return int(table_value), "attribute table"
    if backbone.lpips_domain is None:
        return None, f"off: backbone {backbone.name!r} has no LPIPS table (give --t-boost to boost)"
    try:
        return D.t_boost_from_table(backbone.lpips_domain, lpips_boost_th, lpips_boost_table)
    except ValueError as e:
        raise UserError(f"cannot choose t_boost automatically ({e}); give --t-boost") from None
