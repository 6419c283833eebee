"""Every CLI error on bad input or an environment fault reaches the user as a few short lines on stderr: exit code 2
for bad input, 1 for a fault, no traceback, nothing half-written. One table, one row per case, run in-process
through ``asyrp.cli.main`` (a subprocess only for the closed stdout pipe). Also: files renamed into place get the
umask's permissions, not the temporary file's 0600."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from asyrp import cli
from asyrp.io.files import atomic_json, atomic_torch_save, default_file_mode
from asyrp.models.delta import DeltaBlock, DeltaBlockConfig, save_delta_block
from conftest import REPO

MAX_LINES, MAX_CHARS = 3, 300
PROGRESS = re.compile(r"^\S[^|]*: +\d+%\|")  # a tqdm bar line


@dataclass(frozen=True)
class Row:
    name: str
    argv: list            # "{T}" is replaced by the row's temporary folder
    code: int             # 2: bad input, 1: environment fault
    words: tuple          # each must appear in stderr (the fix is named)
    fault: str | None = None   # "enospc" (a full disk after the first file) or "erofs" (a read-only folder)
    max_lines: int = MAX_LINES


ROWS = [
    # asyrp edit
    Row("edit: non-numeric strengths", ["edit", "--out", "{T}/e", "--strengths=abc"], 2,
        ("argument --strengths", "expected numbers separated by commas", "'abc'")),
    Row("edit: non-numeric strength", ["edit", "--out", "{T}/e", "--strength", "x"], 2,
        ("argument --strength", "invalid float value")),
    Row("edit: missing checkpoint", ["edit", "--out", "{T}/e", "--backbone", "shapes", "--direction",
                                     "{T}/nosuch.pt"], 2, ("nosuch.pt", "no such checkpoint file", "check the path")),
    Row("edit: corrupt checkpoint", ["edit", "--out", "{T}/e", "--backbone", "shapes", "--direction",
                                     "{T}/corrupt.pt"], 2, ("corrupt.pt", "not a PyTorch checkpoint")),
    Row("edit: wrong-architecture checkpoint", ["edit", "--out", "{T}/e", "--backbone", "shapes", "--direction",
                                                "{T}/wide.pt", "--n-images", "1"], 2, ("wide.pt",)),
    Row("edit: YAML strengths not numbers", ["edit", "--out", "{T}/e", "--config", "{T}/edit.yaml"], 2,
        ("EditConfig.strengths", "expected a list of numbers")),
    # asyrp train
    Row("train: unknown attribute", ["train", "--out", "{T}/t", "--attr", "nosuch"], 2,
        ("unknown attribute 'nosuch'", "--list-attributes")),
    Row("train: non-numeric lr", ["train", "--out", "{T}/t", "--lr", "abc"], 2, ("argument --lr", "'abc'")),
    Row("train: no --out", ["train", "--attr", "smiling"], 2, ("--out",)),
    # asyrp precompute
    Row("precompute: --n 0", ["precompute", "--data", "{T}/imgs", "--n", "0"], 2, ("argument --n", "must be >= 1")),
    Row("precompute: --n not a number", ["precompute", "--data", "{T}/imgs", "--n", "many"], 2,
        ("argument --n", "expected an integer")),
    Row("precompute: more images asked than readable", ["precompute", "--backbone", "shapes", "--data", "{T}/imgs",
                                                         "--n", "5", "--cache", "{T}/cache"], 2,
        ("asked for 5 images", "ask for at most 2", "--n")),  # the warning: test_warning_is_one_line
    Row("precompute: missing folder", ["precompute", "--backbone", "shapes", "--data", "{T}/nosuch",
                                       "--cache", "{T}/cache"], 2, ("nosuch",)),
    Row("precompute: full disk", ["precompute", "--backbone", "shapes", "--data", "sampled", "--n", "2",
                                  "--n-inv-step", "2", "--batch-size", "1", "--cache", "{T}/cache"], 1,
        ("No space left on device", "free disk space", "finished files are kept"), fault="enospc"),
    Row("precompute: read-only cache folder", ["precompute", "--backbone", "shapes", "--data", "sampled", "--n", "1",
                                               "--n-inv-step", "2", "--cache", "{T}/cache"], 1,
        ("Read-only file system", "write to another folder"), fault="erofs"),
    # asyrp demo
    Row("demo: unknown block kind", ["demo", "--kind", "nosuch", "--out", "{T}/d"], 2,
        ("argument --kind", "invalid choice: 'nosuch'", "pixel_channel")),
    Row("demo: non-numeric strengths", ["demo", "--strengths", "1,x", "--out", "{T}/d"], 2,
        ("argument --strengths", "expected numbers")),
    Row("demo: out-of-range n-train", ["demo", "--n-train", "-1", "--out", "{T}/d"], 2,
        ("argument --n-train", "must be >= 1, got -1")),
    Row("demo: celeba offline (a list of missing files)", ["demo", "--world", "celeba", "--out", "{T}/d"], 2,
        ("needs 3 weights file(s)", "celeba_hq.ckpt", "smiling_LC_CelebA_HQ", "asyrp download ddpm-celeba-hq"),
        max_lines=5),
    # the other subcommands
    Row("evaluate: missing run folder", ["evaluate", "{T}/nosuchrun"], 2, ("nosuchrun", "not found")),
    Row("figures: missing results file", ["figures", "--results", "{T}/nosuch.json"], 2, ("nosuch.json", "not found")),
    Row("report: corrupt results file", ["report", "--results", "{T}/bad.json"], 2, ("bad.json", "not valid JSON")),
    Row("run-experiment: unknown family", ["run-experiment", "nosuch"], 2, ("nosuch", "not found")),
    Row("run-experiment: unknown stage", ["run-experiment", "mini", "--stage", "nosuch"], 2,
        ("unknown stage", "nosuch")),
    Row("download: unknown weights name", ["download", "nosuch"], 2, ("'nosuch' is not a weights name",
                                                                      "asyrp download --list")),
    Row("prepare-lmdb: missing source folder", ["prepare-lmdb", "{T}/nosuch", "{T}/lmdb"], 2,
        ("nosuch", "does not exist")),
    Row("train-backbone: non-numeric steps", ["train-backbone", "--steps", "x"], 2,
        ("argument --steps", "invalid int value: 'x'")),
    Row("train-clip: unknown flag", ["train-clip", "--nosuch"], 2, ("unrecognized arguments: --nosuch",)),
    Row("bench: unknown flag", ["bench", "--nosuch"], 2, ("unrecognized arguments: --nosuch",)),
    Row("app: non-numeric port", ["app", "--port", "x"], 2, ("argument --port", "'x'")),
    Row("unknown command", ["nosuch"], 2, ("unknown command 'nosuch'", "asyrp --help")),
]


def _inputs(tmp: pathlib.Path) -> None:
    """The files the rows point at: a folder with two images and one unreadable file, a corrupt checkpoint, a delta
    block built for another h, a YAML config with a non-numeric strength, a results file that is not JSON."""
    (tmp / "imgs").mkdir()
    for k in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8)).save(tmp / "imgs" / f"{k}.png")
    (tmp / "imgs" / "broken.png").write_bytes(b"not a png")
    (tmp / "corrupt.pt").write_bytes(os.urandom(100))
    torch.manual_seed(0)
    save_delta_block(DeltaBlock(DeltaBlockConfig(kind="conv", channels=160, spatial_size=3, temb_channels=5)),
                     tmp / "wide.pt")
    (tmp / "edit.yaml").write_text("strengths: [1, abc]\n")
    (tmp / "bad.json").write_text("{")


@pytest.fixture()
def fault(monkeypatch):
    """Install a row's environment fault: a disk that fills after the first file (every later write raises
    OSError(ENOSPC), as a 600 KB tmpfs did), or a read-only folder (creating a file raises OSError(EROFS); the tests
    run as root, for whom chmod does not stop a write)."""
    def install(kind):
        if kind == "enospc":
            real = pathlib.Path.write_bytes
            written = []

            def write_bytes(self, data):
                if written:
                    real(self, bytes(data)[: len(data) // 2])  # half of the file reached the disk
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written.append(self)
                return real(self, data)
            monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
        elif kind == "erofs":
            def mkstemp(*args, dir=None, **kwargs):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
            monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return install


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input_and_faults_give_short_messages(row, tmp_path, capsys, fault, monkeypatch):
    _inputs(tmp_path)
    monkeypatch.chdir(REPO)  # family names resolve from the repository root
    fault(row.fault)
    code = cli.main([str(a).replace("{T}", str(tmp_path)) for a in row.argv])
    err = capsys.readouterr().err
    lines = [line.split("\r")[-1] for line in err.splitlines()]
    lines = [line for line in lines if line.strip() and not PROGRESS.search(line)]  # the interrupted bar: its own line
    assert code == row.code, err
    assert "Traceback" not in err and lines and len(lines) <= row.max_lines, err
    assert all(len(line) <= MAX_CHARS for line in lines), err
    assert lines[-1].startswith("asyrp") or lines[0].startswith("asyrp"), err
    for word in row.words:
        assert word in err, (word, err)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert not leftovers, leftovers  # nothing half-written
    if row.fault == "enospc":  # the complete first entry stays, the second is absent (not a partial file)
        entries = sorted(tmp_path.glob("cache/**/*.pt"))
        assert len(entries) == 1 and torch.load(entries[0], weights_only=False) is not None


def test_rows_cover_every_subcommand():
    assert len(ROWS) >= 20
    assert {r.argv[0] for r in ROWS} >= set(cli.COMMANDS)


def test_warning_is_one_line(tmp_path):
    """A folder with an unreadable file: one warning line (no source line of data.py), then the error line. A
    subprocess: in-process, pytest records the warning instead of printing it."""
    _inputs(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "asyrp", "precompute", "--backbone", "shapes", "--data",
                           str(tmp_path / "imgs"), "--n", "5", "--cache", str(tmp_path / "cache")],
                          capture_output=True, text=True, env=_env(), timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert lines[0] == (f"asyrp precompute: warning: skipped 1 of 3 files in {tmp_path / 'imgs'}: 1 unreadable "
                        "(broken.png)")
    assert lines[1].startswith("asyrp precompute: error: asked for 5 images from index 0")


def _env() -> dict:
    """This checkout's package first on the subprocess's path."""
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def test_closed_stdout_pipe_is_silent():
    """`asyrp train --list-attributes | head`: the reader goes away; no BrokenPipeError traceback, exit code 1."""
    proc = subprocess.Popen([sys.executable, "-m", "asyrp", "train", "--list-attributes"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env())
    proc.stdout.close()  # before the first write
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and err == "", err


def test_files_renamed_into_place_get_the_umask_mode(tmp_path):
    """Cache entries, checkpoints and JSON files: 0o666 minus the umask (a shared cache stays readable)."""
    old = os.umask(0o027)
    try:
        assert default_file_mode() == 0o640
        atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "entry.pt")
        save_delta_block(DeltaBlock(DeltaBlockConfig(channels=32, spatial_size=2, temb_channels=4)),
                         tmp_path / "delta.pt")
        atomic_json(tmp_path / "done.json", {"ok": True})
        os.umask(0o022)
        atomic_json(tmp_path / "shared.json", {"ok": True})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"entry.pt": 0o640, "delta.pt": 0o640, "done.json": 0o640, "shared.json": 0o644}
    assert json.loads((tmp_path / "shared.json").read_text()) == {"ok": True}
