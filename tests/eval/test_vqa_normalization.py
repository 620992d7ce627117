"""VQA accuracy as the published numbers were computed: the official VQA evaluation (GT-Vision-Lab/VQA vqaEval.py,
its 2021 version) by default and OpenFlamingo's vqa_metric.py as the named option ``normalization="openflamingo"``.

Oracle: OpenFlamingo's installed ``VQAEval`` (its tables equal the official ones; its ``evaluate`` normalises
always). The official evaluation's control flow (normalise only when the annotators disagree) is checked on cases
written from its code.
"""

from __future__ import annotations

import json
import random

import pytest

from frozenvl.eval.metrics import vqa_accuracy, vqa_score
from frozenvl.eval.tasks import get_task
from frozenvl.eval.vqa_normalize import (
    ARTICLES,
    CONTRACTIONS,
    NUMBER_WORDS,
    PUNCTUATION,
    normalize_answer,
    process_digits_articles,
    process_punctuation,
)

vqa_metric = pytest.importorskip("open_flamingo.eval.vqa_metric", reason="OpenFlamingo's VQA metric is the oracle")


@pytest.fixture(scope="module")
def oracle():
    return vqa_metric.VQAEval(None, None)


def test_the_tables_are_the_official_ones(oracle):
    assert CONTRACTIONS == oracle.contractions
    assert NUMBER_WORDS == vqa_metric.VQAEval(None, None).manualMap  # a fresh one: evaluating adds to it
    assert PUNCTUATION == tuple(oracle.punct)
    assert ARTICLES == set(oracle.articles)
    # written with ASCII apostrophes (the 2015 table's U+2019 was replaced in 2016), apostrophe and colon kept
    assert not any("\u2019" in k + v for k, v in CONTRACTIONS.items())
    assert "'" not in PUNCTUATION and ":" not in PUNCTUATION


WORDS = ["dont", "don't", "couldn'tve", "couldntve", "lets", "let's", "somebody'd", "Ive", "the", "A", "an", "two",
         "Ten", "none", "yes", "t-shirt", "3.5", "1,000", "2:00", "dog.", "u.s.a.", "left/right", "(red)", "oclock",
         "y'allll", "wasnt", "it's", "hello!", "why?", "x_y", "{a}", "<b>", "@home", "`q`", "a;b", "\"q\"", "5.",
         "one-two", "a+b=c", "back\\slash", "what's", "..."]
CHARS = list(" .,;:/'-!?0123456789ab\"()[]{}=+_<>@`\\") + ["\n", "\t"]


def _corpus(n: int = 1500) -> list[str]:
    rng = random.Random(0)
    texts = list(WORDS)
    for _ in range(n):
        if rng.random() < 0.5:
            texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))))
        else:
            texts.append("".join(rng.choice(CHARS + WORDS) for _ in range(rng.randint(1, 8))))
    return texts


def test_normalisation_steps_equal_openflamingo_and_official_code(oracle):
    for text in _corpus() + ["a." * 40, "x.y " * 20]:
        assert process_punctuation(text) == oracle.processPunctuation(text), text
        assert process_digits_articles(text) == oracle.processDigitArticle(text), text
    # at most 32 periods go: the official call passes re.UNICODE (32) where the count goes
    assert process_punctuation("a." * 40) == "a" * 32 + "a." * 8


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("the dog.", "dog"), ("dont", "don't"), ("none", "0"), ("A cat?", "cat"), ("3.5", "3.5"),
    ("1,000 dogs", "1000 dogs"), ("left/right", "left right"), ("2:00", "2:00"), ("yes\n", "yes"),
    ("t-shirt", "t shirt"), ("one - two", "1 2"), ("couldn'tve", "couldn't've"),
    ("couldntve", "couldntve"), ("lets go", "lets go"), ("somebody'd", "somebodyd"), ("Hello!", "hello"),
    ("don't", "don't"), ("isnt it", "isn't it"),
])
def test_normalize_answer_cases_from_the_official_code(raw, expected):
    assert normalize_answer(raw) == expected


def _openflamingo_evaluate(prediction: str, answers: list[str]) -> float:
    """OpenFlamingo's VQAEval.evaluate on one question: accuracy in percent, rounded to 2 places."""
    class Annotations:
        qa = {1: {"answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)],
                  "question_type": "what", "answer_type": "other"}}

    class Results:
        qa = {1: {"answer": prediction, "question_id": 1}}

        def getQuesIds(self):
            return [1]

    ev = vqa_metric.VQAEval(Annotations(), Results())
    ev.updateProgress = lambda progress: None
    ev.evaluate()
    return ev.evalQA[1]


CASES = [
    ("dont", ["don't"] * 10), ("Don't", ["don't"] * 10), ("dog", ["dog."] * 10), ("Yes", ["yes"] * 10),
    ("dont", ["don't"] * 4 + ["no"] * 6), ("t shirt", ["t-shirt"] * 3 + ["shirt"] * 7), ("Two.", ["2"] * 2 + ["3"] * 8),
    (" yes\n", ["yes "] * 10), ("2:00", ["2:00"] * 5 + ["2"] * 5), ("blue", ["Blue"] * 3 + ["blue."] * 3 + ["red"] * 4),
    ("a dog", ["dog"] * 9 + ["cat"]), ("none", ["0"] * 10), ("none", ["0"] * 9 + ["1"]),
]


@pytest.mark.parametrize("prediction, answers", CASES)
def test_openflamingo_option_equals_openflamingo_vqa_metric(prediction, answers):
    ours = vqa_accuracy(prediction, answers, normalization="openflamingo")
    assert round(100 * ours, 2) == pytest.approx(_openflamingo_evaluate(prediction, answers))


@pytest.mark.parametrize("prediction, answers, official, openflamingo", [
    # unanimous annotators: the official code compares the prediction as written
    ("dont", ["don't"] * 10, 0.0, 1.0),
    ("don't", ["don't"] * 10, 1.0, 1.0),
    ("Don't", ["don't"] * 10, 0.0, 1.0),
    ("dog", ["dog."] * 10, 0.0, 1.0),
    ("none", ["0"] * 10, 0.0, 1.0),
    (" yes\n", ["yes "] * 10, 1.0, 1.0),  # whitespace is stripped in both
    # disagreeing annotators: both normalised, apostrophes kept, hyphens are punctuation
    ("dont", ["don't"] * 4 + ["no"] * 6, 1.0, 1.0),
    ("t shirt", ["t-shirt"] * 3 + ["shirt"] * 7, 0.9, 0.9),
    ("Two.", ["2"] * 2 + ["3"] * 8, 0.6, 0.6),
    ("blue", ["Blue"] * 3 + ["blue."] * 3 + ["red"] * 4, 1.0, 1.0),
])
def test_official_and_openflamingo_normalisation(prediction, answers, official, openflamingo):
    assert vqa_accuracy(prediction, answers) == pytest.approx(official)
    assert vqa_accuracy(prediction, answers, normalization="official") == pytest.approx(official)
    assert vqa_accuracy(prediction, answers, normalization="openflamingo") == pytest.approx(openflamingo)


def test_an_unknown_normalisation_is_one_error():
    with pytest.raises(ValueError, match="VQA normalization must be one of official, openflamingo; got 'vqav2'"):
        vqa_accuracy("yes", ["yes"] * 10, normalization="vqav2")
    out = vqa_score({"q": "dont"}, {"q": ["don't"] * 10}, normalization="openflamingo")
    assert out["accuracy"] == 100.0 and out["normalization"] == "openflamingo"


def test_the_task_and_the_cli_choose_the_normalisation(tmp_path, monkeypatch):
    import dataclasses

    import frozenvl.cli.eval as cli
    from frozenvl.data import WorldConfig, generate_world
    from frozenvl.eval.records import EvalRecord
    from frozenvl.testing import tiny_flamingo

    spec = get_task("vqav2")
    assert spec.vqa_normalization == "official"
    records = [EvalRecord(key="q", image="x.jpg", question="?", answers=["don't"] * 10)]
    assert spec.score(records, {"q": "dont"})["score"] == 0.0
    openflamingo = dataclasses.replace(spec, vqa_normalization="openflamingo")
    assert openflamingo.score(records, {"q": "dont"})["score"] == 100.0
    with pytest.raises(ValueError, match="vqa_normalization must be one of official, openflamingo"):
        dataclasses.replace(spec, vqa_normalization="nope")

    world = tmp_path / "world"
    generate_world(world, WorldConfig(seed=0, image_size=32, n_eval=4, splits=("vqa",)), progress=False, log=None)
    model = tiny_flamingo("gpt2", seed=3)
    monkeypatch.setattr(cli, "load_model", lambda args: model)
    for choice in ("openflamingo", "official"):
        out = tmp_path / choice
        assert cli.main(["flamingo", "--task", "synth_vqa", "--data", str(world), "--shots", "0", "--limit", "2",
                         "--vqa-normalization", choice, "--out", str(out), "--no-progress"]) == 0
        saved = json.loads((out / "synth_vqa.json").read_text())
        assert saved["config"]["task"]["vqa_normalization"] == choice
