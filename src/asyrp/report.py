"""Markdown tables of a study from its result files (``asyrp report``).

Inputs are the family files that ``asyrp run-experiment`` writes (``<root>/<family>/results.json``, schema
``asyrp.results/1``, read and checked by :func:`load_results`), edit folders given directly (``--run``; their
``eval*.json`` files are collected by :func:`collect_results`), and single ``eval.json`` files (``--eval``).

Tables (file ``<out>/<name>.md``, marker name ``<!-- asyrp:table <name> -->``):

``sdir_<family>``      S_dir per attribute (columns) and strength (rows), mean ± std (N), for families that vary
                       only the attribute / strength / step count (a reproduction); quoted anchors below
``fid_<family>``       FID(orig, edit), FID(recon, edit), FID(orig, recon), KID(orig, edit) per attribute and
                       strength, every cell with its N (N < 2048 flagged as biased); quoted anchors below
``bias_<family>``      the same metrics per image group (``evaluate --groups``), with the group sizes
``ablation_<family>``  one row per evaluated run and strength: the family's varied tags + every metric
``eval_<file stem>``   every metric of one eval.json
``anchors``            every published number we quote, with its source and its publishers' definition

Published numbers (``asyrp/resources/anchors.yaml``) only ever appear in rows labelled "quoted", below a separator,
with a footnote saying where they come from, what their definition is, and which faults of the earlier reproduction
affect them: they were not measured here and use other CLIPs, prompts, image counts and (for FID) a broken input.

``--into blogpost.md`` replaces what stands between ``<!-- asyrp:table NAME -->`` and ``<!-- /asyrp:table -->``
with the regenerated table, so a report includes its tables without hand edits.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from asyrp.cli import UserError
from asyrp.io import atomic_write_text, read_jsonl

RESULTS_SCHEMA = "asyrp.results/1"
EVAL_SCHEMA = "asyrp.eval/1"            # asyrp.metrics.SCHEMA (not imported: it pulls in torch)
FID_SMALL_N = 2048                      # asyrp.metrics.FID_SMALL_N: FID below it is biased upward
METRIC_KEYS = ("s_dir_original", "s_dir_original_std", "s_dir_reconstructed", "s_dir_reconstructed_std",
               "fid_original_edited", "fid_reconstructed_edited", "fid_original_reconstructed",
               "kid_original_edited", "kid_original_edited_std", "n")
# tags in the order a table or figure lists them; others follow alphabetically
# (design tags first: a later tag that an earlier one determines adds no column, see varied_tags)
TAG_ORDER = ("attribute", "official", "init_from", "kind", "heads", "layers", "ff_dim", "time_embedding", "norm",
             "activation", "dropout", "zero_init", "optimizer", "lr", "weight_decay", "momentum", "scheduler_step",
             "scheduler_gamma", "batch_size", "train_images", "l1_reference", "precision", "n_train_step", "epochs",
             "epoch", "n_test_step", "t_boost", "strength", "alpha")
# a family that varies only these is a reproduction (per-attribute tables); anything else is an ablation
REPRODUCTION_TAGS = frozenset({"attribute", "strength", "alpha", "n_test_step", "official"})
PER_RUN_TAGS = frozenset({"strengths", "interpolate"})  # a whole edit run's settings, replaced per folder
FID_NOTE = (f"† N < {FID_SMALL_N}: FID is biased upward at this N and only comparable at equal N; KID beside it is "
            "unbiased.")


class ResultsError(ValueError):
    """A results file that does not follow the ``asyrp.results/1`` schema (one-line message)."""


# --------------------------------------------------------------------------------------------------
# Reading results
# --------------------------------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is not valid JSON: {e}") from None


def _resolve(value: str | None, base: Path | None) -> str | None:
    """A relative path is looked up relative to the results file's folder (a portable study), then to its parent
    folders (a study written with paths relative to the folder holding ``runs/``), then to the cwd."""
    if value is None:
        return None
    path = Path(value)
    if path.is_absolute() or base is None:
        return str(path)
    for folder in (base, *base.parents):
        if (folder / path).exists():
            return str(folder / path)
    return str(path) if path.exists() else str(base / path)


def _is_number(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def validate_results(data: Any, base: str | Path | None = None, origin: str = "results") -> dict:
    """Check a results dict against ``asyrp.results/1``; returns a copy with defaults filled and paths resolved
    against ``base``. Raises :class:`ResultsError` naming ``origin`` and the offending field."""
    base = Path(base) if base is not None else None

    def fail(msg: str):
        raise ResultsError(f"{origin}: {msg}")

    if not isinstance(data, dict):
        fail(f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != RESULTS_SCHEMA:
        fail(f"schema is {data.get('schema')!r}, expected {RESULTS_SCHEMA!r} (a results.json of asyrp run-experiment)")
    if not isinstance(data.get("family"), str) or not data["family"]:
        fail("'family' must be a non-empty string")
    if not isinstance(data.get("runs"), list):
        fail("'runs' must be a list")
    out = copy.deepcopy(data)
    out.setdefault("config", {})
    out.setdefault("config_path", None)
    seen = set()
    for i, run in enumerate(out["runs"]):
        where = f"runs[{i}]"
        if not isinstance(run, dict):
            fail(f"{where} is not an object")
        if not isinstance(run.get("name"), str) or not run["name"]:
            fail(f"{where}.name must be a non-empty string")
        where = f"run {run['name']!r}"
        if run["name"] in seen:
            fail(f"{where} appears twice")
        seen.add(run["name"])
        run.setdefault("tags", {})
        run.setdefault("metrics", {})
        run.setdefault("eval_files", {})
        for key in ("train_dir", "log", "train_summary"):
            run.setdefault(key, None)
        if not isinstance(run["tags"], dict):
            fail(f"{where}: tags must be an object")
        if run.get("edit_dir") is not None and not isinstance(run["edit_dir"], str):
            fail(f"{where}: edit_dir must be a path string (or null for a run that was not edited)")
        run.setdefault("edit_dir", None)
        for key in ("train_dir", "log"):
            if run[key] is not None and not isinstance(run[key], str):
                fail(f"{where}: {key} must be a path string or null")
        if not isinstance(run["eval_files"], dict) or not all(isinstance(v, str) for v in run["eval_files"].values()):
            fail(f"{where}: eval_files must map edited folders to paths")
        if not isinstance(run["metrics"], dict):
            fail(f"{where}: metrics must map edited folders to metric objects")
        for folder, m in run["metrics"].items():
            if not isinstance(m, dict):
                fail(f"{where}: metrics[{folder!r}] is not an object")
            bad = sorted(k for k in METRIC_KEYS if k in m and not _is_number(m[k]))
            if bad:
                fail(f"{where}: metrics[{folder!r}] has non-numeric {', '.join(bad)}")
        run["edit_dir"] = _resolve(run["edit_dir"], base)
        run["train_dir"] = _resolve(run["train_dir"], base)
        run["log"] = _resolve(run["log"], base)
        run["eval_files"] = {k: _resolve(v, base) for k, v in run["eval_files"].items()}
    out["_source"] = origin
    return out


def load_results(path: str | Path) -> dict:
    """Read and check a results.json (see :func:`validate_results`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} not found")
    data = _read_json(path)
    return validate_results(data, base=path.parent, origin=str(path))


def as_results(obj: str | Path | Mapping) -> dict:
    """A results dict from a path or an (already loaded or freshly collected) dict."""
    if isinstance(obj, Mapping):
        return obj if obj.get("_source") else validate_results(dict(obj))
    return load_results(obj)


# --------------------------------------------------------------------------------------------------
# Collecting results from run folders (used by --run and by tests; asyrp run-experiment writes the same format)
# --------------------------------------------------------------------------------------------------

def metrics_from_eval(ev: Mapping) -> dict:
    """The per-folder metric summary of results.json from an eval.json (whole image set, no group)."""
    def pick(metric: str, pair: tuple[str, str]) -> dict:
        return next((m for m in ev.get("metrics", []) if m.get("metric") == metric and m.get("group") is None
                     and tuple(m.get("pair") or ()) == pair), {})

    s_o, s_r = pick("s_dir", ("original", "edited")), pick("s_dir", ("reconstructed", "edited"))
    kid = pick("kid", ("original", "edited"))
    return {"s_dir_original": s_o.get("mean"), "s_dir_original_std": s_o.get("std"),
            "s_dir_reconstructed": s_r.get("mean"), "s_dir_reconstructed_std": s_r.get("std"),
            "fid_original_edited": pick("fid", ("original", "edited")).get("mean"),
            "fid_reconstructed_edited": pick("fid", ("reconstructed", "edited")).get("mean"),
            "fid_original_reconstructed": pick("fid", ("original", "reconstructed")).get("mean"),
            "kid_original_edited": kid.get("mean"), "kid_original_edited_std": kid.get("std"),
            "n": (ev.get("inputs") or {}).get("n_images")}


def find_eval_files(edit_dir: str | Path) -> dict[str, str]:
    """{edited folder name: eval file} for every ``eval*.json`` of an edit folder."""
    found = {}
    for path in sorted(Path(edit_dir).glob("eval*.json")):
        ev = _read_json(path)
        if isinstance(ev, dict) and ev.get("schema") == EVAL_SCHEMA and ev.get("inputs", {}).get("edited"):
            found[Path(ev["inputs"]["edited"]).name] = str(path)
    return found


def _train_dir_of(record: Mapping | None) -> str | None:
    directions = (record or {}).get("directions") or []
    if len(directions) == 1:
        folder = Path(directions[0]["path"]).parent
        if (folder / "config.json").is_file():
            return str(folder)
    return None


def infer_tags(edit_dir: str | Path, train_dir: str | Path | None = None) -> dict:
    """Tags of a run from its files: the direction's architecture, the training config, the edit settings."""
    tags: dict[str, Any] = {}
    record = _read_json(Path(edit_dir) / "edit.json") or {}
    directions = record.get("directions") or []
    if len(directions) == 1:
        d = directions[0]
        tags["attribute"] = d.get("attribute")
        tags.update({k: v for k, v in (d.get("config") or {}).items()
                     if k in ("kind", "heads", "layers", "time_embedding", "norm", "activation")})
        name = Path(d.get("path", "")).name
        tags["official"] = bool(re.match(r".+_LC_.*\.pth$", name))
        m = re.match(r"delta_epoch(\d+)\.pt$", name)
        if m:
            tags["epoch"] = int(m.group(1))  # 0-based epoch index, as the file name (and asyrp run-experiment)
    elif directions:
        tags["attribute"] = "+".join(str(d.get("attribute")) for d in directions)
    if record:
        tags["n_test_step"] = (record.get("config") or {}).get("n_test_step")
        tags["strengths"] = [s.get("strength") for s in record.get("settings", [])]
    config = _read_json(Path(train_dir) / "config.json") if train_dir else None
    if config:
        cfg, res = config.get("config", {}), config.get("resolved", {})
        tags.setdefault("attribute", res.get("attribute"))
        for k in ("optimizer", "lr", "epochs", "init_from"):
            tags[k] = cfg.get(k)
        for k, v in (res.get("delta") or {}).items():
            if k in ("kind", "heads", "layers", "time_embedding", "norm", "activation"):
                tags.setdefault(k, v)
        if cfg.get("epochs"):
            tags.setdefault("epoch", cfg["epochs"] - 1)  # the final delta.pt: the last epoch's index
    return tags


def train_summary(train_dir: str | Path | None) -> dict | None:
    if not train_dir:
        return None
    done = _read_json(Path(train_dir) / "done.json")
    log = Path(train_dir) / "log.jsonl"
    lines = read_jsonl(log) if log.is_file() else []
    if done is None and not lines:
        return None
    return {**(done or {}), "log_lines": len(lines), "final_loss": lines[-1]["loss"] if lines else None}


def collect_results(family: str, runs: Sequence[Mapping], config: Mapping | None = None,
                    config_path: str | None = None) -> dict:
    """Assemble an ``asyrp.results/1`` dict from run folders.

    Each run is ``{"name", "edit_dir", "train_dir"?, "tags"?, "eval_files"?}``; the train folder defaults to the
    folder of the edit's single direction, eval files to the edit folder's ``eval*.json``, and the tags given
    override the ones read from the files (:func:`infer_tags`).
    """
    out = []
    for spec in runs:
        edit_dir = str(spec["edit_dir"])
        record = _read_json(Path(edit_dir) / "edit.json")
        train_dir = spec.get("train_dir") or _train_dir_of(record)
        eval_files = dict(spec.get("eval_files") or find_eval_files(edit_dir))
        metrics = {}
        for folder, path in eval_files.items():
            ev = _read_json(Path(path))
            if ev is None:
                raise FileNotFoundError(f"eval file {path} not found")
            metrics[folder] = metrics_from_eval(ev)
        log = Path(train_dir) / "log.jsonl" if train_dir else None
        out.append({"name": str(spec.get("name") or Path(edit_dir).name),
                    "tags": {**infer_tags(edit_dir, train_dir), **dict(spec.get("tags") or {})},
                    "train_dir": str(train_dir) if train_dir else None, "edit_dir": edit_dir,
                    "eval_files": {k: str(v) for k, v in eval_files.items()},
                    "log": str(log) if log is not None and log.is_file() else None,
                    "train_summary": train_summary(train_dir), "metrics": metrics})
    return {"schema": RESULTS_SCHEMA, "family": family, "config_path": config_path, "config": dict(config or {}),
            "runs": out}


# --------------------------------------------------------------------------------------------------
# Entries: one evaluated (or editable) folder of one run, with its per-folder tags
# --------------------------------------------------------------------------------------------------

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
        record = _read_json(edit_dir / "edit.json") or {}
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


# --------------------------------------------------------------------------------------------------
# Anchors (published numbers, quoted)
# --------------------------------------------------------------------------------------------------

def load_anchors(path: str | Path | None = None) -> dict:
    """The quoted numbers: the package's ``resources/anchors.yaml`` or another file of the same layout."""
    import yaml

    text = Path(path).read_text() if path else resources.files("asyrp.resources").joinpath("anchors.yaml").read_text()
    data = yaml.safe_load(text)
    for a in data["anchors"]:
        if a["source"] not in data["sources"]:
            raise ValueError(f"anchor {a['id']}: unknown source {a['source']!r}")
    return data


class _Footnotes:
    """Numbered footnotes for quoted rows: [A1] quoted from …; their definition: …; faults … (anchors that share
    source, definition and faults share one note)."""

    def __init__(self, anchors: Mapping):
        self.anchors, self.order = anchors, []

    @staticmethod
    def _key(anchor: Mapping) -> tuple:
        return anchor["source"], " ".join(anchor["definition"].split()), tuple(anchor.get("faults") or ())

    def ref(self, anchor: Mapping) -> str:
        key = self._key(anchor)
        if key not in self.order:
            self.order.append(key)
        return f"A{self.order.index(key) + 1}"

    def render(self) -> list[str]:
        lines = []
        for k, (source, definition, faults) in enumerate(self.order, 1):
            src = self.anchors["sources"][source]
            fault_text = "; ".join(f"{f}: {self.anchors['faults'][f]}" for f in faults)
            lines.append(f"- [A{k}] quoted from {src['citation']} ({src['where']}); their definition: {definition}"
                         + (f". Faults: {fault_text}" if fault_text else "") + ".")
        return lines


def _anchor_cell(anchor: Mapping, attribute: str) -> str:
    """value (std) as the publication printed it; ranges and lists are strings."""
    value = (anchor.get("values") or {}).get(attribute)
    if value is None:
        return ""
    digits = anchor.get("digits", 2)
    std = (anchor.get("std") or {}).get(attribute)
    text = f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)
    return text + (f" ({std:.{digits}f})" if std is not None else "")


def _anchor_rows(anchors: Mapping, table: str, attributes: Sequence[str], notes: _Footnotes) -> list[list[str]]:
    rows = []
    for a in anchors["anchors"]:
        if a["table"] != table or not any(attr in (a.get("values") or {}) for attr in attributes):
            continue
        n = f"N={a['n']}" if a.get("n") else "N unknown"
        label = f"quoted [{notes.ref(a)}]: {a['label']} ({n})"
        rows.append([label] + [_anchor_cell(a, attr) for attr in attributes])
    return rows


# --------------------------------------------------------------------------------------------------
# Markdown helpers
# --------------------------------------------------------------------------------------------------

def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(x, digits: int) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def sdir_cell(mean, std, n) -> str:
    if mean is None:
        return "—"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "") + (f" (N={n})" if n is not None else "")


def fid_cell(value, n) -> str:
    if value is None:
        return "—" if n is None else f"— (N={n})"
    flag = "†" if n is not None and n < FID_SMALL_N else ""
    return f"{value:.2f}" + (f" (N={n}{flag})" if n is not None else "")


def kid_cell(mean, std, n) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "") + (f" (N={n})" if n is not None else "")


def _definitions(items: Sequence[Entry], which: Sequence[str]) -> list[str]:
    """Our metric definitions as the eval files recorded them (with CLIP, prompts, Inception), else the package's."""
    found: dict[str, str] = {}
    settings: dict = {}
    for e in items:
        ev = _read_json(e.eval_file) if e.eval_file else None
        if not isinstance(ev, dict):
            continue
        settings = settings or ev.get("settings") or {}
        for m in ev.get("metrics", []):
            found.setdefault(m.get("metric"), m.get("definition"))
        if all(k in found for k in which):
            break
    if not all(found.get(k) for k in which):
        from asyrp.metrics import DEFINITIONS  # lazily: imports torch
        for k in which:
            found[k] = found.get(k) or DEFINITIONS[k]
    names = {"s_dir": "S_dir", "fid": "FID", "kid": "KID", "directional_clip_loss": "directional CLIP loss"}
    lines = [f"- {names.get(k, k)} (this study): {found[k]}" for k in which]
    if settings:
        clip = f"CLIP `{settings['clip_model']}` (text direction: {settings.get('prompt_mode')})" \
            if settings.get("clip_model") else "no CLIP (S_dir off)"
        inception = f"Inception `{settings['inception']}`" if settings.get("inception") else "no Inception (FID off)"
        lines.append(f"- Measured with {clip} and {inception}; N = images per set, paired by file name.")
    else:
        lines.append("- N = images per set, paired by file name.")
    return lines


def _row_key(e: Entry, tags: Sequence[str]) -> tuple:
    return tuple(value_sort_key(e.tags.get(t)) for t in tags)


def _row_label(e: Entry, tags: Sequence[str]) -> str:
    return ", ".join(format_tag(t, e.tags.get(t)) for t in tags)


def _attributes(items: Sequence[Entry], anchors: Mapping) -> list[str]:
    present = {str(e.tags.get("attribute")) for e in items}
    first = [a for a in anchors.get("attributes", []) if a in present]
    return first + sorted(present - set(first))


def _grouped(items: Sequence[Entry], row_tags: Sequence[str]) -> list[tuple[str, dict[str, Entry]]]:
    """[(row label, {attribute: entry})] sorted by the row tags; the first entry wins on a clash."""
    rows: dict[tuple, tuple[str, dict]] = {}
    for e in sorted(items, key=lambda e: (_row_key(e, row_tags), e.run, e.folder)):
        key = _row_key(e, row_tags)
        _, cells = rows.setdefault(key, (_row_label(e, row_tags) or "all runs", {}))
        cells.setdefault(str(e.tags.get("attribute")), e)
    return [rows[k] for k in sorted(rows)]


def _separator(ncols: int) -> list[str]:
    return ["**quoted — published numbers with other definitions, not measured here**"] + [""] * (ncols - 1)


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------

def sdir_table(results, anchors: Mapping | None = None) -> str | None:
    """S_dir per attribute (columns) × strength / step count (rows), mean ± std (N); quoted anchors below."""
    anchors = anchors or load_anchors()
    items = [e for e in entries(results) if e.metric("s_dir_original") is not None]
    if not items:
        return None
    row_tags = [t for t in varied_tags(items) if t != "attribute"] or ["strength"]
    attrs = _attributes(items, anchors)
    rows = []
    for label, cells in _grouped(items, row_tags):
        rows.append([f"S_dir original→edited, {label}"] + [
            sdir_cell(e.metric("s_dir_original"), e.metric("s_dir_original_std"), e.metric("n"))
            if (e := cells.get(a)) else "—" for a in attrs])
        rows.append([f"S_dir reconstructed→edited, {label}"] + [
            sdir_cell(e.metric("s_dir_reconstructed"), e.metric("s_dir_reconstructed_std"), e.metric("n"))
            if (e := cells.get(a)) else "—" for a in attrs])
    notes = _Footnotes(anchors)
    quoted = _anchor_rows(anchors, "sdir", attrs, notes)
    if quoted:
        rows += [_separator(len(attrs) + 1)] + quoted
    text = [markdown_table(["this study (mean ± std over images)"] + attrs, rows), ""]
    text += ["S_dir is a cosine: higher means the edit moved the image further along the text direction "
             "(the earlier reproduction printed 1 − cosine under this name).", ""]
    text += _definitions(items, ["s_dir"]) + notes.render()
    return "\n".join(text) + "\n"


def fid_table(results, anchors: Mapping | None = None) -> str | None:
    """FID(orig, edit), FID(recon, edit), FID(orig, recon) and KID(orig, edit) per attribute and strength."""
    anchors = anchors or load_anchors()
    items = [e for e in entries(results) if any(e.metric(k) is not None for k in
                                                 ("fid_original_edited", "fid_reconstructed_edited"))]
    if not items:
        return None
    row_tags = [t for t in varied_tags(items) if t != "attribute"] or ["strength"]
    attrs = _attributes(items, anchors)
    rows = []
    for label, cells in _grouped(items, row_tags):
        for name, key in (("FID(original, edited)", "fid_original_edited"),
                          ("FID(reconstructed, edited)", "fid_reconstructed_edited"),
                          ("FID(original, reconstructed)", "fid_original_reconstructed")):
            rows.append([f"{name}, {label}"] + [fid_cell(e.metric(key), e.metric("n")) if (e := cells.get(a)) else "—"
                                                for a in attrs])
        rows.append([f"KID(original, edited), {label}"] + [
            kid_cell(e.metric("kid_original_edited"), e.metric("kid_original_edited_std"), e.metric("n"))
            if (e := cells.get(a)) else "—" for a in attrs])
    notes = _Footnotes(anchors)
    quoted = _anchor_rows(anchors, "fid", attrs, notes)
    if quoted:
        rows += [_separator(len(attrs) + 1)] + quoted
    text = [markdown_table(["this study"] + attrs, rows), "", FID_NOTE, ""]
    text += _consistency_note(items) + _definitions(items, ["fid", "kid"]) + notes.render()
    return "\n".join(text) + "\n"


def _consistency_note(items: Sequence[Entry]) -> list[str]:
    """FID(orig, recon) depends only on the images and the sampler: different values at equal N and step count
    mean that the runs did not share images or pipeline (the earlier reproduction's F4)."""
    groups: dict[tuple, list[float]] = {}
    for e in items:
        v = e.metric("fid_original_reconstructed")
        if v is not None:
            groups.setdefault((e.metric("n"), e.tags.get("n_test_step")), []).append(v)
    lines = []
    for (n, steps), values in sorted(groups.items(), key=lambda kv: str(kv[0])):
        spread = max(values) - min(values)
        if spread > 1e-6 * max(1.0, abs(max(values))):
            lines.append(f"- Check: FID(original, reconstructed) at N={n}, {steps} steps ranges "
                         f"{min(values):.2f}–{max(values):.2f} across runs; it should be one value if all runs "
                         "edited the same images with the same sampler (boost noise and t_boost may differ).")
    return lines + ([""] if lines else [])


def _eval_groups(e: Entry) -> tuple[dict, list]:
    ev = _read_json(e.eval_file) if e.eval_file else None
    if not isinstance(ev, dict):
        return {}, []
    return ev.get("groups") or {}, ev.get("metrics") or []


def bias_table(results, anchors: Mapping | None = None) -> str | None:
    """Metrics per image group (evaluate --groups), each row with its group size; quoted anchors below."""
    anchors = anchors or load_anchors()
    items = [e for e in entries(results) if _eval_groups(e)[0]]
    if not items:
        return None
    row_tags = [t for t in varied_tags(items) if t != "attribute"]
    attrs = _attributes(items, anchors)
    by_attr_group: dict[tuple, dict] = {}
    group_sizes: dict[str, set] = {}
    for e in items:
        groups, metrics = _eval_groups(e)
        for g, size in groups.items():
            group_sizes.setdefault(g, set()).add(size)
            for m in metrics:
                if m.get("group") == g:
                    key = (_row_key(e, row_tags), g, m["metric"], tuple(m.get("pair") or ()))
                    by_attr_group.setdefault(key, {"label": _row_label(e, row_tags)})
                    by_attr_group[key].setdefault(str(e.tags.get("attribute")), m)
    rows = []
    shown = (("S_dir original→edited", "s_dir", ("original", "edited")),
             ("FID(original, edited)", "fid", ("original", "edited")),
             ("FID(reconstructed, edited)", "fid", ("reconstructed", "edited")))
    row_keys = sorted({(k[0], k[1]) for k in by_attr_group}, key=lambda k: (k[0], str(k[1])))
    for rk, g in row_keys:
        for name, metric, pair in shown:
            cells = by_attr_group.get((rk, g, metric, pair))
            if not cells:
                continue
            sizes = "/".join(str(s) for s in sorted(group_sizes[g]))
            label = f"{name}, group {g} (n={sizes})" + (f", {cells['label']}" if cells["label"] else "")
            row = [label]
            for a in attrs:
                m = cells.get(a)
                if m is None:
                    row.append("—")
                elif metric == "s_dir":
                    row.append(sdir_cell(m.get("mean"), m.get("std"), m.get("n")))
                else:
                    row.append(fid_cell(m.get("mean"), m.get("n")))
            rows.append(row)
    notes = _Footnotes(anchors)
    quoted = _anchor_rows(anchors, "bias", attrs, notes)
    if quoted:
        rows += [_separator(len(attrs) + 1)] + quoted
    text = [markdown_table(["this study, per image group"] + attrs, rows), "",
            "Group sizes n are the numbers of evaluated images in each group; FID across groups of different n is "
            "not comparable (its bias grows as n shrinks).", FID_NOTE, ""]
    text += _definitions(items, ["s_dir", "fid"]) + notes.render()
    return "\n".join(text) + "\n"


ABLATION_COLUMNS = (("S_dir orig→edit", "sdir_o"), ("S_dir recon→edit", "sdir_r"),
                    ("FID(orig, edit)", "fid_original_edited"), ("FID(recon, edit)", "fid_reconstructed_edited"),
                    ("FID(orig, recon)", "fid_original_reconstructed"), ("KID(orig, edit)", "kid"), ("N", "n"))


def ablation_table(results, anchors: Mapping | None = None) -> str | None:
    """One row per evaluated run and strength: the family's varied tags, then every metric."""
    anchors = anchors or load_anchors()
    items = [e for e in entries(results) if any(e.metric(k) is not None for k in METRIC_KEYS if k != "n")]
    if not items:
        return None
    tags = varied_tags(items)
    rows = []
    for e in sorted(items, key=lambda e: (_row_key(e, tags), e.run, e.folder)):
        n = e.metric("n")
        cells = {"sdir_o": sdir_cell(e.metric("s_dir_original"), e.metric("s_dir_original_std"), None),
                 "sdir_r": sdir_cell(e.metric("s_dir_reconstructed"), e.metric("s_dir_reconstructed_std"), None),
                 "kid": kid_cell(e.metric("kid_original_edited"), e.metric("kid_original_edited_std"), None),
                 "n": format_value(n)}
        for key in ("fid_original_edited", "fid_reconstructed_edited", "fid_original_reconstructed"):
            value = e.metric(key)
            small = n is not None and n < FID_SMALL_N
            cells[key] = "—" if value is None else f"{value:.2f}" + ("†" if small else "")
        rows.append([e.run] + [format_value(e.tags.get(t)) for t in tags] + [cells[k] for _, k in ABLATION_COLUMNS])
    fixed = {k: v for k, v in constant_tags(items).items() if k in TAG_ORDER}
    text = [markdown_table(["run"] + tags + [h for h, _ in ABLATION_COLUMNS], rows), ""]
    if fixed:
        text += ["Fixed in this family: " + ", ".join(f"{k}={format_value(v)}" for k, v in fixed.items()) + ".", ""]
    dependent = dependent_tags(items)
    if dependent:
        text += ["Also differ, together with the columns above: " + ", ".join(
            f"{k} ({' / '.join(sorted({format_value(e.tags.get(k)) for e in items}))})" for k in dependent) + ".", ""]
    text += [FID_NOTE, ""] + _consistency_note(items) + _definitions(items, ["s_dir", "fid", "kid"])
    notes = _Footnotes(anchors)
    attrs = _attributes(items, anchors)
    quoted = _anchor_rows(anchors, "ablation", attrs, notes)
    if quoted:
        text += ["", "Quoted for orientation (published numbers with other definitions, not measured here; not "
                 "comparable with the rows above):", "", markdown_table(["quoted"] + attrs, quoted), ""]
        text += notes.render()
    return "\n".join(text) + "\n"


def eval_table(ev: Mapping | str | Path) -> str:
    """Every metric of one eval.json (whole set and groups), with N, std and the models used."""
    if not isinstance(ev, Mapping):
        path = Path(ev)
        ev = _read_json(path)
        if not isinstance(ev, dict) or ev.get("schema") != EVAL_SCHEMA:
            raise ResultsError(f"{path} is not an {EVAL_SCHEMA} file (asyrp evaluate's output)")
    rows = []
    for m in ev.get("metrics", []):
        n, mean, metric = m.get("n"), m.get("mean"), m.get("metric")
        value = _num(mean, 2 if metric == "fid" else 4)
        if metric == "fid" and n is not None and n < FID_SMALL_N and mean is not None:
            value += "†"
        rows.append([metric, "→".join(m.get("pair") or []), format_value(m.get("group")) if m.get("group") else "all",
                     format_value(n), value, _num(m.get("std"), 4), format_value(m.get("model")),
                     format_value(m.get("prompt_mode"))])
    definitions = {}
    for m in ev.get("metrics", []):
        definitions.setdefault(m.get("metric"), m.get("definition"))
    text = [markdown_table(["metric", "pair", "group", "N", "mean", "std", "model", "prompt mode"], rows), "",
            FID_NOTE, ""]
    text += [f"- {k}: {v}" for k, v in definitions.items() if v]
    if ev.get("groups"):
        text.append("- group sizes: " + ", ".join(f"{g} n={s}" for g, s in ev["groups"].items()))
    return "\n".join(text) + "\n"


def eval_table_name(ev: Mapping | str | Path, index: int = 0) -> str:
    """``eval_<edit folder>`` for ``<edit folder>/eval.json``, ``eval_<edit folder>_<edited folder>`` for
    ``eval_<edited folder>.json`` (the names asyrp evaluate writes), ``eval_<index>`` for an in-memory dict."""
    if isinstance(ev, Mapping):
        return f"eval_{index}"
    path = Path(ev)
    rest = path.stem[len("eval"):].lstrip("_") if path.stem.startswith("eval") else path.stem
    return "_".join(slug(x) for x in ("eval", path.resolve().parent.name, rest) if x)


def anchors_table(anchors: Mapping | None = None) -> str:
    """Every quoted number, one row each, with numbered sources and definitions."""
    anchors = anchors or load_anchors()
    notes = _Footnotes(anchors)
    attrs = list(anchors.get("attributes", []))
    rows = []
    for a in anchors["anchors"]:
        strength = "?" if a.get("strength") is None else f"{a['strength']:g}"
        n = "unknown" if a.get("n") is None else str(a["n"])
        group = f", group {a['group']}" if a.get("group") else ""
        rows.append([f"quoted [{notes.ref(a)}]: {a['label']}{group}", a["metric"], strength, n]
                    + [_anchor_cell(a, attr) or "—" for attr in attrs])
    text = [markdown_table(["quoted number", "closest metric here", "strength", "N"] + attrs, rows), "",
            "None of these numbers was measured by this package; their definitions differ from ours (see the notes).",
            ""]
    return "\n".join(text + notes.render()) + "\n"


def build_tables(results_list: Iterable = (), evals: Iterable = (), anchors: Mapping | None = None) -> dict[str, str]:
    """{table name: markdown} for every table the inputs support (names as in the module docstring)."""
    anchors = anchors or load_anchors()
    tables: dict[str, str] = {}
    for results in results_list:
        results = as_results(results)
        family = slug(results["family"])
        items = entries(results)
        if not items:
            continue
        if family_style(items) == "reproduction":
            makers = (("sdir", sdir_table), ("fid", fid_table), ("bias", bias_table))
        else:
            makers = (("ablation", ablation_table), ("bias", bias_table))
        for prefix, make in makers:
            table = make(results, anchors)
            if table:
                tables[f"{prefix}_{family}"] = table
    for k, ev in enumerate(evals):
        tables[eval_table_name(ev, k)] = eval_table(ev)
    tables["anchors"] = anchors_table(anchors)
    return tables


MARKER = re.compile(r"(<!--\s*asyrp:table\s+([A-Za-z0-9_.+-]+)\s*-->)(.*?)(<!--\s*/asyrp:table\s*-->)", re.S)


def replace_blocks(text: str, tables: Mapping[str, str]) -> tuple[str, list[str], list[str]]:
    """Replace the content of every ``<!-- asyrp:table NAME -->`` … ``<!-- /asyrp:table -->`` block whose NAME is
    a table; returns (new text, replaced names, names without a table — left unchanged)."""
    replaced, missing = [], []

    def sub(m: re.Match) -> str:
        name = m.group(2)
        if name not in tables:
            missing.append(name)
            return m.group(0)
        replaced.append(name)
        return f"{m.group(1)}\n\n{tables[name].strip()}\n\n{m.group(4)}"  # blank lines: Markdown blocks

    return MARKER.sub(sub, text), replaced, missing


# --------------------------------------------------------------------------------------------------
# CLI: asyrp report
# --------------------------------------------------------------------------------------------------

def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", action="append", default=[], metavar="RESULTS_JSON",
                   help="a family's results.json (asyrp run-experiment); repeat for several families")
    p.add_argument("--run", action="append", default=[], metavar="EDIT_DIR",
                   help="an edit folder with its eval*.json files, used directly (repeat; one family)")
    p.add_argument("--family", default="runs", help="family name of the --run folders (default: runs)")
    p.add_argument("--eval", action="append", default=[], metavar="EVAL_JSON",
                   help="an eval.json of asyrp evaluate: a table of all its metrics")
    p.add_argument("--anchors", help="YAML of quoted numbers (default: the package's anchors.yaml)")
    p.add_argument("--out", help="folder: one <table>.md per table")
    p.add_argument("--into", metavar="MARKDOWN",
                   help="replace the blocks <!-- asyrp:table NAME --> … <!-- /asyrp:table --> of this file")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these tables")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")


def main(args: argparse.Namespace) -> int:
    if not (args.results or args.run or args.eval):
        raise UserError("nothing to report: give --results RESULTS_JSON, --run EDIT_DIR or --eval EVAL_JSON")
    results_list = [load_results(p) for p in args.results]
    if args.run:
        runs = [{"name": Path(d).name, "edit_dir": d} for d in args.run]
        for d in args.run:
            if not Path(d).is_dir():
                raise FileNotFoundError(f"edit folder {d} not found")
        results_list.append(validate_results(collect_results(args.family, runs), origin="--run folders"))
    tables = build_tables(results_list, args.eval, load_anchors(args.anchors))
    if args.only:
        unknown = sorted(set(args.only) - set(tables))
        if unknown:
            raise UserError(f"no table named {', '.join(unknown)}; these inputs give: {', '.join(tables)}")
        tables = {k: v for k, v in tables.items() if k in args.only}
    if args.out:
        for name, table in tables.items():
            atomic_write_text(Path(args.out) / f"{name}.md", table)
    if args.into:
        target = Path(args.into)
        if not target.is_file():
            raise FileNotFoundError(f"{target} not found (--into edits an existing Markdown file)")
        text, replaced, missing = replace_blocks(target.read_text(), tables)
        atomic_write_text(target, text)
        print(f"{target}: replaced {len(replaced)} table block(s)" + (f": {', '.join(replaced)}" if replaced else ""),
              file=sys.stderr)
        if missing:
            print(f"{target}: no table for marker(s) {', '.join(missing)}; left unchanged", file=sys.stderr)
    if not args.quiet:
        for name, table in tables.items():
            print(f"<!-- {name} -->\n{table}")
    if args.out:
        print(f"wrote {len(tables)} table(s) to {args.out}", file=sys.stderr)
    return 0
