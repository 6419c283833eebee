"""The backbone U-Net against the reduced original DDPM (ddpm_unet_small.pt) and the CelebA-HQ key list."""

import pytest
import torch

from asyrp.models.delta import DeltaBlockConfig, build_delta_block
from asyrp.models.unet import CELEBA_HQ_256, BackboneLoadError, DDPMUNet, load_backbone_state_dict, timestep_embedding
from conftest import FIXTURES, TINY_UNET, assert_close_fp32, check_checksums, decode_state_dict, load_fixture

# conftest.assert_close_fp32's rule. The reduced U-Net: ~20 layers, each a sum of up to 9·256 products (√ ≈ 48 roundings,
# which partly cancel) → 128 ulps of the output's magnitude (≈ 4e-5 here); measured ≤ 25 with 1 or 2 threads. The time embedding (two Linear layers after
# sin/cos): 32; measured ≤ 2. The sinusoid is sin(t·f) with t·f up to 999: its scale is that argument, not the output.
UNET_ULPS = 128
TEMB_ULPS = 32
SINUSOID_ULPS = 4


@pytest.fixture(scope="module")
def small():
    fx = load_fixture("ddpm_unet_small.pt")
    state = decode_state_dict(fx["state_dict_encoded"])
    check_checksums(state, fx["state_dict_checksums"])
    model = DDPMUNet(fx["config"]).eval()
    load_backbone_state_dict(model, state, source="ddpm_unet_small.pt")  # layer_0.* is allowed extra
    block = build_delta_block(kind="conv", channels=128, temb_channels=128, spatial_size=2).eval()
    block.load_state_dict({k[len("layer_0."):]: v for k, v in state.items() if k.startswith("layer_0.")})
    return fx, model, block


def test_state_dict_keys_are_the_original_ones(small):
    fx, model, _ = small
    ours = list(model.state_dict())
    theirs = [k for k in fx["state_dict_keys"] if not k.startswith("layer_0.")]
    assert ours == theirs
    for k, v in model.state_dict().items():
        assert list(v.shape) == list(fx["state_dict_shapes"][k]), k


def test_full_celeba_model_matches_key_list():
    rows = [line.split("\t") for line in (FIXTURES / "ddpm_unet_celeba_keys.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    expected = {k: tuple(int(s) for s in shape.split(",")) for k, shape, _, src in rows if src == "celeba_hq.ckpt"}
    with torch.device("meta"):
        model = DDPMUNet(CELEBA_HQ_256)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert sum(v.numel() for v in model.state_dict().values()) == 113_673_219
    assert (model.h_channels, model.h_size) == (512, 8)
    block_rows = {k[len("layer_0."):]: tuple(int(s) for s in shape.split(",")) for k, shape, _, src in rows
                  if src == "delta_pth['0']"}
    with torch.device("meta"):
        block = build_delta_block(DeltaBlockConfig())
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == block_rows


def test_sinusoidal_embedding_matches_reference():
    fx = load_fixture("official_delta_block_outputs.pt")
    ours = timestep_embedding(fx["sinusoidal_reference_t"], 128)
    assert_close_fp32(ours, fx["sinusoidal_reference"], ulps=SINUSOID_ULPS,
                      scale=float(fx["sinusoidal_reference_t"].float().max()), msg="sinusoid")


def test_temb_matches(small):
    fx, model, _ = small
    for entry in fx["temb"]:
        t_max = float(torch.as_tensor(entry["t"]).float().max().clamp(min=1))
        assert_close_fp32(timestep_embedding(entry["t"], 32), entry["sinusoidal"], ulps=SINUSOID_ULPS, scale=t_max,
                          msg="sinusoid")
        assert_close_fp32(model.time_embedding(entry["t"]), entry["temb"], ulps=TEMB_ULPS, msg="temb")


def _case(fx, name):
    return next(c for c in fx["cases"] if c["name"] == name)


def test_plain_forward_eps_and_h(small):
    fx, model, _ = small
    case = _case(fx, "plain_index_none")
    with torch.no_grad():
        h, skips, temb = model.encode(fx["x"], case["t"])
        eps = model.decode(h, skips, temb)
    assert_close_fp32(eps, case["eps"], ulps=UNET_ULPS)
    assert_close_fp32(h, case["middle_h"], ulps=UNET_ULPS)
    assert_close_fp32(model(fx["x"], case["t"]), case["eps"], ulps=UNET_ULPS)


@pytest.mark.parametrize("name", ["edit_same_t", "edit_same_t_delta_coeff_0.5", "edit_same_t_origin_coeff_0.8",
                                  "edit_same_t_ignore_timestep", "edit_t_equal_t_edit", "no_edit_t_below_t_edit"])
def test_forward_edit_cases(small, name):
    fx, model, block = small
    case = _case(fx, name)
    c0, c1 = case["hs_coeff"]
    with torch.no_grad():
        eps, eps_edited, h, delta_h = model.forward_edit(fx["x"], case["t"], block, case["t_edit"], c0=c0, c1=c1,
                                                         ignore_timestep=case["ignore_timestep"])
    assert_close_fp32(eps, case["eps"], ulps=UNET_ULPS)
    assert_close_fp32(h, case["middle_h"], ulps=UNET_ULPS)
    if case["edit_applied"]:
        assert_close_fp32(eps_edited, case["eps_edited"], ulps=UNET_ULPS)
        assert_close_fp32(delta_h, case["delta_h"], ulps=UNET_ULPS)
        assert (eps_edited - eps).abs().max() > 1e-3  # the edit is visible at this tolerance
    else:
        assert delta_h is None
        assert torch.equal(eps_edited, eps)


def test_mixed_timesteps_agree_where_both_rules_agree(small):
    """The reference edits a batch by its first timestep; we edit per sample. Compare where both agree."""
    fx, model, block = small
    first_above = _case(fx, "mixed_t_first_above_t_edit")  # t = [700, 200]: reference edits both samples
    first_below = _case(fx, "mixed_t_first_below_t_edit")  # t = [200, 700]: reference edits neither
    with torch.no_grad():
        a = model.forward_edit(fx["x"], first_above["t"], block, first_above["t_edit"])
        b = model.forward_edit(fx["x"], first_below["t"], block, first_below["t_edit"])
    assert_close_fp32(a[0], first_above["eps"], ulps=UNET_ULPS)
    assert_close_fp32(b[0], first_below["eps"], ulps=UNET_ULPS)
    # sample 0 of [700, 200] and sample 1 of [200, 700] are edited under both rules
    assert_close_fp32(a[1][0], first_above["eps_edited"][0], ulps=UNET_ULPS)
    assert_close_fp32(a[3][0], first_above["delta_h"][0], ulps=UNET_ULPS)
    # sample 0 of [200, 700] is unedited under both rules
    assert torch.equal(b[1][0], b[0][0])
    assert_close_fp32(b[1][0], first_below["eps_edited"][0], ulps=UNET_ULPS)


def test_per_sample_rule(small):
    """Per sample: [700, 200] edits only sample 0; it equals the single-sample edit of that sample."""
    fx, model, block = small
    x, t = fx["x"], torch.tensor([700.0, 200.0])
    with torch.no_grad():
        eps, eps_edited, _, _ = model.forward_edit(x, t, block, 400)
        solo = [model.forward_edit(x[i:i + 1], t[i:i + 1], block, 400) for i in range(2)]
    assert_close_fp32(eps_edited[0:1], solo[0][1], ulps=UNET_ULPS)
    assert torch.equal(eps_edited[1], eps[1])           # below t_edit: not edited
    assert (eps_edited[0] - eps[0]).abs().max() > 1e-3   # above t_edit: edited
    assert_close_fp32(eps_edited[1:2], solo[1][0], ulps=UNET_ULPS)


def test_strict_loading_lists_bad_keys():
    model = DDPMUNet(TINY_UNET)
    state = model.state_dict()
    bad = dict(state)
    bad.pop("conv_out.bias")
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(BackboneLoadError, match=r"1 missing: conv_out.bias; 1 unexpected: extra.weight"):
        load_backbone_state_dict(model, bad, source="bad.ckpt")
    prefixed = {"module." + k: v for k, v in state.items()}
    load_backbone_state_dict(model, prefixed)  # DataParallel prefix is accepted
    wrong = dict(state)
    wrong["conv_in.weight"] = torch.zeros(1, 3, 3, 3)
    with pytest.raises(BackboneLoadError, match="shape mismatch: conv_in.weight"):
        load_backbone_state_dict(model, wrong, source="wrong.ckpt")


def test_wrong_image_size_is_an_error():
    model = DDPMUNet(TINY_UNET)
    with pytest.raises(ValueError, match="expects 16×16"):
        model(torch.zeros(1, 3, 32, 32), torch.tensor([10]))


def test_need_eps_false_skips_plain_decoder(small):
    fx, model, block = small
    with torch.no_grad():
        eps, eps_edited, _, _ = model.forward_edit(fx["x"], torch.tensor([600.0, 600.0]), block, 400, need_eps=False)
        ref = model.forward_edit(fx["x"], torch.tensor([600.0, 600.0]), block, 400)
    assert eps is None
    torch.testing.assert_close(eps_edited, ref[1])


def test_python_timestep_equals_tensor_timestep(small):
    """A Python t (decided on the host, no device sync) gives the same result as a per-sample tensor."""
    fx, model, block = small
    with torch.no_grad():
        a = model.forward_edit(fx["x"], 600, block, 400)
        b = model.forward_edit(fx["x"], torch.tensor([600.0, 600.0]), block, 400)
        c = model.forward_edit(fx["x"], 300, block, 400)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert c[3] is None and torch.equal(c[0], c[1])


def test_skip_resolutions_drop_the_decoder_skips_of_other_levels():
    """skip_resolutions=[full] (the shapes world): decoder levels below full resolution take h alone, so changing
    their encoder features changes nothing, while the full-resolution skips still matter; unset = every level."""
    base = dict(TINY_UNET)
    full = base["image_size"]
    assert DDPMUNet(base).level_has_skips == [True] * len(base["ch_mult"])
    assert "skip_resolutions" not in DDPMUNet(base).config  # published configs stay as they were
    torch.manual_seed(0)
    net = DDPMUNet({**base, "skip_resolutions": [full]}).eval()
    assert net.level_has_skips == [True] + [False] * (len(base["ch_mult"]) - 1)
    x = torch.randn(2, 3, full, full)
    with torch.no_grad():
        h, skips, temb = net.encode(x, 600)
        eps = net.decode(h, skips, temb)
        low = [s if s.shape[-1] == full else torch.randn_like(s) for s in skips]
        high = [torch.randn_like(s) if s.shape[-1] == full else s for s in skips]
        assert torch.equal(net.decode(h, low, temb), eps)
        assert (net.decode(h, high, temb) - eps).abs().max() > 1e-3
        assert (net.decode(h + 1, skips, temb) - eps).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"skip_resolutions \[5\] are not resolutions"):
        DDPMUNet({**base, "skip_resolutions": [5]})


def test_h_only_from_t_makes_the_predicted_x0_a_function_of_h():
    """h_only_from_t=500: at t ≥ 500 the encoder's skips are zero, the decoder output is x̂0 and ε is derived from it,
    so the DDIM predicted x0 equals the decoder output and does not depend on x beyond h; below 500 the network is
    the plain ε-U-Net. decode without x and t is an error that names the fix; bad values are one-line errors."""
    from asyrp import diffusion as D

    base = dict(TINY_UNET)
    assert "h_only_from_t" not in DDPMUNet(base).config
    torch.manual_seed(0)
    net = DDPMUNet({**base, "h_only_from_t": 500}).eval()
    plain = DDPMUNet(base).eval()
    plain.load_state_dict(net.state_dict())  # same parameters: the key adds none
    size = base["image_size"]
    x = torch.randn(2, 3, size, size)
    t = torch.tensor([300.0, 700.0])
    alphas = D.alphas_cumprod(D.linear_betas())
    with torch.no_grad():
        eps = net(x, t)
        assert torch.equal(eps[0], plain(x, t)[0])  # t < 500: the standard network
        h, skips, temb = net.encode(x, t)
        assert all(float(s[1].abs().max()) == 0 for s in skips) and all(float(s[0].abs().max()) > 0 for s in skips)
        x0_head = net._up(h, skips, temb)[1:]
        a = D.alpha_bar(alphas, 700)
        x0_pred = (x[1:] - (1 - a).sqrt() * eps[1:]) / a.sqrt()
        assert (x0_pred - x0_head).abs().max() < 1e-3
        # the same h with other skips (from another input) gives the same ε at t ≥ 500
        other = net.encode(torch.randn_like(x), t)[1]
        assert torch.equal(net.decode(h, other, temb, x, t)[1], eps[1])
        edited = net.decode(h + 1, skips, temb, x, t)
        assert (edited[1] - eps[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"call decode\(h, skips, temb, x, t\)"):
        net.decode(h, skips, temb)
    for bad in (0, 1000, 2.5, True):
        with pytest.raises(ValueError, match="h_only_from_t must be an integer timestep"):
            DDPMUNet({**base, "h_only_from_t": bad})


def test_x0_from_t_keeps_the_skips_and_predicts_x0():
    """x0_from_t=500: the x0 head of h_only_from_t (ε derived from the decoder's x̂0 at t ≥ 500) with the skips kept, so
    other skips change ε there; below 500 the plain ε-U-Net; the two keys together are refused by name."""
    from asyrp import diffusion as D

    base = dict(TINY_UNET)
    torch.manual_seed(0)
    net = DDPMUNet({**base, "x0_from_t": 500}).eval()
    plain = DDPMUNet(base).eval()
    plain.load_state_dict(net.state_dict())
    size = base["image_size"]
    x = torch.randn(2, 3, size, size)
    t = torch.tensor([300.0, 700.0])
    with torch.no_grad():
        eps = net(x, t)
        assert torch.equal(eps[0], plain(x, t)[0])
        h, skips, temb = net.encode(x, t)
        assert all(float(s.abs().min(dim=0).values.max()) > 0 for s in skips)
        a = D.alpha_bar(D.alphas_cumprod(D.linear_betas()), 700)
        x0_pred = (x[1:] - (1 - a).sqrt() * eps[1:]) / a.sqrt()
        assert (x0_pred - net._up(h, skips, temb)[1:]).abs().max() < 1e-3
        assert torch.allclose(plain(x, t)[1:], net._up(h, skips, temb)[1:], atol=1e-5)  # the same decoder output
        other = net.encode(torch.randn_like(x), t)[1]
        assert (net.decode(h, other, temb, x, t)[1] - eps[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="not both"):
        DDPMUNet({**base, "x0_from_t": 500, "h_only_from_t": 500})
    with pytest.raises(ValueError, match="x0_from_t must be an integer timestep"):
        DDPMUNet({**base, "x0_from_t": 0})
