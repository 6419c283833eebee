"""Delta blocks: the official checkpoints, the extension's transformer variants, and our own checkpoint format."""

import dataclasses

import pytest
import torch

from asyrp.models.delta import (CheckpointError, DeltaBlockConfig, build_delta_block, load_delta_block,
                                save_delta_block, seed_config)
from conftest import FIXTURES, assert_close_fp32, check_checksums, decode_state_dict, load_fixture

# conftest.assert_close_fp32's rule: the conv block is two 512-term 1×1 convs, a 512-term Linear and a GroupNorm
# (√512 ≈ 23 roundings each) → 64 ulps, measured ≤ 6; the extension's attention variants add q·k over 64 positions,
# a softmax and a feed-forward → 256 ulps, measured ≤ 49 (1 and 2 threads).
CONV_BLOCK_ULPS = 64
ATTENTION_BLOCK_ULPS = 256
OFFICIAL = sorted((FIXTURES / "official_delta_blocks").glob("*_LC_*.pth"))


def test_all_official_checkpoints_load_strictly():
    assert len(OFFICIAL) == 8
    for path in OFFICIAL:
        block = load_delta_block(path)
        assert block.config == DeltaBlockConfig()  # conv, 512 channels, add
        ref = torch.load(path, weights_only=True, map_location="cpu")["0"]
        for k, v in block.state_dict().items():
            assert torch.equal(v, ref[k]), (path.name, k)


@pytest.mark.parametrize("attr", ["smiling", "pixar"])
def test_official_outputs(attr):
    fx = load_fixture("official_delta_block_outputs.pt")
    block = load_delta_block(FIXTURES / "official_delta_blocks" / fx["outputs"][attr]["checkpoint"])
    with torch.no_grad():
        assert_close_fp32(block(fx["h"], fx["temb"]), fx["outputs"][attr]["out_with_temb"], ulps=CONV_BLOCK_ULPS,
                          msg=attr)
        # official: GroupNorm + swish still run without temb
        assert_close_fp32(block(fx["h"], None), fx["outputs"][attr]["out_without_temb"], ulps=CONV_BLOCK_ULPS,
                          msg=attr)


@pytest.fixture(scope="module")
def transformer_fixture():
    return load_fixture("transformer_delta_blocks.pt")


def _variant_names():
    return ["conv_add", "conv_add_temb_none", "p_add_h1", "c_add_h1", "pc_add_h1", "pc_add_h8", "cp_add_h1",
            "pc_mult_h1", "pc_adagn_h1"]


@pytest.mark.parametrize("name", _variant_names())
def test_extension_variants(transformer_fixture, name, tmp_path):
    fx = transformer_fixture
    variant = next(v for v in fx["variants"] if v["name"] == name)
    state = decode_state_dict(variant["state_dict_encoded"])
    check_checksums(state, variant["state_dict_checksums"])
    cfg = seed_config(variant["ctor_kwargs"])
    torch.save({"0": state}, tmp_path / "ext.pth")  # the extension's checkpoint layout
    block = load_delta_block(tmp_path / "ext.pth", config=cfg)
    assert sum(p.numel() for p in block.parameters()) == variant["num_params"]
    with torch.no_grad():
        out = block(fx["h"], fx["temb"] if variant["called_with_temb"] else None)
    assert_close_fp32(out, variant["output"], ulps=ATTENTION_BLOCK_ULPS, msg=name)


def test_extension_transformer_needs_config(transformer_fixture, tmp_path):
    variant = next(v for v in transformer_fixture["variants"] if v["name"] == "pc_add_h8")
    torch.save({"0": decode_state_dict(variant["state_dict_encoded"])}, tmp_path / "pc.pth")
    with pytest.raises(CheckpointError, match=r"pc.pth: .*without a stored config.*pass its DeltaBlockConfig"):
        load_delta_block(tmp_path / "pc.pth")


def test_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    h, temb = torch.randn(2, 64, 4, 4), torch.randn(2, 128)
    for kind in ("conv", "pixel", "channel", "pixel_channel", "channel_pixel"):
        for emb in ("add", "mult", "adagn", "none"):
            cfg = DeltaBlockConfig(kind=kind, channels=64, spatial_size=4, temb_channels=128, heads=2, ff_dim=32,
                                   time_embedding=emb, norm="instance" if emb == "mult" else "group",
                                   activation="gelu" if emb == "adagn" else "silu")
            block = build_delta_block(cfg).eval()
            path = save_delta_block(block, tmp_path / f"{kind}_{emb}.pt", attribute="test")
            loaded, meta = load_delta_block(path, return_meta=True)
            assert loaded.config == cfg and meta == {"attribute": "test"}
            with torch.no_grad():
                assert torch.equal(block(h, temb), loaded(h, temb)), (kind, emb)


def test_heads_mismatch_is_named(tmp_path):
    cfg = DeltaBlockConfig(kind="pixel_channel", channels=64, spatial_size=4, temb_channels=64, heads=8, ff_dim=32)
    path = save_delta_block(build_delta_block(cfg), tmp_path / "h8.pt")
    with pytest.raises(CheckpointError, match=r"h8.pt: checkpoint was trained as heads: 8 ≠ 1"):
        load_delta_block(path, config=dataclasses.replace(cfg, heads=1))
    assert load_delta_block(path).config.heads == 8


def test_official_checkpoint_into_wrong_config():
    with pytest.raises(CheckpointError, match=r"smiling.*does not fit .*missing: in_layer"):
        load_delta_block(OFFICIAL[[p.name for p in OFFICIAL].index(
            "smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth")], config=DeltaBlockConfig(kind="pixel"))


def test_bad_files(tmp_path):
    good = save_delta_block(build_delta_block(channels=64, temb_channels=64, spatial_size=4), tmp_path / "good.pt")
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated.pt: truncated or corrupt checkpoint"):
        load_delta_block(tmp_path / "truncated.pt")
    (tmp_path / "notes.txt").write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes.txt: not a PyTorch checkpoint|notes.txt: cannot be read"):
        load_delta_block(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match=r"missing.pt: no such checkpoint file"):
        load_delta_block(tmp_path / "missing.pt")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt: not a delta-block checkpoint"):
        load_delta_block(tmp_path / "other.pt")
    state = build_delta_block(channels=64, temb_channels=64, spatial_size=4).state_dict()
    state.pop("conv2.bias")
    torch.save({"0": state}, tmp_path / "missing_key.pth")
    with pytest.raises(CheckpointError, match=r"missing_key.pth: .*without a stored config"):
        load_delta_block(tmp_path / "missing_key.pth")
    with pytest.raises(CheckpointError, match=r"missing_key.pth: entry '0' does not fit .*1 missing: conv2.bias"):
        load_delta_block(tmp_path / "missing_key.pth", config=DeltaBlockConfig(channels=64, temb_channels=64,
                                                                                spatial_size=4))


def test_config_validation():
    with pytest.raises(ValueError, match="heads do not divide"):
        DeltaBlockConfig(kind="channel", spatial_size=8, heads=3)
    with pytest.raises(ValueError, match="kind='mlp' is not one of"):
        DeltaBlockConfig(kind="mlp")
    with pytest.raises(ValueError, match="unknown DeltaBlockConfig fields"):
        DeltaBlockConfig.from_dict({"kind": "conv", "nheads": 2})


def test_zero_init_gives_zero_delta():
    torch.manual_seed(0)
    h, temb = torch.randn(2, 64, 4, 4), torch.randn(2, 64)
    for kind in ("conv", "pixel", "pixel_channel", "channel_pixel"):
        block = build_delta_block(kind=kind, channels=64, spatial_size=4, temb_channels=64, ff_dim=32, zero_init=True)
        assert block(h, temb).abs().max() == 0


@pytest.mark.parametrize("kind", ["conv", "pixel", "adm"])
def test_max_ratio_bounds_delta_h_and_keeps_shorter_ones(kind, tmp_path):
    torch.manual_seed(0)
    h, temb = torch.randn(3, 64, 4, 4), torch.randn(3, 64)
    h[1] *= 100  # image 1: a long h, whose Δh is shorter than the bound
    free = build_delta_block(kind=kind, channels=64, spatial_size=4, temb_channels=64, heads=2, ff_dim=32)
    with torch.no_grad():
        for p in free.parameters():
            p.mul_(3)  # make the free Δh longer than 0.1·‖h‖ for images 0 and 2
    bounded = build_delta_block(dataclasses.replace(free.config, max_ratio=0.1))
    bounded.load_state_dict(free.state_dict())
    d_free, d_bound = free(h, temb), bounded(h, temb)
    ratio = lambda d: (d.flatten(1).norm(dim=1) / h.flatten(1).norm(dim=1)).tolist()  # noqa: E731
    assert ratio(d_free)[0] > 0.1 and ratio(d_free)[2] > 0.1 and ratio(d_free)[1] < 0.1
    assert ratio(d_bound) == pytest.approx([0.1, ratio(d_free)[1], 0.1], rel=1e-5)
    cosine = torch.nn.functional.cosine_similarity(d_free.flatten(1), d_bound.flatten(1), dim=1)
    assert cosine.min() > 1 - 1e-5  # the direction is the free block's
    assert torch.equal(d_bound[1], d_free[1])
    d_bound.square().sum().backward()
    assert all(p.grad is not None for p in bounded.parameters() if p.requires_grad)
    path = save_delta_block(bounded, tmp_path / "bounded.pt")
    assert load_delta_block(path).config.max_ratio == 0.1  # the bound travels with the checkpoint
    with pytest.raises(ValueError, match=r"max_ratio must be > 0 \(or None: unbounded\), got 0"):
        DeltaBlockConfig(max_ratio=0)
