"""``asyrp app``: argparse for :func:`asyrp.app.start` (the editor in the browser)."""

from __future__ import annotations

import argparse

from asyrp.app import start
from asyrp.backbones import BACKBONES, TINY_WORLDS


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="shapes",
                   help=f"{', '.join([*TINY_WORLDS, *BACKBONES])} (default: shapes, offline) or a U-Net file")
    p.add_argument("--direction", action="append", default=[], metavar="CKPT",
                   help="a direction to offer: checkpoint, run folder or asyrp-<attribute> (repeatable)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (default: this machine only)")
    p.add_argument("--n-steps", type=int, default=20, help="DDIM steps of inversion and generation")
    p.add_argument("--weights-dir", help="folder holding downloaded weights (offline machines)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: on a busy 2-core CPU a "
                   "second thread made a 32 px U-Net call 9x slower, 0.44 s against 0.05 s)")
    p.add_argument("--device")


def main(args: argparse.Namespace) -> int:
    print(f"asyrp app: serving on http://{args.host}:{args.port} (Ctrl-C to stop)")
    start(args)
    return 0
