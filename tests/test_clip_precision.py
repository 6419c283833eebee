"""clip_precision: fp16 converts a CLIP as the original's clip.load does on a GPU; fp32 (the default and the
reference preset) leaves it alone."""

import pytest
import torch

from asyrp.clip_loss import CLIPDirection, set_clip_precision
from asyrp.pipeline.train_config import PRESETS, TrainConfig
from conftest import tiny_clip


def test_fp16_halves_the_weights_and_keeps_the_numbers_close():
    encoder, size = tiny_clip()
    x = torch.linspace(-1, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    d32 = CLIPDirection(encoder, "face", "smiling face", image_size=size)
    cos32, text32 = d32.cosines(x, x.flip(0)), d32.text_cosine()
    assert set_clip_precision(encoder, "fp32") is encoder and encoder.input_dtype == torch.float32
    set_clip_precision(encoder, "fp16")
    assert encoder.input_dtype == torch.float16
    assert encoder.model.visual.conv1.weight.dtype == torch.float16
    assert encoder.model.ln_final.weight.dtype == torch.float32  # layer norms stay fp32, as OpenAI's convert_weights
    d16 = CLIPDirection(encoder, "face", "smiling face", image_size=size)
    cos16, text16 = d16.cosines(x, x.flip(0)), d16.text_cosine()
    assert cos16.dtype == torch.float32
    assert 0 < (cos16 - cos32).abs().max() < 1e-2 and 0 < abs(text16 - text32) < 1e-2


def test_precision_is_validated_and_the_reference_preset_says_fp32():
    with pytest.raises(ValueError, match=r"clip_precision='fp8' is not one of \('fp32', 'fp16'\)"):
        set_clip_precision(tiny_clip()[0], "fp8")
    with pytest.raises(ValueError, match=r"clip_precision='bf16' is not one of \('fp32', 'fp16'\)"):
        TrainConfig(src="a", trg="b", clip_precision="bf16").validate()
    assert PRESETS["reference"]["clip_precision"] == "fp32" and TrainConfig().clip_precision == "fp32"
