"""Video files: decoding at 1 FPS (frozenvl.data.video), the processor's videos=, `frozenvl generate --video`, the
MSVD/MSR-VTT-style evaluation readers and `frozenvl data convert video`, on short clips each test writes with PyAV
(the decoder's own library): every second of a clip is one solid colour, so the colour of a frame says its time."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from frozenvl.data import LoaderConfig, ShardDataset
from frozenvl.data.convert import convert_videos
from frozenvl.data.video import VideoDecodeError, find_video_file, is_video_file, read_video_frames

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def write_clip(path: Path, seconds: float = 3.5, rate: int = 10, size: tuple[int, int] = (32, 48),
               first_pts: int = 0, codec: str = "libx264") -> Path:
    """A clip of ``seconds`` at ``rate`` frames per second whose second ``s`` is ``COLOURS[s]``; its first frame's
    presentation time is ``first_pts / rate`` (a stream that does not start at 0)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(round(seconds * rate)):
            pixels = np.empty((*size, 3), np.uint8)
            pixels[:] = COLOURS[i // rate]
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = first_pts + i, Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def colour_index(image) -> int:
    """Which of COLOURS an image is (nearest; the codec's rounding is a few levels)."""
    pixel = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
    distances = [np.abs(pixel - np.array(c)).max() for c in COLOURS]
    assert min(distances) < 12, f"frame colour {pixel} is none of the clip's"
    return int(np.argmin(distances))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (as tests/conftest.py does for the model test folders)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("videos") / "clip.mp4")


# ------------------------------------------------------------------------------------------ decoding
def test_one_frame_per_second_from_the_start(clip):
    frames = read_video_frames(clip)  # 3.5 s: times 0, 1, 2, 3
    assert [colour_index(f) for f in frames] == [0, 1, 2, 3]
    assert frames[0].size == (48, 32) and frames[0].mode == "RGB"


def test_other_rates(clip):
    assert [colour_index(f) for f in read_video_frames(clip, fps=2)] == [0, 0, 1, 1, 2, 2, 3]  # 0, 0.5, ..., 3 s
    assert [colour_index(f) for f in read_video_frames(clip, fps=0.5)] == [0, 2]
    # At the clip's own rate every frame is taken once: the same frames as PyAV's plain decode.
    with av.open(str(clip)) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    sampled = read_video_frames(clip, fps=10)
    assert len(sampled) == len(every) == 35
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(sampled, every))


def test_a_stream_that_does_not_start_at_zero(tmp_path):
    late = write_clip(tmp_path / "late.mp4", seconds=2.5, first_pts=17)  # first frame at 1.7 s
    assert [colour_index(f) for f in read_video_frames(late)] == [0, 1, 2]


def test_max_frames_spreads_the_frames_over_the_clip(clip):
    frames = read_video_frames(clip, fps=2, max_frames=3)  # of the 7 samples: 0, 2, 4 (0, 1, 2 s)
    assert [colour_index(f) for f in frames] == [0, 1, 2]
    assert len(read_video_frames(clip, max_frames=10)) == 4  # a cap above the count changes nothing
    one = read_video_frames(clip, max_frames=1)
    assert [colour_index(f) for f in one] == [0]


def test_other_containers(tmp_path):
    webm = write_clip(tmp_path / "clip.webm", seconds=2.2, codec="libvpx")
    assert [colour_index(f) for f in read_video_frames(webm)] == [0, 1, 2]


def test_bad_files_are_one_error_naming_them(tmp_path, clip):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    with pytest.raises(VideoDecodeError, match="corrupt.mp4 cannot be decoded"):
        read_video_frames(corrupt)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[:300])
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        read_video_frames(truncated)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video_frames(tmp_path / "missing.mp4")
    with pytest.raises(VideoDecodeError, match="over the limit"):
        read_video_frames(clip, max_pixels=100)
    with pytest.raises(ValueError, match="fps must be > 0"):
        read_video_frames(clip, fps=0)
    with pytest.raises(ValueError, match="max_frames must be >= 1"):
        read_video_frames(clip, max_frames=0)


def test_video_file_names(tmp_path, clip):
    assert is_video_file("a/b.MP4") and is_video_file(Path("x.webm")) and not is_video_file("x.png")
    assert not is_video_file(["x.mp4"])
    (tmp_path / "video7010.mp4").write_bytes(b"")
    assert find_video_file(tmp_path, "video7010") == tmp_path / "video7010.mp4"
    assert find_video_file(tmp_path, "video7010.mp4") == tmp_path / "video7010.mp4"
    assert find_video_file(tmp_path, "video1") is None


# ------------------------------------------------------------------------------------------ the processor
def test_processor_takes_a_video_file(clip):
    from frozenvl.testing import tiny_flamingo

    model, processor = tiny_flamingo()
    frames = read_video_frames(clip)
    from_file = processor(text="<image>A clip.", videos=str(clip))
    from_frames = processor(text="<image>A clip.", videos=[frames])
    assert from_file["pixel_values"].shape[:3] == (1, 1, 4)  # (B, T_img, F): 4 frames at 1 FPS
    assert torch.equal(from_file["pixel_values"], from_frames["pixel_values"])
    # A batch: a list of video files per text, beside a video given as frames.
    batch = processor(text=["<image><image>Two.", "<image>One."], videos=[[clip, str(clip)], [frames[:2]]])
    assert batch["pixel_values"].shape[:3] == (2, 2, 4)
    assert batch["frame_mask"][1, 0].tolist() == [True, True, False, False]
    # The scorer's cap (the model's temporal embeddings) spreads the frames over the clip.
    capped = processor.media_tensor(str(clip), max_frames=2)
    assert torch.equal(capped, torch.stack([processor.load_image(frames[i], "f") for i in (0, 2)]))
    half = type(processor)(processor.tokenizer, processor.image_transform, video_fps=2.0)
    assert half.media_tensor(clip).shape[0] == 7


def test_processor_names_a_bad_video_file(tmp_path):
    from frozenvl.testing import tiny_flamingo

    _, processor = tiny_flamingo()
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"nothing")
    with pytest.raises(ValueError, match=r"sample 0 image 0: video .*bad.webm cannot be decoded"):
        processor(text="<image>x", videos=str(bad))


# ------------------------------------------------------------------------------------------ evaluation readers
def test_video_readers_find_video_files(tmp_path, clip):
    from frozenvl.eval.records import read_video_captions, read_video_qa
    from frozenvl.testing import tiny_flamingo

    root = tmp_path / "videos"
    root.mkdir()
    (root / "video1.mp4").write_bytes(clip.read_bytes())  # MSR-VTT names: the id without its extension
    (root / "frames2").mkdir()  # a frame folder still works beside files
    frames = read_video_frames(clip)
    for i, f in enumerate(frames):
        f.save(root / "frames2" / f"{i:03d}.png")
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps([{"video_id": "video1", "caption": "colours"}, {"video_id": "video1",
                                    "caption": "more colours"}, {"video_id": "frames2", "caption": "frames"},
                                    {"video_id": "gone", "caption": "no such video"}]))
    with pytest.warns(UserWarning, match="skipped 1 videos"):
        records = {r.key: r for r in read_video_captions(root, captions)}
    assert records["video1"].video == str(root / "video1.mp4") and records["video1"].frames is None
    assert records["video1"].media == str(root / "video1.mp4")
    assert records["video1"].captions == ["colours", "more colours"]
    assert len(records["frames2"].frames) == 4
    _, processor = tiny_flamingo()
    assert torch.equal(processor.media_tensor(records["video1"].media),
                       processor.media_tensor(records["frames2"].media))

    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"video": "video1.mp4", "question": "what colour first?", "answer": "red"}]))
    (record,) = read_video_qa(root, qa)
    assert record.media == str(root / "video1.mp4") and record.answers == ["red"]


def test_evaluation_on_video_files_equals_evaluation_on_their_frames(tmp_path):
    """msvd_qa through the harness: video files give the predictions that folders of their decoded frames give."""
    from frozenvl.eval import get_task
    from frozenvl.eval.harness import EvalConfig, TaskData, evaluate
    from frozenvl.eval.records import read_video_qa
    from frozenvl.testing import tiny_flamingo

    files, folders = tmp_path / "files", tmp_path / "folders"
    files.mkdir()
    rows = []
    # 5 or 6 frames at 1 FPS, capped at the model's 4 spread over the clip (the file by the scorer, the folder by
    # the reader's max_frames): the same 4 frames.
    for i, seconds in enumerate((4.2, 5.5, 5.9, 4.6)):
        clip = write_clip(files / f"v{i}.mp4", seconds=seconds, rate=5)
        (folders / f"v{i}").mkdir(parents=True)
        for k, frame in enumerate(read_video_frames(clip)):
            frame.save(folders / f"v{i}" / f"{k:03d}.png")  # lossless: the same pixels as the decoded file
        rows.append({"video_id": f"v{i}", "question": "how many colours?", "answer": str(int(seconds) + 1)})
    annotations = tmp_path / "qa.json"
    annotations.write_text(json.dumps(rows))
    model, processor = tiny_flamingo("gpt2", seed=3, open_gates=True)  # max_frames=4
    outputs = []
    for root in (files, folders):
        records = read_video_qa(root, annotations, max_frames=4)
        outputs.append(evaluate(model, processor, get_task("msvd_qa"), TaskData(records, records),
                                EvalConfig(shots=(0, 2), batch_size=2), progress=False).results.to_dict())
    assert [len(r["predictions"]) for r in outputs[0]["runs"]] == [4, 4]
    assert outputs[0] == outputs[1]


def test_evaluation_on_clips_of_different_lengths(tmp_path):
    """Real clips differ in length, so at 1 FPS their frame counts differ (here 2, 3, 4 and 5 -> 4): the scorer
    stacks them with a frame mask. A query's prediction does not depend on which other queries share its batch
    (batch 4 == batch 1), the prefix-cached path agrees with the full prompt, and files equal their frames."""
    from frozenvl.eval import get_task
    from frozenvl.eval.harness import EvalConfig, TaskData, evaluate
    from frozenvl.eval.records import read_video_qa
    from frozenvl.testing import tiny_flamingo

    files, folders = tmp_path / "files", tmp_path / "folders"
    files.mkdir()
    rows = []
    for i, seconds in enumerate((1.5, 2.2, 3.5, 4.6)):
        clip = write_clip(files / f"v{i}.mp4", seconds=seconds, rate=5)
        (folders / f"v{i}").mkdir(parents=True)
        for k, frame in enumerate(read_video_frames(clip, max_frames=4)):
            frame.save(folders / f"v{i}" / f"{k:03d}.png")
        rows.append({"video_id": f"v{i}", "question": "how many colours?", "answer": str(int(seconds) + 1)})
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps(rows))
    model, processor = tiny_flamingo("gpt2", seed=3, open_gates=True)  # max_frames=4

    def run(task, reader, root, **config):
        records = reader(root, annotations)
        config = {"shots": (0, 2), "batch_size": 4, **config}
        return evaluate(model, processor, get_task(task), TaskData(records, records), EvalConfig(**config),
                        progress=False).results.to_dict()["runs"]

    qa = run("msvd_qa", read_video_qa, files)
    assert [len(r["predictions"]) for r in qa] == [4, 4]
    assert qa == run("msvd_qa", read_video_qa, files, batch_size=1)
    assert qa == run("msvd_qa", read_video_qa, files, prefix_cache=False)
    assert qa == run("msvd_qa", read_video_qa, folders)


# ------------------------------------------------------------------------------------------ converter
def test_convert_videos_round_trips_through_the_loader(tmp_path, clip, caplog):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(clip.read_bytes())
    write_clip(videos / "b.webm", seconds=2.2, codec="libvpx")
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    rows = [{"video": "a.mp4", "caption": "red green blue yellow"}, {"video": "a", "caption": "four colours"},
            {"video": "b", "caption": "red green blue"}, {"video": "broken.mp4", "caption": "never decoded"},
            {"video": "missing.mp4", "caption": "not there"}]
    captions = tmp_path / "captions.jsonl"
    captions.write_text("\n".join(json.dumps(r) for r in rows))
    for bad, match in (({"fps": 0}, "fps must be > 0"), ({"max_frames": 0}, "max_frames must be >= 1")):
        with pytest.raises(ValueError, match=match):  # refused before any video is decoded or shard written
            convert_videos(videos, captions, tmp_path / "refused", progress=False, **bad)
        assert not (tmp_path / "refused").exists()
    report = convert_videos(videos, captions, tmp_path / "out", max_frames=3, image_format="png", progress=False)
    assert report.written == 3
    assert report.skipped.as_dict() == {"corrupt_video": 1, "missing_video": 1}
    assert "broken.mp4 cannot be decoded" in caplog.text  # the warning names the file

    samples = list(ShardDataset(tmp_path / "out", LoaderConfig(shuffle_shards=False)))
    assert [s["caption"] for s in samples] == [r["caption"] for r in rows[:3]]
    assert all(s["kind"] == "video" and s["fps"] == 1.0 for s in samples)
    # 4 frames at 1 FPS, capped at 3 spread over the clip: seconds 0, 1, 2; the 2.2 s clip has 3.
    assert [[colour_index(f) for f in s["images"][0]] for s in samples] == [[0, 1, 2], [0, 1, 2], [0, 1, 2]]
    assert samples[0]["text"] == "<image>red green blue yellow<|endofchunk|>"
    png = np.asarray(samples[0]["images"][0][1])
    assert np.array_equal(png, np.asarray(read_video_frames(clip, max_frames=3)[1]))  # png frames lose nothing


def test_convert_video_command(tmp_path, clip, capsys):
    from frozenvl.cli.data import main

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "video7.mp4").write_bytes(clip.read_bytes())
    (videos / "video8.mp4").write_bytes(b"garbage")
    captions = tmp_path / "captions.csv"
    captions.write_text("video_id,caption\nvideo7,a clip of colours\nvideo8,a corrupt clip\n")
    assert main(["convert", "video", str(videos), str(captions), str(tmp_path / "out"), "--fps", "2",
                 "--max-size", "16", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 samples" in out and "corrupt_video" in out
    (sample,) = ShardDataset(tmp_path / "out", LoaderConfig(shuffle_shards=False))
    assert [colour_index(f) for f in sample["images"][0]] == [0, 0, 1, 1, 2, 2, 3]  # 2 FPS, JPEG by default
    assert max(sample["images"][0][0].size) == 16 and sample["fps"] == 2.0
    bad_columns = tmp_path / "bad.csv"
    bad_columns.write_text("clip,caption\nvideo7,x\n")
    assert main(["convert", "video", str(videos), str(bad_columns), str(tmp_path / "out2")]) == 2
    assert "no video column" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ generate --video
@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """A tiny LM (with its tokenizer) and a tiny transformers vision model saved as folders (--lm, --vision)."""
    from frozenvl.testing import save_tiny_backbones

    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))


def test_generate_with_a_video_file(backbones, clip, tmp_path, monkeypatch, capsys):
    from frozenvl.cli import generate, main

    lm, vit = backbones
    seen = {}
    real_generate = None

    def spy(self, **kwargs):
        seen["pixel_values"] = kwargs["pixel_values"]
        return real_generate(self, **kwargs)

    import frozenvl.flamingo as fl

    real_generate = fl.Flamingo.generate
    monkeypatch.setattr(fl.Flamingo, "generate", spy)
    args = ["generate", "--prompt", "<image>A clip of", "--video", str(clip), "--lm", str(lm), "--vision",
            f"hf:{vit}", "--cross-attn-every", "2", "--max-new-tokens", "3", "--num-beams", "1", "--max-frames", "3"]
    assert main(args) == 0
    capsys.readouterr()
    assert seen["pixel_values"].shape[:3] == (1, 1, 3)  # 4 frames at 1 FPS, capped at 3
    assert main([*args[:-2], "--max-frames", "8", "--video-fps", "2"]) == 0
    assert seen["pixel_values"].shape[:3] == (1, 1, 7)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage")
    assert main(["generate", "--prompt", "<image>x", "--video", str(bad)]) == 2
    assert "bad.mp4 cannot be decoded" in capsys.readouterr().err
    assert main(["generate", "--prompt", "<image>x", "--video", str(clip), "--video-fps", "0"]) == 2
    assert "--video-fps must be > 0" in capsys.readouterr().err
    assert generate._load_video(str(clip), 2, 1.0)[1].size == (48, 32)
