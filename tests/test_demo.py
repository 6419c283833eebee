"""`asyrp demo`: the whole method in the shapes world, from the shipped weights (the integration test of issue 5).

One direction ("a red shape" → "a blue shape", conv block, the demo's defaults at a smaller size) is trained from the
shipped tiny DDPM and tiny CLIP, then held-out real images are edited and read by the exact attribute reader.

What was measured (scripts/shapes_study.sh, 3 seeds × conv / pixel_channel, demo defaults; blogpost.md §4): the
pipeline runs and preserves what the 20-step inversion preserves, but **the edit does not happen in this world**:
edit success 0 at every strength for every seed and both blocks, because the tiny DDPM's bottleneck does not carry
the attributes (replacing A's h by B's h at t ≥ 500 gives B's colour in 0–2 of 16 pairs). The test records that
finding (SUCCESS_MAX) instead of tuning it away; a retrained world in which h is semantic must raise it, and the
report with it.
"""

from __future__ import annotations

import json

import pytest
import torch

from asyrp.cli import main as cli_main
from asyrp.demo import linearity, run_shapes_demo

PRESERVATION_MIN = 0.3   # at strength 1; measured 0.44 – 0.88 over 3 seeds × 2 blocks (the 20-step reconstruction)
VALID_MIN = 0.8          # measured 0.94 – 1.0
SUCCESS_MAX = 0.25       # recorded finding: measured 0.0 for every seed, block and strength


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("demo")
    metrics = run_shapes_demo(out, "color", seed=0, n_train=16, n_test=12, strengths=(-1.0, 0.0, 1.0),
                              progress=False)
    return out, metrics


def test_demo_edits_real_images(demo_run):
    out, m = demo_run
    for name in ("grid.png", "sweep.png", "metrics.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    for key in ("edit_success", "preservation", "s_dir", "seconds", "direction", "strength", "linearity"):
        assert key in saved, key
    assert saved["direction"]["from"] == "red" and saved["direction"]["to"] == "blue" and saved["strength"] == 1.0
    by_strength = {p["strength"]: p for p in m["per_strength"]}
    # strength 0 is the plain inversion → regeneration: nothing turns blue
    assert by_strength[0.0]["edit_success"] == 0.0
    assert m["preservation"] >= PRESERVATION_MIN, m["per_strength"]
    assert m["valid"] >= VALID_MIN, m["per_strength"]
    assert m["edit_success"] <= SUCCESS_MAX, ("the edit now works in the shapes world: update SUCCESS_MAX, the "
                                              "thresholds and blogpost.md §4", m["per_strength"])
    hs = m["h_swap"]
    assert hs["attribute"] == "color" and hs["n"] == 16 and 0 <= hs["transferred"] <= 1


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
    assert cli_main(["demo", "--out", str(tmp_path), "--direction", "color", "--to", "pink"]) == 2
    assert "'pink' is not a color of the shapes world" in capsys.readouterr().err


def test_celeba_demo_offline_names_every_missing_file(tmp_path, capsys):
    assert cli_main(["demo", "--world", "celeba", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs 3 file(s)" in err
    for name in ("celeba_hq.ckpt", "smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth",
                 "pixar_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth"):
        assert name in err
