"""Line plots of a study: training terms against the step (log.jsonl) and metrics against the edit strength, drawn with
matplotlib's object API on the Agg canvas (no pyplot state, no backend switch); each PNG gets a sidecar JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from asyrp.io.files import atomic_path, read_jsonl
from asyrp.study.grids import load_all, sidecar
from asyrp.study.tags import Entry, entries, format_tag, value_sort_key, varied_tags

def _ema(values: Sequence[float], weight: float) -> list[float]:
    """Debiased exponential moving average (what wandb calls smoothing): weight 0 = raw values."""
    out, acc = [], 0.0
    for k, v in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** k) if weight > 0 else v)
    return out


def loss_series(log: str | Path, term: str = "loss", per_image: bool = False) -> tuple[list[int], list[float]]:
    """(x, y) of one training log. Default: one point per optimiser step, y = the mean of the term over the timesteps
    whose gradients that step applied (several with gradient accumulation). ``per_image``: one point per image batch,
    y = the sum of the term over the batch's timesteps (the earlier reproduction's "image loss"), x = the step count
    at the batch's end."""
    lines = read_jsonl(log)
    if not lines:
        raise ValueError(f"{log} holds no log lines")
    if term not in lines[0]:
        terms = ", ".join(k for k in lines[0] if k.startswith("loss"))
        raise ValueError(f"{log} has no term {term!r} (it has {terms})")
    groups: list[list[dict]] = []
    current: list[dict] = []
    previous_step = 0  # a log starts with training (asyrp train keeps every line from the first step)
    for k, line in enumerate(lines):
        current.append(line)
        # a line's "step" counts the steps taken so far, so the line that made a step is the one where it grows
        if per_image:
            done = k + 1 == len(lines) or (lines[k + 1]["epoch"], lines[k + 1]["batch"]) != (line["epoch"],
                                                                                            line["batch"])
        else:
            done = line["step"] != previous_step or k + 1 == len(lines)
        previous_step = line["step"]
        if done:
            groups.append(current)
            current = []
    xs = [g[-1]["step"] for g in groups]
    ys = [sum(x[term] for x in g) / (1 if per_image else len(g)) for g in groups]
    return xs, ys


def _new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.0):
    # lazily: matplotlib takes seconds to import and only the line plots need it
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # slow to import: only when a plot is drawn
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save_plot(fig, out: Path) -> Path:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def loss_curves(logs_by_label: Mapping[str, str | Path], out: str | Path, term: str = "loss", smoothing: float = 0.0,
                per_image: bool = False, *, command: str | None = None) -> Path:
    """One curve per training log (asyrp train's log.jsonl) of ``term`` (loss, loss_clip or loss_l1) against the
    optimiser step. ``smoothing`` in [0, 1): debiased EMA drawn over the faint raw curve."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if not logs_by_label:
        raise ValueError("loss_curves needs at least one log")
    out = Path(out)
    fig, (ax,) = _new_figure()
    points = {}
    for k, (label, log) in enumerate(logs_by_label.items()):
        xs, ys = loss_series(log, term, per_image)
        color = f"C{k % 10}"
        if smoothing > 0:
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, _ema(ys, smoothing), color=color, label=str(label), linewidth=1.5)
        else:
            ax.plot(xs, ys, color=color, label=str(label), linewidth=1.2)
        points[str(label)] = len(xs)
    what = {"loss": "loss = λ_CLIP·L_CLIP + λ_L1·cos·L1", "loss_clip": "loss_clip = −log((1 + cos)/2)",
            "loss_l1": "loss_l1 = |P_edit − P_ref|₁"}.get(term, term)
    ax.set_xlabel("optimiser step" + (" (end of each image batch)" if per_image else ""))
    ax.set_ylabel(what, fontsize=9)
    ax.set_title(("per image batch: sum over its timesteps" if per_image else
                  "per optimiser step (mean over the timesteps of the step)")
                 + (f"; EMA smoothing {smoothing:g}, raw curve faint" if smoothing else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_plot(fig, out)
    sidecar(out, "loss_curves", {"logs": {str(k): str(v) for k, v in logs_by_label.items()}, "term": term,
                                  "smoothing": smoothing, "per_image": per_image}, command, points=points)
    return out


METRIC_LABELS = {"s_dir_original": ("S_dir original→edited (cosine; ± std over images)", "s_dir_original_std"),
                 "s_dir_reconstructed": ("S_dir reconstructed→edited (cosine; ± std)", "s_dir_reconstructed_std"),
                 "fid_original_edited": ("FID(original, edited)", None),
                 "fid_reconstructed_edited": ("FID(reconstructed, edited)", None),
                 "kid_original_edited": ("KID(original, edited) (± std over subsets)", "kid_original_edited_std")}


def metric_vs_strength(results, out: str | Path, metrics: Sequence[str] = ("s_dir_original", "fid_original_edited"),
                       *, series_tags: Sequence[str] | None = None, command: str | None = None) -> Path:
    """One panel per metric against the edit strength; one line per series (the varied tags other than strength,
    e.g. the attribute), std error bars where the metric has one, the image count N in the legend."""
    unknown = [m for m in metrics if m not in METRIC_LABELS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(METRIC_LABELS)}")
    loaded = load_all(results)
    items = [e for r in loaded for e in entries(r) if isinstance(e.tags.get("strength"), (int, float))
             and any(e.metric(m) is not None for m in metrics)]
    if not items:
        raise ValueError("no evaluated edit with a strength in these results")
    metrics = [m for m in metrics if any(e.metric(m) is not None for e in items)]  # e.g. FID switched off
    tags = list(series_tags) if series_tags is not None else [t for t in varied_tags(items) if t != "strength"]
    series: dict[str, list[Entry]] = {}
    for e in sorted(items, key=lambda e: [value_sort_key(e.tags.get(t)) for t in tags]):
        label = ", ".join(format_tag(t, e.tags.get(t)) for t in tags) or e.family
        series.setdefault(label, []).append(e)
    out = Path(out)
    fig, axes = _new_figure(len(metrics), width=5.0)
    plotted = {}
    for ax, metric in zip(axes, metrics, strict=True):
        name, std_key = METRIC_LABELS[metric]
        for k, (label, group) in enumerate(series.items()):
            group = sorted((e for e in group if e.metric(metric) is not None), key=lambda e: e.tags["strength"])
            if not group:
                continue
            xs = [e.tags["strength"] for e in group]
            ys = [e.metric(metric) for e in group]
            err = [e.metric(std_key) or 0.0 for e in group] if std_key else None
            ns = sorted({e.metric("n") for e in group if e.metric("n") is not None})
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=f"C{k % 10}",
                        label=f"{label} (N={'/'.join(map(str, ns)) or '?'})")
            plotted[f"{metric}|{label}"] = {"strength": xs, "value": ys, "n": ns}
        if metric.startswith("s_dir"):
            ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
        if metric.startswith("fid"):
            name += "\n(biased upward for N < 2048; compare at equal N)"
        ax.set_xlabel("edit strength (Δh multiplier)")
        ax.set_ylabel(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save_plot(fig, out)
    sidecar(out, "metric_vs_strength", {"results": [r["_source"] for r in loaded],
                                         "families": sorted({e.family for e in items}), "metrics": list(metrics),
                                         "series_tags": tags}, command, points=plotted)
    return out


