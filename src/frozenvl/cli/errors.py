"""The command line's one error type: a user mistake, printed as one line naming the problem (exit code 2)."""


class CLIError(Exception):
    """A user mistake: printed as one line, exit code 2."""
