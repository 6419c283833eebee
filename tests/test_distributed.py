"""Multi-process training and editing with torchrun + gloo on CPU (2 processes) against one process."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from conftest import tiny_backbone, tiny_clip
    from asyrp.pipeline.distributed import context_from_env
    from asyrp.pipeline.edit import EditConfig, edit
    from asyrp.pipeline.inversion import InversionSettings, load_entries
    from asyrp.pipeline.train import TrainConfig, train
    out, cache = sys.argv[1], sys.argv[2]
    dist = context_from_env()
    bb, clip = tiny_backbone(), tiny_clip()
    entries = load_entries(bb, "sampled", 4, cache, settings=InversionSettings(4), progress=False, distributed=dist)
    cfg = TrainConfig(src="a", trg="b", backbone="tiny", n_train_step=5, t_edit=300, batch_size=4, n_images=4,
                      optimizer="sgd", lr=0.5, epochs=2, device="cpu")
    path = train(cfg, out + "/train", backbone=bb, clip=clip, entries=entries, progress=False, distributed=dist)
    ecfg = EditConfig(directions=[str(path)], backbone="tiny", n_test_step=5, t_boost=200, batch_size=1, device="cpu")
    edit(ecfg, out + "/edit", backbone=bb, entries=entries, progress=False, distributed=dist)
    if dist is not None:
        dist.close()
""")


def _run(tmp_path: Path, nproc: int, name: str):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests")))
    env = {**os.environ, "ASYRP_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / name
    cmd = [sys.executable, str(script), str(out), str(tmp_path / f"cache_{name}")]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cmd[1:]]
    subprocess.run(cmd, check=True, env=env, timeout=300)
    return out


def test_two_gloo_processes_match_one(tmp_path):
    one = _run(tmp_path, 1, "single")
    two = _run(tmp_path, 2, "ddp")
    a = torch.load(one / "train" / "delta.pt", weights_only=True)["state_dict"]
    b = torch.load(two / "train" / "delta.pt", weights_only=True)["state_dict"]
    from asyrp.models.delta import build_delta_block
    torch.manual_seed(1234)  # TrainConfig.seed: the initial block of both runs
    init = build_delta_block(kind="conv", channels=64, spatial_size=4, temb_channels=128).state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-3  # training moved the weights
    for k in a:  # SGD: linear in the summed gradients, so only float summation order differs
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    # the logged losses agree too (global batch statistics on both)
    la = [json.loads(x) for x in (one / "train" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (two / "train" / "log.jsonl").read_text().splitlines()]
    assert len(la) == len(lb) > 0
    np.testing.assert_allclose([r["loss"] for r in lb], [r["loss"] for r in la], rtol=1e-5)
    # the sharded edit wrote every image once, equal to the single-process output
    names = sorted(p.name for p in (one / "edit" / "edited").glob("*.png"))
    assert names == sorted(p.name for p in (two / "edit" / "edited").glob("*.png")) and len(names) == 4
    for folder in ("original", "reconstructed", "edited"):
        for n in names:
            x = np.asarray(Image.open(one / "edit" / folder / n), dtype=int)
            y = np.asarray(Image.open(two / "edit" / folder / n), dtype=int)
            assert np.abs(x - y).max() <= 1, (folder, n)  # PNG rounding of float-identical-within-1e-6 images
    assert json.loads((two / "edit" / "edit.json").read_text())["images"] == \
        json.loads((one / "edit" / "edit.json").read_text())["images"]
