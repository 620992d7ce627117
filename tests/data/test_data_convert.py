"""Converters on small fixtures: folder + CSV/JSONL, COCO, VQAv2, MMC4; and their CLI."""

from __future__ import annotations

import json

import numpy as np
from datafixtures import noisy

from frozenvl.cli.data import main
from frozenvl.data import LoaderConfig, ShardDataset
from frozenvl.data.convert import convert_coco, convert_folder, convert_mmc4, convert_vqav2


def images(folder, names, size=16):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        noisy(i, size).save(folder / name)
    return folder


def read(out) -> dict:
    return {s["key"]: s for s in ShardDataset(out, LoaderConfig(shuffle_shards=False, max_images=10))}


def test_folder_csv_and_jsonl(tmp_path):
    img_dir = images(tmp_path / "imgs", ["a.png", "b.jpg", "c.png"])
    (img_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "caps.csv").write_text("image,caption,long_caption\na.png,a cat,A long cat.\nb.jpg,a dog,\n"
                                       "c.png,,\nmissing.png,ghost,\nbroken.png,bad,\n")
    report = convert_folder(img_dir, tmp_path / "caps.csv", tmp_path / "out", shard_size=1, progress=False)
    assert report.written == 2 and len(report.shards) == 2
    assert report.skipped.as_dict() == {"empty_text": 1, "missing_image": 1, "corrupt_image": 1}
    assert "missing_image: 1" in report.summary()
    got = read(tmp_path / "out")
    assert got["a_0"]["caption"] == "a cat" and got["a_0"]["long_caption"] == "A long cat."
    assert np.array_equal(np.asarray(got["a_0"]["images"][0]), np.asarray(noisy(0, 16)))
    assert "long_caption" not in got["b_1"]

    rows = [{"file": "a.png", "text": "first", "key": "k.1"}, {"file": "c.png", "text": 42}, "not a row"]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    report = convert_folder(img_dir, tmp_path / "caps.jsonl", tmp_path / "out2", max_size=8, progress=False)
    assert report.written == 1 and report.skipped.as_dict() == {"bad_field": 1, "bad_json": 2}
    (sample,) = read(tmp_path / "out2").values()
    assert sample["key"] == "k_1" and sample["images"][0].size == (8, 8)  # downscaled


def coco_fixture(tmp_path):
    img_dir = images(tmp_path / "val2014", ["COCO_val2014_000000000001.jpg", "COCO_val2014_000000000002.jpg"])
    coco = {"images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
                       {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"},
                       {"id": 3, "file_name": "COCO_val2014_000000000003.jpg"}],
            "annotations": [{"image_id": 1, "id": 10, "caption": "A man riding a horse."},
                            {"image_id": 1, "id": 11, "caption": "Someone on a horse."},
                            {"image_id": 2, "id": 12, "caption": " "},
                            {"image_id": 2, "id": 13, "caption": "A bowl of fruit."},
                            {"image_id": 3, "id": 14, "caption": "Lost image."}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    return img_dir


def test_coco(tmp_path):
    img_dir = coco_fixture(tmp_path)
    report = convert_coco(tmp_path / "captions.json", img_dir, tmp_path / "pairs", progress=False)
    assert report.written == 3 and report.skipped.as_dict() == {"empty_text": 1, "missing_image": 1}
    got = read(tmp_path / "pairs")
    assert sorted(got) == ["coco1_10", "coco1_11", "coco2_13"] and got["coco1_10"]["image_id"] == 1
    report = convert_coco(tmp_path / "captions.json", img_dir, tmp_path / "cap", records="caption", progress=False)
    got = read(tmp_path / "cap")
    assert got["coco1"]["captions"] == ["A man riding a horse.", "Someone on a horse."]
    assert got["coco2"]["captions"] == ["A bowl of fruit."] and got["coco1"]["kind"] == "caption"
    convert_coco(tmp_path / "captions.json", img_dir, tmp_path / "ret", records="retrieval", progress=False)
    assert read(tmp_path / "ret")["coco1"]["kind"] == "retrieval"


def test_vqav2(tmp_path):
    img_dir = images(tmp_path / "imgs", ["COCO_val2014_000000000042.jpg", "COCO_val2014_000000000007.jpg"])
    qs = {"questions": [{"image_id": 42, "question": "What colour is it?", "question_id": 420},
                        {"image_id": 7, "question": "How many?", "question_id": 70},
                        {"image_id": 99, "question": "Where?", "question_id": 990},
                        {"image_id": 7, "question": "", "question_id": 71}]}
    anns = {"annotations": [{"question_id": 420, "image_id": 42,
                             "answers": [{"answer": "red", "answer_id": i} for i in range(10)]},
                            {"question_id": 70, "image_id": 7, "answers": [{"answer": str(i % 3)} for i in range(10)]}]}
    (tmp_path / "q.json").write_text(json.dumps(qs))
    (tmp_path / "a.json").write_text(json.dumps(anns))
    report = convert_vqav2(tmp_path / "q.json", img_dir, tmp_path / "out", annotations_json=tmp_path / "a.json",
                           progress=False)
    assert report.written == 2 and report.skipped.as_dict() == {"missing_image": 1, "empty_text": 1}
    got = read(tmp_path / "out")
    assert got["vqa420"]["answers"] == ["red"] * 10 and got["vqa420"]["question"] == "What colour is it?"
    assert got["vqa70"]["answers"] == [str(i % 3) for i in range(10)] and got["vqa70"]["question_id"] == 70


def test_mmc4(tmp_path):
    img_dir = images(tmp_path / "imgs", ["x.jpg", "y.png"])
    docs = [
        {"url": "http://a", "text_list": ["Intro sentence.", "About x.", "About y."],
         "image_info": [{"image_name": "x.jpg", "matched_text_index": 1, "matched_sim": 0.31},
                        {"image_name": "y.png", "matched_text_index": 2, "matched_sim": 0.22},
                        {"image_name": "gone.jpg", "matched_text_index": 0, "matched_sim": 0.5}]},
        {"text_list": ["No images here."], "image_info": []},
        {"text_list": ["x"], "image_info": [{"image_name": "x.jpg", "matched_text_index": 5}]},
    ]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\nnot json\n")
    report = convert_mmc4(tmp_path / "docs.jsonl", img_dir, tmp_path / "out", progress=False)
    assert report.written == 1
    assert report.skipped.as_dict() == {"missing_image": 1, "no_images": 2, "bad_field": 1, "bad_json": 1}
    (page,) = read(tmp_path / "out").values()
    assert page["text"] == "Intro sentence.<image>About x.<|endofchunk|><image>About y.<|endofchunk|>"
    assert len(page["images"]) == 2 and page["url"] == "http://a"
    strict = read_filtered(tmp_path / "out", 0.25)
    assert strict["text"] == "Intro sentence.<image>About x. About y.<|endofchunk|>"


def read_filtered(out, min_similarity):
    (page,) = ShardDataset(out, LoaderConfig(min_similarity=min_similarity))
    return page


def test_convert_cli(tmp_path, capsys):
    img_dir = coco_fixture(tmp_path)
    assert main(["convert", "coco", str(tmp_path / "captions.json"), str(img_dir), str(tmp_path / "o"),
                 "--records", "caption", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 samples in 1 shards; skipped 1" in out and "missing_image: 1" in out
    assert main(["convert", "folder", str(tmp_path / "nope"), str(tmp_path / "c.csv"), str(tmp_path / "o2")]) == 2
    assert "image folder not found" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "o")]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == {"caption": 2}
