"""Errors the user can fix. The bottom layer: it imports nothing of asyrp, so any module may raise them and the CLI
(``asyrp.cli``) prints them as one line with exit code 2."""


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""
