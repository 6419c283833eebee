"""``asyrp train-clip``: the options of the shapes world's tiny CLIP trainer (:func:`asyrp.worlds.train_clip.train`)."""

from __future__ import annotations

import argparse

from asyrp.cli.train_backbone import add_run_arguments
from asyrp.worlds import train_clip


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/shapes_clip")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--width", type=int, default=128, help="width of both towers")
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--text-layers", type=int, default=3)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--vision", dest="vision_kind", choices=("vit", "resnet"), default="vit",
                   help="image tower: vit (4-px patches) or resnet (open_clip's ModifiedResNet)")
    p.add_argument("--resnet-width", type=int, default=32, help="stem width of the ResNet tower")
    p.add_argument("--context-length", type=int, default=24,
                   help="token context (the longest template + full caption is 18 tokens)")
    p.add_argument("--image-size", type=int, default=32)
    add_run_arguments(p, log_every=25)
    p.add_argument("--eval-images", type=int, default=1000, help="held-out images for zero-shot accuracy (0: skip)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="log zero-shot accuracy on 200 held-out images every N steps (0: only at the end)")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    return train_clip.train(args)
