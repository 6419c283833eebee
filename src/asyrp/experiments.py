"""Experiment families: train → edit → evaluate every run of a study from one YAML, and collect one results JSON.

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

Run keys (a run that says ``official:`` or ``direction:`` does not inherit the defaults' ``train:``): ``name``; ``attribute`` / ``src`` / ``trg`` (the text pair: they go to the training config and give the
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

Layout: ``<out>/<family>/<run>/train/`` (asyrp train's folder), ``<run>/edit/`` and ``<run>/edit_epoch<k>/``
(asyrp edit's folders; their eval*.json beside the images), and ``<out>/<family>/results.json``
(schema ``asyrp.results/1``, read by ``asyrp report`` and ``asyrp figures``)::

    {"schema": "asyrp.results/1", "family", "config_path", "config": <the YAML as written>, "variables": {VAR: value
     used}, "overrides": [--set ...], "out_dir",
     "runs": [{"name": "<run>" | "<run>@epoch<k>", "run", "epoch", "description",
               "status": new | training | trained | edited | partly evaluated | evaluated | outdated (...),
               "tags": {attribute, src, trg, official, trained, direction, epoch, final, strengths, strength,
                        n_test_step, test_images, t_boost, kind, heads, layers, ff_dim, time_embedding, norm,
                        activation, dropout, zero_init, optimizer, lr, weight_decay, momentum, scheduler,
                        scheduler_step, scheduler_gamma, epochs, batch_size, train_images, clip_weight, l1_weight,
                        l1_reference, precision, n_train_step, t_edit, init_from, heads_evaluated,
                        architecture_checked, t_edit_used, t_boost_used, ..., and the run's own tags:},
               "train_dir", "edit_dir", "eval_files": {<edited folder>: path}, "log", "train_summary": done.json,
               "evaluation": {clip_model, prompt_mode, src_text, trg_text, sdir, fid, inception, n_images, ...},
               "metrics": {<edited folder>: {s_dir_original, s_dir_original_std, s_dir_original_std_ddof0,
                           s_dir_reconstructed(_std), directional_clip_loss_original / _reconstructed,
                           fid_original_edited, fid_reconstructed_edited, fid_original_reconstructed,
                           kid_<pair>, kid_<pair>_std, n, strength (, alpha)}},
               "groups": {<edited folder>: {<group>: the same metrics}}}]}

One entry per edited folder set: a run's final checkpoint (tag ``epoch`` = its last epoch, ``final`` true) and each
``eval_epochs`` checkpoint. Metrics appear only from evaluations that are current (newer than the edit, same
settings), so results.json always describes the family file as it is.

Every stage is skipped when its output is complete: training when ``done.json`` exists (an interrupted run is
resumed), editing when ``edit.json`` and every PNG it lists exist, evaluation when the eval JSON is newer than
``edit.json`` and was made with the same settings. The delta-block architecture is never a command-line default:
it is rebuilt from the checkpoint and the collector asserts that the evaluated block equals the trained one (F5).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asyrp import config as C
from asyrp.cli import UserError

SCHEMA = "asyrp.results/1"
STAGES = ("train", "edit", "evaluate")
SHARED_KEYS = ("backbone", "cache_dir", "device", "t_edit", "t_boost")   # copied into train: and edit:
TEXT_KEYS = ("attribute", "src", "trg")                                  # copied into train:
RUN_KEYS = frozenset({"name", "official", "direction", "train", "edit", "evaluate", "eval_epochs", "tags",
                      "description", "weights_dir", *SHARED_KEYS, *TEXT_KEYS})
FAMILY_KEYS = frozenset({"family", "description", "figures", "defaults", "runs"})
EVAL_DEFAULTS = {"clip_model": "ViT-B/32", "prompt_mode": "templates", "antialias": True, "fid": True, "sdir": True,
                 "inception_weights": None, "groups": None, "kid_subsets": 100, "kid_subset_size": 1000, "seed": 0,
                 "batch_size": 50, "fid_method": "auto", "device": None}
# the eval-JSON settings that must match for an existing evaluation to be reused
EVAL_SETTING_KEYS = ("sdir", "fid", "prompt_mode", "src_text", "trg_text", "antialias", "kid_subsets",
                     "kid_subset_size", "seed", "fid_method")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


class ExperimentError(UserError):
    """A family file or run folder that cannot be used; one line, exit code 2."""


# --------------------------------------------------------------------------------------------------
# Loading a family: variables, merging, overrides
# --------------------------------------------------------------------------------------------------

def expand_variables(obj, env: Mapping[str, str] | None = None, strict: bool = True,
                     used: dict | None = None, missing: list | None = None):
    """``${VAR}`` / ``${VAR:-default}`` in every string of ``obj`` (recursively). ``:-`` also replaces an empty
    value, ``-`` only an unset one. A string that is exactly one ``${...}`` becomes an int / float / bool when it
    reads as one, and None when it expands to ''. Unset variables without a default raise (``strict``) or stay as
    written (and are listed in ``missing``)."""
    env = os.environ if env is None else env
    used = {} if used is None else used
    missing = [] if missing is None else missing
    if isinstance(obj, dict):
        return {k: expand_variables(v, env, strict, used, missing) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand_variables(v, env, strict, used, missing) for v in obj]
    if not isinstance(obj, str) or "${" not in obj:
        return obj

    def sub(m: re.Match) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if value is None or (op == ":-" and value == ""):
            if op is None:
                if name not in missing:
                    missing.append(name)
                return m.group(0)
            value = default
        used[name] = value
        return value

    out = _VAR_RE.sub(sub, obj)
    if missing and strict:
        raise ExperimentError(f"the family needs environment variable(s) {', '.join(missing)} "
                              "(set them, or give defaults with ${VAR:-default})")
    if _VAR_RE.fullmatch(obj) and out != obj:
        if out == "":
            return None
        try:
            parsed = yaml.safe_load(out)
        except yaml.YAMLError:
            return out
        if isinstance(parsed, (bool, int, float)):
            return parsed
    return out


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """Nested dicts merge key by key; anything else in ``over`` replaces."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _parse_value(text: str):
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return _number(value) if isinstance(value, str) else value


def _number(value):
    """PyYAML reads 1e-5 as a string (YAML 1.1): turn numeric strings into numbers."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value


def parse_overrides(overrides) -> list[tuple[list[str], Any]]:
    """``["train.lr=0.1", ...]`` or ``{"train.lr": 0.1}`` → [(["train", "lr"], 0.1), ...]."""
    if not overrides:
        return []
    items = overrides.items() if isinstance(overrides, Mapping) else []
    out = []
    if not isinstance(overrides, Mapping):
        for text in overrides:
            key, sep, value = str(text).partition("=")
            if not sep or not key.strip():
                raise ExperimentError(f"--set {text!r}: write KEY=VALUE (e.g. train.lr=0.1)")
            out.append((key.strip().split("."), _parse_value(value.strip())))
    for key, value in items:
        out.append((str(key).split("."), value))
    return out


def _set_path(d: dict, keys: Sequence[str], value) -> None:
    for k in keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[keys[-1]] = value


def _coerce(cls, data: Mapping) -> dict:
    """Numbers written as strings (1e-5) into the field's type; the dataclass itself rejects unknown keys."""
    import typing
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
                    _set_path(spec, keys[2:], value)
            else:
                _set_path(spec, keys[1:] if keys[0] == "defaults" else keys, value)
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
    from asyrp.attributes import resolve_texts
    from asyrp.edit import EditConfig
    from asyrp.train import PRESETS, TrainConfig

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
                from asyrp.models.delta import DeltaBlockConfig
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
            from asyrp import weights as registry
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
    run.evaluate = {**EVAL_DEFAULTS, **{k: _number(v) if k in ("kid_subsets", "kid_subset_size", "seed",
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
    from asyrp.edit import EditConfig
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
            raise ExperimentError(f"{fam.path}: runs reference each other in a cycle: {' → '.join(stack + (run.name,))}")
        if run.name not in state:
            deps = [by_name[d["run"]] for d in run.deps if d.get("family") in (None, fam.name)]
            state[run.name] = 1 + max((wave(d, stack + (run.name,)) for d in deps), default=-1)
        return state[run.name]

    for run in fam.runs:
        run.wave = wave(run)


# --------------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------------

ARCH_FIELDS = ("kind", "heads", "layers", "ff_dim", "time_embedding", "norm", "activation", "dropout", "zero_init")


def _ref_label(ref: dict | None, family: str) -> str | None:
    if ref is None:
        return None
    fam = "" if ref.get("family") in (None, family) else f"{ref['family']}/"
    return f"{fam}{ref['run']}" + ("" if ref.get("epoch") is None else f"@epoch{ref['epoch']}")


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
        "direction": None if run.train is not None else _ref_label(run.direction_ref, run.family) or job.direction,
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
        from asyrp.models.delta import DeltaBlockConfig
        default = DeltaBlockConfig().to_dict()
        for f in ARCH_FIELDS:  # overwritten from the run's config.json once trained (init_from adopts its source's)
            tags[f] = delta.get(f, default[f] if cfg.init_from is None else None)
        tags.update(optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                    scheduler="StepLR" if cfg.scheduler_step > 0 else "constant",
                    scheduler_step=cfg.scheduler_step, scheduler_gamma=cfg.scheduler_gamma, epochs=cfg.epochs,
                    batch_size=cfg.batch_size, train_images=cfg.n_images, clip_weight=cfg.clip_weight,
                    l1_weight=cfg.l1_weight, l1_reference=cfg.l1_reference, precision=cfg.precision,
                    n_train_step=cfg.n_train_step, t_edit=cfg.t_edit,
                    init_from=_ref_label(run.init_ref, run.family) or cfg.init_from)
    else:
        tags.update(t_edit=ecfg.t_edit, init_from=None)
    tags.update(run.tags)
    return tags


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------

def _digest(x) -> str:
    import hashlib

    import torch
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
        from collections import OrderedDict
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
    from torch import nn

    class CachedInception(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.cache = model, _FeatureCache()
            self.name = getattr(model, "name", type(model).__name__)

        def forward(self, x):
            return self.cache(self.inner, x)

    return CachedInception()


def _cached_clip(encoder):
    from torch import nn

    from asyrp.metrics import _clip_image_size

    class CachedClip(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.cache = encoder, _FeatureCache()
            self.name = getattr(encoder, "name", None) or type(encoder).__name__
            self.image_size = _clip_image_size(encoder)

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
        from asyrp.backbones import load_backbone
        return self._get(("backbone", name, weights_dir, str(device)),
                         lambda: load_backbone(name, weights_dir=weights_dir, device=device))

    def clip(self, name: str, weights_dir, device):
        from asyrp.backbones import load_clip_model
        return self._get(("clip", name, weights_dir, str(device)),
                         lambda: load_clip_model(name, weights_dir=weights_dir, device=device))

    def eval_clip(self, name: str, weights_dir, device):
        return self._get(("eval_clip", name, weights_dir, str(device)),
                         lambda: _cached_clip(self.clip(name, weights_dir, device)[0]))

    def inception(self, weights, weights_dir):
        from asyrp.metrics import load_fid_inception
        return self._get(("inception", weights, weights_dir),
                         lambda: _cached_inception(load_fid_inception(weights, weights_dir)))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _train_state(run: Run) -> str:
    """new | partial | done (for the training folder of a trained run)."""
    d = run.train_dir
    if (d / "done.json").is_file() and (d / "delta.pt").is_file():
        return "done"
    return "partial" if d.exists() and any(d.iterdir()) else "new"


def _check_train_config(run: Run) -> None:
    record = _read_json(run.train_dir / "config.json")
    mine = C.to_dict(run.train)
    if record is not None and record.get("config") != mine:
        changed = sorted(k for k in set(record.get("config", {})) | set(mine)
                         if record.get("config", {}).get(k) != mine.get(k))
        raise ExperimentError(f"{run.train_dir} holds a run of another config (differs in {', '.join(changed)}); "
                              "use another --out, or delete the folder to retrain")


def _edit_state(job: EditJob) -> str:
    """done | stale | partial | new. Done: edit.json of this config, every PNG it lists, direction not newer."""
    record = _read_json(job.edit_dir / "edit.json")
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


def _eval_path(job: EditJob, folder: str) -> Path:
    from asyrp.metrics import default_eval_path
    return default_eval_path(job.edit_dir, job.edit_dir / folder)


def _eval_request(run: Run) -> dict:
    ev = run.evaluate
    return {"sdir": bool(ev["sdir"]), "fid": bool(ev["fid"]), "prompt_mode": ev["prompt_mode"] if ev["sdir"] else None,
            "src_text": run.texts.src if run.texts and ev["sdir"] else None,
            "trg_text": run.texts.trg if run.texts and ev["sdir"] else None, "antialias": bool(ev["antialias"]),
            "kid_subsets": ev["kid_subsets"], "kid_subset_size": ev["kid_subset_size"], "seed": ev["seed"],
            "fid_method": ev["fid_method"]}


def _eval_state(run: Run, job: EditJob, folder: str) -> str:
    path = _eval_path(job, folder)
    edit_json = job.edit_dir / "edit.json"
    if not path.is_file():
        return "new"
    if not edit_json.is_file() or path.stat().st_mtime_ns < edit_json.stat().st_mtime_ns:
        return "stale"
    result = _read_json(path)
    settings = (result or {}).get("settings") or {}
    want = _eval_request(run)
    if any(settings.get(k) != want[k] for k in EVAL_SETTING_KEYS if not (k in ("src_text", "trg_text", "prompt_mode")
                                                                          and not want["sdir"])):
        return "stale"
    groups = run.evaluate["groups"]
    if (settings.get("groups_csv") or None) != (str(groups) if groups else None):
        return "stale"
    return "done"


def _agree(value, distributed):
    """Rank 0's decision on every rank (all ranks look at the same files, but may look at different moments)."""
    if distributed is None:
        return value
    return distributed.all_gather_objects(value)[0]


def _device(name):
    from asyrp.io import default_device
    return default_device(name)


def _stage_train(run: Run, models: _Models, progress, distributed, actions: list) -> None:
    from asyrp.train import train
    if run.train is None:
        return
    state = _agree(_train_state(run), distributed)
    if state == "done":
        _check_train_config(run)
        actions.append({"run": run.name, "stage": "train", "action": "skipped"})
        return
    if run.train.init_from and not Path(run.train.init_from).is_file():
        raise ExperimentError(f"run {run.name}: transfer source {run.train.init_from} does not exist yet; train "
                              f"{_ref_label(run.init_ref, run.family)} first")
    device = _device(run.train.device)
    backbone = models.backbone(run.train.backbone, run.weights_dir, device)
    clip = models.clip(run.train.clip_model or backbone.default_clip, run.weights_dir, device)
    train(copy.deepcopy(run.train), run.train_dir, backbone=backbone, clip=clip, resume=True, progress=progress,
          distributed=distributed)
    actions.append({"run": run.name, "stage": "train", "action": "resumed" if state == "partial" else "trained"})


def _stage_edit(run: Run, models: _Models, redo, progress, distributed, actions: list) -> None:
    from asyrp.edit import edit
    for job in run.jobs:
        state = _agree(_edit_state(job), distributed)
        if state == "done" and "edit" not in redo:
            actions.append({"run": job.name, "stage": "edit", "action": "skipped"})
            continue
        if state == "other":
            raise ExperimentError(f"{job.edit_dir} holds an edit of another config; use another --out, or delete "
                                  "the folder to edit again")
        direction = Path(job.direction)
        if (run.train is not None or run.direction_ref is not None) and not direction.is_file():
            src = run.name if run.train is not None else _ref_label(run.direction_ref, run.family)
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
    """S_dir / FID / KID of one edited folder into its eval JSON (asyrp.metrics.evaluate_run)."""
    from asyrp.metrics import SmallSampleFIDWarning, evaluate_run
    ev = run.evaluate
    device = _device(ev["device"] or job.config.device)
    encoder = models.eval_clip(ev["clip_model"], run.weights_dir, device) if ev["sdir"] else None
    inception = models.inception(ev["inception_weights"], run.weights_dir) if ev["fid"] else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleFIDWarning)  # n is in every result, KID beside FID
        evaluate_run(job.edit_dir, job.edit_dir / folder, out=_eval_path(job, folder),
                     src_text=run.texts.src if ev["sdir"] else None, trg_text=run.texts.trg if ev["sdir"] else None,
                     clip_encoder=encoder, clip_model=str(ev["clip_model"]), prompt_mode=ev["prompt_mode"],
                     antialias=ev["antialias"], inception_model=inception, weights_dir=run.weights_dir,
                     groups=ev["groups"], fid=ev["fid"], sdir=ev["sdir"], kid_subsets=ev["kid_subsets"],
                     kid_subset_size=ev["kid_subset_size"], seed=ev["seed"], batch_size=ev["batch_size"],
                     device=device, fid_method=ev["fid_method"])


def _stage_evaluate(run: Run, models: _Models, redo, distributed, actions: list) -> None:
    is_main = distributed is None or distributed.rank == 0
    for job in run.jobs:
        record = _read_json(job.edit_dir / "edit.json")
        if record is None or _edit_state(job) not in ("done", "stale"):
            raise ExperimentError(f"run {job.name}: no complete edit in {job.edit_dir}; run --stage edit first")
        for setting in record.get("settings", []):
            folder = setting["folder"]
            state = _agree(_eval_state(run, job, folder), distributed)
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
    """Train → edit → evaluate the runs of a family (all, or ``only``) and write ``<out_root>/<family>/results.json``.

    ``stages`` picks the stages; ``redo`` ("edit", "evaluate") repeats them even when their outputs are complete.
    ``distributed`` (asyrp.distributed.Context, under torchrun) makes training data-parallel and editing sharded;
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
        if run.init_ref is not None and "train" in stages and _train_state(run) != "done":
            needed.append(run.init_ref)
        if run.direction_ref is not None and "edit" in stages:
            needed.append(run.direction_ref)
        for ref in needed:
            if ref.get("family") not in (None, fam.name):
                continue  # another family's run: checked when its checkpoint is opened
            src = fam.run(ref["run"])
            if src.name not in names and _train_state(src) != "done":
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
    results = collect_results(fam)
    path = fam.out_dir / "results.json"
    if distributed is None or distributed.rank == 0:
        from asyrp.io import atomic_json
        atomic_json(path, results)
    if distributed is not None:
        distributed.barrier()
    return {**results, "path": str(path), "actions": actions}


# --------------------------------------------------------------------------------------------------
# Collecting results
# --------------------------------------------------------------------------------------------------

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
        record = _read_json(run.train_dir / "config.json")
        if record is not None:
            res = record.get("resolved", {})
            trained_arch = _arch(res.get("delta"))
            tags.update({k: v for k, v in trained_arch.items()})
            tags.update(t_edit=res.get("t_edit"), clip_weight=res.get("clip_weight"),
                        text_cosine=res.get("text_cosine"), clip_model_train=res.get("clip_model"),
                        backbone_sha256=res.get("backbone_sha256"))
        if (run.train_dir / "log.jsonl").is_file():
            entry["log"] = str(run.train_dir / "log.jsonl")
        entry["train_summary"] = _read_json(run.train_dir / "done.json")
        entry["status"] = "trained" if entry["train_summary"] else ("training" if record else "new")
    elif run.direction_ref is not None:
        record = _read_json(Path(run.direction).parent / "config.json")
        if record is not None:
            trained_arch = _arch(record.get("resolved", {}).get("delta"))
    edit_record = _read_json(job.edit_dir / "edit.json")
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
        path = _eval_path(job, folder)
        ev = _read_json(path) if _eval_state(run, job, folder) == "done" else None
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


def collect_results(fam: Family) -> dict:
    """Every run of the family (finished or not) with its tags, folders, training summary and metrics."""
    runs = []
    for run in fam.runs:
        for job in run.jobs:
            runs.append(_collect_job(fam, run, job))
    return {"schema": SCHEMA, "family": fam.name, "config_path": str(fam.path), "config": fam.raw,
            "variables": fam.variables, "overrides": fam.overrides, "out_dir": str(fam.out_dir), "runs": runs}


# --------------------------------------------------------------------------------------------------
# Plans (--dry-run)
# --------------------------------------------------------------------------------------------------

def plan(fam: Family, runs: Sequence[Run], stages=STAGES, redo=()) -> list[dict]:
    """What run_experiment would do, per run and stage, from the files alone (loads no model)."""
    out = []
    for run in runs:
        item: dict[str, Any] = {"run": run.name, "wave": run.wave, "needs": [_ref_label(d, fam.name) for d in run.deps]}
        if run.train is not None:
            state = _train_state(run)
            item["train"] = {"done": "skip (done)", "partial": "resume", "new": "train"}[state] \
                if "train" in stages else f"not requested ({state})"
        else:
            item["train"] = "none (" + ("released checkpoint" if run.official else "checkpoint of another run"
                                        if run.direction_ref else "given checkpoint") + ")"
        edits = []
        for job in run.jobs:
            state = _edit_state(job)
            if "edit" not in stages:
                edits.append(f"{job.edit_dir.name}: not requested ({state})")
            else:
                edits.append(f"{job.edit_dir.name}: " + ("skip (done)" if state == "done" and "edit" not in redo
                                                         else "edit"))
        item["edit"] = edits
        evals = []
        for job in run.jobs:
            record = _read_json(job.edit_dir / "edit.json")
            folders = [s["folder"] for s in record.get("settings", [])] if record else ["(after edit)"]
            for folder in folders:
                state = _eval_state(run, job, folder) if record else "new"
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
            parts.append(f"init_from={_ref_label(run.init_ref, run.family)}")
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


# --------------------------------------------------------------------------------------------------
# CLI: asyrp run-experiment
# --------------------------------------------------------------------------------------------------

def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="family YAML (configs/experiments/<family>.yaml) or its name")
    p.add_argument("--out", default=None, help="results root; runs go to ROOT/<family>/<run>/ "
                                               "(default: $ASYRP_RUNS or ./runs)")
    p.add_argument("--runs", action="append", metavar="A,B", help="only these runs (default: all)")
    p.add_argument("--stage", action="append", metavar="STAGE",
                   help="train, edit, evaluate (repeat or comma-separate; default: all three)")
    p.add_argument("--redo", action="append", metavar="STAGE", help="edit / evaluate again even when complete")
    p.add_argument("--set", action="append", dest="overrides", metavar="KEY=VALUE",
                   help="override a run key for every run (train.lr=0.1) or one run (runs.NAME.train.lr=0.1)")
    p.add_argument("--wave", type=int, help="only the runs of dependency wave K (0: runs needing no other run; "
                                            "k: runs needing wave < k)")
    p.add_argument("--list", action="store_true", help="print the selected run names, one per line, and exit")
    p.add_argument("--waves", action="store_true", help="print 'WAVE NAME' for the selected runs, one per line, "
                                                         "in wave order, and exit (for job scripts)")
    p.add_argument("--dry-run", action="store_true", help="print what would run (from the files; loads nothing)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _split(values: Sequence[str] | None) -> list[str]:
    return [v.strip() for text in values or [] for v in text.split(",") if v.strip()]


def main(args: argparse.Namespace) -> int:
    out_root = args.out or os.environ.get("ASYRP_RUNS") or "runs"
    only = _split(args.runs) or None
    stages = tuple(_split(args.stage)) or STAGES
    redo = tuple(_split(args.redo))
    bad = sorted(set(stages) - set(STAGES)) + sorted(set(redo) - {"edit", "evaluate"})
    if bad:
        raise ExperimentError(f"unknown stage(s) {bad}; stages: {', '.join(STAGES)} (--redo: edit, evaluate)")
    if args.list or args.waves or args.dry_run:
        fam = load_family(args.config, out_root, args.overrides, strict=False)
        runs = fam.select(only, args.wave)
        if args.waves:
            for run in sorted(runs, key=lambda r: r.wave):
                print(run.wave, run.name)
            return 0
        if args.list:
            for run in runs:
                print(run.name)
            return 0
        print(f"family {fam.name} ({fam.path}) → {fam.out_dir}; stages: {', '.join(stages)}")
        if fam.missing:
            print(f"  warning: unset environment variables: {', '.join(fam.missing)}")
        if fam.variables:
            print("  variables: " + ", ".join(f"{k}={v}" for k, v in fam.variables.items()))
        for item in plan(fam, runs, stages, redo):
            needs = f" (needs {', '.join(item['needs'])})" if item["needs"] else ""
            print(f"- {item['run']} [wave {item['wave']}]{needs}: {item['summary']}")
            print(f"    train: {item['train']}")
            for line in item["edit"]:
                print(f"    edit: {line}")
            for line in item["evaluate"]:
                print(f"    evaluate: {line}")
        print(f"  results: {fam.out_dir / 'results.json'}")
        return 0
    from asyrp.distributed import context_from_env
    dist = context_from_env()
    try:
        results = run_experiment(args.config, out_root, only=only, stages=stages, overrides=args.overrides,
                                 progress=args.progress, distributed=dist, redo=redo, wave=args.wave)
    finally:
        if dist is not None:
            dist.close()
    if dist is None or dist.rank == 0:
        done = {}
        for a in results["actions"]:
            done[a["action"]] = done.get(a["action"], 0) + 1
        print(f"{results['family']}: " + ", ".join(f"{v} {k}" for k, v in sorted(done.items())), file=sys.stderr)
        print(f"results written to {results['path']}")
    return 0
