"""What ``asyrp run-experiment`` would do, per run and stage, read from the files alone (``--dry-run``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asyrp.study.families import STAGES, Family, Run, ref_label
from asyrp.study.state import edit_state, eval_state, read_json, train_state


def plan(fam: Family, runs: Sequence[Run], stages=STAGES, redo=()) -> list[dict]:
    """What run_experiment would do, per run and stage, from the files alone (loads no model)."""
    out = []
    for run in runs:
        item: dict[str, Any] = {"run": run.name, "wave": run.wave, "needs": [ref_label(d, fam.name) for d in run.deps]}
        if run.train is not None:
            state = train_state(run)
            item["train"] = {"done": "skip (done)", "partial": "resume", "new": "train"}[state] \
                if "train" in stages else f"not requested ({state})"
        else:
            item["train"] = "none (" + ("released checkpoint" if run.official else "checkpoint of another run"
                                        if run.direction_ref else "given checkpoint") + ")"
        edits = []
        for job in run.jobs:
            state = edit_state(job)
            if "edit" not in stages:
                edits.append(f"{job.edit_dir.name}: not requested ({state})")
            else:
                edits.append(f"{job.edit_dir.name}: " + ("skip (done)" if state == "done" and "edit" not in redo
                                                         else "edit"))
        item["edit"] = edits
        evals = []
        for job in run.jobs:
            record = read_json(job.edit_dir / "edit.json")
            folders = [s["folder"] for s in record.get("settings", [])] if record else ["(after edit)"]
            for folder in folders:
                state = eval_state(run, job, folder) if record else "new"
                verb = "skip (done)" if state == "done" and "evaluate" not in redo else "evaluate"
                evals.append(f"{job.edit_dir.name}/{folder}: {verb if 'evaluate' in stages else 'not requested'}")
        item["evaluate"] = evals
        item["summary"] = _summary_line(run)
        out.append(item)
    return out


def _summary_line(run: Run) -> str:
    parts = [run.texts.name if run.texts else "?"]
    if run.train is not None:
        c = run.train
        d = c.delta
        arch = f"{d.kind} h{d.heads} {d.time_embedding} {d.norm} {d.activation}" if d else \
            ("(architecture of the source)" if c.init_from else "conv h1 add group silu")
        sched = f"StepLR({c.scheduler_step}, {c.scheduler_gamma})" if c.scheduler_step > 0 else "constant lr"
        parts += [arch, f"{c.optimizer} lr={c.lr:g}", sched, f"epochs={c.epochs}", f"bs={c.batch_size}",
                  f"images={c.n_images}", f"steps={c.n_train_step}",
                  f"clip_w={c.clip_weight if c.clip_weight is not None else 'table'}", f"l1_w={c.l1_weight:g}"]
        if run.init_ref:
            parts.append(f"init_from={ref_label(run.init_ref, run.family)}")
    else:
        parts.append(f"direction={run.jobs[0].direction}")
    e = run.jobs[0].config
    parts.append(f"| edit {e.n_images} images, {e.n_test_step} steps, strengths {e.strengths}")
    if run.eval_epochs:
        parts.append(f"epochs {run.eval_epochs}")
    ev = run.evaluate
    parts.append(f"| eval S_dir={'on' if ev['sdir'] else 'off'} ({ev['clip_model']}, {ev['prompt_mode']}) "
                 f"FID={'on' if ev['fid'] else 'off'}")
    return " ".join(str(p) for p in parts)


