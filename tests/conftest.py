"""Shared test helpers: the reference fixtures in ../shared/fixtures and tiny model configs."""

from __future__ import annotations

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
