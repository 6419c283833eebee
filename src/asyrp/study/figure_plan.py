"""Every figure a set of results supports, and making them (what ``asyrp figures --results`` draws).

``asyrp figures --results R.json --out figures/`` makes every figure the results support (:func:`plan_figures`):

===================================== =============================================================================
``reproduction/in_domain.png``        editing grid of the in-domain attributes (strength 1, or the largest);
                                      ``…_s0.50.png`` at strength 0.5, ``…_retrained[_s0.50].png`` for the
                                      retrained directions when the family also holds released ones
``reproduction/unseen_domain.png``    editing grid of the unseen-domain attributes (pixar, neanderthal, …), same
                                      variants
``reproduction/linearity.png``        strength sweep of one image (the run with most strengths; smiling first)
``reproduction/details.png``          fewest vs most generation steps of one attribute
``reproduction/metric_vs_strength.png``  S_dir and FID against strength
``ablation/heads_vs_epochs.png``      rows = epoch, columns = heads (other varied tags fixed, see the sidecar)
``ablation/layer_types.png``          rows = epoch (or strength), columns = kind of delta block
``ablation/strength_vs_heads.png``    rows = strength, columns = heads
``ablation/grid_<family>.png``        the first two varied tags, for a family none of the above fits
``ablation/metric_vs_strength_<family>.png``
``<section>/loss_curves_<family>.png``  one curve per training run of the family
``shapes/editing_grid.png``, ``shapes/linearity.png``, ``shapes/details.png``, ``shapes/metric_vs_strength.png``
                                      the same for a family of the offline shapes world (and ``shapes/…`` ablation
                                      names for shapes ablations)
===================================== =============================================================================

A family is a "reproduction" when only the attribute, strength, step count or official-ness vary between its runs
(tags that these determine, such as the texts or t_edit of an attribute, do not count), a "shapes" family when its
name, config or tags say so, and an "ablation" otherwise. When two families would write the same file, the later one
gets ``_<family>`` appended.
"""


from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
import sys
from pathlib import Path

from asyrp.study.grids import (UNSEEN_DOMAIN, ablation_grid, editing_grid, hashable, linearity_sweep, matches,
                               steps_comparison, strength_folders)
from asyrp.study.plots import loss_curves, metric_vs_strength
from asyrp.study.results import as_results
from asyrp.study.tags import Entry, entries, family_style, format_tag, slug, value_sort_key, varied_tags


def is_shapes_family(results: Mapping, items: Sequence[Entry]) -> bool:
    """A family of the offline shapes world: by its name, its config's backbone or its runs' tags."""
    config = results.get("config") or {}
    backbones = {config.get("backbone"), (config.get("defaults") or {}).get("backbone")}
    backbones |= {e.tags.get("backbone") for e in items}
    return "shapes" in str(results.get("family", "")).lower() or "shapes" in backbones or config.get("world") == \
        "shapes"


def _is_unseen(e: Entry) -> bool:
    domain = e.tags.get("domain")
    if domain is not None:
        return str(domain).lower().startswith("un")
    return str(e.tags.get("attribute")) in UNSEEN_DOMAIN


def _mode(values: list):
    counts = Counter(hashable(v) for v in values)
    best = max(counts.values())
    return sorted((v for v, c in counts.items() if c == best), key=value_sort_key)[0]


def _preferred(tag: str, values: list):
    """The value a figure fixes a tag at: strength 1 (else the largest), the last epoch, else the commonest."""
    distinct = sorted({hashable(v) for v in values}, key=value_sort_key)
    if tag == "strength":
        return 1.0 if any(isinstance(v, (int, float)) and abs(v - 1) < 1e-9 for v in distinct) else distinct[-1]
    if tag in ("epoch", "epochs"):
        return distinct[-1]
    return _mode(values)


def _representatives(items: Sequence[Entry], strength) -> dict[str, Entry]:
    """One entry per attribute at ``strength``: the commonest step count, then the first run by name."""
    steps = _mode([e.tags.get("n_test_step") for e in items])
    out: dict[str, Entry] = {}
    for attr in sorted({str(e.tags.get("attribute")) for e in items}):
        cands = [e for e in items
                 if str(e.tags.get("attribute")) == attr and matches(e.tags.get("strength"), strength)]
        best = [e for e in cands if e.tags.get("n_test_step") == steps] or cands
        if best:
            out[attr] = min(best, key=lambda e: (e.run, e.folder))
    return out


def _editing_grid_jobs(add, section: str, family: str, items: Sequence[Entry]) -> None:
    """Editing grids: released and retrained directions apart (released first, without suffix, as the earlier
    reproduction showed them), at strength 1 (else the largest) and at 0.5 where the runs have it."""
    by_official: dict[bool, list[Entry]] = {}
    for e in items:
        by_official.setdefault(bool(e.tags.get("official")), []).append(e)
    for official, group in sorted(by_official.items(), key=lambda kv: not kv[0]):
        suffix = "_retrained" if not official and len(by_official) > 1 else ""
        main = _preferred("strength", [e.tags.get("strength") for e in group])
        extra = [0.5] if main != 0.5 and any(matches(e.tags.get("strength"), 0.5) for e in group) else []
        for strength in [main, *extra]:
            reps = _representatives(group, strength)
            tail = suffix + ("" if strength == main else f"_s{strength:.2f}")
            grids = [("editing_grid", reps)] if section == "shapes" else [
                ("in_domain", {a: e for a, e in reps.items() if not _is_unseen(e)}),
                ("unseen_domain", {a: e for a, e in reps.items() if _is_unseen(e)})]
            for name, chosen in grids:
                if chosen:
                    add(f"{section}/{name}{tail}.png", "editing_grid", family,
                        edit_dirs_by_attribute={a: e.edit_dir for a, e in chosen.items()}, images=None,
                        strength=strength)


def _reproduction_jobs(add, section: str, family: str, items: Sequence[Entry]) -> None:
    _editing_grid_jobs(add, section, family, items)
    sweeps = sorted({e.edit_dir for e in items}, key=lambda d: (-len(strength_folders(d)), str(d)))
    sweeps = [d for d in sweeps if len(strength_folders(d)) >= 3]
    if sweeps:
        attr_of = {e.edit_dir: str(e.tags.get("attribute")) for e in items}
        best = next((d for d in sweeps if attr_of.get(d) == "smiling"), sweeps[0])
        add(f"{section}/linearity.png", "linearity_sweep", family, edit_dir=best, image=None)
    # one attribute edited with different step counts by the same kind of direction (released or retrained)
    by_steps: dict[tuple, dict[int, Path]] = {}
    for e in sorted(items, key=lambda e: (e.run, e.folder)):
        if isinstance(e.tags.get("n_test_step"), int):
            key = (str(e.tags.get("attribute")), bool(e.tags.get("official")))
            by_steps.setdefault(key, {}).setdefault(e.tags["n_test_step"], e.edit_dir)
    for key in sorted(by_steps, key=lambda k: (k[0] != "smiling", k)):
        runs = by_steps[key]
        if len(runs) >= 2:
            lo, hi = min(runs), max(runs)
            add(f"{section}/details.png", "steps_comparison", family, edit_dir_a=runs[lo], edit_dir_b=runs[hi],
                images=None, labels=(f"{lo} steps", f"{hi} steps"))
            break


def _ablation_jobs(add, section: str, family: str, items: Sequence[Entry], varied: Sequence[str], results) -> None:
    wanted = []
    if "heads" in varied and "epoch" in varied:
        wanted.append(("heads_vs_epochs.png", "epoch", "heads"))
    if "kind" in varied:
        wanted.append(("layer_types.png", "epoch" if "epoch" in varied else
                       "strength" if "strength" in varied else None, "kind"))
    if "heads" in varied and "strength" in varied:
        wanted.append(("strength_vs_heads.png", "strength", "heads"))
    if not wanted:
        wanted.append((f"grid_{slug(family)}.png", varied[1] if len(varied) > 1 else None, varied[0]))
    for name, row, col in wanted:
        # the other varied tags are fixed at one value each (recorded as filters in the sidecar)
        fixed = {t: _preferred(t, [e.tags.get(t) for e in items if e.tags.get(t) is not None])
                 for t in varied if t not in (row, col)}
        add(f"{section}/{name}", "ablation_grid", family, results=results, row_tag=row, col_tag=col, image=None,
            filters=fixed)


def plan_figures(results_list: Iterable) -> list[dict]:
    """[{name, function, kwargs, family}] for every figure the results support (file names as in the docstring)."""
    jobs: list[dict] = []
    used: set[str] = set()

    def add(name: str, function: str, family: str, **kwargs):
        if name in used:
            stem, ext = name.rsplit(".", 1)
            name = f"{stem}_{slug(family)}.{ext}"
        used.add(name)
        jobs.append({"name": name, "function": function, "family": family, "kwargs": kwargs})

    for results in results_list:
        results = as_results(results)
        items = entries(results)
        if not items:
            continue
        family = results["family"]
        style = family_style(items)
        section = "shapes" if is_shapes_family(results, items) else style
        varied = varied_tags(items)
        plain = [e for e in items if "alpha" not in e.tags]  # interpolations have no strength axis
        if style == "reproduction" and plain:
            _reproduction_jobs(add, section, family, plain)
        elif style == "ablation":
            _ablation_jobs(add, section, family, items, varied, results)
        strengths = {e.tags.get("strength") for e in items if e.metric("s_dir_original") is not None
                     or e.metric("fid_original_edited") is not None}
        if len(strengths) >= 2:
            name = f"{section}/metric_vs_strength.png" if style == "reproduction" else \
                f"{section}/metric_vs_strength_{slug(family)}.png"
            add(name, "metric_vs_strength", family, results=results)
        logs = logs_by_label(items)
        if logs:
            add(f"{section}/loss_curves_{slug(family)}.png", "loss_curves", family, logs_by_label=logs)
    return jobs


def logs_by_label(items: Sequence[Entry]) -> dict[str, Path]:
    """One log per training run, labelled by what differs between the trainings (not strength or epoch, which
    belong to evaluation)."""
    train_tags = [t for t in varied_tags(items) if t not in ("strength", "alpha", "epoch", "n_test_step")]
    logs: dict[str, Path] = {}
    seen = set()
    for e in sorted(items, key=lambda e: e.run):
        if e.log is None or not e.log.is_file() or e.log in seen:
            continue
        seen.add(e.log)
        label = ", ".join(format_tag(t, e.tags.get(t)) for t in train_tags) or e.run
        logs[label if label not in logs else f"{label} ({e.run})"] = e.log
    return logs


FUNCTIONS: dict[str, Callable[..., Path]] = {
    "editing_grid": editing_grid, "linearity_sweep": linearity_sweep, "steps_comparison": steps_comparison,
    "ablation_grid": ablation_grid, "loss_curves": loss_curves, "metric_vs_strength": metric_vs_strength}


def make_figures(results_list: Iterable, out: str | Path, command: str | None = None,
                 sections: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> list[Path]:
    """Make every planned figure under ``out`` (only those of ``sections``, e.g. ("ablation",), if given); a figure
    whose inputs are missing is skipped with a message."""
    out = Path(out)
    loaded = [as_results(r) for r in results_list]
    written = []
    for job in plan_figures(loaded):
        if sections is not None and job["name"].split("/", 1)[0] not in sections:
            continue
        try:
            written.append(FUNCTIONS[job["function"]](**job["kwargs"], out=out / job["name"], command=command))
        except (FileNotFoundError, ValueError) as e:
            (log or (lambda m: print(m, file=sys.stderr)))(f"skipped {job['name']}: {' '.join(str(e).split())}")
    return written


