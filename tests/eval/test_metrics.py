"""Known cases for every evaluation metric."""

from __future__ import annotations

import numpy as np
import pytest

from frozenvl.eval import ptb_tokenize as ptb
from frozenvl.eval.metrics import accuracy, cider, recall_at_k, roc_auc, vqa_accuracy, vqa_score
from frozenvl.eval.vqa_normalize import normalize_answer, process_punctuation

needs_java = pytest.mark.skipif(not ptb.java_available(), reason="Java PTB tokenizer not available")

# ---------------------------------------------------------------- CIDEr


def test_cider_hand_checked_values():
    # Two images, one reference each, no n-gram shared between them: a prediction equal to its reference has
    # cosine 1 for n = 1..4 and no length penalty, so CIDEr-D = 10 (x100 = 1000); no shared word gives 0.
    refs = {"a": ["red cube on the left"], "b": ["two green spheres near one pyramid"]}
    exact = cider({"a": "Red cube on the left.", "b": "two green spheres near one pyramid"}, refs,
                  tokenizer="python-fallback")
    assert exact["CIDEr"] == pytest.approx(1000.0)
    half = cider({"a": "red cube on the left", "b": "blue thing"}, refs, tokenizer="python-fallback")
    assert half["CIDEr"] == pytest.approx(500.0)
    assert half["per_sample"] == pytest.approx({"a": 1000.0, "b": 0.0})


def test_cider_matches_pycocoevalcap_cider_class():
    from pycocoevalcap.cider.cider import Cider

    refs = {
        1: ["A man riding a horse on a beach.", "A person rides a brown horse near the ocean!",
            "Horse and rider at the shore"],
        2: ["Two dogs playing with a frisbee in the park.", "Dogs chase a red frisbee, outdoors."],
        3: ["A plate of food with broccoli, rice and chicken.", "Dinner: chicken, rice & greens"],
    }
    preds = {1: "a man rides a horse on the beach", 2: "two dogs play in a park.", 3: "a plate with rice"}
    ours = cider(preds, refs, tokenizer="python-fallback")
    # the same corpus, tokenised by hand (lowercase, punctuation tokens dropped), scored by pycocoevalcap
    gts = {
        "1": ["a man riding a horse on a beach", "a person rides a brown horse near the ocean",
              "horse and rider at the shore"],
        "2": ["two dogs playing with a frisbee in the park", "dogs chase a red frisbee outdoors"],
        "3": ["a plate of food with broccoli rice and chicken", "dinner chicken rice & greens"],
    }
    res = {"1": ["a man rides a horse on the beach"], "2": ["two dogs play in a park"],
           "3": ["a plate with rice"]}
    score, per = Cider().compute_score(gts, res)
    assert ours["CIDEr"] == pytest.approx(100 * score, rel=1e-12)
    assert [ours["per_sample"][k] for k in (1, 2, 3)] == pytest.approx(list(100 * per))
    assert 0 < ours["CIDEr"] < 1000
    assert ours["tokenizer"] == "python-fallback"


def test_cider_checks_keys():
    with pytest.raises(ValueError, match="same keys"):
        cider({"a": "x"}, {"b": ["x"]}, tokenizer="python-fallback")
    with pytest.raises(ValueError, match="no reference"):
        cider({"a": "x"}, {"a": []}, tokenizer="python-fallback")


def test_cider_records_fallback_when_java_missing(monkeypatch):
    monkeypatch.setattr(ptb.shutil, "which", lambda name: None)
    out = cider({"a": "a red cube"}, {"a": ["a red cube"]})
    assert out["tokenizer"] == "python-fallback"
    with pytest.raises(RuntimeError, match="Java"):
        cider({"a": "a red cube"}, {"a": ["a red cube"]}, tokenizer="ptb-java")


@needs_java
def test_cider_uses_java_ptb_when_available():
    refs = {"a": ["red cube on the left"], "b": ["two green spheres near one pyramid"]}
    out = cider({"a": "Red cube, on the left!", "b": "blue thing"}, refs)
    assert out["tokenizer"] == "ptb-java"
    assert out["CIDEr"] == pytest.approx(500.0)


CAPTIONS = [
    "A man's dog, running (fast)!", 'Don\'t stop... the "big" red car.',
    "It's 3:00 p.m. -- U.S.A. e.g. cat's", "two dogs;playing in the snow-covered field?", "",
    "I can't won't they're we'll he'd I'm", "a {b} [c] & 50% $5 ok", "Mr. Smith's 1,000 cats 3.5 ok'",
    "'quoted' `tick` \u201ccurly\u201d it\u2019s", "cannot gonna wanna", "a/b a-b",
    "The cat sat on the mat. The dog didn't.", "People's bikes at 5 o'clock",
    "A woman holding an umbrella: it's raining.", "a caf\u00e9 in paris",
]
EXPECTED = [
    "a man 's dog running -lrb- fast -rrb-", "do n't stop the big red car",
    "it 's 3:00 p.m. u.s.a. e.g. cat 's", "two dogs playing in the snow-covered field", "",
    "i ca n't wo n't they 're we 'll he 'd i 'm", "a -lcb- b -rcb- -lsb- c -rsb- & 50 % $ 5 ok",
    "mr. smith 's 1,000 cats 3.5 ok", "quoted tick curly it 's", "can not gon na wan na", "a/b a-b",
    "the cat sat on the mat the dog did n't", "people 's bikes at 5 o'clock",
    "a woman holding an umbrella it 's raining", "a caf\u00e9 in paris",
]


def test_python_tokenizer_known_outputs():
    # expected strings are what the Java PTB tokenizer + pycocoevalcap's punctuation filter produce
    assert [ptb.python_ptb_tokenize_line(c) for c in CAPTIONS] == EXPECTED


@needs_java
def test_python_tokenizer_agrees_with_java():
    caps = {str(i): [c] for i, c in enumerate(CAPTIONS)}
    caps["multi"] = ["Two captions, one key.", "Second one!"]
    assert ptb.java_ptb_tokenize(caps) == ptb.python_ptb_tokenize(caps)
    assert ptb.java_ptb_tokenize(caps)["multi"] == ["two captions one key", "second one"]


# ---------------------------------------------------------------- VQA


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("the dog.", "dog"), ("dont", "don't"), ("none", "0"), ("A cat?", "cat"), ("3.5", "3.5"),
    ("1,000 dogs", "1000 dogs"), ("left/right", "left right"), ("2:00", "2:00"), ("yes\n", "yes"),
    ("An apple", "apple"), ("t-shirt", "t shirt"), ("dog.cat", "dogcat"), ("  Ten  ", "10"),
    ("isnt it", "isn't it"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_punctuation_deleted_next_to_space_else_replaced():
    assert process_punctuation("left/right") == "left right"
    assert process_punctuation("left / right") == "left  right"  # next to a space: deleted, spaces stay
    assert process_punctuation("1,000,000") == "1000000"  # digit-comma-digit: deleted


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out_fractions(matches, expected):
    # leaving out annotator i: min(1, (#matches among the other 9) / 3); average over the 10 subsets
    answers = ["yes"] * matches + ["no"] * (10 - matches)
    assert vqa_accuracy("yes", answers) == pytest.approx(expected)


def test_vqa_accuracy_loo_differs_from_plain_formula():
    # plain min(1, 3/3) would give 1.0 for 3 of 10; leave-one-out gives (3 * 2/3 + 7 * 1) / 10
    assert vqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("Two.", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)


def test_vqa_accuracy_reference_handling():
    # disagreeing annotators: answers and prediction normalised ("dog." -> "dog")
    assert vqa_accuracy("dog", ["dog."] * 4 + ["cat"] * 6) == 1.0
    # unanimous annotators: compared as written, as in the official scorer (tests/eval/test_vqa_normalization.py)
    assert vqa_accuracy("dog", ["dog."] * 10) == 0.0
    assert vqa_accuracy("dog", ["dog."] * 10, normalization="openflamingo") == 1.0
    assert vqa_accuracy("two", ["Two"] * 10, normalization="openflamingo") == 1.0
    assert vqa_accuracy("yes", ["yes"]) == 1.0 and vqa_accuracy("no", ["yes"]) == 0.0


def test_vqa_score_mean_in_percent():
    out = vqa_score({"q1": "yes", "q2": "2"}, {"q1": ["yes"] * 10, "q2": ["2"] * 2 + ["3"] * 8})
    assert out["accuracy"] == pytest.approx(80.0)
    assert out["per_sample"] == pytest.approx({"q1": 1.0, "q2": 0.6})


# ---------------------------------------------------------------- ROC-AUC, accuracy


def test_roc_auc_known_cases():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied
    assert roc_auc([0, 1], [0.3, 0.3]) == 0.5
    # one positive tied with one negative, above the other: (1 + 0.5) / 2
    assert roc_auc([0, 0, 1], [0.1, 0.7, 0.7]) == pytest.approx(0.75)


def test_roc_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=300)
    scores = np.round(rng.normal(size=300) + labels, 1)  # rounding makes many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_rejects_one_class():
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc([1, 1], [0.2, 0.3])


def test_accuracy():
    assert accuracy(["cat", "dog", "cat", "cow"], ["cat", "dog", "dog", "cow"]) == 0.75
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])


# ---------------------------------------------------------------- Recall@K


def test_recall_at_k_several_captions_per_image():
    # 3 images, 6 captions; caption j belongs to image owner[j]
    owner = [0, 0, 1, 1, 2, 2]
    sim = np.array([
        [0.1, 0.9, 0.8, 0.0, 0.0, 0.0],  # image 0: its caption 1 is the top text -> i2t R@1 hit
        [0.0, 0.0, 0.1, 0.2, 0.9, 0.0],  # image 1: captions 2, 3 ranked 3rd and 2nd -> hit at K=2
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.1],  # image 2: caption 5 top; caption 4 tied with four wrong ones
    ])
    out = recall_at_k(sim, owner, ks=(1, 2, 5))
    assert out["i2t_R@1"] == pytest.approx(200 / 3)
    assert out["i2t_R@2"] == pytest.approx(100.0)
    # t2i: caption j's column; hit@1 when its image has the largest value in the column (ties count against)
    # cap0: img0 0.1 best -> hit; cap1: 0.9 best; cap2: img1 0.1 < img0 0.8 -> rank 2; cap3: 0.2 best;
    # cap4: img2 0.0 < img1 0.9, tied with img0 0.0 -> rank 3; cap5: 0.1 best
    assert out["t2i_R@1"] == pytest.approx(400 / 6)
    assert out["t2i_R@2"] == pytest.approx(500 / 6)
    assert out["t2i_R@5"] == pytest.approx(100.0)


def test_recall_at_k_ties_never_help():
    owner = [0, 1]
    sim = np.zeros((2, 2))
    out = recall_at_k(sim, owner, ks=(1, 2))
    assert out["i2t_R@1"] == 0.0 and out["t2i_R@1"] == 0.0
    assert out["i2t_R@2"] == 100.0 and out["t2i_R@2"] == 100.0


def test_recall_at_k_identity_is_perfect():
    sim = np.eye(5) + 0.01 * np.arange(5)
    out = recall_at_k(sim, list(range(5)), ks=(1,))
    assert out == {"i2t_R@1": 100.0, "t2i_R@1": 100.0}


@needs_java
def test_cider_fallback_equals_java_on_caption_corpus():
    refs = {i: [c, c.upper(), f"{c}, again!"] for i, c in enumerate(CAPTIONS) if c}
    preds = {i: f"{c.split(' ')[0]} ({i}) isn't it?" for i in refs for c in [CAPTIONS[i]]}
    java, fallback = cider(preds, refs, tokenizer="ptb-java"), cider(preds, refs, tokenizer="python-fallback")
    assert java["tokenizer"] == "ptb-java" and fallback["tokenizer"] == "python-fallback"
    assert fallback["CIDEr"] == pytest.approx(java["CIDEr"], rel=1e-9)
