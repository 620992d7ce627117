"""Does the visual pathway of a Flamingo learn? A fast, cached-feature training run on synthetic pairs.

The frozen vision encoder runs once per image (features cached in memory); then only the Flamingo's own
parameters (vision projection, resampler, gated cross-attention) train on image-caption pairs, with the frozen
LM in the loop. Every ``--eval-every`` steps it prints the held-out loss with each caption's own visual tokens and
with the visual tokens rolled by one sample (another image's): ``gain = rolled - right`` is what the images are
worth, in nats per token (0 when the model ignores them, see ``frozenvl.eval.reliance``).

``--oracle`` replaces the image features with a clean code of the caption's colours and shapes (a multi-hot
vector, identical for every feature position, plus a little noise): it separates "the adapters cannot learn to
read an informative image signal" from "the encoder's features are hard to read".

    python experiments/visual_pathway.py --world runs/demo/world --steps 150 --gate-lr 2e-2
    python experiments/visual_pathway.py --world runs/demo/world --steps 100 --oracle

Prints one line per evaluation and ends with ``headline: held-out image gain = <nats> nats/token``.
Measurements (2-core CPU) are in docs/evaluation.md ("Does the model look?").
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from frozenvl.data import LoaderConfig, ShardDataset
from frozenvl.data.synth import COLOURS, SHAPES
from frozenvl.eval.reliance import image_reliance
from frozenvl.tasks import FlamingoCollator
from frozenvl.train.config import OptimConfig
from frozenvl.train.optim import build_optimizer, lr_factor, set_lr


@dataclass
class Split:
    features: torch.Tensor  # (N, n_feat, D) frozen-encoder features, one image per sample
    texts: list[str]  # "<image>caption<|endofchunk|>"


def read_pairs(shards: list[Path], n: int) -> list[dict[str, Any]]:
    """The first ``n`` samples of the shards, in order."""
    return list(islice(ShardDataset(shards, LoaderConfig(shuffle_shards=False)), n))


@torch.no_grad()
def encode(model: Any, processor: Any, samples: list[dict[str, Any]], chunk: int = 64) -> Split:
    """Run the frozen vision encoder once per sample (the first image of each pair)."""
    collate = FlamingoCollator(processor)
    feats = []
    for i in range(0, len(samples), chunk):
        pixels = collate(samples[i:i + chunk])["pixel_values"][:, 0]  # (B, [F,] C, H, W) first image
        feats.append(model.vision(pixels.reshape(-1, *pixels.shape[-3:])))  # (B, n_feat, D)
    return Split(torch.cat(feats), [s["text"] for s in samples])


def oracle_features(texts: list[str], n_feat: int, dim: int, seed: int = 0) -> torch.Tensor:
    """(N, n_feat, dim): a block of ``dim // 14`` channels per colour and shape named in the caption."""
    vocab = [*COLOURS, *SHAPES]
    width = dim // len(vocab)
    if width < 1:
        raise ValueError(f"feature dim {dim} is smaller than the {len(vocab)} attributes of the oracle code")
    out = torch.zeros(len(texts), n_feat, dim)
    for i, text in enumerate(texts):
        for j, word in enumerate(vocab):
            if word in text:
                out[i, :, j * width:(j + 1) * width] = 3.0
    g = torch.Generator().manual_seed(seed)
    return out + 0.1 * torch.randn(out.shape, generator=g)


def visual_tokens(model: Any, features: torch.Tensor) -> torch.Tensor:
    """(B, n_feat, D) -> (B, 1, n_tokens, Dv), as :meth:`Flamingo.encode_media` does after the encoder."""
    return model.resampler(model.vision_proj(features[:, None, None]))


def tokenize(processor: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = processor.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]  # (B, L), (B, L)


def held_out_losses(model: Any, processor: Any, split: Split) -> tuple[float, float]:
    """Loss with each caption's own visual tokens, and with the tokens rolled by one sample."""
    ids, mask = tokenize(processor, split.texts)
    with torch.no_grad():
        media = visual_tokens(model, split.features)
    r = image_reliance(model, {"input_ids": ids, "attention_mask": mask, "media": media})
    return r.right, r.shuffled


def train_adapters(model: Any, processor: Any, train: Split, held: Split, steps: int, batch_size: int, lr: float,
                   gate_lr: float | None, warmup: int = 10, eval_every: int = 50, seed: int = 0,
                   log=print) -> list[dict[str, float]]:
    """The training engine's optimizer and schedule (AdamW, weight decay 0.1, linear warmup then cosine to
    0.1 x, gradient clipping 1.0); returns the evaluations."""
    cfg = OptimConfig(lr=lr, gate_lr=gate_lr, weight_decay=0.1, warmup_steps=warmup, schedule="cosine",
                      min_lr_ratio=0.1, grad_clip=1.0)
    opt = build_optimizer(model.named_parameters(), cfg)
    params = [p for group in opt.param_groups for p in group["params"]]
    gates = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("gate.alpha")]
    g = torch.Generator().manual_seed(seed)
    right, rolled = held_out_losses(model, processor, held)
    history = [{"step": 0, "right": right, "rolled": rolled}]
    log(f"step 0: held-out loss {right:.4f} right / {rolled:.4f} rolled")
    model.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        set_lr(opt, lr_factor(step - 1, cfg, steps))
        idx = torch.randint(len(train.texts), (batch_size,), generator=g)
        ids, mask = tokenize(processor, [train.texts[i] for i in idx])
        loss = model(ids, attention_mask=mask, media=visual_tokens(model, train.features[idx]), labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if step % eval_every == 0 or step == steps:
            right, rolled = held_out_losses(model, processor, held)
            gate_values = [round(float(p.detach().tanh()), 3) for p in gates]
            history.append({"step": step, "right": right, "rolled": rolled, "train_loss": float(loss.detach())})
            log(f"step {step}: train loss {float(loss.detach()):.3f}, "
                f"held-out {right:.4f} right / {rolled:.4f} rolled, "
                f"gain {rolled - right:.4f} ({time.perf_counter() - t0:.0f} s; tanh gates {gate_values})")
    return history


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", type=Path, required=True, help="a synthetic world (frozenvl data synth / demo)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--gate-lr", type=float, default=None, help="learning rate of the tanh gates (default: lr)")
    p.add_argument("--train-pairs", type=int, default=1600)
    p.add_argument("--held-out", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--oracle", action="store_true", help="caption attribute codes instead of image features")
    p.add_argument("--xattn-kind", default="gated_dense", choices=["gated_dense", "vanilla"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from frozenvl.flamingo import build

    torch.manual_seed(args.seed)
    shards = sorted((args.world / "train").glob("pairs-*.tar"))
    if len(shards) < 2:
        raise SystemExit(f"{args.world}/train needs at least two pairs-*.tar shards (the first is held out)")
    # The demo's Flamingo (src/frozenvl/demo.py): SmolLM2-135M + EfficientNet-Lite0, small resampler.
    model, processor = build(cross_attn_every=4, resampler="perceiver", resampler_dim=256, resampler_depth=2,
                             num_latents=16, max_images=5, max_length=192, xattn_kind=args.xattn_kind)
    t = time.perf_counter()
    train = encode(model, processor, read_pairs(shards[1:], args.train_pairs))
    held = encode(model, processor, read_pairs(shards[:1], args.held_out))
    if len(held.texts) < 2:
        raise SystemExit(f"{shards[0]} has fewer than 2 samples to hold out")
    print(f"encoded {len(train.texts)} + {len(held.texts)} images in {time.perf_counter() - t:.0f} s "
          f"(features {tuple(train.features.shape[1:])})")
    if args.oracle:
        n_feat, dim = train.features.shape[1:]
        train.features = oracle_features(train.texts, n_feat, dim, seed=1)
        held.features = oracle_features(held.texts, n_feat, dim, seed=2)
    history = train_adapters(model, processor, train, held, args.steps, args.batch_size, args.lr, args.gate_lr,
                             eval_every=args.eval_every, seed=args.seed)
    last = history[-1]
    print(f"headline: held-out image gain = {last['rolled'] - last['right']:.4f} nats/token "
          f"({'oracle features' if args.oracle else 'EfficientNet features'}, {args.steps} steps, lr {args.lr}, "
          f"gate_lr {args.gate_lr or args.lr})")


if __name__ == "__main__":
    main()
