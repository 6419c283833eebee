"""Shared test helpers: the reference fixtures in ../shared/fixtures and tiny model configs."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("ASYRP_FIXTURES", REPO.parent / "shared" / "fixtures"))

# A U-Net small enough for CPU tests (h is (B, 64, 4, 4)); same layout as the CelebA-HQ model.
TINY_UNET = dict(ch=32, out_ch=3, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0,
                 resamp_with_conv=True, in_channels=3, image_size=16)

torch.set_num_threads(min(2, torch.get_num_threads()))


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with ``n`` intra-op threads, then restore the count: on 2 shared cores, 1 thread is several times faster
    than 2 for the tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

# No test may touch the network or the user's cache: downloads are off and ASYRP_HOME is a fresh folder.
os.environ["ASYRP_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _isolated_asyrp_home(tmp_path_factory):
    os.environ["ASYRP_HOME"] = str(tmp_path_factory.mktemp("asyrp_home"))


# --------------------------------------------------------------------------------------------------
# The one tolerance rule for equivalence tests against the fixtures (README, "Testing")
# --------------------------------------------------------------------------------------------------

FP32_EPS = torch.finfo(torch.float32).eps  # 2**-23: one float32 ulp at 1.0


def fp32_tolerance(expected: torch.Tensor, ulps: float, scale: float | None = None) -> float:
    """The absolute tolerance ``ulps × ε₃₂ × max|expected|`` (or ``× scale``) of :func:`assert_close_fp32`."""
    if scale is None:
        scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    return ulps * FP32_EPS * max(scale, torch.finfo(torch.float32).tiny)


def fp32_error_ulps(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None) -> float:
    """max|actual − expected| in units of ε₃₂ × max|expected| (what :func:`assert_close_fp32` compares with ulps)."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    diff = float((actual.detach().double() - expected.detach().double()).abs().max()) if expected.numel() else 0.0
    return diff / fp32_tolerance(expected, 1.0, scale)


def assert_close_fp32(actual, expected, ulps: float, msg: str = "", scale: float | None = None) -> None:
    """Equal up to float32 round-off: every |actual − expected| ≤ ulps · ε₃₂ · max|expected|.

    Why relative to the largest value of the tensor and not to each element: a float32 result computed in another
    order (another CPU's SIMD width, another thread count, another BLAS) differs by a few roundings of its
    *intermediate* values, and those are as large as the largest inputs, not as the element itself. Cancellation
    carries that error into small elements: P_t = (x_t − √(1−ᾱ)ε)/√ᾱ at t = 973 has values near 478 and elements near
    4 whose error is ~1e-5 (0.1 ulp of 478, 20 ulp of 4). A per-element rtol/atol pair fails there on one CPU and
    passes on another.

    ``ulps`` counts the roundings one output can accumulate: about the number of dependent float32 operations for
    element-wise maths (a DDIM step: 16), and √(terms summed) per reduction for networks, summed over the layers
    (see each test). ``scale`` replaces max|expected| where an intermediate value is larger than the output: the
    argument t·f (up to 999) of the sinusoidal embedding sin(t·f). Each test's value is ≥ 5× the largest error measured
    with 1 and 2 threads, and test_tolerances.py shows that a real error exceeds it: one weight off by 1e-3 in the U-Net,
    the official block and an attention block, ᾱ off by 0.1 % in a DDIM step. The rule's resolution is stated there:
    a 1e-3 change of some middle-block U-Net weights moves ε by less than another summation order does, and no
    tolerance that holds across CPUs can see it.
    """
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} ≠ {tuple(expected.shape)}"
    err = fp32_error_ulps(actual, expected, scale)
    if not err <= ulps:  # NaN fails too
        what = f"{scale:.4g}" if scale is not None else f"max|expected| ({float(expected.abs().max()):.4g})"
        raise AssertionError(f"{msg}: max|actual − expected| = {err:.3g} ulps of {what}, allowed {ulps}")


def decode_state_dict(encoded: dict) -> dict:
    """Decode the fixtures' exact low-rank integer encoding (see ../shared/fixtures/README.md)."""
    out = {}
    for k, v in encoded.items():
        if torch.is_tensor(v):
            out[k] = v
        else:
            out[k] = ((v["A"].float() @ v["B"].float()) * 2.0 ** v["exp2"]).reshape(v["shape"])
    return out


def check_checksums(state: dict, checksums: dict) -> None:
    for k, (s, s2) in checksums.items():
        t = state[k].double()
        assert abs(t.sum().item() - s) <= 1e-6 * max(1.0, abs(s)) + 1e-6, k
        assert abs((t * t).sum().item() - s2) <= 1e-6 * max(1.0, abs(s2)), k


def load_fixture(name: str):
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"fixture {path} not found: the tests expect ../shared/fixtures beside the checkout "
                    "(or ASYRP_FIXTURES pointing at it)")
    return torch.load(path, weights_only=True, map_location="cpu")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


TINY_CLIP_CFG = dict(embed_dim=32, vision_cfg=dict(image_size=16, patch_size=4, width=64, layers=2, head_width=32),
                     text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2), quick_gelu=True)


def tiny_clip(seed: int = 0):
    """A randomly initialised open_clip CLIP at 16 px with OpenAI's tokenizer: (encoder, image_size)."""
    import open_clip

    from asyrp.clip_loss import OpenClipEncoder
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_CLIP_CFG)
    return OpenClipEncoder(model, open_clip.get_tokenizer("ViT-B-32"), name="tiny"), 16


def tiny_backbone(seed: int = 0):
    """A randomly initialised reduced U-Net (16 px, h = (B, 64, 4, 4)) wrapped as an asyrp Backbone."""
    from asyrp.backbones import Backbone, fingerprint
    from asyrp.models.unet import DDPMUNet
    torch.manual_seed(seed)
    unet = DDPMUNet(TINY_UNET).eval().requires_grad_(False)
    return Backbone(unet, "tiny", fingerprint(unet), None, "tiny")
