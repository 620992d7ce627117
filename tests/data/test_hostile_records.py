"""Hostile evaluation annotation files (frozenvl.eval.records) and caption inputs (frozenvl.flame.caption_sources):
a malformed entry is skipped and counted, a file that cannot be read is one error naming it."""

from __future__ import annotations

import json

import pytest

from frozenvl.data.skips import SkipCounter
from frozenvl.eval import records as R
from frozenvl.flame.caption_sources import iter_captions

DEEP = "[" * 100_000 + "]" * 100_000


def write(path, obj) -> str:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


@pytest.mark.parametrize("reader", [R.read_coco_captions, R.read_vqav2, R.read_textvqa, R.read_vizwiz,
                                    R.read_hateful_memes, R.read_class_names])
def test_unreadable_files_are_one_error_naming_the_file(tmp_path, reader):
    deep = write(tmp_path / "deep.json", DEEP)
    with pytest.raises(ValueError, match="deep.json.* nested too deeply"):
        reader(deep)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ValueError, match="binary.json is not UTF-8"):
        reader(str(binary))


def test_the_wrong_layout_is_one_error_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match="coco.json: 'images' must be a JSON list"):
        R.read_coco_captions(write(tmp_path / "coco.json", {"images": {"a": 1}}))
    with pytest.raises(ValueError, match="q.json: 'questions' must be a JSON list"):
        R.read_vqav2(write(tmp_path / "q.json", {"questions": 3}))


def test_malformed_caption_entries_are_skipped_and_counted(tmp_path):
    karpathy = {"images": [{"filename": "a.jpg", "cocoid": 1, "sentences": [{"raw": "A cat."}], "split": "test"},
                           {"filename": "b.jpg", "cocoid": 2, "sentences": [{"raw": 5}], "split": "test"},
                           "not an image",
                           {"filename": "c.jpg", "cocoid": 3, "sentences": ["no dict"], "split": "test"},
                           {"filename": "d.jpg", "cocoid": 4, "sentences": [{"raw": "A dog."}], "split": "test"}]}
    with pytest.warns(UserWarning, match="karpathy.json: skipped 3 images"):
        records = R.read_coco_captions(write(tmp_path / "karpathy.json", karpathy), split="test")
    assert [r.key for r in records] == ["1", "4"]
    official = {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": [2], "file_name": "2.jpg"}],
                "annotations": [{"image_id": 1, "caption": "One."}, {"image_id": [2], "caption": "Two."},
                                {"image_id": 1, "caption": ["a", "list"]}]}
    with pytest.warns(UserWarning, match="official.json: skipped 3 entries"):
        records = R.read_coco_captions(write(tmp_path / "official.json", official))
    assert [(r.key, r.captions) for r in records] == [("1", ["One."])]


def test_malformed_vqa_entries_are_skipped_and_counted(tmp_path):
    qs = {"questions": [{"question_id": 1, "image_id": 42, "question": "What?"},
                        {"question_id": 2, "image_id": "not a number", "question": "Template {:012d}?"},
                        {"question_id": 3, "image_id": 42, "question": 7},
                        [1, 2, 3],
                        {"question_id": 4, "image_id": 42, "question": "Answers odd?"}]}
    anns = {"annotations": [{"question_id": 1, "answers": [{"answer": "yes"}]},
                            {"question_id": [9], "answers": []},
                            {"question_id": 4, "answers": [{"answer": 12}, "x"]}]}
    with pytest.warns(UserWarning, match="q.json: skipped 4 questions"):
        records = R.read_vqav2(write(tmp_path / "q.json", qs), write(tmp_path / "a.json", anns))
    assert [(r.key, r.answers) for r in records] == [("1", ["yes"])]
    textvqa = {"data": [{"question_id": 1, "image_id": "a", "question": "Q?", "answers": ["x", 3]},
                        {"question_id": 2, "image_id": "b", "question": "Q?", "answers": ["y"]}]}
    with pytest.warns(UserWarning, match="textvqa.json: skipped 1 questions"):
        assert [r.key for r in R.read_textvqa(write(tmp_path / "textvqa.json", textvqa))] == ["2"]
    vizwiz = [{"image": "a.jpg", "question": "Q?", "answers": [{"answer": "x"}]}, ["a list"],
              {"image": ["a.jpg"], "question": "Q?"}]
    with pytest.warns(UserWarning, match="vizwiz.json: skipped 2 questions"):
        assert [r.key for r in R.read_vizwiz(write(tmp_path / "vizwiz.json", vizwiz))] == ["a.jpg"]


def test_malformed_memes_and_videos_are_skipped_and_counted(tmp_path):
    lines = [json.dumps({"id": 1, "img": "1.png", "text": "hi", "label": 1}), json.dumps([1, 2]),
             json.dumps({"id": 2, "img": "2.png", "text": "hi", "label": "x"}),
             json.dumps({"id": 3, "img": "3.png", "text": {"no": "text"}})]
    with pytest.warns(UserWarning, match="memes.jsonl: skipped 3 memes"):
        records = R.read_hateful_memes(write(tmp_path / "memes.jsonl", "\n".join(lines)))
    assert [(r.key, r.label) for r in records] == [("1", 1)]
    with pytest.raises(ValueError, match="memes.jsonl:1 is nested too deeply"):
        R.read_hateful_memes(write(tmp_path / "memes.jsonl", DEEP))

    for vid in ("v1", "v2"):
        (tmp_path / "frames" / vid).mkdir(parents=True)
        (tmp_path / "frames" / vid / "0001.jpg").write_bytes(b"")
    caps = {"v1": ["A cat runs."], "v2": [3, 4], "v3": 5}
    with pytest.warns(UserWarning, match="caps.json: skipped 2 videos"):
        records = R.read_video_captions(tmp_path / "frames", write(tmp_path / "caps.json", caps))
    assert [r.key for r in records] == ["v1"]
    with pytest.raises(ValueError, match="max_frames must be >= 1"):
        R.video_frames(tmp_path / "frames" / "v1", max_frames=0)


def test_caption_inputs_count_deep_and_binary_lines(tmp_path):
    path = tmp_path / "caps.jsonl"
    path.write_bytes(b"\n".join([json.dumps({"key": "a", "caption": "A cat."}).encode(), DEEP.encode(),
                                 b"\xff\xfe{not utf-8", json.dumps({"key": "b", "caption": "A dog."}).encode()]))
    skips = SkipCounter()
    assert list(iter_captions([path], skips)) == [("a", "A cat."), ("b", "A dog.")]
    assert skips.as_dict() == {"bad_json": 2}


def test_media_markers_in_annotation_text_are_skipped_or_escaped(tmp_path):
    from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
    from frozenvl.data.formats import ESCAPED_END_OF_CHUNK

    coco = {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
            "annotations": [{"image_id": 1, "caption": f"The {END_OF_CHUNK} token."},
                            {"image_id": 2, "caption": f"An {IMAGE_TOKEN} marker."}]}
    with pytest.warns(UserWarning, match="coco.json: skipped 2 entries"):  # the caption, then its image
        records = R.read_coco_captions(write(tmp_path / "coco.json", coco))
    assert [(r.key, r.captions) for r in records] == [("1", [f"The {ESCAPED_END_OF_CHUNK} token."])]
    qs = {"questions": [{"question_id": 1, "image_id": 1, "question": f"What is {END_OF_CHUNK}?"},
                        {"question_id": 2, "image_id": 2, "question": f"Where is {IMAGE_TOKEN}?"}]}
    with pytest.warns(UserWarning, match="q.json: skipped 1 questions"):
        records = R.read_vqav2(write(tmp_path / "q.json", qs))
    assert [r.question for r in records] == [f"What is {ESCAPED_END_OF_CHUNK}?"]


def test_huge_captions_in_caption_inputs_are_skipped_unread(tmp_path):
    import io
    import tarfile
    import tracemalloc

    from frozenvl.data.shards import MAX_TEXT_MEMBER_BYTES, capped_lines

    huge = "w " * (16 * MAX_TEXT_MEMBER_BYTES)  # 32 MiB of caption
    path = tmp_path / "caps.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"key": "a", "caption": "A cat."}, {"key": "b", "caption": huge},
                                                     {"key": "c", "caption": "A dog."}]))
    shard = tmp_path / "caps.tar"
    with tarfile.open(shard, "w") as tar:
        for key, text in (("a", "A cat."), ("b", huge), ("c", "A dog.")):
            info = tarfile.TarInfo(f"{key}.txt")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    for source in (path, shard):
        skips = SkipCounter()
        tracemalloc.start()
        try:
            got = list(iter_captions([source], skips))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert got == [("a", "A cat."), ("c", "A dog.")]
        assert skips.as_dict() == {"member_too_large": 1}
        assert peak < 24 * MAX_TEXT_MEMBER_BYTES  # never the 32 MiB line (read past in 4 MiB chunks)
    # A line of exactly the cap (its newline beyond it) is kept; one byte more is not.
    lines = list(capped_lines(io.BytesIO(b"x" * 8 + b"\n" + b"y" * 9 + b"\nz"), cap=8))
    assert lines == [(1, b"x" * 8 + b"\n"), (2, None), (3, b"z")]


def test_fifos_given_as_annotation_or_image_files_are_refused_without_blocking(tmp_path):
    import os

    from test_hostile_shards import deadline

    from frozenvl.cli.errors import CLIError
    from frozenvl.cli.generate import _load_image
    from frozenvl.data.convert import convert_folder
    from frozenvl.flame import evaluate as flame_eval
    from frozenvl.flamingo.processor import FlamingoProcessor
    from frozenvl.testing import tiny_tokenizer

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with deadline(5):
        for read in (R.read_coco_captions, R.read_hateful_memes, R.read_class_names, flame_eval.load_karpathy):
            with pytest.raises(ValueError, match="pipe.json is not a regular file"):
                read(str(fifo))
        with pytest.raises(ValueError, match="pipe.json is not a regular file"):
            convert_folder(tmp_path, fifo, tmp_path / "out", progress=False)
        with pytest.raises(CLIError, match="pipe.json is not a regular file"):
            _load_image(str(fifo))
        processor = FlamingoProcessor(tiny_tokenizer(), image_transform=lambda im: im)
        with pytest.raises(ValueError, match="pipe.json is not an image file"):
            processor.load_image(str(fifo), "sample 0 image 0")
