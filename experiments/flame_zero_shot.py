"""Why FLAME loses compositional zero-shot to the CLIP baseline on the synthetic world: ablations (issue 17).

Two stages, the second reusing the first's stored embeddings:

    nice -n 19 python experiments/flame_zero_shot.py embed --out runs/flame_zs --n-pairs 1000 --n-eval 200
    nice -n 19 python experiments/flame_zero_shot.py sweep --out runs/flame_zs --steps 200 [--max-pairs N]

``embed`` generates the world (seed 0: ``pairs``, ``heldout``, ``classification``) and a validation world (seed 1:
its ``heldout`` split only: other images of the same six unseen compositions), embeds the 36 class prompts
("a red circle.") in the ``raw`` and ``short`` prompt sets, then runs SmolLM2-135M over the training captions
(FDA, ``--prompts``, default ``short``) and keeps the facet embeddings of several hidden layers from that one
pass (``--layers``). It saves one file per 64 captions (``OUT/parts-<prompts>/``), so a rerun resumes and the
sweep can use the prefix embedded so far (``--max-pairs``).

``sweep`` first measures the collinearity of the embeddings (cosine between different captions' facets, raw and
centred; the share of the top principal direction; whether class embeddings are additive: e(c s') + e(c' s) -
e(c' s') nearest to e(c s)), then trains the FLAME image tower (the ``ComparisonConfig`` defaults: ViT patch 8 /
width 128 / 4 layers, head 512, AdamW lr 1e-3 wd 0.1, 50 warm-up steps, cosine to 5 %, grad clip 1, batch 64,
3 sampled facets, sigmoid loss) in memory against those embeddings, one row per setting (``--rows``: JSON
{name: {centre, loss, scale, bias, layer, prompts, class_prompts, aggregates}}), and scores held-out zero-shot
top-1 on the validation world and on the test world (plus all 36 compositions). Settings are compared on
validation; the test column is printed once per row, never used to choose. Prints one table (n and 95 % Wilson
half-widths) and writes ``OUT/sweep.json`` after every row.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CHUNK = 64  # captions per saved part
LM = "embedded:smollm2-135m"
LAYERS = (8, 15, 22, 29, 30)  # hidden_states indices of SmolLM2-135M (30 blocks; 29 = the default, 30 = final norm)


def world_paths(out: Path) -> tuple[Path, Path]:
    return out / "world", out / "world-val"


def make_worlds(out: Path, n_pairs: int, n_eval: int, image_size: int) -> None:
    from frozenvl.data import WorldConfig, generate_world

    test, val = world_paths(out)
    if not (test / "world.json").exists():
        generate_world(test, WorldConfig(seed=0, image_size=image_size, n_pairs=n_pairs, n_eval=n_eval,
                                         shard_size=500, splits=("pairs", "heldout", "classification")),
                       progress=False, log=None)
    if not (val / "world.json").exists():
        generate_world(val, WorldConfig(seed=1, image_size=image_size, n_pairs=1, n_eval=n_eval, shard_size=500,
                                        splits=("heldout",)), progress=False, log=None)


class LayersEncoder:
    """A FacetTextEncoder that keeps several hidden layers of its one pass: encode -> (B, K, L, D)."""

    def __init__(self, encoder, layers):
        self.encoder, self.layers = encoder, list(layers)
        layers_ = self.layers

        def hidden(**inputs):
            out = encoder.base(**inputs, output_hidden_states=True)
            return torch.cat([out.hidden_states[i] for i in layers_], dim=-1), None  # (B, T, L*D)

        encoder._hidden = hidden

    def encode(self, captions):
        x = self.encoder.encode(list(captions))  # (B, K, L*D)
        return x.reshape(x.shape[0], x.shape[1], len(self.layers), -1)  # (B, K, L, D)


def class_names(world: Path) -> list[str]:
    from frozenvl.flame.synthetic_eval import with_article, world_classification

    return [with_article(c) for c in world_classification(world, "heldout", 16, limit=1).classnames]


def embed(args) -> None:
    from frozenvl.data.synth import world_split_shards
    from frozenvl.flame.caption_sources import iter_captions
    from frozenvl.flame.text_encoder import FacetTextEncoder

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    make_worlds(out, args.n_pairs, args.n_eval, args.image_size)
    print(f"worlds: {time.perf_counter() - t:.0f} s", flush=True)
    test, _ = world_paths(out)
    captions = list(iter_captions(world_split_shards(test, "pairs")))
    names = class_names(test)
    encoders = {}
    for prompts in ("raw", "short"):  # class prompts in both sets first (cheap), every kept layer
        path = out / f"classes-{prompts}.pt"
        if not path.exists():
            enc = encoders[prompts] = LayersEncoder(FacetTextEncoder.from_source(LM, prompts), args.layers)
            torch.save({"classnames": names, "layers": list(args.layers),
                        "facets": enc.encode([f"{n}." for n in names]).half()}, path)
    for prompts in args.prompts:
        enc = encoders.get(prompts) or LayersEncoder(FacetTextEncoder.from_source(LM, prompts), args.layers)
        parts = out / f"parts-{prompts}"
        parts.mkdir(exist_ok=True)
        for i in range(0, len(captions), CHUNK):  # one file per CHUNK captions: a rerun resumes
            part = parts / f"{i:06d}.pt"
            if part.exists():
                continue
            t = time.perf_counter()
            chunk = captions[i:i + CHUNK]
            facets = torch.cat([enc.encode([c for _, c in chunk[j:j + 16]]) for j in range(0, len(chunk), 16)])
            torch.save({"keys": [k for k, _ in chunk], "captions": [c for _, c in chunk], "facets": facets.half(),
                        "layers": list(args.layers), "seconds": time.perf_counter() - t}, part)
            print(f"{prompts}: {i + len(chunk)}/{len(captions)} captions ({time.perf_counter() - t:.0f} s for "
                  f"{len(chunk)})", flush=True)


def load_store(out: Path, prompts: str, max_pairs: int | None) -> dict | None:
    """The embedded prefix of the training captions: {keys, facets (N, K, L, D), layers, seconds}."""
    files = sorted((out / f"parts-{prompts}").glob("*.pt"))
    parts = [torch.load(f) for f in files]
    if not parts:
        return None
    keys = [k for p in parts for k in p["keys"]]
    n = min(len(keys), max_pairs or len(keys))
    captions = [c for p in parts for c in p["captions"]]
    return {"keys": keys[:n], "captions": captions[:n], "facets": torch.cat([p["facets"] for p in parts])[:n],
            "layers": parts[0]["layers"],
            "seconds": sum(p["seconds"] for p in parts) * n / len(keys)}


def load_pairs(world: Path, keys: list[str], image_size: int) -> torch.Tensor:
    """The training images in the order of the stored keys: (N, 3, S, S)."""
    from frozenvl.data.synth import iter_world_split
    from frozenvl.flame.inference import image_transform

    transform = image_transform(image_size)
    by_key = {r["key"]: transform(r["images"][0]) for r in iter_world_split(world, "pairs")}
    return torch.stack([by_key[k] for k in keys])


def collinearity(x: torch.Tensor) -> dict[str, float]:
    """Mean and std of the cosine between different rows of (N, D), and the share of variance of the top
    principal direction after centring."""
    z = F.normalize(x.float(), dim=-1)
    cos = z @ z.T
    off = cos[~torch.eye(len(z), dtype=torch.bool)]
    c = x.float() - x.float().mean(0)
    s = torch.linalg.svdvals(c) ** 2
    return {"mean_cos": off.mean().item(), "std_cos": off.std().item(), "top_pc_share": (s[0] / s.sum()).item()}


def analogy(classes: torch.Tensor, names: list[str]) -> dict[str, float]:
    """Is the LLM's class embedding additive? For each held-out "c s" and each seen c', s' with "c s'", "c' s",
    "c' s'" all seen: e(c s') + e(c' s) - e(c' s') is scored by cosine against the 36 class embeddings (C, D);
    top-1 % of hitting "c s", and of hitting it among the 6 held-out classes only (chance 1/36, 1/6)."""
    from frozenvl.data.synth import HELDOUT

    index = {tuple(n.split()[-2:]): i for i, n in enumerate(names)}
    z = F.normalize(classes.float(), dim=-1)
    held = [index[h] for h in HELDOUT]
    hits, hits_held, n = 0, 0, 0
    for c, s in HELDOUT:
        for c2, s2 in index:
            if c2 == c or s2 == s or {(c, s2), (c2, s), (c2, s2)} & set(HELDOUT):
                continue
            q = F.normalize(z[index[(c, s2)]] + z[index[(c2, s)]] - z[index[(c2, s2)]], dim=-1)
            sims = z @ q
            hits += int(sims.argmax() == index[(c, s)])
            hits_held += int(held[int(sims[held].argmax())] == index[(c, s)])
            n += 1
    return {"top1": 100 * hits / n, "top1_among_heldout": 100 * hits_held / n, "n": n}


def build_model(loss: str, scale: float | None, bias: float | None, image_size: int, tower: tuple[int, ...]):
    from frozenvl.backbones.vit import VisionTransformerConfig
    from frozenvl.flame.model import FlameModel, flame_config

    patch, width, layers, heads, head_hidden = tower
    config = flame_config("tiny", text_dim=576, head_hidden=head_hidden, sampled_facets=3, loss=loss,
                          vision=VisionTransformerConfig(image_size, patch, width, layers, heads))
    model = FlameModel(config)
    if scale is not None:
        model.loss.logit_scale.data.fill_(math.log(scale))
    if bias is not None:
        model.loss.logit_bias.data.fill_(bias)
    return model


def _fit(model, n: int, forward, steps: int, seed: int, batch_size: int):
    """The one training recipe of every row: AdamW lr 1e-3 (the engine's optimizer, warmup 50, cosine to 5 %),
    gradient clip 1.0, reshuffled epochs of ``batch_size`` of the ``n`` items; ``forward(idx, generator)`` gives
    the model's output dict with its ``loss``."""
    from frozenvl.train.config import OptimConfig
    from frozenvl.train.optim import build_optimizer, lr_factor, set_lr

    optim = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=50, schedule="cosine", min_lr_ratio=0.05)
    opt = build_optimizer(model.named_parameters(), optim)
    g = torch.Generator().manual_seed(seed)
    order, pos, last = torch.randperm(n, generator=g), 0, None
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        set_lr(opt, lr_factor(step, optim, steps))
        out = forward(idx, g)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last = out["loss"].item()
    return model.eval(), {"final_loss": last, "logit_scale": model.loss.logit_scale.exp().item()}


def train_row(images: torch.Tensor, text: torch.Tensor, row: dict, steps: int, tower: tuple[int, ...],
              seed: int = 0, batch_size: int = 64):
    """FLAME image tower trained against fixed text facets (N, K, D); the engine's optimizer, schedule, clip."""
    torch.manual_seed(seed)
    model = build_model(row.get("loss", "sigmoid"), row.get("scale"), row.get("bias"), images.shape[-1],
                        tower).train()
    return _fit(model, len(images), lambda idx, g: model(images[idx], text[idx], generator=g), steps, seed,
                batch_size)


def train_clip(images: torch.Tensor, captions: list[str], steps: int, tower: tuple[int, ...], seed: int = 0,
               batch_size: int = 64):
    """The CLIP baseline (``ComparisonConfig``'s text tower: BPE, 2 layers x 128) on the same images, tower and
    recipe as :func:`train_row`."""
    from frozenvl.backbones.vit import VisionTransformerConfig
    from frozenvl.flame.baseline import ClipBaseline, baseline_config

    torch.manual_seed(seed)
    patch, width, layers, heads, head_hidden = tower
    model = ClipBaseline(baseline_config("tiny", 576, {"width": 128, "layers": 2, "heads": 4}, {"max_length": 77},
                                         vision=VisionTransformerConfig(images.shape[-1], patch, width, layers, heads),
                                         head_hidden=head_hidden)).train()
    ids = model.tokenize(captions)["input_ids"]  # (N, 77)
    return _fit(model, len(images), lambda idx, g: model(images[idx], ids[idx]), steps, seed, batch_size)


def zero_shot(model, data, classes: torch.Tensor, aggregate: str) -> dict:
    """Held-out top-1 of ``model`` with class facets (C, K, D) (already centred if the row centres)."""
    from frozenvl.eval.results import wilson_half_width
    from frozenvl.flame.evaluate import classification_metrics
    from frozenvl.flame.inference import aggregate_facets, encode_image, similarity

    sim = similarity(encode_image(model, data.images), aggregate_facets(classes, aggregate))
    top1 = classification_metrics(sim, data.labels)["top1"]
    n = len(data.labels)
    # The wrong answers: the share that keep the true colour, or the true shape ("red circle" -> "red square").
    pred = sim.argmax(dim=1).tolist()
    wrong = [(data.classnames[p].split(), data.classnames[t].split()) for p, t in zip(pred, data.labels) if p != t]
    return {"top1": top1, "n": n, "half_width": 100 * wilson_half_width(round(top1 * n / 100), n),
            "wrong_same_colour": 100 * sum(p[0] == t[0] for p, t in wrong) / max(1, len(wrong)),
            "wrong_same_shape": 100 * sum(p[-1] == t[-1] for p, t in wrong) / max(1, len(wrong))}


def sweep(args) -> None:
    from frozenvl.flame.synthetic_eval import world_classification

    out = Path(args.out)
    torch.set_num_threads(args.threads)
    test, val = world_paths(out)
    stores = {p: s for p in ("short", "raw") if (s := load_store(out, p, args.max_pairs)) is not None}
    classes = {p: torch.load(out / f"classes-{p}.pt") for p in ("raw", "short")}
    layers = classes["raw"]["layers"]
    names = classes["raw"]["classnames"]
    results = {"collinearity": {}, "rows": [], "steps": args.steps, "tower": args.tower}
    for p, store in stores.items():  # the first 500 captions' facets
        for li, layer in enumerate(layers):
            x = F.normalize(store["facets"][:500, :, li].float().reshape(-1, 576), dim=-1)
            results["collinearity"][f"train {p} layer {layer}"] = {
                "raw": collinearity(x), "centred": collinearity(x - x.mean(0))}
    for p in ("raw", "short"):
        for li, layer in enumerate(layers):
            x = F.normalize(classes[p]["facets"][:, :, li].float(), dim=-1).mean(1)  # (C, D)
            results["collinearity"][f"classes {p} layer {layer}"] = {
                "raw": collinearity(x), "centred": collinearity(x - x.mean(0)),
                "analogy": analogy(x, names), "analogy_centred": analogy(x - x.mean(0), names)}
    rows = [dict(name=n, **r) for n, r in json.loads(args.rows).items()] if args.rows else DEFAULT_ROWS
    if rows:
        images = load_pairs(test, stores["short"]["keys"], args.image_size)
        results["n_pairs"] = len(images)
        evals = {"val": world_classification(val, "heldout", args.image_size),
                 "test": world_classification(test, "heldout", args.image_size),
                 "test_all36": world_classification(test, "classification", args.image_size)}
        assert all([f"an {c}" if c[0] in "aeiou" else f"a {c}" for c in e.classnames] == names
                   for e in evals.values())
    for row in rows:
        t = time.perf_counter()
        prompts, layer = row.get("prompts", "short"), row.get("layer", 29)
        if prompts not in stores:
            continue
        li = layers.index(layer)
        if row.get("clip"):  # the CLIP baseline: its own text tower on the same captions
            model, training = train_clip(images, stores[prompts]["captions"], args.steps, tuple(args.tower))
            cls = model.text_encoder().encode([f"{n}." for n in names])  # (C, 1, D)
            scores = {"clip/mean_embedding": {split: zero_shot(model, data, cls, "mean_embedding")
                                              for split, data in evals.items()}}
            results["rows"].append({**row, "training": training, "scores": scores,
                                    "seconds": round(time.perf_counter() - t, 1)})
            print(json.dumps(results["rows"][-1]), flush=True)
            (out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
            continue
        text = F.normalize(stores[prompts]["facets"][:, :, li].float(), dim=-1)  # (N, K, D), as a store holds them
        centre = text.mean(dim=(0, 1)) if row.get("centre") else torch.zeros(text.shape[-1])  # (D,)
        model, training = train_row(images, text - centre, row, args.steps, tuple(args.tower))
        scores = {}
        for cls_prompts in row.get("class_prompts", ["raw"]):
            cls = F.normalize(classes[cls_prompts]["facets"][:, :, li].float(), dim=-1) - centre  # (C, K, D)
            for aggregate in row.get("aggregates", ["mean_embedding"]):
                scores[f"{cls_prompts}/{aggregate}"] = {split: zero_shot(model, data, cls, aggregate)
                                                        for split, data in evals.items()}
        results["rows"].append({**row, "training": training, "scores": scores,
                                "seconds": round(time.perf_counter() - t, 1)})
        print(json.dumps(results["rows"][-1]), flush=True)
        (out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    print(format_sweep(results))


DEFAULT_ROWS = [dict(name=name, **row) for name, row in {  # the rows of docs/flame.md's ablation table
    "default (short, layer 29, sigmoid 10/-10)": {"class_prompts": ["raw", "short"],
                                                  "aggregates": ["mean_embedding", "mean_similarity"]},
    "centred": {"centre": True, "class_prompts": ["raw", "short"], "aggregates": ["mean_embedding", "mean_similarity"]},
    "sigmoid init 100/-100": {"scale": 100.0, "bias": -100.0},
    "infonce (scale 1/0.07)": {"loss": "infonce"},
    "centred, layer 22": {"centre": True, "layer": 22},
    "centred, layer 30 (final norm)": {"centre": True, "layer": 30},
    "layer 22": {"layer": 22},
    "centred, layer 15": {"centre": True, "layer": 15},
    "CLIP baseline (BPE, 2 x 128)": {"clip": True},
}.items()]


def format_sweep(results: dict) -> str:
    lines = ["collinearity (cosine between different captions' facets: the first <= 500 training captions x K "
             "facets, and the 36 class prompts):",
             f"{'embeddings':<26} {'mean cos':>9} {'std':>6} {'top PC share':>13} {'centred mean cos':>17} "
             "analogy top-1 % of 36 (raw, centred), of the 6 held-out (raw, centred)"]
    for name, c in results["collinearity"].items():
        ana = (f" {c['analogy']['top1']:>5.1f} {c['analogy_centred']['top1']:>5.1f} "
               f"{c['analogy']['top1_among_heldout']:>5.1f} {c['analogy_centred']['top1_among_heldout']:>5.1f}"
               if "analogy" in c else "")
        lines.append(f"{name:<26} {c['raw']['mean_cos']:>9.3f} {c['raw']['std_cos']:>6.3f} "
                     f"{c['raw']['top_pc_share']:>13.3f} {c['centred']['mean_cos']:>17.3f}{ana}")
    lines += ["", "held-out zero-shot top-1 % +- 95 % Wilson half-width (chance 2.8 %)",
              f"{'row':<44} {'class prompts/rule':<26} {'val':>12} {'test':>12} {'test all 36':>12} {'loss':>6} "
              f"{'errors same colour/shape (test)':>32}"]
    for row in results["rows"]:
        for rule, s in row["scores"].items():
            cells = [f"{s[k]['top1']:5.1f}+-{s[k]['half_width']:4.1f}" for k in ("val", "test", "test_all36")]
            lines.append(f"{row['name']:<44} {rule:<26} {cells[0]:>12} {cells[1]:>12} {cells[2]:>12} "
                         f"{row['training']['final_loss']:>6.3f} "
                         f"{s['test']['wrong_same_colour']:>15.0f}/{s['test']['wrong_same_shape']:.0f} %")
    n = {k: v["n"] for k, v in results["rows"][0]["scores"][next(iter(results["rows"][0]["scores"]))].items()} \
        if results["rows"] else {}
    lines.append(f"n: {n}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--out", default="runs/flame_zs")
    e.add_argument("--n-pairs", type=int, default=1000)
    e.add_argument("--n-eval", type=int, default=200)
    e.add_argument("--image-size", type=int, default=64)
    e.add_argument("--layers", type=int, nargs="+", default=list(LAYERS))
    e.add_argument("--prompts", nargs="+", default=["short"])
    e.add_argument("--threads", type=int, default=1)
    w = sub.add_parser("sweep")
    w.add_argument("--out", default="runs/flame_zs")
    w.add_argument("--steps", type=int, default=200)
    w.add_argument("--image-size", type=int, default=64)
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--tower", type=int, nargs=5, default=[8, 128, 4, 4, 512],
                   metavar=("PATCH", "WIDTH", "LAYERS", "HEADS", "HEAD_HIDDEN"),
                   help="the image tower (default: ComparisonConfig's, 8 128 4 4 512)")
    w.add_argument("--name", default="sweep", help="results file: OUT/NAME.json")
    w.add_argument("--max-pairs", type=int, help="train on the first N embedded captions (default: all)")
    w.add_argument("--rows", help='JSON {name: {centre, loss, scale, bias, layer, prompts, class_prompts, '
                                  'aggregates}} (default: the built-in rows)')
    args = p.parse_args(argv)
    if args.stage == "embed":
        embed(args)
    else:
        sweep(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
