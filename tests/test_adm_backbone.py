"""The AFHQ-dog / FFHQ / MetFaces backbones through the package: registry, the CLI end to end on the reduced iDDPM
U-Net of ../shared/fixtures/adm, the AFHQ and MetFaces folder layouts, and the safetensors export of a direction."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from asyrp import backbones
from asyrp.io import weights
from asyrp import diffusion as D
from asyrp.attributes import get_attribute
from asyrp.backbones import fingerprint, save_clip
from asyrp.cli import main as cli
from asyrp.io.datasets import DataError, open_images
from asyrp.models.adm import ADMUNet
from asyrp.models.delta import load_delta_block, save_delta_block
from conftest import FIXTURES, TINY_CLIP_CFG, load_fixture, tiny_clip


def _err(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("asyrp ")]
    assert len(lines) == 1, lines
    return lines[0]


def _images(folder, n, suffix, size=(40, 36)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i:05d}{suffix}")


def test_registry_entries():
    for name, (weights_name, filename, domain) in {
            "afhq-dog": ("iddpm-afhq-dog", "afhq_dog_4m.pt", "afhq"), "ffhq": ("iddpm-ffhq", "ffhq_10m.pt", None),
            "metfaces": ("adm-metfaces", "metface_p2.pt", "metface")}.items():
        spec, entry = backbones.BACKBONES[name], weights.get_spec(weights_name)
        assert (spec.weights, spec.lpips_domain, spec.default_clip) == (weights_name, domain, "ViT-B/16")
        assert entry.filename == filename and entry.manual and entry.sha256 is None
        assert entry.urls == ("https://1drv.ms/u/s!AkQjJhxDm0Fyhqp_4gkYjwVRBe8V_w?e=Et3ITH",)
    with torch.device("meta"):
        assert backbones.build_unet(backbones.BACKBONES["metfaces"].config).h_channels == 512
    for attr, domain in (("dog_happy", "afhq"), ("metface_smiling", "metface")):
        assert get_attribute(attr).domain == domain
    assert get_attribute("metface_smiling").trg == "painting of a Smiling person"
    assert [weights.get_spec(f"diffusers-ddpm-ema-{d}-256").urls[0] for d in ("celebahq", "church", "bedroom")] == [
        f"https://huggingface.co/google/ddpm-ema-{d}-256/resolve/main/diffusion_pytorch_model.bin"
        for d in ("celebahq", "church", "bedroom")]


def test_missing_checkpoint_names_file_and_place(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ASYRP_HOME", str(tmp_path / "home"))
    assert cli(["precompute", "--backbone", "afhq-dog", "--data", "sampled", "--n", "1"]) == 2
    err = _err(capsys)
    assert "afhq_dog_4m.pt" in err and "1drv.ms" in err and str(tmp_path / "home" / "weights" / "afhq_dog_4m.pt") in err
    monkeypatch.delenv("ASYRP_OFFLINE")  # even online, a OneDrive-only file is never fetched
    assert cli(["download", "adm-metfaces"]) == 2
    err = _err(capsys)
    assert "metface_p2.pt" in err and "cannot be downloaded automatically" in err and "download it in a browser" in err


def _reduced_unet() -> ADMUNet:
    reduced = load_fixture("adm/reduced_unets.pt")["iddpm"]
    unet = ADMUNet.from_create_model(**reduced["create_model_kwargs"])
    unet.load_state_dict(reduced["state_dict"], strict=True)
    return unet


@pytest.fixture()
def afhq_env(tmp_path, monkeypatch):
    """The reduced iDDPM U-Net as afhq_dog_4m.pt in a weights folder, afhq-dog pointed at its config, a tiny CLIP
    and an AFHQ-layout image folder."""
    monkeypatch.setenv("ASYRP_HOME", str(tmp_path / "home"))
    reduced = load_fixture("adm/reduced_unets.pt")["iddpm"]
    (tmp_path / "weights").mkdir()
    torch.save(reduced["state_dict"], tmp_path / "weights" / "afhq_dog_4m.pt")
    spec = backbones.BACKBONES["afhq-dog"]
    monkeypatch.setitem(backbones.BACKBONES, "afhq-dog",
                        dataclasses.replace(spec, config=reduced["create_model_kwargs"]))
    encoder, size = tiny_clip()
    save_clip(encoder.model, TINY_CLIP_CFG, tmp_path / "clip.pt", image_size=size)
    for split in ("train", "val"):
        _images(tmp_path / "afhq" / split / "dog", 2, ".jpg")
        _images(tmp_path / "afhq" / split / "cat", 1, ".jpg")
    return tmp_path


def test_afhq_dog_train_and_edit_end_to_end(afhq_env):
    env = afhq_env
    common = ["--backbone", "afhq-dog", "--weights-dir", str(env / "weights"), "--device", "cpu"]
    data = ["--data", str(env / "afhq"), "--split", "train", "--n-inv-step", "4"]
    with pytest.warns(UserWarning, match="afhq_dog_4m.pt: no sha256 is published"):
        assert cli(["precompute", *common, *data, "--n", "2", "--cache", str(env / "cache")]) == 0
    assert cli(["train", *common, *data, "--cache-dir", str(env / "cache"), "--clip-model", str(env / "clip.pt"),
                "--n-images", "2", "--n-train-step", "4", "--attr", "dog_happy", "--lr", "0.1",
                "--batch-size", "2", "--out", str(env / "run")]) == 0
    run = json.loads((env / "run" / "config.json").read_text())
    # t_edit from the afhq LPIPS table (not celeba's); the ADM delta block on h = 64 × 8 × 8 with temb 128
    res = run["resolved"]
    assert res["t_edit"] == D.select_t_edit(res["text_cosine"], "afhq", 0.33) != \
        D.select_t_edit(res["text_cosine"], "celeba", 0.33)
    assert res["delta"]["kind"] == "adm" and res["backbone_sha256"] == fingerprint(_reduced_unet())
    assert (run["resolved"]["delta"]["channels"], run["resolved"]["delta"]["temb_channels"]) == (64, 128)
    block = load_delta_block(env / "run" / "delta.pt")
    layers = ("in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3")
    assert set(block.state_dict()) == {f"{m}.{p}" for m in layers for p in ("weight", "bias")}
    assert cli(["edit", *common, "--cache-dir", str(env / "cache"), "--direction", str(env / "run" / "delta.pt"),
                "--data", str(env / "afhq"), "--split", "val", "--n-images", "2", "--n-inv-step", "4",
                "--n-test-step", "4", "--strengths=0,1", "--t-boost", "200", "--out", str(env / "edit")]) == 0
    names = sorted(p.name for p in (env / "edit" / "original").glob("*.png"))
    assert names == ["00000.png", "00001.png"]  # the val/dog images only, no cats
    rec = np.asarray(Image.open(env / "edit" / "reconstructed" / names[0]), dtype=int)
    assert np.abs(np.asarray(Image.open(env / "edit" / "edited_s+1.00" / names[0]), dtype=int) - rec).max() > 0


def test_released_direction_fits_only_its_backbone(afhq_env, capsys):
    """dog_happy is a 512-channel block: on the reduced 64-channel U-Net edit refuses it in one line."""
    official = FIXTURES / "adm" / "official_blocks" / "dog_happy_LC_dog_t999_ninv40_ngen40_0.pth"
    with pytest.warns(UserWarning, match="trusting this copy on first use"):
        assert cli(["edit", "--backbone", "afhq-dog", "--weights-dir", str(afhq_env / "weights"), "--device", "cpu",
                    "--direction", str(official), "--data", "sampled", "--n-images", "1", "--n-inv-step", "4",
                    "--n-test-step", "4", "--cache-dir", str(afhq_env / "cache"), "--out", str(afhq_env / "e")]) == 2
    assert "checkpoint of another architecture" in _err(capsys)


def test_adm_unet_files(tmp_path):
    """An ADM U-Net saved with save_unet loads from its config; a bare original state dict needs create_model
    arguments, and gets a one-line error naming the missing keys when they do not fit."""
    unet = _reduced_unet()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = unet(x, 700)
    backbones.save_unet(unet, tmp_path / "adm.pt")
    assert backbones.load_backbone(str(tmp_path / "adm.pt")).fingerprint == fingerprint(unet)
    torch.save(unet.state_dict(), tmp_path / "bare.pt")
    kwargs = load_fixture("adm/reduced_unets.pt")["iddpm"]["create_model_kwargs"]
    with torch.no_grad():
        assert torch.equal(backbones.load_backbone(str(tmp_path / "bare.pt"), config=kwargs).unet(x, 700), ref)
    with pytest.raises(backbones.CheckpointError, match="create_model arguments"):
        backbones.load_backbone(str(tmp_path / "bare.pt"))
    with pytest.raises(ValueError, match="does not fit ADMUNet.*28 missing: input_blocks.5.1.norm.weight.*"
                                         "iDDPM / guided-diffusion checkpoint"):
        backbones.load_backbone(str(tmp_path / "bare.pt"), config={**kwargs, "attention_resolutions": "16,8"})


def test_afhq_and_metfaces_layouts(tmp_path):
    _images(tmp_path / "afhq" / "train" / "dog", 3, ".jpg")
    _images(tmp_path / "afhq" / "train" / "cat", 2, ".jpg")
    _images(tmp_path / "afhq" / "val" / "dog", 1, ".jpg")
    assert open_images(tmp_path / "afhq", 16, split="train").names == ["00000", "00001", "00002"]
    assert len(open_images(tmp_path / "afhq", 16, split="val")) == 1
    assert len(open_images(tmp_path / "afhq", 16, split="train/cat")) == 2
    with pytest.raises(DataError, match="AFHQ root.*--split train"):
        open_images(tmp_path / "afhq", 16)
    _images(tmp_path / "metfaces" / "images", 503, ".png", size=(4, 4))
    (tmp_path / "metfaces" / "metfaces.json").write_text("{}")
    assert len(open_images(tmp_path / "metfaces", 16)) == 503
    assert len(open_images(tmp_path / "metfaces", 16, split="train")) == 3
    test = open_images(tmp_path / "metfaces", 16, split="test")
    assert len(test) == 500 and test[0]["name"] == "00003" and test[0]["image"].shape == (3, 16, 16)


def test_direction_exported_to_safetensors(tmp_path):
    official = FIXTURES / "adm" / "official_blocks" / "metface_smiling_LC_metfaces_t999_ninv40_ngen40_0.pth"
    block = load_delta_block(official)
    path = save_delta_block(block, tmp_path / "metface_smiling.safetensors", attribute="metface_smiling", t_edit=396)
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    loaded, meta = load_delta_block(path, return_meta=True)
    assert loaded.config == block.config and meta == {"attribute": "metface_smiling", "t_edit": 396}
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in block.state_dict().items())
