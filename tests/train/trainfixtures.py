"""Shared helpers for the training tests: a tiny synthetic world and a tiny run config (no download)."""

from __future__ import annotations

from pathlib import Path

from frozenvl.data import WorldConfig, generate_world
from frozenvl.train.config import load_config

TINY_FLAMINGO = dict(cross_attn_every=2, resampler_depth=1, num_latents=4, resampler_dim_head=8, resampler_heads=2,
                     xattn_dim_head=8, xattn_heads=2, ff_mult=2, max_frames=4, max_length=96)


def make_world(root: Path) -> Path:
    generate_world(root, WorldConfig(n_pairs=48, n_interleaved=24, n_video=12, image_size=32, shard_size=12,
                                     frames=2, splits=("pairs", "interleaved", "video")), progress=False, log=None)
    return root / "train"


def tiny_tree(world: Path, run_dir: Path, **train) -> dict:
    return {
        "model": {"lm": "tiny:llama", "vision": "tiny", "flamingo": dict(TINY_FLAMINGO)},
        "data": {
            "datasets": [
                {"name": "pairs", "shards": str(world / "pairs-*.tar"), "weight": 1.0, "batch_size": 2},
                {"name": "interleaved", "shards": str(world / "interleaved-*.tar"), "weight": 0.5, "batch_size": 2,
                 "max_images": 2},
                {"name": "video", "shards": str(world / "video-*.tar"), "weight": 0.5, "batch_size": 1},
            ],
            "shuffle_buffer": 4,
        },
        "optim": {"lr": 3e-3, "warmup_steps": 1, "weight_decay": 0.1},
        "train": {"run_dir": str(run_dir), "steps": 4, "grad_accum": 2, "log_every": 1, "checkpoint_every": 2,
                  "keep_checkpoints": 2, "progress": False, "threads": 1, **train},
    }


def write_config(path: Path, tree: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(tree))
    return path


def tiny_config(world: Path, run_dir: Path, overrides: tuple[str, ...] = (), **train):
    import yaml

    cfg_path = run_dir.parent / f"{run_dir.name}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(tiny_tree(world, run_dir, **train)))
    return load_config(cfg_path, overrides), cfg_path
