"""Weights registry: download, atomic placement, verification, lookup order, TOFU pins, CLI (loopback only)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import socket
import threading
import urllib.parse
import warnings
from pathlib import Path

import pytest

from asyrp import cli
from asyrp.io import weights
from asyrp.io.files import sha256_file
from conftest import FIXTURES

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one download chunk
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/truncated":  # promise more than we send, then hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) + 1000))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    handler = type("Handler", (_Handler,), {"files": {"/good.bin": PAYLOAD, "/other.bin": b"something else"}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Own ASYRP_HOME, no ASYRP_WEIGHTS_DIR / ASYRP_OFFLINE from the caller, and no request beyond loopback."""
    home = tmp_path / "home"
    monkeypatch.setenv("ASYRP_HOME", str(home))
    monkeypatch.delenv("ASYRP_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("ASYRP_OFFLINE", raising=False)
    real_urlopen = weights.urllib.request.urlopen

    def loopback_only(request, *args, **kwargs):
        host = urllib.parse.urlsplit(getattr(request, "full_url", request)).hostname
        assert host in {"127.0.0.1", "localhost"}, f"test tried to reach {host}"
        return real_urlopen(request, *args, **kwargs)

    monkeypatch.setattr(weights.urllib.request, "urlopen", loopback_only)
    return home


def add_entry(monkeypatch, spec: weights.WeightSpec) -> weights.WeightSpec:
    monkeypatch.setattr(weights, "REGISTRY", {**weights.REGISTRY, spec.name: spec})
    return spec


def make_spec(name="test-file", **changes) -> weights.WeightSpec:
    fields = dict(name=name, filename="test_file.bin", urls=(), sha256=PAYLOAD_SHA, kind="test")
    return weights.WeightSpec(**{**fields, **changes})


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---- download ----------------------------------------------------------------------------------------------------

def test_download_verifies_and_places_atomically(server, monkeypatch, isolated):
    add_entry(monkeypatch, make_spec(urls=(f"{server}/missing.bin", f"{server}/good.bin")))  # first URL 404s
    path = weights.resolve("test-file", progress=False)
    assert path == isolated / "weights" / "test_file.bin"
    assert path.read_bytes() == PAYLOAD
    assert leftovers(path.parent) == ["test_file.bin"]  # no temporary file beside it
    # the second call finds the cached copy and re-verifies it without the network
    monkeypatch.setattr(weights.urllib.request, "urlopen", None)
    assert weights.resolve("test-file", download=False) == path


def test_checksum_mismatch_keeps_nothing(server, monkeypatch, isolated):
    add_entry(monkeypatch, make_spec(urls=(f"{server}/other.bin",)))
    with pytest.raises(weights.ChecksumError) as err:
        weights.resolve("test-file", progress=False)
    message = str(err.value)
    assert "test_file.bin" in message and PAYLOAD_SHA in message
    assert hashlib.sha256(b"something else").hexdigest() in message
    assert leftovers(isolated / "weights") == []


def test_connection_closed_mid_file_leaves_no_file(server, monkeypatch, isolated):
    add_entry(monkeypatch, make_spec(urls=(f"{server}/truncated",)))
    with pytest.raises(weights.MissingWeightsError, match="connection closed after"):
        weights.resolve("test-file", progress=False)
    assert leftovers(isolated / "weights") == []  # neither the final name nor a temporary file


def test_partial_files_of_killed_downloads_are_cleaned_once_stale(server, monkeypatch, isolated):
    add_entry(monkeypatch, make_spec(urls=(f"{server}/good.bin",)))
    cache = isolated / "weights"
    cache.mkdir(parents=True)
    stale, recent = cache / ".test_file.bin.old.tmp", cache / ".test_file.bin.new.tmp"
    stale.write_bytes(b"half")
    recent.write_bytes(b"half")
    weights.os.utime(stale, (0, 0))
    weights.resolve("test-file", progress=False)
    assert leftovers(cache) == [recent.name, "test_file.bin"]  # a recent one may belong to a running download


def test_every_failure_is_reported(server, monkeypatch):
    add_entry(monkeypatch, make_spec(urls=(f"{server}/missing.bin", f"{server}/truncated")))
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.resolve("test-file", progress=False)
    message = str(err.value)
    assert "HTTP 404" in message and "connection closed after" in message
    assert f"{server}/missing.bin" in message and f"{server}/truncated" in message


def _refused_url() -> str:
    with socket.socket() as s:  # a port nobody listens on: bound, then released
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/test_file.bin"


@pytest.mark.parametrize("how", ["ASYRP_OFFLINE", "refused port"])
def test_offline_error_names_file_url_hash_and_folder(how, monkeypatch, isolated):
    url = _refused_url()
    add_entry(monkeypatch, make_spec(urls=(url,)))
    if how == "ASYRP_OFFLINE":
        monkeypatch.setenv("ASYRP_OFFLINE", "1")
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.resolve("test-file", progress=False)
    message = str(err.value)
    assert "\n" not in message
    for part in ("test_file.bin", url, PAYLOAD_SHA, str(isolated / "weights"), "--weights-dir", "ASYRP_WEIGHTS_DIR"):
        assert part in message
    assert leftovers(isolated / "weights") == []


def test_unknown_name_or_missing_path():
    with pytest.raises(weights.UnknownWeightsError, match="no-such-weights"):
        weights.resolve("no-such-weights")


def test_existing_path_is_returned_as_is(tmp_path):
    f = tmp_path / "anything.pt"
    f.write_bytes(b"x")
    assert weights.resolve(f) == f
    assert weights.resolve(str(f)) == f


# ---- lookup order and verification of local files ------------------------------------------------------------------

def test_lookup_order_weights_dir_then_env_then_cache(tmp_path, monkeypatch, isolated):
    add_entry(monkeypatch, make_spec(urls=(_refused_url(),)))
    explicit, env_a, env_b = tmp_path / "explicit", tmp_path / "env_a", tmp_path / "env_b"
    cache = isolated / "weights"
    for folder in (explicit, env_a, env_b, cache):
        folder.mkdir(parents=True)
    monkeypatch.setenv("ASYRP_WEIGHTS_DIR", f"{env_a}{weights.os.pathsep}{env_b}")

    (cache / "test_file.bin").write_bytes(PAYLOAD)
    assert weights.resolve("test-file", download=False) == cache / "test_file.bin"
    (env_b / "test_file.bin").write_bytes(PAYLOAD)
    assert weights.resolve("test-file", download=False) == env_b / "test_file.bin"
    (env_a / "test_file.bin").write_bytes(PAYLOAD)
    assert weights.resolve("test-file", download=False) == env_a / "test_file.bin"
    (explicit / "test_file.bin").write_bytes(PAYLOAD)
    assert weights.resolve("test-file", weights_dir=explicit, download=False) == explicit / "test_file.bin"
    assert weights.locate("test-file", weights_dir=explicit) == explicit / "test_file.bin"


def test_bad_user_file_is_refused_not_deleted_and_bad_cache_file_is_removed(tmp_path, monkeypatch, isolated):
    add_entry(monkeypatch, make_spec())
    user_file = tmp_path / "mine" / "test_file.bin"
    user_file.parent.mkdir()
    user_file.write_bytes(b"corrupt")
    with pytest.raises(weights.ChecksumError, match="expected"):
        weights.resolve("test-file", weights_dir=user_file.parent, download=False)
    assert user_file.read_bytes() == b"corrupt"

    cached = isolated / "weights" / "test_file.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"corrupt")
    with pytest.raises(weights.ChecksumError, match="removed it from the cache"):
        weights.resolve("test-file", download=False)
    assert not cached.exists()


def test_inception_prefix_check(tmp_path, monkeypatch):
    spec = weights.REGISTRY["inception-fid"]
    assert spec.sha256 is None and spec.sha256_prefix == "6726825d"
    assert spec.filename.endswith(f"-{spec.sha256_prefix}.pth")
    (tmp_path / spec.filename).write_bytes(PAYLOAD)  # not the real file: its hash does not start with 6726825d
    with pytest.raises(weights.ChecksumError, match="starting with 6726825d"):
        weights.resolve("inception-fid", weights_dir=tmp_path, download=False)
    # the same mechanism accepts a file whose hash has the recorded prefix
    add_entry(monkeypatch, dataclasses.replace(spec, sha256_prefix=PAYLOAD_SHA[:8]))
    assert weights.resolve("inception-fid", weights_dir=tmp_path, download=False) == tmp_path / spec.filename
    assert weights.verify_file(tmp_path / spec.filename, "inception-fid") == "sha256 prefix"


def test_trust_on_first_use_pins_the_hash(server, tmp_path, monkeypatch, isolated):
    add_entry(monkeypatch, make_spec(sha256=None, urls=(f"{server}/good.bin",)))
    with pytest.warns(weights.UnverifiedWeightsWarning, match="first use"):
        path = weights.resolve("test-file", progress=False)
    pins = json.loads((isolated / "pinned_sha256.json").read_text())
    assert pins["test-file"]["sha256"] == PAYLOAD_SHA
    assert pins["test-file"]["source"] == f"{server}/good.bin"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pinned file verifies silently
        assert weights.resolve("test-file", download=False) == path
    # a different copy of the same entry is refused from then on, wherever it is
    other = tmp_path / "other"
    other.mkdir()
    (other / "test_file.bin").write_bytes(b"a different file")
    with pytest.raises(weights.ChecksumError, match="pinned on first use"):
        weights.resolve("test-file", weights_dir=other, download=False)


def test_trust_on_first_use_of_a_local_file(tmp_path, monkeypatch, isolated):
    add_entry(monkeypatch, make_spec(sha256=None))
    (tmp_path / "test_file.bin").write_bytes(PAYLOAD)
    with pytest.warns(weights.UnverifiedWeightsWarning):
        weights.resolve("test-file", weights_dir=tmp_path, download=False)
    assert weights.pinned_sha256("test-file") == PAYLOAD_SHA


# ---- the registry itself ------------------------------------------------------------------------------------------

OFFICIAL_FIXTURES = FIXTURES / "official_delta_blocks"


def test_official_fixture_files_verify_against_registry(monkeypatch):
    files = sorted(OFFICIAL_FIXTURES.glob("*.pth"))
    assert len(files) == 8
    by_filename = {spec.filename: spec for spec in weights.REGISTRY.values()}
    for f in files:
        spec = by_filename[f.name]
        assert spec.sha256 == sha256_file(f) and spec.size_bytes == f.stat().st_size
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # full hashes: no trust-on-first-use warning
            assert weights.resolve(spec.name, weights_dir=OFFICIAL_FIXTURES, download=False) == f


def test_registry_contents():
    directions = weights.direction_names()
    assert len(directions) == 35
    assert sum(1 for n in directions if weights.REGISTRY[n].sha256) == 8
    for name, spec in weights.REGISTRY.items():
        assert spec.name == name and spec.urls and isinstance(spec.urls, tuple)
        assert spec.sha256 is None or len(spec.sha256) == 64
    smiling = weights.REGISTRY["asyrp-smiling"]
    assert smiling.filename == "smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth"
    assert smiling.urls == ("https://github.com/kwonminki/Asyrp_official/raw/main/checkpoint/" + smiling.filename,)
    church = weights.REGISTRY["asyrp-church_gothic"]
    assert church.filename == "church_gothic_LC_church_outdoor_t999_ninv40_ngen40_0.pth"
    celeba = weights.REGISTRY["ddpm-celeba-hq"]
    assert celeba.urls[0].startswith("https://huggingface.co/") and "amazonaws" in celeba.urls[1]
    with pytest.raises(TypeError):
        weights.REGISTRY["x"] = celeba  # read-only


def test_clip_urls_match_open_clip_and_carry_their_sha256():
    pretrained = pytest.importorskip("open_clip.pretrained")
    for arch in ("ViT-B/32", "ViT-B/16", "ViT-L/14"):
        spec = weights.REGISTRY[f"clip-{arch}"]
        assert spec.urls == (pretrained.get_pretrained_url(arch.replace("/", "-"), "openai"),)
        assert spec.urls[0].split("/")[-2] == spec.sha256


# ---- CLI ----------------------------------------------------------------------------------------------------------

def test_cli_list(capsys):
    assert cli.main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    assert "asyrp-smiling" in out and "ViT-B-32.pt" in out and "pt_inception-2015-12-05-6726825d.pth" in out


def test_cli_offline_missing_is_one_line_exit_2(capsys, isolated):
    assert cli.main(["download", "asyrp-smiling", "--offline"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    spec = weights.REGISTRY["asyrp-smiling"]
    for part in (spec.filename, spec.urls[0], spec.sha256, str(isolated / "weights")):
        assert part in err


def test_cli_download_and_verify(server, monkeypatch, capsys, isolated):
    add_entry(monkeypatch, make_spec(urls=(f"{server}/good.bin",)))
    assert cli.main(["download", "test-file"]) == 0
    assert str(isolated / "weights" / "test_file.bin") in capsys.readouterr().out
    assert cli.main(["download", "--verify", "test-file"]) == 0
    assert "ok (sha256)" in capsys.readouterr().out
    (isolated / "weights" / "test_file.bin").write_bytes(b"bit rot")
    assert cli.main(["download", "--list", "--verify", "test-file"]) == 2
    assert "MISMATCH" in capsys.readouterr().out
    assert not (isolated / "weights" / "test_file.bin").exists()


def test_cli_verify_fixtures_via_weights_dir(capsys):
    assert cli.main(["download", "--verify", "--weights-dir", str(OFFICIAL_FIXTURES)]) == 0
    assert capsys.readouterr().out.count(": ok (sha256)") == 8


def test_cli_needs_something_to_do(capsys):
    assert cli.main(["download"]) == 2
    assert "NAME" in capsys.readouterr().err
