"""Options that were removed: refused with what replaced them, instead of argparse's bare "unrecognized".

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(prog="radcot x")
    >>> add_removed(p, "--old", "use --new instead")
    >>> p.parse_args([]).__dict__
    {}
"""
from __future__ import annotations

import argparse


class _Removed(argparse.Action):
    """Fails the parse with ``PROG: error: OPTION was removed: WHY``; hidden from ``--help``."""

    def __init__(self, option_strings, dest, why: str = "", **kwargs):
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.why = why

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was removed: {self.why}")


def add_removed(parser: argparse.ArgumentParser, option: str, why: str) -> None:
    """Make ``option`` (with or without a value) fail with ``why``; it takes no space in ``--help``."""
    parser.add_argument(option, action=_Removed, why=why)
