"""Hostile source files for the converters: each bad record is skipped and counted (the rest converted), and a
file that cannot be used at all is one error naming the file (and the missing column)."""

from __future__ import annotations

import json

import pytest
from datafixtures import noisy
from test_hostile_shards import bomb_png

from frozenvl.cli.data import main as data_main
from frozenvl.data import LoaderConfig, ShardDataset
from frozenvl.data.convert import convert_coco, convert_folder, convert_mmc4, convert_vqav2

DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's recursion limit: json raises RecursionError


def images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        noisy(i, 8).save(folder / name)
    return folder


def keys(out) -> list[str]:
    return sorted(s["key"] for s in ShardDataset(out, LoaderConfig(shuffle_shards=False, max_tokens=10_000)))


@pytest.mark.parametrize("text, missing", [
    ("a.png,a cat\nb.png,a dog\n", "no image column"),  # no header line: the first row is read as the header
    ("image,title_fr\na.png,un chat\n", "no caption column"),
    ("file;caption\na.png;a cat\n", "no image column"),  # another delimiter: one column named 'file;caption'
])
def test_a_csv_without_the_needed_columns_is_one_error_naming_the_file(tmp_path, text, missing):
    img_dir = images(tmp_path / "imgs", ["a.png", "b.png"])
    (tmp_path / "caps.csv").write_text(text)
    with pytest.raises(ValueError, match=missing) as err:
        convert_folder(img_dir, tmp_path / "caps.csv", tmp_path / "out", progress=False)
    assert "caps.csv" in str(err.value) and "header" in str(err.value)
    code = data_main(["convert", "folder", str(img_dir), str(tmp_path / "caps.csv"), str(tmp_path / "o2"),
                      "--quiet"])
    assert code == 2


def test_a_named_column_that_is_absent_and_an_empty_file_are_errors(tmp_path, capsys):
    img_dir = images(tmp_path / "imgs", ["a.png"])
    (tmp_path / "caps.jsonl").write_text(json.dumps({"image": "a.png", "caption": "a cat"}) + "\n")
    with pytest.raises(ValueError, match="caps.jsonl has no column 'alt'"):
        convert_folder(img_dir, tmp_path / "caps.jsonl", tmp_path / "out", caption_column="alt", progress=False)
    (tmp_path / "empty.csv").write_text("image,caption\n")
    with pytest.raises(ValueError, match="empty.csv has no rows"):
        convert_folder(img_dir, tmp_path / "empty.csv", tmp_path / "out", progress=False)


def test_bad_csv_and_jsonl_rows_are_counted_and_the_rest_converted(tmp_path):
    img_dir = images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    huge = "x" * 200_000  # over the csv module's field limit (131072)
    (tmp_path / "caps.csv").write_text(f"image,caption\na.png,a cat\nb.png,{huge}\nc.png,a cow\n")
    report = convert_folder(img_dir, tmp_path / "caps.csv", tmp_path / "csv", progress=False)
    assert report.written == 2 and report.skipped.as_dict() == {"bad_field": 1}
    assert keys(tmp_path / "csv") == ["a_0", "c_2"]

    lines = [json.dumps({"image": "a.png", "caption": "a cat"}), DEEP,
             json.dumps({"image": ["a list"], "caption": "odd"}),
             json.dumps({"image": "b.png", "caption": "a dog", "long_caption": {"not": "text"}}),
             json.dumps({"image": "c.png", "caption": "a cow"})]
    (tmp_path / "caps.jsonl").write_text("\n".join(lines) + "\n")
    report = convert_folder(img_dir, tmp_path / "caps.jsonl", tmp_path / "jsonl", progress=False)
    assert report.skipped.as_dict() == {"bad_json": 1, "missing_image": 1, "bad_field": 1}
    assert report.written == 2 and keys(tmp_path / "jsonl") == ["a_0", "c_4"]


def test_a_caption_file_that_is_not_utf8_names_the_file(tmp_path):
    img_dir = images(tmp_path / "imgs", ["a.png"])
    (tmp_path / "caps.csv").write_bytes(b"image,caption\na.png,\xff\xfe caption\n")
    with pytest.raises(ValueError, match="caps.csv is not UTF-8"):
        convert_folder(img_dir, tmp_path / "caps.csv", tmp_path / "out", progress=False)


def test_coco_bad_entries_are_counted_not_fatal(tmp_path):
    img_dir = images(tmp_path / "imgs", ["1.jpg", "2.jpg", "3.jpg"])
    (img_dir / "bomb.png").write_bytes(bomb_png())
    coco = {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": 2}, {"id": [3], "file_name": "3.jpg"},
                       {"id": 4, "file_name": "bomb.png"}, "not an image"],
            "annotations": [{"image_id": 1, "id": 10, "caption": "A horse."},
                            {"image_id": 1, "id": 10, "caption": "The same id again."},
                            {"image_id": 2, "id": 11, "caption": "File name is a number."},
                            {"image_id": {"x": 1}, "id": 12, "caption": "Unhashable image id."},
                            {"image_id": 4, "id": 13, "caption": "A bomb."},
                            {"image_id": 1, "id": 14, "caption": "Another horse."}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    report = convert_coco(tmp_path / "captions.json", img_dir, tmp_path / "out", progress=False)
    assert report.skipped.as_dict() == {"bad_field": 4, "duplicate_key": 1, "image_too_large": 1}
    assert report.written == 2 and keys(tmp_path / "out") == ["coco1_10", "coco1_14"]


def test_unusable_annotation_files_are_one_error_naming_the_file(tmp_path):
    img_dir = images(tmp_path / "imgs", ["1.jpg"])
    (tmp_path / "deep.json").write_text(DEEP)
    with pytest.raises(ValueError, match="deep.json is nested too deeply"):
        convert_coco(tmp_path / "deep.json", img_dir, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="deep.json is nested too deeply"):
        convert_vqav2(tmp_path / "deep.json", img_dir, tmp_path / "out", progress=False)
    (tmp_path / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    with pytest.raises(ValueError, match="binary.json is not UTF-8"):
        convert_coco(tmp_path / "binary.json", img_dir, tmp_path / "out", progress=False)
    (tmp_path / "dictimages.json").write_text(json.dumps({"images": {"1": "1.jpg"}, "annotations": []}))
    with pytest.raises(ValueError, match="dictimages.json is not a COCO captions file"):
        convert_coco(tmp_path / "dictimages.json", img_dir, tmp_path / "out", progress=False)


def test_vqav2_bad_and_repeated_questions_are_counted(tmp_path):
    img_dir = images(tmp_path / "imgs", ["COCO_val2014_000000000042.jpg"])
    qs = {"questions": [{"image_id": 42, "question": "What colour?", "question_id": 1},
                        {"image_id": 42, "question": "Repeated id?", "question_id": 1},
                        {"image_id": 42, "question": "A list id?", "question_id": [2]},
                        {"image_id": 42, "question": "How many?", "question_id": 3}]}
    anns = {"annotations": [{"question_id": 1, "answers": [{"answer": "red"}]},
                            {"question_id": [2], "answers": [{"answer": "x"}]},
                            {"question_id": 3, "answers": [{"answer": "two"}]}]}
    (tmp_path / "q.json").write_text(json.dumps(qs))
    (tmp_path / "a.json").write_text(json.dumps(anns))
    report = convert_vqav2(tmp_path / "q.json", img_dir, tmp_path / "out", annotations_json=tmp_path / "a.json",
                           progress=False)
    assert report.skipped.as_dict() == {"duplicate_key": 1, "bad_field": 1}
    assert keys(tmp_path / "out") == ["vqa1", "vqa3"]


def test_mmc4_bad_lines_are_counted_and_the_rest_converted(tmp_path):
    img_dir = images(tmp_path / "imgs", ["a.jpg", "b.jpg"])
    doc = {"text_list": ["Intro.", "A cat."], "image_info": [{"image_name": "a.jpg", "matched_text_index": 1}]}
    odd = {"text_list": ["Text."], "image_info": [{"image_name": ["a.jpg"], "matched_text_index": 0},
                                                  {"image_name": "b.jpg", "matched_text_index": 0}]}
    lines = [json.dumps(doc).encode(), b"\xff\xfe not utf-8", DEEP.encode(), json.dumps(odd).encode(),
             json.dumps(doc).encode()]
    (tmp_path / "docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report = convert_mmc4(tmp_path / "docs.jsonl", img_dir, tmp_path / "out", progress=False)
    assert report.skipped.as_dict() == {"bad_json": 2, "bad_field": 1}  # odd keeps its good image
    assert report.written == 3 and keys(tmp_path / "out") == ["mmc400000000", "mmc400000003", "mmc400000004"]


def test_a_csv_with_a_byte_order_mark_reads_its_header(tmp_path):
    img_dir = images(tmp_path / "imgs", ["a.png"])
    (tmp_path / "caps.csv").write_bytes("image,caption\na.png,a cat\n".encode("utf-8-sig"))  # as Excel saves
    report = convert_folder(img_dir, tmp_path / "caps.csv", tmp_path / "out", progress=False)
    assert report.written == 1 and keys(tmp_path / "out") == ["a_0"]


def test_a_caption_the_reader_would_skip_is_counted_not_written(tmp_path):
    """A caption over the reader's text cap (1 MiB) was written and reported as converted, then skipped unread
    ('member_too_large') at every read of the shards."""
    img_dir = images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    lines = [{"image": "a.png", "caption": "a cat"}, {"image": "b.png", "caption": "long " * (300 << 10)},
             {"image": "c.png", "caption": "a cow"}]
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = convert_folder(img_dir, tmp_path / "caps.jsonl", tmp_path / "out", progress=False)
    assert report.written == 2 and report.skipped.as_dict() == {"member_too_large": 1}
    dataset = ShardDataset(tmp_path / "out", LoaderConfig(shuffle_shards=False, max_tokens=10_000))
    assert sorted(s["key"] for s in dataset) == ["a_0", "c_2"] and dataset.skips.total == 0


def test_a_conversion_into_a_folder_holding_an_earlier_one_is_refused_unless_overwrite(tmp_path, capsys):
    """Shards are named {prefix}-000000.tar on: a second conversion into the folder overwrote the first shards of
    the earlier one and left the rest (3 samples converted, then 1: a reader of the folder got 3, two stale)."""
    img_dir = images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    (tmp_path / "three.jsonl").write_text("".join(json.dumps({"image": f"{n}.png", "caption": f"a {n}"}) + "\n"
                                                  for n in "abc"))
    (tmp_path / "one.jsonl").write_text(json.dumps({"image": "c.png", "caption": "the new one"}) + "\n")
    out = tmp_path / "out"
    assert convert_folder(img_dir, tmp_path / "three.jsonl", out, shard_size=1, progress=False).written == 3
    (out / "pairs-000007.tar.tmp").write_bytes(b"left by a killed conversion")
    (out / "pairsx-000000.tar").write_bytes(b"")  # another prefix: never touched
    with pytest.raises(FileExistsError, match=r"already holds 3 'pairs' shards"):
        convert_folder(img_dir, tmp_path / "one.jsonl", out, shard_size=1, progress=False)
    assert keys(out) == ["a_0", "b_1", "c_2"]  # the earlier conversion is intact
    args = ["convert", "folder", str(img_dir), str(tmp_path / "one.jsonl"), str(out), "--shard-size", "1", "--quiet"]
    assert data_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert str(out) in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert data_main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pairs-000000.tar", "pairsx-000000.tar"]
    assert keys(out) == ["c_0"]
