"""The iDDPM / ADM U-Net and its delta block against outputs of the original code (../shared/fixtures/adm)."""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES, assert_close_fp32, load_fixture
from test_delta import CONV_BLOCK_ULPS
from test_unet import UNET_ULPS

from asyrp.models.adm import AFHQ_DICT, METFACE_DICT, ADMUNet
from asyrp.models.delta import CheckpointError, DeltaBlockConfig, build_delta_block, load_delta_block

OFFICIAL = {"dog_happy_LC_dog_t999_ninv40_ngen40_0.pth", "metface_smiling_LC_metfaces_t999_ninv40_ngen40_0.pth"}


@pytest.fixture(scope="module")
def reduced():
    return load_fixture("adm/reduced_unets.pt")


def _model_and_block(r):
    unet = ADMUNet.from_create_model(**r["create_model_kwargs"])
    unet.load_state_dict(r["state_dict"], strict=True)
    block = build_delta_block(DeltaBlockConfig(kind="adm", channels=r["delta_block_channels"],
                                               temb_channels=r["delta_block_emb_channels"]))
    block.load_state_dict(r["delta_block_state_dict"], strict=True)
    return unet.eval(), block.eval()


@pytest.mark.parametrize("family", ["iddpm", "adm"])
def test_reduced_unet_reproduces_original(reduced, family):
    r = reduced[family]
    unet, block = _model_and_block(r)
    assert (unet.h_channels, unet.h_size, unet.temb_ch, unet.image_size) == (64, 8, 128, 32)
    # conftest.assert_close_fp32's rule with the U-Net's 128 ulps (measured ≤ 12 with 1 and 2 threads)
    for case in r["cases"]:
        c0, c1 = (float(v) for v in case["hs_coeff"])
        with torch.no_grad():
            eps, eps_edit, h, delta_h = unet.forward_edit(case["x"], case["t"], block, case["t_edit"], c0=c0, c1=c1)
            full = unet.forward_full(case["x"], case["t"])
            plain = unet(case["x"], case["t"])
        for name, ours, ref in (("eps_full", full, case["eps_full"]), ("eps", eps, case["eps_full"][:, :3]),
                                ("plain", plain, case["eps_full"][:, :3]),
                                ("eps_edit", eps_edit, case["eps_edit_full"][:, :3]), ("h", h, case["middle_h"])):
            assert_close_fp32(ours, ref, ulps=UNET_ULPS, msg=f"{family} {name} t={case['t'].tolist()}")
        if case["delta_h"].numel() == 0:  # t = 300 < t_edit: no edit
            assert delta_h is None and torch.equal(eps_edit, eps)
        else:
            assert_close_fp32(delta_h, case["delta_h"], ulps=UNET_ULPS, msg=f"{family} delta_h")
            assert ((eps_edit - eps).norm() / eps.norm()).item() > 1e-3  # the edit changed ε
    assert eps.shape == (3, 3, 32, 32)


def test_per_sample_timesteps_edit_only_late_samples(reduced):
    unet, block = _model_and_block(reduced["adm"])
    x = reduced["adm"]["cases"][0]["x"]
    t = torch.tensor([800, 300, 650])
    with torch.no_grad():
        eps, eps_edit, _, _ = unet.forward_edit(x, t, block, 500)
        one, one_edit, _, _ = unet.forward_edit(x[1:2], t[1:2], block, 500)
        late, late_edit, _, _ = unet.forward_edit(x[:1], t[:1], block, 500)
    assert torch.equal(eps_edit[1], eps[1])
    assert_close_fp32(one_edit[0], eps_edit[1], ulps=UNET_ULPS)
    assert_close_fp32(late_edit[0], eps_edit[0], ulps=UNET_ULPS) and not torch.allclose(eps_edit[0], eps[0])


@pytest.mark.parametrize("family,kwargs", [("iddpm-afhq", AFHQ_DICT), ("adm-metfaces", METFACE_DICT)])
def test_full_size_key_list(family, kwargs):
    """The full-size AFHQ-dog / MetFaces networks have exactly the original keys and shapes (built on meta)."""
    expected = {}
    for line in (FIXTURES / "adm" / "full_size_keys.txt").read_text().splitlines():
        fam, key, shape = line.split(" ", 2)
        if fam == family:
            expected[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    with torch.device("meta"):
        unet = ADMUNet.from_create_model(**kwargs)
    assert {k: tuple(v.shape) for k, v in unet.state_dict().items()} == expected
    assert len(expected) == 362 and sum(v.numel() for v in unet.parameters()) == 93_563_910
    assert (unet.h_channels, unet.h_size, unet.temb_ch) == (512, 8, 512)
    with torch.device("meta"):
        unet.load_state_dict({k: torch.empty(s) for k, s in expected.items()}, strict=True, assign=True)


def test_bad_create_model_arguments():
    with pytest.raises(ValueError, match="unknown create_model arguments.*num_chanels"):
        ADMUNet.from_create_model(num_chanels=64)
    with pytest.raises(ValueError, match="class_cond"):
        ADMUNet.from_create_model(**{**AFHQ_DICT, "class_cond": True})


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_released_adm_directions(name):
    """dog_happy / metface_smiling load with their config inferred and reproduce the original block's outputs."""
    out = load_fixture("adm/official_block_outputs.pt")
    block = load_delta_block(FIXTURES / "adm" / "official_blocks" / name)
    assert block.config == DeltaBlockConfig(kind="adm", channels=512, temb_channels=512)
    assert sum(p.numel() for p in block.parameters()) == 790_016
    with torch.no_grad():
        for key, temb in (("with_temb", out["temb"]), ("without_temb", None)):
            # conftest.assert_close_fp32's rule as the conv block's (measured ≤ 5.2 ulps with 1 and 2 threads)
            assert_close_fp32(block(out["h"], temb), out[name][key], ulps=CONV_BLOCK_ULPS, msg=f"{name} {key}")


def test_released_adm_direction_into_wrong_config():
    path = FIXTURES / "adm" / "official_blocks" / sorted(OFFICIAL)[0]
    with pytest.raises(CheckpointError, match="does not fit.*unexpected: emb_layers"):
        load_delta_block(path, config=DeltaBlockConfig(kind="adm", channels=512, time_embedding="none"))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_delta_block(path, config=DeltaBlockConfig(kind="conv"))


def test_adm_block_config_is_checked():
    with pytest.raises(ValueError, match="adm delta block"):
        DeltaBlockConfig(kind="adm", time_embedding="adagn")
    block = build_delta_block(DeltaBlockConfig(kind="adm", channels=64, temb_channels=128, zero_init=True))
    assert torch.equal(block(torch.randn(2, 64, 8, 8), torch.randn(2, 128)), torch.zeros(2, 64, 8, 8))


def test_new_attention_order_is_a_permutation_of_qkv(reduced):
    """use_new_attention_order splits qkv as [q of all heads | k | v]; with the rows permuted accordingly the
    network computes the same ε as the legacy per-head [q | k | v] layout of the checkpoints."""
    r = reduced["adm"]
    kwargs = r["create_model_kwargs"]
    legacy, _ = _model_and_block(r)
    new = ADMUNet.from_create_model(**{**kwargs, "use_new_attention_order": True}).eval()
    state = dict(r["state_dict"])
    for key in [k for k in state if k.endswith("qkv.weight") or k.endswith("qkv.bias")]:
        w = state[key]
        heads = w.shape[0] // 3 // kwargs["num_head_channels"]
        per_head = w.reshape(heads, 3, kwargs["num_head_channels"], *w.shape[1:])  # legacy: head, (q k v), ch
        state[key] = per_head.transpose(0, 1).reshape(w.shape)
    new.load_state_dict(state, strict=True)
    case = r["cases"][0]
    with torch.no_grad():
        assert_close_fp32(new(case["x"], case["t"]), legacy(case["x"], case["t"]), ulps=8)  # the same sums, reordered heads
