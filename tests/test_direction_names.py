"""A direction argument is a path, a registry name (asyrp-smiling) or a bare file name found in the weights folders —
in load_delta_block, in `asyrp edit`, and in the README's Python snippet, which this file executes as written."""

import json
import re
import shutil

import pytest
import torch

from asyrp.backbones import save_unet
from asyrp.cli import main as cli
from asyrp.models import unet as unet_module
from asyrp.models.delta import DeltaBlockConfig, load_delta_block
from asyrp.io.weights import UnknownWeightsError, resolve_direction
from conftest import FIXTURES, REPO
from test_timesteps import UNET_512

RELEASED = "smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth"


@pytest.fixture()
def weights_dir(tmp_path, monkeypatch):
    """A weights folder (ASYRP_WEIGHTS_DIR) holding the released smiling direction; offline, fresh ASYRP_HOME."""
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(FIXTURES / "official_delta_blocks" / RELEASED, folder / RELEASED)
    monkeypatch.setenv("ASYRP_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("ASYRP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASYRP_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # the bare name must not be found as a relative path
    return folder


def test_a_bare_file_name_a_registry_name_and_a_path_give_the_same_block(weights_dir):
    expected = torch.load(weights_dir / RELEASED, weights_only=True, map_location="cpu")["0"]
    for spec in (RELEASED, "asyrp-smiling", str(weights_dir / RELEASED)):
        assert resolve_direction(spec) == weights_dir / RELEASED, spec
        block = load_delta_block(spec)
        assert block.config == DeltaBlockConfig()
        assert all(torch.equal(v, expected[k]) for k, v in block.state_dict().items()), spec


def test_a_file_name_in_the_weights_dir_flag_and_in_the_cache(weights_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("ASYRP_WEIGHTS_DIR")
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(weights_dir / RELEASED, mine / "my_direction.pth")
    assert resolve_direction("my_direction.pth", weights_dir=mine) == mine / "my_direction.pth"
    assert load_delta_block("my_direction.pth", weights_dir=mine).config == DeltaBlockConfig()
    cache = tmp_path / "home" / "weights"
    cache.mkdir(parents=True)
    shutil.copy(weights_dir / RELEASED, cache / RELEASED)  # a registry file downloaded earlier: found and verified
    assert resolve_direction(RELEASED) == cache / RELEASED


def test_an_unknown_name_is_one_line_listing_where_it_looked(weights_dir, tmp_path):
    with pytest.raises(UnknownWeightsError) as e:
        load_delta_block("frowning.pth", weights_dir=tmp_path / "flag")
    assert str(e.value) == (f"frowning.pth: not a file here, not a weights name (asyrp-<attribute>, see `asyrp download "
                            f"--list`), and not in the weights folders (weights-dir {tmp_path / 'flag'}, "
                            f"ASYRP_WEIGHTS_DIR {weights_dir}, cache {tmp_path / 'home' / 'weights'})")


def test_the_edit_cli_accepts_a_bare_file_name(weights_dir, tmp_path, capsys):
    torch.manual_seed(0)
    save_unet(unet_module.DDPMUNet(UNET_512), tmp_path / "unet512.pt")
    common = ["edit", "--backbone", str(tmp_path / "unet512.pt"), "--n-images", "1", "--n-inv-step", "3",
              "--n-test-step", "3", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert cli([*common, "--direction", RELEASED, "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "edit.json").read_text())
    assert record["directions"][0]["path"] == str(weights_dir / RELEASED)
    assert (record["t_edit"], record["t_edit_source"]) == (513, "attribute table")  # smiling, from the file name
    capsys.readouterr()
    assert cli([*common, "--direction", "frowning.pth", "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "frowning.pth: not a file here" in err and str(weights_dir) in err


def test_the_readme_python_snippet_runs_as_written(weights_dir, monkeypatch):
    """Executes the README's "Python API" block. The only change: the CelebA-HQ U-Net (113.7 M parameters at 256 px)
    is replaced by one of the same h-space (512 × 8 × 8, temb 512) at 16 px, to fit a CPU test."""
    readme = (REPO / "README.md").read_text()
    code = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert f'load_delta_block("{RELEASED}")' in code
    assert code.count("torch.randn(1, 3, 256, 256)") == 1
    monkeypatch.setattr(unet_module, "CELEBA_HQ_256", UNET_512)
    namespace = {}
    exec(compile(code.replace("torch.randn(1, 3, 256, 256)", "torch.randn(1, 3, 16, 16)"), "README.md", "exec"),
         namespace)
    assert namespace["h"].shape == (1, 512, 8, 8)
    assert namespace["x_next"].shape == (1, 3, 16, 16)
    assert (namespace["eps_edit"] - namespace["eps"]).abs().max() > 0  # t = 600 ≥ t_edit = 513: edited
