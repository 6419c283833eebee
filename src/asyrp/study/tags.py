"""Entries and tags: one edited folder of one run with the tags that describe it, and which tags a family varies.
Tables and figures both group and label by these."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asyrp.study.results import as_results, read_json_checked

# tags in the order a table or figure lists them; others follow alphabetically
# (design tags first: a later tag that an earlier one determines adds no column, see varied_tags)
TAG_ORDER = ("attribute", "official", "init_from", "kind", "heads", "layers", "ff_dim", "time_embedding", "norm",
             "activation", "dropout", "zero_init", "optimizer", "lr", "weight_decay", "momentum", "scheduler_step",
             "scheduler_gamma", "batch_size", "train_images", "l1_reference", "precision", "n_train_step", "epochs",
             "epoch", "n_test_step", "t_boost", "strength", "alpha")
# a family that varies only these is a reproduction (per-attribute tables); anything else is an ablation
REPRODUCTION_TAGS = frozenset({"attribute", "strength", "alpha", "n_test_step", "official"})
PER_RUN_TAGS = frozenset({"strengths", "interpolate"})  # a whole edit run's settings, replaced per folder


@dataclass
class Entry:
    family: str
    run: str
    tags: dict
    edit_dir: Path
    folder: str
    metrics: dict = field(default_factory=dict)
    eval_file: Path | None = None
    train_dir: Path | None = None
    log: Path | None = None

    def metric(self, key: str):
        return self.metrics.get(key)


def _folder_tags(folder: str, setting: Mapping | None, run_tags: Mapping) -> dict:
    """strength (or alpha) of one edited folder: from edit.json, the folder label, or the run's tags."""
    if setting is not None:
        if "alpha" in setting:
            return {"alpha": setting["alpha"]}
        if "strength" in setting:
            return {"strength": setting["strength"]}
    m = re.fullmatch(r"edited_s([+-]?\d+(?:\.\d+)?)", folder)
    if m:
        return {"strength": float(m.group(1))}
    m = re.fullmatch(r"edited_a([+-]?\d+(?:\.\d+)?)", folder)
    if m:
        return {"alpha": float(m.group(1))}
    if isinstance(run_tags.get("strength"), (int, float)):
        return {"strength": run_tags["strength"]}
    strengths = run_tags.get("strengths")
    if isinstance(strengths, list) and len(strengths) == 1 and isinstance(strengths[0], (int, float)):
        return {"strength": strengths[0]}
    return {"strength": 1.0}


def entries(results: str | Path | Mapping) -> list[Entry]:
    """Every edited folder of every run of a family (evaluated or not), with ``strength`` / ``alpha`` as tags."""
    results = as_results(results)
    out = []
    for run in results["runs"]:
        if run["edit_dir"] is None:  # trained but not edited: nothing to show or tabulate
            continue
        edit_dir = Path(run["edit_dir"])
        record = read_json_checked(edit_dir / "edit.json") or {}
        settings = {s.get("folder"): s for s in record.get("settings", []) if isinstance(s, dict)}
        folders = list(run["metrics"]) + [f for f in settings if f not in run["metrics"]]
        if not folders and edit_dir.is_dir():
            folders = sorted(p.name for p in edit_dir.iterdir() if p.is_dir() and p.name.startswith("edited"))
        for folder in folders:
            tags = {k: v for k, v in run["tags"].items() if k not in ("strength",)}
            tags.update(_folder_tags(folder, settings.get(folder), run["tags"]))
            ev = run["eval_files"].get(folder)
            out.append(Entry(results["family"], run["name"], tags, edit_dir, folder,
                             dict(run["metrics"].get(folder) or {}),
                             Path(ev) if ev else None, Path(run["train_dir"]) if run["train_dir"] else None,
                             Path(run["log"]) if run["log"] else None))
    return out


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def tag_sort_key(tag: str) -> tuple:
    return (TAG_ORDER.index(tag), "") if tag in TAG_ORDER else (len(TAG_ORDER), tag)


def value_sort_key(value) -> tuple:
    """Numbers numerically, then strings, then None."""
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    if value is None:
        return (3, "")
    return (2, str(value))


def _determined(items: Sequence[Entry], tag: str, by: Sequence[str]) -> bool:
    """Whether the value of ``tag`` is a function of the values of ``by`` over these entries."""
    if not by:
        return False
    seen: dict[tuple, str] = {}
    for e in items:
        value = _key(e.tags.get(tag))
        if seen.setdefault(tuple(_key(e.tags.get(t)) for t in by), value) != value:
            return False
    return True


def varied_tags(items: Sequence[Entry]) -> list[str]:
    """Tags whose value differs between entries and is not already fixed by an earlier varied tag (ordered as
    :data:`TAG_ORDER`, then alphabetically): the texts and t_edit of an attribute, the "final" flag of the last
    epoch or the epoch of a released checkpoint (None) add no column of their own."""
    names = sorted({k for e in items for k in e.tags if k not in PER_RUN_TAGS}, key=tag_sort_key)
    kept: list[str] = []
    for name in names:
        if len({_key(e.tags.get(name)) for e in items}) > 1 and not _determined(items, name, kept):
            kept.append(name)
    return kept


def dependent_tags(items: Sequence[Entry]) -> list[str]:
    """Design tags (:data:`TAG_ORDER`) that differ between entries but are fixed by the varied tags (e.g. the
    epochs of a transfer run that trains for fewer epochs)."""
    kept = set(varied_tags(items))
    return [k for k in TAG_ORDER if k not in kept and len({_key(e.tags.get(k)) for e in items}) > 1]


def constant_tags(items: Sequence[Entry]) -> dict:
    """Tags with one value over all entries."""
    names = sorted({k for e in items for k in e.tags if k not in PER_RUN_TAGS}, key=tag_sort_key)
    return {k: items[0].tags.get(k) for k in names if len({_key(e.tags.get(k)) for e in items}) == 1}


def family_style(items: Sequence[Entry]) -> str:
    """"reproduction" when only the attribute, strength, step count or official-ness vary, else "ablation"."""
    return "reproduction" if set(varied_tags(items)) <= REPRODUCTION_TAGS else "ablation"


def format_tag(tag: str, value) -> str:
    if tag == "strength" and isinstance(value, (int, float)):
        return f"s={value:+.2f}"
    if tag == "alpha" and isinstance(value, (int, float)):
        return f"α={value:.2f}"
    if isinstance(value, float):
        return f"{tag}={value:g}"
    return f"{tag}={'none' if value is None else value}"


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "—" if value is None else str(value)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)).strip("_") or "family"


