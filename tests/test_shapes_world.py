"""The offline shapes world: dataset, exact attribute reader, shipped tiny DDPM / CLIP, and the two training commands."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asyrp import diffusion
from asyrp.cli import main as cli_main
from asyrp.io.files import read_jsonl
from asyrp.models.unet import DDPMUNet
from asyrp.worlds import shapes
from asyrp.worlds.shapes import ShapeSpec, ShapesDataset, caption, read_attributes, render, sample_specs

# Thresholds measured on the shipped models (see MODEL_CARD.md), with a margin.
DDPM_VALID_MIN = 0.8          # reader validity of 32 fixed-noise samples, 40-step DDIM: measured 1.00 (32 / 32);
                              # 96.4 % on 1000 samples in MODEL_CARD.md
CLIP_COLOR_ACC_MIN = 0.9      # zero-shot colour accuracy on 64 rendered images: measured 1.0 on 1000 (MODEL_CARD.md)
CLIP_SHAPE_ACC_MIN = 0.9      # zero-shot shape accuracy (the ResNet tower sees shape): measured 1.0 on 1000


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------

def test_dataset_is_deterministic():
    a, b, c = ShapesDataset(24, seed=3), ShapesDataset(24, seed=3), ShapesDataset(24, seed=4)
    assert torch.equal(a.batch(), b.batch())
    assert [a[i]["name"] for i in range(24)] == [b[i]["name"] for i in range(24)]
    assert a.specs == b.specs and a.specs != c.specs
    item = a[5]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert set(item["attributes"]) == {"shape", "color", "size", "background"}
    assert item["caption"] == caption(a.specs[5])


def test_render_bytes_are_pinned():
    """The renderer is plain float64 numpy: these bytes must never change (the shipped models were trained on it)."""
    imgs = np.stack([render(s) for s in sample_specs(16, seed=0)])
    assert imgs.dtype == np.uint8 and imgs.shape == (16, 32, 32, 3)
    assert hashlib.sha256(imgs.tobytes()).hexdigest() == RENDER_SHA256


RENDER_SHA256 = "cbb0046dafcc97ffbbe11d9c9921f8fca4fdf5ee6d1e377816c3376347529866"


def test_sample_specs_constraints_and_ranges():
    specs = sample_specs(200, seed=1, constraints={"color": "red", "shape": ["circle", "square"]})
    assert {s.color for s in specs} == {"red"} and {s.shape for s in specs} == {"circle", "square"}
    for s in sample_specs(300, seed=2):
        (x0, x1), (y0, y1) = shapes.position_range(s.shape, s.size)
        assert x0 <= s.cx <= x1 and y0 <= s.cy <= y1
    with pytest.raises(ValueError):
        sample_specs(2, 0, {"color": "pink"})
    with pytest.raises(ValueError):
        ShapeSpec("hexagon", "red", "small", "white")


def test_captions():
    spec = ShapeSpec("circle", "red", "small", "white")
    assert caption(spec) == "a small red circle on a white background"
    assert caption(spec, {"color"}) == "a red shape"
    assert caption(spec, {"shape"}) == "a circle"
    assert caption(spec, {"size"}) == "a small shape"
    assert caption(spec, {"background"}) == "a shape on a white background"
    assert caption(spec.replace(color="blue", shape="triangle"), {"color", "shape"}, article=False) == "blue triangle"


def test_palettes_are_distinct():
    pal = np.array(list(shapes.COLORS.values()), float)
    bg = np.array(list(shapes.BACKGROUNDS.values()), float)
    d = np.linalg.norm(pal[:, None] - pal[None], axis=-1) + np.eye(len(pal)) * 1e3
    assert d.min() > 80
    assert np.linalg.norm(pal[:, None] - bg[None], axis=-1).min() > 110


# --------------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rendered():
    specs = sample_specs(400, seed=11)
    return np.stack([render(s) for s in specs]), [s.attributes for s in specs]


def test_reader_is_exact_on_rendered_images(rendered):
    imgs, truth = rendered
    reads = read_attributes(imgs)
    assert all(r["valid"] for r in reads)
    assert shapes.attribute_accuracy(reads, truth) == {k: 1.0 for k in (*shapes.ATTRIBUTES, "all")}
    # tensors in [-1, 1] read the same as uint8 arrays; hard-edged renders too
    assert [r["shape"] for r in read_attributes(shapes.to_tensor(imgs[:20]))] == [t["shape"] for t in truth[:20]]
    hard = np.stack([render(s, supersample=1) for s in sample_specs(100, seed=12)])
    assert shapes.attribute_accuracy(read_attributes(hard), [s.attributes for s in sample_specs(100, seed=12)])["all"] == 1


def test_reader_is_robust_to_noise_and_blur(rendered):
    imgs, truth = rendered
    x = shapes.to_tensor(imgs)
    noisy = x + 0.08 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))  # σ = 10/255 per channel
    assert shapes.attribute_accuracy(read_attributes(noisy), truth)["all"] >= 0.99
    k = torch.tensor([0.25, 0.5, 0.25])
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), (k[:, None] * k[None]).expand(3, 1, 3, 3), groups=3)
    assert shapes.attribute_accuracy(read_attributes(blurred), truth)["all"] >= 0.98


def test_reader_flags_unclean_images():
    blank = np.full((32, 32, 3), 255, np.uint8)
    two_colours = render(ShapeSpec("square", "red", "large", "white"))
    two_colours[:, 16:] = render(ShapeSpec("square", "blue", "large", "white"))[:, 16:]
    two_shapes = np.minimum(render(ShapeSpec("circle", "red", "small", "white", cx=12, cy=12)),
                            render(ShapeSpec("circle", "red", "small", "white", cx=20, cy=20)))
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    reads = read_attributes(np.stack([blank, two_colours, two_shapes, noise]))
    assert [r["valid"] for r in reads] == [False] * 4
    assert "no foreground" in reads[0]["reasons"]
    assert any("colour" in why for why in reads[1]["reasons"])
    assert any("clean shape" in why for why in reads[2]["reasons"])


# --------------------------------------------------------------------------------------------------
# Shipped models
# --------------------------------------------------------------------------------------------------

def test_shipped_files_are_small():
    from importlib import resources
    names = ("ddpm.pt", "clip.pt", "ddpm_train_log.jsonl", "clip_train_log.jsonl", "samples.png", "MODEL_CARD.md")
    sizes = {}
    for name in names:
        with resources.as_file(shapes.resource_path(name)) as path:
            sizes[name] = path.stat().st_size
    with resources.as_file(shapes.resource_path("directions/color_red_blue.pt")) as path:
        sizes["direction"] = path.stat().st_size
    assert sum(sizes.values()) <= 20 * 10 ** 6, sizes  # issue 19: the shipped files within 20 MB (14.3 MB)


@pytest.fixture(scope="module")
def ddpm():
    return shapes.load_tiny_ddpm()


def test_tiny_ddpm_loads_and_samples_clean_shapes(ddpm):
    from asyrp.worlds.train_backbone import ddim_sample, fixed_noise
    x = fixed_noise(32, seed=123)
    eps = ddpm(x[:4], torch.tensor([999, 500, 10, 0]))
    assert eps.shape == (4, 3, 32, 32) and torch.isfinite(eps).all()
    h, _, _ = ddpm.encode(x[:2], 500)
    assert h.shape == (2, 128, 4, 4)
    samples = ddim_sample(ddpm, x, n_steps=40)
    assert samples.shape == (32, 3, 32, 32)
    valid = np.mean([r["valid"] for r in read_attributes(samples)])
    assert valid >= DDPM_VALID_MIN, valid


@pytest.fixture(scope="module")
def clip():
    return shapes.load_tiny_clip()


def test_tiny_clip_zero_shot_colour_and_shape(clip):
    from asyrp.worlds.train_clip import zero_shot
    encoder, image_size = clip
    assert image_size == 32
    ds = ShapesDataset(64, seed=2024)
    acc = zero_shot(encoder, ds.batch(), [s.attributes for s in ds.specs], image_size)
    assert acc["color"] >= CLIP_COLOR_ACC_MIN and acc["shape"] >= CLIP_SHAPE_ACC_MIN, acc
    emb = encoder.encode_text(["a red shape", "a blue shape"])
    assert emb.shape[0] == 2 and torch.isfinite(emb).all()


def test_tiny_clip_works_with_clip_direction(clip):
    from asyrp.clip_loss import CLIPDirection
    encoder, image_size = clip
    direction = CLIPDirection(encoder, "red shape", "blue shape", templates=None, image_size=image_size)
    specs = sample_specs(16, seed=5, constraints={"color": "red"})
    src = shapes.make_batch(specs)
    good = shapes.make_batch([s.replace(color="blue") for s in specs])
    bad = shapes.make_batch([s.replace(color="green") for s in specs])
    assert direction.similarity(src, good).mean() > direction.similarity(src, bad).mean()


def test_missing_resource_error_is_clear(monkeypatch):
    monkeypatch.setattr(shapes, "DDPM_FILE", "does-not-exist.pt")
    with pytest.raises(FileNotFoundError, match="asyrp train-backbone"):
        shapes.load_tiny_ddpm()


# --------------------------------------------------------------------------------------------------
# Training commands (tiny settings)
# --------------------------------------------------------------------------------------------------

DDPM_TINY = ["--image-size", "16", "--ch", "32", "--ch-mult", "1,2", "--attn", "8", "--batch-size", "4",
             "--warmup", "2", "--log-every", "1", "--ckpt-every", "100", "--sample-steps", "2",
             "--eval-samples", "4", "--eval-invert", "2", "--no-progress", "--threads", "1"]


def test_train_backbone_end_to_end_and_resume(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli_main(["train-backbone", "--out", str(straight), "--steps", "4", *DDPM_TINY]) == 0
    for name in ("ddpm.pt", "checkpoint.pt", "ddpm_train_log.jsonl", "samples.png", "eval.json"):
        assert (straight / name).is_file(), name
    assert [r["step"] for r in read_jsonl(straight / "ddpm_train_log.jsonl")] == [1, 2, 3, 4]
    shipped = torch.load(straight / "ddpm.pt", weights_only=True)
    assert shipped["config"]["image_size"] == 16
    assert all(v.dtype == torch.float16 for v in shipped["state_dict"].values() if v.is_floating_point())
    shapes.ddpm_from_checkpoint(shipped)

    assert cli_main(["train-backbone", "--out", str(resumed), "--steps", "4", "--stop-at", "2", *DDPM_TINY]) == 0
    assert torch.load(resumed / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not (resumed / "ddpm.pt").exists()
    assert cli_main(["train-backbone", "--out", str(resumed), "--steps", "4", "--resume", *DDPM_TINY]) == 0
    assert [r["step"] for r in read_jsonl(resumed / "ddpm_train_log.jsonl")] == [1, 2, 3, 4]
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert b["step"] == 4
    for k in a["model"]:  # the resumed run continues exactly
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k


def _first_step(ddpm_path, config_overrides=None, n=4, size=16):
    """The model in ``ddpm_path`` (fp32) and what train-backbone's step 0 draws with seed 0: (model, specs, t, eps, ᾱ_t,
    x_t), so a test can recompute the first logged loss."""
    from asyrp.worlds import train_backbone as tb

    start = torch.load(ddpm_path, weights_only=True)
    model = DDPMUNet({**start["config"], **(config_overrides or {})}).eval()
    model.load_state_dict({k: v.float() for k, v in start["state_dict"].items()})
    s_seed = tb.stream_seed(0, 0)
    x0, specs = shapes.random_batch(n, s_seed, size)
    g = torch.Generator().manual_seed(s_seed)
    t = torch.randint(0, 1000, (n,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a = diffusion.alpha_bar(diffusion.alphas_cumprod(diffusion.linear_betas()), t)
    return model, specs, t, eps, a, a.sqrt() * x0 + (1 - a).sqrt() * eps


def test_train_backbone_object_weight(tmp_path):
    """--object-weight W: each pixel's squared error is weighted 1 + W × the shape's coverage (the alpha the renderer
    blends with: the image is bg + alpha (fg − bg)); the first logged loss is that weighted mean, and it is recorded."""
    specs = shapes.sample_specs(3, 5)
    masks = shapes.object_masks(specs, 16)
    images = shapes.make_batch(specs, 16)
    for spec, m, img in zip(specs, masks, images):
        bg = torch.tensor(shapes.BACKGROUNDS[spec.background]).view(3, 1, 1) / 127.5 - 1
        fg = torch.tensor(shapes.COLORS[spec.color]).view(3, 1, 1) / 127.5 - 1
        assert torch.allclose(img, bg + m * (fg - bg), atol=1 / 127.5)
        assert float(m.min()) == 0.0 and float(m.max()) == 1.0 and 0 < float((m > 0).float().mean()) < 0.8

    init, run = tmp_path / "init", tmp_path / "run"
    assert cli_main(["train-backbone", "--out", str(init), "--steps", "1", *DDPM_TINY]) == 0
    assert cli_main(["train-backbone", "--out", str(run), "--steps", "1", "--init-from", str(init / "ddpm.pt"),
                     "--object-weight", "3", *DDPM_TINY]) == 0
    assert torch.load(run / "ddpm.pt", weights_only=True)["meta"]["object_weight"] == 3.0
    model, batch_specs, t, eps, _, x_t = _first_step(init / "ddpm.pt")
    with torch.no_grad():
        sq_err = (model(x_t, t) - eps).pow(2)
    weighted = float((sq_err * (1 + 3 * shapes.object_masks(batch_specs, 16))).mean())
    logged = read_jsonl(run / "ddpm_train_log.jsonl")[0]["loss"]
    assert abs(logged - weighted) < 1e-3 * max(1.0, weighted)
    assert abs(logged - float(sq_err.mean())) > 1e-2 * weighted  # the weights matter


def test_object_weight_per_area(tmp_path, capsys):
    """--object-weight-per-area: each shape's coverage is scaled by the batch's mean shape area over its own, so every
    shape carries the same total weight (the batch's mean area × W); without the flag the weights are 1 + W × coverage.
    The flag alone is refused with the option to add, and a run records it."""
    from asyrp.worlds.train_backbone import pixel_weights
    specs = shapes.sample_specs(8, 3)
    masks = shapes.object_masks(specs, 32)
    areas = masks.sum(dim=(1, 2, 3))
    assert float(areas.max() / areas.min()) > 2  # shapes of different sizes, so the scaling matters
    plain = pixel_weights(specs, 4.0, 32)
    assert torch.equal(plain, 1 + 4.0 * masks)
    per_area = pixel_weights(specs, 4.0, 32, per_area=True)
    totals = ((per_area - 1) / 4.0).sum(dim=(1, 2, 3))
    assert torch.allclose(totals, areas.mean().expand(8), rtol=1e-5)
    assert torch.equal(per_area > 1, plain > 1)  # the same pixels, weighted differently

    assert cli_main(["train-backbone", "--out", str(tmp_path / "bad"), "--steps", "1", "--object-weight-per-area",
                     *DDPM_TINY]) == 2
    assert "--object-weight-per-area scales the object's weight: give --object-weight W as well" in (
        capsys.readouterr().err)
    run = tmp_path / "run"
    assert cli_main(["train-backbone", "--out", str(run), "--steps", "1", "--object-weight", "3",
                     "--object-weight-per-area", *DDPM_TINY]) == 0
    assert torch.load(run / "ddpm.pt", weights_only=True)["meta"]["object_weight_per_area"] is True


def test_train_backbone_h_only_fine_tune(tmp_path, capsys):
    """--init-from + --h-only-from-t: the fine-tune starts from the given weights (first logged loss equals the loss of
    those weights on step 0's batch, weighted as x0-MSE at t ≥ h_only_from_t) and ships a model with the key; a
    different network is refused by name."""
    from asyrp.worlds import train_backbone as tb

    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert cli_main(["train-backbone", "--out", str(base), "--steps", "2", *DDPM_TINY]) == 0
    assert cli_main(["train-backbone", "--out", str(tuned), "--steps", "1", "--init-from", str(base / "ddpm.pt"),
                     "--h-only-from-t", "500", *DDPM_TINY]) == 0
    shipped = torch.load(tuned / "ddpm.pt", weights_only=True)
    assert shipped["config"]["h_only_from_t"] == 500
    assert shipped["meta"]["init_from"] == {"path": str(base / "ddpm.pt"), "steps": 2}
    model, _, t, eps, a, x_t = _first_step(base / "ddpm.pt", {"h_only_from_t": 500})
    with torch.no_grad():
        per_sample = (model(x_t, t) - eps).pow(2).mean(dim=(1, 2, 3))
    w = tb.loss_weights(t, a, 500)
    assert torch.equal(w[t < 500], torch.ones(int((t < 500).sum())))
    assert torch.allclose(w[t >= 500], ((1 - a) / a).view(-1)[t >= 500])
    expected = float((per_sample * w).mean())
    logged = read_jsonl(tuned / "ddpm_train_log.jsonl")[0]["loss"]
    assert abs(logged - expected) < 1e-3 * max(1.0, expected)
    capsys.readouterr()
    assert cli_main(["train-backbone", "--out", str(tmp_path / "bad"), "--steps", "1", "--init-from",
                     str(base / "ddpm.pt"), *[v if v != "1,2" else "1,1" for v in DDPM_TINY]]) == 2
    assert "differs from" in capsys.readouterr().err


def test_perturb_h_moves_h_by_the_given_share_only_where_the_decoder_reads_h_alone(tmp_path, capsys):
    """--h-noise S: h + a random direction of length S·‖h‖ per sample at t ≥ h_only_from_t, h unchanged below; the
    option needs --h-only-from-t."""
    from asyrp.worlds.train_backbone import perturb_h

    h = torch.randn(4, 8, 2, 2) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(-1, 1, 1, 1)
    t = torch.tensor([100, 299, 300, 900])
    out = perturb_h(h, t, 300, 0.3, torch.Generator().manual_seed(0))
    moved = (out - h).flatten(1).norm(dim=1) / h.flatten(1).norm(dim=1)
    assert torch.equal(out[:2], h[:2])
    assert torch.allclose(moved[2:], torch.full((2,), 0.3), atol=1e-6)
    again = perturb_h(h, t, 300, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert cli_main(["train-backbone", "--out", str(tmp_path), "--steps", "1", "--h-noise", "0.3", *DDPM_TINY]) == 2
    assert "give --h-only-from-t T as well" in capsys.readouterr().err


def test_hue_rotation_turns_hue_and_keeps_gray_norm_and_channel_mean():
    """hue_rotate: orthogonal per pixel, gray / white / black fixed, the channel mean kept, 120° maps R → G → B, one
    angle per image."""
    from asyrp.worlds.train_backbone import hue_rotate

    x = torch.randn(2, 3, 4, 4)
    y = hue_rotate(x, torch.tensor([0.7, 4.0]))
    assert torch.allclose(y.norm(dim=1), x.norm(dim=1), atol=1e-5)
    assert torch.allclose(y.mean(dim=1), x.mean(dim=1), atol=1e-6)
    gray = torch.stack([torch.full((3, 1, 1), v) for v in (1.0, 0.0, -1.0)])  # white, gray, black
    assert torch.allclose(hue_rotate(gray, torch.full((3,), 2.0)), gray, atol=1e-6)
    rgb = torch.eye(3).view(3, 3, 1, 1)
    turned = hue_rotate(rgb, torch.full((3,), 2 * math.pi / 3)).view(3, 3)
    assert torch.allclose(turned, torch.eye(3)[[1, 2, 0]], atol=1e-6)
    assert not torch.allclose(y[0], hue_rotate(x[:1], torch.tensor([4.0]))[0], atol=1e-3)


def test_train_backbone_skip_hue_rotation(tmp_path, capsys):
    """--x0-from-t T --skip-hue-rotation: step 0's logged loss is that of the decoder fed h of x_t and, at t ≥ T, the
    skips of x_t hue-rotated by the step's random angles (x0-MSE weighted there); not the loss with plain skips; the
    shipped model has x0_from_t and no rotation (inference sees plain skips); the option alone is refused by name."""
    from asyrp.worlds import train_backbone as tb

    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert cli_main(["train-backbone", "--out", str(base), "--steps", "2", *DDPM_TINY]) == 0
    assert cli_main(["train-backbone", "--out", str(tuned), "--steps", "1", "--init-from", str(base / "ddpm.pt"),
                     "--x0-from-t", "670", "--skip-hue-rotation", *DDPM_TINY]) == 0
    shipped = torch.load(tuned / "ddpm.pt", weights_only=True)
    assert shipped["config"]["x0_from_t"] == 670 and shipped["meta"]["skip_hue_rotation"] is True
    model, _, t, eps, a, x_t = _first_step(base / "ddpm.pt", {"x0_from_t": 670})
    assert bool((t >= 670).any()) and bool((t < 670).any())
    g = torch.Generator().manual_seed(tb.stream_seed(0, 0))
    torch.randint(0, 1000, (4,), generator=g), torch.randn(x_t.shape, generator=g)  # what the step drew before
    with torch.no_grad():
        h, skips, temb = model.encode(x_t, t)
        rotated = tb.hue_blind_skips(model, x_t, t, skips, g)
        w = tb.loss_weights(t, a, 670)
        expected = float(((model.decode(h, rotated, temb, x_t, t) - eps).pow(2).mean(dim=(1, 2, 3)) * w).mean())
        plain = float(((model.decode(h, skips, temb, x_t, t) - eps).pow(2).mean(dim=(1, 2, 3)) * w).mean())
    logged = read_jsonl(tuned / "ddpm_train_log.jsonl")[0]["loss"]
    assert abs(logged - expected) < 1e-3 * max(1.0, expected)
    assert abs(logged - plain) > 1e-2 * expected
    capsys.readouterr()
    assert cli_main(["train-backbone", "--out", str(tmp_path / "bad"), "--steps", "1", "--skip-hue-rotation",
                     *DDPM_TINY]) == 2
    assert "give --x0-from-t T as well" in capsys.readouterr().err
    assert cli_main(["train-backbone", "--out", str(tmp_path / "bad"), "--steps", "1", "--x0-from-t", "670",
                     "--h-from-color-partner", *DDPM_TINY]) == 2
    assert "give --skip-hue-rotation as well" in capsys.readouterr().err


def test_train_backbone_h_from_color_partner(tmp_path):
    """--h-from-color-partner: at t ≥ x0_from_t, h comes from a same-colour partner (shape, size, position and
    background drawn afresh) and the skips from the image itself, hue-rotated; step 0's logged loss is that."""
    from asyrp.worlds import train_backbone as tb

    specs = shapes.sample_specs(64, 3)
    partners = tb.color_partners(specs, 4)
    assert [p.color for p in partners] == [s.color for s in specs]
    assert sum(p.shape != s.shape for p, s in zip(partners, specs)) > 20
    assert sum(p.background != s.background for p, s in zip(partners, specs)) > 20

    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert cli_main(["train-backbone", "--out", str(base), "--steps", "2", *DDPM_TINY]) == 0
    assert cli_main(["train-backbone", "--out", str(tuned), "--steps", "1", "--init-from", str(base / "ddpm.pt"),
                     "--x0-from-t", "670", "--skip-hue-rotation", "--h-from-color-partner", *DDPM_TINY]) == 0
    assert torch.load(tuned / "ddpm.pt", weights_only=True)["meta"]["h_from_color_partner"] is True
    model, batch_specs, t, eps, a, x_t = _first_step(base / "ddpm.pt", {"x0_from_t": 670})
    s_seed = tb.stream_seed(0, 0)
    g = torch.Generator().manual_seed(s_seed)
    torch.randint(0, 1000, (4,), generator=g), torch.randn(x_t.shape, generator=g)
    high = t >= 670
    mates = tb.color_partners(batch_specs, s_seed + 1)
    x_h = a.sqrt() * shapes.make_batch(mates, 16) + (1 - a).sqrt() * eps
    with torch.no_grad():
        h, skips, temb = model.encode(torch.where(high.view(-1, 1, 1, 1), x_h, x_t), t)
        skips = tb.hue_blind_skips(model, x_t, t, skips, g)
        w = tb.loss_weights(t, a, 670)
        expected = float(((model.decode(h, skips, temb, x_t, t) - eps).pow(2).mean(dim=(1, 2, 3)) * w).mean())
    logged = read_jsonl(tuned / "ddpm_train_log.jsonl")[0]["loss"]
    assert abs(logged - expected) < 1e-3 * max(1.0, expected)


def test_train_backbone_h_attribute_readout(tmp_path):
    """--h-attribute-weight W: a linear read-out of the four attributes from h trains with the DDPM; its loss is logged
    apart (the logged DDPM loss of step 1 is that of the same weights without it), it changes the update, it is not
    shipped, and a run stopped and resumed ends with the same weights, EMA and read-out as one straight run."""
    plain, aux, resumed = tmp_path / "plain", tmp_path / "aux", tmp_path / "resumed"
    assert cli_main(["train-backbone", "--out", str(plain), "--steps", "2", *DDPM_TINY]) == 0
    assert cli_main(["train-backbone", "--out", str(aux), "--steps", "2", "--h-attribute-weight", "0.5",
                     *DDPM_TINY]) == 0
    log_plain, log_aux = read_jsonl(plain / "ddpm_train_log.jsonl"), read_jsonl(aux / "ddpm_train_log.jsonl")
    assert log_aux[0]["loss"] == log_plain[0]["loss"]
    assert "h_attribute_loss" not in log_plain[0]
    chance = sum(math.log(len(v)) for v in shapes.ATTRIBUTES.values())  # 4.68: the sum of four cross-entropies
    assert 0.5 * chance < log_aux[0]["h_attribute_loss"] < 2 * chance
    shipped = torch.load(aux / "ddpm.pt", weights_only=True)
    assert shipped["meta"]["h_attribute_weight"] == 0.5
    assert not any(k.startswith("heads.") for k in shipped["state_dict"])
    a, p = torch.load(aux / "checkpoint.pt", weights_only=True), torch.load(plain / "checkpoint.pt", weights_only=True)
    assert not torch.equal(a["model"]["conv_in.weight"], p["model"]["conv_in.weight"])  # the update changed

    assert cli_main(["train-backbone", "--out", str(resumed), "--steps", "2", "--stop-at", "1",
                     "--h-attribute-weight", "0.5", *DDPM_TINY]) == 0
    assert cli_main(["train-backbone", "--out", str(resumed), "--steps", "2", "--resume", "--h-attribute-weight", "0.5",
                     *DDPM_TINY]) == 0
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)
    for part in ("model", "ema", "readout"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


CLIP_TINY = ["--width", "32", "--embed-dim", "32", "--vision-layers", "1", "--text-layers", "1", "--batch-size", "8",
             "--warmup", "2", "--log-every", "1", "--ckpt-every", "100", "--eval-images", "0", "--no-progress",
             "--threads", "1"]


def test_train_clip_end_to_end_and_resume(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli_main(["train-clip", "--out", str(straight), "--steps", "4", *CLIP_TINY]) == 0
    for name in ("clip.pt", "checkpoint.pt", "clip_train_log.jsonl", "eval.json"):
        assert (straight / name).is_file(), name
    assert [r["step"] for r in read_jsonl(straight / "clip_train_log.jsonl")] == [1, 2, 3, 4]
    encoder, size = shapes.clip_from_checkpoint(torch.load(straight / "clip.pt", weights_only=True))
    assert size == 32 and encoder.encode_text(["a red shape"]).shape == (1, 32)

    assert cli_main(["train-clip", "--out", str(resumed), "--steps", "4", "--stop-at", "2", *CLIP_TINY]) == 0
    assert torch.load(resumed / "checkpoint.pt", weights_only=True)["step"] == 2
    assert cli_main(["train-clip", "--out", str(resumed), "--steps", "4", "--resume", *CLIP_TINY]) == 0
    assert [r["step"] for r in read_jsonl(resumed / "clip_train_log.jsonl")] == [1, 2, 3, 4]
    a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_train_clip_resnet_tower_logs_zero_shot_progress(tmp_path):
    """The ResNet image tower (open_clip's ModifiedResNet) trains, exports, reloads strictly, and --eval-every writes
    the held-out zero-shot accuracy of every attribute into the training log."""
    out = tmp_path / "rn"
    args = ["train-clip", "--out", str(out), "--steps", "2", "--vision", "resnet", "--resnet-width", "8",
            "--eval-every", "2", *CLIP_TINY]
    assert cli_main(args) == 0
    records = read_jsonl(out / "clip_train_log.jsonl")
    probes = [r for r in records if "zero_shot_200" in r]
    assert [r["step"] for r in probes] == [2]
    assert set(probes[0]["zero_shot_200"]) == set(shapes.ATTRIBUTES)
    assert all(0.0 <= v <= 1.0 for v in probes[0]["zero_shot_200"].values())
    obj = torch.load(out / "clip.pt", weights_only=True)
    assert obj["config"]["vision"] == {"layers": [1, 1, 1, 1], "width": 8, "head_width": 64}
    encoder, size = shapes.clip_from_checkpoint(obj)
    assert size == 32
    assert type(encoder.model.visual).__name__ == "ModifiedResNet"
    assert encoder.encode_image(torch.zeros(2, 3, 32, 32)).shape == (2, 32)


def test_clip_config_rejects_unknown_tower_and_odd_resnet_size():
    from asyrp.worlds.train_clip import default_config
    with pytest.raises(ValueError, match="unknown vision tower 'cnn'"):
        default_config(vision_kind="cnn")
    with pytest.raises(ValueError, match="divisible by 32, got 48"):
        default_config(image_size=48, vision_kind="resnet")


def test_model_card_skips_probe_lines_and_tabulates_them():
    """The card is rendered from the shipped eval files and logs; zero-shot probe lines (train-clip --eval-every)
    stay out of the loss tables and get a table of their own."""
    import json
    from importlib import resources

    from asyrp.worlds.card import render_card

    def read(name):
        with resources.as_file(shapes.resource_path(name)) as path:
            return json.loads(path.read_text()) if name.endswith(".json") else read_jsonl(path)

    ddpm_eval, clip_eval = read("ddpm_eval.json"), read("clip_eval.json")
    ddpm_log, shipped_log = read("ddpm_train_log.jsonl"), read("clip_train_log.jsonl")
    # the shipped CLIP was trained with --eval-every 400: its probe lines are tabulated ...
    shipped = render_card(ddpm_eval, clip_eval, ddpm_log, shipped_log, "cmd-ddpm", "cmd-clip", "test machine")
    assert "| 400 | 100.0 % | 100.0 % | 98.0 % | 100.0 % |" in shipped
    # ... and without them the card is the same up to that table
    clip_log = [r for r in shipped_log if "zero_shot_200" not in r]
    assert len(clip_log) < len(shipped_log)
    plain = render_card(ddpm_eval, clip_eval, ddpm_log, clip_log, "cmd-ddpm", "cmd-clip", "test machine")
    assert "held-out images during training" not in plain and shipped.startswith(plain.rstrip("\n"))
    probe = {"step": 250, "zero_shot_200": {"color": 1.0, "size": 0.5, "shape": 0.365, "background": 1.0}}
    last = {"step": clip_log[-1]["step"], "zero_shot_200": dict(probe["zero_shot_200"], shape=1.0)}
    card = render_card(ddpm_eval, clip_eval, ddpm_log, [*clip_log, probe, last], "cmd-ddpm", "cmd-clip", "test machine")
    assert card.startswith(plain.rstrip("\n"))  # the loss tables are unchanged by the probe lines
    assert "| 250 | 100.0 % | 50.0 % | 36.5 % | 100.0 % |" in card
    assert f"| {clip_log[-1]['step']} | 100.0 % | 50.0 % | 100.0 % | 100.0 % |" in card
