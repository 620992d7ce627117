"""The command line's errors: a user mistake is printed as one line naming the problem (exit code 2).

Every command runs through :func:`run_command`: a :class:`CLIError`, a ``ValueError`` (a config error included),
an ``OSError`` (a missing, unreadable or unwritable file, a full disk) or a decompression-bomb image raised
anywhere inside becomes the one line ``frozenvl COMMAND: error: ...``. Other exceptions are bugs and keep their
traceback. ``FROZENVL_TRACEBACK=1`` shows the traceback of a one-line error too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from PIL import Image


class CLIError(Exception):
    """A user mistake: printed as one line, exit code 2."""


# The exceptions that describe bad input or an unusable file, not a bug: one line each. PIL's decompression-bomb
# error (an image declaring more pixels than PIL's limit) derives from neither ValueError nor OSError.
USER_ERRORS: tuple[type[BaseException], ...] = (CLIError, ValueError, OSError, Image.DecompressionBombError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (YAML and JSON errors span several); its type when it has none."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def run_command(name: str, command: Callable[[], int | None]) -> int:
    """Run ``command()``; its exit code, or 2 after printing a user error as one line on stderr."""
    try:
        return int(command() or 0)
    except USER_ERRORS as e:
        if os.environ.get("FROZENVL_TRACEBACK"):
            raise
        print(f"frozenvl {name}: error: {one_line(e)}", file=sys.stderr)
        return 2
