"""A family's results: every run and edit folder of a family file with its tags, folders, training summary and
current metrics, built into the ``asyrp.results/1`` document that ``asyrp run-experiment`` writes.

Metrics appear only from evaluations that are current (newer than the edit, same settings), so a family's
results.json always describes the family file as it is. The delta-block architecture is never a command-line default:
it is rebuilt from the checkpoint and the collector asserts that the evaluated block equals the trained one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asyrp import config as C
from asyrp.models.delta import DeltaBlockConfig
from asyrp.study.collect import summarize_eval
from asyrp.study.families import EditJob, ExperimentError, Family, Run, ref_label
from asyrp.study.results import results_document
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
