"""`asyrp demo`: the whole method in the shapes world, from the shipped weights (the integration test of issue 5).

One direction ("a red shape" → "a blue shape", conv block, the demo's defaults) is trained from the shipped tiny DDPM
and tiny CLIP, then held-out real images are edited and read by the exact attribute reader.

What was measured on the shipped world (the DDPM fine-tuned with hue-blind skips and h from a same-colour partner,
the ResNet-16 CLIP; demo defaults: AdamW 1e-3, λ_L1 = 3, ‖Δh‖ ≤ 0.5‖h‖, inversion to t_0 = 600, t_edit = 300;
`asyrp demo --seeds 0,1,2`, README and blogpost.md §4): **the edit happens with Δh under half as long as h** — edit
success at strength 1 is 0.75 / 0.69 / 0.75 for seeds 0 / 1 / 2 — **and it keeps most of the rest**: preservation at
strength 1 is 0.69 / 0.75 / 0.81 against 0.81 / 1.00 / 1.00 for the plain regeneration from t_0 (strength 0). The
test asserts the edit, the bound and the reconstruction, and records the preservation as a finding (PRESERVATION:
issue 19's done-when asks for 0.8 over 3 seeds) instead of tuning it away.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from asyrp.cli import UserError
from asyrp.cli import main as cli_main
from asyrp.worlds.demo import linearity, run_shapes_demo
from asyrp.plots import grid, load_png

SUCCESS_MIN = 0.5             # at strength 1; seed 0 (run here) measured 0.75 (seeds 1, 2: 0.69, 0.75)
S_DIR_GAIN_MIN = 0.4          # S_dir(1) − S_dir(0); measured 0.68 for seed 0 (0.68 – 0.82 over 3 seeds)
RECONSTRUCTION_MIN = 0.6      # preservation at strength 0; measured 0.81 for seed 0 (0.81 – 1.00)
RECONSTRUCTION_BLUE_MAX = 1 / 16  # success at strength 0: one of seed 0's 16 regenerations reads blue (0.0625)
VALID_MIN = 0.75              # at strength 1; measured 1.00 for every seed
PRESERVATION = (0.5, 0.8)     # at strength 1: measured 0.69 for seed 0 (0.69 – 0.81). The last world's 0.31 – 0.50 must
                              # not come back; above 0.8 is issue 19's done-when — update README and blogpost §4 then
DELTA_RATIO = (0.25, 0.5)     # the learnt ‖Δh‖/‖h‖ at strength 1: the bound (0.5) holds; measured 0.32 – 0.50 (seed 0)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("demo")
    metrics = run_shapes_demo(out, "color", seed=0, strengths=(-1.0, 0.0, 1.0), progress=False)
    return out, metrics


def test_demo_edits_real_images(demo_run):
    out, m = demo_run
    for name in ("grid.png", "sweep.png", "metrics.json"):
        assert (out / name).is_file(), name
    # sweep.png: one labelled row per test image across the strengths
    names = json.loads((out / "edit" / "edit.json").read_text())["images"][:8]
    folders = ["original", "edited_s-1.00", "edited_s+0.00", "edited_s+1.00"]
    expected = grid([[load_png(out / "edit" / f / f"{n}.png") for f in folders] for n in names],
                    col_labels=["original", "s=-1.00", "s=+0.00", "s=+1.00"], row_labels=names)
    assert np.array_equal(np.asarray(Image.open(out / "sweep.png")), expected)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    for key in ("edit_success", "preservation", "s_dir", "seconds", "direction", "strength", "linearity"):
        assert key in saved, key
    assert saved["direction"]["from"] == "red" and saved["direction"]["to"] == "blue" and saved["strength"] == 1.0
    assert (saved["optimizer"], saved["lr"], saved["l1_weight"], saved["max_delta_ratio"]) == ("adamw", 1e-3, 3.0, 0.5)
    by_strength = {p["strength"]: p for p in m["per_strength"]}
    # strength 0 is the plain inversion → regeneration: (almost) nothing turns blue
    assert by_strength[0.0]["edit_success"] <= RECONSTRUCTION_BLUE_MAX, m["per_strength"]
    assert by_strength[0.0]["preservation"] >= RECONSTRUCTION_MIN, m["per_strength"]
    assert m["edit_success"] >= SUCCESS_MIN, m["per_strength"]
    assert m["s_dir"] - by_strength[0.0]["s_dir"] >= S_DIR_GAIN_MIN, m["per_strength"]
    assert m["valid"] >= VALID_MIN, m["per_strength"]
    news = "the edit now preserves shape, size and background (issue 19): update PRESERVATION, README, blogpost §4"
    assert PRESERVATION[0] <= m["preservation"], m["per_strength"]
    assert m["preservation"] <= PRESERVATION[1], (news, m["per_strength"])
    lo, hi = DELTA_RATIO
    assert lo <= m["delta_h_ratio"]["min"] and m["delta_h_ratio"]["max"] <= hi + 1e-4, m["delta_h_ratio"]
    kept = by_strength[1.0]["kept_by_attribute"]
    assert set(kept) == {"shape", "size", "background"} and all(0 <= v <= 1 for v in kept.values())
    for p in m["per_strength"]:  # the split of preservation by the original's values adds up to it
        by = p["preserved_by"]
        assert set(by) == {"shape", "size", "background"}
        for counts in by.values():
            assert sum(n for _, n in counts.values()) == 16
            assert sum(k for k, _ in counts.values()) == round(p["preservation"] * 16)
    assert set(by_strength[1.0]["preserved_by"]["size"]) <= {"small", "large"}
    hs = m["h_swap"]
    assert hs["attribute"] == "color" and hs["n"] == 16 and 0 <= hs["transferred"] <= 1


def test_delta_h_ratio_measures_the_block_against_h():
    from asyrp.sampling import delta_h_ratio
    from asyrp.worlds import shapes

    torch.manual_seed(0)
    unet = shapes.load_tiny_ddpm("cpu").eval()
    x_T = torch.randn(2, 3, 32, 32)
    r = delta_h_ratio(unet, lambda h, temb: 2 * h, x_T, t_edit=500, n_steps=6)
    assert r == {"mean": 2.0, "min": 2.0, "max": 2.0}
    r = delta_h_ratio(unet, lambda h, temb: torch.ones_like(h), x_T, t_edit=500, n_steps=6)
    assert r["min"] < r["max"]  # ‖1‖/‖h‖ varies with h
    # from x_{t_0} (--t-0): the walk covers the grid of [0, t_0], so the block runs at that grid's steps ≥ t_edit
    from asyrp import diffusion as D
    for t_0 in (999, 700):
        calls = []
        delta_h_ratio(unet, lambda h, temb: calls.append(1) or h, x_T, t_edit=300, n_steps=6, t_0=t_0)
        assert len(calls) == sum(t >= 300 for t, _ in D.generative_pairs(6, t_0)) > 0


def test_linearity_summary_is_computed_not_assumed():
    rows = [{"strength": s, "edit_success": e, "s_dir": d}
            for s, e, d in ((-1, 0.0, -0.2), (0, 0.1, 0.0), (0.5, 0.05, 0.1), (1, 0.9, 0.3))]
    lin = linearity(rows)
    assert lin["strengths"] == [-1, 0, 0.5, 1] and lin["monotonic"] is False
    rows[2]["edit_success"] = 0.4
    rows[1]["s_dir"] = 0.01
    lin = linearity(rows)
    assert lin["monotonic"] is True and lin["s_dir_sign_follows_strength"] is True
    assert lin["negative_not_toward_target"] is True
    rows[0]["edit_success"] = 0.2
    assert linearity(rows)["negative_not_toward_target"] is False


def test_demo_rejects_unknown_values(tmp_path, capsys):
    assert cli_main(["demo", "--out", str(tmp_path), "--t-0", "150"]) == 2
    assert "t_0 must lie in (t_edit, 999] = (300, 999], not 150" in capsys.readouterr().err
    assert cli_main(["demo", "--out", str(tmp_path), "--max-delta-ratio", "-1"]) == 2
    assert "--max-delta-ratio must be >= 0 (0: unbounded), not -1" in capsys.readouterr().err
    assert cli_main(["demo", "--out", str(tmp_path), "--direction", "color", "--to", "pink"]) == 2
    assert "'pink' is not a color of the shapes world" in capsys.readouterr().err
    # a list that starts with a negative number is the option's value (argparse alone reads "-1,0" as an option)
    assert cli_main(["demo", "--out", str(tmp_path), "--strengths", "-1,-0.5,1e-1", "--to", "pink"]) == 2
    assert "'pink' is not a color" in capsys.readouterr().err
    assert cli_main(["demo", "--out", str(tmp_path), "--strengths", "-x"]) == 2
    assert "argument --strengths: expected one argument" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown optimizer 'adam'; choose one of adamw, sgd"):
        run_shapes_demo(tmp_path, "color", optimizer="adam", progress=False)


def test_celeba_demo_offline_names_every_missing_file(tmp_path, capsys):
    assert cli_main(["demo", "--world", "celeba", "--out", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # a short line per missing file, then the fix
    assert len(lines) == 5 and all(len(line) <= 200 for line in lines), lines
    assert "needs 3 weights file(s)" in lines[0]
    assert "asyrp download ddpm-celeba-hq asyrp-smiling asyrp-pixar" in lines[4]
    for line, name in zip(lines[1:4], ("celeba_hq.ckpt", "smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth",
                                       "pixar_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth")):
        assert line.startswith(f"  {name} (")


def test_h_swap_with_its_own_h_is_plain_sampling_and_other_h_changes_the_path():
    from asyrp import diffusion as D
    from asyrp import sampling
    from asyrp.sampling import h_swap
    from asyrp.worlds import shapes

    torch.set_num_threads(2)
    unet = shapes.load_tiny_ddpm("cpu")
    g = torch.Generator().manual_seed(0)
    x_a, x_b = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    plain = sampling.sample(unet, x_a, D.alphas_cumprod(D.linear_betas()), 6)
    assert torch.allclose(h_swap(unet, x_a, x_a, t_edit=500, n_steps=6), plain, atol=1e-5)
    assert torch.equal(h_swap(unet, x_a, x_b, t_edit=1000, n_steps=6), h_swap(unet, x_a, x_a, 1000, 6))
    assert (h_swap(unet, x_a, x_b, t_edit=0, n_steps=6) - plain).abs().max() > 1e-3
    # asymmetric: own h is plain sampling too; B's h gives Asyrp's step with Δh = h_B − h_A, which is neither plain
    # sampling nor the symmetric swap
    assert torch.allclose(h_swap(unet, x_a, x_a, t_edit=500, n_steps=6, asymmetric=True), plain, atol=1e-5)
    asym = h_swap(unet, x_a, x_b, t_edit=0, n_steps=6, asymmetric=True)
    assert (asym - plain).abs().max() > 1e-4
    assert (asym - h_swap(unet, x_a, x_b, t_edit=0, n_steps=6)).abs().max() > 1e-4


def test_asymmetric_h_swap_is_asyrps_step_with_the_delta_of_b():
    """The asymmetric h-swap equals Asyrp's edit by hand: diffusion.ddim_step with ε̃ from forward_edit, whose delta
    block returns h_B − h_A (c0 = c1 = 1), while B walks its own plain path."""
    from asyrp import diffusion as D
    from asyrp.sampling import h_swap
    from asyrp.worlds import shapes

    torch.set_num_threads(2)
    unet = shapes.load_tiny_ddpm("cpu").float()
    g = torch.Generator().manual_seed(1)
    x_a, x_b = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    alphas = D.alphas_cumprod(D.linear_betas())
    expected, b = x_a, x_b
    with torch.no_grad():
        for t, t_next in D.generative_pairs(3):
            a_t, a_next = D.alpha_bar(alphas, t), D.alpha_bar(alphas, t_next)
            h_b = unet.encode(b, t)[0]
            eps, eps_edit, _, _ = unet.forward_edit(expected, t, lambda h, temb, h_b=h_b: h_b - h, t_edit=0)
            expected = D.ddim_step(expected, eps, a_t, a_next, eps_edited=eps_edit)[0]
            b = D.ddim_step(b, unet(b, t), a_t, a_next)[0]
    assert torch.allclose(h_swap(unet, x_a, x_b, t_edit=0, n_steps=3, asymmetric=True), expected, atol=1e-4)


def test_sampled_images_of_a_value_are_read_as_that_value(tmp_path):
    from asyrp.backbones import fingerprint
    from asyrp.cli import UserError
    from asyrp.worlds.demo import sampled_of_value
    from asyrp.pipeline.inversion import InversionSettings
    from asyrp.worlds import shapes

    torch.set_num_threads(2)
    unet = shapes.load_tiny_ddpm("cpu")
    settings = InversionSettings(n_inv_step=10)
    entries, reads = sampled_of_value(unet, fingerprint(unet), "background", "white", 3, 0, tmp_path, settings, "cpu",
                                      pool=16)
    assert len(entries) == 3 and all(r["background"] == "white" for r in reads)
    again = shapes.read_attributes(torch.stack([e["x0"] for e in entries]))
    assert [{k: r[k] for k in shapes.ATTRIBUTES} for r in again] == reads
    assert len(list(tmp_path.glob("*/*.pt"))) == 3  # only the chosen samples are cached
    with pytest.raises(UserError, match="the DDPM generated only .* of 50 wanted in 16 samples; use --images real"):
        sampled_of_value(unet, fingerprint(unet), "background", "white", 50, 0, tmp_path, settings, "cpu", pool=16,
                         max_tries=1)


def test_probe_h_measures_the_shipped_ddpm(tmp_path, capsys):
    """The diagnosis of blogpost.md §4 as a command, on the shipped h-only DDPM: the inverted latent still shows the
    colour far above the forward process's √ᾱ_T share, and h now moves the decoder's ε (by 6–8 % at t = 525–578,
    measured; the base model of blogpost.md §4: well under 1 %), with colour linearly readable from h at t = 420."""
    from asyrp.worlds import probe_h

    torch.set_num_threads(2)
    assert probe_h.main(["--n", "2", "--no-swap", "--out", str(tmp_path / "probe.json")]) == 0
    result = json.loads((tmp_path / "probe.json").read_text())
    s = result["sensitivity"]
    assert result["ddpm"] == "shipped" and s["n"] == 2 and len(s["steps"]) == 20
    assert s["xT_share"] > 10 * s["forward_process_share"] > 0
    assert all(row["h_change"] > 0.5 for row in s["steps"] if row["t"] >= 500)
    assert max(row["eps_change"] for row in s["steps"] if 500 <= row["t"] < 600) > 0.03
    # the predicted x0 tells red from blue: at the last step most of the difference is back
    assert s["steps"][-1]["t"] == 0 and s["steps"][-1]["p_share"] > 0.5
    # colour is in h below t ≈ 500: linearly readable at t = 420 (measured 0.867), near chance at 800 (0.160)
    lp = result["linear_probe"]
    assert lp["chance"] == round(1 / 6, 4) and set(lp["accuracy"]) == {"420", "600", "800"}
    assert lp["accuracy"]["420"] > 0.75 and lp["accuracy"]["800"] < 0.3
    assert "the DDIM-inverted x_T keeps" in capsys.readouterr().out


def test_demo_records_delta_h_ratio_per_strength(demo_run):
    """Issue 19: ‖Δh‖/‖h‖ per strength along each strength's own edited path, 0 at strength 0; the top-level key is
    the strength-1 value, as before."""
    out, m = demo_run
    ratios = {p["strength"]: p["delta_h_ratio"] for p in m["per_strength"]}
    assert ratios[0.0] == {"mean": 0.0, "min": 0.0, "max": 0.0}
    assert ratios[-1.0]["min"] > 0 and ratios[1.0]["min"] > 0
    assert m["delta_h_ratio"] == ratios[1.0]
    assert json.loads((out / "metrics.json").read_text())["per_strength"][0]["delta_h_ratio"] == ratios[-1.0]
