"""frozenvl's few-shot evaluation against OpenFlamingo's own evaluation code path, on the same weights, CPU
(float32 by default; ``--dtype bfloat16`` casts both models after checking them equal in float32).

The model: OpenFlamingo's architecture built by OpenFlamingo's own factory (``create_model_and_transforms``, the
open-flamingo package is installed as a test oracle) around the embedded default's LM (SmolLM2-135M) and a small
random open_clip ViT (OpenFlamingo takes only open_clip towers, so not the default's EfficientNet: 224 px, patch
32, width 256, 4 layers), cross-attention every 4 LM layers; its trainable tensors perturbed (gates open) and
converted to frozenvl with :func:`frozenvl.flamingo.openflamingo.load_openflamingo`. Both models are checked to give
the same scores before anything is timed.

OpenFlamingo's side follows its evaluation model (``open_flamingo/eval/models/open_flamingo.py``, which the pip
package does not ship; read from its repository, re-written here against the installed model classes):

- classification (``get_rank_classifications`` with ``use_cache=True``): the batch of full prompts (left padded)
  goes through the model once with the images cached, then for each class name its tokens go one call per token,
  the batch's rows together, on the prompts' KV cache; the log-softmax over the prompt's and the class's logits;
  the class names are scored as written (no ``<|endofchunk|>``). The prompts' cache is cut back to the prompts
  after each class name: under transformers 4, which OpenFlamingo was written for, the cache was a tuple that the
  calls did not grow;
- generation (``get_outputs``): ``Flamingo.generate`` (transformers' ``generate`` on the LM with the images
  cached), greedy, batch 1, from the full prompt.

frozenvl's side is the harness's: the demonstrations encoded once (``FewShotScorer.encode_prefix``), then
``score_candidates_batch`` (queries batched on the prefix; candidates as ``name<|endofchunk|>``, each query's
packed as a tree in one row) and ``generate_ids`` (greedy, on the prefix). "one row per candidate" is the same
call with the trees turned off (the layout before them, and the one ALiBi and sliding-window LMs keep). Each
method runs once per round, the rounds interleaved, and the median round is reported, so machine load hits every
method alike; the ratios are the figures to quote, by wall time and by this process's CPU time (the work done,
whatever else runs on the machine).

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vs_openflamingo.py [--profile]``. ``--profile`` prints
where frozenvl's greedy batch-1 generation from the full prompt spends its time (torch.profiler, by operator and
input shape). The last line is the headline.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VISION = "frozenvl-bench-vit-256"
VISION_CONFIG = {"embed_dim": 256,
                 "vision_cfg": {"image_size": 224, "layers": 4, "width": 256, "head_width": 64, "patch_size": 32},
                 "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 64, "heads": 1, "layers": 1}}


def build_models(every: int):
    """(OpenFlamingo model, its tokenizer, its image transform, frozenvl model, frozenvl processor)."""
    import open_clip
    from open_flamingo.src.factory import create_model_and_transforms
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from frozenvl.backbones.language import resolve_lm_source
    from frozenvl.flamingo.openflamingo import load_openflamingo

    lm_dir = resolve_lm_source("embedded:smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{VISION}.json"
        path.write_text(json.dumps(VISION_CONFIG))
        open_clip.add_model_config(path)
    torch.manual_seed(0)
    of_model, image_processor, of_tokenizer = create_model_and_transforms(
        VISION, None, lm_dir, lm_dir, cross_attn_every_n_layers=every, use_local_files=True)
    torch.manual_seed(1)
    with torch.no_grad():  # "trained": open gates, the trainable tensors moved
        for name, p in of_model.named_parameters():
            if name.endswith(("attn_gate", "ff_gate")):
                p.fill_(0.5)
            elif "perceiver" in name or "gated_cross_attn" in name:
                p.add_(torch.randn_like(p) * 0.02)
    state = {k: v.clone() for k, v in of_model.state_dict().items()
             if k.startswith("perceiver.") or ".gated_cross_attn_layer." in k or k.endswith("embed_tokens.weight")}
    model, processor = load_openflamingo(state, lm=AutoModelForCausalLM.from_pretrained(lm_dir),
                                         vision=copy.deepcopy(of_model.vision_encoder),
                                         tokenizer=AutoTokenizer.from_pretrained(lm_dir), cross_attn_every=every)
    of_tokenizer.padding_side = "left"
    return of_model.eval(), of_tokenizer, image_processor, model.eval(), processor


class OpenFlamingoEval:
    """OpenFlamingo's evaluation calls (see the module docstring) on its installed model classes."""

    def __init__(self, model, tokenizer, image_processor):
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.dtype = torch.float32  # of the pixels, as its evaluation casts them to the model's precision
        # transformers 5's generate may call the LM without attention_mask, which OpenFlamingo's LM mixin requires
        # (transformers 4 always passed it): the one shim, a default of None.
        lm = model.lang_encoder
        forward = lm.forward
        lm.forward = lambda input_ids=None, attention_mask=None, **kwargs: forward(input_ids, attention_mask, **kwargs)

    def _images(self, batch: list[list]) -> torch.Tensor:  # -> (B, T_img, 1, C, H, W), zero images as padding
        per_row = max(len(row) for row in batch)
        out = None
        for i, row in enumerate(batch):
            for j, image in enumerate(row):
                pixels = self.image_processor(image)
                if out is None:
                    out = torch.zeros((len(batch), per_row, 1, *pixels.shape), dtype=pixels.dtype)
                out[i, j, 0] = pixels
        return out.to(self.dtype)

    def _text(self, batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(batch, padding="longest", truncation=True, return_tensors="pt", max_length=2000)
        return enc["input_ids"], enc["attention_mask"].bool()

    @torch.inference_mode()
    def rank_classifications(self, texts: list[str], images: list[list], class_names: list[str],
                             normalize_length: bool = True) -> torch.Tensor:  # -> (B, classes)
        vision_x = self._images(images)
        ids, mask = self._text(texts)
        self.model.cache_media(input_ids=ids, vision_x=vision_x)
        context = self.model(vision_x=None, lang_x=ids, attention_mask=mask, clear_conditioned_layers=False,
                             use_cache=True)
        context_logits, cache = context.logits, context.past_key_values  # (B, L, V)
        seen = ids.shape[1]
        scores = []
        for name in class_names:
            tokens = self.tokenizer(name, add_special_tokens=False, return_tensors="pt")["input_ids"]
            tokens = tokens.repeat(len(texts), 1)  # (B, n)
            logits = []
            for t in range(tokens.shape[1]):  # one call per token, on the prompts' cache
                out = self.model(vision_x=None, lang_x=tokens[:, t:t + 1], attention_mask=None,
                                 clear_conditioned_layers=False, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                logits.append(out.logits)
            if hasattr(cache, "crop"):  # transformers 4's tuple cache did not grow: the prompts' cache again
                cache.crop(-tokens.shape[1])
                assert cache.get_seq_length() == seen
            logp = torch.log_softmax(torch.cat([context_logits, *logits], dim=1), dim=-1)
            n = tokens.shape[1]
            token_logp = logp[:, -n - 1:-1].gather(2, tokens.unsqueeze(-1)).squeeze(-1)  # (B, n)
            scores.append(token_logp.mean(1) if normalize_length else token_logp.sum(1))
        self.model.uncache_media()
        return torch.stack(scores).T

    @torch.inference_mode()
    def generate(self, texts: list[str], images: list[list], max_new_tokens: int,
                 num_beams: int = 1) -> list[list[int]]:
        vision_x = self._images(images)
        ids, mask = self._text(texts)
        out = self.model.generate(vision_x, ids, mask, min_new_tokens=0, max_new_tokens=max_new_tokens,
                                  num_beams=num_beams, length_penalty=1.0)
        return out[:, ids.shape[1]:].tolist()


def _random_images(n: int, seed: int) -> list:
    """``n`` random 256 x 256 RGB images (PIL: each side's own transform prepares them)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(n)]


def _median_rounds(methods: dict, rounds: int, cpu: dict[str, float] | None = None) -> dict[str, float]:
    """Seconds of each method: the median of ``rounds`` rounds, the methods interleaved within a round. ``cpu``
    receives the median CPU seconds of this process (the work done, whatever else runs on the machine)."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpus: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(rounds):
        for name, fn in methods.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            cpus[name].append(time.process_time() - start_cpu)
            print(f"    (round {r + 1}: {name}: {times[name][-1]:.1f} s, {cpus[name][-1]:.1f} CPU s, load average "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
    if cpu is not None:
        cpu.update({name: statistics.median(t) for name, t in cpus.items()})
    return {name: statistics.median(t) for name, t in times.items()}


def _strip(row: list[int], stops: set[int], pad: int) -> list[int]:
    cut = next((i for i, t in enumerate(row) if t in stops), len(row))
    return [t for t in row[:cut] if t != pad]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=100, help="the first N of OpenFlamingo's ImageNet class names")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--queries", type=int, default=8, help="queries per round (OpenFlamingo's batch: 8)")
    parser.add_argument("--of-batch", type=int, default=8, help="OpenFlamingo's default --batch_size")
    parser.add_argument("--single-queries", type=int, default=2,
                        help="queries timed by the one-query-per-call methods (their queries/s is per query)")
    parser.add_argument("--candidate-batch-size", type=int, default=400,
                        help="candidates per forward: 400 holds 4 queries' trees of 100 (in bfloat16 1.254 vs 1.122 "
                             "queries/s at 128, one tree per forward)")
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--every", type=int, default=4, help="cross-attention every N LM layers")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="both models cast to this dtype after the float32 agreement check (OpenFlamingo's "
                             "--precision bf16 casts its whole model the same way)")
    parser.add_argument("--profile", action="store_true", help="profile frozenvl's greedy batch-1 generation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from open_flamingo.eval.classification_utils import IMAGENET_CLASSNAMES

    from frozenvl.constants import END_OF_CHUNK
    from frozenvl.eval.scoring import FewShotScorer

    start = time.perf_counter()
    of_model, of_tokenizer, image_processor, model, processor = build_models(args.every)
    reference = OpenFlamingoEval(of_model, of_tokenizer, image_processor)
    scorer = FewShotScorer(model, processor, candidate_batch_size=args.candidate_batch_size)
    rows = FewShotScorer(model, processor, candidate_batch_size=args.candidate_batch_size)
    rows._packs_trees = lambda cache: False  # one row per (query, candidate) pair, each a copy of the query's cache
    print(f"models built in {time.perf_counter() - start:.0f} s: SmolLM2-135M (embedded default LM) + open_clip ViT "
          f"(random, width 256, 4 layers), OpenFlamingo architecture, cross-attention every {args.every} layers; "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    names = list(IMAGENET_CLASSNAMES[:args.classes])
    demo_images, query_images = _random_images(args.shots, 1), _random_images(args.queries, 2)
    context = "".join(f"<image>Output:{names[(7 * i) % len(names)]}{END_OF_CHUNK}" for i in range(args.shots))
    query = "<image>Output:"
    texts, images = [context + query] * args.queries, [demo_images + [im] for im in query_images]

    # The same model and the same token ids: scores of name<|endofchunk|> agree before anything is timed.
    prefix = scorer.encode_prefix(context, demo_images)
    ours = scorer.score_candidates_batch(prefix, [query] * 2, [[im] for im in query_images[:2]], [names[:10]] * 2)
    theirs = reference.rank_classifications(texts[:2], images[:2], [n + END_OF_CHUNK for n in names[:10]])
    by_rows = rows.score_candidates_batch(prefix, [query] * 2, [[im] for im in query_images[:2]], [names[:10]] * 2)
    gap = (torch.tensor(ours) - theirs).abs().max().item()
    print(f"scores of the same model, frozenvl vs OpenFlamingo (10 classes, 2 queries): max |diff| = {gap:.1e} "
          f"(one row per candidate: {(torch.tensor(by_rows) - theirs).abs().max().item():.1e})")
    if gap > 1e-3:
        raise SystemExit("the two models disagree: the comparison would not be of the same weights")
    if args.dtype != "float32":  # checked equal in float32 above; both cast alike, the images with them
        dtype = getattr(torch, args.dtype)
        of_model.to(dtype)
        model.to(dtype)
        reference.dtype = dtype
        prefix = scorer.encode_prefix(context, demo_images)
        ours = scorer.score_candidates_batch(prefix, [query] * 2, [[im] for im in query_images[:2]],
                                             [names[:10]] * 2)
        theirs = reference.rank_classifications(texts[:2], images[:2], [n + END_OF_CHUNK for n in names[:10]])
        same = (torch.tensor(ours).argmax(1) == theirs.float().argmax(1)).float().mean().item()
        print(f"both cast to {args.dtype}: max |score diff| = {(torch.tensor(ours) - theirs.float()).abs().max():.1e}, "
              f"same top class for {same:.0%} of the 2 queries")

    def of_one() -> None:
        for t, im in zip(texts[:args.single_queries], images[:args.single_queries]):
            reference.rank_classifications([t], [im], names)

    def of_batched() -> None:
        for s in range(0, args.queries, args.of_batch):
            reference.rank_classifications(texts[s:s + args.of_batch], images[s:s + args.of_batch], names)

    def ours_one() -> None:
        p = scorer.encode_prefix(context, demo_images)
        for im in query_images[:args.single_queries]:
            scorer.score_candidates(p, query, [im], names)

    def ours_batched() -> None:
        p = scorer.encode_prefix(context, demo_images)
        scorer.score_candidates_batch(p, [query] * args.queries, [[im] for im in query_images],
                                      [names] * args.queries)

    def ours_rows() -> None:
        p = rows.encode_prefix(context, demo_images)
        rows.score_candidates_batch(p, [query] * args.queries, [[im] for im in query_images], [names] * args.queries)

    secs = _median_rounds({"OpenFlamingo, one query per call": of_one,
                           f"OpenFlamingo, batch of {args.of_batch}": of_batched,
                           "frozenvl, one query per call": ours_one,
                           "frozenvl, batched, one row per candidate": ours_rows,
                           "frozenvl, queries batched": ours_batched}, args.rounds, cls_cpu := {})
    counts = {"OpenFlamingo, one query per call": args.single_queries, "frozenvl, one query per call":
              args.single_queries}
    qps = {k: counts.get(k, args.queries) / v for k, v in secs.items()}
    print(f"[1] classification, {args.shots}-shot, {args.classes} class names, {args.queries} queries "
          f"({args.single_queries} one per call), median of {args.rounds} interleaved round(s) (measured under load)")
    base = qps[f"OpenFlamingo, batch of {args.of_batch}"]
    cpu_qps = {k: counts.get(k, args.queries) / v for k, v in cls_cpu.items()}
    cpu_base = cpu_qps[f"OpenFlamingo, batch of {args.of_batch}"]
    for name, value in qps.items():
        print(f"    {name:<40} {value:7.3f} queries/s  ({value / base:5.2f}x OpenFlamingo batch {args.of_batch}; "
              f"by CPU time {cpu_qps[name] / cpu_base:5.2f}x)")

    # [2] greedy generation, batch 1, from the same few-shot prompt
    stops, pad = {model.end_of_chunk_token_id, model.eos_token_id}, model.pad_token_id
    ours_tokens = scorer.generate_ids(prefix, [query], [[query_images[0]]], args.new_tokens, num_beams=1)[0]
    theirs_tokens = _strip(reference.generate(texts[:1], images[:1], args.new_tokens)[0], stops, pad)
    print(f"[2] greedy generation, batch 1, {args.shots}-shot prompt, <= {args.new_tokens} new tokens "
          f"({len(ours_tokens)} generated); same tokens: {ours_tokens == theirs_tokens}")
    full = processor([texts[0]], [images[0]])

    gen = _median_rounds({  # the harness encodes a group's demonstrations once: each query costs generate_ids alone
        "OpenFlamingo generate": lambda: reference.generate(texts[:1], images[:1], args.new_tokens),
        "frozenvl, prefix reused": lambda: scorer.generate_ids(prefix, [query], [[query_images[0]]],
                                                               args.new_tokens, num_beams=1),
        "frozenvl generate, full prompt": lambda: model.generate(**full, max_new_tokens=args.new_tokens),
    }, args.rounds, gen_cpu := {})
    for name, s in gen.items():
        print(f"    {name:<40} {s:7.3f} s  ({gen['OpenFlamingo generate'] / s:5.2f}x OpenFlamingo; by CPU time "
              f"{gen_cpu['OpenFlamingo generate'] / gen_cpu[name]:5.2f}x)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model.generate(**full, max_new_tokens=args.new_tokens)
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20))
    gen_ratio = gen["OpenFlamingo generate"] / gen["frozenvl, prefix reused"]
    cls_ratio = qps["frozenvl, queries batched"] / base
    print(f"greedy batch-1 generation, frozenvl (prefix reused) vs OpenFlamingo = {gen_ratio:.2f}x "
          f"(full prompt: {gen['OpenFlamingo generate'] / gen['frozenvl generate, full prompt']:.2f}x)")
    print(f"headline: {args.classes}-class {args.shots}-shot classification queries/s, frozenvl batched vs "
          f"OpenFlamingo batch {args.of_batch} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores) = "
          f"{cls_ratio:.1f}x (by CPU time {cpu_qps['frozenvl, queries batched'] / cpu_base:.1f}x)")


if __name__ == "__main__":
    main()
