"""``asyrp prepare-lmdb``: an image folder into a CelebA-HQ style LMDB (:func:`asyrp.io.lmdb_writer.prepare_lmdb`)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from asyrp.io.images import RESAMPLE_FILTERS
from asyrp.io.lmdb_writer import prepare_lmdb


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="folder of jpg/jpeg/png/webp images (searched recursively; "
                        "numbered in sorted path order)")
    parser.add_argument("out", metavar="OUT", help="LMDB folder to create, e.g. data/celeba_hq/LMDB_test")
    parser.add_argument("--size", default="256", help="comma-separated sizes to store (default: 256; "
                        "the reference used 256,1024)")
    parser.add_argument("--resample", choices=sorted(RESAMPLE_FILTERS), default="bilinear",
                        help="resize filter (default: bilinear, as the reference)")
    parser.add_argument("--quality", type=int, default=100, help="JPEG quality (default: 100, as the reference)")
    parser.add_argument("--workers", type=int, default=0, help="encoding processes (default: 0, in this process)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing LMDB at OUT")


def main(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():  # restores the default display afterwards
        # skipped files are reported as one plain line when found, not with Python's source-line decoration
        warnings.showwarning = lambda message, *_: print(f"asyrp prepare-lmdb: warning: {message}", file=sys.stderr)
        count = prepare_lmdb(args.src, args.out, sizes=args.size, resample=args.resample, quality=args.quality,
                             workers=args.workers, overwrite=args.overwrite)
    megabytes = (Path(args.out) / "data.mdb").stat().st_size / 2**20
    print(f"wrote {count} images at size(s) {args.size} to {args.out} ({megabytes:.1f} MiB)")
    return 0
