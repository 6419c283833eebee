"""Markdown tables of a study from its result files (what ``asyrp report`` prints and writes).

Inputs are the family files that ``asyrp run-experiment`` writes (``<root>/<family>/results.json``, schema
``asyrp.results/1``, read and checked by :func:`asyrp.study.results.load_results`), edit folders given directly
(``--run``; their ``eval*.json`` files are collected by :func:`asyrp.study.collect.collect_folders`), and single
``eval.json`` files (``--eval``).

Tables (file ``<out>/<name>.md``, marker name ``<!-- asyrp:table <name> -->``):

``sdir_<family>``      S_dir per attribute (columns) and strength (rows), mean ± std (N), for families that vary
                       only the attribute / strength / step count (a reproduction); quoted anchors below
``fid_<family>``       FID(orig, edit), FID(recon, edit), FID(orig, recon), KID(orig, edit) per attribute and
                       strength, every cell with its N (N < 2048 flagged as biased); quoted anchors below
``bias_<family>``      the same metrics per image group (``evaluate --groups``), with the group sizes
``ablation_<family>``  one row per evaluated run and strength: the family's varied tags + every metric
``eval_<file stem>``   every metric of one eval.json
``anchors``            every published number we quote, with its source and its publishers' definition

Published numbers (``asyrp/resources/anchors.yaml``) only ever appear in rows labelled "quoted", below a separator,
with a footnote saying where they come from, what their definition is, and which faults of the earlier reproduction
affect them: they were not measured here and use other CLIPs, prompts, image counts and (for FID) a broken input.

``--into blogpost.md`` replaces what stands between ``<!-- asyrp:table NAME -->`` and ``<!-- /asyrp:table -->``
with the regenerated table, so a report includes its tables without hand edits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import yaml

from asyrp.study.results import EVAL_SCHEMA, METRIC_KEYS, ResultsError, as_results, read_json_checked
from asyrp.study.tags import (TAG_ORDER, Entry, constant_tags, dependent_tags, entries, family_style, format_tag,
                              format_value, slug, value_sort_key, varied_tags)

FID_SMALL_N = 2048                      # asyrp.metrics.FID_SMALL_N: FID below it is biased upward
FID_NOTE = (f"† N < {FID_SMALL_N}: FID is biased upward at this N and only comparable at equal N; KID beside it is "
            "unbiased.")


def load_anchors(path: str | Path | None = None) -> dict:
    """The quoted numbers: the package's ``resources/anchors.yaml`` or another file of the same layout."""

    text = Path(path).read_text() if path else resources.files("asyrp.resources").joinpath("anchors.yaml").read_text()
    data = yaml.safe_load(text)
    for a in data["anchors"]:
        if a["source"] not in data["sources"]:
            raise ValueError(f"anchor {a['id']}: unknown source {a['source']!r}")
    return data


class _Footnotes:
    """Numbered footnotes for quoted rows: [A1] quoted from …; their definition: …; faults … (anchors that share
    source, definition and faults share one note)."""

    def __init__(self, anchors: Mapping):
        self.anchors, self.order = anchors, []

    @staticmethod
    def _key(anchor: Mapping) -> tuple:
        return anchor["source"], " ".join(anchor["definition"].split()), tuple(anchor.get("faults") or ())

    def ref(self, anchor: Mapping) -> str:
        key = self._key(anchor)
        if key not in self.order:
            self.order.append(key)
        return f"A{self.order.index(key) + 1}"

    def render(self) -> list[str]:
        lines = []
        for k, (source, definition, faults) in enumerate(self.order, 1):
            src = self.anchors["sources"][source]
            fault_text = "; ".join(f"{f}: {self.anchors['faults'][f]}" for f in faults)
            lines.append(f"- [A{k}] quoted from {src['citation']} ({src['where']}); their definition: {definition}"
                         + (f". Faults: {fault_text}" if fault_text else "") + ".")
        return lines


def _anchor_cell(anchor: Mapping, attribute: str) -> str:
    """value (std) as the publication printed it; ranges and lists are strings."""
    value = (anchor.get("values") or {}).get(attribute)
    if value is None:
        return ""
    digits = anchor.get("digits", 2)
    std = (anchor.get("std") or {}).get(attribute)
    text = f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)
    return text + (f" ({std:.{digits}f})" if std is not None else "")


def _anchor_rows(anchors: Mapping, table: str, attributes: Sequence[str], notes: _Footnotes) -> list[list[str]]:
    rows = []
    for a in anchors["anchors"]:
        if a["table"] != table or not any(attr in (a.get("values") or {}) for attr in attributes):
            continue
        n = f"N={a['n']}" if a.get("n") else "N unknown"
        label = f"quoted [{notes.ref(a)}]: {a['label']} ({n})"
        rows.append([label] + [_anchor_cell(a, attr) for attr in attributes])
    return rows


# --------------------------------------------------------------------------------------------------
# Markdown helpers
# --------------------------------------------------------------------------------------------------

def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(x, digits: int) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def sdir_cell(mean, std, n) -> str:
    if mean is None:
        return "—"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "") + (f" (N={n})" if n is not None else "")


def fid_cell(value, n) -> str:
    if value is None:
        return "—" if n is None else f"— (N={n})"
    flag = "†" if n is not None and n < FID_SMALL_N else ""
    return f"{value:.2f}" + (f" (N={n}{flag})" if n is not None else "")


def kid_cell(mean, std, n) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "") + (f" (N={n})" if n is not None else "")


def _definitions(items: Sequence[Entry], which: Sequence[str]) -> list[str]:
    """Our metric definitions as the eval files recorded them (with CLIP, prompts, Inception), else the package's."""
    found: dict[str, str] = {}
    settings: dict = {}
    for e in items:
        ev = read_json_checked(e.eval_file) if e.eval_file else None
        if not isinstance(ev, dict):
            continue
        settings = settings or ev.get("settings") or {}
        for m in ev.get("metrics", []):
            found.setdefault(m.get("metric"), m.get("definition"))
        if all(k in found for k in which):
            break
    if not all(found.get(k) for k in which):
        from asyrp.metrics import DEFINITIONS  # lazily: asyrp.metrics imports torch, which asyrp report does not need
        for k in which:
            found[k] = found.get(k) or DEFINITIONS[k]
    names = {"s_dir": "S_dir", "fid": "FID", "kid": "KID", "directional_clip_loss": "directional CLIP loss"}
    lines = [f"- {names.get(k, k)} (this study): {found[k]}" for k in which]
    if settings:
        clip = f"CLIP `{settings['clip_model']}` (text direction: {settings.get('prompt_mode')})" \
            if settings.get("clip_model") else "no CLIP (S_dir off)"
        inception = f"Inception `{settings['inception']}`" if settings.get("inception") else "no Inception (FID off)"
        lines.append(f"- Measured with {clip} and {inception}; N = images per set, paired by file name.")
    else:
        lines.append("- N = images per set, paired by file name.")
    return lines


def _row_key(e: Entry, tags: Sequence[str]) -> tuple:
    return tuple(value_sort_key(e.tags.get(t)) for t in tags)


def _row_label(e: Entry, tags: Sequence[str]) -> str:
    return ", ".join(format_tag(t, e.tags.get(t)) for t in tags)


def _attributes(items: Sequence[Entry], anchors: Mapping) -> list[str]:
    present = {str(e.tags.get("attribute")) for e in items}
    first = [a for a in anchors.get("attributes", []) if a in present]
    return first + sorted(present - set(first))


def _grouped(items: Sequence[Entry], row_tags: Sequence[str]) -> list[tuple[str, dict[str, Entry]]]:
    """[(row label, {attribute: entry})] sorted by the row tags; the first entry wins on a clash."""
    rows: dict[tuple, tuple[str, dict]] = {}
    for e in sorted(items, key=lambda e: (_row_key(e, row_tags), e.run, e.folder)):
        key = _row_key(e, row_tags)
        _, cells = rows.setdefault(key, (_row_label(e, row_tags) or "all runs", {}))
        cells.setdefault(str(e.tags.get("attribute")), e)
    return [rows[k] for k in sorted(rows)]


def _separator(ncols: int) -> list[str]:
    return ["**quoted — published numbers with other definitions, not measured here**"] + [""] * (ncols - 1)


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------

def _by_attribute(items: Sequence[Entry], anchors: Mapping) -> tuple[list[str], list[tuple[str, dict[str, Entry]]]]:
    """The columns (attributes) of a per-attribute table and its row groups (the other varied tags, or strength)."""
    row_tags = [t for t in varied_tags(items) if t != "attribute"] or ["strength"]
    return _attributes(items, anchors), _grouped(items, row_tags)


def _append_quoted(rows: list, anchors: Mapping, table: str, attrs: Sequence[str]) -> _Footnotes:
    """Append the quoted anchor rows of ``table`` below a separator; returns their footnotes."""
    notes = _Footnotes(anchors)
    quoted = _anchor_rows(anchors, table, attrs, notes)
    if quoted:
        rows += [_separator(len(attrs) + 1)] + quoted
    return notes


def sdir_table(results, anchors: Mapping | None = None) -> str | None:
    """S_dir per attribute (columns) × strength / step count (rows), mean ± std (N); quoted anchors below."""
    anchors = anchors or load_anchors()
    items = [e for e in entries(results) if e.metric("s_dir_original") is not None]
    if not items:
        return None
    attrs, groups = _by_attribute(items, anchors)
    rows = []
    for label, cells in groups:
        rows.append([f"S_dir original→edited, {label}"] + [
            sdir_cell(e.metric("s_dir_original"), e.metric("s_dir_original_std"), e.metric("n"))
            if (e := cells.get(a)) else "—" for a in attrs])
        rows.append([f"S_dir reconstructed→edited, {label}"] + [
            sdir_cell(e.metric("s_dir_reconstructed"), e.metric("s_dir_reconstructed_std"), e.metric("n"))
            if (e := cells.get(a)) else "—" for a in attrs])
    notes = _append_quoted(rows, anchors, "sdir", attrs)
    text = [markdown_table(["this study (mean ± std over images)"] + attrs, rows), ""]
    text += ["S_dir is a cosine: higher means the edit moved the image further along the text direction "
             "(the earlier reproduction printed 1 − cosine under this name).", ""]
    text += _definitions(items, ["s_dir"]) + notes.render()
    return "\n".join(text) + "\n"


def fid_table(results, anchors: Mapping | None = None) -> str | None:
    """FID(orig, edit), FID(recon, edit), FID(orig, recon) and KID(orig, edit) per attribute and strength."""
    anchors = anchors or load_anchors()
    items = [e for e in entries(results) if any(e.metric(k) is not None for k in
                                                 ("fid_original_edited", "fid_reconstructed_edited"))]
    if not items:
        return None
    attrs, groups = _by_attribute(items, anchors)
    rows = []
    for label, cells in groups:
        for name, key in (("FID(original, edited)", "fid_original_edited"),
                          ("FID(reconstructed, edited)", "fid_reconstructed_edited"),
                          ("FID(original, reconstructed)", "fid_original_reconstructed")):
            rows.append([f"{name}, {label}"] + [fid_cell(e.metric(key), e.metric("n")) if (e := cells.get(a)) else "—"
                                                for a in attrs])
        rows.append([f"KID(original, edited), {label}"] + [
            kid_cell(e.metric("kid_original_edited"), e.metric("kid_original_edited_std"), e.metric("n"))
            if (e := cells.get(a)) else "—" for a in attrs])
    notes = _append_quoted(rows, anchors, "fid", attrs)
    text = [markdown_table(["this study"] + attrs, rows), "", FID_NOTE, ""]
    text += _consistency_note(items) + _definitions(items, ["fid", "kid"]) + notes.render()
    return "\n".join(text) + "\n"


def _consistency_note(items: Sequence[Entry]) -> list[str]:
    """FID(orig, recon) depends only on the images and the sampler: different values at equal N and step count
    mean that the runs did not share images or pipeline (the earlier reproduction's F4)."""
    groups: dict[tuple, list[float]] = {}
    for e in items:
        v = e.metric("fid_original_reconstructed")
        if v is not None:
            groups.setdefault((e.metric("n"), e.tags.get("n_test_step")), []).append(v)
    lines = []
    for (n, steps), values in sorted(groups.items(), key=lambda kv: str(kv[0])):
        spread = max(values) - min(values)
        if spread > 1e-6 * max(1.0, abs(max(values))):
            lines.append(f"- Check: FID(original, reconstructed) at N={n}, {steps} steps ranges "
                         f"{min(values):.2f}–{max(values):.2f} across runs; it should be one value if all runs "
                         "edited the same images with the same sampler (boost noise and t_boost may differ).")
    return lines + ([""] if lines else [])


def _eval_groups(e: Entry) -> tuple[dict, list]:
    ev = read_json_checked(e.eval_file) if e.eval_file else None
    if not isinstance(ev, dict):
        return {}, []
    return ev.get("groups") or {}, ev.get("metrics") or []


def bias_table(results, anchors: Mapping | None = None) -> str | None:
    """Metrics per image group (evaluate --groups), each row with its group size; quoted anchors below."""
    anchors = anchors or load_anchors()
    items = [e for e in entries(results) if _eval_groups(e)[0]]
    if not items:
        return None
    row_tags = [t for t in varied_tags(items) if t != "attribute"]
    attrs = _attributes(items, anchors)
    by_attr_group: dict[tuple, dict] = {}
    group_sizes: dict[str, set] = {}
    for e in items:
        groups, metrics = _eval_groups(e)
        for g, size in groups.items():
            group_sizes.setdefault(g, set()).add(size)
            for m in metrics:
                if m.get("group") == g:
                    key = (_row_key(e, row_tags), g, m["metric"], tuple(m.get("pair") or ()))
                    by_attr_group.setdefault(key, {"label": _row_label(e, row_tags)})
                    by_attr_group[key].setdefault(str(e.tags.get("attribute")), m)
    rows = []
    shown = (("S_dir original→edited", "s_dir", ("original", "edited")),
             ("FID(original, edited)", "fid", ("original", "edited")),
             ("FID(reconstructed, edited)", "fid", ("reconstructed", "edited")))
    row_keys = sorted({(k[0], k[1]) for k in by_attr_group}, key=lambda k: (k[0], str(k[1])))
    for rk, g in row_keys:
        for name, metric, pair in shown:
            cells = by_attr_group.get((rk, g, metric, pair))
            if not cells:
                continue
            sizes = "/".join(str(s) for s in sorted(group_sizes[g]))
            label = f"{name}, group {g} (n={sizes})" + (f", {cells['label']}" if cells["label"] else "")
            row = [label]
            for a in attrs:
                m = cells.get(a)
                if m is None:
                    row.append("—")
                elif metric == "s_dir":
                    row.append(sdir_cell(m.get("mean"), m.get("std"), m.get("n")))
                else:
                    row.append(fid_cell(m.get("mean"), m.get("n")))
            rows.append(row)
    notes = _append_quoted(rows, anchors, "bias", attrs)
    text = [markdown_table(["this study, per image group"] + attrs, rows), "",
            "Group sizes n are the numbers of evaluated images in each group; FID across groups of different n is "
            "not comparable (its bias grows as n shrinks).", FID_NOTE, ""]
    text += _definitions(items, ["s_dir", "fid"]) + notes.render()
    return "\n".join(text) + "\n"


ABLATION_COLUMNS = (("S_dir orig→edit", "sdir_o"), ("S_dir recon→edit", "sdir_r"),
                    ("FID(orig, edit)", "fid_original_edited"), ("FID(recon, edit)", "fid_reconstructed_edited"),
                    ("FID(orig, recon)", "fid_original_reconstructed"), ("KID(orig, edit)", "kid"), ("N", "n"))


def ablation_table(results, anchors: Mapping | None = None) -> str | None:
    """One row per evaluated run and strength: the family's varied tags, then every metric."""
    anchors = anchors or load_anchors()
    items = [e for e in entries(results) if any(e.metric(k) is not None for k in METRIC_KEYS if k != "n")]
    if not items:
        return None
    tags = varied_tags(items)
    rows = []
    for e in sorted(items, key=lambda e: (_row_key(e, tags), e.run, e.folder)):
        n = e.metric("n")
        cells = {"sdir_o": sdir_cell(e.metric("s_dir_original"), e.metric("s_dir_original_std"), None),
                 "sdir_r": sdir_cell(e.metric("s_dir_reconstructed"), e.metric("s_dir_reconstructed_std"), None),
                 "kid": kid_cell(e.metric("kid_original_edited"), e.metric("kid_original_edited_std"), None),
                 "n": format_value(n)}
        for key in ("fid_original_edited", "fid_reconstructed_edited", "fid_original_reconstructed"):
            value = e.metric(key)
            small = n is not None and n < FID_SMALL_N
            cells[key] = "—" if value is None else f"{value:.2f}" + ("†" if small else "")
        rows.append([e.run] + [format_value(e.tags.get(t)) for t in tags] + [cells[k] for _, k in ABLATION_COLUMNS])
    fixed = {k: v for k, v in constant_tags(items).items() if k in TAG_ORDER}
    text = [markdown_table(["run"] + tags + [h for h, _ in ABLATION_COLUMNS], rows), ""]
    if fixed:
        text += ["Fixed in this family: " + ", ".join(f"{k}={format_value(v)}" for k, v in fixed.items()) + ".", ""]
    dependent = dependent_tags(items)
    if dependent:
        text += ["Also differ, together with the columns above: " + ", ".join(
            f"{k} ({' / '.join(sorted({format_value(e.tags.get(k)) for e in items}))})" for k in dependent) + ".", ""]
    text += [FID_NOTE, ""] + _consistency_note(items) + _definitions(items, ["s_dir", "fid", "kid"])
    notes = _Footnotes(anchors)
    attrs = _attributes(items, anchors)
    quoted = _anchor_rows(anchors, "ablation", attrs, notes)
    if quoted:
        text += ["", "Quoted for orientation (published numbers with other definitions, not measured here; not "
                 "comparable with the rows above):", "", markdown_table(["quoted"] + attrs, quoted), ""]
        text += notes.render()
    return "\n".join(text) + "\n"


def eval_table(ev: Mapping | str | Path) -> str:
    """Every metric of one eval.json (whole set and groups), with N, std and the models used."""
    if not isinstance(ev, Mapping):
        path = Path(ev)
        ev = read_json_checked(path)
        if not isinstance(ev, dict) or ev.get("schema") != EVAL_SCHEMA:
            raise ResultsError(f"{path} is not an {EVAL_SCHEMA} file (asyrp evaluate's output)")
    rows = []
    for m in ev.get("metrics", []):
        n, mean, metric = m.get("n"), m.get("mean"), m.get("metric")
        value = _num(mean, 2 if metric == "fid" else 4)
        if metric == "fid" and n is not None and n < FID_SMALL_N and mean is not None:
            value += "†"
        rows.append([metric, "→".join(m.get("pair") or []), format_value(m.get("group")) if m.get("group") else "all",
                     format_value(n), value, _num(m.get("std"), 4), format_value(m.get("model")),
                     format_value(m.get("prompt_mode"))])
    definitions = {}
    for m in ev.get("metrics", []):
        definitions.setdefault(m.get("metric"), m.get("definition"))
    text = [markdown_table(["metric", "pair", "group", "N", "mean", "std", "model", "prompt mode"], rows), "",
            FID_NOTE, ""]
    text += [f"- {k}: {v}" for k, v in definitions.items() if v]
    if ev.get("groups"):
        text.append("- group sizes: " + ", ".join(f"{g} n={s}" for g, s in ev["groups"].items()))
    return "\n".join(text) + "\n"


def eval_table_name(ev: Mapping | str | Path, index: int = 0) -> str:
    """``eval_<edit folder>`` for ``<edit folder>/eval.json``, ``eval_<edit folder>_<edited folder>`` for
    ``eval_<edited folder>.json`` (the names asyrp evaluate writes), ``eval_<index>`` for an in-memory dict."""
    if isinstance(ev, Mapping):
        return f"eval_{index}"
    path = Path(ev)
    rest = path.stem[len("eval"):].lstrip("_") if path.stem.startswith("eval") else path.stem
    return "_".join(slug(x) for x in ("eval", path.resolve().parent.name, rest) if x)


def anchors_table(anchors: Mapping | None = None) -> str:
    """Every quoted number, one row each, with numbered sources and definitions."""
    anchors = anchors or load_anchors()
    notes = _Footnotes(anchors)
    attrs = list(anchors.get("attributes", []))
    rows = []
    for a in anchors["anchors"]:
        strength = "?" if a.get("strength") is None else f"{a['strength']:g}"
        n = "unknown" if a.get("n") is None else str(a["n"])
        group = f", group {a['group']}" if a.get("group") else ""
        rows.append([f"quoted [{notes.ref(a)}]: {a['label']}{group}", a["metric"], strength, n]
                    + [_anchor_cell(a, attr) or "—" for attr in attrs])
    text = [markdown_table(["quoted number", "closest metric here", "strength", "N"] + attrs, rows), "",
            "None of these numbers was measured by this package; their definitions differ from ours (see the notes).",
            ""]
    return "\n".join(text + notes.render()) + "\n"


def build_tables(results_list: Iterable = (), evals: Iterable = (), anchors: Mapping | None = None) -> dict[str, str]:
    """{table name: markdown} for every table the inputs support (names as in the module docstring)."""
    anchors = anchors or load_anchors()
    tables: dict[str, str] = {}
    for results in results_list:
        results = as_results(results)
        family = slug(results["family"])
        items = entries(results)
        if not items:
            continue
        if family_style(items) == "reproduction":
            makers = (("sdir", sdir_table), ("fid", fid_table), ("bias", bias_table))
        else:
            makers = (("ablation", ablation_table), ("bias", bias_table))
        for prefix, make in makers:
            table = make(results, anchors)
            if table:
                tables[f"{prefix}_{family}"] = table
    for k, ev in enumerate(evals):
        tables[eval_table_name(ev, k)] = eval_table(ev)
    tables["anchors"] = anchors_table(anchors)
    return tables


MARKER = re.compile(r"(<!--\s*asyrp:table\s+([A-Za-z0-9_.+-]+)\s*-->)(.*?)(<!--\s*/asyrp:table\s*-->)", re.S)


def replace_blocks(text: str, tables: Mapping[str, str]) -> tuple[str, list[str], list[str]]:
    """Replace the content of every ``<!-- asyrp:table NAME -->`` … ``<!-- /asyrp:table -->`` block whose NAME is
    a table; returns (new text, replaced names, names without a table — left unchanged)."""
    replaced, missing = [], []

    def sub(m: re.Match) -> str:
        name = m.group(2)
        if name not in tables:
            missing.append(name)
            return m.group(0)
        replaced.append(name)
        return f"{m.group(1)}\n\n{tables[name].strip()}\n\n{m.group(4)}"  # blank lines: Markdown blocks

    return MARKER.sub(sub, text), replaced, missing


