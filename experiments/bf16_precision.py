"""Where does bf16 autocast lose precision in a Flamingo step? One batch, the gradients of fp32 as the reference.

The demo's Flamingo (frozen SmolLM2-135M + EfficientNet-Lite0, small Perceiver) on a batch of held-out pairs of a
synthetic world, with its gates opened (``--gate``, as after training; at 0 the images cannot matter). For each
setting it reports the loss, the largest logit error, and per group of trainable tensors the relative error of the
gradient against fp32: ||g - g_fp32|| / ||g_fp32||. Settings: plain bf16 autocast; bf16 with the output head in
float32; bf16 with the gates and the trainable blocks' layer norms in float32; bf16 with all of them
(forward hooks of this script: ``keep_float32``).

    python experiments/bf16_precision.py --world runs/demo/world [--batch 16] [--gate 0.5]

Ends with ``headline: gradient error of plain bf16 / with float32 parts = <ratio>x``.

Measured (2-core CPU, under load; batch 16 held-out pairs, gates at 0.5, fresh trainable weights): fp32 loss
7.696, logits up to 34.7 in size. Plain bf16: loss -0.003, largest logit error 1.44, gradient error 2.6 % overall
(gates 1.1 %, resampler 2.8 %, cross-attention 2.4 %, its FFW 2.5 %, new-token rows 1.9 %). Head in float32:
2.4 % (logit error still 1.41); gates and norms in float32: 3.7 %; all three: 3.8 % (headline 0.66x). Nothing
overflows (bf16 has float32's range); the error is made in the frozen LM's bf16 matmuls, before the head, and
float32 islands around the small trainable parts do not reduce it.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from frozenvl.data import LoaderConfig, ShardDataset
from frozenvl.data.synth import world_split_shards
from frozenvl.flamingo import build
from frozenvl.tasks import FlamingoCollator

# ------------------------------------------------------------------ float32 islands inside an autocast region
# keep_float32(modules): each module runs in float32 inside torch.autocast (floating inputs cast to float32,
# autocast off during its forward, hence its backward); outside autocast nothing changes.
_ATTR = "_frozenvl_float32_autocast_state"


def _to_float32(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
        return value.float()
    if isinstance(value, tuple):
        return tuple(_to_float32(v) for v in value)
    if isinstance(value, list):
        return [_to_float32(v) for v in value]
    return value


def _before(module: nn.Module, args: tuple, kwargs: dict):
    states = []
    for device_type in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device_type):
            states.append(device_type)
            torch.set_autocast_enabled(device_type, False)
    stack = getattr(module, _ATTR, None)
    if stack is None:
        stack = []
        object.__setattr__(module, _ATTR, stack)
    stack.append(states)  # a stack: a module may be called inside its own forward (recursion, checkpointing)
    if not states:
        return None
    return _to_float32(args), {k: _to_float32(v) for k, v in kwargs.items()}


def _after(module: nn.Module, args: tuple, kwargs: dict, output):
    for device_type in getattr(module, _ATTR).pop():
        torch.set_autocast_enabled(device_type, True)
    return output


def keep_float32(modules: Iterable[nn.Module]) -> int:
    """Run each module in float32 even inside ``torch.autocast``; returns how many were hooked (once each)."""
    n = 0
    for module in modules:
        if getattr(module, "_frozenvl_keeps_float32", False):
            continue
        module.register_forward_pre_hook(_before, with_kwargs=True)
        module.register_forward_hook(_after, with_kwargs=True, always_call=True)
        object.__setattr__(module, "_frozenvl_keeps_float32", True)
        n += 1
    return n


def float32_modules(model: nn.Module, head: bool = True, gates: bool = True, norms: bool = True) -> list[nn.Module]:
    """The parts of a Flamingo kept float32 under autocast: its LM's output head, the tanh gates, the layer norms
    of its trainable blocks (resampler and cross-attention; the LM's own RMS norms already compute in float32)."""
    from frozenvl.flamingo.cross_attention import TanhGate

    out: list[nn.Module] = []
    if head:
        out.append(model.lm.get_output_embeddings())
    for name, module in model.named_modules():
        trainable_block = name.startswith(("resampler", "vision_proj")) or ".xattn." in f".{name}."
        if gates and isinstance(module, TanhGate):
            out.append(module)
        elif norms and trainable_block and isinstance(module, nn.LayerNorm):
            out.append(module)
    return out


# ------------------------------------------------------------------------------------------------ experiment

GROUPS = {"gates": ("gate.alpha",), "resampler": ("resampler.", "vision_proj."), "xattn attention": (".attn.",),
          "xattn ffw": (".ff.",), "new-token rows": ("new_weight", "new_bias")}


def group_of(name: str) -> str:
    for group, needles in GROUPS.items():
        if any(n in name for n in needles):
            return group
    return "other"


def run(model, batch, bf16: bool) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
                    labels=batch["input_ids"])
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(out.loss.detach()), out.logits.detach().float(), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True, help="a synthetic world folder (frozenvl data synth)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--gate", type=float, default=0.5, help="tanh-gate alpha to open the gates with")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, processor = build(lm="embedded:smollm2-135m", vision="embedded:efficientnet-lite0", cross_attn_every=4,
                             resampler="perceiver", resampler_dim=256, resampler_depth=2, num_latents=16,
                             max_frames=8, max_images=5, max_length=192)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.alpha"):
                p.fill_(args.gate)
    model.train()
    model.lm.eval()
    model.vision.eval()
    samples = list(islice(ShardDataset(world_split_shards(Path(args.world), "pairs")[:1],
                                       LoaderConfig(shuffle_shards=False)), args.batch))
    batch = FlamingoCollator(processor)(samples)
    loss32, logits32, grads32 = run(model, batch, bf16=False)
    print(f"fp32: loss {loss32:.5f}; logits up to {float(logits32.abs().max()):.1f} in size")
    settings = {"bf16": {}, "bf16 + fp32 head": {"head": True, "gates": False, "norms": False},
                "bf16 + fp32 gates/norms": {"head": False, "gates": True, "norms": True},
                "bf16 + fp32 head/gates/norms": {"head": True, "gates": True, "norms": True}}
    errors: dict[str, float] = {}
    for label, parts in settings.items():
        hooked = []
        if parts:
            hooked = [m for m in float32_modules(model, **parts)]
            handles_before = {id(m): (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for m in hooked}
            keep_float32(hooked)
        loss, logits, grads = run(model, batch, bf16=True)
        for m in hooked:  # undo, for the next setting
            pre, post = handles_before[id(m)]
            m._forward_pre_hooks.clear()
            m._forward_pre_hooks.update(pre)
            m._forward_hooks.clear()
            m._forward_hooks.update(post)
            object.__setattr__(m, "_frozenvl_keeps_float32", False)
        per_group: dict[str, list[float]] = {}
        for name, g32 in grads32.items():
            num, den = float((grads[name].float() - g32).pow(2).sum()), float(g32.pow(2).sum())
            acc = per_group.setdefault(group_of(name), [0.0, 0.0])
            acc[0] += num
            acc[1] += den
        rel = {g: (v[0] / v[1]) ** 0.5 if v[1] > 0 else 0.0 for g, v in per_group.items()}
        total = (sum(v[0] for v in per_group.values()) / sum(v[1] for v in per_group.values())) ** 0.5
        errors[label] = total
        print(f"{label:30s} loss {loss:.5f} (err {loss - loss32:+.5f}); max logit err "
              f"{float((logits - logits32).abs().max()):.3f}; gradient rel. error: all {total:.4f}, "
              + ", ".join(f"{g} {e:.4f}" for g, e in sorted(rel.items())))
    print(f"headline: gradient error of plain bf16 / with float32 parts = "
          f"{errors['bf16'] / errors['bf16 + fp32 head/gates/norms']:.2f}x")


if __name__ == "__main__":
    main()
