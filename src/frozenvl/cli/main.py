"""The ``frozenvl`` command: the top-level parser; each command group is a module of this package with ``--help``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from frozenvl.cli import demo, generate
from frozenvl.cli.errors import run_command


def _delegate(module: str):
    def run(args) -> int:
        return importlib.import_module(module).main(args.rest)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frozenvl",
        description="Vision-language learning on frozen language models: Flamingo and FLAME.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo.add_parser(sub)
    generate.add_parser(sub)

    for name, (module, text) in DELEGATED.items():
        p = sub.add_parser(name, help=text, add_help=False, description=text)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(module))
    return parser


DELEGATED = {
    name: (module, text) for name, module, text in [
        ("train", "frozenvl.cli.train", "train a Flamingo from a YAML config (torchrun for several processes)"),
        ("eval", "frozenvl.cli.eval", "few-shot evaluation of a Flamingo (captioning, VQA, classification, video)"),
        ("data", "frozenvl.cli.data", "write the synthetic world, convert datasets to shards"),
        ("flame", "frozenvl.cli.flame", "FLAME: offline facet embeddings and evaluation"),
        ("compare", "frozenvl.cli.compare", "FLAME vs its CLIP baseline on the synthetic world, equal data and steps"),
    ]
}


def _apply_threads() -> None:
    """Torch threads = the cores actually free (frozenvl.cli.threads); a run config's train.threads still wins."""
    from frozenvl.cli.threads import apply_thread_policy

    logging.getLogger("frozenvl").info(apply_thread_policy().describe())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        _apply_threads()
    except ValueError as e:  # FROZENVL_THREADS / OMP_NUM_THREADS not a positive integer
        print(f"frozenvl: error: {e}", file=sys.stderr)
        return 2
    if argv and argv[0] in DELEGATED:  # these subcommands own their whole argument list, --help included
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        module = importlib.import_module(DELEGATED[argv[0]][0])
        return run_command(argv[0], lambda: module.main(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    return run_command(args.command, lambda: args.func(args))
