"""The state of each stage of a run, from its files alone: is training done, partial or new; is an edit folder
complete and current; is an evaluation current (newer than the edit, made with the same settings). The runner, the
planner and the results collector all ask here, so they agree on what "done" means."""

from __future__ import annotations

import json
from pathlib import Path

from asyrp import config as C
from asyrp.pipeline.evaluate import default_eval_path
from asyrp.study.families import EVAL_SETTING_KEYS, EditJob, ExperimentError, Run


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def train_state(run: Run) -> str:
    """new | partial | done (for the training folder of a trained run)."""
    d = run.train_dir
    if (d / "done.json").is_file() and (d / "delta.pt").is_file():
        return "done"
    return "partial" if d.exists() and any(d.iterdir()) else "new"


def check_train_config(run: Run) -> None:
    record = read_json(run.train_dir / "config.json")
    mine = C.to_dict(run.train)
    if record is not None and record.get("config") != mine:
        changed = sorted(k for k in set(record.get("config", {})) | set(mine)
                         if record.get("config", {}).get(k) != mine.get(k))
        raise ExperimentError(f"{run.train_dir} holds a run of another config (differs in {', '.join(changed)}); "
                              "use another --out, or delete the folder to retrain")


def edit_state(job: EditJob) -> str:
    """done | stale | partial | new. Done: edit.json of this config, every PNG it lists, direction not newer."""
    record = read_json(job.edit_dir / "edit.json")
    if record is None:
        return "partial" if job.edit_dir.exists() and any(job.edit_dir.iterdir()) else "new"
    if record.get("config") != C.to_dict(job.config):
        return "other"
    folders = ["original", "reconstructed"] + [s["folder"] for s in record.get("settings", [])]
    if not all((job.edit_dir / f / f"{n}.png").is_file() for n in record.get("images", []) for f in folders):
        return "partial"
    stamp = (job.edit_dir / "edit.json").stat().st_mtime_ns
    for d in record.get("directions", []):
        p = Path(d.get("path", ""))
        if p.is_file() and p.stat().st_mtime_ns > stamp:
            return "stale"
    return "done"


def eval_path(job: EditJob, folder: str) -> Path:
    return default_eval_path(job.edit_dir, job.edit_dir / folder)


def eval_request(run: Run) -> dict:
    ev = run.evaluate
    return {"sdir": bool(ev["sdir"]), "fid": bool(ev["fid"]), "prompt_mode": ev["prompt_mode"] if ev["sdir"] else None,
            "src_text": run.texts.src if run.texts and ev["sdir"] else None,
            "trg_text": run.texts.trg if run.texts and ev["sdir"] else None, "antialias": bool(ev["antialias"]),
            "kid_subsets": ev["kid_subsets"], "kid_subset_size": ev["kid_subset_size"], "seed": ev["seed"],
            "fid_method": ev["fid_method"]}


def eval_state(run: Run, job: EditJob, folder: str) -> str:
    path = eval_path(job, folder)
    edit_json = job.edit_dir / "edit.json"
    if not path.is_file():
        return "new"
    if not edit_json.is_file() or path.stat().st_mtime_ns < edit_json.stat().st_mtime_ns:
        return "stale"
    result = read_json(path)
    settings = (result or {}).get("settings") or {}
    want = eval_request(run)
    if any(settings.get(k) != want[k] for k in EVAL_SETTING_KEYS if not (k in ("src_text", "trg_text", "prompt_mode")
                                                                          and not want["sdir"])):
        return "stale"
    groups = run.evaluate["groups"]
    if (settings.get("groups_csv") or None) != (str(groups) if groups else None):
        return "stale"
    return "done"


