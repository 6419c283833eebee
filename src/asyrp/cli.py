"""The ``asyrp`` command line. Each subcommand lives in the module that owns the concept; that module defines

    def configure_parser(parser: argparse.ArgumentParser) -> None   # add its arguments
    def main(args: argparse.Namespace) -> int                        # run; return the exit code

and is imported only when its subcommand runs (so ``asyrp --help`` stays fast). Errors that are the user's to fix
(missing weights, bad files, unknown attributes) are raised as :class:`UserError` or ``ValueError`` subclasses and
printed as one line with exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("asyrp.demo", "run the whole method end to end (default: the offline shapes world, no download)"),
    "download": ("asyrp.weights", "download and verify weights (DDPM, CLIP, Inception, official directions)"),
    "prepare-lmdb": ("asyrp.data", "build a CelebA-HQ style LMDB from an image folder"),
    "precompute": ("asyrp.inversion", "DDIM-invert images once into the inversion cache"),
    "train": ("asyrp.train", "train a direction (delta block) for an attribute"),
    "edit": ("asyrp.edit", "edit images with one or several trained directions"),
    "evaluate": ("asyrp.metrics", "S_dir, FID and KID of an edit run"),
    "figures": ("asyrp.figures", "regenerate the report's figures from saved runs"),
    "report": ("asyrp.report", "regenerate the report's Markdown tables from result JSONs"),
    "run-experiment": ("asyrp.experiments", "train → edit → evaluate every run of an experiment family"),
    "train-backbone": ("asyrp.worlds.train_backbone", "train the tiny DDPM of the shapes world"),
    "train-clip": ("asyrp.worlds.train_clip", "train the tiny CLIP of the shapes world"),
    "bench": ("asyrp.bench", "benchmark training and editing: reference vs fast mode"),
    "app": ("asyrp.app", "an editor in the browser: pick an image, directions and strengths, see the edit"),
}


from asyrp.errors import UserError  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyrp", description="Asyrp: semantic editing in the h-space of a frozen "
                                     "diffusion model. `asyrp demo` runs everything offline on a CPU.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _version() -> str:
    from asyrp import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # handles --help / --version / unknown commands
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"asyrp {name}", description=COMMANDS[name][1])
    module.configure_parser(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        print("asyrp: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError) as e:
        message = " ".join(str(e).split())  # always one line
        print(f"asyrp {name}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
