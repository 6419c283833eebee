"""``asyrp download``: fetch, list and re-verify the files of the weights registry (:mod:`asyrp.io.weights`)."""

from __future__ import annotations

import argparse
import sys

from asyrp.errors import UserError
from asyrp.io import weights as registry
from asyrp.io.weights import ChecksumError, MissingWeightsError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="registry names (e.g. ddpm-celeba-hq, clip-ViT-B/32, inception-fid, asyrp-smiling)")
    parser.add_argument("--list", action="store_true", help="show every entry: file, size, where it is, verified")
    parser.add_argument("--weights-dir", metavar="DIR",
                        help="look here first (before ASYRP_WEIGHTS_DIR and the cache); downloads go to the cache")
    parser.add_argument("--all-directions", action="store_true", help="all 35 official Asyrp directions")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash the files already present (all of them, or the NAMEs given); no download")
    parser.add_argument("--offline", action="store_true", help="never download (same as ASYRP_OFFLINE=1)")
    parser.epilog = (f"Files are cached in $ASYRP_HOME/weights (now {registry.weights_cache_dir()}). Entries without a "
                     "published sha256 are pinned on first use in $ASYRP_HOME/pinned_sha256.json.")


def main(args: argparse.Namespace) -> int:
    names = list(dict.fromkeys(args.names + (registry.direction_names() if args.all_directions else [])))
    for name in names:
        registry.get_spec(name)  # unknown names fail before anything is downloaded
    if args.list:
        return _print_table(names or list(registry.REGISTRY), args.weights_dir, args.verify)
    if args.verify:
        return _verify_present(names, args.weights_dir)
    if not names:
        raise UserError("give one or more NAMEs, --all-directions, --list or --verify (see asyrp download --help)")
    failed = []
    for name in names:
        try:
            path = registry.resolve(name, weights_dir=args.weights_dir, download=False if args.offline else None)
        except (MissingWeightsError, ChecksumError) as e:
            if len(names) == 1:
                raise
            print(f"asyrp download: error: {' '.join(str(e).split())}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"{name}: {path}")
    if failed:
        raise UserError(f"{len(failed)} of {len(names)} failed: {', '.join(failed)}")
    return 0


def _print_table(names: list[str], weights_dir: str | None, verify: bool) -> int:
    rows, bad = [], 0
    for name in names:
        spec = registry.REGISTRY[name]
        found = registry.find_file(spec, weights_dir)
        size = found[0].stat().st_size if found else spec.size_bytes
        status = "-"
        if found and verify:
            try:
                status = f"yes ({registry.verify_found(*found, spec)})"
            except ChecksumError:
                status, bad = "MISMATCH", bad + 1
        elif found:
            status = "not checked"
        rows.append((name, spec.filename, _human_size(size), found[1] if found else "no", status))
    header = ("NAME", "FILE", "SIZE", "FOUND", "VERIFIED")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\ncache: {registry.weights_cache_dir()}" + ("" if verify else "  (add --verify to re-hash the files found)"))
    return 2 if bad else 0


def _verify_present(names: list[str], weights_dir: str | None) -> int:
    """Re-hash what is present; names given explicitly must be present."""
    failed = 0
    for name in names or list(registry.REGISTRY):
        spec = registry.REGISTRY[name]
        found = registry.find_file(spec, weights_dir)
        if not found:
            if names:
                print(f"{name}: missing ({spec.filename} not in any weights folder)", file=sys.stderr)
                failed += 1
            continue
        try:
            print(f"{name}: ok ({registry.verify_found(*found, spec)}) {found[0]}")
        except ChecksumError as e:
            print(f"{name}: {' '.join(str(e).split())}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def _human_size(n: int | None) -> str:
    if n is None:
        return "?"
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
