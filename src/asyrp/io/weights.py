"""Weights registry: where each pretrained file comes from, how it is verified, and where it is cached.

    resolve("clip-ViT-B/32")          -> Path   (weights dir → $ASYRP_WEIGHTS_DIR → cache → download)
    asyrp download NAME [NAME ...]    (the CLI: --list, --verify, --all-directions, --offline, --weights-dir)

Lookup order for a registry name: ``weights_dir`` (``--weights-dir``), every folder of ``$ASYRP_WEIGHTS_DIR``
(``os.pathsep``-separated), then the cache ``$ASYRP_HOME/weights`` (default ``~/.cache/asyrp/weights``). A found file
is always hashed before use: against the published sha256, against a published sha256 prefix (torch.hub's file-name
convention), or, where nothing is published, against the hash pinned in ``$ASYRP_HOME/pinned_sha256.json`` the first
time the file was used (trust on first use, announced with a warning).

Downloads stream into a temporary file beside the final name, are hashed while streaming, verified, and only then
renamed into place, so a killed or failed download never leaves a file under the final name. ``ASYRP_OFFLINE=1`` (or
``--offline``) turns downloading off; the error then says which file to fetch from where and where to put it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import time
import types
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from asyrp.io.files import atomic_json, atomic_path, default_file_mode, sha256_file

DEFAULT_TIMEOUT_S = 60.0  # per socket operation, not for the whole file
CHUNK_BYTES = 1 << 20
PIN_FILE_NAME = "pinned_sha256.json"


class MissingWeightsError(ValueError):
    """A weights file is not available locally and could not be downloaded."""


class ChecksumError(ValueError):
    """A weights file does not match its expected sha256."""


class UnknownWeightsError(ValueError):
    """Neither an existing file nor a registry name."""


class UnverifiedWeightsWarning(UserWarning):
    """A file without a published hash was trusted on first use and its sha256 pinned."""


@dataclass(frozen=True)
class WeightSpec:
    name: str
    filename: str
    urls: tuple[str, ...]  # tried in order
    sha256: str | None = None  # full hex digest, where published
    sha256_prefix: str | None = None  # leading hex digits, where only a prefix is published
    size_bytes: int | None = None
    kind: str = ""  # ddpm | clip | inception | direction
    description: str = ""
    note: str = ""  # shown in errors: dead links, manual steps
    manual: bool = False  # the URL is a web page (a OneDrive folder): fetch by hand, never downloaded here

    @property
    def hash_text(self) -> str:
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.sha256_prefix:
            return f"sha256 starting with {self.sha256_prefix}"
        return "sha256 not published"


# --------------------------------------------------------------------------------------------------------------------
# The registry (plain data)

_SDEDIT_S3 = "https://image-editing-test-12345.s3-us-west-2.amazonaws.com/checkpoints"
_S3_DEAD = "the original SDEdit S3 bucket answers 403 AccessDenied since about April 2023"

_DDPM_SPECS = (
    WeightSpec(
        name="ddpm-celeba-hq", filename="celeba_hq.ckpt",
        urls=("https://huggingface.co/gwang-kim/DiffusionCLIP-CelebA_HQ/resolve/main/celeba_hq.ckpt",
              f"{_SDEDIT_S3}/celeba_hq.ckpt"),
        sha256="6cbb630eb856ff3ebe4854fe87af3c21a052765678955999db97ea15b5eeb8a5",
        kind="ddpm", description="CelebA-HQ 256 DDPM (SDEdit / DiffusionCLIP / Asyrp), about 455 MB",
        note=f"{_S3_DEAD}; the DiffusionCLIP Hugging Face mirror is tried first"),
    WeightSpec(
        name="ddpm-lsun-bedroom", filename="bedroom.ckpt",
        urls=("https://huggingface.co/gwang-kim/DiffusionCLIP-LSUN_Bedroom/resolve/main/bedroom.ckpt",
              f"{_SDEDIT_S3}/bedroom.ckpt"),
        kind="ddpm", description="LSUN-bedroom 256 DDPM (SDEdit / DiffusionCLIP / Asyrp), about 455 MB",
        note=f"{_S3_DEAD}; the DiffusionCLIP Hugging Face mirror is tried first; no sha256 is published, so the "
             "first copy used is pinned (trust on first use)"),
    WeightSpec(
        name="ddpm-lsun-church", filename="church_outdoor.ckpt",
        urls=(f"{_SDEDIT_S3}/church_outdoor.ckpt",),
        kind="ddpm", description="LSUN-church-outdoor 256 DDPM (SDEdit / DiffusionCLIP / Asyrp), about 455 MB",
        note=f"{_S3_DEAD} and no verified mirror is known: get church_outdoor.ckpt elsewhere and put it in the "
             "weights folder by hand (unverified candidates, possibly a different file: "
             "https://huggingface.co/XUXR/SDEdit/resolve/main/ema_lsun_church.ckpt, or DDIM's converted "
             "ema_lsun_church model); no sha256 is published, so the first copy used is pinned"),
)

# The iDDPM (AFHQ-dog, FFHQ) and guided-diffusion P2 (MetFaces) checkpoints of Asyrp's README are published only in
# the OneDrive folder of the P2-weighting / ILVR authors (no direct link, no published sha256). sha256 stays None
# until someone records the hash of a verified copy; until then the first copy used is pinned (trust on first use).
_P2_ONEDRIVE = "https://1drv.ms/u/s!AkQjJhxDm0Fyhqp_4gkYjwVRBe8V_w?e=Et3ITH"
_ONEDRIVE_NOTE = ("published only in a OneDrive folder (P2-weighting / ILVR authors): download it in a browser; no "
                  "sha256 is recorded yet, so the first copy used is pinned (trust on first use)")
_ADM_SPECS = tuple(
    WeightSpec(name=name, filename=filename, urls=(_P2_ONEDRIVE,), size_bytes=None, kind="iddpm", manual=True,
               description=description, note=_ONEDRIVE_NOTE)
    for name, filename, description in (
        ("iddpm-afhq-dog", "afhq_dog_4m.pt", "AFHQ-dog 256 iDDPM (ILVR), about 375 MB"),
        ("iddpm-ffhq", "ffhq_10m.pt", "FFHQ 256 iDDPM (ILVR), about 375 MB"),
        ("adm-metfaces", "metface_p2.pt", "MetFaces 256 guided-diffusion U-Net with P2 weighting, about 375 MB")))

# The same DDPM networks as SDEdit's checkpoints in the diffusers format (a folder: config.json + weights), loaded
# into DDPMUNet by key conversion (asyrp.models.diffusers_ddpm). Files are kept under <repo name>/ as in a clone.
_HF = "https://huggingface.co"
_DIFFUSERS_SPECS = tuple(
    WeightSpec(name=f"diffusers-{repo}{suffix}", filename=f"{repo}/{file}",
               urls=(f"{_HF}/google/{repo}/resolve/main/{file}",), kind="diffusers",
               description=f"google/{repo} {what} (diffusers UNet2DModel)",
               note="no sha256 is published, so the first copy used is pinned (trust on first use)")
    for repo in ("ddpm-ema-celebahq-256", "ddpm-ema-church-256", "ddpm-ema-bedroom-256")
    for suffix, file, what in (("", "diffusion_pytorch_model.bin", "weights, about 455 MB"),
                               ("-config", "config.json", "config")))

_OPENAI_CLIP = "https://openaipublic.azureedge.net/clip/models"
# OpenAI's download path segment is the file's sha256 (their clip.py verifies it); URLs as in open_clip 3.3.0.
_CLIP_SHA256 = {
    "ViT-B/32": "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    "ViT-B/16": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
    "ViT-L/14": "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
}
_CLIP_SPECS = tuple(
    WeightSpec(
        name=f"clip-{arch}", filename=f"{arch.replace('/', '-')}.pt",
        urls=(f"{_OPENAI_CLIP}/{sha}/{arch.replace('/', '-')}.pt",), sha256=sha,
        kind="clip", description=f"OpenAI CLIP {arch} (original TorchScript .pt)")
    for arch, sha in _CLIP_SHA256.items())

_INCEPTION_SPEC = WeightSpec(
    name="inception-fid", filename="pt_inception-2015-12-05-6726825d.pth",
    urls=("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
          "pt_inception-2015-12-05-6726825d.pth",),
    sha256_prefix="6726825d",  # torch.hub convention: the file-name suffix is the sha256 prefix
    kind="inception", description="FID Inception-v3 (pytorch-fid port of the TF 2015-12-05 graph)",
    note="only a sha256 prefix is published (torch.hub file-name convention)")

_ASYRP_RAW = "https://github.com/kwonminki/Asyrp_official/raw/main/checkpoint"
_ASYRP_DIRECTION_SIZE = 3_158_863  # measured on the eight fixture copies (DDPM-style blocks)
# attribute -> dataset category in the file name; the 35 files of kwonminki/Asyrp_official/checkpoint
_ASYRP_DIRECTIONS = {
    **{attr: "CelebA_HQ" for attr in (
        "angry", "curly_hair", "frida", "makeup", "man", "modigliani", "neanderthal", "nicolas", "pixar",
        "random_noise_man", "random_noise_woman", "sad", "smiling", "tanned", "woman", "young", "zombie",
        "zombie_new")},
    **{f"church_{s}": "church_outdoor" for s in (
        "department_store", "factory", "gothic", "red_brick", "temple", "wooden_church")},
    **{f"bedroom_{s}": "bedroom" for s in ("hotel", "princess")},
    **{f"dog_{s}": "dog" for s in ("angry", "happy", "sleepy", "wolf", "yorkshire")},
    **{f"metface_{s}": "metfaces" for s in ("angry", "disgusted", "sad", "smiling")},
}
# Full hashes of the eight files we hold byte-for-byte copies of (../shared/fixtures/official_delta_blocks).
_ASYRP_DIRECTION_SHA256 = {
    "angry": "533ef903b93101c49ccc19eec89207d209613de0a48e54ca539a5caa7c2d56b6",
    "modigliani": "db7ce60fb1e65f0b72964c69b561923b142971f78f72df0ea3e146adb7dff37d",
    "neanderthal": "f159a7ea48939f149a63de105e56c34d42ced887c712004139c950e5e8ac043b",
    "pixar": "fb5b77b60221872c8ba9dd9af9f40a92c6eba5bb716585c0e7e75f996659b67e",
    "sad": "3b1fbc22602043d8748fd444ef4a9f993175ad02196c56e7e0d4270ca2e5eea3",
    "smiling": "6694632ef848d12e595ec1291df734ef3e9850d94a08632f06dc8fdd459b7703",
    "tanned": "ac4e6eeb1c3aad92aa495a448d5ddf878c38b482b1feba08d8adaf1a856ec7f7",
    "young": "9db44522a9e043479f39b6bad54e8d489754ed36dd25365e024b1861cbe6260b",
}


def _direction_spec(attr: str, category: str) -> WeightSpec:
    filename = f"{attr}_LC_{category}_t999_ninv40_ngen40_0.pth"
    sha = _ASYRP_DIRECTION_SHA256.get(attr)
    return WeightSpec(
        name=f"asyrp-{attr}", filename=filename, urls=(f"{_ASYRP_RAW}/{filename}",), sha256=sha,
        size_bytes=_ASYRP_DIRECTION_SIZE if sha else None, kind="direction",
        description=f"official Asyrp direction '{attr}' ({category} backbone)",
        note="" if sha else "no sha256 is published, so the first copy used is pinned (trust on first use)")


# Read-only: the registry is data, not state.
REGISTRY: Mapping[str, WeightSpec] = types.MappingProxyType({
    spec.name: spec for spec in (
        *_DDPM_SPECS, *_ADM_SPECS, *_DIFFUSERS_SPECS, *_CLIP_SPECS, _INCEPTION_SPEC,
        *(_direction_spec(attr, category) for attr, category in _ASYRP_DIRECTIONS.items()))
})


def get_spec(name: str) -> WeightSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownWeightsError(f"{name!r} is not a weights name; known: {_known_names_text()}") from None


def direction_names() -> list[str]:
    return [name for name, spec in REGISTRY.items() if spec.kind == "direction"]


def _known_names_text() -> str:
    """The registry's names grouped by prefix (``ddpm-* (3)``): short enough for a one-line error."""
    groups: dict[str, list[str]] = {}
    for name, spec in REGISTRY.items():
        if spec.kind != "direction":
            groups.setdefault(name.split("-", 1)[0], []).append(name)
    parts = [names[0] if len(names) == 1 else f"{prefix}-* ({len(names)})" for prefix, names in groups.items()]
    return ", ".join(parts) + ", asyrp-<attribute> (see `asyrp download --list`)"


# --------------------------------------------------------------------------------------------------------------------
# Folders

def asyrp_home() -> Path:
    """``$ASYRP_HOME`` or ``~/.cache/asyrp``."""
    return Path(os.environ.get("ASYRP_HOME") or Path.home() / ".cache" / "asyrp").expanduser()


def weights_cache_dir() -> Path:
    return asyrp_home() / "weights"


def _env_weights_dirs() -> list[Path]:
    return [Path(p).expanduser() for p in os.environ.get("ASYRP_WEIGHTS_DIR", "").split(os.pathsep) if p]


def _search_folders(weights_dir: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """(folder, origin) in lookup order; origin 'cache' is the only one whose files we may delete."""
    folders = [(Path(weights_dir).expanduser(), "weights-dir")] if weights_dir else []
    folders += [(p, "ASYRP_WEIGHTS_DIR") for p in _env_weights_dirs()]
    folders.append((weights_cache_dir(), "cache"))
    return folders


def find_file(spec: WeightSpec, weights_dir: str | os.PathLike | None) -> tuple[Path, str] | None:
    for folder, origin in _search_folders(weights_dir):
        candidate = folder / spec.filename
        if candidate.is_file():
            return candidate, origin
    return None


def locate(name: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """Where ``name`` would be taken from (no hashing, no download), or None."""
    found = find_file(get_spec(name), weights_dir)
    return found[0] if found else None


def offline() -> bool:
    return os.environ.get("ASYRP_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------------------------------------------------
# Verification

def _pin_file() -> Path:
    return asyrp_home() / PIN_FILE_NAME


def _read_pins() -> dict:
    path = _pin_file()
    if not path.is_file():
        return {}
    try:
        pins = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); fix it or delete it (pins are re-created on next use)")
    return pins if isinstance(pins, dict) else {}


def pinned_sha256(name: str) -> str | None:
    entry = _read_pins().get(name)
    return entry.get("sha256") if isinstance(entry, dict) else None


def _pin(spec: WeightSpec, digest: str, source: str) -> None:
    pins = _read_pins()
    pins[spec.name] = {"filename": spec.filename, "sha256": digest, "source": source}
    atomic_json(_pin_file(), pins)
    warnings.warn(f"{spec.filename}: no sha256 is published for {spec.name}; trusting this copy on first use "
                  f"({source}) and pinning its sha256 {digest} in {_pin_file()}", UnverifiedWeightsWarning,
                  stacklevel=3)


def _check_digest(spec: WeightSpec, digest: str, what: str) -> str:
    """Raise ChecksumError unless ``digest`` matches; return how it was checked ('' = no hash known yet)."""
    if spec.sha256:
        how, expected, ok = "sha256", spec.sha256, digest == spec.sha256
    elif spec.sha256_prefix:
        how, expected = "sha256 prefix", f"a sha256 starting with {spec.sha256_prefix}"
        ok = digest.startswith(spec.sha256_prefix)
    else:
        pinned = pinned_sha256(spec.name)
        if pinned is None:
            return ""
        how, ok = "pinned sha256", digest == pinned
        expected = (f"{pinned} (pinned on first use in {_pin_file()}; delete that entry if the upstream file "
                    "really changed)")
    if not ok:
        raise ChecksumError(f"{spec.filename}: sha256 mismatch for {what}: expected {expected}, got {digest}")
    return how


def verify_file(path: str | os.PathLike, name: str) -> str:
    """Hash ``path`` and check it against registry entry ``name``; return how it was verified.

    Entries without a published hash are pinned on first use (with an :class:`UnverifiedWeightsWarning`).
    Raises :class:`ChecksumError` on a mismatch; the file is left alone (callers decide what to delete).
    """
    spec = get_spec(name)
    path = Path(path)
    digest = sha256_file(path)
    how = _check_digest(spec, digest, str(path))
    if not how:
        _pin(spec, digest, str(path))
        how = "pinned now (trust on first use)"
    return how


def verify_found(path: Path, origin: str, spec: WeightSpec) -> str:
    try:
        return verify_file(path, spec.name)
    except ChecksumError as e:
        if origin == "cache":  # ours to delete; a file the user placed is only refused
            path.unlink(missing_ok=True)
            raise ChecksumError(f"{e}; removed it from the cache, run again to download a fresh copy") from None
        raise ChecksumError(f"{e}; refusing to use it (it was left in place: replace it)") from None


# --------------------------------------------------------------------------------------------------------------------
# Resolution and download

def resolve(name_or_path: str | os.PathLike, weights_dir: str | os.PathLike | None = None,
            download: bool | None = None, progress: bool = True) -> Path:
    """An existing file path as is, or the verified local copy of a registry entry (downloaded if needed).

    ``download=None`` allows downloading unless ``ASYRP_OFFLINE=1``; ``False`` never downloads.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    if name not in REGISTRY:
        raise UnknownWeightsError(f"{name}: no such file, and not a weights name (known: {_known_names_text()})")
    spec = REGISTRY[name]
    found = find_file(spec, weights_dir)
    if found:
        verify_found(*found, spec)
        return found[0]
    if download is False or (download is None and offline()):
        raise MissingWeightsError(_missing_message(
            spec, weights_dir, "it is not in any weights folder and downloading is off (--offline or ASYRP_OFFLINE=1)"))
    return fetch(name, progress=progress, weights_dir=weights_dir)


def resolve_direction(spec: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> Path:
    """The file of a direction argument: a path, a registry name (``asyrp-smiling``), or a bare file name.

    A bare file name (no folder part) that is a registry entry's file (``smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth``)
    resolves as that entry (found in the weights folders and verified, or downloaded); any other bare name is looked
    up in the weights folders in their order (``--weights-dir``, ``$ASYRP_WEIGHTS_DIR``, the cache). A path with a
    folder part is returned as given (its loader says if it is missing).
    """
    path = Path(spec).expanduser()
    name = str(spec)
    if path.is_file() or path.name != name:
        return path
    if name in REGISTRY:
        return resolve(name, weights_dir)
    entry = next((s for s in REGISTRY.values() if s.filename == name), None)
    if entry is not None:
        return resolve(entry.name, weights_dir)
    folders = _search_folders(weights_dir)
    for folder, _ in folders:
        if (folder / name).is_file():
            return folder / name
    looked = ", ".join(f"{origin} {folder}" for folder, origin in folders)
    raise UnknownWeightsError(f"{name}: not a file here, not a weights name (asyrp-<attribute>, see `asyrp download "
                              f"--list`), and not in the weights folders ({looked})")


def fetch(name: str, progress: bool = True, timeout: float = DEFAULT_TIMEOUT_S,
          weights_dir: str | os.PathLike | None = None) -> Path:
    """Download registry entry ``name`` into the cache (each URL in order), verify it, and return its path.

    ``weights_dir`` only shapes the error message. Raises :class:`MissingWeightsError` when every URL fails and
    :class:`ChecksumError` when a download arrived but did not match (nothing is left under the final name).
    """
    spec = get_spec(name)
    if spec.manual:
        raise MissingWeightsError(_missing_message(
            spec, weights_dir, "it is not in any weights folder and cannot be downloaded automatically"))
    target = weights_cache_dir() / spec.filename
    _remove_stale_partial_downloads(target)
    failures: list[str] = []
    mismatched = False
    for url in spec.urls:
        try:
            digest, how = _download_verified(spec, url, target, progress, timeout)
        except ChecksumError as e:
            failures.append(f"{url}: {e}")
            mismatched = True
            continue
        except (OSError, http.client.HTTPException) as e:  # URLError, refused connections, timeouts are OSErrors
            failures.append(f"{url}: {_describe_failure(e)}")
            continue
        if not how:
            _pin(spec, digest, url)
        return target
    if mismatched:
        raise ChecksumError(f"{spec.filename}: every download failed, nothing was kept: {'; '.join(failures)}")
    raise MissingWeightsError(_missing_message(
        spec, weights_dir, f"it is not in any weights folder and every download failed ({'; '.join(failures)})"))


def _download_verified(spec: WeightSpec, url: str, target: Path, progress: bool, timeout: float) -> tuple[str, str]:
    """Stream ``url`` into a temporary file beside ``target``, hash it on the way, verify, then rename into place."""
    request = urllib.request.Request(url, headers={"User-Agent": "asyrp-weights (python urllib)"})
    with atomic_path(target) as tmp:  # on any exception the temporary file is removed, target untouched
        with urllib.request.urlopen(request, timeout=timeout) as response:
            header = response.headers.get("Content-Length")
            expected_bytes = int(header) if header and header.isdigit() else spec.size_bytes
            digest, received = hashlib.sha256(), 0
            if progress:
                print(f"downloading {spec.filename} from {url}", file=sys.stderr)
            with open(tmp, "wb") as out, tqdm(total=expected_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                                              desc=spec.filename, disable=not progress, leave=False) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        # http.client returns a short body silently when the server closes early
        if expected_bytes is not None and received != expected_bytes:
            raise ConnectionError(f"connection closed after {received} of {expected_bytes} bytes")
        hexdigest = digest.hexdigest()
        how = _check_digest(spec, hexdigest, f"the download from {url}")
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600; the cache may be shared
    return hexdigest, how


def _remove_stale_partial_downloads(target: Path, older_than_s: float = 24 * 3600) -> None:
    """Temporary files of killed downloads (atomic_path's naming); recent ones may belong to a running download."""
    if not target.parent.is_dir():
        return
    now = time.time()
    for partial in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            if now - partial.stat().st_mtime > older_than_s:
                partial.unlink()
        except OSError:
            pass  # another process got there first


def _describe_failure(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"{e.reason}"
    if isinstance(e, http.client.IncompleteRead):
        return f"connection closed after {len(e.partial)} bytes"
    return " ".join(f"{type(e).__name__}: {e}".split())


def _missing_message(spec: WeightSpec, weights_dir: str | os.PathLike | None, reason: str) -> str:
    looked = ", ".join(str(folder) for folder, _ in _search_folders(weights_dir))
    message = (f"{spec.name} ({spec.filename}) is not available: {reason}. Looked in: {looked}. "
               f"Download {spec.filename} from {' or '.join(spec.urls)} ({spec.hash_text}) and put it at "
               f"{weights_cache_dir() / spec.filename}, or in a folder given with --weights-dir or ASYRP_WEIGHTS_DIR.")
    if spec.note:
        message += f" Note: {spec.note}."
    return message
