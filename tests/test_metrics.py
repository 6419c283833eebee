"""asyrp.metrics: FID / KID / S_dir maths against independent computations, the FID Inception (random weights,
no download), and `evaluate_run` / `asyrp evaluate` end to end on tiny PNG folders with a tiny open_clip CLIP."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from asyrp import clip_loss, metrics
from asyrp.pipeline import evaluate
from asyrp.models import inception
from asyrp.cli import main as cli_main


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download weights")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    import pytorch_fid.inception
    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", refuse)


@pytest.fixture(scope="module")
def fid_net():
    return inception.build_fid_inception()


@pytest.fixture(scope="module")
def tiny_clip():
    import open_clip
    torch.manual_seed(0)
    model = open_clip.model.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2,
                                                                 head_width=32),
                                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, layers=2, heads=2),
                                 quick_gelu=True)
    return clip_loss.OpenClipEncoder(model, open_clip.get_tokenizer("ViT-B-32"), name="tiny-clip")


def make_run(root, n=4, size=32, seed=0):
    """original/, reconstructed/ (slightly perturbed), edited/ (shifted colours) with the same n PNG names."""
    rng = np.random.default_rng(seed)
    names = [f"img_{i:03d}.png" for i in range(n)]
    for kind in evaluate.FOLDERS:
        (root / kind).mkdir(parents=True)
    for name in names:
        x = rng.integers(0, 256, (size, size, 3)).astype(np.int16)
        recon = np.clip(x + rng.integers(-10, 11, x.shape), 0, 255)
        edited = np.clip(x * 0.6 + np.array([90, 20, 0]), 0, 255)
        for kind, img in zip(evaluate.FOLDERS, (x, recon, edited)):
            Image.fromarray(img.astype(np.uint8)).save(root / kind / name)
    return names


def reference_fid(a, b):
    """Independent FID: scipy sqrtm of the covariance product, and the same trace via eigenvalues."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    base = ((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb)
    by_sqrtm = base - 2 * np.trace(scipy.linalg.sqrtm(sa @ sb)).real
    by_eig = base - 2 * np.sqrt(np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)).sum()
    return by_sqrtm, by_eig


# ---------------------------------------------------------------------------------------------- FID / KID maths

@pytest.mark.parametrize("n,d", [(200, 16), (50, 64), (40, 128)])
def test_fid_matches_independent_computation(n, d):
    rng = np.random.default_rng(n + d)
    a = rng.standard_normal((n, d))
    b = rng.standard_normal((n + 7, d)) @ (np.eye(d) + 0.1 * rng.standard_normal((d, d))) + 0.3
    by_sqrtm, by_eig = reference_fid(a, b)
    assert by_sqrtm == pytest.approx(by_eig, rel=1e-6)
    for method in ("auto", "svd", "sqrtm"):
        assert metrics.fid_from_features(a, b, method) == pytest.approx(by_sqrtm, rel=1e-6), method
    assert metrics.fid_from_features(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(
        by_sqrtm, rel=1e-4)  # torch float32 input is accepted and promoted to float64


@pytest.mark.parametrize("n,d", [(200, 16), (50, 64)])
def test_fid_of_a_set_with_itself_is_zero(n, d):
    a = np.random.default_rng(1).standard_normal((n, d)) * 3 + 1
    scale = np.trace(np.cov(a, rowvar=False))
    for method in ("auto", "svd", "sqrtm"):
        assert abs(metrics.fid_from_features(a, a, method)) < 1e-6 * scale, method


def test_fid_with_fewer_samples_than_dimensions_is_finite_and_stable():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((50, 2048)), rng.standard_normal((50, 2048)) + 0.05
    fid = metrics.fid_from_features(a, b)
    assert np.isfinite(fid) and fid > 0
    assert abs(metrics.fid_from_features(a, a)) < 1e-9 * fid
    # invariant to sample order and continuous in the data (no eps-dependent jumps)
    assert metrics.fid_from_features(a[::-1], b[rng.permutation(50)]) == pytest.approx(fid, rel=1e-10)
    assert metrics.fid_from_features(a + 1e-9 * rng.standard_normal(a.shape), b) == pytest.approx(fid, rel=1e-8)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.fid_from_features(a[:1], b)
    with pytest.raises(ValueError, match="dimensions differ"):
        metrics.fid_from_features(a, b[:, :10])


def test_kid_matches_double_loop_and_is_deterministic():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((8, 5)), rng.standard_normal((8, 5)) + 0.5
    d, m = 5, 8

    def k(u, v):
        return (float(np.dot(u, v)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    kid = metrics.kid_from_features(x, y, num_subsets=1, subset_size=1000)
    assert kid["subset_size"] == 8 and kid["num_subsets"] == 1
    assert kid["mean"] == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    # N = 8 < subset size 1000: every subset is the whole set, so there is no spread to report (not a std of 0)
    many = metrics.kid_from_features(x, y, num_subsets=100, subset_size=1000)
    assert many == {**kid, "num_subsets": 1}
    assert kid["std"] is None and kid["note"] == ("std not defined: N = 8 ≤ subset size 1000, so every subset is the "
                                                  "whole set; give a smaller --kid-subset-size for a spread")
    smaller = metrics.kid_from_features(x, y, num_subsets=10, subset_size=4)
    assert smaller["subset_size"] == 4 and smaller["std"] > 0 and "note" not in smaller

    big_a, big_b = rng.standard_normal((60, 5)), rng.standard_normal((50, 5))
    r1 = metrics.kid_from_features(big_a, big_b, num_subsets=10, subset_size=20, seed=7)
    assert r1 == metrics.kid_from_features(big_a, big_b, num_subsets=10, subset_size=20, seed=7)
    assert r1 != metrics.kid_from_features(big_a, big_b, num_subsets=10, subset_size=20, seed=8)
    assert r1["std"] > 0


# ---------------------------------------------------------------------------------------------- S_dir maths

def test_s_dir_on_constructed_embeddings():
    assert metrics.directional_similarity is clip_loss.directional_similarity
    src_img = torch.tensor([[1.0, 0, 0], [0, 0, 2.0]])      # raw scales differ: each is normalised first
    edit_img = torch.tensor([[0, 3.0, 0], [5.0, 0, 0]])
    src_txt, trg_txt = torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 2.0])
    # row 0: ΔI = (-1, 1, 0), ΔT = (-1, 0, 1) → cos = 1/2;  row 1: ΔI = (1, 0, -1) = -ΔT → cos = -1
    expected = torch.tensor([0.5, -1.0])
    assert torch.allclose(metrics.directional_similarity(src_img, edit_img, src_txt, trg_txt), expected, atol=1e-6)
    direction = torch.nn.functional.normalize(trg_txt, dim=0) - torch.nn.functional.normalize(src_txt, dim=0)
    assert torch.allclose(metrics.s_dir_cosines(src_img, edit_img, direction), expected, atol=1e-6)
    assert torch.allclose(metrics.s_dir_cosines(src_img, edit_img, 7 * direction[None]), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- Inception

def test_inception_features_uint8_float_and_png_agree(fid_net, tmp_path):
    # one image per call: every Inception forward at 299² costs about a second on two CPU cores
    rng = np.random.default_rng(4)
    u8 = rng.integers(0, 256, (1, 3, 24, 24), dtype=np.uint8)
    u8[0, :, :4, :4] = 250  # bright pixels: x * 255 in uint8 would wrap around, x / 255 must not
    as_float = evaluate._to_unit_float(torch.from_numpy(u8))
    assert torch.equal(as_float, torch.from_numpy(u8).float() / 255)
    assert torch.equal(evaluate._to_unit_float(u8.transpose(0, 2, 3, 1)), as_float)  # channels-last numpy
    png = tmp_path / "0.png"
    Image.fromarray(u8[0].transpose(1, 2, 0)).save(png)
    f_u8 = evaluate.inception_features(torch.from_numpy(u8), model=fid_net, device="cpu")
    f_float = evaluate.inception_features(torch.from_numpy(u8).float() / 255, model=fid_net, device="cpu")
    f_png = evaluate.inception_features([str(png)], model=fid_net, device="cpu")
    assert f_u8.shape == (1, 2048) and f_u8.dtype == np.float64
    assert np.abs(f_u8).max() > 1e-3  # random weights keep O(1) features, so agreement is meaningful
    np.testing.assert_allclose(f_float, f_u8, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(f_png, f_u8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate.inception_features(torch.from_numpy(u8).float() / 127.5 - 1, model=fid_net, device="cpu")


def test_inception_weights_load_strictly_and_wrong_files_fail_in_one_line(tmp_path):
    reference = inception.build_fid_inception(seed=1)
    state = reference.state_dict()
    good = tmp_path / inception.FID_WEIGHTS_FILE
    torch.save(state, good)
    loaded = inception.load_fid_inception(good)
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight"):
        assert torch.equal(loaded.state_dict()[key], state[key])
    assert inception.FID_WEIGHTS_FILE in loaded.name

    # the original file predates BatchNorm's num_batches_tracked: it must still load strictly
    legacy = tmp_path / "legacy.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, legacy)
    inception.load_fid_inception(legacy)

    wrong = tmp_path / "wrong.pth"
    torch.save(torch.nn.Linear(3, 4).state_dict(), wrong)
    not_torch = tmp_path / "text.pth"
    not_torch.write_text("not a checkpoint\n")
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save({**state, "fc.weight": torch.zeros(10, 2048)}, bad_shape)
    for path, pattern in ((wrong, "missing keys"), (not_torch, "could not be read"), (bad_shape, "shape mismatch")):
        with pytest.raises(inception.InceptionWeightsError, match=pattern) as err:
            inception.load_fid_inception(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(FileNotFoundError):
        inception.load_fid_inception(tmp_path / "absent.pth")


# ---------------------------------------------------------------------------------------------- evaluation

def test_evaluate_run_end_to_end(tmp_path, fid_net, tiny_clip):
    run = tmp_path / "run"
    names = make_run(run, n=3)  # 9 Inception forwards
    (run / "run.json").write_text(json.dumps({"attribute": "smiling", "strength": 1.0}))
    groups = tmp_path / "groups.csv"
    groups.write_text("image,group\n" + "".join(f"{n},{'a' if i < 2 else 'b'}\n" for i, n in enumerate(names)))

    with pytest.warns(metrics.SmallSampleFIDWarning):
        result = evaluate.evaluate_run(run, clip_encoder=tiny_clip, inception_model=fid_net, src_text="face",
                                      trg_text="smiling face", groups=groups, kid_subsets=5, device="cpu")
    saved = json.loads((run / "eval.json").read_text(),
                       parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert result["path"] == str(run / "eval.json")
    assert saved["schema"] == "asyrp.eval/1"
    assert saved["run"]["config"] == {"attribute": "smiling", "strength": 1.0}
    assert set(saved["versions"]) == {"torch", "torchvision", "open_clip", "scipy", "numpy", "pytorch_fid", "asyrp"}
    assert saved["groups"] == {"a": 2, "b": 1}
    assert saved["inputs"]["n_images"] == 3 and saved["per_image"]["names"] == names
    assert saved["settings"]["prompt_mode"] == "templates" and saved["settings"]["n_templates"] == 79

    def find(metric, pair, group=None):
        hits = [m for m in saved["metrics"] if m["metric"] == metric and m["pair"] == pair and m["group"] == group]
        assert len(hits) == 1, (metric, pair, group)
        return hits[0]

    for m in saved["metrics"]:
        assert {"metric", "definition", "source", "pair", "model", "prompt_mode", "n", "mean", "std",
                "group"} <= set(m)
        assert m["n"] == {None: 3, "a": 2, "b": 1}[m["group"]]

    # S_dir: per image, each edited image against its own source, equal to CLIPDirection's own computation
    direction = clip_loss.CLIPDirection(tiny_clip, "face", "smiling face", templates=True, antialias=True,
                                        image_size=32)
    load = lambda kind: evaluate._to_unit_float(evaluate.load_images_uint8([run / kind / n for n in names])) * 2 - 1
    for source in ("original", "reconstructed"):
        expected = direction.similarity(load(source), load("edited")).double().numpy()
        np.testing.assert_allclose(saved["per_image"][f"s_dir_{source}"], expected, atol=1e-5)
        s = find("s_dir", [source, "edited"])
        assert s["source"] == source and s["model"] == "tiny-clip" and s["prompt_mode"] == "templates"
        assert s["mean"] == pytest.approx(expected.mean(), abs=1e-5)
        assert s["std_ddof0"] == pytest.approx(expected.std(ddof=0), abs=1e-5)
        assert s["std_ddof1"] == pytest.approx(expected.std(ddof=1), abs=1e-5) and s["std"] == s["std_ddof1"]
        loss = find("directional_clip_loss", [source, "edited"])
        assert loss["mean"] == pytest.approx(1 - s["mean"], abs=1e-9)
        assert find("s_dir", [source, "edited"], "a")["mean"] == pytest.approx(expected[:2].mean(), abs=1e-5)

    for pair in (["original", "edited"], ["reconstructed", "edited"], ["original", "reconstructed"]):
        f = find("fid", pair)
        assert f["n"] == 3 and f["fid_biased_small_n"] is True and np.isfinite(f["mean"]) and f["mean"] > 0
        assert find("fid", pair, "a")["mean"] > 0
        assert find("fid", pair, "b")["mean"] is None and "n >= 2" in find("fid", pair, "b")["note"]
        k = find("kid", pair)
        assert k["num_subsets"] == 1 and k["subset_size"] == 3 and k["std"] is None  # N = 3: the whole set
        assert k["note"].startswith("std not defined: N = 3 ≤ subset size 1000")
    assert find("s_dir", ["original", "edited"], "b")["std_ddof1"] is None  # one image: no sample std (not NaN)
    # the edit shifts colours strongly, the reconstruction only adds small noise
    assert find("fid", ["original", "reconstructed"])["mean"] < find("fid", ["original", "edited"])["mean"]


def test_single_prompt_mode_is_recorded_and_matches_directional_similarity(tmp_path, tiny_clip):
    run = tmp_path / "run"
    names = make_run(run, n=3, seed=1)
    result = evaluate.evaluate_folders(run / "original", run / "edited", src_text="face", trg_text="smiling face",
                                      clip_encoder=tiny_clip, prompt_mode="single", fid=False, device="cpu")
    assert result["settings"]["prompt_mode"] == "single" and result["settings"]["n_templates"] is None
    assert {m["metric"] for m in result["metrics"]} == {"s_dir", "directional_clip_loss"}
    assert all(m["prompt_mode"] == "single" and m["source"] == "original" for m in result["metrics"])
    with torch.no_grad():
        imgs = {k: evaluate._to_unit_float(evaluate.load_images_uint8([run / k / n for n in names])) * 2 - 1
                for k in ("original", "edited")}
        emb = {k: tiny_clip.encode_image(clip_loss.clip_preprocess(v, 32, antialias=True)) for k, v in imgs.items()}
        txt = tiny_clip.encode_text(["face", "smiling face"])
    expected = metrics.directional_similarity(emb["original"], emb["edited"], txt[0], txt[1])
    np.testing.assert_allclose(result["per_image"]["s_dir_original"], expected.numpy(), atol=1e-5)


def test_unpaired_names_give_one_line_errors(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, n=3)
    (run / "edited" / "img_001.png").rename(run / "edited" / "img_001_x.png")
    (run / "reconstructed" / "img_002.png").unlink()
    with pytest.raises(evaluate.PairingError) as err:
        evaluate.pair_images(run / "original", run / "edited", run / "reconstructed")
    message = str(err.value)
    assert "\n" not in message and "img_001_x.png" in message and "img_001.png" in message
    assert "img_002.png" in message and "img_000.png" not in message

    assert cli_main(["evaluate", str(run), "--no-sdir", "--inception-weights", str(tmp_path / "x.pth")]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "do not pair" in err_lines[0]

    # an explicit suffix pairs x.png with x<suffix>.png exactly
    edited = tmp_path / "edited_s1"
    edited.mkdir()
    for n in ("img_000", "img_001", "img_002"):
        (edited / f"{n}_s1.0.png").write_bytes((run / "original" / f"{n}.png").read_bytes())
    names, paths = evaluate.pair_images(run / "original", edited, edited_suffix="_s1.0")
    assert names == ["img_000.png", "img_001.png", "img_002.png"]
    assert [p.name for p in paths["edited"]] == ["img_000_s1.0.png", "img_001_s1.0.png", "img_002_s1.0.png"]
    with pytest.raises(evaluate.PairingError):
        evaluate.pair_images(run / "original", edited)


def test_groups_csv_errors(tmp_path):
    csv_path = tmp_path / "g.csv"
    csv_path.write_text("img_000.png,a\nimg_001,b\nimg_999.png,b\n")
    with pytest.raises(ValueError, match="img_999.png"):
        evaluate.read_groups(csv_path, ["img_000.png", "img_001.png"])
    csv_path.write_text("img_000.png,a\nimg_001,b\n")  # no header; stems match too
    assert evaluate.read_groups(csv_path, ["img_000.png", "img_001.png"]) == {"a": [0], "b": [1]}


def test_cli_evaluate_with_attribute(tmp_path, monkeypatch, capsys, tiny_clip):
    run = tmp_path / "run"
    make_run(run, n=2, seed=2)
    weights = tmp_path / inception.FID_WEIGHTS_FILE
    monkeypatch.setattr(evaluate, "load_clip", lambda name, *a, **k: tiny_clip)
    # the CLI wiring is under test here (weights loading has its own test): a cheap stand-in for the Inception
    loaded = []

    class StandIn(torch.nn.Module):
        name = f"stand-in ({inception.FID_WEIGHTS_FILE})"

        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1).repeat(1, 43)[:, :2048]

    monkeypatch.setattr(evaluate, "load_fid_inception", lambda w, d=None: loaded.append(w) or StandIn())

    assert cli_main(["evaluate", str(run), "--attr", "smilng", "--no-fid"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "smiling" in err[0]

    out = tmp_path / "out" / "e.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.SmallSampleFIDWarning)
        code = cli_main(["evaluate", str(run), "--attr", "smiling", "--prompts", "single", "--inception-weights",
                         str(weights), "--kid-subsets", "3", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    saved = json.loads(out.read_text())
    assert saved["settings"]["src_text"] == "face" and saved["settings"]["trg_text"] == "smiling face"
    assert saved["settings"]["prompt_mode"] == "single"
    assert loaded == [str(weights)] and inception.FID_WEIGHTS_FILE in saved["settings"]["inception"]
    assert {m["metric"] for m in saved["metrics"]} == {"s_dir", "directional_clip_loss", "fid", "kid"}
    assert "wrote" in capsys.readouterr().out


def test_network_matches_pytorch_fid_wrapper(fid_net, monkeypatch):
    """pytorch-fid's own InceptionV3(pool3) built with our random weights (its download replaced) gives the same
    features: same layers, resize and input scaling."""
    import pytorch_fid.inception as pfi
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: fid_net.state_dict())
    theirs = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        expected = theirs(x)[0].flatten(1)
        ours = fid_net(x)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_default_eval_path_and_run_record(tmp_path):
    run = tmp_path / "run"
    assert evaluate.default_eval_path(run) == run / "eval.json"
    assert evaluate.default_eval_path(run, run / "edited") == run / "eval.json"
    assert evaluate.default_eval_path(run, run / "edited_s+1.00") == run / "eval_edited_s+1.00.json"
    assert evaluate.default_eval_path(run, None, "_smiling") == run / "eval_edited_smiling.json"
    run.mkdir()
    settings = [{"label": "s+0.50", "folder": "edited_s+0.50"}, {"label": "s+1.00", "folder": "edited_s+1.00"}]
    (run / "edit.json").write_text(json.dumps({"config": {"strengths": [0.5, 1.0]}, "settings": settings}))
    record = evaluate._run_config(run, run / "edited_s+1.00")
    assert record["config_file"] == "edit.json" and record["setting"] == settings[1]


def test_eval_benchmark_runs(tmp_path, capsys):
    """benchmarks/bench_eval.py (the 1000-pair timing on a GPU) runs end to end on a few pairs on the CPU."""
    import importlib.util
    import json
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_eval.py"
    spec = importlib.util.spec_from_file_location("bench_eval", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "eval.jsonl"
    assert bench.main(["--n", "6", "--size", "64", "--clip-model", "tiny", "--batch-size", "3", "--device", "cpu",
                       "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["pairs"] == 6 and record["seconds_evaluate"] > 0
    assert {"s_dir", "fid", "kid"} <= set(record["metrics_computed"])
