"""The shortcuts of cached decoding equal the plain computation they replace."""

import pytest
import torch
import torch.nn.functional as F

from frozenvl.flamingo.cross_attention import MaskedCrossAttention
from frozenvl.flamingo.generation import _best_continuations
from frozenvl.flamingo.media_mask import build_media_mask, single_image_mask

# token_time, token doc, media docs of 4 rows: sees image 3 / image 1 / an image of another document (none) /
# no image yet (none) / a padding image (none)
TIME = torch.tensor([3, 1, 2, 0, 3])
DOCS = torch.tensor([0, 0, 1, 0, 0])
MEDIA_DOCS = torch.tensor([[0, 0, 0], [0, 0, -1], [0, 0, 0], [0, 0, 0], [0, 0, -1]])


def test_single_image_mask_equals_the_full_mask_for_one_token():
    n = 4
    full = build_media_mask(TIME.unsqueeze(1), DOCS.unsqueeze(1), MEDIA_DOCS, n, True, torch.float32)
    one = single_image_mask(TIME, DOCS, MEDIA_DOCS, n, torch.float32)
    assert one.has_media.view(-1).tolist() == full.has_media.view(-1).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    allowed = full.attn_bias[:, 0, 0] == 0  # (B, T*n)
    for b in range(len(TIME)):
        if one.has_media[b]:  # the named image's n keys are exactly the allowed ones
            i = int(one.image_index[b])
            assert allowed[b].nonzero().view(-1).tolist() == list(range(i * n, (i + 1) * n))
        else:
            assert not allowed[b].any()


def _attend(index_time: torch.Tensor, media_docs: torch.Tensor, docs: torch.Tensor):
    torch.manual_seed(0)
    attn = MaskedCrossAttention(dim=32, dim_visual=16, dim_head=8, heads=4).eval()
    B, T, n = len(index_time), media_docs.shape[1], 5
    kv = attn.project_media(torch.randn(B, T, n, 16))
    x = torch.randn(B, 1, 32)
    full = build_media_mask(index_time.unsqueeze(1), docs.unsqueeze(1), media_docs, n, True, torch.float32)
    one = single_image_mask(index_time, docs, media_docs, n, torch.float32)
    with torch.no_grad():
        return attn(x, kv, full), attn(x, kv, one)


def test_cross_attention_over_the_visible_image_equals_the_masked_one():
    # rows at different images (a gather), including rows that see none (exactly zero)
    masked, direct = _attend(TIME, MEDIA_DOCS, DOCS)
    assert torch.allclose(masked, direct, atol=1e-6)
    assert torch.equal(direct[2:], torch.zeros_like(direct[2:]))
    assert direct[:2].abs().sum() > 0
    # every row at the same image (a slice of the keys, no copy)
    same = torch.full((3,), 2)
    masked, direct = _attend(same, torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    assert torch.allclose(masked, direct, atol=1e-6)


def test_best_continuations_equal_ranking_the_whole_vocabulary():
    torch.manual_seed(1)
    B, K, V = 3, 4, 50
    logits = torch.randn(B * K, V) * 3
    beam_scores = torch.randn(B, K)
    beam_scores[0, 1:] = float("-inf")  # the first step: only beam 0 of a prompt is alive
    banned = torch.tensor([7, 11])
    logits[:, 7] = 100.0  # a banned token the model prefers must never be chosen
    scores, index = _best_continuations(logits, beam_scores, banned)
    # reference: log-softmax over the allowed vocabulary, every (beam, token) ranked
    ref = logits.clone()
    ref[:, banned] = float("-inf")
    cand = (beam_scores.view(-1, 1) + F.log_softmax(ref, dim=-1)).view(B, K * V)
    ref_scores, ref_index = cand.topk(2 * K, dim=1)
    assert torch.equal(index, ref_index)
    assert torch.allclose(scores, ref_scores, atol=1e-5)
    assert not bool(torch.isin(index % V, banned).any())
    assert bool((index[0] // V == 0).all())  # dead beams contribute nothing


def test_a_continuation_projects_only_its_new_images():
    from frozenvl.testing import images, tiny_flamingo

    model, proc = tiny_flamingo(open_gates=True)
    full = proc(["<image>a cat<|endofchunk|><image>a dog<|endofchunk|><image>then a"], [images(3)])
    ids, pixels = full["input_ids"], full["pixel_values"]
    cut = int((ids[0] == model.image_token_id).nonzero()[2])  # the prefix holds the first two images
    shapes = []
    block = model.lm.model.layers[model.fused_indices[0]].xattn.attn
    project = block.project_media
    block.project_media = lambda media: shapes.append(tuple(media.shape[:2])) or project(media)
    with torch.no_grad():
        expected = model(ids, pixel_values=pixels).logits
        prefix = model(ids[:, :cut], pixel_values=pixels[:, :2], use_cache=True)
        shapes.clear()
        rest = model(ids[:, cut:], pixel_values=pixels[:, 2:], cache=prefix.cache)
    assert shapes == [(1, 1)]  # one row, one new image: the cached images' keys/values are reused
    assert torch.allclose(torch.cat([prefix.logits, rest.logits], dim=1), expected, atol=1e-5)


def test_beam_search_encodes_each_prompt_once_not_once_per_beam():
    from frozenvl.testing import images, tiny_flamingo

    model, proc = tiny_flamingo(open_gates=True)
    batch = proc(["<image>a cat<|endofchunk|><image>a", "<image>the dog"], [images(2), images(1, seed=1)],
                 padding_side="left")
    rows, vision_rows = [], []
    forward, encode = model.forward, model.encode_media
    model.forward = lambda input_ids, *a, **k: rows.append(tuple(input_ids.shape)) or forward(input_ids, *a, **k)
    model.encode_media = lambda pixels, *rest: vision_rows.append(pixels.shape[0]) or encode(pixels, *rest)
    out = model.generate(**batch, max_new_tokens=4, num_beams=3)
    L = batch["input_ids"].shape[1]
    assert rows[0] == (2, L) and vision_rows == [2]  # the prompts: 2 rows, not 2 x 3 beams
    assert all(r == (6, 1) for r in rows[1:]) and len(rows) > 1  # then one token per beam
    del model.forward, model.encode_media
    assert torch.equal(out, model.generate(**batch, max_new_tokens=4, num_beams=3, use_cache=False))


class _ScriptedDecoder:
    """Logits that depend only on (prompt, tokens so far): a stand-in for the model that tracks which prompt and
    history each row holds through beam reorders, so a wrong parent row or a dropped prompt shows in the output."""

    def __init__(self, prompts: list[int], beams: int, vocab: int, stop: int, quick: set[int]):
        self.prompts, self.beams, self.vocab, self.stop, self.quick = prompts, beams, vocab, stop, quick
        self.rows: list[tuple[int, tuple[int, ...]]] = []
        self.widths: list[int] = []

    def _logits(self) -> torch.Tensor:
        out = []
        for prompt, history in self.rows:
            g = torch.Generator().manual_seed(hash((prompt, history)) % (2**31))
            row = torch.randn(self.vocab, generator=g) * 2
            row[self.stop] = 10.0 if prompt in self.quick else -10.0  # quick prompts end at once, others never
            out.append(row)
        return torch.stack(out)

    def first(self) -> torch.Tensor:
        self.rows = [(p, ()) for p in self.prompts for _ in range(self.beams)]
        return self._logits()

    def next(self, tokens: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        index = torch.arange(len(self.rows)) if index is None else index
        self.widths.append(len(index))
        self.rows = [(self.rows[i][0], self.rows[i][1] + (t,)) for i, t in zip(index.tolist(), tokens.tolist())]
        return self._logits()


def test_beam_search_drops_prompts_that_are_done_and_each_prompt_equals_its_run_alone():
    from types import SimpleNamespace

    from frozenvl.flamingo.generation import _beam_search

    model = SimpleNamespace(pad_token_id=0)
    K, V, stop = 2, 30, 5
    for quick in ({0}, {2}, {1}):  # a first, last or middle prompt ends at once
        decoder = _ScriptedDecoder([0, 1, 2], K, V, stop, quick)
        together = _beam_search(model, decoder, 3, 6, K, 1.0, [stop], [])
        # the quick prompt is done once K of its hypotheses ended (step 1: only one beam is alive at step 0)
        assert decoder.widths[0] == 3 * K and decoder.widths[-1] == 2 * K
        for p in range(3):
            alone = _beam_search(model, _ScriptedDecoder([p], K, V, stop, quick), 1, 6, K, 1.0, [stop], [])
            n = alone.shape[1]
            assert together[p, :n].tolist() == alone[0].tolist()
            assert (together[p, n:] == 0).all()
        assert together[min(quick)].tolist()[0] == stop


def test_greedy_rows_that_finished_leave_the_batch_and_each_equals_its_run_alone():
    from types import SimpleNamespace

    from frozenvl.flamingo.generation import _greedy_or_sample

    model = SimpleNamespace(pad_token_id=0)
    V, stop = 30, 5
    for quick in ({0}, {2}, {0, 2}):
        decoder = _ScriptedDecoder([0, 1, 2], 1, V, stop, quick)
        together = _greedy_or_sample(model, decoder, 3, 6, False, 1.0, 0, 1.0, [stop], [], None)
        assert decoder.widths[0] == 3 - len(quick) and together.shape == (3, 6)
        for p in range(3):
            alone = _greedy_or_sample(model, _ScriptedDecoder([p], 1, V, stop, quick), 1, 6, False, 1.0, 0, 1.0,
                                      [stop], [], None)
            assert together[p, :alone.shape[1]].tolist() == alone[0].tolist()
            assert (together[p, alone.shape[1]:] == 0).all()  # padding after the stop
        assert all(together[q, 0] == stop for q in quick)


def test_decoder_rows_can_leave_the_batch():
    from frozenvl.flamingo.generation import _Decoder
    from frozenvl.testing import images, tiny_flamingo

    model, proc = tiny_flamingo(open_gates=True)
    texts = ["<image>a cat<|endofchunk|><image>a", "<image>the dog", "<image>x y"]
    media = [images(2), images(1, seed=2), images(1, seed=3)]
    batch = proc(texts, media, padding_side="left")
    K = 2
    step = torch.tensor([7, 8, 9, 10, 11, 12])
    for keep in ([0, 1], [1, 2], [0, 2]):  # the last, the first or the middle prompt leaves
        with torch.no_grad():
            decoder = _Decoder(model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"], None,
                               True, K)
            decoder.first()
            decoder.next(step, torch.tensor([0, 0, 3, 2, 4, 5]))
            rows = torch.tensor([r for p in keep for r in (p * K, p * K + 1)])
            together = decoder.next(step[: len(rows)], rows)
            cache = decoder.cache  # every part of the cache holds the remaining rows only
            assert cache.media.shape[0] == cache.media_docs.shape[0] == cache.attention_mask.shape[0] == len(rows)
            assert all(k.shape[0] == len(rows) for k, _ in cache.xattn_kv.values())
            sub = {k: v[keep] for k, v in batch.items() if torch.is_tensor(v)}
            alone = _Decoder(model, sub["input_ids"], sub["attention_mask"], sub["pixel_values"], None, True, K)
            alone.first()
            parents = torch.tensor([0, 0, 3, 2, 4, 5]).view(3, K)[keep]  # the same parents, renumbered
            alone.next(step.view(3, K)[keep].reshape(-1), (parents - parents.new_tensor(keep).unsqueeze(1) * K
                                                           + torch.arange(len(keep)).unsqueeze(1) * K).view(-1))
            expected = alone.next(step[: len(rows)], torch.arange(len(rows)))
        assert torch.allclose(together, expected, atol=1e-4)


@pytest.mark.parametrize("only_immediate", [True, False])
def test_a_continuation_from_any_split_point_equals_the_full_forward(only_immediate):
    """Prefix caching is exact wherever the prompt is cut: before the first image (a text-only prefix), on an
    <image> token, inside a chunk; the continuation brings the images the prefix has not seen."""
    from frozenvl.testing import images, tiny_flamingo

    model, proc = tiny_flamingo(open_gates=True, only_attend_immediate=only_immediate)
    batch = proc(["a photo:<|endofchunk|><image>a cat sat<|endofchunk|><image>a dog<|endofchunk|><image>x"],
                 [images(3)])
    ids, pixels = batch["input_ids"], batch["pixel_values"]
    is_image = ids[0] == model.image_token_id
    with torch.no_grad():
        expected = model(ids, pixel_values=pixels).logits
        for cut in range(1, ids.shape[1]):
            seen = int(is_image[:cut].sum())  # images in the prefix
            prefix = model(ids[:, :cut], pixel_values=pixels[:, :seen] if seen else None, use_cache=True)
            rest = model(ids[:, cut:], pixel_values=pixels[:, seen:] if seen < 3 else None, cache=prefix.cache)
            got = torch.cat([prefix.logits, rest.logits], dim=1)
            assert torch.allclose(got, expected, atol=1e-5), f"cut at {cut}"
