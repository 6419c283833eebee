"""Collecting a study's results: from a family's run folders (what ``asyrp run-experiment`` writes) or from edit
folders given directly (``asyrp report --run``). Both read the same files (edit.json, eval*.json, the training
folder's config.json / done.json / log.jsonl) and build the document with :func:`asyrp.study.results.results_document`.

Metrics appear only from evaluations that are current (newer than the edit, same settings), so a family's
results.json always describes the family file as it is. The delta-block architecture is never a command-line default:
it is rebuilt from the checkpoint and the collector asserts that the evaluated block equals the trained one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asyrp import config as C
from asyrp.io import read_jsonl
from asyrp.models.delta import DeltaBlockConfig
from asyrp.study.families import EditJob, ExperimentError, Family, Run, ref_label
from asyrp.study.results import EVAL_SCHEMA, METRIC_KEYS, read_json_checked, results_document
from asyrp.study.state import eval_path, eval_state, read_json

ARCH_FIELDS = ("kind", "heads", "layers", "ff_dim", "time_embedding", "norm", "activation", "dropout", "zero_init")

def _ref_epoch(run: Run) -> int | None:
    """The epoch of the checkpoint an untrained run edits with (None: a released or external one)."""
    ref = run.direction_ref
    if ref is None:
        return None
    if ref.get("epoch") is not None:
        return ref["epoch"]
    src = run.source
    return src.train.epochs - 1 if src is not None and src.train is not None else None


def config_tags(run: Run, job: EditJob) -> dict:
    """What the config says about a run (the collector adds what the checkpoints say)."""
    ecfg = job.config
    tags: dict[str, Any] = {
        "attribute": run.texts.name if run.texts else None,
        "src": run.texts.src if run.texts else None, "trg": run.texts.trg if run.texts else None,
        "official": run.official, "trained": run.train is not None,
        "direction": None if run.train is not None else ref_label(run.direction_ref, run.family) or job.direction,
        "epoch": job.epoch if job.epoch is not None else run.train.epochs - 1 if run.train else
        _ref_epoch(run),
        "final": job.epoch is None,
        "strengths": list(ecfg.strengths), "strength": ecfg.strengths[0] if len(ecfg.strengths) == 1 else None,
        "interpolate": ecfg.interpolate, "n_test_step": ecfg.n_test_step, "test_images": ecfg.n_images,
        "t_boost": ecfg.t_boost, "boost": ecfg.boost, "boost_reconstruction": ecfg.boost_reconstruction,
    }
    if run.train is not None:
        cfg = run.train
        delta = cfg.delta.to_dict() if cfg.delta is not None else {}
        default = DeltaBlockConfig().to_dict()
        for f in ARCH_FIELDS:  # overwritten from the run's config.json once trained (init_from adopts its source's)
            tags[f] = delta.get(f, default[f] if cfg.init_from is None else None)
        tags.update(optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                    scheduler="StepLR" if cfg.scheduler_step > 0 else "constant",
                    scheduler_step=cfg.scheduler_step, scheduler_gamma=cfg.scheduler_gamma, epochs=cfg.epochs,
                    batch_size=cfg.batch_size, train_images=cfg.n_images, clip_weight=cfg.clip_weight,
                    l1_weight=cfg.l1_weight, l1_reference=cfg.l1_reference, precision=cfg.precision,
                    n_train_step=cfg.n_train_step, t_edit=cfg.t_edit,
                    init_from=ref_label(run.init_ref, run.family) or cfg.init_from)
    else:
        tags.update(t_edit=ecfg.t_edit, init_from=None)
    tags.update(run.tags)
    return tags




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


def _arch(config: Mapping | None) -> dict | None:
    return None if config is None else {f: config.get(f) for f in ARCH_FIELDS}


def _collect_job(fam: Family, run: Run, job: EditJob) -> dict:
    tags = config_tags(run, job)
    entry: dict[str, Any] = {"name": job.name, "run": run.name, "epoch": tags["epoch"], "description":
                             run.spec.get("description"), "status": "new", "tags": tags,
                             "train_dir": str(run.train_dir) if run.train_dir else None, "edit_dir": str(job.edit_dir),
                             "eval_files": {}, "log": None, "train_summary": None, "evaluation": None,
                             "metrics": {}, "groups": {}}
    trained_arch = None
    if run.train is not None:
        record = read_json(run.train_dir / "config.json")
        if record is not None:
            res = record.get("resolved", {})
            trained_arch = _arch(res.get("delta"))
            tags.update({k: v for k, v in trained_arch.items()})
            tags.update(t_edit=res.get("t_edit"), clip_weight=res.get("clip_weight"),
                        text_cosine=res.get("text_cosine"), clip_model_train=res.get("clip_model"),
                        backbone_sha256=res.get("backbone_sha256"))
        if (run.train_dir / "log.jsonl").is_file():
            entry["log"] = str(run.train_dir / "log.jsonl")
        entry["train_summary"] = read_json(run.train_dir / "done.json")
        entry["status"] = "trained" if entry["train_summary"] else ("training" if record else "new")
    elif run.direction_ref is not None:
        record = read_json(Path(run.direction).parent / "config.json")
        if record is not None:
            trained_arch = _arch(record.get("resolved", {}).get("delta"))
    edit_record = read_json(job.edit_dir / "edit.json")
    if edit_record is None:
        return entry
    if edit_record.get("config") != C.to_dict(job.config):
        entry["status"] = "outdated (edit.json was made with another config)"  # its metrics would be mislabelled
        return entry
    entry["status"] = "edited"
    directions = edit_record.get("directions") or [{}]
    evaluated = _arch(directions[0].get("config"))
    if trained_arch is not None and evaluated != trained_arch:
        diff = ", ".join(f"{k}: trained {trained_arch[k]!r} ≠ evaluated {evaluated[k]!r}" for k in ARCH_FIELDS
                         if trained_arch[k] != evaluated[k])
        raise ExperimentError(f"run {job.name}: the evaluated delta block is not the trained one ({diff})")
    if trained_arch is None:
        tags.update(evaluated)  # a released or external checkpoint: its architecture as loaded
    tags.update(heads_evaluated=evaluated["heads"], architecture_checked=trained_arch is not None,
                t_edit_used=edit_record.get("t_edit"), t_boost_used=edit_record.get("t_boost"),
                n_train_step=directions[0].get("n_train_step", tags.get("n_train_step")))
    settings = {s["folder"]: s for s in edit_record.get("settings", [])}
    for folder, setting in settings.items():
        path = eval_path(job, folder)
        ev = read_json(path) if eval_state(run, job, folder) == "done" else None
        if ev is None:  # missing, or older than the edit / made with other settings
            continue
        entry["eval_files"][folder] = str(path)
        summary = summarize_eval(ev)
        summary["strength"] = setting.get("strength")
        if "alpha" in setting:
            summary["alpha"] = setting["alpha"]
        entry["metrics"][folder] = summary
        if ev.get("groups"):
            entry["groups"][folder] = {g: summarize_eval(ev, g) for g in ev["groups"]}
        s = ev.get("settings", {})
        entry["evaluation"] = {k: s.get(k) for k in ("clip_model", "prompt_mode", "src_text", "trg_text", "sdir",
                                                      "fid", "inception", "antialias", "groups_csv")}
        entry["evaluation"]["n_images"] = (ev.get("inputs") or {}).get("n_images")
    if entry["metrics"]:
        entry["status"] = "evaluated" if set(entry["metrics"]) == set(settings) else "partly evaluated"
    return entry


def collect_family(fam: Family) -> dict:
    """Every run of the family (finished or not) with its tags, folders, training summary and metrics."""
    runs = []
    for run in fam.runs:
        for job in run.jobs:
            runs.append(_collect_job(fam, run, job))
    return results_document(fam.name, runs, fam.raw, str(fam.path), variables=fam.variables,
                            overrides=fam.overrides, out_dir=str(fam.out_dir))




# --------------------------------------------------------------------------------------------------
# Edit folders given directly
# --------------------------------------------------------------------------------------------------

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


