"""The workflow end to end on a reduced U-Net and a tiny random CLIP: precompute → train → edit, the inversion cache,
resume after SIGKILL, and the one-line errors of every bad input."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from asyrp import sampling
from asyrp.backbones import load_backbone, save_clip, save_unet
from asyrp.cli import main as cli
from asyrp.pipeline.inversion import InversionSettings, cache_dir, precompute
from asyrp.models.delta import build_delta_block, save_delta_block
from asyrp.plots import grid, load_png
from conftest import REPO, TINY_CLIP_CFG, tiny_backbone, tiny_clip


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """Model files, an image folder and an isolated ASYRP_HOME (offline)."""
    monkeypatch.setenv("ASYRP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASYRP_OFFLINE", "1")
    bb = tiny_backbone()
    save_unet(bb.unet, tmp_path / "unet.pt")
    encoder, size = tiny_clip()
    save_clip(encoder.model, TINY_CLIP_CFG, tmp_path / "clip.pt", image_size=size)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / f"face{i}.png")
    return tmp_path


def common(env):
    return ["--backbone", str(env / "unet.pt"), "--cache", str(env / "cache")]


def test_end_to_end_cli(env, capsys):
    assert cli(["precompute", *common(env), "--data", str(env / "images"), "--n", "2", "--n-inv-step", "6",
                "--device", "cpu"]) == 0
    assert cli(["train", "--backbone", str(env / "unet.pt"), "--cache-dir", str(env / "cache"), "--clip-model",
                str(env / "clip.pt"), "--data", str(env / "images"), "--n-images", "2", "--n-inv-step", "6",
                "--n-train-step", "6", "--t-edit", "400", "--src", "face", "--trg", "smiling face", "--lr", "0.1",
                "--batch-size", "2", "--preview-every", "1", "--out", str(env / "run"), "--device", "cpu"]) == 0
    run = env / "run"
    for name in ("config.json", "log.jsonl", "delta.pt", "delta_epoch0.pt", "done.json", "checkpoints/last.pt"):
        assert (run / name).exists(), name
    assert list((run / "previews").glob("*.png"))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["t"] for r in log] == [999, 799, 599]  # grid(6) = 0, 199, 399, 599, 799, 999; float values ≥ 400
    assert {"loss", "loss_clip", "loss_l1", "t", "step", "lr"} <= set(log[0])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["resolved"]["t_edit"] == 400 and cfg["config"]["batch_size"] == 2
    assert cli(["edit", "--backbone", str(env / "unet.pt"), "--cache-dir", str(env / "cache"), "--direction",
                str(run / "delta.pt"), "--data", str(env / "images"), "--n-images", "2", "--n-inv-step", "6",
                "--n-test-step", "6", "--strengths=-1,0,1", "--t-boost", "200", "--out", str(env / "edit"),
                "--device", "cpu"]) == 0
    out = env / "edit"
    names = sorted(p.name for p in (out / "original").glob("*.png"))
    assert names == ["face0.png", "face1.png"]
    for folder in ("reconstructed", "edited_s-1.00", "edited_s+0.00", "edited_s+1.00"):
        assert sorted(p.name for p in (out / folder).glob("*.png")) == names
    # grid.png: the images under their column labels (original, reconstruction, strengths), one row per image name
    folders = ["original", "reconstructed", "edited_s-1.00", "edited_s+0.00", "edited_s+1.00"]
    expected = grid([[load_png(out / f / f"face{i}.png") for f in folders] for i in range(2)],
                    col_labels=["original", "reconstruction", "s=-1.00", "s=+0.00", "s=+1.00"],
                    row_labels=["face0", "face1"])
    assert np.array_equal(np.asarray(Image.open(out / "grid.png")), expected)
    preview = np.asarray(Image.open(sorted((run / "previews").glob("*.png"))[0]))
    assert preview.shape == grid([torch.zeros(2, 3, 16, 16)] * 3, col_labels=["face0", "face1"],
                                 row_labels=["original", "reconstruction", "edit s=1"]).shape
    record = json.loads((out / "edit.json").read_text())
    assert [s["weights"] for s in record["settings"]] == [[-1.0], [0.0], [1.0]]  # n_train 6 / n_test 6
    # strength 0 is the reconstruction (same boost noise), strength 1 is not
    rec = np.asarray(Image.open(out / "reconstructed" / "face0.png"), dtype=int)
    assert np.abs(np.asarray(Image.open(out / "edited_s+0.00" / "face0.png"), dtype=int) - rec).max() == 0
    assert np.abs(np.asarray(Image.open(out / "edited_s+1.00" / "face0.png"), dtype=int) - rec).max() > 0


def test_log_has_one_line_per_training_step(env):
    from asyrp import diffusion as D
    assert cli(["train", "--backbone", str(env / "unet.pt"), "--cache-dir", str(env / "cache"), "--clip-model",
                str(env / "clip.pt"), "--data", "sampled", "--n-images", "3", "--n-inv-step", "5",
                "--n-train-step", "8", "--t-edit", "500", "--src", "a", "--trg", "b", "--batch-size", "2",
                "--out", str(env / "run"), "--device", "cpu"]) == 0
    steps = D.training_pairs(8, 500)
    log = [json.loads(line) for line in (env / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 * len(steps)  # 2 batches (2 + 1 images)
    assert [r["t"] for r in log[: len(steps)]] == [t for t, _ in steps]
    assert [r["step"] for r in log] == list(range(1, 2 * len(steps) + 1))


def test_inversion_cache_reuse_and_staleness(env, monkeypatch):
    from asyrp.io.datasets import open_images
    bb = load_backbone(str(env / "unet.pt"))
    items = [open_images(str(env / "images"), 16)[i] for i in range(3)]
    calls = []
    real_invert = sampling.invert
    monkeypatch.setattr(sampling, "invert", lambda unet, x0, *a, **k: calls.append(len(x0)) or real_invert(unet, x0, *a, **k))
    s = InversionSettings(n_inv_step=5)
    first = precompute(bb.unet, items, env / "cache", bb.fingerprint, s, progress=False)
    assert calls == [3]
    again = precompute(bb.unet, items, env / "cache", bb.fingerprint, s, progress=False)
    assert calls == [3]  # all reused
    for a, b in zip(first, again):
        assert torch.equal(a["x_T"], b["x_T"]) and a["meta"] == b["meta"]
    # a changed image (same name) is stale: only it is recomputed
    changed = dict(items[1], image=-items[1]["image"], sha256="changed")
    precompute(bb.unet, [items[0], changed, items[2]], env / "cache", bb.fingerprint, s, progress=False)
    assert calls == [3, 1]
    # other steps or another backbone: a separate cache folder, everything recomputed
    precompute(bb.unet, items, env / "cache", bb.fingerprint, InversionSettings(n_inv_step=6), progress=False)
    other = tiny_backbone(seed=1)
    precompute(other.unet, items, env / "cache", other.fingerprint, s, progress=False)
    assert calls == [3, 1, 3, 3]
    assert cache_dir(env / "cache", bb.fingerprint, s, 16) != cache_dir(env / "cache", other.fingerprint, s, 16)
    # a damaged entry is recomputed, not trusted
    victim = cache_dir(env / "cache", bb.fingerprint, s, 16) / "face0.pt"
    victim.write_bytes(victim.read_bytes()[:100])
    precompute(bb.unet, items, env / "cache", bb.fingerprint, s, progress=False)
    assert calls == [3, 1, 3, 3, 2]  # face0 (damaged) and face1 (its image changed back)


TRAIN_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from conftest import tiny_backbone, tiny_clip
    from asyrp.pipeline.train import TrainConfig, train
    from asyrp.pipeline.inversion import InversionSettings, precompute_sampled
    bb, clip = tiny_backbone(), tiny_clip()
    entries = precompute_sampled(bb.unet, 4, 0, {cache!r}, bb.fingerprint, InversionSettings(4), progress=False)
    cfg = TrainConfig(src="a", trg="b", backbone="tiny", n_train_step=6, t_edit=0, batch_size=1, n_images=4,
                      optimizer="adamw", lr=1e-3, scheduler_step=1, scheduler_gamma=0.5, epochs=2, device="cpu")
    train(cfg, sys.argv[1], backbone=bb, clip=clip, entries=entries, resume="--resume" in sys.argv, progress=False)
""")


def test_resume_after_sigkill_gives_identical_weights(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT.format(tests=str(REPO / "tests"), cache=str(tmp_path / "cache")))
    env = {**os.environ, "ASYRP_HOME": str(tmp_path / "home")}
    subprocess.run([sys.executable, str(script), str(tmp_path / "full")], check=True, env=env)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed")], env=env)
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill mid-run: after a checkpoint of epoch 0 batch ≥ 2, before the end
        if ckpt.exists():
            try:
                state = torch.load(ckpt, weights_only=True)["state"]
            except Exception:
                state = None
            if state and (state["epoch"], state["batch"]) >= (0, 2):
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "delta.pt").exists()
    state = torch.load(ckpt, weights_only=True)["state"]
    assert (state["epoch"], state["batch"]) < (2, 0)
    subprocess.run([sys.executable, str(script), str(tmp_path / "killed"), "--resume"], check=True, env=env)
    full = torch.load(tmp_path / "full" / "delta.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "delta.pt", weights_only=True)
    for k, v in full["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k
    full_log = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    resumed_log = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in resumed_log] == [json.loads(x)["step"] for x in full_log]


def _err(capsys) -> str:
    """The error line (progress bars also write to stderr): exactly one line, starting with the command."""
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("asyrp ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_inputs_give_one_line_errors(env, capsys, tmp_path):
    base = ["--clip-model", str(env / "clip.pt"), "--src", "a", "--trg", "b", "--device", "cpu",
            "--cache-dir", str(env / "cache")]
    # missing weights, offline
    assert cli(["train", "--attr", "smiling", "--backbone", "celeba-hq", "--out", str(tmp_path / "r0")]) == 2
    err = _err(capsys)
    assert "celeba_hq.ckpt" in err and "huggingface.co" in err and "6cbb630e" in err
    # sha256 mismatch
    wdir = tmp_path / "weights"
    wdir.mkdir()
    (wdir / "celeba_hq.ckpt").write_bytes(b"not the checkpoint")
    assert cli(["precompute", "--backbone", "celeba-hq", "--weights-dir", str(wdir), "--data", "sampled"]) == 2
    assert "celeba_hq.ckpt" in _err(capsys)
    # truncated checkpoint
    good = save_delta_block(build_delta_block(channels=64, spatial_size=4, temb_channels=128), tmp_path / "d.pt")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:300])
    edit = ["edit", "--backbone", str(env / "unet.pt"), "--cache-dir", str(env / "cache"), "--data", "sampled",
            "--n-images", "1", "--n-inv-step", "4", "--n-test-step", "4", "--t-edit", "500", "--device", "cpu"]
    assert cli([*edit, "--direction", str(tmp_path / "cut.pt"), "--out", str(tmp_path / "e1")]) == 2
    assert "cut.pt: truncated or corrupt checkpoint" in _err(capsys)
    # checkpoint of another architecture (an official 512-channel block on the 64-channel tiny backbone)
    from conftest import FIXTURES
    official = FIXTURES / "official_delta_blocks" / "smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth"
    assert cli([*edit, "--direction", str(official), "--out", str(tmp_path / "e2")]) == 2
    assert "checkpoint of another architecture" in _err(capsys)
    # empty image folder
    (tmp_path / "empty").mkdir()
    assert cli(["precompute", *common(env), "--data", str(tmp_path / "empty")]) == 2
    assert "empty" in _err(capsys)
    # only unreadable files
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not a png")
    assert cli(["precompute", *common(env), "--data", str(tmp_path / "junk")]) == 2
    assert "junk" in _err(capsys)
    # unknown attribute
    assert cli(["train", "--attr", "smilling", "--backbone", str(env / "unet.pt"), "--out", str(tmp_path / "r1")]) == 2
    err = _err(capsys)
    assert "unknown attribute 'smilling'" in err and "smiling" in err
    # output folder of another run
    run = ["train", "--backbone", str(env / "unet.pt"), *base, "--data", "sampled", "--n-images", "1",
           "--n-inv-step", "4", "--n-train-step", "4", "--t-edit", "700", "--out", str(tmp_path / "r2")]
    assert cli(run) == 0
    capsys.readouterr()
    assert cli([*run[:-2], "--lr", "0.1", "--out", str(tmp_path / "r2")]) == 2
    assert "holds another run" in _err(capsys)
    assert cli(run) == 0  # the same finished run: nothing to do
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    assert cli([*run[:-2], "--out", str(tmp_path / "stuff")]) == 2
    assert "not empty" in _err(capsys)


def test_transfer_learning_checks_architecture(env, capsys, tmp_path):
    src = save_delta_block(build_delta_block(kind="pixel", channels=64, spatial_size=4, temb_channels=128, heads=2,
                                             ff_dim=32), tmp_path / "pixar.pt", attribute="pixar")
    base = ["train", "--backbone", str(env / "unet.pt"), "--clip-model", str(env / "clip.pt"), "--src", "a",
            "--trg", "b", "--device", "cpu", "--cache-dir", str(env / "cache"), "--data", "sampled",
            "--n-images", "1", "--n-inv-step", "4", "--n-train-step", "4", "--t-edit", "700", "--lr", "0",
            "--init-from", str(src)]
    assert cli([*base, "--heads", "1", "--kind", "pixel", "--out", str(tmp_path / "a")]) == 2
    assert "heads: 2 ≠ 1" in _err(capsys)
    assert cli([*base, "--out", str(tmp_path / "b")]) == 0  # adopts the source's architecture
    from asyrp.models.delta import load_delta_block
    out = load_delta_block(tmp_path / "b" / "delta.pt")
    ref = load_delta_block(src)
    assert out.config == ref.config
    for k, v in ref.state_dict().items():  # lr 0: weights carried over unchanged
        assert torch.equal(out.state_dict()[k], v)
