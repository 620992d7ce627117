"""Readers of the real dataset formats, on small fixture files written in tmp_path."""

from __future__ import annotations

import json

import pytest

from frozenvl.eval.records import (
    EvalRecord,
    read_class_folder,
    read_class_names,
    read_coco_captions,
    read_hateful_memes,
    read_textvqa,
    read_video_captions,
    read_video_qa,
    read_vizwiz,
    read_vqav2,
    video_frames,
)


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_karpathy_captions_with_split_filter(tmp_path):
    path = _write(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "cocoid": 7,
         "sentences": [{"raw": "A dog. "}, {"raw": "A brown dog"}]},
        {"filepath": "train2014", "filename": "b.jpg", "split": "train", "cocoid": 8,
         "sentences": [{"raw": "A cat"}]},
        {"filepath": "val2014", "filename": "c.jpg", "split": "restval", "cocoid": 9,
         "sentences": [{"raw": "A cow"}]},
    ]})
    test = read_coco_captions(path, image_root=tmp_path / "coco", split="test")
    assert [r.key for r in test] == ["7"]
    assert test[0].captions == ["A dog.", "A brown dog"]
    assert test[0].image_path == str(tmp_path / "coco" / "val2014" / "a.jpg")
    train = read_coco_captions(path, split=["train", "restval"])
    assert [r.key for r in train] == ["8", "9"]
    assert len(read_coco_captions(path)) == 3


def test_flickr_karpathy_without_filepath(tmp_path):
    path = _write(tmp_path / "dataset_flickr30k.json", {"images": [
        {"filename": "1000.jpg", "split": "test", "imgid": 0, "sentences": [{"raw": "x"}, {"raw": "y"}]}]})
    (record,) = read_coco_captions(path, image_root="imgs")
    assert record.key == "0" and record.image_path == "imgs/1000.jpg" and record.captions == ["x", "y"]


def test_official_coco_annotations(tmp_path):
    path = _write(tmp_path / "captions_val2014.json", {
        "images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
                   {"id": 2, "file_name": "two.jpg"}, {"id": 3, "file_name": "no_caption.jpg"}],
        "annotations": [{"image_id": 1, "id": 10, "caption": "first"},
                        {"image_id": 2, "id": 11, "caption": "b"},
                        {"image_id": 1, "id": 12, "caption": "second "},
                        {"image_id": 2, "id": 13, "caption": ""}],
    })
    with pytest.warns(UserWarning, match="skipped 2"):
        records = read_coco_captions(path, image_root="val2014")
    assert {r.key: r.captions for r in records} == {"1": ["first", "second"], "2": ["b"]}
    assert records[0].image_path == "val2014/COCO_val2014_000000000001.jpg"
    with pytest.raises(ValueError, match="one split"):
        read_coco_captions(path, split="test")


def test_bad_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        read_coco_captions(path)


def test_vqav2_questions_and_annotations(tmp_path):
    q = _write(tmp_path / "q.json", {"questions": [
        {"question_id": 100, "image_id": 42, "question": "What colour is the cube?"},
        {"question_id": 101, "image_id": 43, "question": "How many?"},
    ]})
    a = _write(tmp_path / "a.json", {"annotations": [
        {"question_id": 100, "image_id": 42, "question_type": "what color", "answer_type": "other",
         "multiple_choice_answer": "red", "answers": [{"answer": "red", "answer_id": i} for i in range(1, 8)]
         + [{"answer": "dark red", "answer_id": i} for i in range(8, 11)]},
        {"question_id": 101, "image_id": 43, "answers": [{"answer": "2"}] * 10},
    ]})
    records = read_vqav2(q, a, image_root="val2014")
    assert [r.key for r in records] == ["100", "101"]
    first = records[0]
    assert first.question == "What colour is the cube?"
    assert first.image_path == "val2014/COCO_val2014_000000000042.jpg"
    assert len(first.answers) == 10 and first.answers.count("red") == 7
    assert first.answer == "red"
    assert first.meta["answer_type"] == "other"
    # questions only (a test split): no answers
    assert read_vqav2(q)[1].answers == []


def test_textvqa_and_vizwiz(tmp_path):
    t = _write(tmp_path / "textvqa.json", {"data": [
        {"question_id": 5, "image_id": "abc", "question": "what brand?",
         "answers": ["nike"] * 9 + ["adidas"]}]})
    (rec,) = read_textvqa(t, image_root="train_images")
    assert rec.image_path == "train_images/abc.jpg" and rec.answers.count("nike") == 9
    v = _write(tmp_path / "vizwiz.json", [
        {"image": "VizWiz_val_00000001.jpg", "question": "What is this?", "answer_type": "other",
         "answers": [{"answer": "soup", "answer_confidence": "yes"}] * 10},
        {"image": "VizWiz_val_00000002.jpg", "question": ""},
    ])
    with pytest.warns(UserWarning, match="skipped 1"):
        (rec,) = read_vizwiz(v, image_root="val")
    assert rec.key == "VizWiz_val_00000001.jpg" and rec.answers == ["soup"] * 10


def test_answer_is_most_common_first_seen_on_tie():
    assert EvalRecord("k", answers=["b", "a", "a", "b", "c"]).answer == "b"
    assert EvalRecord("k", answers=["x", "y", "y"]).answer == "y"


def test_class_folder_with_class_list(tmp_path):
    for folder, files in {"n02": ["b.jpg", "a.JPEG", "notes.txt"], "n01": ["z.png"]}.items():
        (tmp_path / "val" / folder).mkdir(parents=True)
        for f in files:
            (tmp_path / "val" / folder / f).write_bytes(b"")
    names = _write(tmp_path / "classes.json", {"n01": "goldfish", "n02": "tench"})
    records, class_names = read_class_folder(tmp_path / "val", read_class_names(names))
    assert class_names == ["goldfish", "tench"]  # sorted folder order
    assert [(r.key, r.label) for r in records] == [("n01/z.png", 0), ("n02/a.JPEG", 1), ("n02/b.jpg", 1)]
    assert records[1].meta["class_name"] == "tench"
    (tmp_path / "list.txt").write_text("goldfish\ntench\n")
    assert read_class_names(tmp_path / "list.txt") == ["goldfish", "tench"]
    with pytest.raises(ValueError, match="2 class folders but 3"):
        read_class_folder(tmp_path / "val", ["a", "b", "c"])


def test_hateful_memes_jsonl(tmp_path):
    path = tmp_path / "dev.jsonl"
    rows = [{"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character not their color"},
            {"id": 23058, "img": "img/23058.png", "label": 1, "text": "don't be afraid"},
            {"id": 1, "img": "img/1.png", "text": "no label (test split)"},
            {"id": 2, "text": "no image"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    with pytest.warns(UserWarning, match="skipped 1"):
        records = read_hateful_memes(path, image_root="hm")
    assert [(r.key, r.label) for r in records] == [("42953", 0), ("23058", 1), ("1", None)]
    assert records[1].text == "don't be afraid" and records[1].image_path == "hm/img/23058.png"


def _frames(root, vid, n):
    (root / vid).mkdir(parents=True)
    for i in range(n):
        (root / vid / f"{i:05d}.jpg").write_bytes(b"")


def test_video_frames_sorted_and_subsampled(tmp_path):
    _frames(tmp_path, "v", 10)
    frames = video_frames(tmp_path / "v", max_frames=4)
    assert [f.rsplit("/", 1)[1] for f in frames] == ["00000.jpg", "00002.jpg", "00005.jpg", "00007.jpg"]
    assert len(video_frames(tmp_path / "v")) == 10


def test_video_captions_and_qa(tmp_path):
    _frames(tmp_path / "frames", "vid1", 3)
    _frames(tmp_path / "frames", "vid2", 2)
    caps = _write(tmp_path / "caps.json", [{"video_id": "vid1", "caption": "a cube moves left"},
                                           {"video_id": "vid1", "caption": "a cube slides"},
                                           {"video_id": "vid2", "caption": "two spheres"},
                                           {"video_id": "missing", "caption": "no frames"}])
    with pytest.warns(UserWarning, match="skipped 1"):
        records = read_video_captions(tmp_path / "frames", caps)
    assert {r.key: r.captions for r in records} == {"vid1": ["a cube moves left", "a cube slides"],
                                                    "vid2": ["two spheres"]}
    assert len(records[0].frames) == 3 and records[0].media == records[0].frames
    qa = _write(tmp_path / "qa.json", [{"video_id": "vid2", "question": "what moves?", "answer": "sphere"},
                                       {"video": "vid1", "question": "which way?", "answer": "left"}])
    qa_records = read_video_qa(tmp_path / "frames", qa, max_frames=2)
    assert [(r.key, r.question, r.answers) for r in qa_records] == [("0", "what moves?", ["sphere"]),
                                                                     ("1", "which way?", ["left"])]
    assert len(qa_records[1].frames) == 2 and qa_records[1].meta["video_id"] == "vid1"


def test_video_captions_mapping_format(tmp_path):
    _frames(tmp_path / "frames", "v1", 2)
    caps = _write(tmp_path / "caps.json", {"v1": ["a cube moves", "a cube slides"], "v2": "no frames folder"})
    with pytest.warns(UserWarning, match="skipped 1"):
        (record,) = read_video_captions(tmp_path / "frames", caps)
    assert record.key == "v1" and record.captions == ["a cube moves", "a cube slides"]
