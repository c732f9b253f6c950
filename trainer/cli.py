"""`signfeat` subcommands of the trainer package (registered by pipeline/cli.py)."""

from __future__ import annotations


def register(sub) -> None:
    """Add this package's subcommands to ``sub`` (argparse subparsers). Each subparser sets
    ``handler=function(args) -> int`` with set_defaults; SignfeatError from a handler is a one-line error."""
