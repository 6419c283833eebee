"""The command line: every subcommand has --help, `python -m asyrp` works, exit codes are honest."""

import subprocess
import sys

import pytest

from asyrp.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: asyrp {command}")


def test_top_level_help_and_unknown_command(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert err == (f"asyrp: error: unknown command 'no-such-command'; commands: {', '.join(COMMANDS)} "
                   "(see asyrp --help)\n")


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "asyrp", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("asyrp ")
