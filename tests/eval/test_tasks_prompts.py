"""Task specs, post-processing and prompt strings exactly as the protocol of docs/evaluation.md."""

from __future__ import annotations

import dataclasses

import pytest

from frozenvl.eval.postprocess import cut_at_end_of_chunk, postprocess, postprocess_caption, postprocess_vqa
from frozenvl.eval.prompts import build_few_shot_prompt, build_prompt, candidate_continuation, demos_for_shots
from frozenvl.eval.records import EvalRecord
from frozenvl.eval.tasks import KINDS, TASKS, TaskSpec, get_task, register_task

CAP = [EvalRecord(f"c{i}", image_path=f"img{i}.jpg", captions=[f"caption {i}", "other"]) for i in range(4)]
VQA = [EvalRecord(f"q{i}", image_path=f"v{i}.jpg", question=f"what is {i}?",
                  answers=["yes"] * 6 + [str(i)] * 4) for i in range(3)]


def test_registry_follows_design_section_3():
    expected = {"coco", "flickr30k", "vqav2", "okvqa", "textvqa", "vizwiz", "imagenet", "hateful_memes",
                "msvd_qa", "msrvtt_qa", "msvd_captioning", "msrvtt_captioning"}
    assert expected <= set(TASKS)
    for spec in TASKS.values():
        assert spec.kind in KINDS
        if not spec.close_ended:
            assert spec.num_beams == 3
    for name in ("coco", "flickr30k", "msrvtt_captioning"):
        spec = get_task(name)
        assert spec.max_new_tokens == 20 and spec.metric == "cider"
        assert spec.prompt_template == "<image>Output:{caption}<|endofchunk|>"
    for name in ("vqav2", "okvqa", "textvqa", "vizwiz", "msvd_qa"):
        spec = get_task(name)
        assert spec.max_new_tokens == 5
        assert spec.prompt_template == "<image>Question:{question} Short answer:{answer}<|endofchunk|>"
    assert get_task("hateful_memes").metric == "roc_auc" and get_task("hateful_memes").positive == "yes"
    assert get_task("msvd_qa").is_video and not get_task("vqav2").is_video
    with pytest.raises(KeyError, match="unknown task"):
        get_task("nope")


def test_task_spec_validation():
    good = get_task("coco")
    with pytest.raises(ValueError, match="kind"):
        dataclasses.replace(good, kind="dance")
    with pytest.raises(ValueError, match="metric"):
        dataclasses.replace(good, metric="bleu")
    with pytest.raises(ValueError, match="last field"):
        dataclasses.replace(good, prompt_template="<image>Output:{question}<|endofchunk|>")
    with pytest.raises(ValueError, match="endofchunk"):
        dataclasses.replace(good, prompt_template="<image>Output:{caption}")
    with pytest.raises(ValueError, match="max_new_tokens"):
        dataclasses.replace(good, max_new_tokens=0)
    with pytest.raises(ValueError, match="already registered"):
        register_task(good)


def test_captioning_prompt_strings():
    prompt = build_prompt(get_task("coco"), CAP[:2], CAP[3])
    assert prompt.context == ("<image>Output:caption 0<|endofchunk|>"
                              "<image>Output:caption 1<|endofchunk|>")
    assert prompt.query == "<image>Output:"
    assert prompt.text == prompt.context + prompt.query
    assert prompt.media == ["img0.jpg", "img1.jpg", "img3.jpg"] and prompt.num_context_media == 2
    assert prompt.text.count("<image>") == len(prompt.media)


def test_vqa_prompt_uses_most_common_answer():
    prompt = build_prompt(get_task("vqav2"), VQA[:2], VQA[2])
    assert prompt.text == ("<image>Question:what is 0? Short answer:yes<|endofchunk|>"
                           "<image>Question:what is 1? Short answer:yes<|endofchunk|>"
                           "<image>Question:what is 2? Short answer:")


def test_zero_shot_is_two_text_only_demonstrations():
    assert demos_for_shots(0) == (2, True)
    assert demos_for_shots(4) == (4, False)
    prompt = build_few_shot_prompt(get_task("vqav2"), VQA[:2], VQA[2], shots=0)
    assert prompt.context == ("Question:what is 0? Short answer:yes<|endofchunk|>"
                              "Question:what is 1? Short answer:yes<|endofchunk|>")
    assert prompt.query == "<image>Question:what is 2? Short answer:"
    assert prompt.media == ["v2.jpg"] and prompt.num_context_media == 0
    with pytest.raises(ValueError, match="needs 2 demonstrations"):
        build_few_shot_prompt(get_task("vqav2"), VQA[:1], VQA[2], shots=0)
    four = build_few_shot_prompt(get_task("coco"), CAP[:3] + CAP[:1], CAP[3], shots=4)
    assert four.text.count("<image>") == 5


def test_classification_prompts():
    classes = ["goldfish", "tench"]
    spec = get_task("imagenet")
    demo = EvalRecord("d", image_path="d.jpg", label=1)
    prompt = build_prompt(spec, [demo], EvalRecord("q", image_path="q.jpg", label=0), class_names=classes)
    assert prompt.text == "<image>Output:tench<|endofchunk|><image>Output:"
    assert spec.candidates_for(demo, classes) == classes
    hm = get_task("hateful_memes")
    memes = [EvalRecord("m1", image_path="m1.png", text="hello there", label=1),
             EvalRecord("m2", image_path="m2.png", text="cats", label=0)]
    prompt = build_prompt(hm, memes[:1], memes[1])
    assert prompt.text == ("<image>is an image with: 'hello there' written on it. Is it hateful? "
                           "Answer:yes<|endofchunk|>"
                           "<image>is an image with: 'cats' written on it. Is it hateful? Answer:")
    assert candidate_continuation("no") == "no<|endofchunk|>"


def test_multiple_choice_candidates_from_record():
    spec = TaskSpec("mc_demo", "multiple_choice", "<image>Question:{question} Answer:{answer}<|endofchunk|>",
                    metric="accuracy")
    record = EvalRecord("r", question="which?", label=1, meta={"choices": ["left", "right"]})
    assert spec.candidates_for(record) == ["left", "right"] and spec.target(record) == "right"
    assert spec.score([record], {"r": "right"})["score"] == 100.0


def test_video_prompt_media_is_the_frame_list():
    vids = [EvalRecord(f"v{i}", frames=[f"v{i}/0.jpg", f"v{i}/1.jpg"], question="what moves?",
                       answers=["cube"]) for i in range(2)]
    prompt = build_prompt(get_task("msvd_qa"), vids[:1], vids[1])
    assert prompt.media == [["v0/0.jpg", "v0/1.jpg"], ["v1/0.jpg", "v1/1.jpg"]]


@pytest.mark.parametrize("raw, expected", [
    ("a red cube<|endofchunk|><image>Output:a dog", "a red cube"),
    (" a red cube on the left Output: two", "a red cube on the left"),
    ('"a  red\tcube"\nsecond line', "a red cube"),
])
def test_postprocess_caption(raw, expected):
    assert postprocess_caption(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("yes<|endofchunk|>", "yes"), (" blue Question: what", "blue"), ("2\nQuestion:", "2"),
    ("red Short answer:blue", "red"), ("left<image>", "left"),
])
def test_postprocess_vqa(raw, expected):
    assert postprocess_vqa(raw) == expected


def test_postprocess_dispatch():
    assert postprocess("none", " x <|endofchunk|>y") == "x" == cut_at_end_of_chunk(" x <|endofchunk|>y")
    with pytest.raises(ValueError, match="unknown post-processing"):
        postprocess("shout", "x")


def test_task_score_dispatches_to_metric():
    vqa = get_task("vqav2").score(VQA, {"q0": "Yes", "q1": "1", "q2": "no"})
    assert vqa["score"] == pytest.approx(100 * (1.0 + 1.0 + 0.0) / 3)
    hm = get_task("hateful_memes")
    memes = [EvalRecord(str(i), text="t", label=y) for i, y in enumerate([0, 1, 0, 1])]
    assert hm.score(memes, {"0": 0.1, "1": 0.9, "2": 0.5, "3": 0.5})["score"] == pytest.approx(87.5)
    vid = get_task("msvd_qa").score([EvalRecord("a", answers=["two"])], {"a": "2"})
    assert vid["score"] == 100.0
    cls = get_task("imagenet").score([EvalRecord("a", label=0), EvalRecord("b", label=1)],
                                     {"a": "goldfish", "b": "goldfish"}, class_names=["goldfish", "tench"])
    assert cls["score"] == 50.0
    with pytest.raises(ValueError, match="no prediction"):
        get_task("vqav2").score(VQA, {"q0": "yes"})
