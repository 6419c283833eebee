"""t_edit and t_boost as the original chooses them, with where each value came from (config.json, edit.json):
flag/config, else the attribute table (or the checkpoint), else the domain's LPIPS tables (t_edit × the CLIP text
cosine; t_boost from LPIPS(x_t, x0) ≥ 1.2)."""

import dataclasses
import json
import shutil

import pytest
import torch

from asyrp import backbones
from asyrp import diffusion as D
from asyrp.backbones import Backbone, fingerprint
from asyrp.cli import UserError
from asyrp.clip_loss import CLIPDirection
from asyrp.pipeline import edit as edit_module
from asyrp.pipeline.edit import EditConfig, edit
from asyrp.models.delta import build_delta_block, save_delta_block
from asyrp.models.unet import DDPMUNet
from asyrp.pipeline.run_record import resolve_training
from asyrp.pipeline.train import TrainConfig, train
from conftest import FIXTURES, tiny_backbone, tiny_clip

# h = 512 × 8 × 8 and temb 512 like CelebA-HQ, at 16 px: the released directions fit it
UNET_512 = dict(ch=128, out_ch=3, ch_mult=[1, 4], num_res_blocks=1, attn_resolutions=[], dropout=0.0,
                resamp_with_conv=True, in_channels=3, image_size=16)
RELEASED = "smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth"


def _celeba_like(backbone: Backbone) -> Backbone:
    """A test backbone that uses CelebA's LPIPS tables (as celeba-hq does)."""
    return dataclasses.replace(backbone, lpips_domain="celeba")


class _Cosine:
    def __init__(self, value):
        self.value = value

    def text_cosine(self):
        return self.value


def test_free_text_run_gets_t_edit_and_t_boost_from_the_lpips_tables(tmp_path):
    bb = _celeba_like(tiny_backbone())
    encoder, size = tiny_clip()
    cfg = TrainConfig(src="face", trg="goblin face", backbone="tiny", n_train_step=3, n_images=1, n_inv_step=3,
                      batch_size=1, device="cpu", lr=0.01)
    path = train(cfg, tmp_path / "run", backbone=bb, clip=(encoder, size), progress=False)
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    cos = CLIPDirection(encoder, "face", "goblin face", templates=None).text_cosine()
    assert resolved["text_cosine"] == pytest.approx(cos, abs=1e-6)
    assert resolved["t_edit"] == D.select_t_edit(cos, "celeba", 0.33)
    assert resolved["t_edit_source"] == f"LPIPS table (celeba, x0_t, threshold 0.33 × cos {cos:.4f})"
    assert (resolved["t_boost"], resolved["t_boost_source"]) == (167, "LPIPS table (celeba, x, threshold 1.2)")
    meta = torch.load(path, weights_only=True)["meta"]
    assert (meta["t_boost"], meta["t_boost_source"]) == (167, "LPIPS table (celeba, x, threshold 1.2)")


def test_the_original_defaults_and_other_thresholds():
    bb = _celeba_like(tiny_backbone())
    res = resolve_training(TrainConfig(src="face", trg="smiling face", lpips_boost_table="x0_t", lpips_boost_th=0.1),
                      bb, _Cosine(0.9))
    assert (res.t_edit, res.t_edit_source) == (514, "LPIPS table (celeba, x0_t, threshold 0.33 × cos 0.9000)")
    assert (res.t_boost, res.t_boost_source) == (193, "LPIPS table (celeba, x0_t, threshold 0.1)")


def test_the_attribute_table_wins_and_the_flag_wins_over_it():
    bb = _celeba_like(tiny_backbone())
    res = resolve_training(TrainConfig(attribute="smiling"), bb, _Cosine(0.5))
    assert (res.t_edit, res.t_edit_source, res.t_boost, res.t_boost_source) == \
        (513, "attribute table", 167, "attribute table")
    res = resolve_training(TrainConfig(attribute="smiling", t_edit=600, t_boost=200), bb, _Cosine(0.5))
    assert (res.t_edit, res.t_edit_source, res.t_boost, res.t_boost_source) == (600, "flag/config", 200, "flag/config")
    res = resolve_training(TrainConfig(attribute="makeup"), bb, _Cosine(0.8))  # no table values: both from LPIPS
    assert (res.t_edit, res.t_boost) == (489, 167)


def test_a_backbone_without_lpips_table_records_why_boosting_is_off():
    res = resolve_training(TrainConfig(src="a", trg="b", t_edit=400), tiny_backbone(), _Cosine(0.9))
    assert res.t_boost is None
    assert res.t_boost_source == "off: backbone 'tiny' has no LPIPS table (give --t-boost to boost)"


@pytest.fixture(scope="module")
def backbone_512():
    torch.manual_seed(0)
    unet = DDPMUNet(UNET_512).eval().requires_grad_(False)
    return Backbone(unet, "unet512", fingerprint(unet), "celeba", "ViT-B/16")


def _entries():
    g = torch.Generator().manual_seed(0)
    return [{"name": "img0", "x_T": torch.randn(3, 16, 16, generator=g), "x0": torch.rand(3, 16, 16, generator=g) * 2 - 1}]


def _released_as(tmp_path, attribute: str):
    path = tmp_path / RELEASED.replace("smiling", attribute)
    shutil.copy(FIXTURES / "official_delta_blocks" / RELEASED, path)
    return path


def test_released_direction_without_table_t_edit_gets_it_from_lpips_and_clip(tmp_path, backbone_512, monkeypatch):
    """The released makeup direction: no table t_edit; the original derives it from the CLIP cosine of its texts."""
    encoder, size = tiny_clip()
    monkeypatch.setattr(edit_module, "load_clip_model", lambda name, weights_dir=None, device="cpu": (encoder, size))
    cfg = EditConfig(directions=[str(_released_as(tmp_path, "makeup"))], n_test_step=4, n_images=1, device="cpu")
    record = edit(cfg, tmp_path / "out", backbone=backbone_512, entries=_entries(), progress=False)
    cos = CLIPDirection(encoder, "person", "person with makeup", templates=None).text_cosine()
    assert record["t_edit"] == D.select_t_edit(cos, "celeba", 0.33)
    assert record["t_edit_source"] == f"LPIPS table (celeba, x0_t, threshold 0.33 × cos {cos:.4f})"
    assert (record["t_boost"], record["t_boost_source"]) == (167, "LPIPS table (celeba, x, threshold 1.2)")
    saved = json.loads((tmp_path / "out" / "edit.json").read_text())
    assert saved["t_edit_source"] == record["t_edit_source"] and saved["directions"][0]["attribute"] == "makeup"


def test_released_direction_without_clip_offline_names_the_flag(tmp_path, backbone_512, monkeypatch):
    monkeypatch.setenv("ASYRP_OFFLINE", "1")
    monkeypatch.setenv("ASYRP_HOME", str(tmp_path / "home"))
    cfg = EditConfig(directions=[str(_released_as(tmp_path, "zombie"))], n_test_step=4, n_images=1, device="cpu")
    with pytest.raises(UserError) as e:
        edit(cfg, tmp_path / "out", backbone=backbone_512, entries=_entries(), progress=False)
    assert str(e.value) == ("zombie_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth: t_edit comes from the CLIP ViT-B/16 cosine "
                            "of 'Human' → 'Zombie', and that CLIP is not available offline; give --t-edit "
                            "(or `asyrp download clip-ViT-B/16`)")
    cfg.t_edit = 500  # the flag needs no CLIP
    record = edit(cfg, tmp_path / "out", backbone=backbone_512, entries=_entries(), progress=False)
    assert (record["t_edit"], record["t_edit_source"]) == (500, "flag/config")


def test_released_direction_with_a_table_entry(tmp_path, backbone_512):
    cfg = EditConfig(directions=[str(FIXTURES / "official_delta_blocks" / RELEASED)], n_test_step=4, n_images=1,
                     device="cpu")
    record = edit(cfg, tmp_path / "out", backbone=backbone_512, entries=_entries(), progress=False)
    assert {k: record[k] for k in ("t_edit", "t_edit_source", "t_boost", "t_boost_source")} == \
        {"t_edit": 513, "t_edit_source": "attribute table", "t_boost": 167, "t_boost_source": "attribute table"}
    cfg.boost = False
    record = edit(cfg, tmp_path / "out2", backbone=backbone_512, entries=_entries(), progress=False)
    assert (record["t_boost"], record["t_boost_source"]) == (None, "off: --no-boost")


def test_no_lpips_table_to_derive_t_edit_from_is_a_one_line_error(tmp_path):
    bb = tiny_backbone()  # h = 64 × 4 × 4, no LPIPS table
    block = build_delta_block(channels=64, temb_channels=bb.unet.temb_ch, spatial_size=4)
    path = tmp_path / RELEASED.replace("smiling", "makeup")
    torch.save({"0": block.state_dict()}, path)  # the released layout: no config, no t_edit
    cfg = EditConfig(directions=[str(path)], n_test_step=4, n_images=1, device="cpu",
                     delta_config=f"channels=64,temb_channels={bb.unet.temb_ch},spatial_size=4")
    with pytest.raises(UserError) as e:
        edit(cfg, tmp_path / "out", backbone=bb, entries=_entries(), progress=False)
    assert str(e.value) == (f"{path}: no t_edit in the checkpoint or the attribute table, and backbone 'tiny' has no "
                            "LPIPS table to derive it from; give --t-edit")


def _tiny_direction(tmp_path, bb, name: str, **meta):
    block = build_delta_block(channels=bb.unet.h_channels, temb_channels=bb.unet.temb_ch,
                              spatial_size=bb.unet.h_size)
    return str(save_delta_block(block, tmp_path / name, attribute="blue", n_train_step=4, t_edit=200, **meta))


def test_an_edit_inverts_to_the_t_0_its_direction_was_trained_with(tmp_path, monkeypatch):
    """A block learnt Δh for the x_t of its own inversion: `asyrp edit` inverts to the checkpoint's t_0 (not 999),
    generates from it and records where it came from; a checkpoint without t_0 gets the original's 999."""
    bb = tiny_backbone()
    seen = []
    monkeypatch.setattr(edit_module, "load_entries", lambda *a, **k: seen.append(a[7]) or _entries())
    cfg = EditConfig(directions=[_tiny_direction(tmp_path, bb, "d600.pt", t_0=600)], n_test_step=4, n_images=1,
                     device="cpu")
    record = edit(cfg, tmp_path / "out", backbone=bb, progress=False)
    assert (record["t_0"], record["t_0_source"], record["t_edit"]) == (600, "checkpoint", 200)
    assert (seen[0].t_0, record["directions"][0]["t_0"]) == (600, 600)
    assert json.loads((tmp_path / "out" / "edit.json").read_text())["t_0"] == 600
    legacy = EditConfig(directions=[_tiny_direction(tmp_path, bb, "old.pt")], n_test_step=4, n_images=1, device="cpu")
    record = edit(legacy, tmp_path / "out_old", backbone=bb, progress=False)
    assert (record["t_0"], record["t_0_source"]) == (999, "999: not in the checkpoint (the original's)")
    assert seen[1].t_0 == 999
    cfg.t_0 = 700  # the flag wins
    record = edit(cfg, tmp_path / "out_flag", backbone=bb, progress=False)
    assert (record["t_0"], record["t_0_source"], seen[2].t_0) == (700, "flag/config", 700)


def test_directions_of_different_t_0_or_a_t_edit_above_t_0_are_one_line_errors(tmp_path):
    bb = tiny_backbone()
    paths = [_tiny_direction(tmp_path, bb, "a.pt", t_0=600), _tiny_direction(tmp_path, bb, "b.pt")]
    cfg = EditConfig(directions=paths, n_test_step=4, n_images=1, device="cpu")
    with pytest.raises(UserError) as e:
        edit(cfg, tmp_path / "out", backbone=bb, entries=_entries(), progress=False)
    assert str(e.value) == "the directions were trained with different t_0 (a.pt: 600, b.pt: 999); give --t-0"
    cfg = EditConfig(directions=paths[:1], n_test_step=4, n_images=1, device="cpu", t_0=150)
    with pytest.raises(UserError) as e:
        edit(cfg, tmp_path / "out", backbone=bb, entries=_entries(), progress=False)
    assert str(e.value) == ("t_edit 200 must lie below t_0 150 (t_edit from checkpoint (as trained), "
                            "t_0 from flag/config); give --t-edit or --t-0")


def test_sampled_images_come_from_x_999_and_are_inverted_to_a_smaller_t_0(tmp_path):
    """--data sampled with t_0 < 999: the seeded noise is x_999 (the image is the same as with t_0 = 999), and the
    entry's latent is that image inverted to x_{t_0}, as for a real image (the app does the same)."""
    from asyrp import sampling
    from asyrp.pipeline.inversion import InversionSettings, precompute_sampled
    bb = tiny_backbone()
    alphas = D.alphas_cumprod(D.linear_betas())
    full = precompute_sampled(bb.unet, 2, 0, tmp_path, bb.fingerprint, InversionSettings(4, 999), progress=False)
    part = precompute_sampled(bb.unet, 2, 0, tmp_path, bb.fingerprint, InversionSettings(4, 600), progress=False)
    x0 = torch.stack([e["x0"] for e in full])
    assert torch.allclose(torch.stack([e["x0"] for e in part]), x0, atol=1e-6)
    with torch.no_grad():
        x_600 = sampling.invert(bb.unet, x0, alphas, 4, 600)
    assert torch.allclose(torch.stack([e["x_T"] for e in part]), x_600, atol=1e-5)
    assert not torch.allclose(x_600, torch.stack([e["x_T"] for e in full]), atol=1e-2)


def test_t_0_of_several_directions_names_their_common_source():
    from types import SimpleNamespace
    from asyrp.pipeline.run_record import resolve_t_0
    legacy = SimpleNamespace(t_0=999, t_0_source="999: not in the checkpoint (the original's)")
    stored = SimpleNamespace(t_0=999, t_0_source="checkpoint")
    cfg = SimpleNamespace(t_0=None)
    assert resolve_t_0(cfg, [legacy, legacy], ["a.pt", "b.pt"]) == (999, "999: not in the checkpoint (the original's)")
    assert resolve_t_0(cfg, [stored, stored], ["a.pt", "b.pt"]) == (999, "checkpoint")
    assert resolve_t_0(cfg, [stored, legacy], ["a.pt", "b.pt"]) == (999, "checkpoints")
    assert resolve_t_0(cfg, [], []) == (999, "default")
