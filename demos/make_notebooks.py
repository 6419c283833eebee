"""Write the four demo notebooks (nbformat v4, outputs empty): `python demos/make_notebooks.py`.

The notebooks only call the library (asyrp.report, asyrp.figures) on the results files named in their first cell,
so everything they show can also be made with `asyrp report` / `asyrp figures`. Edit this script, not the .ipynb
files, and rerun it.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def first_cell(default: str) -> str:
    return (
        "import os\n\n"
        "# A family's results.json from `asyrp run-experiment` (several: separated by os.pathsep), relative to the\n"
        "# folder the notebook runs in. Figures are written under FIGURES.\n"
        f'RESULTS = os.environ.get("ASYRP_RESULTS", "{default}")\n'
        'FIGURES = os.environ.get("ASYRP_FIGURES", "figures")'
    )


LOAD = (
    "from IPython.display import Image, Markdown, display\n\n"
    "from asyrp import figures, report\n\n"
    "results = [report.load_results(path) for path in RESULTS.split(os.pathsep)]\n"
    "for res in results:\n"
    '    print(f"{res[\'family\']}: {len(res[\'runs\'])} runs from {res[\'_source\']}")'
)


def show_tables(prefix: str) -> str:
    return (
        f'shown = [name for name in tables if name.startswith("{prefix}")]\n'
        "for name in shown:\n"
        '    display(Markdown(f"**{name}**\\n\\n" + tables[name]))\n'
        "if not shown:\n"
        f'    print("no {prefix}* table: these results do not support one")'
    )


def show_figures(sections: tuple[str, ...], source: str) -> str:
    return (
        f"written = figures.make_figures(results, FIGURES, command={source!r}, sections={sections!r})\n"
        "for path in written:\n"
        "    sidecar = path.with_suffix('.json').name\n"
        '    display(Markdown(f"**{path.relative_to(FIGURES)}** (inputs and command: {sidecar})"))\n'
        "    display(Image(filename=str(path)))\n"
        "if not written:\n"
        '    print("no figure: these results support none of this notebook\'s figures")'
    )


def plot_metric_vs_strength(folder: str, source: str) -> str:
    return (
        "try:\n"
        f"    out = os.path.join(FIGURES, {folder!r}, 'all_metric_vs_strength.png')\n"
        f"    path = figures.metric_vs_strength(results, out, command={source!r})\n"
        "    display(Image(filename=str(path)))\n"
        "except ValueError as e:\n"
        "    print(e)")


def reproduction_tables() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell(
            "# Reproduction: tables\n\n"
            "S_dir and FID per attribute and strength, the bias split and the published numbers we quote, "
            "regenerated from a results file (the same tables as `asyrp report --results RESULTS`).\n\n"
            "S_dir is the per-image **cosine** between the CLIP image and text directions (higher: more edit); every "
            "cell carries N, and FID on N < 2048 is flagged as biased. Quoted numbers stand below a separator with "
            "their source and their own definition: they were not measured here."),
        new_code_cell(first_cell("runs/reproduction/results.json")),
        new_code_cell(LOAD + "\n\ntables = report.build_tables(results)\nprint(', '.join(tables))"),
        new_markdown_cell("## S_dir per attribute and strength"),
        new_code_cell(show_tables("sdir_")),
        new_markdown_cell("## FID and KID per attribute and strength"),
        new_code_cell(show_tables("fid_")),
        new_markdown_cell("## Bias split (per image group, with group sizes)"),
        new_code_cell(show_tables("bias_")),
        new_markdown_cell("## Every metric of one evaluation (the first run's eval files)"),
        new_code_cell(
            "run = results[0]['runs'][0]\n"
            "evaluated = run['eval_files']\n"
            "folder = next((f for f in ('edited', 'edited_s+1.00') if f in evaluated), max(evaluated, default=None))\n"
            "if folder:\n"
            "    display(Markdown(f\"**{run['name']} / {folder}**\\n\\n\" + report.eval_table(evaluated[folder])))\n"
            "else:\n"
            "    print(f\"{run['name']} has no eval file\")"),
        new_markdown_cell("## Published numbers (quoted)"),
        new_code_cell("display(Markdown(tables['anchors']))"),
        new_markdown_cell("## The tables as a plot: S_dir (± std) and FID against the edit strength"),
        new_code_cell(plot_metric_vs_strength("reproduction", "demos/reproduction_tables.ipynb")),
    ])


def reproduction_plots() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell(
            "# Reproduction: figures\n\n"
            "Editing grids (in-domain and unseen-domain attributes), the strength sweep, the step-count comparison, "
            "S_dir / FID against strength and the training losses, regenerated from a results file (the same "
            "figures as `asyrp figures --results RESULTS`). Every PNG has a sidecar JSON naming its inputs."),
        new_code_cell(first_cell("runs/reproduction/results.json")),
        new_code_cell(LOAD),
        new_markdown_cell("## Every reproduction figure these results support"),
        new_code_cell(show_figures(("reproduction", "shapes"), "demos/reproduction_plots.ipynb")),
        new_markdown_cell("## S_dir (± std) and FID against the edit strength, all families together"),
        new_code_cell(plot_metric_vs_strength("reproduction", "demos/reproduction_plots.ipynb")),
        new_markdown_cell("## The numbers behind the plots (S_dir per attribute and strength)"),
        new_code_cell("tables = report.build_tables(results)\n" + show_tables("sdir_")),
    ])


def ablation_tables() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell(
            "# Ablations: tables\n\n"
            "One row per evaluated run and strength, with the tags the family varies and every metric "
            "(`asyrp report --results RESULTS`). The earlier reproduction's Table 5 numbers are quoted below each "
            "table for orientation only: other FID input (uint8 wrap-around), another pipeline, N = 100."),
        new_code_cell(first_cell("runs/ablation/results.json")),
        new_code_cell(LOAD + "\n\ntables = report.build_tables(results)\nprint(', '.join(tables))"),
        new_markdown_cell("## Ablation tables"),
        new_code_cell(show_tables("ablation_")),
        new_markdown_cell("## Per image group"),
        new_code_cell(show_tables("bias_")),
        new_markdown_cell("## What each family varied"),
        new_code_cell(
            "for res in results:\n"
            "    items = report.entries(res)\n"
            "    print(f\"{res['family']}: varies {', '.join(report.varied_tags(items)) or 'nothing'}; \"\n"
            "          f\"{report.family_style(items)} tables\")"),
        new_markdown_cell("## The tables as a plot: S_dir (± std) and FID against the edit strength"),
        new_code_cell(plot_metric_vs_strength("ablation", "demos/ablation_tables.ipynb")),
    ])


def ablation_plots() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell(
            "# Ablations: figures\n\n"
            "Image grids across the varied tags (heads × epochs, layer types, strength × heads), metrics against "
            "strength and the training losses (`asyrp figures --results RESULTS`). The loss is plotted against the "
            "optimiser step; below, also per image batch (the sum over its timesteps, what the earlier reproduction "
            "called \"image loss\"), smoothed as their wandb plots were (0.4)."),
        new_code_cell(first_cell("runs/ablation/results.json")),
        new_code_cell(LOAD),
        new_markdown_cell("## Every ablation figure these results support"),
        new_code_cell(show_figures(("ablation", "shapes"), "demos/ablation_plots.ipynb")),
        new_markdown_cell("## Loss per image batch (sum over the timesteps), EMA smoothing 0.4"),
        new_code_cell(
            "for res in results:\n"
            "    logs = figures.logs_by_label(report.entries(res))\n"
            "    if not logs:\n"
            "        print(f\"{res['family']}: no training logs\")\n"
            "        continue\n"
            "    name = f\"image_loss_{report.slug(res['family'])}.png\"\n"
            "    path = figures.loss_curves(logs, os.path.join(FIGURES, 'ablation', name), per_image=True,\n"
            "                               smoothing=0.4, command='demos/ablation_plots.ipynb')\n"
            "    display(Image(filename=str(path)))"),
        new_markdown_cell("## The numbers behind the plots (one row per run and strength)"),
        new_code_cell("tables = report.build_tables(results)\n" + show_tables("ablation_")),
    ])


NOTEBOOKS = {"reproduction_tables.ipynb": reproduction_tables, "reproduction_plots.ipynb": reproduction_plots,
             "ablation_tables.ipynb": ablation_tables, "ablation_plots.ipynb": ablation_plots}


def main() -> None:
    for name, make in NOTEBOOKS.items():
        nb = make()
        for k, cell in enumerate(nb.cells):  # stable ids: regenerating gives no diff
            cell.id = f"{Path(name).stem}-{k}"
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print(HERE / name)


if __name__ == "__main__":
    main()
