"""The results file of a study, ``<out>/<family>/results.json``: its schema, the one writer and the reader.

Both collectors (:mod:`asyrp.study.family_results`: a family's runs; :mod:`asyrp.study.collect`: edit folders given
directly) build the document
with :func:`results_document`; :func:`write_results` checks it against the schema and writes it atomically;
:func:`load_results` reads and checks it again for ``asyrp report`` and ``asyrp figures``.

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
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asyrp.io.files import atomic_json

RESULTS_SCHEMA = "asyrp.results/1"
EVAL_SCHEMA = "asyrp.eval/1"            # asyrp.metrics.SCHEMA (not imported: it pulls in torch)
METRIC_KEYS = ("s_dir_original", "s_dir_original_std", "s_dir_reconstructed", "s_dir_reconstructed_std",
               "fid_original_edited", "fid_reconstructed_edited", "fid_original_reconstructed",
               "kid_original_edited", "kid_original_edited_std", "n")


class ResultsError(ValueError):
    """A results file that does not follow the ``asyrp.results/1`` schema (one-line message)."""


def read_json_checked(path: Path) -> Any:
    """A JSON file, None when missing; :class:`ResultsError` when it is not JSON."""
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
    data = read_json_checked(path)
    return validate_results(data, base=path.parent, origin=str(path))


def as_results(obj: str | Path | Mapping) -> dict:
    """A results dict from a path or an (already loaded or freshly collected) dict."""
    if isinstance(obj, Mapping):
        return obj if obj.get("_source") else validate_results(dict(obj))
    return load_results(obj)



def results_document(family: str, runs: Sequence[Mapping], config: Mapping | None = None,
                     config_path: str | None = None, **fields) -> dict:
    """An ``asyrp.results/1`` document: the family, its config and ``fields`` (variables, overrides, out_dir of a
    family file) and the runs."""
    return {"schema": RESULTS_SCHEMA, "family": family, "config_path": config_path, "config": dict(config or {}),
            **fields, "runs": list(runs)}


def write_results(path: str | Path, results: Mapping) -> Path:
    """The one writer of results.json: check the document against the schema, then write it atomically."""
    validate_results(results, origin=str(path))
    atomic_json(Path(path), dict(results))
    return Path(path)
