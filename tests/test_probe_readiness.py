"""Issue 19's measurements: ‖Δh‖/‖h‖ per strength, the summary of ``asyrp demo --seeds`` and its done-when verdict,
and the readiness probe of h (``python -m asyrp.worlds.probe_h --readiness``) with the shipped readiness.json and the
model card section written from it."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest
import torch

from asyrp import diffusion as D
from asyrp import sampling
from asyrp.cli import main as cli_main
from asyrp.cli.demo import print_run
from asyrp.errors import UserError
from asyrp.sampling import delta_h_ratio
from asyrp.worlds import card, probe_h, shapes
from asyrp.worlds.demo import h_swap_pairs, h_swap_reads
from asyrp.worlds.demo_seeds import DONE_WHEN, done_when, summarize_seeds

SHIPPED = ("ddpm_eval.json", "clip_eval.json", "ddpm_train_log.jsonl", "clip_train_log.jsonl", "card.json",
           "readiness.json", "MODEL_CARD.md")


@pytest.fixture(scope="module")
def unet():
    torch.set_num_threads(2)
    return shapes.load_tiny_ddpm("cpu").float().eval()


@torch.no_grad()
def _ratio_before_strengths(unet, block, x_T, t_edit, n_steps):
    """delta_h_ratio as it was before it took a strength (strength-1 path, unscaled Δh): the reference."""
    alphas = D.alphas_cumprod(D.linear_betas())
    x, ratios = x_T, []
    for t, t_next in D.generative_pairs(n_steps):
        if t < t_edit:
            break
        eps, eps_edited, h, dh = unet.forward_edit(x, t, block, t_edit)
        ratios.append(dh.flatten(1).norm(dim=1) / h.flatten(1).norm(dim=1))
        x = D.ddim_step(x, eps, D.alpha_bar(alphas, t), D.alpha_bar(alphas, t_next), eps_edited=eps_edited)[0]
    r = torch.cat(ratios)
    return {"mean": round(float(r.mean()), 4), "min": round(float(r.min()), 4), "max": round(float(r.max()), 4)}


def test_delta_h_ratio_per_strength(unet):
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 3, 32, 32, generator=g)
    weight = 0.05 * torch.randn(128, 128, 1, 1, generator=g)

    def block(h, temb):  # a fixed Δh = f(h) that depends on h, as a trained block's does
        return torch.nn.functional.conv2d(h, weight)
    ratios = {s: delta_h_ratio(unet, block, x_T, 500, 6, strength=s) for s in (-1.0, 0.0, 0.5, 1.0, 2.0)}
    assert ratios[0.0] == {"mean": 0.0, "min": 0.0, "max": 0.0}
    assert all(r["min"] > 0 for s, r in ratios.items() if s != 0)
    assert ratios[1.0] == _ratio_before_strengths(unet, block, x_T, 500, 6) == delta_h_ratio(unet, block, x_T, 500, 6)
    # with Δh = h the ratio is |strength| on any path
    assert delta_h_ratio(unet, lambda h, temb: h, x_T, 500, 6, strength=-0.5) == {"mean": 0.5, "min": 0.5, "max": 0.5}


def _seed(seconds: float, rows: list[tuple]) -> dict:
    """A metrics.json dict of one seed with only what the summary reads: (strength, success, preservation, valid,
    ratio mean)."""
    return {"seconds": seconds, "per_strength": [
        {"strength": s, "edit_success": e, "preservation": p, "valid": v,
         "delta_h_ratio": {"mean": r, "min": r / 2, "max": 2 * r}} for s, e, p, v, r in rows]}


def test_seeds_summary_is_mean_and_min_of_the_seeds():
    per_seed = {0: _seed(90.0, [(0.0, 0.0, 0.9, 1.0, 0.0), (1.0, 0.75, 0.0625, 0.5, 145.0)]),
                1: _seed(100.0, [(0.0, 0.0, 0.8, 0.9, 0.0), (1.0, 0.5, 0.125, 0.75, 110.0)]),
                2: _seed(95.0, [(0.0, 0.0, 0.7, 0.8, 0.0), (1.0, 0.25, 0.0, 0.25, 180.0)])}
    s = summarize_seeds(per_seed)
    assert s["seeds"] == [0, 1, 2] and [r["strength"] for r in s["per_strength"]] == [0.0, 1.0]
    zero, one = s["per_strength"]
    assert one["edit_success"] == {"mean": 0.5, "min": 0.25, "per_seed": [0.75, 0.5, 0.25]}
    assert one["preservation"]["mean"] == pytest.approx(0.0625) and one["preservation"]["min"] == 0.0
    assert one["valid"]["mean"] == 0.5 and one["valid"]["min"] == 0.25
    assert one["delta_h_ratio"] == {"mean": 145.0, "min": 110.0, "per_seed": [145.0, 110.0, 180.0]}
    assert zero["preservation"] == {"mean": 0.8, "min": 0.7, "per_seed": [0.9, 0.8, 0.7]}
    assert zero["delta_h_ratio"]["mean"] == 0.0
    assert s["seconds"] == {"mean": 95.0, "max": 100.0, "per_seed": [90.0, 100.0, 95.0]}
    # the shipped world's pattern: success without preservation at 1, preservation without success at 0
    v = s["done_when"]
    assert v["strengths_meeting"] == [] and v["within_time"] is True and v["met"] is False
    assert v["targets"] == DONE_WHEN
    with pytest.raises(UserError, match="the seeds ran different strengths"):
        summarize_seeds({0: per_seed[0], 1: _seed(1.0, [(0.0, 0, 0, 0, 0)])})


def test_done_when_verdict_both_ways():
    good = {0: _seed(120.0, [(0.0, 0.0, 0.9, 1.0, 0.0), (1.0, 0.5, 0.8, 0.9, 0.4)]),
            1: _seed(150.0, [(0.0, 0.0, 0.9, 1.0, 0.0), (1.0, 0.75, 0.875, 1.0, 1.2)])}
    s = summarize_seeds(good)
    assert s["per_strength"][1]["delta_h_ratio"]["mean"] == pytest.approx(0.8)
    assert s["done_when"]["strengths_meeting"] == [1.0] and s["done_when"]["met"] is True
    # each target on its own can fail it: the ratio, the preservation, the success, the time
    assert done_when(s, dict(DONE_WHEN, delta_h_ratio_max=0.5))["met"] is False
    assert done_when(s, dict(DONE_WHEN, preservation_min=0.9))["strengths_meeting"] == []
    assert done_when(s, dict(DONE_WHEN, edit_success_min=0.7))["met"] is False
    slow = done_when(s, dict(DONE_WHEN, seconds_max=140.0))
    assert slow["strengths_meeting"] == [1.0] and slow["within_time"] is False and slow["met"] is False


def test_print_run_findings_lines(tmp_path, capsys):
    row = {"strength": 1.0, "edit_success": 0.75, "source_kept": 0.0625, "preservation": 0.6875, "valid": 1.0,
           "s_dir": 0.5, "delta_h_ratio": {"mean": 0.47, "min": 0.4, "max": 0.5},
           "kept_by_attribute": {"shape": 0.75, "size": 0.875, "background": 1.0},
           "preserved_by": {"shape": {"circle": [3, 4], "square": [2, 2]}, "size": {"large": [4, 4], "small": [1, 2]},
                            "background": {"white": [5, 6]}}}
    m = {"direction": {"src_text": "a red shape", "trg_text": "a blue shape"}, "block": "conv", "max_delta_ratio": 0.5,
         "n_train": 24, "n_test": 6, "images": "real", "strength": 1.0, "per_strength": [row],
         "delta_h_ratio": row["delta_h_ratio"], "seconds": 12.5, "device": "cpu",
         "h_swap": {"from": "red", "to": "blue", "t_0": 600, "t_edit": 300, "n": 16, "transferred": 0.875,
                    "kept": 0.0625},
         "linearity": {"monotonic": True, "s_dir_sign_follows_strength": True, "negative_not_toward_target": False}}
    print_run(m, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("shapes world: 'a red shape' → 'a blue shape' with a conv delta block (‖Δh‖ ≤ 0.5·‖h‖), "
                        "24 training and 6 held-out real images")
    assert lines[2] == "    1.00     0.75     0.06     0.69   1.00   0.500     0.470"
    assert lines[3:] == [
        "kept at strength 1 (valid and unchanged): shape 0.75, size 0.88, background 1.00",
        "kept whole at strength 1, by the original's shape: circle 3/4, square 2/2; size: large 4/4, small 1/2; "
        "background: white 5/6",
        "the learnt ‖Δh‖ / ‖h‖ along the strength-1 edited paths: mean 0.47 (min 0.40, max 0.50)",
        "h-swap ceiling: the h of blue images B in the reverse path of red images A (600 ≥ t ≥ 300): 14 of 16 read "
        "blue, 1 still red",
        "linearity: success non-decreasing in strength True; S_dir sign follows strength True; negative strengths "
        "not toward the target False",
        f"12.5 s on cpu; wrote {tmp_path}/grid.png, {tmp_path}/sweep.png, {tmp_path}/metrics.json"]


def test_demo_seeds_cli_writes_one_folder_per_seed_and_the_summary(tmp_path, capsys):
    torch.set_num_threads(2)
    out = tmp_path / "demo"
    assert cli_main(["demo", "--seeds", "0,1", "--out", str(out), "--no-progress", "--n-train", "2", "--n-test", "2",
                     "--epochs", "1", "--n-steps", "3", "--batch-size", "2", "--strengths", "0,1"]) == 0
    per_seed = {k: json.loads((out / f"seed_{k}" / "metrics.json").read_text()) for k in (0, 1)}
    assert [m["seed"] for m in per_seed.values()] == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(summarize_seeds(per_seed)))  # computed from the seeds' own files
    for m in per_seed.values():
        rows = {p["strength"]: p for p in m["per_strength"]}
        assert rows[0.0]["delta_h_ratio"]["mean"] == 0.0 and rows[1.0]["delta_h_ratio"]["mean"] > 0
        assert m["delta_h_ratio"] == rows[1.0]["delta_h_ratio"]  # the top-level key: strength 1, as before
    printed = capsys.readouterr().out
    assert "--- seed 1" in printed and "‖Δh‖/‖h‖" in printed and "issue 19 done-when" in printed
    by = next(p for p in per_seed[0]["per_strength"] if p["strength"] == 1.0)["preserved_by"]
    line = next(x for x in printed.splitlines() if x.startswith("kept whole at strength 1, by the original's "))
    # every count printed is the one metrics.json holds (the line's literal format: test_print_run_findings_lines)
    assert sorted(re.findall(r"(\w+) (\d+)/(\d+)", line)) == sorted(
        (value, str(kept), str(n)) for counts in by.values() for value, (kept, n) in counts.items())
    assert sum(n for _, n in by["size"].values()) == 2
    assert cli_main(["demo", "--seeds", "0,0", "--out", str(tmp_path / "x")]) == 2
    assert "--seeds has repeats (0,0); give each seed once" in capsys.readouterr().err
    assert cli_main(["demo", "--seeds", "0,1.5", "--out", str(tmp_path / "x")]) == 2
    assert "expected integer seeds" in capsys.readouterr().err
    assert cli_main(["demo", "--seed", "1", "--seeds", "0,1", "--out", str(tmp_path / "x")]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def _numbers(moved, kept, asym_moved, asym_kept, readout):
    swaps = [{"asymmetric": False, "n": 16, "moved": moved, "others_kept": kept},
             {"asymmetric": True, "n": 16, "moved": asym_moved, "others_kept": asym_kept}]
    return swaps, {500: readout, 700: readout - 0.2, 900: 0.1}


def test_readiness_verdict_both_ways():
    v = probe_h.readiness_verdict(*_numbers(12, 12, 0, 16, 0.9))
    assert v["ready"] is True and v["swap_ok"] == {"symmetric": True, "asymmetric": False}
    assert v["readout_best"] == {"t": 500, "accuracy": 0.9}
    assert probe_h.readiness_verdict(*_numbers(0, 16, 13, 12, 0.95))["swap_ok"] == {"symmetric": False,
                                                                                      "asymmetric": True}
    # one short of a threshold each: 11 of 16 moved, 11 of 16 kept (in the same swap), read-out 0.89
    assert probe_h.readiness_verdict(*_numbers(11, 16, 0, 16, 0.95))["ready"] is False
    assert probe_h.readiness_verdict(*_numbers(16, 11, 16, 11, 0.95))["ready"] is False
    no_readout = probe_h.readiness_verdict(*_numbers(16, 16, 16, 16, 0.89))
    assert no_readout["swap_ok"] == {"symmetric": True, "asymmetric": True} and no_readout["ready"] is False
    # moving in one swap and keeping in the other is not enough
    assert probe_h.readiness_verdict(*_numbers(16, 0, 0, 16, 0.95))["ready"] is False


def _shipped(name: str):
    with resources.as_file(shapes.resource_path(name)) as path:
        return path.read_text()


def test_shipped_readiness_is_consistent_with_its_thresholds():
    r = json.loads(_shipped("readiness.json"))
    assert r["ddpm"] == "shipped" and r["attribute"] == "color" and (r["from"], r["to"]) == ("red", "blue")
    assert (r["t_0"], r["t_edit"]) == (shapes.T_0, shapes.T_EDIT) and r["verdict"]["thresholds"] == probe_h.READY
    assert [s["asymmetric"] for s in r["h_swap"]] == [False, True]
    for s in [*r["h_swap"], r["reconstruction"]]:
        assert s["n"] == probe_h.READY["n_pairs"]
        assert 0 <= s["moved_and_others_kept"] <= min(s["moved"], s["others_kept"]) and s["moved"] <= s["n"]
    assert set(r["linear_probe"]["accuracy"]) == {str(t) for t in (shapes.T_EDIT, *probe_h.READOUT_T)}
    assert r["verdict"] == json.loads(json.dumps(
        probe_h.readiness_verdict(r["h_swap"], r["linear_probe"]["accuracy"], r["verdict"]["thresholds"])))
    # what it measured on the shipped DDPM (hue-blind skips at t >= 300, along the demo's path 600 >= t >= 300): h
    # carries the colour — the asymmetric swap moves it in 14 of 16 pairs, read-out 0.992 at t = 300 — but the swap
    # keeps A's other attributes in only 9 (A's own regeneration: 14), short of the 12 asked
    sym, asym = r["h_swap"]
    assert (sym["moved"], sym["others_kept"], asym["moved"], asym["others_kept"]) == (10, 10, 14, 9)
    assert r["reconstruction"]["others_kept"] == 14
    assert r["verdict"]["ready"] is False and r["verdict"]["readout_ok"] is True
    assert r["verdict"]["readout_best"] == {"t": 300, "accuracy": 0.9922}


def test_shipped_card_is_rendered_from_the_shipped_files(tmp_path):
    """``python -m asyrp.worlds.card --rerender`` on a copy of the shipped folder writes the shipped MODEL_CARD.md,
    Readiness section included; without readiness.json the section is left out."""
    for name in SHIPPED:
        (tmp_path / name).write_text(_shipped(name))
    shipped = (tmp_path / "MODEL_CARD.md").read_text()
    assert card.main(["--rerender", "--dest", str(tmp_path)]) == 0
    assert (tmp_path / "MODEL_CARD.md").read_text() == shipped
    assert "## Readiness of h (issue 19)" in shipped and "**Ready: no**" in shipped
    assert "| asymmetric (Asyrp step) | 14 of 16 | 9 of 16 | 9 of 16 | 0 of 16 |" in shipped
    assert "to t_0 = 600 (an edit's partial inversion)" in shipped
    (tmp_path / "readiness.json").unlink()
    card.rerender(tmp_path)
    plain = (tmp_path / "MODEL_CARD.md").read_text()
    assert "Readiness" not in plain and shipped.startswith(plain.rstrip("\n"))
    (tmp_path / "card.json").unlink()
    with pytest.raises(UserError, match="card.json is missing: ship the world first"):
        card.rerender(tmp_path)


def test_h_swap_reads_others_kept_and_the_readiness_probe_on_tiny_numbers(unet):
    x_a, x_b, truth = h_swap_pairs(unet, "color", "red", "blue", "real", n=2, seed=0, n_steps=8)
    assert [t["color"] for t in truth] == ["red", "red"] and set(truth[0]) == set(shapes.ATTRIBUTES)
    # A with its own h is the plain regeneration: its others_kept is what the reader says of that
    own = h_swap_reads(unet, x_a, x_a, "color", "red", "blue", "real", n_steps=8, truth_a=truth)
    reads = shapes.read_attributes(sampling.sample(unet, x_a, D.alphas_cumprod(D.linear_betas()), 8))
    expected = [r["valid"] and all(r[k] == t[k] for k in ("shape", "size", "background")) for r, t in zip(reads, truth)]
    assert own["others_kept"] == sum(expected) / 2
    assert "others_kept" not in h_swap_reads(unet, x_a, x_b, "color", "red", "blue", "real", n_steps=8)
    # the swap's Δh = h_B − h_A against h_A: 0 for A's own h; at the first step (t = 999, both at their x_T) by hand
    assert own["delta_h_ratio"] == 0.0
    ratios: list = []
    with torch.no_grad():
        sampling.h_swap(unet, x_a, x_b, t_edit=500, n_steps=8, ratios=ratios)
        h_a, h_b = unet.encode(x_a, 999)[0], unet.encode(x_b, 999)[0]
    swapped = [t for t, _ in D.generative_pairs(8) if t >= 500]
    assert len(ratios) == len(swapped) and ratios[0].shape == (2,)
    assert torch.allclose(ratios[0], (h_b - h_a).flatten(1).norm(dim=1) / h_a.flatten(1).norm(dim=1), rtol=1e-6)
    swap = h_swap_reads(unet, x_a, x_b, "color", "red", "blue", "real", t_edit=500, n_steps=8)  # the same path
    assert swap["delta_h_ratio"] == pytest.approx(float(torch.cat(ratios).mean()), abs=1e-4)
    assert sum(swap["read_as"].values()) == 2 and swap["read_as"].get("blue", 0) / 2 == swap["transferred"]
    assert swap["read_as"].get("red", 0) / 2 == swap["kept"]
    r = probe_h.readiness(unet, n=2, n_steps=6, probe_train=24, probe_test=12)  # the world's path: 600 ≥ t ≥ 300
    assert (r["t_0"], r["t_edit"]) == (shapes.T_0, shapes.T_EDIT) == (600, 300)
    assert r["reconstruction"]["n"] == 2 and set(r["linear_probe"]["accuracy"]) == {300, 700, 900}
    assert r["verdict"] == probe_h.readiness_verdict(r["h_swap"], r["linear_probe"]["accuracy"])


def test_readiness_from_a_partial_inversion_swaps_only_between_t_0_and_t_edit(unet):
    """``probe_h --readiness --t-0 600``: the pairs are inverted to x_600 and regenerated from there, so A with its
    own h is the plain regeneration from t_0 and the swap's steps are the grid's 600 ≥ t ≥ t_edit."""
    alphas = D.alphas_cumprod(D.linear_betas())
    x_a, x_b, truth = h_swap_pairs(unet, "color", "red", "blue", "real", n=2, seed=0, n_steps=6, t_0=600)
    rendered = shapes.make_batch(shapes.sample_specs(2, 30_000, constraints={"color": "red"}))
    assert torch.equal(x_a, sampling.invert(unet, rendered, alphas, 6, 600))
    with torch.no_grad():
        plain = sampling.generate(unet, x_a, alphas, 6, 600)
        assert torch.allclose(sampling.h_swap(unet, x_a, x_a, t_edit=200, n_steps=6, t_0=600), plain, atol=1e-5)
        ratios: list = []
        sampling.h_swap(unet, x_a, x_b, t_edit=200, n_steps=6, ratios=ratios, t_0=600)
    assert len(ratios) == sum(t >= 200 for t, _ in D.generative_pairs(6, 600)) == 4
    r = probe_h.readiness(unet, t_edit=200, n=2, n_steps=6, probe_train=24, probe_test=12, t_0=600)
    assert (r["t_0"], r["t_edit"], r["h_swap"][0]["n"]) == (600, 200, 2)
    lines = card.readiness_section({**r, "command": "python -m asyrp.worlds.probe_h --readiness --t-0 600"})
    assert "to t_0 = 600 (an edit's partial inversion)" in "\n".join(lines)
    with pytest.raises(UserError, match="sampled images start from their noise at t = 999, not t_0 = 600"):
        h_swap_pairs(unet, "color", "red", "blue", "sampled", n=2, t_0=600)


def test_demo_max_delta_ratio_bounds_the_learnt_edit(tmp_path, capsys):
    """``asyrp demo --max-delta-ratio R``: the block is trained and saved with the bound, so ‖Δh‖/‖h‖ along the
    edited paths never exceeds R at strength 1 (nor 2R at strength 2), and the run records and prints it."""
    from asyrp.models.delta import load_delta_block

    torch.set_num_threads(2)
    out = tmp_path / "demo"
    assert cli_main(["demo", "--out", str(out), "--no-progress", "--n-train", "2", "--n-test", "2", "--epochs", "1",
                     "--n-steps", "3", "--batch-size", "2", "--strengths", "0,1,2", "--max-delta-ratio", "0.05"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["max_delta_ratio"] == 0.05
    rows = {p["strength"]: p["delta_h_ratio"] for p in m["per_strength"]}
    assert 0 < rows[1.0]["max"] <= 0.05 + 1e-4 and rows[2.0]["max"] <= 0.1 + 2e-4
    assert rows[1.0]["max"] == pytest.approx(0.05, abs=1e-4)  # the default lr 1e-2 pushes Δh to the bound
    assert load_delta_block(out / "train" / "delta.pt").config.max_ratio == 0.05
    printed = capsys.readouterr().out
    assert "conv delta block (‖Δh‖ ≤ 0.05·‖h‖)" in printed
    assert "images A (600 ≥ t ≥ 300): " in printed and (m["h_swap"]["t_0"], m["t_0"]) == (600, 600)


def test_card_names_the_hue_blind_skip_options():
    """A DDPM trained with --x0-from-t, --skip-hue-rotation and --h-from-color-partner gets one card line naming each
    option and what it does; the shipped h-only options keep their own line."""
    lines = card._finetune_lines({"x0_from_t": 300, "skip_hue_rotation": True, "h_from_color_partner": True,
                                  "object_weight": 4.0, "h_attribute_weight": 0.3})
    assert len(lines) == 1
    for text in ("At t ≥ 300 the decoder predicts x0 (`--x0-from-t`", "`--skip-hue-rotation`",
                 "`--h-from-color-partner`", "weighted 1 + 4 in the loss", "with weight 0.3"):
        assert text in lines[0], text
    assert "`--object-weight-per-area`" not in lines[0]
    per_area = card._finetune_lines({"x0_from_t": 300, "object_weight": 4.0, "object_weight_per_area": True})[0]
    assert ("weighted 1 + 4, scaled by the batch's mean shape area over the shape's own "
            "(`--object-weight-per-area`) in the loss") in per_area
    assert "its skips kept" in card._finetune_lines({"x0_from_t": 300})[0]
    assert card._finetune_lines({"h_only_from_t": 300})[0].startswith("- At t ≥ 300 the decoder predicts from h alone")


def test_outline_probe_counts_what_the_predicted_x0_shows_along_the_edit_path(unet, tmp_path, capsys):
    r = probe_h.outline_in_prediction(unet, n=12)
    grid = [t for t, _ in D.generative_pairs(20, shapes.T_0) if t >= shapes.T_EDIT]
    assert [row["t"] for row in r["steps"]] == grid + ["final"] and grid[0] == 600 and grid[-1] == 315
    for row in r["steps"]:
        for key in probe_h.OUTLINE_BY:
            counts = row["by"][key].values()
            assert sum(c["n"] for c in counts) == 12 and all(c["kept"] <= c["shape"] <= c["n"] for c in counts)
    kept = [sum(c["kept"] for c in row["by"]["size"].values()) for row in r["steps"]]
    # measured on the shipped DDPM (seed 0): 6 of 12 at t = 600, all 12 regenerated; margins for other CPUs
    assert kept[0] <= 8 and kept[-1] >= 11
    out = tmp_path / "outline.json"
    assert probe_h.main(["--outline", "2", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["ddpm"] == "shipped" and saved["n"] == 2 and saved["steps"][-1]["t"] == "final"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("the predicted x0 along the unedited path of 2 red images (600 ≥ t ≥ 300")
    assert lines[1].startswith("   600 small ") and lines[-1].startswith(" final small ")
    with pytest.raises(SystemExit):
        probe_h.main(["--outline", "4", "--readiness"])
    assert "--outline runs alone: drop --readiness" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe_h.main(["--outline", "0"])
    assert "--outline takes a number of images ≥ 1, got 0" in capsys.readouterr().err
