"""``frozenvl train``: run or resume a training run described by a YAML config (plus dotted overrides).

Also runnable as ``python -m frozenvl.cli.train`` (what torchrun needs with ``-m``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from frozenvl.cli.devices import add_device_arguments, engine_device, resolve_device, resolve_dtype
from frozenvl.cli.errors import one_line

EXAMPLES = """\
examples:
  frozenvl train --config configs/flamingo_tiny_cpu.yaml
  frozenvl train --config configs/flamingo_tiny_cpu.yaml train.steps=50 optim.lr=3e-4
  frozenvl train --config configs/flamingo_tiny_cpu.yaml --resume          # continue after a kill
  frozenvl train --config configs/flamingo_tiny_cpu.yaml --overwrite       # delete the old run, start again
  frozenvl train --config configs/flamingo_tiny_cpu.yaml data.mixing=round_robin model.flamingo.gating=none
  torchrun --nproc_per_node 2 -m frozenvl.cli.train --config configs/flamingo_tiny_cpu.yaml train.distributed=fsdp
  frozenvl train --config configs/flamingo_tiny_cpu.yaml --device cuda --dtype bfloat16
  frozenvl train --config configs/flamingo_tiny_cpu.yaml --print-config    # the resolved config, then exit

overrides are key.path=value (value parsed as YAML); datasets are addressed by name or index:
  data.datasets.pairs.weight=0.5   data.datasets.0.batch_size=4   model.flamingo.cross_attn_every=2
"""


def describe_sections(schema: type, path: str = "") -> dict[str, list[str]]:
    """The keys of a config dataclass, section by section (``{"model.flamingo": ["cross_attn_every", ...]}``); a
    list of sections is shown once, as ``data.datasets.NAME``."""
    import dataclasses
    import typing

    sections: dict[str, list[str]] = {path: []}
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp, key = hints[f.name], f"{path}.{f.name}" if path else f.name
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            tp, key = typing.get_args(tp)[0], f"{key}.NAME"
        if dataclasses.is_dataclass(tp):
            sections[path].append(f.name + (".NAME.*" if key.endswith(".NAME") else ".*"))
            sections.update(describe_sections(tp, key))
        else:
            sections[path].append(f.name)
    return sections


def epilog() -> str:
    """The examples, then every key of the run config, read from the config classes themselves."""
    import textwrap

    from frozenvl.train.config import RunConfig

    lines = [textwrap.fill(f"{section}: {', '.join(keys)}", width=116, subsequent_indent="    ")
             for section, keys in describe_sections(RunConfig).items() if section]
    return EXAMPLES + "\nkeys (NAME: a dataset's name or index):\n" + "\n".join(lines) + "\nSee docs/training.md.\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frozenvl train",
        description="Train a Flamingo (frozen LM + frozen vision encoder) on a mixture of webdataset shards, on "
                    "one process or under torchrun (DDP or FSDP2). Writes metrics.jsonl, checkpoints (each a "
                    "from_pretrained folder of the model - a Flamingo's trainable weights only - with the trainer's "
                    "state beside it; atomic, last K kept) and the resolved config.yaml into train.run_dir.",
        epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML run config (default: the built-in defaults, which need data.datasets)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in train.run_dir (exactly: weights, optimizer, "
                        "schedule, data position, RNG, the logged averages; a corrupt newest checkpoint is skipped "
                        "for the previous one); starts from scratch if there is none")
    p.add_argument("--overwrite", action="store_true",
                   help="train.run_dir holds a previous run: delete its metrics.jsonl, checkpoints/ and "
                        "tensorboard/ (nothing else) and start again. Without --resume or --overwrite a run folder "
                        "holding a run is refused")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    add_device_arguments(p, "training", devices="cpu or cuda (GPU 0, or GPU LOCAL_RANK under torchrun); sets "
                                                "train.device",
                         default_device="the config's train.device; auto: cuda when a GPU is available, else cpu",
                         dtype_choices=("float32", "bfloat16", "auto"),
                         dtypes="float32, bfloat16 (autocast; the trainable weights stay float32) or auto "
                                "(bfloat16 on a GPU that supports it, else float32)",
                         unset_dtype="the config's train.precision", dtype_of="the training step (train.precision)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return p


def load_with_device(args: argparse.Namespace):
    """The run config of ``--config`` + overrides, with ``--device`` as ``train.device`` and ``--dtype`` as
    ``train.precision`` (``fp32`` | ``bf16``); a flag and an override of the same key is a ``ValueError``, as is a
    device this machine lacks or that the engine cannot train on."""
    import torch

    from frozenvl.train.config import load_config

    overrides = list(args.overrides)
    given = {o.split("=", 1)[0].strip() for o in overrides}
    for flag, value, key in (("--device", args.device, "train.device"), ("--dtype", args.dtype, "train.precision")):
        if value is not None and key in given:
            raise ValueError(f"{flag} and the override {key}= both given: use one")
    if args.device is not None:
        overrides.append(f"train.device={engine_device(resolve_device(args.device))}")
    config = load_config(args.config, overrides)
    if args.dtype is None:
        return config
    device = resolve_device(None if config.train.device == "auto" else config.train.device)
    dtype = resolve_dtype(args.dtype, device)
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"  # auto's float16 (an older GPU): float32
    return load_config(args.config, [*overrides, f"train.precision={precision}"])


def main(argv: list[str] | None = None) -> int:
    from frozenvl.train.config import ConfigError, dump_config

    args = build_parser().parse_intermixed_args(argv)  # overrides may come before and after the options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_with_device(args)
    except ConfigError as e:
        print(f"frozenvl train: config error: {one_line(e)}", file=sys.stderr)
        return 2
    except ValueError as e:  # --device: no such device here, or one the engine does not train on
        print(f"frozenvl train: error: {one_line(e)}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    from frozenvl.train.loop import CheckpointWriteError, NonFiniteLossError, train

    if "LOCAL_WORLD_SIZE" in os.environ:  # torchrun: its processes share the free cores (frozenvl.cli.threads)
        from frozenvl.cli.threads import apply_thread_policy

        logging.getLogger("frozenvl").info(apply_thread_policy(int(os.environ["LOCAL_WORLD_SIZE"])).describe())

    try:
        result = train(config, resume=args.resume, overwrite=args.overwrite)
    except (NonFiniteLossError, CheckpointWriteError) as e:
        print(f"frozenvl train: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:
        print(f"frozenvl train: error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions: one line, the last checkpoint stays intact
        print(f"frozenvl train: error: {one_line(e)}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {result.step} steps in {result.seconds / 60:.1f} min, last loss {result.last_loss}, "
              f"{result.nonfinite_steps} non-finite steps skipped, checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
