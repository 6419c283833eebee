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
