"""Experiment families: one YAML describes every run of a study; loading it resolves each run's configs.

A family file (``configs/experiments/<family>.yaml``) holds::

    family: heads                      # the folder name under --out (default: the file's stem)
    description: ...                   # free text; `figures:` names the blog figures / tables it regenerates
    defaults:                          # run keys shared by every run (deep-merged under each run)
      backbone: ${ASYRP_BACKBONE:-celeba-hq}
      train: {...TrainConfig fields, delta: {...DeltaBlockConfig fields}}
      edit: {...EditConfig fields except directions}
      evaluate: {clip_model, prompt_mode, fid, sdir, inception_weights, groups, ...}
    runs:
      - name: h1
        train: {delta: {heads: 1}}
        eval_epochs: [0, 1, 2]         # also edit / evaluate delta_epoch<k>.pt (tag "epoch")

Run keys (a run that says ``official:`` or ``direction:`` does not inherit the defaults' ``train:``): ``name``;
``attribute`` / ``src`` / ``trg`` (the text pair: they go to the training config and give the
evaluation texts); ``backbone``, ``cache_dir``, ``device``, ``t_edit``, ``t_boost`` (shared by training and editing);
``weights_dir``; ``train`` (a trained run); ``official`` (``true``: edit with the released checkpoint
``asyrp-<attribute>``, or a registry name / path) or ``direction`` (a path, a registry name, or ``{run: NAME,
epoch: K, family: F}``: edit with another run's checkpoint); ``edit``; ``evaluate``; ``eval_epochs``; ``tags`` (free
labels copied into the results); ``description``. ``train.init_from`` may be ``{run: NAME, epoch: K, family: F}``
(transfer learning from another run's ``delta.pt`` / ``delta_epoch<K>.pt``). ``train.preset`` (reference / fast)
fills the TrainConfig fields the run does not set.

Strings may hold ``${VAR}`` or ``${VAR:-default}``: expanded from the environment (a value that is one whole
``${...}`` becomes a number / boolean when it reads as one, and None when empty), so one file runs on a cluster and
in a test. ``--set key=value`` overrides any run key after merging (``train.lr=0.1``, ``evaluate.fid=false``), or
one run's (``runs.h1.train.epochs=2``).

A family resolves to :class:`Family` → :class:`Run` → :class:`EditJob` (one edit folder each); nothing is loaded.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asyrp import config as C
from asyrp.io import weights as registry
from asyrp.pipeline.run_record import resolve_texts
from asyrp.pipeline.edit import EditConfig
from asyrp.pipeline.evaluate import evaluate_folders
from asyrp.models.delta import DeltaBlockConfig
from asyrp.study.variables import ExperimentError, deep_merge, expand_variables, number, parse_overrides, set_path
from asyrp.pipeline.train_config import PRESETS, TrainConfig

STAGES = ("train", "edit", "evaluate")
SHARED_KEYS = ("backbone", "cache_dir", "device", "t_edit", "t_boost")   # copied into train: and edit:
TEXT_KEYS = ("attribute", "src", "trg")                                  # copied into train:
RUN_KEYS = frozenset({"name", "official", "direction", "train", "edit", "evaluate", "eval_epochs", "tags",
                      "description", "weights_dir", *SHARED_KEYS, *TEXT_KEYS})
FAMILY_KEYS = frozenset({"family", "description", "figures", "defaults", "runs"})
# the evaluate: keys of a run and their defaults: asyrp.pipeline.evaluate.evaluate_folders' own
EVAL_KEYS = ("clip_model", "prompt_mode", "antialias", "fid", "sdir", "inception_weights", "groups", "kid_subsets",
             "kid_subset_size", "seed", "batch_size", "fid_method", "device")
EVAL_DEFAULTS = {k: inspect.signature(evaluate_folders).parameters[k].default for k in EVAL_KEYS}
# the eval-JSON settings that must match for an existing evaluation to be reused
EVAL_SETTING_KEYS = ("sdir", "fid", "prompt_mode", "src_text", "trg_text", "antialias", "kid_subsets",
                     "kid_subset_size", "seed", "fid_method")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _coerce(cls, data: Mapping) -> dict:
    """Numbers written as strings (1e-5) into the field's type; the dataclass itself rejects unknown keys."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for k, v in data.items():
        if k not in hints or not isinstance(v, str):
            continue
        tp = C._base_type(hints[k])
        if tp in (int, float):
            try:
                out[k] = tp(float(v)) if tp is int and float(v).is_integer() else tp(v)
            except ValueError:
                pass
    return out


# --------------------------------------------------------------------------------------------------
# Resolved runs
# --------------------------------------------------------------------------------------------------

@dataclass
class EditJob:
    """One edit folder: the final direction (epoch None) or delta_epoch<k>.pt."""
    name: str               # entry name in results.json: "<run>" or "<run>@epoch<k>"
    epoch: int | None
    direction: str          # path or registry name
    edit_dir: Path
    config: Any             # EditConfig


@dataclass
class Run:
    name: str
    family: str
    spec: dict                         # the merged, expanded run keys
    root: Path
    train: Any = None                  # TrainConfig
    train_dir: Path | None = None
    evaluate: dict = field(default_factory=dict)
    official: bool = False
    direction_ref: dict | None = None  # {"family", "run", "epoch"} for runs editing another run's checkpoint
    init_ref: dict | None = None       # the same for train.init_from
    eval_epochs: list = field(default_factory=list)
    weights_dir: str | None = None
    texts: Any = None                  # asyrp.attributes.Attribute
    tags: dict = field(default_factory=dict)
    jobs: list = field(default_factory=list)
    wave: int = 0
    edit_base: dict = field(default_factory=dict)  # EditConfig fields without directions
    direction: str | None = None       # what an untrained run edits with (path or registry name)
    source: Run | None = None        # the in-family run whose checkpoint it edits with

    @property
    def deps(self) -> list[dict]:
        return [r for r in (self.init_ref, self.direction_ref) if r is not None]


@dataclass
class Family:
    name: str
    path: Path
    out_dir: Path
    raw: dict                          # the YAML as written
    runs: list                         # [Run], in file order
    variables: dict                    # the environment values used
    missing: list                      # variables left unexpanded (lenient loading only)
    overrides: list

    def run(self, name: str) -> Run:
        for r in self.runs:
            if r.name == name:
                return r
        raise ExperimentError(f"family {self.name} has no run {name!r}; runs: {', '.join(r.name for r in self.runs)}")

    def select(self, only: Iterable[str] | None = None, wave: int | None = None) -> list[Run]:
        runs = self.runs if not only else [self.run(n) for n in dict.fromkeys(only)]
        if wave is not None:
            runs = [r for r in runs if r.wave == wave]
        return runs

    @property
    def n_waves(self) -> int:
        return 1 + max((r.wave for r in self.runs), default=-1)


def find_config(config: str | os.PathLike) -> Path:
    """A path, or a family name looked up as configs/experiments/<name>.yaml (from the working directory)."""
    path = Path(config)
    if path.is_file():
        return path
    if path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        candidate = Path("configs") / "experiments" / f"{config}.yaml"
        if candidate.is_file():
            return candidate
    raise ExperimentError(f"experiment config {config} not found (give a YAML path, or a family name from "
                          "configs/experiments/ when run from the repository root)")


def load_family(config_path: str | os.PathLike, out_root: str | os.PathLike = "runs", overrides=None,
                strict: bool = True, env: Mapping[str, str] | None = None) -> Family:
    """Parse, expand, merge and validate a family file; every run resolves to TrainConfig / EditConfig objects.

    ``strict=False`` leaves unset variables as written (for --list / --dry-run, which need no files).
    """
    path = find_config(config_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ExperimentError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: an experiment file holds a mapping with defaults: and runs:")
    unknown = sorted(set(raw) - FAMILY_KEYS)
    if unknown:
        raise ExperimentError(f"{path}: unknown top-level keys {unknown}; known: {sorted(FAMILY_KEYS)}")
    used, missing = {}, []
    family = expand_variables(raw.get("family") or path.stem, env, strict, used, missing)
    if not isinstance(family, str) or not NAME_RE.match(family):
        raise ExperimentError(f"{path}: family name {family!r} must be a plain folder name")
    defaults = raw.get("defaults") or {}
    runs_raw = raw.get("runs") or []
    if not isinstance(defaults, dict) or not isinstance(runs_raw, list) or not runs_raw:
        raise ExperimentError(f"{path}: `defaults:` must be a mapping and `runs:` a non-empty list")
    names = [r.get("name") if isinstance(r, dict) else None for r in runs_raw]
    for n in names:
        if not isinstance(n, str) or not NAME_RE.match(n):
            raise ExperimentError(f"{path}: every run needs a `name:` that is a plain folder name, got {n!r}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ExperimentError(f"{path}: duplicate run names {dupes}")
    parsed = parse_overrides(overrides)
    for keys, _ in parsed:
        if keys[0] == "runs" and (len(keys) < 3 or keys[1] not in names):
            raise ExperimentError(f"--set {'.'.join(keys)}: write runs.<run name>.<key>=VALUE with one of "
                                  f"{', '.join(names)}")
    out_dir = Path(out_root) / family
    runs = []
    for run_raw in runs_raw:
        spec = deep_merge(_defaults_for(defaults, run_raw), run_raw)
        for keys, value in parsed:
            if keys[0] == "runs":
                if keys[1] == run_raw["name"]:
                    set_path(spec, keys[2:], value)
            else:
                set_path(spec, keys[1:] if keys[0] == "defaults" else keys, value)
        spec = expand_variables(spec, env, strict, used, missing)
        runs.append(_resolve_run(path, family, spec, out_dir))
    recorded = [f"{k}={json.dumps(v)}" for k, v in overrides.items()] if isinstance(overrides, Mapping) \
        else [str(o) for o in overrides or []]
    fam = Family(family, path, out_dir, raw, runs, dict(sorted(used.items())), missing, recorded)
    _link_runs(fam)
    return fam


def _defaults_for(defaults: dict, run_raw: dict) -> dict:
    """The defaults a run inherits: a run that says what it edits with (official: / direction:) drops the
    defaults' train: and eval_epochs:, and a run with its own train: drops the defaults' official: / direction:."""
    own = {k for k in ("train", "official", "direction") if run_raw.get(k) not in (None, False)}
    if own & {"official", "direction"}:
        return {k: v for k, v in defaults.items() if k not in ("train", "eval_epochs", "official", "direction")
                or k in own}
    if "train" in own:
        return {k: v for k, v in defaults.items() if k not in ("official", "direction")}
    return defaults


def _ref(value, what: str, run_name: str, path: Path) -> dict | None:
    """``{run: NAME, epoch: K, family: F}`` → normalised dict, or None for a plain string."""
    if not isinstance(value, Mapping):
        return None
    unknown = sorted(set(value) - {"run", "epoch", "family"})
    if unknown or not isinstance(value.get("run"), str):
        raise ExperimentError(f"{path}: run {run_name}: {what} must be a path or {{run: NAME, epoch: K, family: F}}"
                              f"{f' (unknown keys {unknown})' if unknown else ''}")
    epoch = value.get("epoch")
    if epoch is not None and (not isinstance(epoch, int) or epoch < 0):
        raise ExperimentError(f"{path}: run {run_name}: {what}.epoch must be an epoch index ≥ 0, got {epoch!r}")
    return {"family": value.get("family"), "run": value["run"], "epoch": epoch}


def _resolve_run(path: Path, family: str, spec: dict, out_dir: Path) -> Run:

    name = spec["name"]
    where = f"{path}: run {name}"
    unknown = sorted(set(spec) - RUN_KEYS)
    if unknown:
        raise ExperimentError(f"{where}: unknown keys {unknown}; known: {sorted(RUN_KEYS)}")
    run = Run(name=name, family=family, spec=spec, root=out_dir / name, weights_dir=spec.get("weights_dir"))
    kinds = [k for k in ("train", "official", "direction") if spec.get(k) not in (None, False)]
    if len(kinds) != 1:
        raise ExperimentError(f"{where}: give exactly one of train: (a trained run), official: (a released "
                              f"checkpoint) or direction: (another checkpoint); got {kinds or 'none'}")
    shared = {k: spec[k] for k in SHARED_KEYS if spec.get(k) is not None}
    texts = {k: spec[k] for k in TEXT_KEYS if spec.get(k) is not None}

    # the training config
    if "train" in kinds:
        if not isinstance(spec["train"], Mapping):
            raise ExperimentError(f"{where}: train: must be a mapping of TrainConfig fields")
        data = dict(spec["train"])
        preset = data.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS:
                raise ExperimentError(f"{where}: unknown train.preset {preset!r}; choose one of {sorted(PRESETS)}")
            data = {**PRESETS[preset], **data}
        data = {**shared, **texts, **data}
        run.init_ref = _ref(data.get("init_from"), "train.init_from", name, path)
        if run.init_ref is not None:
            data["init_from"] = "<run reference>"  # replaced by the source's checkpoint path in _link_runs
        try:
            delta = data.pop("delta", None)
            cfg = C.from_dict(TrainConfig, _coerce(TrainConfig, data))
            if delta is not None:
                if not isinstance(delta, Mapping):
                    raise ValueError("train.delta must be a mapping of DeltaBlockConfig fields")
                cfg.delta = DeltaBlockConfig.from_dict(_coerce(DeltaBlockConfig, delta))
            cfg.validate()
        except (TypeError, ValueError) as e:
            raise ExperimentError(f"{where}: {' '.join(str(e).split())}") from None
        run.train = cfg
        run.train_dir = run.root / "train"
        epochs = list(spec.get("eval_epochs") or [])
        bad = [k for k in epochs if not isinstance(k, int) or not 0 <= k < cfg.epochs]
        if bad:
            raise ExperimentError(f"{where}: eval_epochs {bad} are not epoch indices of a {cfg.epochs}-epoch run "
                                  f"(0..{cfg.epochs - 1})")
        run.eval_epochs = sorted(set(epochs))
    elif spec.get("eval_epochs"):
        raise ExperimentError(f"{where}: eval_epochs needs a trained run (train:)")

    # the texts (training and S_dir)
    try:
        if run.train is not None:
            run.texts = resolve_texts(run.train.attribute, run.train.src, run.train.trg)
        elif texts:
            run.texts = resolve_texts(texts.get("attribute"), texts.get("src"), texts.get("trg"))
    except ValueError as e:
        raise ExperimentError(f"{where}: {' '.join(str(e).split())}") from None

    # what to edit with
    direction = None
    if "official" in kinds:
        run.official = True
        official = spec["official"]
        if official is True:
            if run.texts is None:
                raise ExperimentError(f"{where}: official: true needs attribute: (the released asyrp-<attribute>)")
            official = f"asyrp-{run.texts.name}"
        if not isinstance(official, str):
            raise ExperimentError(f"{where}: official: must be true, a registry name (asyrp-smiling) or a path")
        if official.startswith("asyrp-") and not Path(official).exists():
            if official not in registry.direction_names():
                raise ExperimentError(f"{where}: {official!r} is not a released direction; see asyrp download --list")
        direction = official
    elif "direction" in kinds:
        run.direction_ref = _ref(spec["direction"], "direction", name, path)
        direction = None if run.direction_ref is not None else str(spec["direction"])

    # editing and evaluation settings
    edit_data = dict(spec.get("edit") or {})
    if "directions" in edit_data:
        raise ExperimentError(f"{where}: edit.directions is set by the run (train:, official: or direction:)")
    if edit_data.get("delta_config") and (run.train is not None or run.direction_ref is not None):
        raise ExperimentError(f"{where}: edit.delta_config must not be set for a checkpoint written by asyrp: its "
                              "architecture (heads, layer type, ...) is read from the file")
    edit_data = {**shared, **edit_data}
    try:
        base = C.from_dict(EditConfig, _coerce(EditConfig, edit_data))
    except (TypeError, ValueError) as e:
        raise ExperimentError(f"{where}: {' '.join(str(e).split())}") from None
    if base.n_images < 1 or base.n_test_step < 1:
        raise ExperimentError(f"{where}: edit.n_images and edit.n_test_step must be ≥ 1")
    evaluate = dict(spec.get("evaluate") or {})
    unknown = sorted(set(evaluate) - set(EVAL_DEFAULTS))
    if unknown:
        raise ExperimentError(f"{where}: unknown evaluate keys {unknown}; known: {sorted(EVAL_DEFAULTS)}")
    run.evaluate = {**EVAL_DEFAULTS, **{k: number(v) if k in ("kid_subsets", "kid_subset_size", "seed",
                                                                "batch_size") else v for k, v in evaluate.items()}}
    if run.evaluate["prompt_mode"] not in ("templates", "single"):
        raise ExperimentError(f"{where}: evaluate.prompt_mode must be templates or single")
    if run.evaluate["sdir"] and run.texts is None:
        raise ExperimentError(f"{where}: S_dir needs the run's texts: give attribute: (or src: and trg:)")
    if not (run.evaluate["sdir"] or run.evaluate["fid"]):
        raise ExperimentError(f"{where}: evaluate.sdir and evaluate.fid are both off")
    tags = spec.get("tags") or {}
    if not isinstance(tags, dict):
        raise ExperimentError(f"{where}: tags: must be a mapping")
    run.tags = dict(tags)
    run.edit_base = C.to_dict(base)
    run.direction = direction
    return run


def _checkpoint_of(fam: Family, ref: dict, what: str, run: Run) -> tuple[Path, Run | None]:
    """The delta file a {run, epoch, family} reference names (the source run of this family, if in it)."""
    if ref.get("family") in (None, fam.name):
        src = next((r for r in fam.runs if r.name == ref["run"]), None)
        if src is None:
            raise ExperimentError(f"{fam.path}: run {run.name}: {what} names run {ref['run']!r}, which is not in "
                                  f"family {fam.name} (runs: {', '.join(r.name for r in fam.runs)})")
        if src.train is None:
            raise ExperimentError(f"{fam.path}: run {run.name}: {what} names run {src.name}, which trains nothing")
        if ref["epoch"] is not None and ref["epoch"] >= src.train.epochs:
            raise ExperimentError(f"{fam.path}: run {run.name}: {what} asks for epoch {ref['epoch']} of "
                                  f"{src.name}, which trains {src.train.epochs} epoch(s)")
        train_dir = src.train_dir
    else:
        src = None
        train_dir = fam.out_dir.parent / ref["family"] / ref["run"] / "train"
    file = "delta.pt" if ref["epoch"] is None else f"delta_epoch{ref['epoch']}.pt"
    return train_dir / file, src


def _link_runs(fam: Family) -> None:
    """Resolve run references into checkpoint paths, build the edit jobs and the dependency waves."""
    by_name = {r.name: r for r in fam.runs}
    for run in fam.runs:
        if run.init_ref is not None:
            ckpt, _ = _checkpoint_of(fam, run.init_ref, "train.init_from", run)
            run.train.init_from = str(ckpt)
        if run.direction_ref is not None:
            ckpt, src = _checkpoint_of(fam, run.direction_ref, "direction", run)
            run.direction, run.source = str(ckpt), src
            if run.texts is None and src is not None:
                run.texts = src.texts
            if run.texts is None and run.evaluate["sdir"]:
                raise ExperimentError(f"{fam.path}: run {run.name}: S_dir needs the run's texts: give attribute:")
        base = run.edit_base
        if run.train is not None:
            final = EditJob(run.name, None, str(run.train_dir / "delta.pt"), run.root / "edit",
                            C.from_dict(EditConfig, {**base, "directions": [str(run.train_dir / "delta.pt")]}))
            run.jobs = [final]
            for k in run.eval_epochs:
                if k == run.train.epochs - 1:  # delta_epoch<last>.pt is delta.pt: the final entry (tag epoch k)
                    continue
                ckpt = str(run.train_dir / f"delta_epoch{k}.pt")
                run.jobs.append(EditJob(f"{run.name}@epoch{k}", k, ckpt, run.root / f"edit_epoch{k}",
                                        C.from_dict(EditConfig, {**base, "directions": [ckpt]})))
        else:
            direction = run.direction
            run.jobs = [EditJob(run.name, None, direction, run.root / "edit",
                                C.from_dict(EditConfig, {**base, "directions": [direction]}))]
    # waves: a run waits for the in-family runs it needs
    state: dict[str, int] = {}

    def wave(run: Run, stack: tuple = ()) -> int:
        if run.name in stack:
            chain = " → ".join(stack + (run.name,))
            raise ExperimentError(f"{fam.path}: runs reference each other in a cycle: {chain}")
        if run.name not in state:
            deps = [by_name[d["run"]] for d in run.deps if d.get("family") in (None, fam.name)]
            state[run.name] = 1 + max((wave(d, stack + (run.name,)) for d in deps), default=-1)
        return state[run.name]

    for run in fam.runs:
        run.wave = wave(run)


def ref_label(ref: dict | None, family: str) -> str | None:
    """How results and plans name a reference to a run's checkpoint: ``[family/]run[@epochK]``."""
    if ref is None:
        return None
    fam = "" if ref.get("family") in (None, family) else f"{ref['family']}/"
    return f"{fam}{ref['run']}" + ("" if ref.get("epoch") is None else f"@epoch{ref['epoch']}")


