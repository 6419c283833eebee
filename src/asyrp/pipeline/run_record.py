"""The one record of what a run is: its texts, schedule (t_edit, t_boost, the training grid) and block config, and
the one place that resolves them.

A run's settings come from several sources — flags and config files, the attribute table, the LPIPS(P_t, x0) tables
of the backbone's domain, the CLIP cosine of the texts, the backbone's h-space — and every consumer needs the same
answer: training writes it, editing reads it back from the checkpoint, the study and the benchmark ask for it by
attribute. So the rules live here and nowhere else:

* texts: an attribute of the table by name, or free text (both ``src`` and ``trg``); explicit texts override;
* t_edit: the flag / config, else the attribute table, else the LPIPS table at ``lpips_edit_th`` × cos(T_src, T_trg)
  (as the original chooses it);
* t_boost: the flag / config, else the attribute table, else the backbone's LPIPS table at ``lpips_boost_th``; off,
  with the reason, for a backbone without one;
* the block: the configured kind (else the backbone's default) sized to the backbone's h (channels, spatial size,
  time-embedding width);
* for an edit: each direction's own record (its checkpoint's meta, else the attribute table; the official releases
  say their attribute and training steps only in the file name), several directions taking the largest t_edit.

:class:`RunRecord` is what ``config.json`` stores under ``"resolved"`` and (with the training counters) what
``delta.pt`` carries as its meta; :class:`DirectionRecord` is what an edit reads back from either.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from asyrp import diffusion as D
from asyrp.attributes import Attribute, UnknownAttributeError, attribute_table, get_attribute, slug
from asyrp.errors import UserError
from asyrp.models.delta import DeltaBlockConfig


# --------------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------------

def resolve_texts(attribute: str | None, src: str | None, trg: str | None) -> Attribute:
    """An attribute by name, or free text (``src`` and ``trg`` both given); explicit texts override the table's."""
    if attribute:
        base = get_attribute(attribute)
        return Attribute(**{**base.__dict__, "src": src or base.src, "trg": trg or base.trg})
    if not (src and trg):
        raise UnknownAttributeError("give an attribute (--attr smiling) or both texts (--src 'face' --trg 'goblin face')")
    return Attribute(name=slug(trg), src=src, trg=trg)


def choose_t_edit(given: int | None, table_value: int | None, text_cosine: Callable[[], float], domain: str,
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


def table_times(attribute: str) -> tuple[int, int | None]:
    """(t_edit, t_boost) of an attribute that the table gives both for (the benchmark's fixed setting)."""
    entry = get_attribute(attribute)
    if entry.t_edit is None:
        raise UserError(f"attribute {attribute!r} has no t_edit in the attribute table")
    return int(entry.t_edit), entry.t_boost


def block_config(delta: DeltaBlockConfig | None, unet) -> DeltaBlockConfig:
    """The configured block (else the backbone's default kind: ``adm`` on iDDPM / ADM U-Nets) sized to the U-Net's h."""
    kind = getattr(unet, "default_delta_kind", "conv")
    return dataclasses.replace(delta or DeltaBlockConfig(kind=kind), channels=unet.h_channels,
                               spatial_size=unet.h_size, temb_channels=unet.temb_ch)


# --------------------------------------------------------------------------------------------------
# Training: the record of a run
# --------------------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """What a training run derives from its config and models; ``config.json``'s ``"resolved"``."""
    attribute: str
    src: str
    trg: str
    t_edit: int
    t_boost: int | None
    text_cosine: float
    clip_weight: float
    clip_model: str
    backbone_sha256: str
    delta: dict
    training_steps: list = field(default_factory=list)
    t_edit_source: str = ""       # "flag/config", "attribute table" or "LPIPS table (celeba, x0_t, threshold … × cos …)"
    t_boost_source: str = ""      # the same, or "off: …" where the backbone has no LPIPS table

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def checkpoint_meta(self, cfg, state: dict) -> dict:
        """The meta a ``delta.pt`` carries: this record's texts and schedule, the run's grid and its counters."""
        return {"attribute": self.attribute, "src": self.src, "trg": self.trg, "t_edit": self.t_edit,
                "t_boost": self.t_boost, "t_edit_source": self.t_edit_source, "t_boost_source": self.t_boost_source,
                "n_train_step": cfg.n_train_step, "t_0": cfg.t_0, "backbone": cfg.backbone,
                "backbone_sha256": self.backbone_sha256, "clip_model": self.clip_model, "epochs": state["epoch"],
                "steps": state["step"], "images": state["images"]}


def resolve_training(cfg, backbone, clip) -> RunRecord:
    """The record of a training run of ``cfg`` (a TrainConfig) on ``backbone`` with ``clip`` (its ``text_cosine()``).

    t_edit: the config, else the attribute table, else the LPIPS(P_t, x0) table of the backbone's domain (the
    attribute's for a backbone without one) at lpips_edit_th × text cosine, as the original. t_boost: the config, else
    the attribute table, else the backbone's LPIPS table at lpips_boost_th; a backbone without a table (the shapes world,
    a U-Net file) has no automatic t_boost, and the run records why quality boosting is off.
    """
    attr = resolve_texts(cfg.attribute, cfg.src, cfg.trg)
    text_cosine = clip.text_cosine()
    t_edit, t_edit_source = choose_t_edit(cfg.t_edit, attr.t_edit, lambda: text_cosine,
                                          backbone.lpips_domain or attr.domain, cfg.lpips_edit_th)
    t_boost, t_boost_source = choose_t_boost(cfg.t_boost, attr.t_boost, backbone, cfg.lpips_boost_th,
                                             cfg.lpips_boost_table)
    clip_weight = cfg.clip_weight if cfg.clip_weight is not None else (attr.clip_weight or 1.0)
    steps = D.training_pairs(cfg.n_train_step, t_edit, cfg.t_0)
    return RunRecord(attr.name, attr.src, attr.trg, int(t_edit), t_boost, text_cosine, clip_weight,
                     cfg.clip_model or backbone.default_clip, backbone.fingerprint,
                     block_config(cfg.delta, backbone.unet).to_dict(), [list(p) for p in steps], t_edit_source,
                     t_boost_source)


# --------------------------------------------------------------------------------------------------
# Editing: a direction's record, read back
# --------------------------------------------------------------------------------------------------

@dataclass
class DirectionRecord:
    """What an edit knows of a trained direction: from its checkpoint's meta, else the attribute table."""
    attribute: str | None
    n_train_step: int
    t_edit: int | None
    t_boost: int | None
    t_edit_source: str = ""   # "checkpoint (…)", "attribute table"; filled by resolve_edit_times when derived
    t_boost_source: str = ""
    src: str | None = None    # the texts of the direction: an automatic t_edit needs their CLIP cosine
    trg: str | None = None
    t_0: int = D.T_0          # where its training inverted to: an edit inverts to the same t_0
    t_0_source: str = ""


def official_name(path: Path) -> tuple[str | None, int | None]:
    """(attribute, n_train_step) from an official release's file name, e.g. ``smiling_LC_…_ngen40_0.pth``."""
    m = re.match(r"(.+?)_LC_.*_ngen(\d+)_\d+\.pth$", Path(path).name)
    return (m.group(1), int(m.group(2))) if m else (None, None)


def _stored(meta: dict, entry: Attribute | None, key: str) -> tuple[int | None, str]:
    """(value, source) of t_edit / t_boost from a checkpoint's meta, else the attribute table, else (None, "")."""
    if meta.get(key) is not None:
        return int(meta[key]), f"checkpoint ({meta.get(key + '_source') or 'as trained'})"
    if entry is not None and getattr(entry, key) is not None:
        return int(getattr(entry, key)), "attribute table"
    return None, ""


def read_direction(meta: dict, path: str | Path, n_train_step: int | None = None) -> DirectionRecord:
    """The record of the direction at ``path`` whose checkpoint carries ``meta``; ``n_train_step`` overrides."""
    attr, n_train = meta.get("attribute"), meta.get("n_train_step")
    if meta.get("source_format") == "legacy":
        attr, n_train = official_name(Path(path))
    entry = attribute_table().get(attr)
    n_train = n_train_step or n_train
    if n_train is None:
        raise UserError(f"{path}: the checkpoint does not say how many training steps it used; give --n-train-step")
    t_edit, t_edit_source = _stored(meta, entry, "t_edit")
    t_boost, t_boost_source = _stored(meta, entry, "t_boost")
    t_0, t_0_source = (int(meta["t_0"]), "checkpoint") if meta.get("t_0") is not None else \
        (D.T_0, f"{D.T_0}: not in the checkpoint (the original's)")
    return DirectionRecord(attr, int(n_train), t_edit, t_boost, t_edit_source, t_boost_source,
                           meta.get("src") or (entry.src if entry else None),
                           meta.get("trg") or (entry.trg if entry else None), t_0, t_0_source)


def resolve_t_0(cfg, records: list, paths: list[str]) -> tuple[int, str]:
    """(t_0, source) of an edit: --t-0, else the t_0 its directions were trained with (they must agree: a block
    learnt Δh for the x_t of its own inversion, and an edit from another t_0 hands it other x_t)."""
    if cfg.t_0 is not None:
        return int(cfg.t_0), "flag/config"
    if not records:
        return D.T_0, "default"
    if len({d.t_0 for d in records}) > 1:
        named = ", ".join(f"{Path(p).name}: {d.t_0}" for d, p in zip(records, paths))
        raise UserError(f"the directions were trained with different t_0 ({named}); give --t-0")
    sources = {d.t_0_source for d in records}
    return records[0].t_0, sources.pop() if len(sources) == 1 else "checkpoints"


def resolve_edit_times(cfg, records: list, paths: list[str], backbone,
                       text_cosine: Callable[[int], float]) -> dict:
    """t_edit, t_boost and where each came from for an edit of ``cfg`` (an EditConfig) with these directions.

    t_edit: --t-edit, else the largest of the directions' (checkpoint or attribute table; a direction with neither —
    the released makeup and zombie — gets the LPIPS(P_t, x0) table of the backbone's domain at lpips_edit_th × the CLIP
    cosine of its texts, ``text_cosine(i)`` for direction i). Several directions: the largest t_edit, as the original
    takes the attribute with the largest text cosine. t_boost: --t-boost, else the first direction's, else the
    backbone's LPIPS table (off, with the reason, for a backbone without one, and with --no-boost). A derived t_edit is
    written back into its record.
    """
    if cfg.t_edit is not None:
        t_edit, t_edit_source = int(cfg.t_edit), "flag/config"
    else:
        chosen = []
        for i, (d, path) in enumerate(zip(records, paths)):
            if d.t_edit is None:
                if not (d.src and d.trg):
                    raise UserError(f"{path}: no t_edit in the checkpoint or the attribute table and no texts to "
                                    "derive it from; give --t-edit")
                if backbone.lpips_domain is None:
                    raise UserError(f"{path}: no t_edit in the checkpoint or the attribute table, and backbone "
                                    f"{backbone.name!r} has no LPIPS table to derive it from; give --t-edit")
                d.t_edit, d.t_edit_source = choose_t_edit(None, None, lambda i=i: text_cosine(i),
                                                          backbone.lpips_domain, cfg.lpips_edit_th)
            chosen.append((d.t_edit, d.t_edit_source))
        t_edit, t_edit_source = max(chosen, key=lambda c: c[0])
    stored = next((d for d in records if d.t_boost is not None), None)
    if cfg.t_boost is None and stored is not None:
        t_boost, t_boost_source = stored.t_boost, stored.t_boost_source
    else:
        t_boost, t_boost_source = choose_t_boost(cfg.t_boost, None, backbone, cfg.lpips_boost_th,
                                                 cfg.lpips_boost_table)
    if not cfg.boost:
        t_boost, t_boost_source = None, "off: --no-boost"
    return {"t_edit": t_edit, "t_edit_source": t_edit_source, "t_boost": t_boost, "t_boost_source": t_boost_source}
