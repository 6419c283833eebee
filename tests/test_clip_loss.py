"""CLIP directional loss, S_dir and preprocessing against clip_directional_loss.pt (stub encoders)."""

import numpy as np
import pytest
import torch

from asyrp.clip_loss import CLIPDirection, clip_preprocess, directional_similarity, imagenet_templates
from conftest import assert_close_fp32, load_fixture

# conftest.assert_close_fp32's rule: normalising 512-dim embeddings, averaging 79 templates and a 512-term cosine
# (√512 + √79 roundings, a few times) → 64 ulps; measured ≤ 2. Bicubic resizing (16 taps) and the CLIP
# normalisation → 32 ulps; measured 0.
EMBEDDING_ULPS = 64
RESIZE_ULPS = 32


@pytest.fixture(scope="module")
def fx():
    return load_fixture("clip_directional_loss.pt")


class StubEncoder:
    """Maps texts to prescribed embeddings; returns prescribed image embeddings in call order (src, edited)."""

    def __init__(self, fx, per_sample=None):
        d = fx["asyrp_directional"]
        self.text = {}
        for cls, key in (("face", "source_text_embeddings_raw"), ("smiling face", "target_text_embeddings_raw")):
            for template, emb in zip(d["templates"], d[key]):
                self.text[template.format(cls)] = emb
        self.text.update(d["plain_text_embeddings_raw"])
        sel = slice(None) if per_sample is None else slice(per_sample, per_sample + 1)
        self.images = [d["source_image_embeddings_raw"][sel], d["target_image_embeddings_raw"][sel]]
        self.image_shapes = []

    def encode_text(self, texts):
        return torch.stack([self.text[t] for t in texts])

    def encode_image(self, pixels):
        self.image_shapes.append(tuple(pixels.shape))
        return self.images[(len(self.image_shapes) - 1) % 2]


def test_templates_are_the_79(fx):
    assert imagenet_templates() == tuple(fx["asyrp_directional"]["templates"])
    assert len(imagenet_templates()) == 79


def test_directional_loss_and_text_direction(fx):
    d = fx["asyrp_directional"]
    enc = StubEncoder(fx)
    clip = CLIPDirection(enc, "face", "smiling face")
    assert_close_fp32(clip.text_direction, d["text_direction"], ulps=EMBEDDING_ULPS)
    src, trg = d["source_images_ignored_by_stub"], d["target_images_ignored_by_stub"]
    per_sample = clip.direction_loss(src, trg)
    assert_close_fp32(per_sample.mean(), d["clip_directional_loss"], ulps=EMBEDDING_ULPS)
    assert enc.image_shapes == [tuple(s) for s in d["encode_image_input_shapes"]] == [(4, 3, 224, 224)] * 2
    enc.image_shapes.clear()
    assert_close_fp32(clip.loss(src, trg), d["training_clip_loss_neg_log"], ulps=EMBEDDING_ULPS)
    assert_close_fp32(torch.tensor(clip.text_cosine()), d["text_cosine_for_l1_weight"], ulps=EMBEDDING_ULPS)
    assert clip.prompt_mode == "79-template average"


def test_each_image_is_paired_with_its_own_source(fx):
    d = fx["asyrp_directional"]
    clip = CLIPDirection(StubEncoder(fx), "face", "smiling face")
    batch = clip.direction_loss(d["source_images_ignored_by_stub"], d["target_images_ignored_by_stub"])
    assert_close_fp32(batch, d["clip_directional_loss_per_sample"], ulps=EMBEDDING_ULPS)
    for i in range(4):  # one call per sample gives the same numbers as the batch
        one = CLIPDirection(StubEncoder(fx, per_sample=i), "face", "smiling face")
        loss_i = one.direction_loss(d["source_images_ignored_by_stub"][i:i + 1], d["target_images_ignored_by_stub"][i:i + 1])
        assert_close_fp32(loss_i[0], d["clip_directional_loss_per_sample"][i], ulps=EMBEDDING_ULPS)
    with pytest.raises(ValueError, match="paired with its own source"):
        clip.direction_loss(src_embeddings=torch.randn(1, 512), edited_images=d["target_images_ignored_by_stub"])


def test_cached_source_embeddings_give_same_loss(fx):
    d = fx["asyrp_directional"]
    clip = CLIPDirection(StubEncoder(fx), "face", "smiling face")
    src_emb = clip.encode_images(d["source_images_ignored_by_stub"])
    loss = clip.loss(src_embeddings=src_emb, edited_images=d["target_images_ignored_by_stub"])
    clip2 = CLIPDirection(StubEncoder(fx), "face", "smiling face")
    torch.testing.assert_close(loss, clip2.loss(d["source_images_ignored_by_stub"], d["target_images_ignored_by_stub"]))


def test_preprocessing(fx):
    p = fx["preprocess"]
    x = p["input_uint8"].float() / 127.5 - 1.0
    assert_close_fp32(clip_preprocess(x, antialias=False), p["output_antialias_false"], ulps=RESIZE_ULPS)
    out = clip_preprocess(x, antialias=True)
    assert_close_fp32(out[..., :32, :32], p["output_torchvision_default_patch"], ulps=RESIZE_ULPS)
    s, s2 = p["output_torchvision_default_checksum"]
    assert out.double().sum().item() == pytest.approx(s, rel=1e-5)
    assert (out.double() ** 2).sum().item() == pytest.approx(s2, rel=1e-5)


def test_sdir_matches_seed(fx):
    s = fx["sdir"]
    img, txt = s["image_embeddings_raw"], s["text_embeddings_raw"]
    oe = directional_similarity(img["orig"], img["edit"], txt["face"], txt["smiling face"])
    re = directional_similarity(img["recon"], img["edit"], txt["face"], txt["smiling face"])
    same = directional_similarity(img["orig"], img["recon"], txt["face"], txt["face"])
    assert_close_fp32(oe, s["sdir_original_edited"], ulps=EMBEDDING_ULPS)
    assert_close_fp32(re, s["sdir_reconstructed_edited"], ulps=EMBEDDING_ULPS)
    assert torch.equal(same, torch.zeros(4))
    assert_close_fp32(oe.double().mean(), torch.tensor(s["mean_original_edited"]), ulps=EMBEDDING_ULPS)
    assert_close_fp32(torch.tensor(np.std(oe.double().numpy())), torch.tensor(s["std_original_edited"]),
                      ulps=EMBEDDING_ULPS)


def test_similarity_single_prompt_equals_directional_similarity(fx):
    s = fx["sdir"]
    img, txt = s["image_embeddings_raw"], s["text_embeddings_raw"]

    class Enc:
        calls = 0

        def encode_text(self, texts):
            return torch.stack([txt[t] for t in texts])

        def encode_image(self, pixels):
            Enc.calls += 1
            return img["orig"] if Enc.calls % 2 else img["edit"]

    clip = CLIPDirection(Enc(), "face", "smiling face", templates=None)
    assert clip.prompt_mode == "single prompt"
    sim = clip.similarity(torch.zeros(4, 3, 32, 32), torch.zeros(4, 3, 32, 32))
    assert_close_fp32(sim, s["sdir_original_edited"], ulps=EMBEDDING_ULPS)
