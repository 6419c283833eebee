"""asyrp.models.checkpoint: the one strict key / shape report and the one reader every loader uses."""

import pytest
import torch

from asyrp.models.checkpoint import CheckpointError, key_mismatch, read_checkpoint


def test_key_mismatch_names_missing_unexpected_and_shapes():
    own = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "b.weight": torch.zeros(4)}
    assert key_mismatch(own, dict(own)) == ""
    state = {"a.weight": torch.zeros(3, 3), "b.weight": torch.zeros(4), "layer_0.x": torch.zeros(1),
             "c": torch.zeros(1)}
    assert key_mismatch(own, state) == ("1 missing: a.bias; 2 unexpected: layer_0.x, c; "
                                        "1 shape mismatch: a.weight (3, 3)≠(2, 3)")
    assert key_mismatch(own, state, allow_extra=("layer_",)) == ("1 missing: a.bias; 1 unexpected: c; "
                                                                 "1 shape mismatch: a.weight (3, 3)≠(2, 3)")
    many = {f"k{i}": torch.zeros(1) for i in range(6)}
    assert key_mismatch(many, {}, show=2) == "6 missing: k0, k1 …"


def test_read_checkpoint_one_line_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(read_checkpoint(good)["w"], torch.ones(2))
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty file \(0 bytes\)"):
        read_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt checkpoint"):
        read_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "text.pt")
