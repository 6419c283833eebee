"""The ``asyrp`` command line. Each subcommand lives in the module that owns the concept; that module defines

    def configure_parser(parser: argparse.ArgumentParser) -> None   # add its arguments
    def main(args: argparse.Namespace) -> int                        # run; return the exit code

and is imported only when its subcommand runs (so ``asyrp --help`` stays fast). :func:`main` is the one place that
turns errors into messages, so that no traceback reaches a user:

- bad input — an argument argparse rejects, :class:`UserError`, ``ValueError`` (missing weights, bad files, unknown
  attributes, out-of-range values), a missing file — one line ``asyrp CMD: error: ...`` on stderr, exit code 2;
- an environment fault — disk full, permission denied, read-only file system, any other ``OSError`` — one line
  naming the file and the fix, exit code 1 (what was written stays complete: every file is renamed into place);
- a closed stdout (``asyrp train --list-attributes | head``) — silent, exit code 1, as other Unix tools;
- anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys
import warnings

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("asyrp.cli.demo", "run the whole method end to end (default: the offline shapes world, no download)"),
    "download": ("asyrp.cli.download", "download and verify weights (DDPM, CLIP, Inception, official directions)"),
    "prepare-lmdb": ("asyrp.cli.prepare_lmdb", "build a CelebA-HQ style LMDB from an image folder"),
    "precompute": ("asyrp.cli.precompute", "DDIM-invert images once into the inversion cache"),
    "train": ("asyrp.cli.train", "train a direction (delta block) for an attribute"),
    "edit": ("asyrp.cli.edit", "edit images with one or several trained directions"),
    "evaluate": ("asyrp.cli.evaluate", "S_dir, FID and KID of an edit run"),
    "figures": ("asyrp.cli.figures", "regenerate the report's figures from saved runs"),
    "report": ("asyrp.cli.report", "regenerate the report's Markdown tables from result JSONs"),
    "run-experiment": ("asyrp.cli.run_experiment", "train → edit → evaluate every run of an experiment family"),
    "train-backbone": ("asyrp.cli.train_backbone", "train the tiny DDPM of the shapes world"),
    "train-clip": ("asyrp.cli.train_clip", "train the tiny CLIP of the shapes world"),
    "bench": ("asyrp.cli.bench", "benchmark training and editing: reference vs fast mode"),
    "app": ("asyrp.cli.app", "an editor in the browser: pick an image, directions and strengths, see the edit"),
}


from asyrp.errors import UserError  # noqa: F401
from asyrp import __version__


class UsageError(UserError):
    """An argument argparse rejects (raised instead of argparse's usage block + exit, so main() prints one line)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises :class:`UsageError` (one line) instead of printing the whole usage, and a
    comma-separated list that starts with a negative number (``--strengths -1,0,1``) is a value, not an option."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unsigned = r"(\d+|\d*\.\d+)([eE][-+]?\d+)?"
        self._negative_number_matcher = re.compile(rf"^-{unsigned}(,\s*-?{unsigned})*$")

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


# what to do about an environment fault, by errno
FAULT_FIXES = {errno.ENOSPC: "free disk space or write to another folder, then run the command again (finished "
                             "files are kept)",
               errno.EDQUOT: "free space within your quota or write to another folder, then run the command again",
               errno.EACCES: "check the permissions of that path or write to another folder",
               errno.EPERM: "check the permissions of that path or write to another folder",
               errno.EROFS: "the file system is read-only: write to another folder"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyrp", description="Asyrp: semantic editing in the h-space of a frozen "
                                     "diffusion model. `asyrp demo` runs everything offline on a CPU.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _version() -> str:
    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        _error("", f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)} (see asyrp --help)")
        return 2
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # handles --help / --version
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sub = _Parser(prog=f"asyrp {name}", description=COMMANDS[name][1])
    module.configure_parser(sub)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning(name)  # format only: a caller recording warnings still records them
    try:
        args = sub.parse_args(argv[1:])
        code = int(module.main(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
        return code
    except KeyboardInterrupt:
        print("asyrp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        _error(name, str(e) if not isinstance(e, OSError) else _os_message(e))
        return 2
    except OSError as e:
        fix = FAULT_FIXES.get(e.errno)
        _error(name, _os_message(e) + (f"; {fix}" if fix else ""))
        return 1
    finally:
        warnings.formatwarning = formatwarning


def _one_line_warning(name: str):
    """``warnings.formatwarning`` for the CLI: ``asyrp NAME: warning: MESSAGE`` without the source line."""
    def format(message, category, filename, lineno, line=None) -> str:
        return f"asyrp {name}: warning: {' '.join(str(message).split())}\n"
    return format


def _close_progress_bars() -> None:
    """End the progress bars an error interrupted, so that the message starts on a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _error(name: str, message: str) -> None:
    """``asyrp NAME: error: MESSAGE`` on stderr; a message of several lines (a list of missing files) keeps them."""
    _close_progress_bars()
    lines = [" ".join(line.split()) for line in message.splitlines() if line.strip()] or ["(no message)"]
    print(f"{' '.join(filter(None, ('asyrp', name)))}: error: " + "\n  ".join(lines), file=sys.stderr)


def _os_message(e: OSError) -> str:
    """"<strerror>: <file>" (not Python's "[Errno 28] ..." form)."""
    what = e.strerror or str(e)
    return f"{what}: {e.filename}" if e.filename else what


def _silence_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null so that the interpreter's final flush does not
    raise a second BrokenPipeError (the recipe of the Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a real file (a test's capture): nothing will flush into a closed pipe


if __name__ == "__main__":
    sys.exit(main())
