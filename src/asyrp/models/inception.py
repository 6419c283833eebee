"""pytorch-fid's FID InceptionV3 (pool3, 2048-d), built without any download, and its weights file loaded strictly:
the network FID and KID are defined on."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2, _inception_v3
from torch import nn

from asyrp.io import weights as registry

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


class InceptionWeightsError(ValueError):
    """The Inception weights file is not the pytorch-fid FID Inception state dict."""


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3 returning pool3 features: (N, 3, H, W) in [0, 1] → (N, 2048).

    Same layers and forward as ``pytorch_fid.inception.InceptionV3(output_blocks=[3])``: bilinear resize to 299
    (align_corners=False), scale to [−1, 1], the torchvision Inception3 trunk with the FID-patched Mixed blocks,
    global average pool. The trunk's modules sit directly on this module, so the state dict has exactly the keys of
    ``pt_inception-2015-12-05-6726825d.pth`` (``fc`` is kept for strict loading and is unused).
    """

    def __init__(self):
        super().__init__()
        net = _inception_v3(num_classes=1008, aux_logits=False, weights=None)  # torchvision, no weights fetched
        net.Mixed_5b = FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = FIDInceptionE_1(1280)
        net.Mixed_7c = FIDInceptionE_2(2048)
        for name, child in net.named_children():
            self.add_module(name, child)
        self.trunk = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                      "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                      "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
        self.name = "pytorch-fid InceptionV3 pool3 (random weights)"
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for name in self.trunk:
            x = getattr(self, name)(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)


def build_fid_inception(state_dict: dict | None = None, seed: int = 0) -> FIDInceptionV3:
    """The FID Inception network; with ``state_dict`` loaded strictly, else random weights (for tests).

    Random weights use a variance-preserving (He) init under a private RNG seeded by ``seed``, so the features are
    O(1) (the default init shrinks them to ~1e-8 over the 90-odd layers) and the caller's RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FIDInceptionV3()
        if state_dict is None:
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    if state_dict is not None:
        _check_state_dict(model, state_dict, "state dict")
        model.load_state_dict(state_dict, strict=True)
        model.name = "pytorch-fid InceptionV3 pool3"
    return model.eval()


def _check_state_dict(model: nn.Module, state_dict, origin: str) -> None:
    """Raise a one-line :class:`InceptionWeightsError` if keys or shapes differ (load_state_dict's are multi-line)."""
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise InceptionWeightsError(f"{origin} is not a state dict of tensors (expected pytorch-fid's "
                                    f"{FID_WEIGHTS_FILE})")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    optional = {k for k in expected if k.endswith("num_batches_tracked")}  # the original file predates them
    missing = sorted(set(expected) - set(state_dict) - optional)
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state_dict) if tuple(state_dict[k].shape) != tuple(expected[k]))
    problems = [f"{len(lst)} {what} (e.g. {', '.join(lst[:3])})"
                for what, lst in (("missing keys", missing), ("unexpected keys", unexpected),
                                  ("shape mismatches", shapes)) if lst]
    if problems:
        raise InceptionWeightsError(f"{origin} is not the pytorch-fid FID Inception weights ({FID_WEIGHTS_FILE}): "
                                    + "; ".join(problems))


def load_fid_inception(weights: str | os.PathLike | None = None,
                       weights_dir: str | os.PathLike | None = None) -> FIDInceptionV3:
    """The FID Inception with the ``pt_inception-2015-12-05-6726825d.pth`` weights (path, or the weights registry)."""
    if weights is None:
        weights = registry.resolve("inception-fid", weights_dir=weights_dir)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights {path} not found; run `asyrp download inception-fid` or give "
                                f"--inception-weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip / EOF errors: all mean "not a torch state dict"
        raise InceptionWeightsError(f"{path} could not be read as a torch state dict "
                                    f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    try:
        model = build_fid_inception(state)
    except InceptionWeightsError as e:
        raise InceptionWeightsError(f"{path}: {e}") from None
    model.name = f"pytorch-fid InceptionV3 pool3 ({path.name})"
    return model
