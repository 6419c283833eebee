"""Figures and tables regenerated from a tiny study: pixel layout of every figure, the results loader, the Markdown
tables (N, definitions, quoted anchors) and `asyrp figures` / `asyrp report` through the CLI.

The study (built once per session, shared with test_notebooks.py): a tiny random U-Net and CLIP, three sampled
images, four trained directions — smiling and pixar with the official conv block (the "reproduction" family, plus
smiling edited with 8 instead of 4 steps) and smiling with a pixel transformer of 1 and 2 heads, evaluated after
epochs 1 and 2 (the "heads" ablation family) — edited at strengths −1, 0, 1 and evaluated with a small stand-in for
the Inception network (the figures and tables only need *some* features) and an image-group CSV.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asyrp import figures, report
from asyrp.cli import main as cli
from conftest import tiny_backbone, tiny_clip

IMAGES = 3
STRENGTHS = [-1.0, 0.0, 1.0]


class TinyFeatures(torch.nn.Module):
    """Stand-in for the FID Inception: 4×4 average-pooled pixels (48-d). FID/KID maths is tested in test_metrics."""
    name = "tiny pooled pixels (test stand-in)"

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def _relative(results: dict, base: Path) -> dict:
    """Paths relative to the results file, as a portable study writes them."""
    def rel(p):
        return None if p is None else os.path.relpath(p, base)
    for run in results["runs"]:
        for key in ("edit_dir", "train_dir", "log"):
            run[key] = rel(run[key])
        run["eval_files"] = {k: rel(v) for k, v in run["eval_files"].items()}
    return results


def build_study(root: Path) -> dict:
    from asyrp.pipeline.edit import EditConfig, edit
    from asyrp.pipeline.inversion import InversionSettings, precompute_sampled
    from asyrp.pipeline.evaluate import evaluate_run
    from asyrp.models.delta import DeltaBlockConfig
    from asyrp.pipeline.train import TrainConfig, train

    bb, clip = tiny_backbone(), tiny_clip()
    entries = precompute_sampled(bb.unet, IMAGES, 0, root / "cache", bb.fingerprint, InversionSettings(4),
                                 progress=False)
    names = [e["name"] for e in entries]
    groups = root / "groups.csv"
    groups.write_text("image,group\n" + "".join(f"{n},{'a' if i < 2 else 'b'}\n" for i, n in enumerate(names)))
    feats = TinyFeatures()

    def run(name, attribute, delta=None, checkpoints=("delta.pt",), n_test_step=4):
        cfg = TrainConfig(attribute=attribute, backbone="tiny", n_images=IMAGES, n_inv_step=4, n_train_step=4,
                          t_edit=400, t_boost=200, epochs=2, lr=0.05, optimizer="adamw", delta=delta,
                          clip_templates=False, device="cpu")
        train_dir = root / "train" / name
        if not (train_dir / "done.json").exists():
            train(cfg, train_dir, backbone=bb, clip=clip, entries=entries, progress=False)
        out = []
        for ckpt in checkpoints:
            edit_dir = root / "edit" / f"{name}_{Path(ckpt).stem}_n{n_test_step}"
            ecfg = EditConfig(directions=[str(train_dir / ckpt)], backbone="tiny", n_images=IMAGES, n_inv_step=4,
                              n_test_step=n_test_step, strengths=STRENGTHS, device="cpu", batch_size=IMAGES)
            edit(ecfg, edit_dir, backbone=bb, entries=entries, progress=False)
            src, trg = (("face", "smiling face") if attribute == "smiling" else
                        ("Human", "3D render in the style of Pixar"))
            for folder in [f"edited_s{s:+.2f}" for s in STRENGTHS]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    evaluate_run(edit_dir, edit_dir / folder, src_text=src, trg_text=trg, clip_encoder=clip[0],
                                 prompt_mode="single", inception_model=feats, groups=groups, kid_subsets=5,
                                 device="cpu")
            out.append({"name": edit_dir.name, "edit_dir": str(edit_dir)})
        return out

    conv = DeltaBlockConfig(kind="conv")
    repro = run("smiling", "smiling", conv) + run("pixar", "pixar", conv) + \
        run("smiling", "smiling", conv, n_test_step=8)
    heads = []
    for h in (1, 2):
        heads += run(f"pixel_h{h}", "smiling", DeltaBlockConfig(kind="pixel", heads=h, ff_dim=32),
                     checkpoints=("delta_epoch0.pt", "delta.pt"))
    paths = {}
    for family, runs in (("reproduction", repro), ("heads", heads)):
        folder = root / "runs" / family
        folder.mkdir(parents=True, exist_ok=True)
        results = _relative(report.collect_results(family, runs, config={"family": family}), folder)
        (folder / "results.json").write_text(json.dumps(results, indent=1))
        paths[family] = folder / "results.json"
    return {"root": root, "results": paths, "images": names}


_STUDY: dict = {}


def shared_study(tmp_path_factory) -> dict:
    """One study per test session."""
    if "study" not in _STUDY:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny convolutions: a second thread only adds contention on shared cores
        try:
            _STUDY["study"] = build_study(tmp_path_factory.mktemp("study"))
        finally:
            torch.set_num_threads(threads)
    return _STUDY["study"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return shared_study(tmp_path_factory)


# --------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------

def test_results_loader_resolves_and_checks(study, tmp_path):
    res = report.load_results(study["results"]["heads"])
    assert res["family"] == "heads" and len(res["runs"]) == 4
    for run in res["runs"]:
        assert Path(run["edit_dir"]).is_dir() and Path(run["log"]).is_file()  # relative to the results file
        assert set(run["metrics"]) == {"edited_s-1.00", "edited_s+0.00", "edited_s+1.00"}
        m = run["metrics"]["edited_s+1.00"]
        assert m["n"] == IMAGES and m["s_dir_original"] is not None and m["fid_original_edited"] is not None
    tags = {r["name"]: r["tags"] for r in res["runs"]}
    assert {(t["heads"], t["epoch"]) for t in tags.values()} == {(1, 0), (1, 1), (2, 0), (2, 1)}  # 0-based index
    items = report.entries(res)
    assert report.varied_tags(items) == ["heads", "epoch", "strength"]
    assert report.family_style(items) == "ablation"
    assert report.family_style(report.entries(study["results"]["reproduction"])) == "reproduction"
    bad = json.loads(study["results"]["heads"].read_text())
    for mutate, message in ((lambda d: d.update(schema="other"), "schema"),
                            (lambda d: d["runs"][0].update(edit_dir=5), "edit_dir"),
                            (lambda d: d["runs"][1].update(name=d["runs"][0]["name"]), "twice"),
                            (lambda d: d["runs"][0]["metrics"]["edited_s+1.00"].update(n="3"), "non-numeric n")):
        data = json.loads(json.dumps(bad))
        mutate(data)
        (tmp_path / "bad.json").write_text(json.dumps(data))
        with pytest.raises(report.ResultsError, match=message):
            report.load_results(tmp_path / "bad.json")


def test_varied_tags_skip_what_other_tags_determine():
    """Texts and t_edit follow the attribute, a released checkpoint has no epoch: a reproduction stays one."""
    def entry(attr, official, strength):
        tags = {"attribute": attr, "src": "face", "trg": f"{attr} face", "t_edit": len(attr), "official": official,
                "epoch": None if official else 0, "trained": not official, "strength": strength, "kind": "conv"}
        return report.Entry("f", f"{attr}{official}", tags, Path("."), "edited")
    items = [entry(a, o, s) for a in ("smiling", "sad") for o in (True, False) for s in (0.5, 1.0)]
    assert report.varied_tags(items) == ["attribute", "official", "strength"]
    assert report.family_style(items) == "reproduction"
    assert report.dependent_tags(items) == ["epoch"] and report.constant_tags(items)["kind"] == "conv"
    transfer = [report.Entry("f", n, {"init_from": i, "epochs": e, "epoch": e - 1}, Path("."), "edited")
                for n, i, e in (("scratch", None, 2), ("transfer", "scratch", 1))]
    assert report.varied_tags(transfer) == ["init_from"] and report.family_style(transfer) == "ablation"


# --------------------------------------------------------------------------------------------------
# Figures: pixel layout
# --------------------------------------------------------------------------------------------------

def _check_layout(path: Path, rows: int, cols: int) -> dict:
    meta = json.loads(path.with_suffix(".json").read_text())
    lay = meta["layout"]
    th, tw = lay["tile"]
    assert (lay["rows"], lay["cols"]) == (rows, cols)
    assert th == lay["image_size"][0] * lay["scale"] and tw == lay["image_size"][1] * lay["scale"]
    width = lay["label_width"] + lay["pad"] + cols * (tw + lay["pad"])
    height = lay["header"] + lay["pad"] + rows * (th + lay["pad"])
    assert Image.open(path).size == (width, height)
    return meta


def _tile(path: Path, meta: dict, r: int, c: int) -> np.ndarray:
    top, left, bottom, right = figures.tile_box(meta["layout"], r, c)
    return np.asarray(Image.open(path).convert("RGB"))[top:bottom, left:right]


def _source(path: Path, scale: int) -> np.ndarray:
    img = np.asarray(Image.open(path).convert("RGB"))
    return np.repeat(np.repeat(img, scale, 0), scale, 1)


def test_editing_grid_layout_and_tiles(study, tmp_path):
    edit = study["root"] / "edit"
    dirs = {"smiling": edit / "smiling_delta_n4", "pixar": edit / "pixar_delta_n4"}
    images = study["images"][:2]
    out = figures.editing_grid(dirs, images, tmp_path / "grid.png")
    meta = _check_layout(out, rows=2, cols=4)
    assert meta["layout"]["scale"] == 6 and meta["layout"]["col_labels"] == ["original", "reconstructed", "smiling",
                                                                             "pixar"]
    assert meta["edited_folders"] == {"smiling": "edited_s+1.00", "pixar": "edited_s+1.00"}
    assert meta["inputs"]["images"] == images and "editing_grid" in meta["function"]
    scale = meta["layout"]["scale"]
    for c, src in enumerate([dirs["smiling"] / "original", dirs["smiling"] / "reconstructed",
                             dirs["smiling"] / "edited_s+1.00", dirs["pixar"] / "edited_s+1.00"]):
        assert np.array_equal(_tile(out, meta, 1, c), _source(src / f"{images[1]}.png", scale)), c


def test_linearity_sweep_layout(study, tmp_path):
    edit_dir = study["root"] / "edit" / "smiling_delta_n4"
    image = study["images"][0]
    out = figures.linearity_sweep(edit_dir, image, tmp_path / "lin.png")
    meta = _check_layout(out, rows=1, cols=4)
    assert meta["layout"]["col_labels"] == ["original", "s=-1.00", "s=0: no Δh", "s=+1.00"]
    assert np.array_equal(_tile(out, meta, 0, 1), _source(edit_dir / "edited_s-1.00" / f"{image}.png", 6))
    with pytest.raises(ValueError, match="strength setting"):
        single = tmp_path / "single"
        (single / "edited").mkdir(parents=True)
        figures.linearity_sweep(single, image, tmp_path / "x.png")


def test_steps_comparison_layout(study, tmp_path):
    a, b = study["root"] / "edit" / "smiling_delta_n4", study["root"] / "edit" / "smiling_delta_n8"
    out = figures.steps_comparison(a, b, None, tmp_path / "steps.png", labels=("4 steps", "8 steps"))
    meta = _check_layout(out, rows=3, cols=IMAGES)
    assert meta["layout"]["row_labels"] == ["original", "4 steps", "8 steps"] and meta["layout"]["label_width"] > 0
    img = study["images"][2]
    assert np.array_equal(_tile(out, meta, 2, 2), _source(b / "edited_s+1.00" / f"{img}.png", 6))


def test_ablation_grid_layout(study, tmp_path):
    res = report.load_results(study["results"]["heads"])
    image = study["images"][1]
    out = figures.ablation_grid(res, "epoch", "heads", image, tmp_path / "hv.png", filters={"strength": 1.0})
    meta = _check_layout(out, rows=2, cols=3)  # original + 2 head counts
    assert meta["layout"]["row_labels"] == ["epoch=0", "epoch=1"]
    assert meta["layout"]["col_labels"] == ["original", "heads=1", "heads=2"]
    assert meta["cells"]["0|2"] == "pixel_h2_delta_epoch0_n4/edited_s+1.00" and not meta["ambiguous"]
    src = study["root"] / "edit" / "pixel_h2_delta_epoch0_n4" / "edited_s+1.00" / f"{image}.png"
    assert np.array_equal(_tile(out, meta, 0, 2), _source(src, 6))
    out = figures.ablation_grid(res, "strength", "heads", image, tmp_path / "sv.png", filters={"epoch": 1},
                                show_original=False)
    meta = _check_layout(out, rows=3, cols=2)
    assert meta["layout"]["row_labels"] == ["s=-1.00", "s=+0.00", "s=+1.00"]


def test_line_plots(study, tmp_path):
    res = report.load_results(study["results"]["heads"])
    logs = {r["name"]: r["log"] for r in res["runs"][:2]}
    out = figures.loss_curves(logs, tmp_path / "loss.png", term="loss_clip", smoothing=0.4)
    assert Image.open(out).size[0] > 200
    meta = json.loads(out.with_suffix(".json").read_text())
    n_lines = len(Path(res["runs"][0]["log"]).read_text().splitlines())
    assert meta["points"][res["runs"][0]["name"]] == n_lines  # batch 1, no accumulation: one step per line
    xs, _ = figures.loss_series(res["runs"][0]["log"], per_image=True)
    assert len(xs) == 2 * IMAGES and xs == sorted(xs)  # 2 epochs × 3 batches of one image
    with pytest.raises(ValueError, match="no term"):
        figures.loss_curves(logs, tmp_path / "bad.png", term="nope")
    # gradient accumulation over 2 timesteps: a line's step grows on the line that made the step
    log = tmp_path / "acc.jsonl"
    log.write_text("".join(json.dumps({"epoch": 0, "batch": i // 4, "step": s, "t": i, "loss": float(i)}) + "\n"
                           for i, s in enumerate([0, 1, 1, 2, 2, 3, 3, 4])))
    assert figures.loss_series(log) == ([1, 2, 3, 4], [0.5, 2.5, 4.5, 6.5])
    assert figures.loss_series(log, per_image=True) == ([2, 4], [6.0, 22.0])
    out = figures.metric_vs_strength(study["results"]["reproduction"], tmp_path / "mvs.png")
    meta = json.loads(out.with_suffix(".json").read_text())
    key = next(k for k in meta["points"] if k.startswith("s_dir_original|") and "pixar" in k)
    assert meta["points"][key]["strength"] == STRENGTHS and meta["points"][key]["n"] == [IMAGES]


def test_plan_names_shapes_and_fallback(study):
    """A shapes-world family draws under shapes/; an ablation of other tags gets the generic grid."""
    shapes = report.load_results(study["results"]["reproduction"])
    shapes["family"] = "shapes_world"
    names = {job["name"] for job in figures.plan_figures([shapes])}
    assert names == {"shapes/editing_grid.png", "shapes/linearity.png", "shapes/details.png",
                     "shapes/metric_vs_strength.png", "shapes/loss_curves_shapes_world.png"}
    emb = report.load_results(study["results"]["heads"])
    emb["family"] = "emb"
    for run in emb["runs"]:
        run["tags"]["time_embedding"] = "adagn" if run["tags"].pop("heads") == 2 else "add"
    jobs = {job["name"]: job for job in figures.plan_figures([emb, emb])}
    grid = jobs["ablation/grid_emb.png"]["kwargs"]
    assert (grid["row_tag"], grid["col_tag"], grid["filters"]) == ("epoch", "time_embedding", {"strength": 1.0})
    assert "ablation/grid_emb_emb.png" in jobs  # a second family with the same names does not overwrite


# --------------------------------------------------------------------------------------------------
# CLI: figures and tables regenerated from the study
# --------------------------------------------------------------------------------------------------

def test_cli_figures_regenerates_everything(study, tmp_path, capsys):
    out = tmp_path / "figs"
    assert cli(["figures", "--results", str(study["results"]["reproduction"]), "--results",
                str(study["results"]["heads"]), "--out", str(out)]) == 0
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert made == sorted(["reproduction/in_domain.png", "reproduction/unseen_domain.png",
                           "reproduction/linearity.png", "reproduction/details.png",
                           "reproduction/metric_vs_strength.png", "reproduction/loss_curves_reproduction.png",
                           "ablation/heads_vs_epochs.png", "ablation/strength_vs_heads.png",
                           "ablation/metric_vs_strength_heads.png", "ablation/loss_curves_heads.png"])
    for png in out.rglob("*.png"):
        meta = json.loads(png.with_suffix(".json").read_text())
        assert meta["command"].startswith("asyrp figures --results") and meta["inputs"]
    hv = json.loads((out / "ablation" / "heads_vs_epochs.json").read_text())
    assert hv["inputs"]["filters"] == {"strength": 1.0}
    loss = json.loads((out / "ablation" / "loss_curves_heads.json").read_text())
    assert sorted(loss["inputs"]["logs"]) == ["heads=1", "heads=2"]  # one curve per training, not per epoch
    # single figures, from folders / logs directly
    edit = study["root"] / "edit"
    assert cli(["figures", "--grid", f"smile={edit / 'smiling_delta_n4'}", str(edit / "pixar_delta_n4"),
                "--images", study["images"][0], "--linearity", str(edit / "pixar_delta_n4"),
                "--loss", str(study["root"] / "train" / "pixar" / "log.jsonl"), "--per-image",
                "--out", str(tmp_path / "single")]) == 0
    grid = json.loads((tmp_path / "single" / "grid.json").read_text())
    assert grid["layout"]["col_labels"] == ["original", "reconstructed", "smile", "pixar"]
    assert "--grid" in grid["command"]
    assert (tmp_path / "single" / "linearity.png").exists() and (tmp_path / "single" / "loss_curves.png").exists()
    # run folders without a results file
    assert cli(["figures", "--run", str(edit / "smiling_delta_n4"), "--run", str(edit / "pixar_delta_n4"),
                "--family", "direct", "--out", str(tmp_path / "direct")]) == 0
    assert (tmp_path / "direct" / "reproduction" / "in_domain.png").exists()
    capsys.readouterr()
    assert cli(["figures", "--out", str(tmp_path / "none")]) == 2
    assert "nothing to draw" in capsys.readouterr().err


def test_report_tables(study):
    tables = report.build_tables([study["results"]["reproduction"], study["results"]["heads"]])
    assert set(tables) == {"sdir_reproduction", "fid_reproduction", "bias_reproduction", "ablation_heads",
                           "bias_heads", "anchors"}
    sdir = tables["sdir_reproduction"]
    header = sdir.splitlines()[0]
    assert header.index("smiling") < header.index("pixar")  # the anchors' attribute order
    assert f"(N={IMAGES})" in sdir and "±" in sdir and "n_test_step=8" in sdir
    assert "S_dir (this study): Per-image cosine" in sdir and "tiny" in sdir  # our definition, with the CLIP used
    quoted = [line for line in sdir.splitlines() if "0.921" in line]
    assert len(quoted) == 1 and quoted[0].startswith("| quoted [A")  # paper's number only in a quoted row
    assert "quoted from Kwon, Jeong & Uh" in sdir and "their definition:" in sdir
    assert "1 - mean_i cos" in sdir and "F2:" in sdir  # the earlier reproduction's loss, named as such
    assert sdir.index("**quoted") < sdir.index("0.921")  # below the separator
    fid = tables["fid_reproduction"]
    assert f"(N={IMAGES}†)" in fid and "N < 2048" in fid and "biased" in fid
    assert "96.31" in fid and "F3:" in fid and "F4:" in fid  # their uint8 FIDs, with the faults
    bias = tables["bias_reproduction"]
    assert "group a (n=2)" in bias and "group b (n=1)" in bias and "Caucasian" in bias
    abl = tables["ablation_heads"]
    header = abl.splitlines()[0]
    assert header.startswith("| run | heads | epoch | strength | S_dir orig→edit")
    assert len([line for line in abl.splitlines() if line.startswith("| pixel_h")]) == 12  # 4 runs × 3 strengths
    assert "Fixed in this family: attribute=smiling" in abl and "kind=pixel" in abl
    assert "Quoted for orientation" in abl and "84.29" in abl and "| quoted | smiling |" in abl  # Table 5, smiling
    assert "quoted from" in tables["anchors"] and tables["anchors"].count("| quoted [A") == len(
        report.load_anchors()["anchors"])


def test_cli_report_files_and_into(study, tmp_path, capsys):
    blog = tmp_path / "blogpost.md"
    blog.write_text("# Blog\n\nintro\n\n<!-- asyrp:table sdir_reproduction -->\nstale table\n<!-- /asyrp:table -->\n\n"
                    "middle text\n\n<!-- asyrp:table nosuch -->\nkeep me\n<!-- /asyrp:table -->\n\nend\n")
    assert cli(["report", "--results", str(study["results"]["reproduction"]), "--out", str(tmp_path / "tables"),
                "--into", str(blog)]) == 0
    captured = capsys.readouterr()
    assert "| quoted [A" in captured.out and "nosuch" in captured.err
    files = sorted(p.name for p in (tmp_path / "tables").glob("*.md"))
    assert files == ["anchors.md", "bias_reproduction.md", "fid_reproduction.md", "sdir_reproduction.md"]
    text = blog.read_text()
    assert "stale table" not in text and "keep me" in text
    assert text.startswith("# Blog\n\nintro\n\n<!-- asyrp:table sdir_reproduction -->\n\n| this study")
    assert "middle text" in text and text.endswith("<!-- /asyrp:table -->\n\nend\n")
    assert "\n\n<!-- asyrp:table nosuch -->\nkeep me\n<!-- /asyrp:table -->\n\n" in text  # untouched
    table = (tmp_path / "tables" / "sdir_reproduction.md").read_text().strip()
    assert table in text
    # idempotent: a second run changes nothing
    before = blog.read_text()
    assert cli(["report", "--results", str(study["results"]["reproduction"]), "--into", str(blog), "--quiet"]) == 0
    assert blog.read_text() == before
    # run folders and eval files directly
    edit = study["root"] / "edit"
    assert cli(["report", "--run", str(edit / "pixel_h1_delta_n4"), "--run", str(edit / "pixel_h2_delta_n4"),
                "--family", "direct", "--eval", str(edit / "pixar_delta_n4" / "eval_edited_s+1.00.json"),
                "--only", "ablation_direct", "eval_pixar_delta_n4_edited_s+1.00"]) == 0
    out = capsys.readouterr().out
    assert "| pixel_h2_delta_n4 | 2 |" in out and "| fid | original→edited | all | 3 |" in out
    assert cli(["report", "--results", str(study["results"]["heads"]), "--only", "nope"]) == 2
    assert "no table named nope" in capsys.readouterr().err
