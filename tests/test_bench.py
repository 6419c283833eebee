"""`asyrp bench --tiny`: the benchmark's code paths on a CPU in seconds, one JSON line with the documented keys."""

import json
import math
import runpy
import sys
import time

import pytest
import torch

from asyrp import bench
from asyrp.cli import main as cli
from conftest import REPO

MODE_KEYS = {"images_per_s", "s_per_image", "peak_memory", "flops_per_image", "tflops_achieved", "peak_fraction",
             "batch_size", "config", "seconds_timed", "repeats"}
RATIO_KEYS = {"images_per_s", "s_per_image", "peak_memory", "flops_per_image", "tflops_achieved"}


@pytest.fixture()
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_bench_tiny_prints_one_json_line(tmp_path, capsys, restore_threads):
    out = tmp_path / "results" / "bench.jsonl"
    t0 = time.perf_counter()
    assert cli(["bench", "--tiny", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    elapsed = time.perf_counter() - t0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1, captured.out
    record = json.loads(lines[0])
    assert record["schema"] == bench.SCHEMA and record["tiny"] is True
    assert record["device"]["type"] == "cpu" and record["device"]["bf16_peak_tflops"] is None
    assert record["models"]["h"] == [64, 4, 4] and record["settings"]["train_grid_steps"] == 19
    for task in ("train", "edit"):
        for mode in ("reference", "fast"):
            m = record[task][mode]
            assert MODE_KEYS <= set(m), (task, mode, set(m))
            assert m["images_per_s"] > 0 and m["s_per_image"] == pytest.approx(1 / m["images_per_s"])
            assert m["flops_per_image"] > 0 and m["tflops_achieved"] > 0
            assert m["peak_memory"] is None or m["peak_memory"] > 0
            assert m["peak_fraction"] is None  # unknown device
        assert RATIO_KEYS <= set(record[task]["ratio"])
        r = record[task]["ratio"]
        assert r["images_per_s"] == pytest.approx(record[task]["fast"]["images_per_s"]
                                                  / record[task]["reference"]["images_per_s"])
    train = record["train"]
    assert train["reference"]["batch_size"] == 1 and train["fast"]["batch_size"] == 2
    assert train["reference"]["config"]["l1_reference"] == "chain" and train["fast"]["config"]["precision"] == "bf16"
    assert train["reference"]["extrapolated"] and train["reference"]["timed_steps"] == 3
    # the reference's extra work (unedited chain, source re-encoded every step) costs FLOPs; editing is the same work
    assert train["ratio"]["flops_per_image"] < 0.9
    assert record["edit"]["ratio"]["flops_per_image"] == pytest.approx(1.0, rel=1e-6)
    assert record["guard"] is None  # off on a CPU unless --guard
    assert "reference" in captured.err and "fast/ref" in captured.err  # the table
    assert out.read_text().strip() == lines[0]  # --out appends the same line
    assert elapsed < 60


@pytest.fixture(scope="module")
def tiny_models():
    return bench.build_models(tiny=True)


@pytest.mark.parametrize("l1_reference,cache", [("chain", False), ("same_xt", True)])
def test_flops_scaled_from_single_steps_equal_the_whole_count(tiny_models, l1_reference, cache, restore_threads):
    """The benchmark counts single steps and scales them; counting the whole grid / edit gives the same."""
    from asyrp import sampling

    torch.set_num_threads(1)
    models = tiny_models
    cfg = bench.mode_config("reference", batch_size=2, device="cpu", n_train_step=12, l1_reference=l1_reference,
                            cache_source_embeddings=cache)
    direction = bench.make_direction(models.encoder, models.clip_size, cfg, "cpu")
    session = bench.TrainSession(cfg, models.backbone, direction, "cpu")
    entries = bench._entries(2, 16, 0)
    scaled = bench.train_flops_per_image(session, entries, [0, 1])
    whole = bench.count_flops(lambda: session.run_batch(entries, [0, 1], eager=True)) / 2
    assert len(session.pairs) == 6 and scaled == whole > 0

    unet = models.backbone.unet
    delta = sampling.DeltaSum([session.block], [1.0])
    alphas = bench.D.alphas_cumprod(bench.D.linear_betas())
    x0 = bench._images(1, 16, 0, "cpu")
    scaled = bench.edit_flops_per_image(unet, x0, delta, alphas, n_inv_step=6, n_test_step=6)
    whole = bench.count_flops(lambda: bench.edit_images(unet, x0, delta, alphas, [0], n_inv_step=6, n_test_step=6))
    assert scaled == whole > 0


@pytest.mark.parametrize("name,peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 SXM5 80GB", 989.0),
                                       ("NVIDIA H200", 989.0), ("NVIDIA H100 PCIe", None), ("NVIDIA H100 NVL", None),
                                       ("NVIDIA A100-SXM4-80GB", None), (None, None)])
def test_bf16_peak_of_known_devices(name, peak):
    assert bench.bf16_peak_tflops(name) == peak


def test_results_file_name():
    record = {"date": "2026-01-02T03:04:05+00:00", "device": {"type": "cuda", "name": "NVIDIA H200"}}
    assert bench.results_path("benchmarks/results", record).as_posix() == "benchmarks/results/2026-01-02_NVIDIA-H200.jsonl"


def test_thin_script_and_bad_tasks(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench.py", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "benchmarks" / "bench.py"), run_name="__main__")
    assert e.value.code == 0
    assert "--tiny" in capsys.readouterr().out
    assert cli(["bench", "--tiny", "--tasks", "train,fly"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_mode_configs_follow_the_presets():
    from asyrp.train import PRESETS
    ref = bench.mode_config("reference")
    fast = bench.mode_config("fast", batch_size=9, compile=True)
    for k, v in PRESETS["reference"].items():
        assert getattr(ref, k) == v
    for k, v in PRESETS["fast"].items():
        assert getattr(fast, k) == v
    assert fast.batch_size == 9 and fast.compile and ref.batch_size == 1
    assert ref.attribute == "smiling" and ref.t_edit == 513 and ref.t_boost == 167
    assert math.isclose(len(bench.D.training_pairs(ref.n_train_step, ref.t_edit, ref.t_0)), 19)
