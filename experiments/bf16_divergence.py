"""Where does bf16 autocast training of the in-context stage blow up? Resume one checkpoint in several precisions.

Copies a run folder's checkpoint at ``--from-step`` (and its metrics) into ``OUT/<name>`` and continues it with
the shared trainer for ``--steps`` more steps, once per ``--variants`` entry (same weights, optimizer state and
data order; only the numerics differ):

- ``fp32``: float32;
- ``bf16``: bf16 autocast, as the demo trains;
- ``bf16-xattn32``: bf16 autocast, but every gated cross-attention block (its layer norm, attention logits and
  softmax, FFW and tanh gates) computed in float32 (``frozenvl.flamingo.cross_attention.FP32_BLOCKS``);

Each step logs the gradient norm before clipping, split by part (resampler; cross-attention q / kv / out
projections; cross-attention FFW; tanh gates; new-token rows), the largest cross-attention logit |q.k|/sqrt(d)
over the step's batches, and the largest |tanh(gate)|. Every ``--eval-every`` steps: the held-out pair loss in
float32.

    python experiments/bf16_divergence.py --run /tmp/pB/flamingo --from-step 100 --steps 100 --out /tmp/div

Ends with ``headline: largest gradient norm bf16 / fp32 = <ratio>x``. Measured (the demo's second stage on the
validation world, step 100 -> 200, AVX512-BF16 CPU, 2 threads): largest norm 196.7 bf16, 240.0 fp32, 224.9 with
fp32 blocks, each at steps 120-121 and >99 % in the tanh gates; held-out pair loss at step 200 0.846 / 0.828 /
0.835; headline 0.8x. Findings are in docs/training.md ("bf16 autocast").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
import yaml

from frozenvl.cli.threads import apply_thread_policy
from frozenvl.flamingo.cross_attention import GatedCrossAttentionBlock, MaskedCrossAttention
from frozenvl.train.config import load_config
from frozenvl.train.loop import CHECKPOINTS_DIR, RUN_CONFIG_NAME, Trainer

PARTS = (("resampler", "resampler"), ("xattn.q", "attn.to_q"), ("xattn.kv", "attn.to_kv"),
         ("xattn.out", "attn.to_out"), ("xattn.norm", "attn.norm"), ("xattn.ffw", ".ff."), ("gates", "_gate"),
         ("new tokens", "embed"), ("new tokens", "lm_head"), ("vision_proj", "vision_proj"))


def part_of(name: str) -> str:
    return next((part for part, key in PARTS if key in name), "other")


class Probe:
    """Records the step's largest cross-attention logit (a forward hook) and per-part gradient norms."""

    def __init__(self, model: torch.nn.Module):
        self.names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        self.max_logit = 0.0
        self.blocks = [m for m in model.modules() if isinstance(m, GatedCrossAttentionBlock)]
        for module in model.modules():
            if isinstance(module, MaskedCrossAttention):
                module.register_forward_hook(self._logits_hook)

    def _logits_hook(self, module, args, output) -> None:
        x, kv, _ = args
        with torch.no_grad():
            B, L, _ = x.shape
            q = module.to_q(module.norm(x)).view(B, L, module.heads, -1).transpose(1, 2).float()
            k = kv[0].float()
            logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, L, S)
            self.max_logit = max(self.max_logit, float(logits.abs().max()))

    def grad_norms(self, params) -> dict[str, float]:
        sums: dict[str, float] = {}
        for p in params:
            if p.grad is not None:
                part = part_of(self.names.get(id(p), ""))
                sums[part] = sums.get(part, 0.0) + float(p.grad.float().pow(2).sum())
        return {part: math.sqrt(v) for part, v in sums.items()}

    def gates(self) -> float:
        values = [float(g.alpha.detach().tanh().abs().max()) for b in self.blocks
                  for g in (b.attn_gate, b.ff_gate) if g is not None and hasattr(g, "alpha")]
        return max(values) if values else 0.0


@contextlib.contextmanager
def fp32_blocks(enabled: bool):
    """Run every GatedCrossAttentionBlock outside autocast, in float32 (inputs cast up, output cast back)."""
    if not enabled:
        yield
        return
    original = GatedCrossAttentionBlock.forward

    def forward(self, x, kv, mask):
        with torch.autocast(x.device.type, enabled=False):
            kv32 = None if kv is None else (kv[0].float(), kv[1].float())
            return original(self, x.float(), kv32, mask).to(x.dtype)

    GatedCrossAttentionBlock.forward = forward
    try:
        yield
    finally:
        GatedCrossAttentionBlock.forward = original


def prepare(run: Path, from_step: int, folder: Path, precision: str, steps: int) -> Path:
    """A copy of ``run`` holding only its checkpoint at ``from_step``, set to continue ``steps`` more steps."""
    if folder.exists():
        shutil.rmtree(folder)
    name = f"step-{from_step:08d}"
    shutil.copytree(run / CHECKPOINTS_DIR / name, folder / CHECKPOINTS_DIR / name)
    tree = yaml.safe_load((run / RUN_CONFIG_NAME).read_text())
    tree["train"].update(run_dir=str(folder), precision=precision, steps=from_step + steps, checkpoint_every=10**9,
                         eval_every=10**9, progress=False)
    path = folder / "variant.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def run_variant(args, name: str) -> list[dict]:
    precision = "fp32" if name == "fp32" else "bf16"
    config_path = prepare(args.run, args.from_step, args.out / name, precision, args.steps)
    trainer = Trainer(load_config(config_path), resume=True)
    probe = Probe(trainer.model)
    clip = torch.nn.utils.clip_grad_norm_
    seen: dict[str, float] = {}

    def recording_clip(params, *a, **k):
        params = list(params)
        seen.update(probe.grad_norms(params))
        return clip(params, *a, **k)

    rows = []
    torch.nn.utils.clip_grad_norm_ = recording_clip
    trainer.task.set_train_mode()
    t0 = time.perf_counter()
    try:
        with fp32_blocks(name == "bf16-xattn32"):
            while trainer.step < args.from_step + args.steps:
                probe.max_logit, seen = 0.0, {}
                metrics = trainer.train_step()
                row = {"step": trainer.step, "grad_norm": metrics["grad_norm"], "loss": metrics["loss"],
                       "max_logit": probe.max_logit, "max_gate": probe.gates(),
                       **{f"grad/{k}": v for k, v in seen.items()}}
                if (trainer.step - args.from_step) % args.eval_every == 0:
                    saved = trainer.config.train.precision
                    trainer.config.train.precision = "fp32"
                    try:
                        row["eval_loss"] = trainer.evaluate()["eval/loss"]
                    finally:
                        trainer.config.train.precision = saved
                    trainer.task.set_train_mode()
                rows.append(row)
                print(json.dumps({"variant": name, **{k: round(v, 4) if isinstance(v, float) else v
                                                      for k, v in row.items()}}), flush=True)
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
        trainer.close()
    print(f"{name}: {args.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder with a checkpoint at --from-step")
    parser.add_argument("--from-step", type=int, required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--variants", nargs="+", default=["bf16", "fp32"],
                        choices=["bf16", "fp32", "bf16-xattn32"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    apply_thread_policy()
    results = {name: run_variant(args, name) for name in args.variants}
    (args.out / "divergence.json").write_text(json.dumps(results, indent=1) + "\n")
    peaks = {name: max(r["grad_norm"] for r in rows) for name, rows in results.items()}
    for name, rows in results.items():
        evals = [(r["step"], round(r["eval_loss"], 3)) for r in rows if "eval_loss" in r]
        worst = max(rows, key=lambda r: r["grad_norm"])
        print(f"{name}: largest gradient norm {peaks[name]:.1f} at step {worst['step']} "
              f"(by part: {', '.join(f'{k[5:]} {v:.1f}' for k, v in worst.items() if k.startswith('grad/'))}; "
              f"largest cross-attention logit that step {worst['max_logit']:.1f}); held-out loss {evals}")
    if "bf16" in peaks and "fp32" in peaks:
        print(f"headline: largest gradient norm bf16 / fp32 = {peaks['bf16'] / peaks['fp32']:.1f}x")


if __name__ == "__main__":
    main()
