"""The stage machine of an experiment family: train → edit → evaluate every selected run, skipping each stage whose
output is complete, and write the family's results.json.

Every stage is skipped when its output is complete: training when ``done.json`` exists (an interrupted run is
resumed), editing when ``edit.json`` and every PNG it lists exist, evaluation when the eval JSON is newer than
``edit.json`` and was made with the same settings (:mod:`asyrp.study.state`). Backbones, CLIPs and the FID Inception
are loaded once per process and shared by the runs; the evaluation networks sit behind a cache keyed by the exact
bytes of each input batch, so the shared original/ and reconstructed/ folders are encoded once.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from asyrp.backbones import load_backbone, load_clip_model
from asyrp.pipeline.edit import edit
from asyrp.io.files import default_device
from asyrp.metrics import SmallSampleFIDWarning
from asyrp.pipeline.evaluate import clip_image_size, evaluate_run
from asyrp.models.inception import load_fid_inception
from asyrp.study.families import STAGES, EditJob, ExperimentError, Run, load_family, ref_label
from asyrp.study.family_results import collect_family
from asyrp.study.results import write_results
from asyrp.study.state import check_train_config, edit_state, eval_path, eval_state, read_json, train_state
from asyrp.pipeline.train import train


def _digest(x) -> str:

    t = x.detach().contiguous().cpu()
    h = hashlib.sha1(f"{tuple(t.shape)}:{t.dtype}".encode())
    h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class _FeatureCache:
    """Outputs of a frozen network by the exact bytes of its input batch (least recently used first out).

    Every edit folder of a family shares original/ and (per test set) reconstructed/, and every strength of a run
    is evaluated against them: their Inception features and CLIP embeddings are computed once instead of once per
    evaluated folder. A batch that differs in one bit is computed afresh, so the metrics are unchanged."""

    def __init__(self, size: int = 512):
        self.size, self.items, self.hits, self.misses = size, OrderedDict(), 0, 0

    def __call__(self, fn, x):
        key = _digest(x)
        if key in self.items:
            self.items.move_to_end(key)
            self.hits += 1
            return self.items[key].to(x.device)
        out = fn(x)
        self.misses += 1
        self.items[key] = out.detach().cpu()
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return out


def _cached_inception(model):

    class CachedInception(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.cache = model, _FeatureCache()
            self.name = getattr(model, "name", type(model).__name__)

        def forward(self, x):
            return self.cache(self.inner, x)

    return CachedInception()


def _cached_clip(encoder):


    class CachedClip(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.cache = encoder, _FeatureCache()
            self.name = getattr(encoder, "name", None) or type(encoder).__name__
            self.image_size = clip_image_size(encoder)

        def encode_image(self, pixels):
            return self.cache(self.inner.encode_image, pixels)

        def encode_text(self, texts):
            return self.inner.encode_text(texts)

    return CachedClip()


class _Models:
    """Backbones, CLIPs and the FID Inception, each loaded once per process and shared by the runs (the
    evaluation networks behind a :class:`_FeatureCache`)."""

    def __init__(self):
        self._cache: dict = {}

    def _get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def backbone(self, name: str, weights_dir, device):
        return self._get(("backbone", name, weights_dir, str(device)),
                         lambda: load_backbone(name, weights_dir=weights_dir, device=device))

    def clip(self, name: str, weights_dir, device):
        return self._get(("clip", name, weights_dir, str(device)),
                         lambda: load_clip_model(name, weights_dir=weights_dir, device=device))

    def eval_clip(self, name: str, weights_dir, device):
        return self._get(("eval_clip", name, weights_dir, str(device)),
                         lambda: _cached_clip(self.clip(name, weights_dir, device)[0]))

    def inception(self, weights, weights_dir):
        return self._get(("inception", weights, weights_dir),
                         lambda: _cached_inception(load_fid_inception(weights, weights_dir)))


def _agree(value, distributed):
    """Rank 0's decision on every rank (all ranks look at the same files, but may look at different moments)."""
    if distributed is None:
        return value
    return distributed.all_gather_objects(value)[0]


def _device(name):
    return default_device(name)


def _stage_train(run: Run, models: _Models, progress, distributed, actions: list) -> None:
    if run.train is None:
        return
    state = _agree(train_state(run), distributed)
    if state == "done":
        check_train_config(run)
        actions.append({"run": run.name, "stage": "train", "action": "skipped"})
        return
    if run.train.init_from and not Path(run.train.init_from).is_file():
        raise ExperimentError(f"run {run.name}: transfer source {run.train.init_from} does not exist yet; train "
                              f"{ref_label(run.init_ref, run.family)} first")
    device = _device(run.train.device)
    backbone = models.backbone(run.train.backbone, run.weights_dir, device)
    clip = models.clip(run.train.clip_model or backbone.default_clip, run.weights_dir, device)
    train(copy.deepcopy(run.train), run.train_dir, backbone=backbone, clip=clip, resume=True, progress=progress,
          distributed=distributed)
    actions.append({"run": run.name, "stage": "train", "action": "resumed" if state == "partial" else "trained"})


def _stage_edit(run: Run, models: _Models, redo, progress, distributed, actions: list) -> None:
    for job in run.jobs:
        state = _agree(edit_state(job), distributed)
        if state == "done" and "edit" not in redo:
            actions.append({"run": job.name, "stage": "edit", "action": "skipped"})
            continue
        if state == "other":
            raise ExperimentError(f"{job.edit_dir} holds an edit of another config; use another --out, or delete "
                                  "the folder to edit again")
        direction = Path(job.direction)
        if (run.train is not None or run.direction_ref is not None) and not direction.is_file():
            src = run.name if run.train is not None else ref_label(run.direction_ref, run.family)
            raise ExperimentError(f"run {job.name}: checkpoint {direction} does not exist; train {src} first "
                                  "(--stage train)")
        device = _device(job.config.device)
        backbone = models.backbone(job.config.backbone, run.weights_dir, device)
        edit(copy.deepcopy(job.config), job.edit_dir, backbone=backbone, weights_dir=run.weights_dir,
             progress=progress, distributed=distributed)
        if distributed is not None:
            distributed.barrier()  # edit.json is written by rank 0 after edit's last barrier
        actions.append({"run": job.name, "stage": "edit", "action": "edited"})


def _evaluate_folder(run: Run, job: EditJob, folder: str, models: _Models) -> None:
    """S_dir / FID / KID of one edited folder into its eval JSON (asyrp.pipeline.evaluate.evaluate_run)."""
    ev = run.evaluate
    device = _device(ev["device"] or job.config.device)
    encoder = models.eval_clip(ev["clip_model"], run.weights_dir, device) if ev["sdir"] else None
    inception = models.inception(ev["inception_weights"], run.weights_dir) if ev["fid"] else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleFIDWarning)  # n is in every result, KID beside FID
        evaluate_run(job.edit_dir, job.edit_dir / folder, out=eval_path(job, folder),
                     src_text=run.texts.src if ev["sdir"] else None, trg_text=run.texts.trg if ev["sdir"] else None,
                     clip_encoder=encoder, clip_model=str(ev["clip_model"]), prompt_mode=ev["prompt_mode"],
                     antialias=ev["antialias"], inception_model=inception, weights_dir=run.weights_dir,
                     groups=ev["groups"], fid=ev["fid"], sdir=ev["sdir"], kid_subsets=ev["kid_subsets"],
                     kid_subset_size=ev["kid_subset_size"], seed=ev["seed"], batch_size=ev["batch_size"],
                     device=device, fid_method=ev["fid_method"])


def _stage_evaluate(run: Run, models: _Models, redo, distributed, actions: list) -> None:
    is_main = distributed is None or distributed.rank == 0
    for job in run.jobs:
        record = read_json(job.edit_dir / "edit.json")
        if record is None or edit_state(job) not in ("done", "stale"):
            raise ExperimentError(f"run {job.name}: no complete edit in {job.edit_dir}; run --stage edit first")
        for setting in record.get("settings", []):
            folder = setting["folder"]
            state = _agree(eval_state(run, job, folder), distributed)
            if state == "done" and "evaluate" not in redo:
                actions.append({"run": job.name, "stage": "evaluate", "folder": folder, "action": "skipped"})
                continue
            if is_main:
                _evaluate_folder(run, job, folder, models)
            if distributed is not None:
                distributed.barrier()
            actions.append({"run": job.name, "stage": "evaluate", "folder": folder, "action": "evaluated"})


def run_experiment(config_path, out_root, only=None, stages=STAGES, overrides=None, progress: bool = True,
                   distributed=None, *, redo: Iterable[str] = (), wave: int | None = None) -> dict:
    """Train → edit → evaluate the runs of a family (all, or ``only``); write ``<out_root>/<family>/results.json``.

    ``stages`` picks the stages; ``redo`` ("edit", "evaluate") repeats them even when their outputs are complete.
    ``distributed`` (asyrp.pipeline.distributed.Context, under torchrun) makes training data-parallel and editing sharded;
    evaluation and the results file are rank 0's. Returns the results (plus ``"actions"``: what each stage did, and
    ``"path"``; neither is written to the file).
    """
    stages = tuple(stages)
    bad = sorted(set(stages) - set(STAGES)) + sorted(set(redo) - {"edit", "evaluate"})
    if bad:
        raise ExperimentError(f"unknown stage(s) {bad}; stages: {', '.join(STAGES)} (redo: edit, evaluate)")
    fam = load_family(config_path, out_root, overrides)
    selected = fam.select(only, wave)
    # in-family sources of the selected runs must be trained first (or already be)
    order = sorted(selected, key=lambda r: r.wave)
    names = {r.name for r in selected}
    for run in order:
        needed = []
        if run.init_ref is not None and "train" in stages and train_state(run) != "done":
            needed.append(run.init_ref)
        if run.direction_ref is not None and "edit" in stages:
            needed.append(run.direction_ref)
        for ref in needed:
            if ref.get("family") not in (None, fam.name):
                continue  # another family's run: checked when its checkpoint is opened
            src = fam.run(ref["run"])
            if src.name not in names and train_state(src) != "done":
                raise ExperimentError(f"run {run.name} needs run {src.name} trained first: select it too (--runs "
                                      f"{src.name},{run.name}) or run wave {src.wave} first")
    models = _Models()
    actions: list[dict] = []
    for run in order:
        if "train" in stages:
            _stage_train(run, models, progress, distributed, actions)
        if "edit" in stages:
            _stage_edit(run, models, redo, progress, distributed, actions)
        if "evaluate" in stages:
            _stage_evaluate(run, models, redo, distributed, actions)
    results = collect_family(fam)
    path = fam.out_dir / "results.json"
    if distributed is None or distributed.rank == 0:
        write_results(path, results)
    if distributed is not None:
        distributed.barrier()
    return {**results, "path": str(path), "actions": actions}


