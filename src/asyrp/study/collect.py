"""Reading a study's records: eval.json summaries, and results from edit folders given directly (``asyrp report
--run``, ``asyrp figures --run``). It reads the files a run leaves (edit.json, eval*.json, the training folder's
config.json / done.json / log.jsonl) and builds the document with :func:`asyrp.study.results.results_document`; a
family's results (:mod:`asyrp.study.family_results`) use the same eval summary. Nothing here imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asyrp.io.files import read_jsonl
from asyrp.study.results import EVAL_SCHEMA, METRIC_KEYS, read_json_checked, results_document


def _find_metric(ev: dict, metric: str, pair: tuple, group=None) -> dict | None:
    for m in ev.get("metrics", []):
        if m.get("metric") == metric and tuple(m.get("pair") or ()) == pair and m.get("group") == group:
            return m
    return None


def summarize_eval(ev: dict, group=None) -> dict:
    """The flat metrics of one eval JSON (one edited folder, one group)."""
    out: dict[str, Any] = {}
    n = None
    for source in ("original", "reconstructed"):
        m = _find_metric(ev, "s_dir", (source, "edited"), group)
        if m is not None:
            out[f"s_dir_{source}"] = m["mean"]
            out[f"s_dir_{source}_std"] = m["std"]
            out[f"s_dir_{source}_std_ddof0"] = m.get("std_ddof0")
            n = m["n"]
        loss = _find_metric(ev, "directional_clip_loss", (source, "edited"), group)
        if loss is not None:
            out[f"directional_clip_loss_{source}"] = loss["mean"]
    for a, b in (("original", "edited"), ("reconstructed", "edited"), ("original", "reconstructed")):
        for metric in ("fid", "kid"):
            m = _find_metric(ev, metric, (a, b), group)
            if m is not None:
                out[f"{metric}_{a}_{b}"] = m["mean"]
                if metric == "kid":
                    out[f"kid_{a}_{b}_std"] = m["std"]
                n = m["n"]
    out["n"] = n if n is not None else (ev.get("inputs") or {}).get("n_images")
    return out


def metrics_from_eval(ev: Mapping) -> dict:
    """The per-folder metric summary of results.json from an eval.json (whole image set, no group): the keys of
    :data:`asyrp.study.results.METRIC_KEYS`, None where the eval has no such metric, N from its image count."""
    summary = summarize_eval(dict(ev))
    out = {k: summary.get(k) for k in METRIC_KEYS if k != "n"}
    out["n"] = (ev.get("inputs") or {}).get("n_images")
    return out


def find_eval_files(edit_dir: str | Path) -> dict[str, str]:
    """{edited folder name: eval file} for every ``eval*.json`` of an edit folder."""
    found = {}
    for path in sorted(Path(edit_dir).glob("eval*.json")):
        ev = read_json_checked(path)
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
    record = read_json_checked(Path(edit_dir) / "edit.json") or {}
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
    config = read_json_checked(Path(train_dir) / "config.json") if train_dir else None
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
    done = read_json_checked(Path(train_dir) / "done.json")
    log = Path(train_dir) / "log.jsonl"
    lines = read_jsonl(log) if log.is_file() else []
    if done is None and not lines:
        return None
    return {**(done or {}), "log_lines": len(lines), "final_loss": lines[-1]["loss"] if lines else None}


def collect_folders(family: str, runs: Sequence[Mapping], config: Mapping | None = None,
                    config_path: str | None = None) -> dict:
    """Assemble an ``asyrp.results/1`` dict from run folders.

    Each run is ``{"name", "edit_dir", "train_dir"?, "tags"?, "eval_files"?}``; the train folder defaults to the
    folder of the edit's single direction, eval files to the edit folder's ``eval*.json``, and the tags given
    override the ones read from the files (:func:`infer_tags`).
    """
    out = []
    for spec in runs:
        edit_dir = str(spec["edit_dir"])
        record = read_json_checked(Path(edit_dir) / "edit.json")
        train_dir = spec.get("train_dir") or _train_dir_of(record)
        eval_files = dict(spec.get("eval_files") or find_eval_files(edit_dir))
        metrics = {}
        for folder, path in eval_files.items():
            ev = read_json_checked(Path(path))
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
    return results_document(family, out, config, config_path)



