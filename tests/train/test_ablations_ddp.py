"""Every ablation switch trains under 2-process DDP as the engine wraps it (no ``find_unused_parameters``).

DDP reduces the gradients of every trainable parameter; one that the forward never reaches (before: the tanh gate
left in the model with ``gating="none"``) makes the next step fail with "Expected to have finished reduction in the
prior iteration". Two checks: in one process, one loss backward reaches every trainable parameter of each
ablation; under torchrun (2 processes, gloo), each ablation runs two optimizer steps through the engine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from trainfixtures import tiny_config

from frozenvl.tasks import build_task

# Every switch of FlamingoConfig that changes which modules exist or which run (Flamingo paper, Table 3), and
# those of the model section (ModelConfig): each as the run-config overrides that turn it on.
ABLATIONS: dict[str, list[str]] = {
    "gating_none": ["model.flamingo.gating=none"],
    "vanilla_xattn": ["model.flamingo.xattn_kind=vanilla"],
    "vanilla_ungated": ["model.flamingo.xattn_kind=vanilla", "model.flamingo.gating=none"],
    "attend_all_previous": ["model.flamingo.only_attend_immediate=false"],
    "placement_openflamingo": ["model.flamingo.placement=openflamingo"],
    "placement_upper": ["model.flamingo.placement=upper"],
    "every_layer": ["model.flamingo.cross_attn_every=1"],
    "resampler_mlp": ["model.flamingo.resampler=mlp"],
    "resampler_transformer": ["model.flamingo.resampler=transformer"],
    "resampler_projected": ["model.flamingo.resampler_dim=16"],
    "no_temporal_embeddings": ["model.flamingo.max_frames=null"],
    "lora": ["model.flamingo.lora_rank=2"],
    "random_lm": ["model.lm_init=random"],
    "train_lm": ["model.train_lm=true"],
    "train_vision": ["model.train_vision=true"],
    "gradient_checkpointing": ["model.gradient_checkpointing=true"],
}


def test_the_switches_cover_every_choice_of_flamingo_config():
    # The config's own validation names the allowed values: a choice added there must get a case here.
    from frozenvl.config import ConfigError
    from frozenvl.flamingo.config import FlamingoConfig

    overrides = {o for case in ABLATIONS.values() for o in case}
    for key in ("gating", "xattn_kind", "resampler", "placement"):
        with pytest.raises(ConfigError, match=f"{key} must be one of") as error:
            FlamingoConfig(**{key: "no-such-choice"})
        allowed = str(error.value).split("must be one of ")[1].split(";")[0].split(", ")
        default = getattr(FlamingoConfig(), key)
        assert default in allowed
        for value in allowed:
            assert value == default or f"model.flamingo.{key}={value}" in overrides, (key, value)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_one_backward_reaches_every_trainable_parameter(tmp_path, world, name):
    from frozenvl.testing import images

    config, _ = tiny_config(world, tmp_path / name, tuple(ABLATIONS[name]))
    task = build_task(config.model)
    task.set_train_mode()
    # an image-text pair, an interleaved sample and a video, as one mixed training batch does
    batch = task.collate([
        {"key": "pair", "kind": "pairs", "text": "<image>a red cube<|endofchunk|>", "images": images(1, seed=1)},
        {"key": "doc", "kind": "interleaved", "text": "<image>a cube<|endofchunk|>then<image>two<|endofchunk|>",
         "images": images(2, seed=2)},
        {"key": "clip", "kind": "video", "text": "<image>a ball moves<|endofchunk|>", "images": [images(2, seed=3)]},
    ])
    task.loss(task.model, batch)["loss"].backward()
    unused = [n for n, p in task.model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"{name}: trainable parameters the forward never reaches: {unused[:8]}"
    if "model.flamingo.gating=none" in ABLATIONS[name]:
        assert not [n for n, _ in task.model.named_parameters() if n.endswith("_gate.alpha")]


DIST_SCRIPT = """
import json, sys
import torch.distributed as dist
from frozenvl.train.config import load_config
from frozenvl.train.loop import train
dist.init_process_group("gloo")
config_path, run_root, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
outcome = {}
for name, overrides in cases.items():
    try:
        result = train(load_config(config_path, [*overrides, f"train.run_dir={run_root}/{name}"]))
        outcome[name] = {"steps": result.step, "loss": result.last_loss}
    except Exception as e:  # report the switch that failed and go on with the others
        outcome[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
if dist.get_rank() == 0:
    with open(f"{run_root}/outcome.json", "w") as f:
        json.dump(outcome, f)
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_ablation_trains_two_steps_under_two_process_ddp(tmp_path, world):
    steps = 2  # DDP notices a parameter without gradient when the second step starts
    _, cfg_path = tiny_config(world, tmp_path / "base", steps=steps, grad_accum=1, checkpoint_every=0,
                              log_every=100)
    script = tmp_path / "ablations.py"
    script.write_text(DIST_SCRIPT)
    cases = {"paper": [], **ABLATIONS}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(_free_port()), str(script), str(cfg_path), str(tmp_path),
                          json.dumps(cases)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    failed = {name: o["error"] for name, o in outcome.items() if "error" in o}
    assert not failed, failed
    assert outcome.keys() == cases.keys()
    for name, o in outcome.items():
        assert o["steps"] == steps and o["loss"] is not None, (name, o)


def test_a_checkpoint_from_before_gateless_none_still_loads():
    """Checkpoints written while gating="none" still built an (unused) alpha per gate load: the alphas are dropped;
    anything else unexpected is still refused."""
    from frozenvl.testing import tiny_flamingo

    model, _ = tiny_flamingo(gating="none")
    saved = model.saved_state_dict()
    fused = sorted({n.rsplit(".attn.", 1)[0] for n in saved if ".attn." in n})
    legacy = {**saved, **{f"{prefix}.attn_gate.alpha": torch.zeros(1) for prefix in fused}}
    model.load_saved_state_dict(legacy)
    model.load_trainable(legacy)
    with pytest.raises(KeyError, match="unexpected"):
        model.load_saved_state_dict({**legacy, "resampler.extra": torch.zeros(1)})
