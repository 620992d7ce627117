"""Flamingo.generate's controls against transformers' own generate.

At initialisation (gates at 0) a Flamingo is its LM, so ``Flamingo.generate(**kw)`` must give, token for token, what
the LM's ``generate(**kw)`` gives: the reference is the bare LM (its decoder layers as they were before wrapping)
with the Flamingo's vocabulary (the new tokens' embedding and output rows, shared), generated with frozenvl's stop
rules spelled in transformers' terms (it stops at ``<|endofchunk|>`` and EOS and never emits ``<image>`` or the pad
token). Cached decoding must equal recomputing (``use_cache=False``).
"""

import copy

import pytest
import torch
from transformers.generation import BaseStreamer

from frozenvl.flamingo import build
from frozenvl.testing import TINY_FLAMINGO, images, tiny_lm, tiny_tokenizer, tiny_vision

FAMILIES = ("llama", "gpt2")
TEXTS = ["the cat sat on", "a dog"]  # different lengths: the second is left padded


def _fresh(family: str, no_banned_mass: bool = False):
    """A fresh Flamingo and its reference LM.

    ``no_banned_mass``: give ``<image>`` and the pad token zero probability. frozenvl's beam search ranks by the
    log-probabilities over the tokens it may emit, transformers' over the whole vocabulary (then bans): the two
    rankings are the same exactly when the banned tokens have no probability to renormalise away."""
    lm = tiny_lm(family, seed=1)
    reference = copy.deepcopy(lm)
    model, proc = build(lm=lm, tokenizer=tiny_tokenizer(), vision=tiny_vision(), **TINY_FLAMINGO)
    model.eval()
    head = model.lm.get_output_embeddings()
    if no_banned_mass:
        with torch.no_grad():
            for token in (model.image_token_id, model.pad_token_id):
                head.new_bias[head.new_token_ids.index(token)] = -1e4
    reference.set_input_embeddings(model.lm.get_input_embeddings())
    reference.set_output_embeddings(head)
    return model, proc, reference.eval()


def _batch(proc, with_images: bool):
    if with_images:
        batch = proc(["<image>" + TEXTS[0], "<image>" + TEXTS[1]], [images(1), images(1, seed=3)],
                     padding_side="left")
    else:
        batch = proc(TEXTS, padding_side="left")
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values") if k in batch}


def _reference_generate(model, reference, batch, **kw):
    """The LM's own generate with frozenvl's defaults and stop rules."""
    stops = kw.pop("eos_token_id", sorted({model.end_of_chunk_token_id, model.eos_token_id}))
    stops = [stops] if isinstance(stops, int) else stops
    banned = [[model.image_token_id]] + ([[model.pad_token_id]] if model.pad_token_id not in stops else [])
    args = dict(max_new_tokens=8, do_sample=False, num_beams=1, temperature=1.0, top_k=0, top_p=1.0,
                length_penalty=1.0, early_stopping=False)
    args.update(kw)
    args["bad_words_ids"] = banned + (args.get("bad_words_ids") or [])
    return reference.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              eos_token_id=stops, pad_token_id=model.pad_token_id, **args)


def _flamingo_generate(model, batch, **kw):
    args = dict(max_new_tokens=8)
    args.update(kw)
    return model.generate(**batch, **args)


def _controls(baseline: torch.Tensor, prompt_len: int) -> dict[str, dict]:
    """One setting per control, chosen from what the model generates without it so that each one bites."""
    first = baseline[0, prompt_len:]
    second = baseline[1, prompt_len:]
    return {
        "repetition_penalty": dict(repetition_penalty=1.8),
        "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
        # row 0's third token stops it (and whichever row meets it); min_new_tokens then defers that stop
        "eos_token_id": dict(eos_token_id=int(first[2])),
        "eos_token_ids": dict(eos_token_id=[int(first[2]), int(second[1])]),
        "min_new_tokens": dict(eos_token_id=int(first[2]), min_new_tokens=6),
        # a single token and a two-token sequence
        "bad_words_ids": dict(bad_words_ids=[[int(first[0])], [int(second[1]), int(second[2])]]),
        "together": dict(repetition_penalty=1.3, no_repeat_ngram_size=3, bad_words_ids=[[int(second[0])]]),
    }


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("with_images", [False, True])
def test_greedy_controls_equal_the_lm_generate(family, with_images):
    model, proc, reference = _fresh(family)
    batch = _batch(proc, with_images)
    L = batch["input_ids"].shape[1]
    baseline = _flamingo_generate(model, batch)
    assert torch.equal(baseline, _reference_generate(model, reference, batch))
    for name, kw in _controls(baseline, L).items():
        out = _flamingo_generate(model, batch, **kw)
        assert torch.equal(out, _reference_generate(model, reference, batch, **kw)), name
        assert torch.equal(out, _flamingo_generate(model, batch, use_cache=False, **kw)), name
        assert not torch.equal(out, baseline), f"{name} changed nothing: the comparison proves nothing"


def test_min_new_tokens_defers_the_stop_and_eos_token_id_stops():
    model, proc, _ = _fresh("llama")
    batch = _batch(proc, False)
    L = batch["input_ids"].shape[1]
    baseline = _flamingo_generate(model, batch)
    new = baseline[0, L:].tolist()
    stop = new[2]
    at = new.index(stop)  # its first occurrence
    stopped = _flamingo_generate(model, batch, eos_token_id=stop)
    assert stopped[0, L:L + at + 1].tolist() == new[:at + 1]
    assert (stopped[0, L + at + 1:] == model.pad_token_id).all()
    deferred = _flamingo_generate(model, batch, eos_token_id=stop, min_new_tokens=6)
    assert stop not in deferred[0, L:L + 6].tolist()
    assert deferred.shape[1] >= L + 7 and deferred[0, L + 6] != model.pad_token_id


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("with_images", [False, True])
def test_sampling_with_a_seed_equals_the_lm_generate(family, with_images):
    # transformers draws with the global generator, every row at every step (finished rows too): frozenvl draws the
    # same way, so one seed gives the same samples
    model, proc, reference = _fresh(family)
    batch = _batch(proc, with_images)
    L = batch["input_ids"].shape[1]
    settings = [dict(), dict(temperature=0.7, top_k=20, top_p=0.9), dict(repetition_penalty=1.5, top_k=50),
                dict(no_repeat_ngram_size=2, temperature=1.3), dict(num_return_sequences=3, top_p=0.8)]
    for seed, kw in enumerate(settings):
        kw = dict(do_sample=True, max_new_tokens=10, **kw)
        torch.manual_seed(seed)
        out = _flamingo_generate(model, batch, **kw)
        torch.manual_seed(seed)
        ref = _reference_generate(model, reference, batch, **kw)
        assert torch.equal(out, ref), kw
        torch.manual_seed(seed)
        assert torch.equal(out, _flamingo_generate(model, batch, use_cache=False, **kw)), kw
        assert out.shape[0] == 2 * kw.get("num_return_sequences", 1) and out.shape[1] > L


def test_a_row_that_finished_still_draws_so_the_others_keep_their_samples():
    # a stop that row 0 meets at once: row 1's samples must be those of the LM's generate, which keeps row 0
    model, proc, reference = _fresh("llama")
    batch = _batch(proc, False)
    torch.manual_seed(5)
    first = _flamingo_generate(model, batch, do_sample=True, max_new_tokens=1)
    kw = dict(do_sample=True, max_new_tokens=10, eos_token_id=int(first[0, -1]))
    torch.manual_seed(5)
    out = _flamingo_generate(model, batch, **kw)
    torch.manual_seed(5)
    assert torch.equal(out, _reference_generate(model, reference, batch, **kw))
    assert out[0, -1] == model.pad_token_id and out[1, -1] != model.pad_token_id


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("with_images", [False, True])
def test_beam_search_controls_equal_the_lm_generate(family, with_images):
    model, proc, reference = _fresh(family, no_banned_mass=True)
    batch = _batch(proc, with_images)
    L = batch["input_ids"].shape[1]
    baseline = _flamingo_generate(model, batch, num_beams=3)
    assert torch.equal(baseline, _reference_generate(model, reference, batch, num_beams=3))
    settings = {**_controls(baseline, L), "num_return_sequences": dict(num_return_sequences=2)}
    for name, kw in settings.items():
        kw = dict(num_beams=3, **kw)
        out = _flamingo_generate(model, batch, **kw)
        ref = _reference_generate(model, reference, batch, **kw)
        assert torch.equal(out, ref), name
        assert torch.equal(out, _flamingo_generate(model, batch, use_cache=False, **kw)), name


def test_beam_search_returns_its_best_hypotheses_with_their_scores():
    model, proc, reference = _fresh("gpt2", no_banned_mass=True)
    batch = _batch(proc, False)
    kw = dict(num_beams=4, num_return_sequences=3, return_dict_in_generate=True, output_scores=True)
    out = _flamingo_generate(model, batch, **kw)
    ref = _reference_generate(model, reference, batch, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    assert torch.allclose(out.sequences_scores, ref.sequences_scores, atol=1e-4)
    assert torch.equal(out.sequences[::3], _flamingo_generate(model, batch, num_beams=4))  # the best comes first


class _Recorder(BaseStreamer):
    def __init__(self):
        self.puts: list[torch.Tensor] = []
        self.ended = 0

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("family", FAMILIES)
def test_streamer_gets_what_the_lm_generate_gives_it(family):
    model, proc, reference = _fresh(family)
    batch = _batch(proc, True)
    L = batch["input_ids"].shape[1]
    baseline = _flamingo_generate(model, batch)
    kw = dict(eos_token_id=int(baseline[1, L + 1]))  # row 1 ends early: its later steps stream pad tokens
    ours, theirs = _Recorder(), _Recorder()
    out = _flamingo_generate(model, batch, streamer=ours, **kw)
    _reference_generate(model, reference, batch, streamer=theirs, **kw)
    assert ours.ended == theirs.ended == 1
    assert len(ours.puts) == len(theirs.puts) == out.shape[1] - L + 1
    for a, b in zip(ours.puts, theirs.puts):
        assert torch.equal(a, b)
    assert torch.equal(torch.cat([ours.puts[0]] + [p.view(-1, 1) for p in ours.puts[1:]], dim=1), out)


@pytest.mark.parametrize(("do_sample", "num_beams"), [(False, 1), (True, 1), (False, 3)])
def test_output_scores_equal_the_lm_generate(do_sample, num_beams):
    # beam search: each step's processed log-probabilities of every beam, the beams in transformers' order
    model, proc, reference = _fresh("llama", no_banned_mass=num_beams > 1)
    batch = _batch(proc, False)
    kw = dict(return_dict_in_generate=True, output_scores=True, do_sample=do_sample, num_beams=num_beams,
              repetition_penalty=1.4, **(dict(top_k=10) if do_sample else {}))
    torch.manual_seed(0)
    out = _flamingo_generate(model, batch, **kw)
    torch.manual_seed(0)
    ref = _reference_generate(model, reference, batch, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    assert len(out.scores) == len(ref.scores) == out.sequences.shape[1] - batch["input_ids"].shape[1]
    for ours, theirs in zip(out.scores, ref.scores):
        assert ours.shape == theirs.shape
        assert torch.allclose(ours, theirs, atol=1e-4)
    # the scores are the processed ones: the penalty on the prompt's tokens shows from the first step
    torch.manual_seed(0)
    plain = _flamingo_generate(model, batch, **{**kw, "repetition_penalty": 1.0})
    assert not torch.allclose(plain.scores[0], out.scores[0])


def test_controls_are_checked():
    model, proc, _ = _fresh("llama")
    batch = _batch(proc, False)
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate(**batch, num_return_sequences=2)  # greedy gives one sequence per prompt
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate(**batch, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="not both"):
        model.generate(**batch, eos_token_id=5, stop_token_ids=[5])
    with pytest.raises(ValueError, match="streamer"):
        model.generate(**batch, num_beams=2, streamer=_Recorder())
    with pytest.raises(TypeError, match="unexpected"):
        model.generate(**batch, repetition_penalty_=1.2)


def test_several_samples_continuing_a_prefix_cache_equal_those_of_the_full_prompt():
    # num_return_sequences repeats the rows of the prefix cache too; images matter here (open gates)
    from frozenvl.testing import tiny_flamingo

    model, proc = tiny_flamingo(open_gates=True)
    prefix = proc(["<image>a cat<|endofchunk|>"], [images(1)])
    query = proc(["<image>a"], [images(1, seed=4)], padding_side="left")
    full = proc(["<image>a cat<|endofchunk|><image>a"], [images(1) + images(1, seed=4)], padding_side="left")
    cache = model(prefix["input_ids"], prefix["attention_mask"], prefix["pixel_values"], use_cache=True).cache
    kw = dict(do_sample=True, num_return_sequences=3, max_new_tokens=8, top_k=30)
    torch.manual_seed(0)
    cached = model.generate(query["input_ids"], query["attention_mask"], query["pixel_values"], cache=cache, **kw)
    torch.manual_seed(0)
    whole = model.generate(full["input_ids"], full["attention_mask"], full["pixel_values"], **kw)
    Lq, Lf = query["input_ids"].shape[1], full["input_ids"].shape[1]
    assert cached.shape[0] == whole.shape[0] == 3
    assert torch.equal(cached[:, Lq:], whole[:, Lf:])
    assert len({tuple(row) for row in whole[:, Lf:].tolist()}) > 1  # three different samples
