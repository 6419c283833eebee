"""diffusers UNet2DModel folders of the DDPM family load into DDPMUNet and give diffusers' own ε."""

from __future__ import annotations

import json

import pytest
import torch

from asyrp.backbones import load_backbone
from asyrp.models.diffusers_ddpm import DiffusersFormatError, load_diffusers_unet
from asyrp.models.unet import BackboneLoadError
from conftest import assert_close_fp32
from test_unet import UNET_ULPS

diffusers = pytest.importorskip("diffusers")  # the test extra (pip install .[test])

SMALL = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64, 64),
             down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None, norm_eps=1e-6,
             downsample_padding=0, flip_sin_to_cos=False, freq_shift=1)  # google/ddpm-ema-*-256's settings, smaller


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**SMALL).eval()
    with torch.no_grad():  # diffusers zero-initialises nothing here, but draw every weight afresh at a visible scale
        for p in model.parameters():
            p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("ddpm-small")
    model.save_pretrained(path)  # config.json + diffusion_pytorch_model.safetensors
    return path, model


def test_equal_to_diffusers(folder):
    path, model = folder
    unet = load_diffusers_unet(path).eval()
    assert unet.config == dict(ch=32, out_ch=3, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8],
                               dropout=0.0, resamp_with_conv=True, in_channels=3, image_size=16)
    torch.manual_seed(1)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 417, 999])
    with torch.no_grad():
        ref, eps = model(x, t).sample, unet(x, t)
    assert ref.abs().max() > 0.05
    assert (eps - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()  # measured ≈ 3e-7 relative


def test_bin_file_and_old_attention_names(folder, tmp_path):
    """A .bin state dict with the pre-0.14 attention names (query/key/value/proj_attn), as the google repos hold."""
    path, model = folder
    rename = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    state = {}
    for k, v in model.state_dict().items():
        for new, old in rename.items():
            k = k.replace(new, old)
        state[k] = v
    torch.save(state, tmp_path / "diffusion_pytorch_model.bin")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    backbone = load_backbone(str(tmp_path))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert_close_fp32(backbone.unet(x, 300), model(x, torch.tensor([300])).sample, ulps=UNET_ULPS)


def test_strict_conversion_errors(folder, tmp_path):
    path, model = folder
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    state = dict(model.state_dict())
    state["down_blocks.0.resnets.0.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(DiffusersFormatError, match="1 keys have no DDPMUNet counterpart: down_blocks.0.resnets.0.ex"):
        load_diffusers_unet(tmp_path)
    del state["down_blocks.0.resnets.0.extra.weight"], state["conv_out.bias"]
    torch.save(state, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(BackboneLoadError, match="1 missing: conv_out.bias"):
        load_diffusers_unet(tmp_path)


@pytest.mark.parametrize("change,message", [({"flip_sin_to_cos": True}, "flip_sin_to_cos=True"),
                                            ({"attention_head_dim": 8}, "multi-head"),
                                            ({"_class_name": "UNet2DConditionModel"}, "not a UNet2DModel")])
def test_non_ddpm_configs_are_refused(folder, tmp_path, change, message):
    path, _ = folder
    config = {**json.loads((path / "config.json").read_text()), **change}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes((path / "diffusion_pytorch_model.safetensors")
                                                                   .read_bytes())
    with pytest.raises(DiffusersFormatError, match=message):
        load_diffusers_unet(tmp_path)


def test_registered_diffusers_backbone(folder, tmp_path, monkeypatch):
    """celeba-hq-diffusers resolves config.json and the weights from a weights folder laid out as the repository."""
    path, model = folder
    repo = tmp_path / "ddpm-ema-celebahq-256"
    repo.mkdir()
    (repo / "config.json").write_text((path / "config.json").read_text())
    torch.save(model.state_dict(), repo / "diffusion_pytorch_model.bin")
    with pytest.warns(UserWarning, match="trusting this copy on first use"):
        backbone = load_backbone("celeba-hq-diffusers", weights_dir=str(tmp_path))
    assert backbone.lpips_domain == "celeba" and backbone.unet.config["image_size"] == 16
