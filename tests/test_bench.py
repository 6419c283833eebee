"""`asyrp bench --tiny`: the benchmark's code paths on a CPU in seconds, one JSON line with the documented keys."""

import json
import math
import runpy
import sys

import pytest
import torch

from asyrp import bench
from asyrp.cli import bench as bench_cli
from asyrp import diffusion as D
from asyrp.pipeline import train as T
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
    assert cli(["bench", "--tiny", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1, captured.out
    record = json.loads(lines[0])
    assert record["schema"] == bench.SCHEMA and record["tiny"] is True
    assert record["device"]["type"] == "cpu" and record["device"]["bf16_peak_tflops"] is None
    assert record["models"]["h"] == [64, 4, 4] and record["settings"]["train_grid_steps"] == 19
    for task, modes in (("train", ("reference", "reference_batch", "fast")), ("edit", ("reference", "fast"))):
        for mode in modes:
            m = record[task][mode]
            assert MODE_KEYS <= set(m), (task, mode, set(m))
            assert m["images_per_s"] > 0 and m["s_per_image"] == pytest.approx(1 / m["images_per_s"])
            assert m["flops_per_image"] > 0 and m["tflops_achieved"] > 0
            assert m["peak_memory"] is None or m["peak_memory"] > 0
            assert m["peak_fraction"] is None  # unknown device
            assert m["warmup_seconds"] > 0
        assert RATIO_KEYS <= set(record[task]["ratio"])
    train, edit = record["train"], record["edit"]
    # ratio: fast against the reference at the same batch size; ratio_batch1: against the reference at batch 1
    assert train["ratio"]["images_per_s"] == pytest.approx(train["fast"]["images_per_s"]
                                                           / train["reference_batch"]["images_per_s"])
    assert train["ratio_batch1"]["images_per_s"] == pytest.approx(train["fast"]["images_per_s"]
                                                                  / train["reference"]["images_per_s"])
    assert edit["ratio"]["images_per_s"] == pytest.approx(edit["fast"]["images_per_s"]
                                                          / edit["reference"]["images_per_s"])
    assert train["reference"]["batch_size"] == 1 and train["reference_batch"]["batch_size"] == 2
    assert train["fast"]["batch_size"] == 2
    # the same objective in both modes, recorded with the precision and the compile switch
    for mode in ("reference", "reference_batch", "fast"):
        assert train[mode]["objective"] == {"l1_reference": "chain", "l1_weight": 3.0}
    assert train["fast"]["config"]["precision"] == "fp16" and train["fast"]["config"]["fused_step"]
    assert train["fast"]["compiled"] is False and train["reference"]["config"]["precision"] == "fp32"
    assert train["reference"]["extrapolated"] and train["reference"]["timed_steps"] == 3
    # the fused chain is the same work in fewer calls (the plain decoder also runs at the last step; the source
    # embeddings are cached): FLOPs per image within 2 %; editing is the same work
    assert train["ratio"]["flops_per_image"] == pytest.approx(1.0, rel=0.02)
    assert edit["ratio"]["flops_per_image"] == pytest.approx(1.0, rel=1e-6)
    assert edit["fast"]["config"] == {"precision": "fp16", "batch_size": 4, "compile": False,
                                      "compile_mode": "default"}
    assert record["guard"] is None  # off on a CPU unless --guard
    assert "reference" in captured.err and "fast/ref" in captured.err  # the table
    assert out.read_text().strip() == lines[0]  # --out appends the same line


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
    direction = T.make_direction(models.encoder, models.clip_size, cfg, "cpu")
    session = T.Session(cfg, models.backbone, direction, "cpu")
    entries = bench.random_entries(2, 16, 0)
    scaled = bench.train_flops_per_image(session, entries, [0, 1])
    whole = bench.count_flops(lambda: session.run_batch(entries, [0, 1], eager=True)) / 2
    assert len(session.pairs) == 6 and scaled == whole > 0

    unet = models.backbone.unet
    delta = sampling.DeltaSum([session.block], [1.0])
    alphas = D.alphas_cumprod(D.linear_betas())
    x0 = bench.random_images(1, 16, 0, "cpu")
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
    assert bench_cli.results_path("benchmarks/results", record).as_posix() == "benchmarks/results/2026-01-02_NVIDIA-H200.jsonl"


def test_thin_script_and_bad_tasks(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench.py", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "benchmarks" / "bench.py"), run_name="__main__")
    assert e.value.code == 0
    assert "--tiny" in capsys.readouterr().out
    assert cli(["bench", "--tiny", "--tasks", "train,fly"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_mode_configs_follow_the_presets():
    from asyrp.pipeline.train_config import PRESETS
    ref = bench.mode_config("reference")
    fast = bench.mode_config("fast", batch_size=9)
    for k, v in PRESETS["reference"].items():
        assert getattr(ref, k) == v
    for k, v in PRESETS["fast"].items():
        assert getattr(fast, k) == v
    # the fast preset keeps the reference's objective and, without a batch size, its batch-1 SGD
    assert PRESETS["fast"]["l1_reference"] == PRESETS["reference"]["l1_reference"] == "chain"
    assert "batch_size" not in PRESETS["fast"] and bench.mode_config("fast").batch_size == 1
    assert fast.batch_size == 9 and fast.compile is None and ref.batch_size == 1
    assert bench.mode_config("fast", compile=True).compile is True
    assert bench_cli.parse_overrides(["compile_mode=reduce-overhead", "fused_step=false", "lr=0.1"]) == \
        {"compile_mode": "reduce-overhead", "fused_step": False, "lr": 0.1}
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        bench_cli.parse_overrides(["nosuchfield=1"])
    assert ref.attribute == "smiling" and ref.t_edit == 513 and ref.t_boost == 167
    assert math.isclose(len(D.training_pairs(ref.n_train_step, ref.t_edit, ref.t_0)), 19)
