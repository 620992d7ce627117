"""The command-line wing: ``frozenvl COMMAND``, one module per command group (``generate``, ``demo``, ``train``,
``eval``, ``data``, ``flame``, ``compare``). Nothing below this package imports it."""

from frozenvl.cli.main import DELEGATED, build_parser, main

__all__ = ["DELEGATED", "build_parser", "main"]
