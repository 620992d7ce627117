"""The command-line wing: ``frozenvl COMMAND``, one module per command group (``data``, ``train``, ``eval``,
``flame``, ``generate``, ``demo``) plus the FLAME-vs-CLIP comparison job. Nothing below this package imports it."""

from frozenvl.cli.main import DELEGATED, build_parser, main

__all__ = ["DELEGATED", "build_parser", "main"]
