"""experiments/icl_as_text.py: the harness's icl_words prompts with pictures written as text."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from frozenvl.data import WorldConfig, generate_world
from frozenvl.eval.harness import EvalConfig, FewShotHarness
from frozenvl.eval.records import EvalRecord
from frozenvl.eval.synthetic import synthetic_task_data
from frozenvl.testing import tiny_flamingo, tiny_lm, tiny_tokenizer

_PATH = Path(__file__).resolve().parents[2] / "experiments" / "icl_as_text.py"
_spec = importlib.util.spec_from_file_location("icl_as_text", _PATH)
itc = importlib.util.module_from_spec(_spec)
sys.modules["icl_as_text"] = itc
_spec.loader.exec_module(itc)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("world")
    config = WorldConfig(seed=0, image_size=32, n_eval=10, n_episodes=3, k_shot=4, n_query=4, splits=("icl_words",))
    generate_world(path, config, progress=False, log=None)
    return path


def _record(colour: str, shape: str, concept: str) -> EvalRecord:
    return EvalRecord(key=f"{colour}-{shape}", meta={"colour": colour, "shape": shape, "concept": concept})


def test_markers_become_descriptions_in_order():
    pics = [_record("red", "star", "star"), _record("blue", "circle", "circle")]
    text = "<image>Output:zorb<|endofchunk|><image>Output:"
    assert itc.as_text(text, pics, "object") == "red star Output:zorb\nblue circle Output:"
    assert itc.as_text(text, pics, "attribute") == "star Output:zorb\ncircle Output:"
    with pytest.raises(ValueError, match="2 image markers for 1 pictures"):
        itc.as_text(text, pics[:1], "object")


def test_same_demonstrations_as_the_harness(world):
    data = synthetic_task_data("synth_icl_words", world)
    model, processor = tiny_flamingo("gpt2")
    harness = FewShotHarness(model, processor, EvalConfig(seed=3))
    for num in (2, 4):
        ours = itc.select_demos(data, data.queries, num, trial=1, seed=3)
        theirs = harness.select_demos(data, data.queries, num, trial=1)
        assert [[d.key for d in ds] for ds in ours] == [[d.key for d in ds] for ds in theirs]


def test_score_is_the_mean_log_probability_of_the_continuation():
    lm, tok = tiny_lm("llama"), tiny_tokenizer()
    context, cont = "red Output:", "zorb\n"
    ids = tok(context + cont, add_special_tokens=False)["input_ids"]
    n = len(tok(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = lm(torch.tensor([ids])).logits[0].log_softmax(-1)
    expected = sum(float(logp[i - 1, ids[i]]) for i in range(n, len(ids))) / (len(ids) - n)
    assert itc.score(lm, tok, context, [cont])[0] == pytest.approx(expected, abs=1e-5)


def test_a_perfect_copier_is_right_exactly_when_the_demonstrations_name_the_concept(world, monkeypatch):
    """Scores from a reader of the text prompt that copies the word after the last matching description: the
    accuracy is the share of queries whose concept appears among their demonstrations (0 shots: none)."""
    data = synthetic_task_data("synth_icl_words", world)

    def copier(lm, tokenizer, context, candidates):
        *demos, query = context.split("\n")
        named = {line.partition("Output:")[0].strip(): line.partition("Output:")[2] for line in demos}
        word = named.get(query.partition("Output:")[0].strip()) or None  # text-only demos name nothing
        return [0.0 if c == f"{word}\n" else -1.0 for c in candidates]

    monkeypatch.setattr(itc, "score", copier)
    for shots in (0, 2, 4):
        expected = 0.0
        if shots:
            demos = itc.select_demos(data, data.queries, shots, trial=0, seed=0)
            hits = [q.meta["concept"] in {d.meta["concept"] for d in ds} for q, ds in zip(data.queries, demos)]
            expected = 100.0 * sum(hits) / len(hits)
        # A miss scores every candidate equally and the first wins; count only what the copier can know.
        got = itc.accuracy(None, None, data, shots, "attribute", limit=None)
        first_right = [q.meta["choices"][0] == q.meta["class_name"] for q in data.queries]
        if shots:
            misses = [not h and f for h, f in zip(hits, first_right)]
        else:
            misses = first_right
        assert got == pytest.approx(expected + 100.0 * sum(misses) / len(data.queries))
